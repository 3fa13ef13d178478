//! `--auth proxy` (and `jwt`'s fallback for clients without a token): a `connect` backend
//! decides who a connection is. Here, the pure half: the authenticator that defers every
//! upgrade to the backend, and what the backend's answer becomes.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::proto::client::valid_name;

use super::{query, AuthError, Authenticator, Grant, Identity, Refreshed, UpgradeRequest};

/// Every upgrade waits for the connect backend: `authenticate` answers `Missing`, which the
/// shard takes as "ask it".
#[derive(Debug)]
pub(crate) struct ProxyMode;

impl Authenticator for ProxyMode {
    fn authenticate(&self, _: &UpgradeRequest<'_>, _now_ms: u64) -> Result<Identity, AuthError> {
        Err(AuthError::Missing)
    }

    fn refresh(&self, _token: &str, _now_ms: u64) -> Result<Refreshed, AuthError> {
        Err(AuthError::NoTokens)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer<'a> {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    sub_allow: Vec<String>,
    #[serde(default)]
    pub_allow: Vec<String>,
    #[serde(default, borrow)]
    info: Option<&'a RawValue>,
    /// Unix seconds.
    #[serde(default)]
    expire_at: Option<f64>,
}

/// The most patterns in `sub_allow` or `pub_allow`.
const MAX_PATTERNS: usize = 64;

fn pattern_ok(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 128
        && p.bytes().all(|b| b == b'*' || b.is_ascii_alphanumeric() || b"_-.:@/".contains(&b))
}

/// The identity a connect backend's `data` gives (`{}` or none: an anonymous connection that
/// may follow nothing but what `channels` names), with the query's `resume=` and `session=`.
/// A bad answer is the backend's fault: `Claim` says what (the upgrade gets 403).
pub(crate) fn identity(
    data: Option<&str>,
    query_string: Option<&str>,
    max_channels: usize,
    max_info: usize,
    now_ms: u64,
) -> Result<Identity, AuthError> {
    let a: Answer<'_> = serde_json::from_str(data.unwrap_or("{}"))
        .map_err(|e| AuthError::Claim(format!("the connect backend's data: {e}")))?;
    let bad = |what: &str| AuthError::Claim(format!("the connect backend's {what}"));
    if a.user.as_deref().is_some_and(|u| !valid_name(u)) {
        return Err(bad("user is not a valid name"));
    }
    if a.device.is_some() && a.user.is_none() {
        return Err(bad("device comes without a user"));
    }
    if a.device.as_deref().is_some_and(|d| !valid_name(d)) {
        return Err(bad("device is not a valid name"));
    }
    if a.channels.len() > max_channels || !a.channels.iter().all(|c| valid_name(c)) {
        return Err(bad("channels are not valid names, or more than --max-channels-per-conn"));
    }
    for list in [&a.sub_allow, &a.pub_allow] {
        if list.len() > MAX_PATTERNS || !list.iter().all(|p| pattern_ok(p)) {
            return Err(bad("sub_allow or pub_allow has a bad pattern"));
        }
    }
    if a.info.is_some_and(|i| i.get().len() > max_info) {
        return Err(bad("info is larger than --jwt-max-info"));
    }
    let expires_ms = match a.expire_at {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 => {
            let ms = (s * 1000.0).min(u64::MAX as f64) as u64;
            if ms <= now_ms {
                return Err(bad("expire_at has passed"));
            }
            Some(ms)
        }
        Some(_) => return Err(bad("expire_at is not Unix seconds")),
    };
    // Only the query's resume= and session= count: who the connection is and what it starts
    // with are the backend's to say.
    let q = query::parse(query_string)?;
    let channels: Vec<Arc<str>> = a.channels.iter().map(|c| Arc::from(c.as_str())).collect();
    Ok(Identity {
        user: a.user.map(Arc::from),
        device: a.device.map(Arc::from),
        channels: channels.clone(),
        resume: q.resume,
        session: q.session,
        grant: Some(Arc::new(Grant {
            channels,
            sub_allow: a.sub_allow.into_iter().map(String::into_boxed_str).collect(),
            pub_allow: a.pub_allow.into_iter().map(String::into_boxed_str).collect(),
        })),
        expires_ms,
        info: a.info.map(|i| Arc::from(i.get())),
        backend_renews: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backends_answer_becomes_an_identity_and_bad_ones_are_named() {
        let id = identity(
            Some(
                r#"{"user":"42","device":"web","channels":["news"],"sub_allow":["rooms.*"],"pub_allow":["rooms.*"],"info":{"n":"Ann"},"expire_at":2000}"#,
            ),
            Some("resume=&user=ignored"),
            8,
            1024,
            1_000_000,
        );
        // `resume=` empty is a bad query: said as such.
        assert!(matches!(id, Err(AuthError::BadQuery(_))), "{id:?}");
        let id = identity(
            Some(r#"{"user":"42","device":"web","channels":["news"],"sub_allow":["rooms.*"],"pub_allow":["rooms.*"],"info":{"n":"Ann"},"expire_at":2000}"#),
            Some("user=ignored&channels=x"),
            8,
            1024,
            1_000_000,
        )
        .unwrap();
        assert_eq!((id.user.as_deref(), id.device.as_deref()), (Some("42"), Some("web")));
        assert_eq!(
            id.channels,
            vec![Arc::<str>::from("news")],
            "the query's channels do not count"
        );
        let g = id.grant.clone().unwrap();
        assert!(g.allows("rooms.1") && g.allows("news") && !g.allows("other"));
        assert!(g.may_publish("rooms.2") && !g.may_publish("news"));
        assert_eq!(id.expires_ms, Some(2_000_000));
        assert_eq!(id.info.as_deref(), Some(r#"{"n":"Ann"}"#));
        let anon = identity(None, None, 8, 1024, 0).unwrap();
        assert_eq!((anon.user, anon.channels.len()), (None, 0));
        for (bad, says) in [
            (r#"{"user":"a b"}"#, "user"),
            (r#"{"device":"d"}"#, "without a user"),
            (r#"{"channels":["a","b","c"]}"#, "max-channels"),
            (r#"{"sub_allow":["a b"]}"#, "pattern"),
            (r#"{"expire_at":1}"#, "passed"),
            (r#"{"expire_at":"soon"}"#, "data"),
            (r#"{"colour":1}"#, "data"),
            (r#"{"info":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#, "info"),
        ] {
            match identity(Some(bad), None, 2, 16, 5_000) {
                Err(AuthError::Claim(m)) => assert!(m.contains(says), "{bad}: {m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
