//! Who calls the API: the keys of `[[api_keys]]` (and `--api-key`, one key with every scope),
//! each kept as the SHA-256 of the key, compared in constant time, with scopes and an expiry.

use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::config::{ApiKeyRule, Scope};
use crate::proto::client::glob;

/// The API's keys; none configured means the API is open (loopback only, as config checks).
#[derive(Debug, Default)]
pub struct ApiKeys {
    keys: Vec<ApiKeyRule>,
}

/// What a request needs its key to allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need<'a> {
    /// Publish to this channel (`None`: the request names none; the op will refuse it).
    Publish(Option<&'a str>),
    Push,
    Send,
    Broadcast,
    Kick,
    Read,
    Metrics,
}

/// The caller of a request: `None` when the API has no keys.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caller<'a>(Option<&'a ApiKeyRule>);

impl Caller<'_> {
    /// An open API's caller (tests, and the metrics listener, which needs no key).
    pub(crate) const OPEN: Caller<'static> = Caller(None);

    /// Whether the key allows `need`; else a 403 naming the scope it lacks.
    pub(crate) fn require(&self, need: Need<'_>) -> Result<(), ApiError> {
        let Some(k) = self.0 else { return Ok(()) };
        let has = |s: &Scope| {
            *s == Scope::Admin
                || match (need, s) {
                    (Need::Publish(Some(ch)), Scope::Publish(p)) => glob(p, ch),
                    (Need::Publish(None), Scope::Publish(_)) => true,
                    (Need::Push, Scope::Push)
                    | (Need::Send, Scope::Send)
                    | (Need::Broadcast, Scope::Broadcast)
                    | (Need::Kick, Scope::Kick)
                    | (Need::Read, Scope::Read)
                    | (Need::Metrics, Scope::Metrics) => true,
                    _ => false,
                }
        };
        if k.scopes.iter().any(has) {
            return Ok(());
        }
        let scope = match need {
            Need::Publish(Some(ch)) => format!("publish:{ch}"),
            Need::Publish(None) => "publish:<channel>".into(),
            Need::Push => "push".into(),
            Need::Send => "send".into(),
            Need::Broadcast => "broadcast".into(),
            Need::Kick => "kick".into(),
            Need::Read => "read".into(),
            Need::Metrics => "metrics".into(),
        };
        Err(ApiError::Scope { key: k.name.clone(), scope })
    }
}

/// SHA-256 of a key, as `ringcast hash-key` prints it (hex).
pub fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

impl ApiKeys {
    /// The `[[api_keys]]` tables, and `--api-key` as a key named `api-key` with every scope.
    pub(crate) fn new(rules: &[ApiKeyRule], admin: Option<&str>) -> ApiKeys {
        let mut keys = rules.to_vec();
        if let Some(k) = admin.filter(|k| !k.is_empty()) {
            keys.push(ApiKeyRule {
                name: "api-key".into(),
                sha256: Sha256::digest(k.as_bytes()).into(),
                scopes: vec![Scope::Admin],
                expires_ms: None,
            });
        }
        ApiKeys { keys }
    }

    /// The keys the configuration names.
    pub fn from_config(cfg: &crate::config::Config) -> ApiKeys {
        ApiKeys::new(&cfg.api.api_keys, cfg.api.api_key.as_deref())
    }

    /// The caller an `Authorization` header names at `now_ms`: 401 without a bearer key or
    /// with an expired one, 403 for a key nobody has.
    pub(crate) fn check(&self, header: Option<&[u8]>, now_ms: u64) -> Result<Caller<'_>, ApiError> {
        if self.keys.is_empty() {
            return Ok(Caller(None));
        }
        let given = header
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        let digest: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
        // Every key is compared in full, with no early exit, so timing says nothing of which
        // key (or how much of one) matched.
        let mut found = None;
        for k in &self.keys {
            let diff = k.sha256.iter().zip(digest.iter()).fold(0u8, |a, (x, y)| a | (x ^ y));
            if diff == 0 {
                found = Some(k);
            }
        }
        let k = found.ok_or(ApiError::Forbidden)?;
        if k.expires_ms.is_some_and(|e| now_ms >= e) {
            return Err(ApiError::KeyExpired(k.name.clone()));
        }
        Ok(Caller(Some(k)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ApiKeys {
        let rule = |name: &str, key: &str, scopes: &[&str], expires_ms| ApiKeyRule {
            name: name.into(),
            sha256: Sha256::digest(key.as_bytes()).into(),
            scopes: scopes.iter().map(|s| Scope::parse(s).unwrap()).collect(),
            expires_ms,
        };
        ApiKeys::new(
            &[
                rule("billing", "b-key", &["push", "publish:orders.*"], None),
                rule("old", "o-key", &["read"], Some(1000)),
            ],
            Some("root-key"),
        )
    }

    #[test]
    fn keys_are_found_by_hash_and_scopes_decide() {
        let k = keys();
        assert!(matches!(k.check(None, 0), Err(ApiError::Unauthorized)));
        assert!(matches!(k.check(Some(b"Basic x"), 0), Err(ApiError::Unauthorized)));
        assert!(matches!(k.check(Some(b"Bearer nope"), 0), Err(ApiError::Forbidden)));
        assert!(matches!(k.check(Some(b"Bearer o-key"), 1000), Err(ApiError::KeyExpired(_))));
        assert!(k.check(Some(b"Bearer o-key"), 999).unwrap().require(Need::Read).is_ok());
        let b = k.check(Some(b"Bearer b-key"), 0).unwrap();
        assert!(b.require(Need::Push).is_ok());
        assert!(b.require(Need::Publish(Some("orders.eu"))).is_ok());
        match b.require(Need::Publish(Some("news"))) {
            Err(ApiError::Scope { key, scope }) => {
                assert_eq!((&*key, &*scope), ("billing", "publish:news"))
            }
            other => panic!("{other:?}"),
        }
        assert!(b.require(Need::Metrics).is_err() && b.require(Need::Kick).is_err());
        let root = k.check(Some(b"Bearer root-key"), u64::MAX).unwrap();
        for n in [Need::Kick, Need::Metrics, Need::Read, Need::Publish(Some("x")), Need::Broadcast]
        {
            assert!(root.require(n).is_ok());
        }
        assert!(ApiKeys::new(&[], None).check(None, 0).unwrap().require(Need::Kick).is_ok());
        assert_eq!(
            hash_key("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }
}
