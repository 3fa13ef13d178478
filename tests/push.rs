//! Delivery on real sockets, two shards: users, devices, channels, broadcast, kick,
//! replacement, slow consumers, delivery reports and sequence numbers.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // reason: test code: a panic is the failure report, and tests time themselves

mod common;

use std::time::{Duration, Instant};

use common::{Client, Frame, Server};
use ringcast::proto::OpCode;
use ringcast::push::ids::{home_of, ConnId};
use serde_json::{json, Value};

fn shard_of(c: &Client) -> u16 {
    c.id().parse::<ConnId>().unwrap().shard
}

/// Opens connections at `path` until one lands on `shard` (SO_REUSEPORT picks by hash).
fn connect_on(s: &Server, path: &str, shard: u16) -> Client {
    for _ in 0..200 {
        let c = Client::connect(s.addr, path);
        if shard_of(&c) == shard {
            return c;
        }
    }
    panic!("no connection landed on shard {shard}");
}

/// A subscriber of `ch` on `shard`: probes without a channel, so discarded probes never touch
/// the channel's counts, then subscribes by message.
fn subscriber_on(s: &Server, shard: u16, ch: &str) -> Client {
    let mut c = connect_on(s, "/ws", shard);
    c.text(&format!(r#"{{"type":"subscribe","channel":"{ch}"}}"#));
    assert_eq!(c.json()["type"], "subscribed");
    c
}

fn message(c: &mut Client) -> Value {
    let v = c.json();
    assert_eq!(v["type"], "message", "{v}");
    v
}

fn wait_user(s: &Server, user: &str, n: usize) {
    s.wait_for(&format!("/v1/users/{user}"), |v| {
        v["connections"].as_array().is_some_and(|a| a.len() == n)
    });
}

fn wait_channel(s: &Server, ch: &str, n: u64) {
    s.wait_for(&format!("/v1/channels/{ch}"), |v| v["subscribers"] == n);
}

#[test]
fn a_user_push_reaches_a_connection_on_the_other_shard() {
    let s = Server::start(&[]);
    // A user whose home shard is 0, connected on shard 1: the push crosses cores.
    let user = (0..).map(|i| format!("u{i}")).find(|u| home_of(u, 2) == 0).unwrap();
    let mut c = connect_on(&s, &format!("/ws?user={user}"), 1);
    assert_eq!(c.welcome.as_ref().unwrap()["user"], user.as_str());
    wait_user(&s, &user, 1);
    let (status, report) = s.post("/v1/push", json!({"user": user, "data": {"hello": "there"}}));
    assert_eq!(status, 200);
    assert_eq!(
        report,
        json!({"recipients": 1, "queued": 1, "dropped": 0, "deferred": 0, "conflated": 0, "offline": 0, "stored": 0, "shed": 0})
    );
    let m = message(&mut c);
    assert_eq!(
        (m["stream"].as_str(), m["seq"].as_u64()),
        (Some(format!("user:{user}").as_str()), Some(1))
    );
    assert_eq!(m["data"], json!({"hello": "there"}));
}

#[test]
fn devices_get_every_copy_with_all_and_one_with_one() {
    let s = Server::start(&[]);
    let mut phones: Vec<Client> = ["phone", "laptop", "tablet"]
        .iter()
        .map(|d| Client::connect(s.addr, &format!("/ws?user=42&device={d}")))
        .collect();
    wait_user(&s, "42", 3);
    let user = s.get("/v1/users/42").1;
    assert_eq!(user["devices"], json!(["laptop", "phone", "tablet"]));

    let (_, r) = s.post("/v1/push", json!({"user": "42", "data": "all"}));
    assert_eq!((r["recipients"].as_u64(), r["queued"].as_u64()), (Some(3), Some(3)));
    for c in phones.iter_mut() {
        assert_eq!(message(c)["data"], "all");
    }
    // The tablet becomes the most recently active device.
    std::thread::sleep(Duration::from_millis(1100));
    phones[2].text(r#"{"type":"ping"}"#);
    assert_eq!(phones[2].json()["type"], "pong");
    let (_, r) = s.post("/v1/push", json!({"user": "42", "data": "one", "policy": "one"}));
    assert_eq!(r["recipients"], 1);
    let m = phones[2].recv();
    let v: Value = match m {
        Frame::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!((v["data"].as_str(), v["seq"].as_u64()), (Some("one"), Some(2)));
    // The others got nothing: the next thing they see is the following push.
    let (_, r) = s.post("/v1/push", json!({"user": "42", "device": "phone", "data": "phone only"}));
    assert_eq!(r["recipients"], 1);
    let m = message(&mut phones[0]);
    assert_eq!((m["data"].as_str(), m["seq"].as_u64()), (Some("phone only"), Some(3)));
    // A user with nothing connected: a durable user stream (the default) keeps it in the
    // user's mailbox.
    let (_, r) = s.post("/v1/push", json!({"user": "nobody", "data": 1}));
    assert_eq!(
        r,
        json!({"recipients": 0, "queued": 0, "dropped": 0, "deferred": 0, "conflated": 0, "offline": 0, "stored": 1, "shed": 0})
    );
}

#[test]
fn channel_publish_reaches_exactly_its_subscribers_and_unsubscribe_stops_it() {
    let s = Server::start(&[]);
    // One subscriber on each shard for certain, the rest wherever they land.
    let mut subs: Vec<Client> =
        vec![subscriber_on(&s, 0, "prices"), subscriber_on(&s, 1, "prices")];
    subs.extend((0..4).map(|_| Client::connect(s.addr, "/ws?channels=prices")));
    let mut others: Vec<Client> =
        (0..4).map(|_| Client::connect(s.addr, "/ws?channels=news")).collect();
    // One more subscribes by message.
    let mut late = Client::connect(s.addr, "/ws");
    late.text(r#"{"type":"subscribe","channel":"prices"}"#);
    // v2: the ack says where the channel's stream stands (nothing published yet: seq 0).
    let ack = late.json();
    assert_eq!(
        (&ack["type"], &ack["channel"], &ack["seq"]),
        (&json!("subscribed"), &json!("prices"), &json!(0))
    );
    assert!(ack["epoch"].is_u64(), "{ack}");
    subs.push(late);
    wait_channel(&s, "prices", 7);
    let shards: std::collections::BTreeSet<u16> = subs.iter().map(shard_of).collect();
    assert_eq!(shards.len(), 2, "subscribers on both shards");

    let (_, r) = s.post("/v1/publish", json!({"channel": "prices", "data": {"px": 101.5}}));
    assert_eq!(
        r,
        json!({"recipients": 7, "queued": 7, "dropped": 0, "deferred": 0, "conflated": 0, "offline": 0, "stored": 0, "shed": 0})
    );
    for c in subs.iter_mut() {
        let m = message(c);
        assert_eq!((m["stream"].as_str(), m["seq"].as_u64()), (Some("channel:prices"), Some(1)));
    }
    let (_, r) = s.post("/v1/publish", json!({"channel": "news", "data": "n1"}));
    assert_eq!(r["recipients"], 4);
    for c in others.iter_mut() {
        assert_eq!(message(c)["data"], "n1", "news subscribers get news, not prices");
    }

    // Unsubscribe stops delivery.
    subs[0].text(r#"{"type":"unsubscribe","channel":"prices"}"#);
    // v2: the answer carries a fresh session token for the subscriptions left.
    let ack = subs[0].json();
    assert_eq!((&ack["type"], &ack["channel"]), (&json!("unsubscribed"), &json!("prices")));
    assert!(ack["session"].is_string(), "{ack}");
    wait_channel(&s, "prices", 6);
    let (_, r) = s.post("/v1/publish", json!({"channel": "prices", "data": 2}));
    assert_eq!(r["recipients"], 6);
    subs[0].text(r#"{"type":"ping"}"#);
    assert_eq!(subs[0].json()["type"], "pong", "nothing from prices arrived before the pong");
    for c in subs.iter_mut().skip(1) {
        assert_eq!(message(c)["seq"], 2);
    }
    // A channel without subscribers.
    let (_, r) = s.post("/v1/publish", json!({"channel": "empty", "data": 0}));
    assert_eq!(
        r,
        json!({"recipients": 0, "queued": 0, "dropped": 0, "deferred": 0, "conflated": 0, "offline": 0, "stored": 0, "shed": 0})
    );
}

#[test]
fn broadcast_reaches_every_connection_and_binary_stays_binary() {
    let s = Server::start(&[]);
    let mut all: Vec<Client> =
        (0..10).map(|i| Client::connect(s.addr, &format!("/ws?user=b{i}"))).collect();
    let (_, r) = s.post("/v1/broadcast", json!({"data": "to everyone"}));
    assert_eq!(r["recipients"], 10);
    for c in all.iter_mut() {
        let m = message(c);
        assert_eq!(
            (m["stream"].as_str(), m["data"].as_str()),
            (Some("broadcast"), Some("to everyone"))
        );
    }
    let (_, r) = s.post("/v1/broadcast", json!({"data_base64": "AAEC/w=="}));
    assert_eq!(r["queued"], 10);
    for c in all.iter_mut() {
        let Frame::Binary(b) = c.recv() else {
            panic!("binary publish must arrive as a binary frame")
        };
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let head: Value = serde_json::from_slice(&b[4..4 + n]).unwrap();
        assert_eq!((head["stream"].as_str(), head["seq"].as_u64()), (Some("broadcast"), Some(2)));
        assert_eq!(&b[4 + n..], &[0, 1, 2, 255]);
    }
}

#[test]
fn send_to_one_connection_by_id() {
    let s = Server::start(&[]);
    let mut a = Client::connect(s.addr, "/ws");
    let mut b = Client::connect(s.addr, "/ws");
    let (_, r) = s.post("/v1/send", json!({"conn": a.id(), "data": "just you"}));
    assert_eq!(r["queued"], 1);
    let m = message(&mut a);
    assert_eq!((m["stream"].as_str(), m["seq"].as_u64()), (Some("direct"), Some(1)));
    b.text(r#"{"type":"ping"}"#);
    assert_eq!(b.json()["type"], "pong", "b got nothing");
    let gone = format!("c0.{}.999", u32::MAX - 5);
    let (_, r) = s.post("/v1/send", json!({"conn": gone, "data": 1}));
    assert_eq!(r["offline"], 1);
}

#[test]
fn kick_and_replacement_close_with_their_codes() {
    let s = Server::start(&["--replace-same-device", "true"]);
    let mut old = Client::connect(s.addr, "/ws?user=7&device=phone");
    let mut laptop = Client::connect(s.addr, "/ws?user=7&device=laptop");
    wait_user(&s, "7", 2);
    let mut new = Client::connect(s.addr, "/ws?user=7&device=phone");
    assert_eq!(old.recv_close(), (Some(4000), "replaced".into()));
    old.send(OpCode::Close, &4000u16.to_be_bytes());
    old.expect_eof();
    wait_user(&s, "7", 2);

    let (status, r) =
        s.post("/v1/kick", json!({"conn": laptop.id(), "code": 4321, "reason": "bye"}));
    assert_eq!((status, r["kicked"].as_u64()), (200, Some(1)));
    assert_eq!(laptop.recv_close(), (Some(4321), "bye".into()));
    let (_, r) = s.post("/v1/kick", json!({"user": "7"}));
    assert_eq!(r["kicked"], 1);
    assert_eq!(new.recv_close(), (Some(4001), "kicked".into()));
    let (_, r) = s.post("/v1/kick", json!({"user": "nobody"}));
    assert_eq!(r, json!({"kicked": 0, "offline": 1, "discarded": 0}));
}

#[test]
fn a_client_that_stops_reading_is_shed_then_closed_while_others_lose_nothing() {
    let s = Server::start(&["--outbox-max-bytes", "64KiB", "--slow-consumer-timeout", "500ms"]);
    let mut fast = Client::connect(s.addr, "/ws?channels=feed");
    let slow = Client::connect(s.addr, "/ws?channels=feed");
    wait_channel(&s, "feed", 2);
    let payload = "x".repeat(20_000);
    let total = 300;
    let mut queued = 0;
    let mut dropped = 0;
    let reader = std::thread::spawn(move || {
        let mut seqs = Vec::new();
        while seqs.len() < total {
            let m = message(&mut fast);
            seqs.push(m["seq"].as_u64().unwrap());
        }
        (seqs, fast)
    });
    for _ in 0..total {
        let (_, r) =
            s.post("/v1/publish", json!({"channel": "feed", "data": payload, "priority": "low"}));
        queued += r["queued"].as_u64().unwrap();
        // The channel keeps history: what the slow client has no room for is deferred to
        // gap repair, not dropped.
        assert_eq!(r["dropped"], 0, "{r}");
        dropped += r["deferred"].as_u64().unwrap();
    }
    let (seqs, _fast) = reader.join().unwrap();
    assert_eq!(
        seqs,
        (1..=total as u64).collect::<Vec<_>>(),
        "the reading client lost nothing, in order"
    );
    assert!(dropped > 0, "the slow client's pushes were shed (deferred)");
    assert_eq!(queued + dropped, 2 * total as u64, "every recipient accounted for");
    // The slow consumer is closed (it leaves the channel at once): one subscriber is left.
    wait_channel(&s, "feed", 1);
    let (_, r) = s.post("/v1/publish", json!({"channel": "feed", "data": "after"}));
    assert_eq!(r["recipients"], 1);
    let (_, stats) = s.get("/v1/stats");
    assert_eq!(stats["totals"]["slow_consumers_closed"], 1, "{stats}");
    drop(slow);
}

#[test]
fn sequence_numbers_have_no_gaps_and_reports_match_what_arrived() {
    let s = Server::start(&[]);
    let mut clients: Vec<Client> = (0..8)
        .map(|i| Client::connect(s.addr, &format!("/ws?user=s{}&channels=tick", i % 2)))
        .collect();
    wait_channel(&s, "tick", 8);
    wait_user(&s, "s0", 4);
    wait_user(&s, "s1", 4);
    let mut expected_queued = 0;
    for i in 0..50 {
        let (_, r) = s.post("/v1/publish", json!({"channel": "tick", "data": i}));
        expected_queued += r["queued"].as_u64().unwrap();
        let (_, r) = s.post("/v1/push", json!({"user": format!("s{}", i % 2), "data": i}));
        expected_queued += r["queued"].as_u64().unwrap();
    }
    assert_eq!(expected_queued, 50 * 8 + 50 * 4);
    let mut received = 0;
    for c in clients.iter_mut() {
        let mut last: std::collections::HashMap<String, u64> = Default::default();
        let start = Instant::now();
        let mut n = 0;
        while n < 50 + 25 {
            let m = message(c);
            let stream = m["stream"].as_str().unwrap().to_string();
            let seq = m["seq"].as_u64().unwrap();
            let prev = last.insert(stream.clone(), seq).unwrap_or(0);
            assert_eq!(seq, prev + 1, "gap in {stream}");
            n += 1;
            assert!(start.elapsed() < Duration::from_secs(10));
        }
        received += n;
    }
    assert_eq!(received as u64, expected_queued, "reports match what clients received");
}

#[test]
fn bad_client_messages_get_errors_and_abuse_gets_1008() {
    let s = Server::start(&["--max-client-errors", "3", "--max-channels-per-conn", "1"]);
    let mut c = Client::connect(s.addr, "/ws");
    c.text("not json");
    assert_eq!(c.json()["code"], "bad_json");
    c.text(r#"{"type":"subscribe","channel":"a"}"#);
    assert_eq!(c.json()["type"], "subscribed");
    c.text(r#"{"type":"subscribe","channel":"b"}"#);
    assert_eq!(c.json()["code"], "too_many_channels");
    c.text(r#"{"type":"unsubscribe","channel":"zzz"}"#);
    assert_eq!(c.json()["code"], "not_subscribed");
    c.send(OpCode::Binary, b"\x00");
    assert_eq!(c.recv_close(), (Some(1008), "too many bad messages".into()));
    // Identity parameters are checked at the upgrade.
    let refused = Client::try_connect(s.addr, "/ws?user=has%20space", "").err().unwrap();
    assert!(refused.starts_with("HTTP/1.1 400 "), "{refused}");
}

#[test]
fn a_streams_numbering_continues_after_its_last_listener_leaves() {
    let s = Server::start(&[]);
    let mut a = Client::connect(s.addr, "/ws?channels=cont&user=back");
    let epoch = a.welcome.as_ref().unwrap()["epoch"].clone();
    wait_channel(&s, "cont", 1);
    for _ in 0..2 {
        s.post("/v1/publish", json!({"channel": "cont", "data": 1}));
        s.post("/v1/push", json!({"user": "back", "data": 1}));
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        let m = message(&mut a);
        seen.push((m["stream"].as_str().unwrap().to_string(), m["seq"].as_u64().unwrap()));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("channel:cont".into(), 1),
            ("channel:cont".into(), 2),
            ("user:back".into(), 1),
            ("user:back".into(), 2)
        ]
    );
    // The user stream is durable (the default): acknowledged, so the next connection of the
    // same device is not sent them again.
    a.text(r#"{"type":"ack","stream":"user:back","seq":2}"#);
    // The only listener goes; a publish meanwhile reaches nobody. The channel is recoverable
    // (the default), so it is numbered and kept (3) for whoever resumes.
    a.send(OpCode::Close, &1000u16.to_be_bytes());
    a.recv_close();
    wait_channel(&s, "cont", 0);
    wait_user(&s, "back", 0);
    let (_, r) = s.post("/v1/publish", json!({"channel": "cont", "data": "nobody"}));
    assert_eq!(r["recipients"], 0);
    // A new listener, same epoch: the numbers go on.
    let mut b = Client::connect(s.addr, "/ws?channels=cont&user=back");
    let w = b.welcome.clone().unwrap();
    assert_eq!(w["epoch"], epoch);
    assert_eq!(w["streams"]["channel:cont"], json!({"epoch": epoch, "seq": 3}), "{w}");
    wait_channel(&s, "cont", 1);
    s.post("/v1/publish", json!({"channel": "cont", "data": 2}));
    let m = message(&mut b);
    assert_eq!((m["stream"].as_str(), m["seq"].as_u64()), (Some("channel:cont"), Some(4)));
    s.post("/v1/push", json!({"user": "back", "data": 2}));
    let m = message(&mut b);
    assert_eq!((m["stream"].as_str(), m["seq"].as_u64()), (Some("user:back"), Some(3)));
}
