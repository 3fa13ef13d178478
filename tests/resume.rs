//! Resume on real sockets, two shards: a client that was away gets exactly what it missed, in
//! order, then live messages, with no gap and no duplicate; and a resume past the history is
//! told so with a `reset`.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // reason: a panic is the failure report

mod common;

use common::{Client, Server};
use serde_json::json;

#[test]
fn a_client_that_was_away_resumes_where_it_was() {
    let s = Server::start(&[]);
    let mut c = Client::connect(s.addr, "/ws?channels=ticker");
    let pos = c.welcome.clone().unwrap()["streams"]["channel:ticker"].clone();
    assert_eq!(pos["seq"], 0, "a position before the first event: {pos}");
    let epoch = pos["epoch"].as_u64().unwrap();
    s.wait_for("/v1/channels/ticker", |v| v["subscribers"] == 1);
    let (_, r) = s.post("/v1/publish", json!({"channel": "ticker", "data": 0}));
    assert_eq!(r["queued"], 1);
    assert_eq!(c.json()["seq"], 1);
    drop(c);
    s.wait_for("/v1/channels/ticker", |v| v["subscribers"] == 0);
    for i in 1..=50 {
        let (status, r) = s.post("/v1/publish", json!({"channel": "ticker", "data": i}));
        assert_eq!((status, r["recipients"].as_u64()), (200, Some(0)), "nobody listens: {r}");
    }
    // Back, with a publish racing the resume.
    let mut back = Client::connect(s.addr, "/ws");
    back.text(&format!(
        r#"{{"type":"resume","streams":{{"channel:ticker":{{"epoch":{epoch},"seq":1}}}}}}"#
    ));
    let (_, r) = s.post("/v1/publish", json!({"channel": "ticker", "data": 51}));
    assert!(r["recipients"].as_u64().unwrap() <= 1);
    let resumed = back.json();
    assert_eq!((resumed["type"].as_str(), resumed["from"].as_u64()), (Some("resumed"), Some(2)));
    let mut got = Vec::new();
    while got.len() < 51 {
        let m = back.json();
        assert_eq!(m["type"], "message", "{m}");
        got.push((m["seq"].as_u64().unwrap(), m["data"].as_u64().unwrap()));
    }
    let want: Vec<(u64, u64)> = (2..=52).map(|s| (s, s - 1)).collect();
    assert_eq!(got, want, "exactly what was missed, then live, once each, in order");
}

#[test]
fn a_resume_past_the_history_gets_a_reset_and_continues_live() {
    let s = Server::start(&["--history-size", "5"]);
    let epoch = Client::connect(s.addr, "/ws").welcome.clone().unwrap()["epoch"].as_u64().unwrap();
    for i in 1..=20 {
        s.post("/v1/publish", json!({"channel": "short", "data": i}));
    }
    let mut c = Client::connect(s.addr, "/ws");
    c.text(&format!(
        r#"{{"type":"subscribe","channel":"short","since":{{"epoch":{epoch},"seq":3}}}}"#
    ));
    let r = c.json();
    assert_eq!(
        (r["type"].as_str(), r["reason"].as_str(), r["seq"].as_u64()),
        (Some("reset"), Some("history_exceeded"), Some(20)),
        "{r}"
    );
    s.wait_for("/v1/channels/short", |v| v["subscribers"] == 1);
    s.post("/v1/publish", json!({"channel": "short", "data": 21}));
    let m = c.json();
    assert_eq!((m["seq"].as_u64(), m["data"].as_u64()), (Some(21), Some(21)));
    let (_, stats) = s.get("/v1/stats");
    assert_eq!(stats["totals"]["resets"], 1, "{stats}");
}

#[test]
fn an_idempotent_publish_repeated_delivers_once() {
    let s = Server::start(&[]);
    let mut c = Client::connect(s.addr, "/ws?channels=orders");
    s.wait_for("/v1/channels/orders", |v| v["subscribers"] == 1);
    let body = json!({"channel": "orders", "data": {"id": 7}, "idempotency_key": "order-7"});
    let (status, first) = s.post("/v1/publish", body.clone());
    assert_eq!((status, &first["queued"]), (200, &json!(1)));
    assert!(first.get("duplicate").is_none());
    let (status, again) = s.post("/v1/publish", body.clone());
    assert_eq!(status, 200);
    assert_eq!(again["duplicate"], true);
    assert_eq!((&again["recipients"], &again["queued"]), (&first["recipients"], &first["queued"]));
    // The same key in a batch line, and a fresh one next to it.
    let lines = format!(
        "{}\n{}\n",
        json!({"op": "publish", "channel": "orders", "data": {"id": 7}, "idempotency_key": "order-7"}),
        json!({"op": "publish", "channel": "orders", "data": {"id": 8}, "idempotency_key": "order-8"})
    );
    let (status, _, out) = s.http("POST", "/v1/batch", "", lines.as_bytes());
    assert_eq!(status, 200);
    let results: Vec<serde_json::Value> =
        out.lines().filter(|l| !l.is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        (results[0]["duplicate"].as_bool(), results[1].get("duplicate")),
        (Some(true), None)
    );
    let m = c.json();
    assert_eq!((m["seq"].as_u64(), m["data"]["id"].as_u64()), (Some(1), Some(7)));
    let m = c.json();
    assert_eq!((m["seq"].as_u64(), m["data"]["id"].as_u64()), (Some(2), Some(8)), "7 once, then 8");
    let (status, bad) =
        s.post("/v1/publish", json!({"channel": "orders", "data": 1, "idempotency_key": ""}));
    assert_eq!((status, bad["field"].as_str()), (400, Some("idempotency_key")));
}

#[test]
fn the_history_api_shows_positions_and_kept_messages() {
    let s = Server::start(&["--history-size", "3"]);
    let (status, v) = s.get("/v1/streams/channel:hist");
    assert_eq!((status, &v["seq"], &v["epoch"]), (200, &json!(0), &json!(null)), "{v}");
    assert_eq!(v["guarantee"], "recoverable");
    for i in 1..=5 {
        s.post("/v1/publish", json!({"channel": "hist", "data": {"n": i}}));
    }
    s.post("/v1/publish", json!({"channel": "hist", "data_base64": "AAE="}));
    let (status, v) = s.get("/v1/streams/channel:hist");
    assert_eq!((status, &v["seq"]), (200, &json!(6)), "{v}");
    assert_eq!(v["history"], json!({"messages": 3, "bytes": v["history"]["bytes"], "oldest": 4}));
    let (status, h) = s.get("/v1/streams/channel:hist/history?since=4&limit=10");
    assert_eq!(status, 200, "{h}");
    assert_eq!(
        h["messages"],
        json!([{"seq": 5, "data": {"n": 5}}, {"seq": 6, "data_base64": "AAE="}])
    );
    assert_eq!(h["complete"], true);
    let (_, h) = s.get("/v1/streams/channel:hist/history?since=1");
    assert_eq!(
        (h["complete"].as_bool(), h["messages"].as_array().map(Vec::len)),
        (Some(false), Some(3))
    );
    for (path, field) in [
        ("/v1/streams/channel:hist/history?since=x", "since"),
        ("/v1/streams/channel:hist/history?limit=0", "limit"),
        ("/v1/streams/channel:hist/history?from=1", "from"),
    ] {
        let (status, e) = s.get(path);
        assert_eq!((status, e["field"].as_str()), (400, Some(field)), "{path}: {e}");
    }
    let (status, _) = s.get("/v1/streams/chan:hist");
    assert_eq!(status, 400);
    let (_, b) = s.get("/v1/streams/broadcast");
    assert_eq!(b["guarantee"], "ephemeral");
}

#[test]
fn a_slow_consumer_that_stopped_reading_gets_its_gap_refilled_once_it_reads_again() {
    let s = Server::start(&[
        "--outbox-max-bytes",
        "64KiB",
        "--history-size",
        "1000",
        "--history-bytes",
        "64MiB",
        "--slow-consumer-timeout",
        "30s",
    ]);
    let mut c = Client::connect(s.addr, "/ws?channels=gaps");
    s.wait_for("/v1/channels/gaps", |v| v["subscribers"] == 1);
    // The client reads nothing while 12 MB are published: the socket buffers fill, then the
    // outbox, and the rest is deferred to gap repair.
    let data = "x".repeat(30_000);
    let (mut queued, mut deferred) = (0, 0);
    for _ in 0..400 {
        let (status, r) = s.post("/v1/publish", json!({"channel": "gaps", "data": data}));
        assert_eq!((status, r["dropped"].as_u64()), (200, Some(0)), "{r}");
        queued += r["queued"].as_u64().unwrap();
        deferred += r["deferred"].as_u64().unwrap();
    }
    assert_eq!(queued + deferred, 400);
    assert!(deferred > 0, "the outbox never filled");
    // It reads again: every message arrives once, in order, then live ones.
    for want in 1..=400u64 {
        let m = c.json();
        assert_eq!((m["type"].as_str(), m["seq"].as_u64()), (Some("message"), Some(want)));
    }
    s.post("/v1/publish", json!({"channel": "gaps", "data": "live"}));
    let m = c.json();
    assert_eq!((m["seq"].as_u64(), m["data"].as_str()), (Some(401), Some("live")));
    let (_, stats) = s.get("/v1/stats");
    assert!(stats["totals"]["gap_repairs"].as_u64() > Some(0), "{stats}");
    assert_eq!(stats["totals"]["slow_consumers_closed"], 0);
}
