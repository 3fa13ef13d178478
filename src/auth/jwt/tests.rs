use std::path::PathBuf;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

use super::*;
use crate::proto::handshake::HandshakeError;

const SECRET: &[u8] = b"a-shared-secret-of-32-bytes-long";
const NOW_MS: u64 = 1_800_000_000_000;
const NOW: u64 = NOW_MS / 1000;

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt").join(name);
    std::fs::read(p).unwrap()
}

/// The signing keys of the tests: (kid, alg, key).
fn signers() -> Vec<(&'static str, Algorithm, EncodingKey)> {
    vec![
        ("hs", Algorithm::HS256, EncodingKey::from_secret(SECRET).unwrap()),
        ("rs", Algorithm::RS256, EncodingKey::from_rsa_pem(&fixture("rsa.pem")).unwrap()),
        ("ps", Algorithm::PS256, EncodingKey::from_rsa_pem(&fixture("rsa.pem")).unwrap()),
        ("es", Algorithm::ES256, EncodingKey::from_ec_pem(&fixture("ec.pem")).unwrap()),
        ("ed", Algorithm::EdDSA, EncodingKey::from_ed_pem(&fixture("ed25519.pem")).unwrap()),
    ]
}

fn jwks() -> String {
    let keys = signers()
        .iter()
        .map(|(kid, alg, key)| {
            let mut jwk = Jwk::from_encoding_key(key, *alg).unwrap();
            jwk.common.key_id = Some(kid.to_string());
            jwk
        })
        .collect();
    serde_json::to_string(&JwkSet { keys }).unwrap()
}

fn settings() -> JwtSettings {
    JwtSettings {
        keys_path: PathBuf::from("/nonexistent"),
        audience: vec![],
        issuer: vec![],
        leeway_ms: 0,
        max_channels: 4,
        max_info_bytes: 64,
    }
}

fn auth() -> JwtAuth {
    JwtAuth::from_jwks(settings(), &jwks()).unwrap()
}

fn sign(kid: &str, claims: serde_json::Value) -> String {
    let (_, alg, key) = signers().into_iter().find(|(k, _, _)| *k == kid).unwrap();
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    encode(&h, &claims, &key).unwrap()
}

/// An HS256 token naming the right kid, signed with another secret.
fn forged() -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("hs".into());
    encode(&h, &claims(), &EncodingKey::from_secret(b"not-the-secret-not-the-secret-00").unwrap())
        .unwrap()
}

fn claims() -> serde_json::Value {
    json!({"sub": "42", "exp": NOW + 60})
}

fn with(extra: serde_json::Value) -> serde_json::Value {
    let mut c = claims();
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn connect(a: &JwtAuth, token: &str, query: Option<&str>) -> Result<Identity, AuthError> {
    a.authenticate(&UpgradeRequest { query, bearer: Some(token) }, NOW_MS)
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[test]
fn every_algorithm_is_accepted_with_its_own_key() {
    let a = auth();
    for (kid, _, _) in signers() {
        let id = connect(&a, &sign(kid, claims()), None).unwrap();
        assert_eq!(id.user.as_deref(), Some("42"), "{kid}");
        assert_eq!(id.expires_ms, Some((NOW + 60) * 1000));
    }
}

#[test]
fn each_refusal_has_its_reason_and_status() {
    let a = auth();
    let ok = sign("hs", claims());
    let cases: Vec<(Result<Identity, AuthError>, AuthError)> = vec![
        (a.authenticate(&UpgradeRequest::default(), NOW_MS), AuthError::Missing),
        (connect(&a, "abc", None), AuthError::Malformed("not three dot-separated parts")),
        (connect(&a, "!!.e30.x", None), AuthError::Malformed("header is not base64url")),
        (connect(&a, &forged(), None), AuthError::BadSignature),
        (
            connect(&a, &format!("{}!", &ok[..ok.len() - 1]), None),
            AuthError::Malformed("a part is not base64url"),
        ),
        (connect(&a, &sign("hs", json!({"sub": "42", "exp": NOW})), None), AuthError::Expired),
        (connect(&a, &sign("hs", with(json!({"nbf": NOW + 5}))), None), AuthError::NotYetValid),
        (
            connect(&a, &sign("hs", json!({"sub": "42"})), None),
            AuthError::Claim("exp is required".into()),
        ),
        (
            connect(&a, &sign("hs", json!({"exp": NOW + 60})), None),
            AuthError::Claim("sub is required".into()),
        ),
        (
            connect(&a, &sign("hs", with(json!({"sub": "a b"}))), None),
            AuthError::Claim("sub does not follow the name rule".into()),
        ),
        (
            connect(&a, &sign("hs", with(json!({"ch": 5}))), None),
            AuthError::Claim("claims are not a JSON object of the expected types".into()),
        ),
        (
            connect(&a, &sign("hs", with(json!({"info": {"pad": "x".repeat(80)}}))), None),
            AuthError::Claim("info is larger than --jwt-max-info (64 bytes)".into()),
        ),
        (
            connect(&a, &sign("hs", with(json!({"ch": ["a", "b", "c", "d", "e"]}))), None),
            AuthError::Claim("ch names more than --max-channels-per-conn (4)".into()),
        ),
        (
            connect(&a, &sign("hs", with(json!({"sub_allow": ["a b"]}))), None),
            AuthError::Claim(format!(
                "sub_allow takes up to {MAX_PATTERNS} patterns of name characters and *"
            )),
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got.as_ref().unwrap_err(), &want);
        assert_eq!(want.handshake(), HandshakeError::Unauthorized);
        assert!(!want.reason().contains(&ok), "a reason never echoes the token");
    }
    // A kid nobody has.
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("nobody".into());
    let t = encode(&h, &claims(), &EncodingKey::from_secret(SECRET).unwrap()).unwrap();
    assert_eq!(connect(&a, &t, None).unwrap_err(), AuthError::UnknownKey);
    // Several keys and no kid: no key is guessed.
    let t = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap();
    assert_eq!(connect(&a, &t, None).unwrap_err(), AuthError::UnknownKey);
    // ?token= works like the header, and a bad one is not echoed.
    let q = format!("token={ok}");
    assert!(a.authenticate(&UpgradeRequest { query: Some(&q), bearer: None }, NOW_MS).is_ok());
}

#[test]
fn alg_none_and_algorithm_confusion_are_refused() {
    let a = auth();
    // alg none, with and without a signature.
    let head = b64(r#"{"alg":"none","kid":"hs"}"#);
    let body = b64(&claims().to_string());
    for t in [format!("{head}.{body}."), format!("{head}.{body}.xyz")] {
        let e = connect(&a, &t, None).unwrap_err();
        assert!(matches!(e, AuthError::Algorithm(_)), "{e:?}");
        assert!(e.reason().contains("\"none\" is not accepted"), "{}", e.reason());
    }
    // HS256 "signed" with the RSA key's public half as the HMAC secret, naming the RSA kid.
    let jwks: JwkSet = serde_json::from_str(&jwks()).unwrap();
    let rsa = jwks.find("rs").unwrap();
    let pem_like = serde_json::to_vec(rsa).unwrap();
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("rs".into());
    let t = encode(&h, &claims(), &EncodingKey::from_secret(&pem_like).unwrap()).unwrap();
    let e = connect(&a, &t, None).unwrap_err();
    assert_eq!(e, AuthError::Algorithm("token algorithm HS256 is not the key's (RS256)".into()));
    // And an RS256 token naming the HMAC key.
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("hs".into());
    let t =
        encode(&h, &claims(), &EncodingKey::from_rsa_pem(&fixture("rsa.pem")).unwrap()).unwrap();
    assert!(matches!(connect(&a, &t, None).unwrap_err(), AuthError::Algorithm(_)));
}

#[test]
fn audience_issuer_and_leeway_are_checked_when_configured() {
    let s = JwtSettings {
        audience: vec!["app".into()],
        issuer: vec!["https://id.example".into()],
        leeway_ms: 30_000,
        ..settings()
    };
    let a = JwtAuth::from_jwks(s, &jwks()).unwrap();
    let good = with(json!({"aud": ["other", "app"], "iss": "https://id.example"}));
    assert!(connect(&a, &sign("hs", good.clone()), None).is_ok());
    let mut c = good.clone();
    c["aud"] = json!("other");
    assert_eq!(connect(&a, &sign("hs", c), None).unwrap_err(), AuthError::Audience);
    let mut c = good.clone();
    c["iss"] = json!("https://evil.example");
    assert_eq!(connect(&a, &sign("hs", c), None).unwrap_err(), AuthError::Issuer);
    let mut c = good.clone();
    c.as_object_mut().unwrap().remove("iss");
    assert_eq!(connect(&a, &sign("hs", c), None).unwrap_err(), AuthError::Issuer);
    // 20 s past exp is inside a 30 s leeway, and the connection lasts to the leeway's end.
    let mut c = good.clone();
    c["exp"] = json!(NOW - 20);
    assert_eq!(connect(&a, &sign("hs", c), None).unwrap().expires_ms, Some(NOW_MS + 10_000));
    let mut c = good;
    c["nbf"] = json!(NOW + 20);
    assert!(connect(&a, &sign("hs", c), None).is_ok());
}

#[test]
fn claims_name_the_connection_and_what_it_may_follow() {
    let a = auth();
    let t = sign(
        "es",
        with(json!({"dev": "phone", "ch": ["news", "news"], "sub_allow": ["prices.*"],
                    "info": {"name": "Ada"}})),
    );
    let id = connect(&a, &t, Some("channels=prices.eu&user=42")).unwrap();
    assert_eq!(id.device.as_deref(), Some("phone"));
    let names: Vec<&str> = id.channels.iter().map(|c| &**c).collect();
    assert_eq!(names, ["news", "prices.eu"]);
    let g = id.grant.unwrap();
    assert!(g.allows("news") && g.allows("prices.us") && !g.allows("orders"));
    assert_eq!(id.info.as_deref(), Some(r#"{"name":"Ada"}"#));

    for (q, why) in [
        ("channels=orders", "channel not allowed by the token: orders"),
        ("user=43", "user does not match the token's sub"),
        ("device=tablet", "device does not match the token's dev"),
        // {"channel:orders":{"epoch":1,"seq":2}}
        (
            "resume=eyJjaGFubmVsOm9yZGVycyI6eyJlcG9jaCI6MSwic2VxIjoyfX0",
            "channel not allowed by the token: orders",
        ),
        ("channels=prices.a,prices.b,prices.c,prices.d", "too many channels: at most 4"),
    ] {
        let e = connect(&a, &t, Some(q)).unwrap_err();
        assert_eq!(e, AuthError::Forbidden(why.into()), "{q}");
        assert_eq!(e.handshake(), HandshakeError::Forbidden);
    }
    // Without dev in the token, the query may name the device.
    let t = sign("hs", claims());
    assert_eq!(connect(&a, &t, Some("device=tab")).unwrap().device.as_deref(), Some("tab"));
    assert!(connect(&a, &t, Some("channels=x")).is_err(), "no ch, no sub_allow: nothing else");
}

#[test]
fn refresh_checks_the_token_like_the_upgrade() {
    let a = auth();
    let r = a.refresh(&sign("ed", with(json!({"exp": NOW + 600}))), NOW_MS).unwrap();
    assert_eq!((&*r.user, r.expires_ms), ("42", (NOW + 600) * 1000));
    assert_eq!(
        a.refresh("x.y.z", NOW_MS).unwrap_err(),
        AuthError::Malformed("header is not base64url")
    );
}

#[test]
fn reload_swaps_the_ring_or_keeps_the_old_one() {
    let dir = std::env::temp_dir().join(format!("ringcast-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("keys.json");
    std::fs::write(&path, jwks()).unwrap();
    let a = JwtAuth::new(JwtSettings { keys_path: path.clone(), ..settings() }).unwrap();
    assert!(connect(&a, &sign("rs", claims()), None).is_ok());
    std::fs::write(&path, "{\"keys\":[]}").unwrap();
    assert!(a.reload().unwrap_err().contains("no keys"));
    assert!(connect(&a, &sign("rs", claims()), None).is_ok(), "a bad file keeps the old keys");
    let only_hs = JwtAuth::from_jwks(settings(), &jwks()).unwrap().describe();
    assert!(only_hs.starts_with("5 key(s)"));
    let one: JwkSet = serde_json::from_str(&jwks()).unwrap();
    let keep = JwkSet {
        keys: one.keys.into_iter().filter(|k| k.common.key_id.as_deref() == Some("hs")).collect(),
    };
    std::fs::write(&path, serde_json::to_string(&keep).unwrap()).unwrap();
    assert_eq!(a.reload().unwrap(), "1 key(s): hs (HS256)");
    assert_eq!(connect(&a, &sign("rs", claims()), None).unwrap_err(), AuthError::UnknownKey);
    assert!(connect(&a, &sign("hs", claims()), None).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}
