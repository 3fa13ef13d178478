//! Durable user streams on real sockets: acknowledgements, redelivery, the offline mailbox,
//! reconnecting from the device's cursor, ttl and caps, `first_ack` with `cancel`, and the
//! mailbox API.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // reason: a panic is the failure report; tests time themselves

mod common;

use std::time::{Duration, Instant};

use common::{Client, Server};
use serde_json::{json, Value};

/// The next message, skipping pongs.
fn next(c: &mut Client) -> Value {
    loop {
        let v = c.json();
        if v["type"] != "pong" {
            return v;
        }
    }
}

/// Nothing arrives but the pong of a ping sent now (after `wait`).
fn quiet(c: &mut Client, wait: Duration) {
    std::thread::sleep(wait);
    c.text(r#"{"type":"ping"}"#);
    let v = c.json();
    assert_eq!(v["type"], "pong", "expected nothing more, got {v}");
}

fn wait_user(s: &Server, user: &str, n: usize) {
    s.wait_for(&format!("/v1/users/{user}"), |v| {
        v["connections"].as_array().is_some_and(|a| a.len() == n)
    });
}

fn push(s: &Server, body: Value) -> Value {
    let (st, r) = s.post("/v1/push", body);
    assert_eq!(st, 200, "{r}");
    r
}

fn ack(c: &mut Client, user: &str, seq: u64) {
    c.text(&json!({"type": "ack", "stream": format!("user:{user}"), "seq": seq}).to_string());
}

fn data_seq(m: &Value) -> (u64, Value) {
    assert_eq!(m["type"], "message", "{m}");
    (m["seq"].as_u64().unwrap(), m["data"].clone())
}

#[test]
fn an_unacked_message_comes_again_after_the_timeout_and_stops_at_the_ack() {
    let s = Server::start(&["--ack-timeout", "300ms", "--ack-attempts", "3"]);
    let mut c = Client::connect(s.addr, "/ws?user=r&device=phone");
    wait_user(&s, "r", 1);
    let t = Instant::now();
    let r = push(&s, json!({"user": "r", "data": "hello"}));
    assert_eq!((r["queued"].as_u64(), r["stored"].as_u64()), (Some(1), Some(0)), "{r}");
    let m = next(&mut c);
    assert_eq!((m["ack"].as_bool(), data_seq(&m)), (Some(true), (1, json!("hello"))), "{m}");
    // Not acknowledged: the same message again, once the timeout has passed.
    let again = next(&mut c);
    assert_eq!(again, m, "the very same message");
    assert!(t.elapsed() >= Duration::from_millis(280), "{:?}", t.elapsed());
    ack(&mut c, "r", 1);
    quiet(&mut c, Duration::from_millis(1500));
    let metrics = s.http("GET", "/metrics", "", b"").2;
    assert!(metrics.contains("ringcast_redelivered_total 1\n"), "{metrics}");
    assert!(metrics.contains("ringcast_acks_total 1\n"), "{metrics}");
}

#[test]
fn a_device_reconnects_from_its_acked_cursor_and_missed_messages_come_before_live_ones() {
    let s = Server::start(&[]);
    let mut c = Client::connect(s.addr, "/ws?user=k&device=phone");
    wait_user(&s, "k", 1);
    for i in 1..=3 {
        push(&s, json!({"user": "k", "data": i}));
    }
    for i in 1..=3 {
        assert_eq!(data_seq(&next(&mut c)), (i, json!(i)));
    }
    ack(&mut c, "k", 1);
    drop(c);
    wait_user(&s, "k", 0);
    // Back on the same device: 2 and 3 again, in order, then what is pushed now.
    let mut c = Client::connect(s.addr, "/ws?user=k&device=phone");
    push(&s, json!({"user": "k", "data": 4}));
    let got: Vec<u64> = (0..3).map(|_| data_seq(&next(&mut c)).0).collect();
    assert_eq!(got, [2, 3, 4]);
    // A device never seen gets what is still kept: 1 was settled when the only device that
    // had acknowledged anything acknowledged it.
    let mut tablet = Client::connect(s.addr, "/ws?user=k&device=tablet");
    let got: Vec<u64> = (0..3).map(|_| data_seq(&next(&mut tablet)).0).collect();
    assert_eq!(got, [2, 3, 4]);
    let (_, mb) = s.get("/v1/users/k/mailbox");
    assert_eq!((mb["durable"].as_bool(), mb["count"].as_u64()), (Some(true), Some(3)), "{mb}");
    assert_eq!(mb["cursors"], json!({"phone": 1}), "{mb}");
}

#[test]
fn a_push_to_an_offline_user_is_stored_and_delivered_at_connect_in_order() {
    let s = Server::start(&[]);
    for i in 1..=3 {
        let r = push(&s, json!({"user": "off", "data": {"n": i}}));
        assert_eq!((r["stored"].as_u64(), r["offline"].as_u64()), (Some(1), Some(0)), "{r}");
    }
    let (_, mb) = s.get("/v1/users/off/mailbox");
    assert_eq!((mb["count"].as_u64(), mb["oldest"].as_u64()), (Some(3), Some(1)), "{mb}");
    let mut c = Client::connect(s.addr, "/ws?user=off");
    assert_eq!(c.welcome.clone().unwrap()["streams"]["user:off"]["seq"], 3);
    push(&s, json!({"user": "off", "data": {"n": 4}}));
    let got: Vec<(u64, Value)> = (0..4).map(|_| data_seq(&next(&mut c))).collect();
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(got[3].1, json!({"n": 4}));
    ack(&mut c, "off", 4);
    s.wait_for("/v1/users/off/mailbox", |v| v["count"] == 0);
}

#[test]
fn a_messages_ttl_expires_it_from_the_mailbox() {
    let s = Server::start(&[]);
    push(&s, json!({"user": "t", "data": "short", "ttl": "200ms"}));
    push(&s, json!({"user": "t", "data": "long"}));
    std::thread::sleep(Duration::from_millis(400));
    let mut c = Client::connect(s.addr, "/ws?user=t");
    assert_eq!(data_seq(&next(&mut c)), (2, json!("long")), "the expired one is not delivered");
    quiet(&mut c, Duration::from_millis(100));
}

#[test]
fn first_ack_settles_for_every_device_and_the_others_get_cancel_not_a_redelivery() {
    let s = Server::start(&["--ack-timeout", "300ms"]);
    let mut phone = Client::connect(s.addr, "/ws?user=f&device=phone");
    let mut laptop = Client::connect(s.addr, "/ws?user=f&device=laptop");
    wait_user(&s, "f", 2);
    let r = push(&s, json!({"user": "f", "data": "ring", "policy": "first_ack"}));
    assert_eq!(r["recipients"], 2, "{r}");
    assert_eq!(data_seq(&next(&mut phone)), (1, json!("ring")));
    assert_eq!(data_seq(&next(&mut laptop)), (1, json!("ring")));
    ack(&mut phone, "f", 1);
    assert_eq!(next(&mut laptop), json!({"type": "cancel", "stream": "user:f", "seq": 1}));
    quiet(&mut laptop, Duration::from_millis(1000));
    quiet(&mut phone, Duration::ZERO);
    drop(laptop);
    wait_user(&s, "f", 1);
    let mut laptop = Client::connect(s.addr, "/ws?user=f&device=laptop");
    quiet(&mut laptop, Duration::from_millis(100));
    let (_, mb) = s.get("/v1/users/f/mailbox");
    assert_eq!(mb["count"], 0, "settled: {mb}");
}

#[test]
fn caps_drop_the_oldest_count_it_and_a_device_behind_them_is_told_reset() {
    let s = Server::start(&["--mailbox-size", "3"]);
    // The device acknowledges once, so it is known, then goes away.
    let mut c = Client::connect(s.addr, "/ws?user=cap&device=d");
    wait_user(&s, "cap", 1);
    push(&s, json!({"user": "cap", "data": 0}));
    assert_eq!(data_seq(&next(&mut c)).0, 1);
    ack(&mut c, "cap", 1);
    drop(c);
    wait_user(&s, "cap", 0);
    for i in 2..=6 {
        push(&s, json!({"user": "cap", "data": i}));
    }
    let mut c = Client::connect(s.addr, "/ws?user=cap&device=d");
    let r = next(&mut c);
    assert_eq!(
        (r["type"].as_str(), r["stream"].as_str()),
        (Some("reset"), Some("user:cap")),
        "{r}"
    );
    let got: Vec<u64> = (0..3).map(|_| data_seq(&next(&mut c)).0).collect();
    assert_eq!(got, [4, 5, 6], "the last three");
    let metrics = s.http("GET", "/metrics", "", b"").2;
    assert!(metrics.contains("ringcast_mailbox_evicted_total 2\n"), "{metrics}");
    // The API empties it; the device is told at its next connection.
    let (st, h, b) = s.http("DELETE", "/v1/users/cap/mailbox", "", b"");
    assert_eq!(st, 200, "{h}{b}");
    assert!(b.contains("\"cleared\":3"), "{b}");
    let (st, h, _) = s.http("PUT", "/v1/users/cap/mailbox", "", b"");
    assert!(st == 405 && h.contains("Allow: GET, DELETE"), "{h}");
}

#[test]
fn acks_are_only_for_the_connections_own_user_stream() {
    let s = Server::start(&[]);
    let mut c = Client::connect(s.addr, "/ws?user=own");
    ack(&mut c, "someone-else", 1);
    assert_eq!(next(&mut c)["code"], "bad_ack");
    let mut anon = Client::connect(s.addr, "/ws");
    ack(&mut anon, "own", 1);
    assert_eq!(next(&mut anon)["code"], "bad_ack");
    c.text(r#"{"type":"ack","stream":"channel:x","seq":1}"#);
    assert_eq!(next(&mut c)["code"], "bad_ack");
}

/// A push with `wait_ack_ms` on a thread: its status, its report, and how long it took.
fn push_waiting(s: &Server, body: Value) -> std::thread::JoinHandle<(u16, Value, Duration)> {
    let api = s.api;
    std::thread::spawn(move || {
        let t = Instant::now();
        let (st, _, b) = common::http(api, "POST", "/v1/push", "", body.to_string().as_bytes());
        (st, serde_json::from_str(&b).unwrap_or(Value::Null), t.elapsed())
    })
}

/// Waits until `ringcast_ack_waits`, summed over shards, is `n`.
fn wait_ack_waits(s: &Server, n: u64) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, _, text) = s.http("GET", "/metrics", "", b"");
        let waits: u64 = text
            .lines()
            .filter(|l| l.starts_with("ringcast_ack_waits{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        if waits == n {
            return;
        }
        assert!(Instant::now() < end, "ringcast_ack_waits stayed {waits}, not {n}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn wait_ack_ms_reports_which_devices_acked_in_time() {
    let s = Server::start(&[]);
    let mut phone = Client::connect(s.addr, "/ws?user=w&device=phone");
    let mut laptop = Client::connect(s.addr, "/ws?user=w&device=laptop");
    wait_user(&s, "w", 2);
    // Both ack: the report comes as soon as the second one does, well before the wait.
    let h = push_waiting(&s, json!({"user": "w", "data": 1, "wait_ack_ms": 20000}));
    assert_eq!(data_seq(&next(&mut phone)).0, 1);
    assert_eq!(data_seq(&next(&mut laptop)).0, 1);
    ack(&mut phone, "w", 1);
    ack(&mut laptop, "w", 1);
    let (st, r, took) = h.join().unwrap();
    assert_eq!(st, 200, "{r}");
    let mut acked: Vec<&str> =
        r["acked"].as_array().unwrap().iter().flat_map(Value::as_str).collect();
    acked.sort_unstable();
    assert_eq!((acked, &r["not_acked"]), (vec!["laptop", "phone"], &json!([])), "{r}");
    assert!(took < Duration::from_secs(10), "answered at the last ack, took {took:?}");
    // Only the phone acks: the report waits the whole time and names the laptop.
    let h = push_waiting(&s, json!({"user": "w", "data": 2, "wait_ack_ms": 400}));
    assert_eq!(data_seq(&next(&mut phone)).0, 2);
    assert_eq!(data_seq(&next(&mut laptop)).0, 2);
    ack(&mut phone, "w", 2);
    let (st, r, took) = h.join().unwrap();
    assert_eq!(st, 200, "{r}");
    assert_eq!((&r["acked"], &r["not_acked"]), (&json!(["phone"]), &json!(["laptop"])), "{r}");
    assert!(took >= Duration::from_millis(400), "held for the wait, took {took:?}");
    // first_ack: the first device's ack answers it.
    let h = push_waiting(
        &s,
        json!({"user": "w", "data": 3, "policy": "first_ack", "wait_ack_ms": 20000}),
    );
    assert_eq!(data_seq(&next(&mut laptop)).0, 3);
    ack(&mut laptop, "w", 3);
    let (_, r, _) = h.join().unwrap();
    assert_eq!((&r["acked"], &r["not_acked"]), (&json!(["laptop"]), &json!(["phone"])), "{r}");
    // A stored push: a device that connects within the wait and acks is named.
    drop((phone, laptop));
    wait_user(&s, "w", 0);
    let h = push_waiting(&s, json!({"user": "w", "data": 4, "wait_ack_ms": 20000}));
    // Connect once the push is stored and waiting.
    wait_ack_waits(&s, 1);
    let mut tablet = Client::connect(s.addr, "/ws?user=w&device=tablet");
    let m = data_seq(&next(&mut tablet));
    assert!(m.0 <= 4, "{m:?}");
    ack(&mut tablet, "w", 4);
    let (_, r, _) = h.join().unwrap();
    assert_eq!((r["stored"].as_u64(), &r["acked"]), (Some(1), &json!(["tablet"])), "{r}");
    wait_ack_waits(&s, 0);
}

#[test]
fn wait_ack_ms_is_refused_where_it_cannot_hold() {
    let dir = std::env::temp_dir().join(format!("ringcast-waitack-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ringcast.toml");
    std::fs::write(&file, "[[streams]]\npattern = \"user:x\"\nguarantee = \"recoverable\"\n")
        .unwrap();
    let s = Server::start(&["--config", file.to_str().unwrap()]);
    for (body, field) in [
        (json!({"user": "x", "data": 1, "wait_ack_ms": 100}), "durable"),
        (json!({"user": "x", "data": 1, "wait_ack_ms": 0}), "from 1 to 60000"),
        (json!({"user": "x", "data": 1, "wait_ack_ms": 60001}), "from 1 to 60000"),
        (json!({"user": "x", "data": 1, "wait_ack_ms": "1s"}), "from 1 to 60000"),
    ] {
        let (st, r) = s.post("/v1/push", body);
        assert_eq!(st, 400, "{r}");
        assert!(r.to_string().contains(field), "{r}");
    }
    // Another user's stream is durable by default: it may wait.
    let (st, r) = s.post("/v1/push", json!({"user": "y", "data": 1, "wait_ack_ms": 50}));
    assert_eq!((st, &r["stored"], &r["acked"]), (200, &json!(1), &json!([])), "{r}");
    let _ = std::fs::remove_dir_all(&dir);
}
