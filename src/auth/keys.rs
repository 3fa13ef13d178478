//! The keys tokens are verified with: a JWKS file (RFC 7517), each key bound to exactly one
//! algorithm and found by its `kid`. Loaded at start-up and again on SIGHUP; a file that does
//! not load is refused whole, with the reason, and the keys in use stay.

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// One verification key.
pub(super) struct Key {
    pub(super) kid: Option<String>,
    pub(super) alg: Algorithm,
    pub(super) key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material (an `oct` key is a shared secret).
        f.debug_struct("Key").field("kid", &self.kid).field("alg", &self.alg).finish()
    }
}

/// The loaded keys.
#[derive(Debug, Default)]
pub(super) struct KeyRing {
    pub(super) keys: Vec<Key>,
}

/// The algorithms a key may be bound to (everything jsonwebtoken verifies; never `none`).
fn algorithm(k: KeyAlgorithm) -> Option<Algorithm> {
    Some(match k {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// A short name for the key type, for error messages.
fn kty(jwk: &Jwk) -> &'static str {
    match jwk.algorithm {
        AlgorithmParameters::EllipticCurve(_) => "EC",
        AlgorithmParameters::RSA(_) => "RSA",
        AlgorithmParameters::OctetKey(_) => "oct",
        AlgorithmParameters::OctetKeyPair(_) => "OKP",
        _ => "unknown",
    }
}

impl KeyRing {
    /// Parses a JWKS document. Every key needs an `alg` (an `OKP` key may leave it out: it
    /// can only be EdDSA) that fits its type, and a `kid` unless it is the only key.
    pub(super) fn from_jwks(text: &str) -> Result<KeyRing, String> {
        let set: JwkSet = serde_json::from_str(text)
            .map_err(|e| format!("not a JWKS document ({{\"keys\":[…]}}): {e}"))?;
        if set.keys.is_empty() {
            return Err("the key set has no keys".into());
        }
        let mut keys: Vec<Key> = Vec::with_capacity(set.keys.len());
        for (i, jwk) in set.keys.iter().enumerate() {
            let kid = jwk.common.key_id.clone();
            let name = match &kid {
                Some(k) => format!("key {i} (kid {k:?})"),
                None => format!("key {i}"),
            };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                return Err(format!(
                    "{name}: \"use\" is \"enc\"; only signature keys verify tokens"
                ));
            }
            let alg = match (jwk.common.key_algorithm, &jwk.algorithm) {
                (Some(a), _) => algorithm(a)
                    .ok_or_else(|| format!("{name}: alg {a} does not sign JSON Web Tokens"))?,
                (None, AlgorithmParameters::OctetKeyPair(_)) => Algorithm::EdDSA,
                (None, _) => {
                    return Err(format!(
                        "{name}: \"alg\" is required (a key is bound to one algorithm)"
                    ))
                }
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("{name}: {e}"))?;
            if key.family() != alg.family() {
                return Err(format!("{name}: alg {alg:?} does not fit a {} key", kty(jwk)));
            }
            if let AlgorithmParameters::EllipticCurve(p) = &jwk.algorithm {
                let want = match alg {
                    Algorithm::ES256 => jsonwebtoken::jwk::EllipticCurve::P256,
                    _ => jsonwebtoken::jwk::EllipticCurve::P384,
                };
                if p.curve != want {
                    return Err(format!("{name}: alg {alg:?} needs curve {want:?}"));
                }
            }
            if keys.iter().any(|k| k.kid.is_some() && k.kid == kid) {
                return Err(format!("{name}: the kid appears twice"));
            }
            keys.push(Key { kid, alg, key });
        }
        if keys.len() > 1 && keys.iter().any(|k| k.kid.is_none()) {
            return Err("with several keys every key needs a \"kid\"".into());
        }
        Ok(KeyRing { keys })
    }

    /// The key a token's `kid` names; without a `kid`, the only key if there is one.
    pub(super) fn find(&self, kid: Option<&str>) -> Option<&Key> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }

    /// `3 keys: a (HS256), b (RS256), c (EdDSA)`.
    pub(super) fn describe(&self) -> String {
        let list: Vec<String> = self
            .keys
            .iter()
            .map(|k| format!("{} ({:?})", k.kid.as_deref().unwrap_or("-"), k.alg))
            .collect();
        format!("{} key(s): {}", self.keys.len(), list.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OCT: &str =
        r#"{"kty":"oct","kid":"h1","alg":"HS256","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}"#;

    fn set(keys: &[&str]) -> String {
        format!("{{\"keys\":[{}]}}", keys.join(","))
    }

    #[test]
    fn keys_need_an_algorithm_that_fits_and_a_kid_when_several() {
        let ring = KeyRing::from_jwks(&set(&[OCT])).unwrap();
        assert_eq!(ring.keys[0].alg, Algorithm::HS256);
        assert!(ring.find(None).is_some(), "the only key serves a token without kid");
        assert!(ring.find(Some("h1")).is_some());
        assert!(ring.find(Some("other")).is_none());
        assert!(ring.describe().contains("h1 (HS256)"));

        let no_alg = OCT.replace(r#""alg":"HS256","#, "");
        assert!(KeyRing::from_jwks(&set(&[&no_alg])).unwrap_err().contains("\"alg\" is required"));
        let wrong = OCT.replace("HS256", "RS256");
        assert!(KeyRing::from_jwks(&set(&[&wrong]))
            .unwrap_err()
            .contains("does not fit a oct key"));
        let two = OCT.replace("h1", "h2");
        let no_kid = OCT.replace(r#""kid":"h1","#, "");
        assert!(KeyRing::from_jwks(&set(&[OCT, &two])).is_ok());
        assert!(KeyRing::from_jwks(&set(&[OCT, OCT])).unwrap_err().contains("twice"));
        assert!(KeyRing::from_jwks(&set(&[&no_kid, &two]))
            .unwrap_err()
            .contains("needs a \"kid\""));
        let enc = OCT.replace(r#""kty""#, r#""use":"enc","kty""#);
        assert!(KeyRing::from_jwks(&set(&[&enc])).unwrap_err().contains("enc"));
        assert!(KeyRing::from_jwks("{\"keys\":[]}").unwrap_err().contains("no keys"));
        assert!(KeyRing::from_jwks("nope").unwrap_err().contains("not a JWKS"));
        // Printing a ring never shows a secret.
        assert!(!format!("{ring:?}").contains("c2Vj"));
    }
}
