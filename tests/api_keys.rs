//! Scoped API keys on a real server: each scope allows what it names and refuses the rest with
//! a 403 naming the scope, an expired key is refused, `--api-key` stays an admin key, batch
//! lines are checked one by one, the metrics listener serves without a key, and
//! `ringcast hash-key` prints what the tables take.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // reason: a panic is the failure report; tests time themselves

mod common;

use common::{http, Server};

fn hash(key: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["hash-key", key])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn start(tag: &str) -> (Server, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("ringcast-keys-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ringcast.toml");
    let table = |name: &str, key: &str, scopes: &str, extra: &str| {
        format!(
            "[[api_keys]]\nname = \"{name}\"\nsha256 = \"{}\"\nscopes = [{scopes}]\n{extra}\n",
            hash(key)
        )
    };
    let text = [
        table("billing", "billing-key", "\"push\", \"publish:orders.*\"", ""),
        table("reader", "reader-key", "\"read\"", ""),
        table("prom", "prom-key", "\"metrics\"", ""),
        table("ops", "ops-key", "\"kick\", \"send\", \"broadcast\"", ""),
        table("old", "old-key", "\"admin\"", "expires = \"2020-01-01T00:00:00Z\""),
    ]
    .concat();
    std::fs::write(&file, text).unwrap();
    let path = file.display().to_string();
    let s = Server::start(&[
        "--config",
        &path,
        "--api-key",
        "the-admin-key",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    (s, dir)
}

fn call(s: &Server, key: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let h = format!("Authorization: Bearer {key}\r\n");
    let (st, _, b) = s.http(method, path, &h, body.as_bytes());
    (st, b)
}

#[test]
fn each_scope_allows_what_it_names_and_nothing_else() {
    let (s, dir) = start("scopes");
    let post = |key: &str, path: &str, body: &str| call(&s, key, "POST", path, body);
    let get = |key: &str, path: &str| call(&s, key, "GET", path, "");
    let lacks = |r: (u16, String), key: &str, scope: &str| {
        assert_eq!(r.0, 403, "{}", r.1);
        assert!(
            r.1.contains(&format!("the API key \\\"{key}\\\" lacks the scope {scope}")),
            "{}",
            r.1
        );
    };
    // billing: push, publish:orders.*
    assert_eq!(post("billing-key", "/v1/push", r#"{"user":"u","data":1}"#).0, 200);
    assert_eq!(post("billing-key", "/v1/publish", r#"{"channel":"orders.eu","data":1}"#).0, 200);
    lacks(
        post("billing-key", "/v1/publish", r#"{"channel":"news","data":1}"#),
        "billing",
        "publish:news",
    );
    lacks(post("billing-key", "/v1/broadcast", r#"{"data":1}"#), "billing", "broadcast");
    lacks(get("billing-key", "/v1/stats"), "billing", "read");
    lacks(get("billing-key", "/metrics"), "billing", "metrics");
    // reader: queries only
    for p in ["/v1/stats", "/v1/users/u", "/v1/channels/news", "/v1/streams/channel:news"] {
        assert_eq!(get("reader-key", p).0, 200, "{p}");
    }
    lacks(post("reader-key", "/v1/push", r#"{"user":"u","data":1}"#), "reader", "push");
    // prom: metrics only
    let (st, body) = get("prom-key", "/metrics");
    assert!(st == 200 && body.contains("ringcast_connections"), "{st}");
    lacks(get("prom-key", "/v1/stats"), "prom", "read");
    // ops: kick, send, broadcast
    assert_eq!(post("ops-key", "/v1/broadcast", r#"{"data":1}"#).0, 200);
    assert_eq!(post("ops-key", "/v1/kick", r#"{"user":"u"}"#).0, 200);
    assert_eq!(post("ops-key", "/v1/send", r#"{"conn":"c0.0.1","data":1}"#).0, 200);
    lacks(post("ops-key", "/v1/push", r#"{"user":"u","data":1}"#), "ops", "push");
    // Batch lines are checked one by one.
    let (st, body) = post(
        "billing-key",
        "/v1/batch",
        "{\"op\":\"push\",\"user\":\"u\",\"data\":1}\n{\"op\":\"kick\",\"user\":\"u\"}\n",
    );
    assert_eq!(st, 200);
    let lines: Vec<serde_json::Value> =
        body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines[0].get("error").is_none(), "{}", lines[0]);
    assert_eq!(lines[1]["status"], 403, "{}", lines[1]);
    // An expired key, an unknown key, no key; the --api-key admin key.
    let (st, body) = get("old-key", "/v1/stats");
    assert!(st == 401 && body.contains("the API key \\\"old\\\" has expired"), "{st} {body}");
    assert_eq!(get("nobody", "/v1/stats").0, 403);
    assert_eq!(s.http("GET", "/v1/stats", "", b"").0, 401);
    for (m, p, b) in
        [("GET", "/metrics", ""), ("POST", "/v1/kick", r#"{"user":"u"}"#), ("GET", "/v1/stats", "")]
    {
        assert_eq!(call(&s, "the-admin-key", m, p, b).0, 200, "{p}");
    }
    // Probes never need a key.
    assert_eq!(s.http("GET", "/readyz", "", b"").0, 200);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_metrics_listener_serves_without_a_key_and_nothing_else() {
    let (s, dir) = start("metrics");
    let addr = s.logged_addr("metrics on http://");
    let (st, _, body) = http(addr, "GET", "/metrics", "", b"");
    assert!(st == 200 && body.contains("ringcast_connections"), "{st}");
    assert_eq!(http(addr, "GET", "/healthz", "", b"").0, 200);
    assert_eq!(http(addr, "GET", "/readyz", "", b"").0, 200);
    assert_eq!(http(addr, "GET", "/v1/stats", "", b"").0, 404);
    let h = "Authorization: Bearer the-admin-key\r\n";
    assert_eq!(
        http(addr, "POST", "/v1/broadcast", h, br#"{"data":1}"#).0,
        404,
        "no operation there, key or not"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hash_key_prints_the_sha256_from_an_argument_or_stdin() {
    assert_eq!(hash("test"), "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
    use std::io::Write as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .arg("hash-key")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"test\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), hash("test"));
}
