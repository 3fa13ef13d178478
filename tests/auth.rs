//! JWT identity on real sockets: every way a token arrives, every refusal's status and body,
//! what `ch` and `sub_allow` allow, expiry closing with 4003, `refresh`, and keys reloaded on
//! SIGHUP while connections stay.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // reason: a panic is the failure report; tests time themselves

mod common;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{raw_exchange, upgrade_request, Client, Server};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

const SECRET: &[u8] = b"integration-secret-32-bytes-long";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn ed_key() -> EncodingKey {
    let pem = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/ed25519.pem"));
    EncodingKey::from_ed_pem(&pem.unwrap()).unwrap()
}

fn jwk(kid: &str, key: &EncodingKey, alg: Algorithm) -> Jwk {
    let mut j = Jwk::from_encoding_key(key, alg).unwrap();
    j.common.key_id = Some(kid.into());
    j
}

/// A key file in a fresh directory: both keys, or only the Ed25519 one.
struct Keys {
    dir: PathBuf,
}

impl Keys {
    fn new(tag: &str) -> Keys {
        let dir = std::env::temp_dir().join(format!("ringcast-auth-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let k = Keys { dir };
        k.write(true);
        k
    }

    fn path(&self) -> String {
        self.dir.join("keys.json").display().to_string()
    }

    fn write(&self, with_hs: bool) {
        let mut keys = vec![jwk("ed", &ed_key(), Algorithm::EdDSA)];
        if with_hs {
            keys.push(jwk("hs", &EncodingKey::from_secret(SECRET).unwrap(), Algorithm::HS256));
        }
        std::fs::write(self.path(), serde_json::to_string(&JwkSet { keys }).unwrap()).unwrap();
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn token(kid: &str, claims: serde_json::Value) -> String {
    let (alg, key) = match kid {
        "ed" => (Algorithm::EdDSA, ed_key()),
        _ => (Algorithm::HS256, EncodingKey::from_secret(SECRET).unwrap()),
    };
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    encode(&h, &claims, &key).unwrap()
}

fn start(keys: &Keys, extra: &[&str]) -> Server {
    let path = keys.path();
    let mut args = vec!["--auth", "jwt", "--jwt-keys", &path, "--jwt-leeway", "0s"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// The status line and body of a refused upgrade.
fn refused(s: &Server, path: &str, extra: &str) -> (String, String) {
    let resp = raw_exchange(s.addr, upgrade_request(path, extra).as_bytes());
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    (head.to_string(), body.trim_end().to_string())
}

#[test]
fn a_token_identifies_by_header_query_or_subprotocol_and_each_refusal_says_why() {
    let keys = Keys::new("ways");
    let s = start(&keys, &[]);
    let t = token("hs", json!({"sub": "42", "dev": "phone", "exp": now() + 60}));

    let c = Client::try_connect(s.addr, "/ws", &format!("Authorization: Bearer {t}\r\n")).unwrap();
    let w = c.welcome.clone().unwrap();
    assert_eq!((w["user"].as_str(), w["device"].as_str()), (Some("42"), Some("phone")));
    let c = Client::try_connect(s.addr, &format!("/ws?token={t}"), "").unwrap();
    assert_eq!(c.welcome.clone().unwrap()["user"], "42");
    let resp = raw_exchange(
        s.addr,
        upgrade_request(
            "/ws",
            &format!("Sec-WebSocket-Protocol: ringcast.v1, ringcast.token.{t}\r\n"),
        )
        .as_bytes(),
    );
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    assert!(resp.contains("Sec-WebSocket-Protocol: ringcast.v1\r\n"), "{resp}");
    let ed = token("ed", json!({"sub": "7", "exp": now() + 60}));
    assert!(Client::try_connect(s.addr, &format!("/ws?token={ed}"), "").is_ok());

    let forged = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("hs".into());
        let k = EncodingKey::from_secret(b"someone-else-s-secret-32-bytes!!").unwrap();
        encode(&h, &json!({"sub": "42", "exp": now() + 60}), &k).unwrap()
    };
    let none = {
        use base64::Engine as _;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let body = b.encode(json!({"sub": "42", "exp": now() + 60}).to_string());
        format!("{}.{body}.", b.encode(r#"{"alg":"none"}"#))
    };
    let expired = token("hs", json!({"sub": "42", "exp": now() - 5}));
    let early = token("hs", json!({"sub": "42", "exp": now() + 60, "nbf": now() + 30}));
    let unknown = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("gone".into());
        encode(
            &h,
            &json!({"sub": "42", "exp": now() + 60}),
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap()
    };
    let cases = [
        ("/ws".to_string(), "401", "token missing"),
        ("/ws?token=abc".into(), "401", "malformed token: not three dot-separated parts"),
        (format!("/ws?token={forged}"), "401", "token signature invalid"),
        (format!("/ws?token={none}"), "401", "token algorithm \"none\" is not accepted"),
        (format!("/ws?token={expired}"), "401", "token expired"),
        (format!("/ws?token={early}"), "401", "token not yet valid (nbf)"),
        (format!("/ws?token={unknown}"), "401", "token signed by an unknown key (kid)"),
        (format!("/ws?token={t}&channels=news"), "403", "channel not allowed by the token: news"),
        (format!("/ws?token={t}&user=43"), "403", "user does not match the token's sub"),
    ];
    for (path, status, why) in &cases {
        let (head, body) = refused(&s, path, "");
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{path}: {head}");
        assert!(body.starts_with(why), "{path}: {body}");
        assert!(!body.contains(&t) && !body.contains(&forged[..20]), "the token is never echoed");
        if *status == "401" {
            assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
        }
    }
    let (_, _, m) = s.http("GET", "/metrics", "", b"");
    assert!(m.contains("ringcast_auth_failures_total{reason=\"expired\"} 1"), "{m}");
    assert!(m.contains("ringcast_auth_failures_total{reason=\"forbidden\"} 2"), "{m}");
    assert!(m.contains("ringcast_handshake_failures_total{reason=\"unauthorized\"} 7"), "{m}");
}

#[test]
fn ch_subscribes_and_sub_allow_decides_the_rest() {
    let keys = Keys::new("grant");
    let s = start(&keys, &[]);
    let t = token(
        "hs",
        json!({"sub": "u1", "exp": now() + 60, "ch": ["news"], "sub_allow": ["prices.*"],
               "info": {"name": "Ada"}}),
    );
    let mut c =
        Client::try_connect(s.addr, &format!("/ws?token={t}&channels=prices.eu"), "").unwrap();
    let w = c.welcome.clone().unwrap();
    assert_eq!(w["channels"], json!(["news", "prices.eu"]));
    c.text(r#"{"type":"subscribe","channel":"prices.us"}"#);
    assert_eq!(c.json()["type"], "subscribed");
    c.text(r#"{"type":"subscribe","channel":"orders"}"#);
    let e = c.json();
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("forbidden")));
    let (st, _) = s.post("/v1/publish", json!({"channel": "news", "data": 1}));
    assert_eq!(st, 200);
    let m = c.json();
    assert_eq!((m["stream"].as_str(), m["data"].as_i64()), (Some("channel:news"), Some(1)));
    let v = s.wait_for("/v1/users/u1", |v| v["connections"][0]["info"]["name"] == "Ada");
    assert_eq!(v["connections"].as_array().unwrap().len(), 1);
}

#[test]
fn an_expired_token_closes_with_4003_unless_refreshed() {
    let keys = Keys::new("expiry");
    let s = start(&keys, &[]);
    let short = |sub: &str| token("hs", json!({"sub": sub, "exp": now() + 2}));
    let mut gone = Client::try_connect(s.addr, &format!("/ws?token={}", short("a")), "").unwrap();
    let mut kept = Client::try_connect(s.addr, &format!("/ws?token={}", short("b")), "").unwrap();
    // A refresh for another user is refused and changes nothing.
    let other = token("hs", json!({"sub": "a", "exp": now() + 60}));
    kept.text(&json!({"type": "refresh", "token": other}).to_string());
    let e = kept.json();
    assert_eq!(
        (e["code"].as_str(), e["reason"].as_str()),
        (Some("bad_token"), Some("the token is for another user"))
    );
    let longer = token("hs", json!({"sub": "b", "exp": now() + 60}));
    kept.text(&json!({"type": "refresh", "token": longer}).to_string());
    let r = kept.json();
    assert_eq!(r["type"], "refreshed");
    assert!(r["expires"].as_u64().unwrap() >= (now() + 55) * 1000, "{r}");

    let started = std::time::Instant::now();
    assert_eq!(gone.recv_close(), (Some(4003), "token expired".to_string()));
    assert!(started.elapsed() < Duration::from_secs(4));
    // The refreshed one outlives the first token's expiry.
    std::thread::sleep(Duration::from_millis(1500));
    kept.text(r#"{"type":"ping"}"#);
    assert_eq!(kept.json()["type"], "pong");
    let (_, _, m) = s.http("GET", "/metrics", "", b"");
    assert!(m.contains("ringcast_evictions_total{reason=\"token_expired\"} 1"), "{m}");
    assert!(m.contains("ringcast_token_refreshes_total 1"), "{m}");
}

#[test]
fn sighup_reloads_keys_without_dropping_a_connection() {
    let keys = Keys::new("reload");
    let s = start(&keys, &[]);
    let hs = token("hs", json!({"sub": "a", "exp": now() + 60}));
    let ed = token("ed", json!({"sub": "b", "exp": now() + 60}));
    let mut old = Client::try_connect(s.addr, &format!("/ws?token={hs}"), "").unwrap();
    // A file that does not load keeps the old keys.
    std::fs::write(keys.path(), "{\"keys\":[]}").unwrap();
    s.signal(libc::SIGHUP);
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while !s.log().contains("client keys not reloaded") {
        assert!(std::time::Instant::now() < end, "{}", s.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(s.log().contains("the key set has no keys"));
    assert!(Client::try_connect(s.addr, &format!("/ws?token={hs}"), "").is_ok());
    // Rotation: only the Ed25519 key now.
    keys.write(false);
    s.signal(libc::SIGHUP);
    while !s.log().contains("reloaded client keys: 1 key(s): ed (EdDSA)") {
        assert!(std::time::Instant::now() < end, "{}", s.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (head, body) = refused(&s, &format!("/ws?token={hs}"), "");
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert_eq!(body, "token signed by an unknown key (kid)");
    assert!(Client::try_connect(s.addr, &format!("/ws?token={ed}"), "").is_ok());
    old.text(r#"{"type":"ping"}"#);
    assert_eq!(old.json()["type"], "pong", "a connection made with the old key stays");
}

#[test]
fn open_mode_on_a_public_address_refuses_to_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["--listen", "0.0.0.0:0", "--api-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--auth open") && err.contains("--insecure-open-identity true"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["--auth", "jwt", "--jwt-keys", "/nonexistent/keys.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("cannot read --jwt-keys /nonexistent/keys.json"));
}
