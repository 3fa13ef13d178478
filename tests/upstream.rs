//! Backends on real sockets: rpc, send, client publish and subscribe through a test backend (an
//! HTTP server in this file), batching under load, per-connection order, timeouts, the breaker
//! opening and closing again, and the per-connection queue and rate limit.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // reason: a panic is the failure report; tests time themselves

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Client, Server};
use serde_json::{json, Value};

type Handler = dyn Fn(&Value) -> Value + Send + Sync;

/// A backend: answers each event of a request with `handler`, after `delay_ms`, with
/// `status` (200 unless set); records every request.
struct Backend {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    events: Arc<Mutex<Vec<Value>>>,
    signatures: Arc<Mutex<Vec<String>>>,
    delay_ms: Arc<AtomicU64>,
    status: Arc<AtomicU64>,
}

impl Backend {
    fn start(handler: impl Fn(&Value) -> Value + Send + Sync + 'static) -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = Backend {
            addr: l.local_addr().unwrap(),
            requests: Arc::default(),
            events: Arc::default(),
            signatures: Arc::default(),
            delay_ms: Arc::default(),
            status: Arc::new(AtomicU64::new(200)),
        };
        let handler: Arc<Handler> = Arc::new(handler);
        let (requests, events, sigs, delay, status) = (
            b.requests.clone(),
            b.events.clone(),
            b.signatures.clone(),
            b.delay_ms.clone(),
            b.status.clone(),
        );
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let (h, r, e, g, d, st) = (
                    handler.clone(),
                    requests.clone(),
                    events.clone(),
                    sigs.clone(),
                    delay.clone(),
                    status.clone(),
                );
                std::thread::spawn(move || serve(s, &*h, &r, &e, &g, &d, &st));
            }
        });
        b
    }

    fn url(&self) -> String {
        format!("http://{}/rc", self.addr)
    }
}

fn serve(
    mut s: TcpStream,
    handler: &Handler,
    requests: &AtomicU64,
    events: &Mutex<Vec<Value>>,
    sigs: &Mutex<Vec<String>>,
    delay: &AtomicU64,
    status: &AtomicU64,
) {
    let mut buf = Vec::new();
    loop {
        // One request: the head, then Content-Length bytes.
        let (head_len, body_len, sig) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let len = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                    .unwrap_or(0);
                let sig = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("x-ringcast-signature"))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
                    .unwrap_or_default();
                break (n, len, sig);
            }
            let mut chunk = [0u8; 65536];
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        };
        while buf.len() < head_len + body_len {
            let mut chunk = [0u8; 65536];
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
        let body: Value = serde_json::from_slice(&buf[head_len..head_len + body_len]).unwrap();
        buf.drain(..head_len + body_len);
        requests.fetch_add(1, SeqCst);
        sigs.lock().unwrap().push(sig);
        let evs = body["events"].as_array().unwrap().clone();
        events.lock().unwrap().extend(evs.iter().cloned());
        std::thread::sleep(Duration::from_millis(delay.load(SeqCst)));
        let results: Vec<Value> = evs.iter().map(handler).collect();
        let out = serde_json::to_vec(&json!({ "results": results })).unwrap();
        let code = status.load(SeqCst);
        let head = format!("HTTP/1.1 {code} X\r\nContent-Length: {}\r\n\r\n", out.len());
        if s.write_all(head.as_bytes()).and_then(|_| s.write_all(&out)).is_err() {
            return;
        }
    }
}

/// A config file with these `[[upstreams]]` tables, kept for the server's life.
struct ConfigFile(std::path::PathBuf);

impl ConfigFile {
    fn new(tag: &str, text: &str) -> ConfigFile {
        let p = std::env::temp_dir().join(format!("ringcast-up-{tag}-{}.toml", std::process::id()));
        std::fs::write(&p, text).unwrap();
        ConfigFile(p)
    }
    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn upstream(url: &str, events: &str, extra: &str) -> String {
    format!("[[upstreams]]\nname = \"app\"\nurl = \"{url}\"\nevents = [{events}]\n{extra}\n")
}

fn start(tag: &str, toml: &str, args: &[&str]) -> (Server, ConfigFile) {
    let cfg = ConfigFile::new(tag, toml);
    let path = cfg.path();
    let mut all = vec!["--config", &path];
    all.extend_from_slice(args);
    (Server::start(&all), cfg)
}

/// The next message that is not a pong or a heartbeat answer.
fn next(c: &mut Client) -> Value {
    loop {
        let v = c.json();
        if v["type"] != "pong" {
            return v;
        }
    }
}

fn echo(e: &Value) -> Value {
    json!({"data": {"echo": e["data"], "user": e["user"], "method": e["method"]}})
}

#[test]
fn rpc_round_trips_with_id_correlation_across_two_shards_and_requests_are_signed() {
    let b = Backend::start(echo);
    let secret = "0123456789abcdef-secret";
    let (s, _cfg) =
        start("rpc", &upstream(&b.url(), "\"rpc:*\"", &format!("secret = \"{secret}\"")), &[]);
    // Six clients, more if the kernel put them all on one shard: both shards answer.
    let shard_of = |c: &Client| c.id().split('.').next().unwrap_or("").to_string();
    let mut clients: Vec<Client> = Vec::new();
    while clients.len() < 6
        || clients.iter().map(shard_of).collect::<std::collections::HashSet<_>>().len() < 2
    {
        assert!(clients.len() < 64, "every connection landed on one shard");
        clients.push(Client::connect(s.addr, &format!("/ws?user=u{}", clients.len())));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        for k in 0..3u32 {
            let id = 1000 * i as u32 + k;
            c.text(&json!({"type":"rpc","id":id,"method":"chat.send","data":{"k":k}}).to_string());
        }
    }
    for (i, c) in clients.iter_mut().enumerate() {
        for k in 0..3u32 {
            let r = next(c);
            assert_eq!(r["type"], "reply", "{r}");
            assert_eq!(r["id"], 1000 * i as u32 + k, "in order, each its own: {r}");
            assert_eq!(
                r["data"],
                json!({"echo":{"k":k},"user":format!("u{i}"),"method":"chat.send"})
            );
        }
    }
    // Each event names its connection and node; the body's HMAC is the signature.
    let events = b.events.lock().unwrap().clone();
    assert_eq!(events.len(), 3 * clients.len());
    assert!(events
        .iter()
        .all(|e| e["event"] == "rpc" && e["conn"].is_string() && e["node"].is_string()));
    let sigs = b.signatures.lock().unwrap().clone();
    assert!(sigs.iter().all(|s| s.starts_with("sha256=") && s.len() == 71), "{sigs:?}");
    // A method no backend takes is refused at once.
    let (s2, _c2) = start("rpc-none", &upstream(&b.url(), "\"rpc:chat.*\"", ""), &[]);
    let mut c = Client::connect(s2.addr, "/ws");
    c.text(r#"{"type":"rpc","id":5,"method":"game.move","data":1}"#);
    let r = next(&mut c);
    assert_eq!(
        (r["id"].as_u64(), r["error"]["code"].as_str()),
        (Some(5), Some("no_backend")),
        "{r}"
    );
    assert_eq!(r["error"]["temporary"], false);
}

#[test]
fn send_reaches_the_backend_with_the_connections_identity_and_answers_nothing() {
    let b = Backend::start(|_| json!({}));
    let (s, _cfg) = start("send", &upstream(&b.url(), "\"send\"", ""), &[]);
    let mut c = Client::connect(s.addr, "/ws?user=alice&device=phone");
    let conn = c.id();
    c.text(r#"{"type":"send","data":{"typing":true}}"#);
    c.text(r#"{"type":"ping"}"#);
    assert_eq!(c.json()["type"], "pong", "nothing came back for the send");
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.events.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let e = b.events.lock().unwrap()[0].clone();
    assert_eq!(e["event"], "send");
    assert_eq!((e["user"].as_str(), e["device"].as_str()), (Some("alice"), Some("phone")));
    assert_eq!(e["conn"], conn);
    assert_eq!(e["data"], json!({"typing": true}));
}

#[test]
fn a_thousand_clients_at_once_make_a_tenth_as_many_requests_and_each_gets_its_own_result() {
    let b = Backend::start(echo);
    b.delay_ms.store(20, SeqCst);
    let (s, _cfg) = start("batch", &upstream(&b.url(), "\"rpc:*\"", "max_in_flight = 2"), &[]);
    let n = 1000;
    let mut clients: Vec<Client> =
        (0..n).map(|i| Client::connect(s.addr, &format!("/ws?user=b{i}"))).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.text(&json!({"type":"rpc","id":i,"method":"m","data":i}).to_string());
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let r = next(c);
        assert_eq!((r["id"].as_u64(), &r["data"]["echo"]), (Some(i as u64), &json!(i)), "{r}");
    }
    let requests = b.requests.load(SeqCst);
    assert_eq!(b.events.lock().unwrap().len(), n);
    assert!(requests * 10 <= n as u64, "{requests} requests for {n} events");
    let metrics = s.http("GET", "/metrics", "", b"").2;
    assert!(metrics.contains("ringcast_upstream_events_total{backend=\"app\"} 1000"), "{metrics}");
}

#[test]
fn one_connections_calls_stay_in_order_and_its_queue_is_bounded() {
    let b = Backend::start(echo);
    b.delay_ms.store(30, SeqCst);
    let (s, _cfg) = start("order", &upstream(&b.url(), "\"rpc:*\"", ""), &["--client-queue", "3"]);
    let mut c = Client::connect(s.addr, "/ws?user=o");
    for id in 0..6 {
        c.text(&json!({"type":"rpc","id":id,"method":"m","data":id}).to_string());
    }
    // One in flight, three waiting: the last two are refused at once.
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(next(&mut c));
    }
    let refused: Vec<&Value> =
        got.iter().filter(|r| r["error"]["code"] == "too_many_requests").collect();
    assert_eq!(refused.len(), 2, "{got:?}");
    assert!(refused.iter().all(|r| r["error"]["temporary"] == true));
    let answered: Vec<u64> =
        got.iter().filter(|r| r.get("data").is_some()).map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(answered, vec![0, 1, 2, 3], "in the order sent");
    let order: Vec<u64> =
        b.events.lock().unwrap().iter().map(|e| e["data"].as_u64().unwrap()).collect();
    assert_eq!(order, vec![0, 1, 2, 3]);
}

#[test]
fn the_rate_limit_refuses_with_its_code_and_a_retry_hint() {
    let b = Backend::start(|_| json!({"data": 1}));
    let (s, _cfg) = start(
        "rate",
        &upstream(&b.url(), "\"rpc:*\"", ""),
        &["--client-message-rate", "1", "--client-message-burst", "3", "--client-queue", "16"],
    );
    let mut c = Client::connect(s.addr, "/ws");
    for id in 0..5 {
        c.text(&json!({"type":"rpc","id":id,"method":"m"}).to_string());
    }
    let got: Vec<Value> = (0..5).map(|_| next(&mut c)).collect();
    let limited: Vec<&Value> =
        got.iter().filter(|r| r["error"]["code"] == "rate_limited").collect();
    assert_eq!(limited.len(), 2, "{got:?}");
    assert!(limited
        .iter()
        .all(|r| r["error"]["retry_ms"].as_u64().is_some_and(|ms| ms > 0 && ms <= 1000)));
    let metrics = s.http("GET", "/metrics", "", b"").2;
    assert!(
        metrics.contains("ringcast_client_refusals_total{reason=\"rate_limited\"} 2"),
        "{metrics}"
    );
}

#[test]
fn a_backend_timeout_is_a_temporary_error() {
    let b = Backend::start(echo);
    b.delay_ms.store(800, SeqCst);
    let (s, _cfg) = start("timeout", &upstream(&b.url(), "\"rpc:*\"", "timeout = \"200ms\""), &[]);
    let mut c = Client::connect(s.addr, "/ws");
    let t = Instant::now();
    c.text(r#"{"type":"rpc","id":1,"method":"m"}"#);
    let r = next(&mut c);
    assert_eq!(r["error"]["code"], "upstream_timeout", "{r}");
    assert_eq!(r["error"]["temporary"], true);
    assert!(t.elapsed() < Duration::from_millis(700), "{:?}", t.elapsed());
}

#[test]
fn a_failing_backend_trips_the_breaker_and_half_open_probes_close_it_again() {
    let b = Backend::start(echo);
    b.status.store(500, SeqCst);
    let (s, _cfg) = start(
        "breaker",
        &upstream(
            &b.url(),
            "\"rpc:*\"",
            "timeout = \"2s\"\nbreaker_open = \"500ms\"\nbreaker_max_open = \"1s\"",
        ),
        &["--shards", "1", "--client-message-rate", "1000", "--client-message-burst", "1000"],
    );
    let mut c = Client::connect(s.addr, "/ws");
    let call = |c: &mut Client, id: u32| -> (Value, Duration) {
        let t = Instant::now();
        c.text(&json!({"type":"rpc","id":id,"method":"m"}).to_string());
        (next(c), t.elapsed())
    };
    for id in 0..5 {
        let (r, _) = call(&mut c, id);
        assert_eq!(r["error"]["code"], "upstream_error", "{r}");
    }
    let before = b.requests.load(SeqCst);
    let (r, took) = call(&mut c, 9);
    assert_eq!(r["error"]["code"], "upstream_unavailable", "{r}");
    assert!(r["error"]["retry_ms"].as_u64().is_some_and(|ms| ms > 0));
    assert!(
        took < Duration::from_millis(200),
        "refused at once, not after the 2 s timeout: {took:?}"
    );
    assert_eq!(b.requests.load(SeqCst), before, "nothing was sent while open");
    assert!(s.log().contains("-> open"), "the transition is logged");
    // The backend recovers; after the open period the probes go through and close it.
    b.status.store(200, SeqCst);
    std::thread::sleep(Duration::from_millis(700));
    let mut ok = 0;
    for id in 10..20 {
        let (r, _) = call(&mut c, id);
        if r.get("data").is_some() {
            ok += 1;
        }
    }
    assert_eq!(ok, 10, "closed again");
    assert!(s.log().contains("half_open -> closed"), "{}", s.log());
    let metrics = s.http("GET", "/metrics", "", b"").2;
    assert!(
        metrics.contains("ringcast_upstream_breaker_trips_total{backend=\"app\"} 1"),
        "{metrics}"
    );
    let (_, stats) = s.get("/v1/stats");
    assert_eq!(stats["upstreams"][0]["breakers"], json!(["closed"]), "{stats}");
}

/// A JWKS file with one HS256 key, and tokens signed with it.
struct Jwt {
    path: std::path::PathBuf,
}

const JWT_SECRET: &[u8] = b"upstream-test-secret-32-bytes-ok";

impl Jwt {
    fn new(tag: &str) -> Jwt {
        use jsonwebtoken::jwk::{Jwk, JwkSet};
        let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET).unwrap();
        let mut j = Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::HS256).unwrap();
        j.common.key_id = Some("hs".into());
        let path = std::env::temp_dir()
            .join(format!("ringcast-up-jwks-{tag}-{}.json", std::process::id()));
        std::fs::write(&path, serde_json::to_string(&JwkSet { keys: vec![j] }).unwrap()).unwrap();
        Jwt { path }
    }
    fn token(&self, claims: Value) -> String {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("hs".into());
        jsonwebtoken::encode(
            &h,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET).unwrap(),
        )
        .unwrap()
    }
}

impl Drop for Jwt {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn exp() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 300
}

#[test]
fn client_publish_is_allowed_by_pub_allow_refused_outside_it_and_rewritten_by_a_publish_backend() {
    // The backend decides mod.* publishes: it upper-cases "text", and refuses "bad".
    let b = Backend::start(|e| {
        let text = e["data"]["text"].as_str().unwrap_or("");
        if text == "bad" {
            json!({"error": {"code": "moderated", "message": "not allowed here", "temporary": false}})
        } else {
            json!({"data": {"text": text.to_uppercase()}})
        }
    });
    let jwt = Jwt::new("pub");
    let path = jwt.path.display().to_string();
    let (s, _cfg) = start(
        "pub",
        &upstream(&b.url(), "\"publish:mod.*\"", ""),
        &["--auth", "jwt", "--jwt-keys", &path],
    );
    let t =
        jwt.token(json!({"sub": "p", "exp": exp(), "pub_allow": ["rooms.*"], "sub_allow": ["*"]}));
    let reader_token = jwt.token(json!({"sub": "r", "exp": exp(), "ch": ["rooms.1", "mod.x"]}));
    let mut reader = Client::try_connect(s.addr, &format!("/ws?token={reader_token}"), "").unwrap();
    let mut c = Client::try_connect(s.addr, &format!("/ws?token={t}"), "").unwrap();
    c.text(r#"{"type":"publish","id":1,"channel":"rooms.1","data":{"text":"hi"}}"#);
    let r = next(&mut c);
    assert_eq!(r, json!({"type":"reply","id":1,"data":{"stream":"channel:rooms.1","seq":1}}));
    let m = next(&mut reader);
    assert_eq!(
        (m["stream"].as_str(), &m["data"]),
        (Some("channel:rooms.1"), &json!({"text":"hi"})),
        "{m}"
    );
    assert!(b.events.lock().unwrap().is_empty(), "pub_allow needs no backend");
    // Outside pub_allow and no backend for it: forbidden.
    c.text(r#"{"type":"publish","id":2,"channel":"news","data":1}"#);
    let r = next(&mut c);
    assert_eq!(
        (r["id"].as_u64(), r["error"]["code"].as_str()),
        (Some(2), Some("forbidden")),
        "{r}"
    );
    // A publish backend decides mod.*: it rewrites the data, or refuses with its message.
    c.text(r#"{"type":"publish","id":3,"channel":"mod.x","data":{"text":"quiet"}}"#);
    let r = next(&mut c);
    assert_eq!(r["data"]["stream"], "channel:mod.x", "{r}");
    let m = next(&mut reader);
    assert_eq!(m["data"], json!({"text":"QUIET"}), "published as the backend rewrote it");
    c.text(r#"{"type":"publish","id":4,"channel":"mod.x","data":{"text":"bad"}}"#);
    let r = next(&mut c);
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
    assert_eq!(r["error"]["message"], "not allowed here");
    let e = b.events.lock().unwrap()[0].clone();
    assert_eq!(
        (e["event"].as_str(), e["channel"].as_str(), e["user"].as_str()),
        (Some("publish"), Some("mod.x"), Some("p"))
    );
}

#[test]
fn subscribe_through_a_backend_allows_and_refuses_and_cannot_be_bypassed_at_connect() {
    let b = Backend::start(|e| {
        let ok = e["user"] == "alice";
        if ok {
            json!({})
        } else {
            json!({"error": {"code": 403, "message": "members only", "temporary": false}})
        }
    });
    let (s, _cfg) = start("sub", &upstream(&b.url(), "\"subscribe:private.*\"", ""), &[]);
    let mut alice = Client::connect(s.addr, "/ws?user=alice");
    alice.text(r#"{"type":"subscribe","channel":"private.1"}"#);
    let r = next(&mut alice);
    assert_eq!(
        (r["type"].as_str(), r["channel"].as_str()),
        (Some("subscribed"), Some("private.1")),
        "{r}"
    );
    let mut bob = Client::connect(s.addr, "/ws?user=bob");
    bob.text(r#"{"type":"subscribe","channel":"private.1"}"#);
    let r = next(&mut bob);
    assert_eq!(r["code"], "forbidden", "{r}");
    assert!(r["reason"].as_str().unwrap_or("").contains("members only"), "{r}");
    // Other channels need no backend.
    bob.text(r#"{"type":"subscribe","channel":"public"}"#);
    assert_eq!(next(&mut bob)["type"], "subscribed");
    // Naming it at connect, where the backend cannot be asked, is refused and said.
    let mut sneaky = Client::connect(s.addr, "/ws?user=bob&channels=private.1");
    assert_eq!(sneaky.welcome.clone().unwrap()["channels"], json!([]));
    let r = next(&mut sneaky);
    assert_eq!(r["code"], "forbidden", "{r}");
    // Only alice and bob's subscribes reached the backend.
    assert_eq!(b.events.lock().unwrap().len(), 2);
    // The publish reaches alice only.
    let (st, _) = s.post("/v1/publish", json!({"channel": "private.1", "data": "secret"}));
    assert_eq!(st, 200);
    assert_eq!(next(&mut alice)["data"], "secret");
}

/// Connect backend for `--auth proxy`: who the Cookie says, or its refusals.
fn cookie_backend(e: &Value) -> Value {
    match e["headers"]["cookie"].as_str() {
        Some("sid=good") => json!({"data": {"user": "42", "device": "web", "channels": ["news"]}}),
        Some("sid=banned") => json!({"error": {"code": "403", "message": "banned"}}),
        Some("sid=weird") => json!({"data": {"user": "not a name"}}),
        Some("sid=busy") => {
            json!({"error": {"code": "busy", "message": "try later", "temporary": true}})
        }
        Some("sid=slow") => {
            std::thread::sleep(Duration::from_millis(1500));
            json!({"data": {"user": "late"}})
        }
        _ => json!({"error": {"code": 401, "message": "log in first"}}),
    }
}

#[test]
fn proxy_auth_lets_a_connect_backend_name_the_user_from_a_cookie_and_its_refusals_are_statuses() {
    let b = Backend::start(cookie_backend);
    let (s, _cfg) = start(
        "proxy",
        &upstream(&b.url(), "\"connect\"", "forward_headers = [\"Cookie\"]\ntimeout = \"300ms\""),
        &["--auth", "proxy"],
    );
    // The backend names the user and its channels; the query cannot claim either.
    let mut c = Client::try_connect(
        s.addr,
        "/ws?user=evil&channels=admin",
        "Cookie: sid=good\r\nUser-Agent: t\r\n",
    )
    .unwrap();
    let w = c.welcome.clone().unwrap();
    assert_eq!((w["user"].as_str(), w["device"].as_str()), (Some("42"), Some("web")), "{w}");
    assert_eq!(w["channels"], json!(["news"]), "{w}");
    let (st, _) = s.post("/v1/publish", json!({"channel": "news", "data": "hello"}));
    assert_eq!(st, 200);
    assert_eq!(next(&mut c)["data"], "hello");
    let e = b.events.lock().unwrap()[0].clone();
    assert_eq!(e["event"], "connect", "{e}");
    assert_eq!(e["headers"], json!({"cookie": "sid=good"}), "only forward_headers: {e}");
    assert_eq!(e["query"], "user=evil&channels=admin");
    assert!(e["user"].is_null(), "nobody yet: {e}");

    // The backend's refusals are the upgrade's status; a bad answer is 403.
    for (cookie, status) in [
        ("", "401"),
        ("Cookie: sid=bad\r\n", "401"),
        ("Cookie: sid=banned\r\n", "403"),
        ("Cookie: sid=weird\r\n", "403"),
    ] {
        let head = Client::try_connect(s.addr, "/ws", cookie).err().unwrap();
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{cookie}: {head}");
    }
    // It could not decide (a temporary refusal, a timeout): 503 with Retry-After.
    for cookie in ["Cookie: sid=busy\r\n", "Cookie: sid=slow\r\n"] {
        let t = Instant::now();
        let head = Client::try_connect(s.addr, "/ws", cookie).err().unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "), "{cookie}: {head}");
        assert!(head.contains("Retry-After: "), "{head}");
        assert!(t.elapsed() < Duration::from_millis(1200), "{cookie}: {:?}", t.elapsed());
    }
    let metrics = s.http("GET", "/metrics", "", b"").2;
    for line in [
        "ringcast_handshake_failures_total{reason=\"unauthorized\"} 2",
        "ringcast_handshake_failures_total{reason=\"forbidden\"} 2",
        "ringcast_handshake_failures_total{reason=\"backend_unavailable\"} 2",
        "ringcast_auth_failures_total{reason=\"claim\"} 1",
    ] {
        assert!(metrics.contains(line), "{line}: {metrics}");
    }
}

#[test]
fn frames_sent_before_the_connect_backend_answers_are_read_after_the_101() {
    let b = Backend::start(cookie_backend);
    b.delay_ms.store(100, SeqCst);
    let (s, _cfg) = start(
        "proxy-early",
        &upstream(&b.url(), "\"connect\"", "forward_headers = [\"cookie\"]"),
        &["--auth", "proxy"],
    );
    let mut stream = TcpStream::connect(s.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = common::upgrade_request("/ws", "Cookie: sid=good\r\n").into_bytes();
    let mut frame = Vec::new();
    ringcast::proto::frame::encode_frame(
        &mut frame,
        ringcast::proto::OpCode::Text,
        true,
        Some([9, 8, 7, 6]),
        br#"{"type":"ping"}"#,
    );
    req.extend_from_slice(&frame);
    stream.write_all(&req).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\"pong\"") {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    let (w, p) = (text.find("\"welcome\"").unwrap(), text.find("\"pong\"").unwrap());
    assert!(text.starts_with("HTTP/1.1 101 ") && w < p, "{text}");
}

#[test]
fn jwt_clients_with_a_token_skip_the_connect_backend_and_those_without_ask_it() {
    let b = Backend::start(cookie_backend);
    let jwt = Jwt::new("proxy");
    let path = jwt.path.display().to_string();
    let (s, _cfg) = start(
        "jwt-connect",
        &upstream(&b.url(), "\"connect\"", "forward_headers = [\"cookie\"]"),
        &["--auth", "jwt", "--jwt-keys", &path],
    );
    let t = jwt.token(json!({"sub": "tok", "exp": exp()}));
    let c = Client::try_connect(s.addr, &format!("/ws?token={t}"), "").unwrap();
    assert_eq!(c.welcome.clone().unwrap()["user"], "tok");
    assert!(b.events.lock().unwrap().is_empty(), "a token needs no backend");
    let c = Client::try_connect(s.addr, "/ws", "Cookie: sid=good\r\n").unwrap();
    assert_eq!(c.welcome.clone().unwrap()["user"], "42");
    // A bad token is refused as before, not passed on.
    let head =
        Client::try_connect(s.addr, "/ws?token=x.y.z", "Cookie: sid=good\r\n").err().unwrap();
    assert!(head.starts_with("HTTP/1.1 401 "), "{head}");
    assert_eq!(b.events.lock().unwrap().len(), 1);
}

#[test]
fn a_connect_backend_slower_than_the_handshake_timeout_is_answered_with_503() {
    let b = Backend::start(cookie_backend);
    let (s, _cfg) = start(
        "proxy-slow",
        &upstream(&b.url(), "\"connect\"", "forward_headers = [\"cookie\"]\ntimeout = \"5s\""),
        &["--auth", "proxy", "--handshake-timeout", "300ms"],
    );
    let t = Instant::now();
    let head = Client::try_connect(s.addr, "/ws", "Cookie: sid=slow\r\n").err().unwrap();
    assert!(head.starts_with("HTTP/1.1 503 ") && head.contains("Retry-After: "), "{head}");
    assert!(t.elapsed() < Duration::from_millis(1400), "{:?}", t.elapsed());
    // The late answer finds nobody waiting; the server carries on.
    std::thread::sleep(Duration::from_millis(1500));
    let c = Client::try_connect(s.addr, "/ws", "Cookie: sid=good\r\n").unwrap();
    assert_eq!(c.welcome.clone().unwrap()["user"], "42");
}

fn unix_s() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn a_refresh_backend_renews_a_connect_identity_before_it_expires_and_a_decline_ends_it_with_4003() {
    // Connect: the cookie names the user, for 2 s. Refresh: "keep" gets 3 s more, "drop" not.
    let b = Backend::start(|e| match e["event"].as_str() {
        Some("connect") => {
            let user = e["headers"]["cookie"].as_str().unwrap_or("").trim_start_matches("u=");
            json!({"data": {"user": user, "expire_at": unix_s() + 2.0}})
        }
        Some("refresh") if e["user"] == "keep" => json!({"data": {"expire_at": unix_s() + 3.0}}),
        _ => json!({"error": {"code": 403, "message": "session over"}}),
    });
    let (s, _cfg) = start(
        "refresh",
        &upstream(
            &b.url(),
            "\"connect\", \"refresh\"",
            "forward_headers = [\"cookie\"]\nrefresh_lead = \"1s\"",
        ),
        &["--auth", "proxy"],
    );
    let t = Instant::now();
    let mut keep = Client::try_connect(s.addr, "/ws", "Cookie: u=keep\r\n").unwrap();
    let mut gone = Client::try_connect(s.addr, "/ws", "Cookie: u=drop\r\n").unwrap();
    let r = next(&mut keep);
    assert_eq!(r["type"], "refreshed", "{r}");
    let expires = r["expires"].as_f64().unwrap() / 1000.0;
    assert!(expires > unix_s() + 2.0, "renewed for 3 s: {r}");
    assert!(
        t.elapsed() < Duration::from_millis(1800),
        "asked before the expiry: {:?}",
        t.elapsed()
    );
    // The declined one is closed when its expiry passes, with 4003.
    let (code, _) = gone.recv_close();
    assert_eq!(code, Some(4003));
    assert!(t.elapsed() >= Duration::from_millis(1800), "{:?}", t.elapsed());
    // The renewed one is still open past the first expiry (they had the same).
    keep.text(r#"{"type":"ping"}"#);
    let m = keep.json();
    assert_eq!(m["type"], "pong", "{m}");
    let refreshes: Vec<Value> =
        b.events.lock().unwrap().iter().filter(|e| e["event"] == "refresh").cloned().collect();
    assert_eq!(refreshes.len(), 2, "one each so far: {refreshes:?}");
    assert!(refreshes.iter().all(|e| e["expire_at"].as_u64().is_some() && e["conn"].is_string()));
    let metrics = s.http("GET", "/metrics", "", b"").2;
    for line in ["ringcast_token_refreshes_total 1", "ringcast_refreshes_declined_total 1"] {
        assert!(metrics.contains(line), "{line}: {metrics}");
    }
}
