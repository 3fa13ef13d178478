//! Durable user streams across restarts and crashes, on a real data directory: what the API
//! answered `queued` or `stored` for is delivered after a SIGKILL at any moment, 0 lost;
//! duplicates only at or below what the client had acknowledged; cursors and positions come
//! back.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // reason: a panic is the failure report; tests time themselves

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Client, Server};
use serde_json::{json, Value};

struct Dir(std::path::PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("ringcast-crash-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Dir(p)
    }
    fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn wait_user(s: &Server, user: &str, n: usize) {
    s.wait_for(&format!("/v1/users/{user}"), |v| {
        v["connections"].as_array().is_some_and(|a| a.len() == n)
    });
}

/// Every message that arrives until none has for `quiet`, as (seq, data).
fn drain(c: &mut Client, quiet: Duration) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < quiet {
        c.text(r#"{"type":"ping"}"#);
        loop {
            let v = c.json();
            match v["type"].as_str() {
                Some("pong") => break,
                Some("message") => {
                    out.push((v["seq"].as_u64().unwrap(), v["data"].clone()));
                    last = Instant::now();
                }
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    out
}

fn ack(c: &mut Client, user: &str, seq: u64) {
    c.text(&json!({"type": "ack", "stream": format!("user:{user}"), "seq": seq}).to_string());
}

#[test]
fn a_restart_brings_back_the_mailbox_the_cursors_and_the_positions() {
    let dir = Dir::new("restart");
    let mut s = Server::start(&["--data-dir", &dir.arg()]);
    for i in 1..=3 {
        let (_, r) = s.post("/v1/push", json!({"user": "r1", "data": i}));
        assert_eq!(r["stored"], 1, "{r}");
    }
    let mut c = Client::connect(s.addr, "/ws?user=r1&device=d");
    let epoch = c.welcome.clone().unwrap()["streams"]["user:r1"]["epoch"].clone();
    let got: Vec<u64> = drain(&mut c, Duration::from_millis(100)).iter().map(|m| m.0).collect();
    assert_eq!(got, [1, 2, 3]);
    ack(&mut c, "r1", 2);
    s.wait_for("/v1/users/r1/mailbox", |v| v["cursors"]["d"] == 2);
    // The ack is durable once a turn has sealed it: give it that turn, then kill hard.
    std::thread::sleep(Duration::from_millis(200));
    s.signal(libc::SIGKILL);
    s.wait(Duration::from_secs(5)).unwrap();
    drop(c);
    let s = Server::start(&["--data-dir", &dir.arg()]);
    let (_, mb) = s.get("/v1/users/r1/mailbox");
    assert_eq!((mb["count"].as_u64(), &mb["cursors"]), (Some(1), &json!({"d": 2})), "{mb}");
    let mut c = Client::connect(s.addr, "/ws?user=r1&device=d");
    let w = c.welcome.clone().unwrap();
    assert_eq!(w["streams"]["user:r1"], json!({"epoch": epoch, "seq": 3}), "{w}");
    assert_eq!(drain(&mut c, Duration::from_millis(100)), [(3, json!(3))]);
    let (_, r) = s.post("/v1/push", json!({"user": "r1", "data": 4}));
    assert_eq!(r["queued"], 1);
    assert_eq!(drain(&mut c, Duration::from_millis(100)), [(4, json!(4))], "numbering goes on");
    drop(c);
    drop(s);
    // Another shard count homes the streams elsewhere: the records move with them, the
    // position, the cursor and the unacknowledged message too.
    for (shards, count, acked, want) in [("1", 2, 2, vec![3, 4]), ("3", 0, 4, vec![])] {
        let s = Server::start(&["--data-dir", &dir.arg(), "--shards", shards]);
        assert!(s.log().contains("were moved to"), "{}", s.log());
        let (_, mb) = s.get("/v1/users/r1/mailbox");
        let want_mb = (Some(count), &json!({"d": acked}));
        assert_eq!((mb["count"].as_u64(), &mb["cursors"]), want_mb, "{shards}: {mb}");
        let mut c = Client::connect(s.addr, "/ws?user=r1&device=d");
        let w = c.welcome.clone().unwrap();
        assert_eq!(w["streams"]["user:r1"], json!({"epoch": epoch, "seq": 4}), "{shards}: {w}");
        let got: Vec<u64> = drain(&mut c, Duration::from_millis(100)).iter().map(|m| m.0).collect();
        assert_eq!(got, want, "{shards}: the unacknowledged ones again");
        ack(&mut c, "r1", 4);
        s.wait_for("/v1/users/r1/mailbox", |v| v["cursors"]["d"] == 4);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A counter or gauge from /metrics, summed over shards.
fn metric(s: &Server, name: &str) -> u64 {
    let (_, _, text) = s.http("GET", "/metrics", "", b"");
    text.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_mostly_dead_segment_is_emptied_by_copying_its_live_records_forward() {
    let dir = Dir::new("copy");
    let args = ["--data-dir", &dir.arg(), "--shards", "1", "--log-segment-bytes", "64KiB"];
    let mut s = Server::start(&args);
    let (_, r) = s.post("/v1/push", json!({"user": "keep", "data": "the one that stays"}));
    assert_eq!(r["stored"], 1, "{r}");
    // Some 380 KB more, all let go: six segments that only the first message holds on to.
    let pad = "x".repeat(60);
    let lines: String = (0..2000)
        .map(|i| {
            json!({"op": "push", "user": format!("gone{}", i % 20), "data": pad}).to_string() + "\n"
        })
        .collect();
    let (st, _, _) = s.http("POST", "/v1/batch", "", lines.as_bytes());
    assert_eq!(st, 200);
    for u in 0..20 {
        let (st, _, _) = s.http("DELETE", &format!("/v1/users/gone{u}/mailbox"), "", b"");
        assert_eq!(st, 200);
    }
    let first = dir.0.join("shard-0").join("0000000001.log");
    assert!(first.exists(), "the first segment holds the message that stays");
    let end = Instant::now() + Duration::from_secs(10);
    while first.exists() || metric(&s, "ringcast_log_copied_forward_total") == 0 {
        assert!(
            Instant::now() < end,
            "the first segment stayed: {:?}",
            metric(&s, "ringcast_log_segments_deleted_total")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let segments = || {
        std::fs::read_dir(dir.0.join("shard-0"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "log"))
            .count()
    };
    while segments() > 2 || metric(&s, "ringcast_log_segments_deleted_total") < 5 {
        let m = metric(&s, "ringcast_log_segments_deleted_total");
        assert!(Instant::now() < end, "{} segments left, {m} deleted", segments());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The copy is what a restart reads.
    std::thread::sleep(Duration::from_millis(200));
    s.signal(libc::SIGKILL);
    s.wait(Duration::from_secs(5)).unwrap();
    let s = Server::start(&args);
    let mut c = Client::connect(s.addr, "/ws?user=keep&device=d");
    assert_eq!(drain(&mut c, Duration::from_millis(100)), [(1, json!("the one that stays"))]);
    let (_, mb) = s.get("/v1/users/gone3/mailbox");
    assert_eq!(mb["count"], 0, "{mb}");
}

/// A push, or `None` once the server is gone.
fn try_push(api: std::net::SocketAddr, user: &str, n: u64) -> Option<(u16, Value)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(api).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let body = json!({"user": user, "data": n}).to_string();
    let head = format!(
        "POST /v1/push HTTP/1.1\r\nHost: api\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body.as_bytes()).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// What a round saw: every push the API answered `queued` or `stored` for, and what the
/// connected users received meanwhile, as (user, seq, data).
type Round = (Vec<(String, u64)>, Vec<(String, u64, u64)>);

/// One round: pushes to 12 users (4 of them connected and acknowledging as they go) until a
/// SIGKILL at `kill_after`.
fn round(s: &Server, kill_after: Duration, next: &mut u64, connected: &mut [Client]) -> Round {
    let answered: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let api = s.api;
    let first = *next;
    let pusher = {
        let (answered, stop) = (answered.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = first;
            while !stop.load(SeqCst) {
                let user = format!("u{}", n % 12);
                let Some((st, r)) = try_push(api, &user, n) else { break };
                if st == 200 && (r["queued"] == 1 || r["stored"] == 1) {
                    answered.lock().unwrap().push((user, n));
                }
                n += 1;
            }
            n
        })
    };
    let t = Instant::now();
    let mut live = Vec::new();
    // The connected users read and acknowledge while the load runs.
    while t.elapsed() < kill_after {
        for (i, c) in connected.iter_mut().enumerate() {
            c.text(r#"{"type":"ping"}"#);
            let mut last = None;
            loop {
                let v = c.json();
                if v["type"] == "pong" {
                    break;
                }
                if v["type"] == "message" {
                    let seq = v["seq"].as_u64().unwrap();
                    live.push((format!("u{i}"), seq, v["data"].as_u64().unwrap()));
                    last = Some(seq);
                }
            }
            if let Some(seq) = last {
                ack(c, &format!("u{i}"), seq);
            }
        }
    }
    s.signal(libc::SIGKILL);
    stop.store(true, SeqCst);
    *next = pusher.join().unwrap();
    let got = answered.lock().unwrap().clone();
    (got, live)
}

#[test]
fn sigkill_under_durable_load_loses_nothing_the_api_answered_for() {
    let dir = Dir::new("kill");
    let mut next = 0u64;
    let mut answered: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut received: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    // Per user: the highest seq acknowledged, and every (seq, data) ever received.
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    // Kill points spread over a round (the same every run, so a failure repeats).
    for (k, kill_ms) in [230u64, 410, 90, 670, 350].into_iter().enumerate() {
        let mut s = Server::start(&["--data-dir", &dir.arg()]);
        let mut connected: Vec<Client> =
            (0..4).map(|i| Client::connect(s.addr, &format!("/ws?user=u{i}&device=d"))).collect();
        for i in 0..4 {
            wait_user(&s, &format!("u{i}"), 1);
        }
        let (got, live) = round(&s, Duration::from_millis(kill_ms), &mut next, &mut connected);
        assert!(!got.is_empty(), "round {k}: the API answered nothing in {kill_ms} ms");
        for (u, n) in got {
            answered.entry(u).or_default().insert(n);
        }
        // What the connected devices got live (they acknowledged as they went; an ack that
        // did not reach the disk before the kill may bring a message again, at or below it).
        for (u, seq, n) in live {
            received.entry(u.clone()).or_default().insert(n);
            seen.entry(u.clone()).or_default().push((seq, n));
            let a = acked.entry(u).or_default();
            *a = (*a).max(seq);
        }
        s.wait(Duration::from_secs(5)).unwrap();
        drop(connected);
        // Back up on the same data directory: every user's device reads what it has not
        // acknowledged, and acknowledges it.
        let s = Server::start(&["--data-dir", &dir.arg()]);
        for i in 0..12 {
            let user = format!("u{i}");
            let mut c = Client::connect(s.addr, &format!("/ws?user={user}&device=d"));
            let msgs = drain(&mut c, Duration::from_millis(150));
            let before = acked.get(&user).copied().unwrap_or(0);
            for (seq, data) in &msgs {
                let n = data.as_u64().unwrap();
                let log = seen.entry(user.clone()).or_default();
                if log.iter().any(|(s, _)| s == seq) {
                    assert!(
                        *seq <= before.max(*acked.get(&user).unwrap_or(&0)),
                        "round {k}: {user} got seq {seq} again, above what it acknowledged ({before})"
                    );
                }
                log.push((*seq, n));
                received.entry(user.clone()).or_default().insert(n);
            }
            if let Some(last) = msgs.iter().map(|m| m.0).max() {
                ack(&mut c, &user, last);
                acked.insert(user.clone(), last.max(before));
                s.wait_for(&format!("/v1/users/{user}/mailbox"), |v| v["cursors"]["d"] == last);
            }
        }
        // Let the acks' commit reach the disk before the next round kills this one.
        std::thread::sleep(Duration::from_millis(200));
        drop(s);
        for (u, want) in &answered {
            let got = received.get(u).cloned().unwrap_or_default();
            let lost: Vec<&u64> = want.difference(&got).collect();
            assert!(lost.is_empty(), "round {k} (kill at {kill_ms} ms): {u} lost {lost:?}");
        }
    }
    let total: usize = answered.values().map(BTreeSet::len).sum();
    eprintln!("{total} pushes answered over five kills, every one delivered");
    assert!(total > 100, "only {total} pushes answered in five rounds");
}
