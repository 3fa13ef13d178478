#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // reason: test code: a panic is the failure report, and tests time themselves
//! Regression tests for the gaps an attack run found (issue "Hardening"), on real sockets with
//! two shards: half-open peers, frames after a close, and the API's HTTP edge.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{upgrade_request, Client, Frame, Server};
use serde_json::{json, Value};
use socket2::Socket;

/// How a test connection ends.
#[derive(Clone, Copy, Debug)]
enum End {
    /// Linger 0, then close: the peer gets an RST.
    Rst,
    /// A plain close with nothing unread: the peer gets a FIN.
    Fin,
}

fn end(stream: TcpStream, how: End) {
    match how {
        End::Rst => {
            let s = Socket::from(stream);
            s.set_linger(Some(Duration::ZERO)).unwrap();
            drop(s);
        }
        End::Fin => drop(stream),
    }
}

/// What the server holds for clients, as its API and /proc tell it.
#[derive(Debug, PartialEq, Eq)]
struct Held {
    connections: u64,
    handshaking: u64,
    subscriptions: u64,
    fds: usize,
}

fn held(s: &Server) -> Held {
    let (_, v) = s.get("/v1/stats");
    let subscriptions =
        v["shards"].as_array().unwrap().iter().map(|x| x["subscriptions"].as_u64().unwrap()).sum();
    Held {
        connections: v["connections"].as_u64().unwrap(),
        handshaking: v["totals"]["handshaking"].as_u64().unwrap(),
        subscriptions,
        fds: s.open_fds(),
    }
}

/// Waits until the server holds exactly `baseline` again and no user `prefix…` is listed;
/// `within` is measured from the call.
fn back_to(s: &Server, baseline: &Held, users: &[String], within: Duration) {
    let end = Instant::now() + within;
    loop {
        let now = held(s);
        let listed: Vec<&String> = users
            .iter()
            .filter(|u| {
                s.get(&format!("/v1/users/{u}")).1["connections"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty())
            })
            .collect();
        if now == *baseline && listed.is_empty() {
            return;
        }
        assert!(
            Instant::now() < end,
            "not released within {within:?}: {now:?} against {baseline:?}, users still listed: {listed:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A partial upgrade head, then the end.
fn partial_head(addr: SocketAddr, user: &str, how: End) {
    let mut t = TcpStream::connect(addr).unwrap();
    t.write_all(
        format!("GET /ws?user={user}&channels=ghosts HTTP/1.1\r\nHost: x\r\nUpg").as_bytes(),
    )
    .unwrap();
    end(t, how);
}

/// A whole upgrade (user and channel registered), three bytes of a frame, then the end.
fn partial_frame(addr: SocketAddr, user: &str, how: End) {
    let mut c = Client::connect(addr, &format!("/ws?user={user}&channels=ghosts"));
    c.send_raw(&[0x81, 0x85, 1]);
    end(c.stream, how);
}

#[test]
fn a_peer_that_closes_with_its_last_bytes_releases_everything_at_once() {
    // Without pings, nothing but the FIN or RST itself can tell the server the peer is gone.
    let per_ip = 100;
    let s =
        Server::start(&["--ping-interval", "0", "--max-connections-per-ip", &per_ip.to_string()]);
    let baseline = held(&s);
    type Attack = fn(SocketAddr, &str, End);
    let attacks: [(&str, Attack, End); 4] = [
        ("partial head + RST", partial_head, End::Rst),
        ("partial head + FIN", partial_head, End::Fin),
        ("upgrade + partial frame + RST", partial_frame, End::Rst),
        ("upgrade + partial frame + FIN", partial_frame, End::Fin),
    ];
    for (name, attack, how) in attacks {
        let users: Vec<String> = (0..per_ip).map(|i| format!("ghost{i}")).collect();
        for u in &users {
            attack(s.addr, u, how);
        }
        eprintln!("{name}: sent");
        back_to(&s, &baseline, &users[..10], Duration::from_secs(1));
        let (_, ch) = s.get("/v1/channels/ghosts");
        assert_eq!(ch["subscribers"], 0, "{name}: {ch}");
    }
    // The per-address count is back too: the whole allowance can connect again.
    let clients: Vec<Client> = (0..per_ip).map(|_| Client::connect(s.addr, "/ws")).collect();
    assert_eq!(clients.len(), per_ip);
}

#[test]
fn churn_in_every_way_leaks_nothing() {
    let s = Server::start(&["--ping-interval", "0", "--close-timeout", "500ms"]);
    let baseline = held(&s);
    let addr = s.addr;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..500 {
                    let user = format!("churn{}", (t * 500 + i) % 50);
                    let path = format!("/ws?user={user}&channels=churn,c{}", i % 7);
                    match i % 9 {
                        0 => {
                            // A clean close handshake.
                            let mut c = Client::connect(addr, &path);
                            c.send(ringcast::proto::OpCode::Close, &1000u16.to_be_bytes());
                            assert_eq!(c.recv_close(), (Some(1000), String::new()));
                            c.expect_eof();
                        }
                        1 => {
                            // A close frame, and gone without waiting for the answer.
                            let mut c = Client::connect(addr, &path);
                            c.send(ringcast::proto::OpCode::Close, &1000u16.to_be_bytes());
                            end(c.stream, End::Rst);
                        }
                        2 => end(Client::connect(addr, &path).stream, End::Fin),
                        3 => end(Client::connect(addr, &path).stream, End::Rst),
                        4 => partial_frame(addr, &user, End::Fin),
                        5 => partial_frame(addr, &user, End::Rst),
                        6 => partial_head(addr, &user, End::Fin),
                        7 => partial_head(addr, &user, End::Rst),
                        _ => {
                            // A whole message (a subscribe), then the RST with no reply read.
                            let mut c = Client::connect(addr, &path);
                            c.text(r#"{"type":"subscribe","channel":"late"}"#);
                            end(c.stream, End::Rst);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let users: Vec<String> = (0..50).map(|i| format!("churn{i}")).collect();
    back_to(&s, &baseline, &users, Duration::from_secs(2));
    for ch in ["churn", "c0", "late"] {
        assert_eq!(s.get(&format!("/v1/channels/{ch}")).1["subscribers"], 0, "{ch}");
    }
}

/// Every frame the client receives until the server closes the TCP connection.
fn read_to_eof(c: &mut Client) -> Vec<Frame> {
    let mut frames = Vec::new();
    loop {
        match c.recv() {
            Frame::Eof => return frames,
            f => frames.push(f),
        }
    }
}

/// Asserts the close frame came last (nothing after it) and returns it with the number of
/// data frames before it.
fn close_is_last(frames: &[Frame]) -> (Option<u16>, String, usize) {
    let at = frames.iter().position(|f| matches!(f, Frame::Close(..))).expect("a close frame");
    assert_eq!(at, frames.len() - 1, "frames after the close frame: {:?}", &frames[at + 1..].len());
    let Frame::Close(code, reason) = &frames[at] else { unreachable!() };
    let data = frames[..at].iter().filter(|f| matches!(f, Frame::Text(_))).count();
    (*code, reason.clone(), data)
}

#[test]
fn a_slow_consumer_finds_the_close_frame_last() {
    let s = Server::start(&[
        "--outbox-max-bytes",
        "512KiB",
        "--slow-consumer-timeout",
        "300ms",
        "--close-timeout",
        "1s",
    ]);
    let mut slow = Client::connect(s.addr, "/ws?channels=feed");
    s.wait_for("/v1/channels/feed", |v| v["subscribers"] == 1);
    let payload = "x".repeat(64 * 1024);
    let end = Instant::now() + Duration::from_secs(10);
    while s.get("/v1/stats").1["totals"]["slow_consumers_closed"] != 1 {
        assert!(Instant::now() < end, "the slow consumer was never closed");
        s.post("/v1/publish", json!({"channel": "feed", "data": payload}));
    }
    let (code, reason, data) = close_is_last(&read_to_eof(&mut slow));
    assert_eq!((code, reason.as_str()), (Some(4002), "slow consumer"));
    assert!(data > 0, "some pushes arrived before the close");
    let (_, stats) = s.get("/v1/stats");
    assert!(stats["totals"]["pushes_discarded"].as_u64().unwrap() > 0, "{stats}");
}

#[test]
fn a_kick_drops_queued_pushes_counts_them_and_closes_last() {
    let s = Server::start(&["--outbox-max-bytes", "32MiB", "--slow-consumer-timeout", "60s"]);
    let mut c = Client::connect(s.addr, "/ws?user=k1");
    s.wait_for("/v1/users/k1", |v| v["connections"].as_array().is_some_and(|a| a.len() == 1));
    let payload = "y".repeat(64 * 1024);
    let mut queued = 0;
    for _ in 0..300 {
        let (_, r) = s.post("/v1/push", json!({"user": "k1", "data": payload}));
        queued += r["queued"].as_u64().unwrap();
    }
    let (status, r) = s.post("/v1/kick", json!({"user": "k1"}));
    assert_eq!((status, r["kicked"].as_u64()), (200, Some(1)), "{r}");
    let discarded = r["discarded"].as_u64().unwrap();
    assert!(discarded > 0, "the socket buffers cannot hold 300 × 64 KiB: {r}");
    let (code, _, data) = close_is_last(&read_to_eof(&mut c));
    assert_eq!(code, Some(4001));
    assert_eq!(data as u64 + discarded, queued, "every queued push arrived or was counted");
    let m = s.http("GET", "/metrics", "", b"").2;
    let line = m
        .lines()
        .find(|l| l.starts_with("ringcast_drops_total{reason=\"discarded_on_close\"}"))
        .unwrap();
    assert_eq!(line.rsplit(' ').next().unwrap().parse::<u64>().unwrap(), discarded, "{line}");
}

#[test]
fn a_drain_flushes_what_is_queued_before_the_close() {
    let mut s = Server::start(&["--outbox-max-bytes", "32MiB", "--drain-timeout", "10s"]);
    let mut c = Client::connect(s.addr, "/ws?user=d1");
    s.wait_for("/v1/users/d1", |v| v["connections"].as_array().is_some_and(|a| a.len() == 1));
    let payload = "z".repeat(64 * 1024);
    let mut queued = 0;
    // More than the socket buffers hold, so most of it is still in the outbox at the drain.
    for _ in 0..300 {
        queued += s.post("/v1/push", json!({"user": "d1", "data": payload})).1["queued"]
            .as_u64()
            .unwrap();
    }
    s.signal(libc::SIGTERM);
    let frames = {
        let mut frames = Vec::new();
        loop {
            match c.recv() {
                f @ Frame::Close(..) => {
                    frames.push(f);
                    c.send(ringcast::proto::OpCode::Close, &1001u16.to_be_bytes());
                }
                Frame::Eof => break frames,
                f => frames.push(f),
            }
        }
    };
    let (code, _, data) = close_is_last(&frames);
    assert_eq!(code, Some(1001));
    assert_eq!(data as u64, queued, "a healthy connection gets everything queued, then the close");
    assert!(s.wait(Duration::from_secs(10)).expect("exits").success());
}

/// Sends `bytes` one per second (stopping early if the server closes); returns what the server
/// answered and when, counted from the first byte.
fn trickle(addr: SocketAddr, quick: &[u8], slow: &[u8]) -> (String, Duration) {
    let mut t = TcpStream::connect(addr).unwrap();
    t.set_read_timeout(Some(Duration::from_millis(1000))).unwrap();
    let start = Instant::now();
    t.write_all(quick).unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    for &b in slow.iter().chain(std::iter::repeat_n(&b' ', 30)) {
        if t.write_all(&[b]).is_err() {
            break;
        }
        match t.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
        if out.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

#[test]
fn an_api_request_must_arrive_whole_within_10_s_of_its_first_byte() {
    let s = Server::start(&[]);
    let api = s.api;
    let head = std::thread::spawn(move || {
        trickle(api, b"", b"POST /v1/publish HTTP/1.1\r\nHost: a\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n")
    });
    let body = std::thread::spawn(move || {
        trickle(
            api,
            b"POST /v1/publish HTTP/1.1\r\nHost: a\r\nContent-Length: 60\r\n\r\n",
            br#"{"channel":"slow","data":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#,
        )
    });
    for (what, t) in [("head", head), ("body", body)] {
        let (resp, took) = t.join().unwrap();
        assert!(resp.starts_with("HTTP/1.1 408 "), "{what}: {resp}");
        assert!(
            took >= Duration::from_millis(9_500) && took <= Duration::from_millis(11_500),
            "{what} cut after {took:?}"
        );
    }
}

/// Sends `head` (no body) and returns the answer's status line, read within 2 s.
fn head_only(addr: SocketAddr, head: &str) -> String {
    let mut t = TcpStream::connect(addr).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    t.write_all(head.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        match t.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&out).lines().next().unwrap_or("").to_string()
}

#[test]
fn a_request_without_a_valid_key_is_refused_at_its_head() {
    let s = Server::start(&["--api-key", "sesame"]);
    let big = "POST /v1/publish HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n";
    assert!(head_only(s.api, &format!("{big}\r\n")).starts_with("HTTP/1.1 401 "));
    assert!(head_only(s.api, &format!("{big}Authorization: Bearer wrong!\r\n\r\n"))
        .starts_with("HTTP/1.1 403 "));
    // With the key, the server waits for the body instead of answering.
    assert_eq!(head_only(s.api, &format!("{big}Authorization: Bearer sesame\r\n\r\n")), "");
    // A client that sends its body anyway still reads the refusal, not a reset.
    let mut t = TcpStream::connect(s.api).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    t.write_all(format!("{big}\r\n").as_bytes()).unwrap();
    let _ = t.write_all(&vec![b'x'; 200_000]);
    let mut out = Vec::new();
    let _ = t.read_to_end(&mut out);
    assert!(out.starts_with(b"HTTP/1.1 401 "), "{}", String::from_utf8_lossy(&out));
}

/// Sends raw bytes to the API and returns everything it answers until it closes.
fn api_raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut t = TcpStream::connect(addr).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    t.write_all(bytes).unwrap();
    let _ = t.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    let _ = t.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn statuses(answer: &str) -> Vec<u16> {
    answer
        .split("HTTP/1.1 ")
        .skip(1)
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn content_length_is_strict() {
    let s = Server::start(&[]);
    let body = r#"{"channel":"x","data":1}"#;
    let n = body.len();
    // Two differing lengths on a keep-alive connection: one 400, and the rest is not taken as
    // a second request.
    let two = format!("POST /v1/publish HTTP/1.1\r\nHost: a\r\nContent-Length: {n}\r\nContent-Length: 5\r\n\r\n{body}");
    assert_eq!(statuses(&api_raw(s.api, two.as_bytes())), [400]);
    let same = format!("POST /v1/publish HTTP/1.1\r\nHost: a\r\nContent-Length: {n}\r\nContent-Length: {n}\r\n\r\n{body}");
    assert_eq!(statuses(&api_raw(s.api, same.as_bytes())), [400]);
    for bad in [format!("+{n}"), format!("0x{n:x}"), format!("{n}, {n}"), "-1".into(), "".into()] {
        let r =
            format!("POST /v1/publish HTTP/1.1\r\nHost: a\r\nContent-Length: {bad}\r\n\r\n{body}");
        let answer = api_raw(s.api, r.as_bytes());
        assert_eq!(statuses(&answer), [400], "Content-Length: {bad:?}: {answer}");
    }
    let both = format!("POST /v1/publish HTTP/1.1\r\nHost: a\r\nContent-Length: {n}\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
    assert_eq!(statuses(&api_raw(s.api, both.as_bytes())), [400]);
    let chunked =
        "POST /v1/publish HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(statuses(&api_raw(s.api, chunked.as_bytes())), [411]);
    // A correct length on a keep-alive connection still serves two requests.
    let one = format!("POST /v1/publish HTTP/1.1\r\nHost: a\r\nContent-Length: {n}\r\n\r\n{body}");
    assert_eq!(statuses(&api_raw(s.api, format!("{one}{one}").as_bytes())), [200, 200]);
}

#[test]
fn a_request_head_over_16_kib_is_refused_however_it_arrives() {
    let s = Server::start(&[]);
    for kib in [17, 31, 64] {
        let pad = "a".repeat(kib * 1024);
        let r = format!("GET /v1/stats HTTP/1.1\r\nHost: a\r\nX-Pad: {pad}\r\n\r\n");
        assert_eq!(statuses(&api_raw(s.api, r.as_bytes())), [431], "{kib} KiB in one write");
    }
    let pad = "a".repeat(15 * 1024);
    let r =
        format!("GET /v1/stats HTTP/1.1\r\nHost: a\r\nX-Pad: {pad}\r\nConnection: close\r\n\r\n");
    assert_eq!(statuses(&api_raw(s.api, r.as_bytes())), [200], "15 KiB is within the cap");
}

#[test]
fn an_absolute_form_target_upgrades() {
    let s = Server::start(&[]);
    let target = format!("http://{}/ws?user=abs", s.addr);
    let answer = common::raw_exchange(s.addr, upgrade_request(&target, "").as_bytes());
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    assert!(answer.contains(r#""user":"abs""#), "the query came through: {answer}");
    let answer = common::raw_exchange(
        s.addr,
        upgrade_request(&format!("HTTP://{}/nope", s.addr), "").as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
}

fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

#[test]
fn one_depth_limit_for_data_on_every_endpoint() {
    let s = Server::start(&[]);
    let publish = |d: &str| {
        let body = format!(r#"{{"channel":"deep","data":{d}}}"#);
        let (status, _, text) = s.http("POST", "/v1/publish", "", body.as_bytes());
        (status, serde_json::from_str::<Value>(&text).unwrap_or(Value::Null))
    };
    assert_eq!(publish(&nested(64)).0, 200);
    for depth in [65, 200_000] {
        let (status, v) = publish(&nested(depth));
        assert_eq!((status, v["field"].as_str()), (400, Some("data")), "{depth}: {v}");
    }
    let line = |d: &str| format!(r#"{{"op":"publish","channel":"deep","data":{d}}}"#);
    let body =
        format!("{}\n{}\n{}\n", line(&nested(64)), line(&nested(65)), line(&nested(200_000)));
    let (status, _, text) = s.http("POST", "/v1/batch", "", body.as_bytes());
    assert_eq!(status, 200, "{text}");
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].get("recipients").is_some(), "{}", lines[0]);
    for l in &lines[1..] {
        assert_eq!((l["status"].as_u64(), l["field"].as_str()), (Some(400), Some("data")), "{l}");
    }
}
