//! The HTTP API: every endpoint, and every way a request can be wrong.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // reason: test code: a panic is the failure report, and tests time themselves

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{http, Client, Server};
use serde_json::{json, Value};

fn body(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

#[test]
fn every_endpoint_answers() {
    let s = Server::start(&[]);
    let mut c = Client::connect(s.addr, "/ws?user=alice&device=web&channels=room");
    s.wait_for("/v1/channels/room", |v| v["subscribers"] == 1);
    s.wait_for("/v1/users/alice", |v| v["connections"].as_array().is_some_and(|a| a.len() == 1));
    let report = json!({"recipients": 1, "queued": 1, "dropped": 0, "deferred": 0, "conflated": 0, "offline": 0, "stored": 0, "shed": 0});
    assert_eq!(
        s.post("/v1/publish", json!({"channel": "room", "data": 1, "priority": "high"})),
        (200, report.clone())
    );
    assert_eq!(
        s.post("/v1/push", json!({"user": "alice", "data": 2, "policy": "active"})),
        (200, report.clone())
    );
    assert_eq!(s.post("/v1/send", json!({"conn": c.id(), "data": 3})), (200, report.clone()));
    assert_eq!(s.post("/v1/broadcast", json!({"data": 4})), (200, report));
    for want in [1, 2, 3, 4] {
        assert_eq!(c.json()["data"], want);
    }
    // `ttl` and `conflate` are taken by every delivering call.
    let extra = json!({"ttl": "30s", "conflate": "k"});
    for (path, mut req) in [
        ("/v1/publish", json!({"channel": "room", "data": 5})),
        ("/v1/push", json!({"user": "alice", "data": 6})),
        ("/v1/send", json!({"conn": c.id(), "data": 7})),
        ("/v1/broadcast", json!({"data": 8, "ttl": 0.5})),
    ] {
        for (k, v) in extra.as_object().unwrap() {
            req.as_object_mut().unwrap().entry(k.clone()).or_insert(v.clone());
        }
        let (status, r) = s.post(path, req);
        assert_eq!((status, r["queued"].as_u64()), (200, Some(1)), "{path} {r}");
    }
    for want in [5, 6, 7, 8] {
        assert_eq!(c.json()["data"], want);
    }
    let (status, user) = s.get("/v1/users/alice");
    assert_eq!(status, 200);
    assert_eq!(user["connections"][0]["conn"], c.id());
    assert_eq!(user["connections"][0]["device"], "web");
    assert_eq!(s.get("/v1/users/nobody").1["connections"], json!([]));
    assert_eq!(s.get("/v1/channels/room"), (200, json!({"channel": "room", "subscribers": 1})));
    let (status, stats) = s.get("/v1/stats");
    assert_eq!(status, 200);
    assert_eq!(stats["connections"], 1);
    assert_eq!(stats["shards"].as_array().unwrap().len(), 2);
    assert!(stats["totals"]["pushes_queued"].as_u64().unwrap() >= 4);

    // Batch: one result line per input line, in order, errors included.
    let lines = [
        json!({"op": "publish", "channel": "room", "data": "b1"}).to_string(),
        "not json".to_string(),
        json!({"op": "push", "user": "alice", "data": "b2"}).to_string(),
        json!({"op": "dance"}).to_string(),
        json!({"op": "publish", "channel": "room"}).to_string(),
    ]
    .join("\n");
    let (status, head, text) = s.http("POST", "/v1/batch", "", lines.as_bytes());
    assert_eq!(status, 200);
    assert!(head.contains("application/x-ndjson"), "{head}");
    let results: Vec<Value> = text.lines().map(body).collect();
    assert_eq!(results.len(), 5, "{text}");
    assert_eq!(results[0]["queued"], 1);
    assert_eq!(results[1]["status"], 400);
    assert_eq!(results[2]["queued"], 1);
    assert_eq!(results[3]["field"], "op");
    assert_eq!(results[4]["field"], "data");
    // Two streams (channel and user) with different home shards: order holds within a stream
    // only, so the two may arrive either way round.
    let mut got = vec![c.json()["data"].to_string(), c.json()["data"].to_string()];
    got.sort();
    assert_eq!(got, vec!["\"b1\"", "\"b2\""]);

    let (status, r) = s.post("/v1/kick", json!({"conn": c.id()}));
    assert_eq!((status, r), (200, json!({"kicked": 1, "offline": 0, "discarded": 0})));
    assert_eq!(c.recv_close().0, Some(4001));
}

#[test]
fn bad_requests_name_the_bad_field() {
    let s = Server::start(&[]);
    let cases: Vec<(&str, &str, Option<&str>)> = vec![
        ("/v1/publish", "{", None),
        ("/v1/publish", "[]", None),
        // An unknown field is named too.
        ("/v1/publish", r#"{"channel":"x","data":1,"extra":true}"#, Some("extra")),
        ("/v1/publish", r#"{"data":1}"#, Some("channel")),
        ("/v1/publish", r#"{"channel":7,"data":1}"#, Some("channel")),
        ("/v1/publish", r#"{"channel":"bad name","data":1}"#, Some("channel")),
        ("/v1/publish", r#"{"channel":"x"}"#, Some("data")),
        ("/v1/publish", r#"{"channel":"x","data":1,"data_base64":"AA=="}"#, Some("data")),
        ("/v1/publish", r#"{"channel":"x","data_base64":"%%%"}"#, Some("data_base64")),
        ("/v1/publish", r#"{"channel":"x","data":1,"priority":"urgent"}"#, Some("priority")),
        ("/v1/publish", r#"{"channel":"x","data":1,"ttl":0}"#, Some("ttl")),
        ("/v1/publish", r#"{"channel":"x","data":1,"ttl":"2d"}"#, Some("ttl")),
        ("/v1/publish", r#"{"channel":"x","data":1,"ttl":90000}"#, Some("ttl")),
        ("/v1/publish", r#"{"channel":"x","data":1,"ttl":-1}"#, Some("ttl")),
        ("/v1/publish", r#"{"channel":"x","data":1,"ttl":true}"#, Some("ttl")),
        ("/v1/publish", r#"{"channel":"x","data":1,"conflate":""}"#, Some("conflate")),
        ("/v1/publish", r#"{"channel":"x","data":1,"conflate":7}"#, Some("conflate")),
        ("/v1/broadcast", r#"{"data":1,"conflate":"a b"}"#, Some("conflate")),
        ("/v1/push", r#"{"data":1}"#, Some("user")),
        ("/v1/push", r#"{"user":"u","data":1,"policy":"some"}"#, Some("policy")),
        ("/v1/push", r#"{"user":"u","device":"","data":1}"#, Some("device")),
        ("/v1/send", r#"{"data":1}"#, Some("conn")),
        ("/v1/send", r#"{"conn":"42","data":1}"#, Some("conn")),
        ("/v1/broadcast", r#"{}"#, Some("data")),
        ("/v1/kick", r#"{}"#, Some("user")),
        ("/v1/kick", r#"{"user":"u","conn":"c0.1.1"}"#, Some("user")),
        ("/v1/kick", r#"{"user":"u","code":1005}"#, Some("code")),
        ("/v1/kick", r#"{"user":"u","code":"4000"}"#, Some("code")),
    ];
    for (path, req, field) in cases {
        let (status, _, text) = s.http("POST", path, "", req.as_bytes());
        let v = body(&text);
        assert_eq!(status, 400, "{path} {req} -> {text}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{text}");
        assert_eq!(v["field"].as_str(), field, "{path} {req} -> {text}");
    }
    assert_eq!(s.get("/v1/users/bad%20name").0, 400);
    // Every error body has the same shape, `field` null when no field is at fault.
    for (method, path, status) in [("GET", "/nope", 404), ("GET", "/v1/publish", 405)] {
        let (got, _, text) = s.http(method, path, "", b"");
        let v = body(&text);
        assert_eq!(got, status, "{text}");
        assert!(v["error"].is_string() && v.get("field") == Some(&Value::Null), "{text}");
    }
}

#[test]
fn http_level_refusals() {
    let s = Server::start(&["--api-max-body", "1KiB"]);
    assert_eq!(s.http("GET", "/v1/nothing", "", b"").0, 404);
    let (status, head, _) = s.http("GET", "/v1/publish", "", b"");
    assert_eq!(status, 405);
    assert!(head.contains("Allow: POST"), "{head}");
    assert_eq!(s.http("POST", "/v1/stats", "", b"").0, 405);
    let big = vec![b' '; 2048];
    let (status, _, text) = s.http("POST", "/v1/publish", "", &big);
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("--api-max-body"));
    // A chunked body is refused with 411; a huge head with 431; garbage with 400.
    let raw = |req: &[u8]| {
        let mut t = TcpStream::connect(s.api).unwrap();
        t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        t.write_all(req).unwrap();
        let mut out = String::new();
        let _ = t.read_to_string(&mut out);
        out
    };
    assert!(raw(b"POST /v1/publish HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        .starts_with("HTTP/1.1 411 "));
    let mut huge = b"GET /v1/stats HTTP/1.1\r\nX: ".to_vec();
    huge.extend(vec![b'a'; 20_000]);
    assert!(raw(&huge).starts_with("HTTP/1.1 431 "));
    assert!(raw(b"\x00\x01\x02 nonsense\r\n\r\n").starts_with("HTTP/1.1 400 "));
    // Keep-alive: two requests on one connection.
    let two = b"GET /v1/stats HTTP/1.1\r\nHost: a\r\n\r\nGET /v1/channels/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let out = raw(two);
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
}

#[test]
fn the_api_key_is_required_when_set() {
    let s = Server::start(&["--api-key", "s3cret"]);
    let (status, head, _) = s.http("GET", "/v1/stats", "", b"");
    assert_eq!(status, 401);
    assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
    assert_eq!(s.http("GET", "/v1/stats", "Authorization: Bearer wrong\r\n", b"").0, 403);
    assert_eq!(s.http("GET", "/v1/stats", "Authorization: Basic czNjcmV0\r\n", b"").0, 401);
    assert_eq!(s.http("GET", "/v1/stats", "Authorization: Bearer s3cret\r\n", b"").0, 200);
    let (status, _, _) =
        http(s.api, "POST", "/v1/broadcast", "Authorization: Bearer s3cret\r\n", br#"{"data":1}"#);
    assert_eq!(status, 200);
}

#[test]
fn a_public_api_listener_needs_a_key() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["--api-listen", "0.0.0.0:0", "--listen", "127.0.0.1:0"])
        .env_remove("RINGCAST_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--api-key or [[api_keys]] is required"));
}

/// Parses the Prometheus text format: every sample line belongs to a family declared with
/// HELP and TYPE, and its value is a number. Returns (name with labels, value).
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    let mut declared = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let name = it.next().unwrap();
            let kind = it.next().unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counters end in _total: {name}");
            }
            declared.insert(name.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| declared.contains(*f))
            .unwrap_or(name);
        assert!(declared.contains(family), "sample before its TYPE: {line}");
        assert!(name.starts_with("ringcast_"), "{name}");
        out.push((
            series.to_string(),
            value.parse::<f64>().unwrap_or_else(|_| panic!("bad value: {line}")),
        ));
    }
    out
}

fn metric(m: &[(String, f64)], series: &str) -> f64 {
    m.iter()
        .find(|(s, _)| s == series)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("{series} missing"))
}

#[test]
fn metrics_are_well_formed_and_move_with_traffic() {
    let s = Server::start(&["--api-key", "k"]);
    let auth = "Authorization: Bearer k\r\n";
    assert_eq!(s.http("GET", "/metrics", "", b"").0, 401, "metrics need the key");
    let (status, head, text) = s.http("GET", "/metrics", auth, b"");
    assert_eq!(status, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let before = parse_metrics(&text);
    assert_eq!(metric(&before, "ringcast_deliveries_total"), 0.0);

    let mut clients: Vec<Client> =
        (0..4).map(|_| Client::connect(s.addr, "/ws?channels=m")).collect();
    s.wait_for_auth("/v1/channels/m", auth, |v| v["subscribers"] == 4);
    let (status, _, r) = s.http("POST", "/v1/publish", auth, br#"{"channel":"m","data":1}"#);
    assert_eq!(status, 200, "{r}");
    for c in clients.iter_mut() {
        assert_eq!(c.json()["type"], "message");
    }
    let _ = raw_refusal(&s);
    let after = parse_metrics(&s.http("GET", "/metrics", auth, b"").2);
    assert_eq!(metric(&after, "ringcast_deliveries_total"), 4.0);
    let open: f64 = ["0", "1"]
        .iter()
        .map(|i| metric(&after, &format!("ringcast_connections{{shard=\"{i}\"}}")))
        .sum();
    assert_eq!(open, 4.0);
    assert_eq!(metric(&after, "ringcast_connection_attempts_total{result=\"upgraded\"}"), 4.0);
    assert_eq!(metric(&after, "ringcast_handshake_failures_total{reason=\"not_found\"}"), 1.0);
    assert!(
        metric(&after, "ringcast_sent_bytes_total") > metric(&before, "ringcast_sent_bytes_total")
    );
    // One observation per shard that queued the publish: the shards with subscribers.
    let shards_with_subscribers = ["0", "1"]
        .iter()
        .filter(|i| metric(&after, &format!("ringcast_subscriptions{{shard=\"{i}\"}}")) > 0.0)
        .count() as f64;
    assert_eq!(metric(&after, "ringcast_publish_to_queued_seconds_count"), shards_with_subscribers);
    assert_eq!(
        metric(&after, "ringcast_publish_to_queued_seconds_bucket{le=\"+Inf\"}"),
        shards_with_subscribers
    );
    assert_eq!(
        metric(&after, "ringcast_outbox_bytes{shard=\"0\"}")
            + metric(&after, "ringcast_outbox_bytes{shard=\"1\"}"),
        0.0,
        "all flushed"
    );
}

fn raw_refusal(s: &Server) -> String {
    common::raw_exchange(s.addr, common::upgrade_request("/missing", "").as_bytes())
}

#[test]
fn health_and_readiness_need_no_key_and_readiness_ends_with_the_drain() {
    let mut s = Server::start(&["--api-key", "k", "--drain-timeout", "2s"]);
    assert_eq!(s.http("GET", "/healthz", "", b"").0, 200);
    assert_eq!(s.http("GET", "/readyz", "", b"").0, 200);
    let mut c = Client::connect(s.addr, "/ws");
    s.signal(libc::SIGTERM);
    assert_eq!(c.recv_close().0, Some(1001));
    let (status, _, body) = s.http("GET", "/readyz", "", b"");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"));
    c.send(ringcast::proto::OpCode::Close, &1001u16.to_be_bytes());
    assert!(s.wait(Duration::from_secs(5)).unwrap().success());
}

#[test]
fn api_connections_are_capped() {
    let s = Server::start(&["--api-max-connections", "2"]);
    let hold: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(s.api).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    let (status, _, body) = s.http("GET", "/v1/stats", "", b"");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("--api-max-connections"));
    drop(hold);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(s.http("GET", "/v1/stats", "", b"").0, 200);
}
