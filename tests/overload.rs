//! The overload manager on real sockets: slow readers fill their outboxes against a small
//! `--memory-budget`; the server stays up, sheds, stops admitting (503 with `Retry-After`,
//! `/readyz` 503, `/healthz` 200), closes the biggest holders with 4002, keeps a reader that
//! keeps up, and comes back to normal once the slow readers are gone.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // reason: a panic is the failure report; tests time themselves

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Client, Server};
use serde_json::json;

/// A metric from /metrics, summed over its series that contain `labels`.
fn metric(s: &Server, name: &str, labels: &str) -> f64 {
    let (_, _, text) = s.http("GET", "/metrics", "", b"");
    text.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A subscriber that upgrades and then never reads again.
fn slow_reader(s: &Server) -> TcpStream {
    let mut t = TcpStream::connect(s.addr).unwrap();
    t.write_all(common::upgrade_request("/ws?channels=hot", "").as_bytes()).unwrap();
    t
}

#[test]
fn slow_readers_against_a_small_budget_are_shed_refused_and_reclaimed_and_it_recovers() {
    let budget: u64 = 128 << 20;
    let s = Server::start(&[
        "--shards",
        "1",
        "--memory-budget",
        "128MiB",
        "--overload-interval",
        "20ms",
        "--overload-hold",
        "300ms",
        "--slow-consumer-timeout",
        "10m",
        "--max-message-size",
        "64KiB",
        "--overload-reclaim-grace",
        "30s",
    ]);
    let mut good = Client::connect(s.addr, "/ws?channels=hot");
    let mut slow: Vec<TcpStream> = (0..150).map(|_| slow_reader(&s)).collect();
    s.wait_for("/v1/channels/hot", |v| v["subscribers"] == 151);
    assert_eq!(metric(&s, "ringcast_overload_action", ""), 0.0, "calm at the start");
    assert_eq!(metric(&s, "ringcast_memory_budget_bytes", ""), budget as f64);
    let limit = metric(&s, "ringcast_connections_limit", "");
    assert!(limit > 151.0 && limit < 20_000.0, "the open-file limit bounds it: {limit}");
    // 16 KiB messages, 40 to a batch, until admission stops.
    let data = "x".repeat(16 << 10);
    let batch: String = (0..40)
        .map(|_| json!({"op": "publish", "channel": "hot", "data": data}).to_string() + "\n")
        .collect();
    let mut sent = 0;
    while metric(&s, "ringcast_overload_action", "stop_admitting") < 1.0 {
        assert!(sent < 2000, "admission never stopped");
        let (st, _, _) = s.http("POST", "/v1/batch", "", batch.as_bytes());
        assert_eq!(st, 200);
        sent += 40;
        // The reader that keeps up reads everything.
        for _ in 0..40 {
            assert_eq!(good.json()["type"], "message");
        }
    }
    // Refused at the door, told when to come back; not ready, still alive.
    let refused = Client::try_connect(s.addr, "/ws", "").map(|_| ()).unwrap_err();
    assert!(refused.starts_with("HTTP/1.1 503") && refused.contains("Retry-After:"), "{refused}");
    assert_eq!(metric(&s, "ringcast_overload_refusals_total", "stop_admitting"), 1.0);
    assert_eq!(s.get("/readyz").0, 503);
    assert_eq!(s.get("/healthz").0, 200);
    // Low priority is shed at the API, and history queries are paused.
    until("shed_low", Duration::from_secs(5), || {
        metric(&s, "ringcast_overload_action", "shed_low") >= 1.0
    });
    let (st, r) = s.post("/v1/publish", json!({"channel": "hot", "data": 1, "priority": "low"}));
    assert_eq!((st, &r["shed"], &r["queued"]), (200, &json!(1), &json!(0)), "{r}");
    let (st, head, _) = s.http("GET", "/v1/streams/channel:hot/history", "", b"");
    assert!(st == 503 && head.contains("Retry-After: 2"), "{head}");
    // Past the reclaim threshold the biggest holders go (4002), until the memory held is
    // back under it; the reader that keeps up stays.
    for _ in 0..5 {
        let (st, _, _) = s.http("POST", "/v1/batch", "", batch.as_bytes());
        assert_eq!(st, 200);
        for _ in 0..40 {
            let m = good.json();
            assert!(m["type"] == "message", "{m}");
        }
    }
    until("a reclaim", Duration::from_secs(10), || {
        metric(&s, "ringcast_overload_refusals_total", "reclaim") > 0.0
    });
    let held = metric(&s, "ringcast_memory_held_bytes", "");
    assert!(held <= budget as f64, "held {held} over the budget {budget}");
    // The frames are shared by every outbox that holds them: the process itself stays far
    // below what is accounted.
    let rss = metric(&s, "ringcast_memory_rss_bytes", "");
    assert!(rss > 0.0 && rss <= budget as f64, "RSS {rss} over the budget {budget}");
    let slow_closed = metric(&s, "ringcast_evictions_total", "slow_consumer");
    assert!(slow_closed > 0.0 && slow_closed < 150.0, "{slow_closed} closed");
    // A reclaimed client that reads up to its close within the grace finds 4002 with a
    // retry hint behind what its socket held.
    let readers: Vec<_> = slow
        .iter()
        .map(|t| {
            let mut t = t.try_clone().unwrap();
            std::thread::spawn(move || {
                t.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut all = Vec::new();
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n) = std::io::Read::read(&mut t, &mut buf) {
                    if n == 0 {
                        break;
                    }
                    all.extend_from_slice(&buf[..n]);
                }
                // A close frame (FIN, opcode 8, unmasked) with code 4002 and a JSON reason.
                all.windows(5).any(|w| w[0] == 0x88 && w[2..4] == [0x0f, 0xa2] && w[4] == b'{')
                    && String::from_utf8_lossy(&all).contains("\"retry_ms\":")
            })
        })
        .collect();
    let told = readers.into_iter().filter_map(|h| h.join().ok()).filter(|got| *got).count();
    assert!(told > 0, "no reclaimed client found its 4002 with retry_ms");
    good.text(r#"{"type":"ping"}"#);
    loop {
        let m = good.json();
        if m["type"] == "pong" {
            break;
        }
    }
    // The slow readers go: everything comes back.
    slow.clear();
    until("the actions to end", Duration::from_secs(10), || {
        metric(&s, "ringcast_overload_action", "") == 0.0
    });
    assert_eq!(s.get("/readyz").0, 200);
    let mut late = Client::connect(s.addr, "/ws?channels=hot");
    let (_, r) = s.post("/v1/publish", json!({"channel": "hot", "data": 2, "priority": "low"}));
    assert_eq!(r["shed"], 0, "{r}");
    assert_eq!(late.json()["data"], 2);
}

#[test]
fn a_slow_consumer_that_never_reads_is_reset_so_its_unread_bytes_are_freed() {
    let s = Server::start(&[
        "--shards",
        "1",
        "--slow-consumer-timeout",
        "200ms",
        "--close-timeout",
        "300ms",
        "--outbox-max-bytes",
        "256KiB",
    ]);
    // A deaf client with a small receive window: what it does not read stays in the server's
    // socket.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(16 << 10).unwrap();
    sock.connect(&s.addr.into()).unwrap();
    let mut deaf: TcpStream = sock.into();
    deaf.write_all(common::upgrade_request("/ws?channels=deaf", "").as_bytes()).unwrap();
    s.wait_for("/v1/channels/deaf", |v| v["subscribers"] == 1);
    let data = "y".repeat(32 << 10);
    let batch: String = (0..20)
        .map(|_| json!({"op": "publish", "channel": "deaf", "data": data}).to_string() + "\n")
        .collect();
    until("the slow consumer's reset", Duration::from_secs(15), || {
        let (st, _, _) = s.http("POST", "/v1/batch", "", batch.as_bytes());
        assert_eq!(st, 200);
        metric(&s, "ringcast_unread_resets_total", "") >= 1.0
    });
    assert_eq!(metric(&s, "ringcast_evictions_total", "slow_consumer"), 1.0);
    // The client finds the connection reset once it reads what had reached it.
    deaf.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let err = loop {
        match std::io::Read::read(&mut deaf, &mut buf) {
            Ok(0) => panic!("a clean end, not a reset"),
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

#[test]
fn a_message_being_assembled_counts_in_the_memory_held_until_it_is_whole_or_its_client_goes() {
    let s =
        Server::start(&["--shards", "1", "--max-frame-size", "1MiB", "--max-message-size", "1MiB"]);
    let input = |s: &Server| metric(s, "ringcast_input_bytes", "");
    assert_eq!(input(&s), 0.0);
    let mut c = Client::connect(s.addr, "/echo");
    // The first fragment of a message, 200 KB: held until the rest comes.
    let mut v = Vec::new();
    ringcast::proto::frame::encode_frame(
        &mut v,
        ringcast::proto::OpCode::Text,
        false,
        Some([1, 2, 3, 4]),
        "a".repeat(200_000).as_bytes(),
    );
    c.send_raw(&v);
    until("the fragment to be counted", Duration::from_secs(5), || input(&s) >= 200_000.0);
    assert!(metric(&s, "ringcast_memory_held_bytes", "") >= 200_000.0);
    // The last fragment: the message goes on, nothing is held.
    v.clear();
    ringcast::proto::frame::encode_frame(
        &mut v,
        ringcast::proto::OpCode::Continuation,
        true,
        Some([1, 2, 3, 4]),
        b"!",
    );
    c.send_raw(&v);
    match c.recv() {
        common::Frame::Text(t) => assert_eq!(t.len(), 200_001),
        f => panic!("{f:?}"),
    }
    until("nothing held", Duration::from_secs(5), || input(&s) == 0.0);
    // Another partial message, then the client goes: released with the connection.
    v.clear();
    ringcast::proto::frame::encode_frame(
        &mut v,
        ringcast::proto::OpCode::Text,
        false,
        Some([1, 2, 3, 4]),
        &[b'b'; 50_000],
    );
    c.send_raw(&v);
    until("the second fragment", Duration::from_secs(5), || input(&s) >= 50_000.0);
    drop(c);
    until("released with the connection", Duration::from_secs(5), || input(&s) == 0.0);
}

#[test]
fn under_pause_a_gap_repair_waits_its_turn_and_still_arrives_whole() {
    // Only `pause` can come on (the others never), and it is on from the start: the
    // process's own RSS is more than 10 % of 64 MiB.
    let s = Server::start(&[
        "--shards",
        "1",
        "--memory-budget",
        "64MiB",
        "--overload-pause",
        "0.1",
        "--overload-shed-low",
        "10",
        "--overload-stop-admitting",
        "10",
        "--overload-shed-normal",
        "10",
        "--overload-reclaim",
        "10",
        "--overload-interval",
        "20ms",
        "--outbox-max-bytes",
        "64KiB",
        "--history-size",
        "1000",
        "--history-bytes",
        "64MiB",
        "--slow-consumer-timeout",
        "30s",
    ]);
    until("pause", Duration::from_secs(5), || {
        metric(&s, "ringcast_overload_action", "pause") == 1.0
    });
    let mut c = Client::connect(s.addr, "/ws?channels=gaps");
    // (The channel query is paused too: the gauge says when the subscription is in.)
    until("the subscription", Duration::from_secs(5), || {
        metric(&s, "ringcast_subscriptions", "") == 1.0
    });
    let (st, _, _) = s.http("GET", "/v1/channels/gaps", "", b"");
    assert_eq!(st, 503, "queries are paused");
    // Nothing read while 12 MB are published: the rest is deferred to gap repair.
    let data = "x".repeat(30_000);
    let mut deferred = 0;
    for _ in 0..400 {
        let (st, r) = s.post("/v1/publish", json!({"channel": "gaps", "data": data}));
        assert_eq!((st, r["dropped"].as_u64()), (200, Some(0)), "{r}");
        deferred += r["deferred"].as_u64().unwrap();
    }
    assert!(deferred > 0, "the outbox never filled");
    // It reads again: its repair waits in the overload manager's queue, then comes, whole.
    for want in 1..=400u64 {
        let m = c.json();
        assert_eq!((m["type"].as_str(), m["seq"].as_u64()), (Some("message"), Some(want)));
    }
    assert!(metric(&s, "ringcast_gap_repairs_deferred_total", "") >= 1.0);
    assert!(metric(&s, "ringcast_gap_repairs_total", "") >= 1.0);
}
