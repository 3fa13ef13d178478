//! The fuzz harness of token and claims handling (`fuzz/fuzz_targets/token.rs`).
#![allow(clippy::unwrap_used)] // reason: a harness; a panic is the finding

use std::sync::OnceLock;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{Authenticator, JwtAuth, JwtSettings, UpgradeRequest};
use crate::proto::client::valid_name;

const SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-sec";
const NOW_MS: u64 = 1_800_000_000_000;

fn auth() -> &'static JwtAuth {
    static AUTH: OnceLock<JwtAuth> = OnceLock::new();
    AUTH.get_or_init(|| {
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
        let jwks = format!(r#"{{"keys":[{{"kty":"oct","kid":"f","alg":"HS256","k":"{k}"}}]}}"#);
        let settings = JwtSettings {
            keys_path: "/nonexistent".into(),
            audience: vec!["app".into()],
            issuer: vec![],
            leeway_ms: 1000,
            max_channels: 8,
            max_info_bytes: 256,
        };
        JwtAuth::from_jwks(settings, &jwks).unwrap()
    })
}

/// Signs `claims` (any bytes) as the payload of an HS256 token of the harness key, so the
/// claims checks see arbitrary input behind a valid signature.
fn signed(claims: &[u8]) -> String {
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let msg = format!("{}.{}", b.encode(r#"{"alg":"HS256","kid":"f"}"#), b.encode(claims));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(msg.as_bytes());
    format!("{msg}.{}", b.encode(mac.finalize().into_bytes()))
}

/// Arbitrary bytes as a token, as signed claims, and split into a query string and a token:
/// never a panic, and whatever is accepted names a valid user, allowed channels and an
/// expiry in the future.
pub fn check_token(data: &[u8]) {
    let a = auth();
    let split = data.iter().position(|&b| b == 0xff).unwrap_or(data.len());
    let query = std::str::from_utf8(&data[..split]).ok();
    let mut candidates = vec![signed(data)];
    if let Ok(t) = std::str::from_utf8(data) {
        candidates.push(t.to_string());
    }
    if let Some(rest) = data.get(split + 1..) {
        candidates.push(signed(rest));
    }
    for token in &candidates {
        for q in [None, query] {
            let req = UpgradeRequest { query: q, bearer: Some(token) };
            if let Ok(id) = a.authenticate(&req, NOW_MS) {
                assert!(id.user.as_deref().is_some_and(valid_name));
                assert!(id.expires_ms.is_some_and(|e| e > NOW_MS));
                let g = id.grant.as_ref().unwrap();
                assert!(id.channels.iter().all(|c| valid_name(c) && g.allows(c)));
                assert!(id.channels.len() <= 8);
                assert!(id.info.as_ref().is_none_or(|i| i.len() <= 256));
            }
            let _ = a.refresh(token, NOW_MS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_harness_accepts_a_good_token_and_survives_junk() {
        let claims = br#"{"sub":"u","exp":1800000060,"aud":"app","ch":["a"]}"#;
        let id = auth()
            .authenticate(&UpgradeRequest { query: None, bearer: Some(&signed(claims)) }, NOW_MS)
            .unwrap();
        assert_eq!(id.user.as_deref(), Some("u"));
        for junk in [
            &b""[..],
            b"\xff",
            b"{}",
            b"a.b.c",
            b"{\"sub\":\"u\",\"exp\":1e400}",
            b"channels=a\xff{}",
        ] {
            check_token(junk);
        }
        check_token(claims);
    }
}
