//! The query string of an upgrade request: `user`, `device`, `channels`, `resume`, `session`
//! and `token`; other parameters belong to the application and are ignored.

use std::sync::Arc;

use super::AuthError;
use crate::proto::client::{parse_resume_streams, valid_name, Position};

/// What the query string asks for, each name checked against the name rule.
#[derive(Debug, Default)]
pub(super) struct Query {
    pub(super) user: Option<Arc<str>>,
    pub(super) device: Option<Arc<str>>,
    pub(super) channels: Vec<Arc<str>>,
    pub(super) resume: Vec<(Arc<str>, Position)>,
    pub(super) session: Option<String>,
    pub(super) token: Option<String>,
}

impl Query {
    /// The channels asked for by `channels=` and `resume=`, each once.
    pub(super) fn asked(&self) -> impl Iterator<Item = &Arc<str>> {
        let resumed = self.resume.iter().map(|(c, _)| c).filter(|c| !self.channels.contains(c));
        self.channels.iter().chain(resumed)
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Parses the query string; a bad name or `resume` is a [`AuthError::BadQuery`].
pub(super) fn parse(query: Option<&str>) -> Result<Query, AuthError> {
    let mut q = Query::default();
    let bad = |what: &str| {
        AuthError::BadQuery(format!(
            "invalid {what}: names are 1-128 bytes of A-Z a-z 0-9 _ - . : @ /"
        ))
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(v) = percent_decode(v) else {
            // Never echo a token, even a badly encoded one.
            return Err(if k == "token" {
                AuthError::Malformed("?token= is not percent-encoded UTF-8")
            } else {
                bad(k)
            });
        };
        match k {
            "user" => {
                if !valid_name(&v) {
                    return Err(bad("user"));
                }
                q.user = Some(v.into());
            }
            "device" => {
                if !valid_name(&v) {
                    return Err(bad("device"));
                }
                q.device = Some(v.into());
            }
            "channels" => {
                for c in v.split(',').filter(|c| !c.is_empty()) {
                    if !valid_name(c) {
                        return Err(bad("channels"));
                    }
                    if !q.channels.iter().any(|x| &**x == c) {
                        q.channels.push(c.into());
                    }
                }
            }
            "session" => q.session = Some(v),
            "token" => q.token = Some(v),
            "resume" => {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                let json = b64
                    .decode(v.trim_end_matches('='))
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| {
                        AuthError::BadQuery("invalid resume: not base64url JSON".into())
                    })?;
                let streams = parse_resume_streams(&json)
                    .map_err(|e| AuthError::BadQuery(format!("invalid resume: {}", e.reason())))?;
                q.resume = streams.into_iter().map(|(c, p)| (Arc::from(c), p)).collect();
            }
            _ => {} // other parameters belong to the application
        }
    }
    Ok(q)
}
