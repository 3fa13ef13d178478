//! Admission control on real sockets: the per-address handshake rate (429 with a jittered
//! Retry-After), jittered Retry-After on every overload refusal, `--overload-close` (101 then
//! 1013 with `retry_ms`), and `--drain-spread` closing in waves with retry hints.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // reason: a panic is the failure report; tests time themselves

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{raw_exchange, upgrade_request, Client, Server};

/// Status and Retry-After (seconds) of an upgrade attempt.
fn attempt(s: &Server, path: &str) -> (u16, Option<u64>) {
    let resp = raw_exchange(s.addr, upgrade_request(path, "").as_bytes());
    let status = resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let retry = resp
        .lines()
        .find_map(|l| l.strip_prefix("Retry-After: "))
        .map(|v| v.trim().parse().unwrap());
    (status, retry)
}

/// Upgrades on a raw socket and reads what follows the 101: it must be a close frame at once
/// (no welcome); returns its code and reason.
fn upgrade_then_close(s: &Server) -> (Option<u16>, String) {
    use std::io::{Read, Write};
    let mut t = std::net::TcpStream::connect(s.addr).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    t.write_all(upgrade_request("/ws", "").as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = t.read_to_end(&mut buf);
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    assert!(buf.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&buf));
    let f = &buf[end..];
    assert_eq!(f[0], 0x88, "the first frame is the close");
    let len = usize::from(f[1]);
    assert_eq!(f.len(), 2 + len, "nothing after the close frame");
    let code = u16::from_be_bytes([f[2], f[3]]);
    (Some(code), String::from_utf8(f[4..].to_vec()).unwrap())
}

#[test]
fn the_handshake_rate_per_address_answers_429_with_a_retry_hint() {
    let s = Server::start(&["--handshake-rate-per-ip", "1", "--handshake-burst", "3"]);
    let mut kept = Vec::new();
    for _ in 0..3 {
        kept.push(Client::connect(s.addr, "/ws"));
    }
    let mut hints = BTreeSet::new();
    for _ in 0..12 {
        let (status, retry) = attempt(&s, "/ws");
        assert_eq!(status, 429);
        let r = retry.expect("Retry-After on a 429");
        assert!((1..=2).contains(&r), "about the 1 s a token takes, up to twice it: {r}");
        hints.insert(r);
    }
    assert_eq!(hints.len(), 2, "jittered: {hints:?}");
    let (_, _, m) = s.http("GET", "/metrics", "", b"");
    assert!(m.contains("ringcast_handshake_failures_total{reason=\"rate_limited\"} 12"), "{m}");
    // A token comes back after a second.
    std::thread::sleep(Duration::from_millis(1100));
    assert!(Client::try_connect(s.addr, "/ws", "").is_ok());
}

#[test]
fn a_full_server_answers_503_with_a_jittered_retry_after() {
    let s = Server::start(&["--max-connections", "1"]);
    let _one = Client::connect(s.addr, "/ws");
    let mut hints = BTreeSet::new();
    for _ in 0..30 {
        let (status, retry) = attempt(&s, "/ws");
        assert_eq!(status, 503);
        let r = retry.expect("Retry-After on a 503");
        assert!((5..=10).contains(&r), "{r}");
        hints.insert(r);
    }
    assert!(hints.len() >= 3, "jittered: {hints:?}");
}

#[test]
fn overload_close_upgrades_then_closes_1013_with_retry_ms() {
    let s = Server::start(&["--max-connections", "1", "--overload-close", "true"]);
    let _one = Client::connect(s.addr, "/ws");
    let mut hints = BTreeSet::new();
    for _ in 0..10 {
        let (code, reason) = upgrade_then_close(&s);
        assert_eq!(code, Some(1013), "{reason}");
        let v: serde_json::Value = serde_json::from_str(&reason).unwrap();
        assert_eq!(v["reason"], "server at connection limit");
        let ms = v["retry_ms"].as_u64().unwrap();
        assert!((5000..=10000).contains(&ms), "{ms}");
        hints.insert(ms);
    }
    assert!(hints.len() >= 5, "jittered: {hints:?}");
    let (_, _, m) = s.http("GET", "/metrics", "", b"");
    assert!(m.contains("ringcast_handshake_failures_total{reason=\"server_full\"} 10"), "{m}");
    let (_, v) = s.get("/v1/stats");
    assert_eq!(v["totals"]["overload_closes"], 10, "{v}");
}

#[test]
fn drain_spread_closes_in_waves_with_retry_hints() {
    let mut s = Server::start(&["--drain-spread", "2s", "--drain-timeout", "5s"]);
    let n = 40;
    let clients: Vec<Client> = (0..n).map(|_| Client::connect(s.addr, "/ws")).collect();
    let t0 = Instant::now();
    s.signal(libc::SIGTERM);
    let handles: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                c.stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let (code, reason) = c.recv_close();
                let at = t0.elapsed();
                // Answer the close so the drain completes.
                c.send(ringcast::proto::OpCode::Close, &1000u16.to_be_bytes());
                (code, reason, at)
            })
        })
        .collect();
    let mut times = Vec::new();
    for h in handles {
        let (code, reason, at) = h.join().unwrap();
        assert_eq!(code, Some(1001));
        let v: serde_json::Value = serde_json::from_str(&reason).unwrap();
        assert!((1000..=3000).contains(&v["retry_ms"].as_u64().unwrap()), "{reason}");
        times.push(at);
    }
    times.sort();
    let (first, last) = (times[0], times[n - 1]);
    assert!(first < Duration::from_millis(700), "the first wave goes at once: {first:?}");
    assert!(last >= Duration::from_millis(1500), "the last near the end of the window: {last:?}");
    assert!(last < Duration::from_millis(3500), "{last:?}");
    let in_first_half = times.iter().filter(|t| **t < Duration::from_secs(1)).count();
    assert!((8..=32).contains(&in_first_half), "about half in the first second: {in_first_half}");
    assert!(s.wait(Duration::from_secs(10)).is_some_and(|st| st.success()));
    assert_eq!(s.total("drain_waves"), n as u64);
}
