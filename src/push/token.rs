//! Session tokens: what a connection was (user, device, channels), signed so a client that
//! reconnects can have its subscriptions back without naming them, and cannot forge or borrow
//! another's. `base64url(payload) "." base64url(HMAC-SHA256(key, payload))`, the payload a
//! small JSON object with an expiry. Stateless: the server keeps nothing per token.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// What a token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionToken {
    #[serde(rename = "u")]
    pub(crate) user: Option<String>,
    #[serde(rename = "d")]
    pub(crate) device: Option<String>,
    #[serde(rename = "c")]
    pub(crate) channels: Vec<String>,
    /// Unix ms after which it is refused.
    #[serde(rename = "x")]
    pub(crate) expires_ms: u64,
}

/// Why a token was refused; the client is told `session_expired` either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenError {
    Malformed,
    BadSignature,
    Expired,
}

/// The key tokens are signed with.
#[derive(Clone)]
pub(crate) struct TokenKey(Arc<[u8]>);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(…)")
    }
}

impl TokenKey {
    pub(crate) fn new(key: &[u8]) -> TokenKey {
        TokenKey(Arc::from(key))
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        let mut m = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(payload);
        m
    }

    pub(crate) fn sign(&self, t: &SessionToken) -> String {
        let payload = serde_json::to_vec(t).unwrap_or_default();
        let tag = self.mac(&payload).finalize().into_bytes();
        format!("{}.{}", B64.encode(&payload), B64.encode(tag))
    }

    /// Checks the signature (in constant time) and the expiry at `now_ms`.
    pub(crate) fn verify(&self, token: &str, now_ms: u64) -> Result<SessionToken, TokenError> {
        let (p, tag) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let payload = B64.decode(p).map_err(|_| TokenError::Malformed)?;
        let tag = B64.decode(tag).map_err(|_| TokenError::Malformed)?;
        self.mac(&payload).verify_slice(&tag).map_err(|_| TokenError::BadSignature)?;
        let t: SessionToken =
            serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        if now_ms >= t.expires_ms {
            return Err(TokenError::Expired);
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_until_they_expire_and_not_when_touched() {
        let key = TokenKey::new(b"a test key of some length");
        let t = SessionToken {
            user: Some("42".into()),
            device: None,
            channels: vec!["a".into(), "b".into()],
            expires_ms: 1000,
        };
        let s = key.sign(&t);
        assert_eq!(key.verify(&s, 999), Ok(t.clone()));
        assert_eq!(key.verify(&s, 1000), Err(TokenError::Expired));
        assert_eq!(TokenKey::new(b"another key").verify(&s, 0), Err(TokenError::BadSignature));
        // Another payload under the same tag.
        let (_, tag) = s.split_once('.').unwrap();
        let forged = SessionToken { user: Some("43".into()), ..t };
        let p = B64.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(key.verify(&format!("{p}.{tag}"), 0), Err(TokenError::BadSignature));
        assert_eq!(key.verify("nonsense", 0), Err(TokenError::Malformed));
        assert_eq!(key.verify("!!.!!", 0), Err(TokenError::Malformed));
    }
}
