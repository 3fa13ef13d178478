//! Who a connection is, decided once at the upgrade. Identity extraction is one pluggable step
//! ([`Identify`]); the default open mode takes `user`, `device` and `channels` from the query
//! string (`/ws?user=42&device=phone&channels=a,b`). Signed tokens will be another
//! implementation of the same trait.

use std::sync::Arc;

use super::ids::valid_name;
use crate::proto::client::{parse_resume_streams, Position};

/// What the upgrade established.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) user: Option<Arc<str>>,
    pub(crate) device: Option<Arc<str>>,
    pub(crate) channels: Vec<Arc<str>>,
    /// Channels to resume from a position (`?resume=`, base64url of a `resume` message's
    /// `streams`); subscribed like `channels`, with what was missed replayed first.
    pub(crate) resume: Vec<(Arc<str>, Position)>,
    /// A session token from an earlier connection (`?session=`): its channels come back.
    pub(crate) session: Option<String>,
}

/// Why an identity was refused: the reason goes into the 400 response body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IdentityError(pub String);

pub(crate) trait Identify: Send + Sync + std::fmt::Debug {
    /// Decides who an upgrade request is, from its query string.
    fn identify(&self, query: Option<&str>) -> Result<Identity, IdentityError>;
}

/// Trusts the query string: for backends that authenticate before the gateway, and tests.
#[derive(Debug)]
pub(crate) struct OpenMode {
    pub(crate) max_channels: usize,
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

impl Identify for OpenMode {
    fn identify(&self, query: Option<&str>) -> Result<Identity, IdentityError> {
        let mut id = Identity::default();
        let bad = |what: &str| {
            IdentityError(format!(
                "invalid {what}: names are 1-128 bytes of A-Z a-z 0-9 _ - . : @ /"
            ))
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v).ok_or_else(|| bad(k))?;
            match k {
                "user" => {
                    if !valid_name(&v) {
                        return Err(bad("user"));
                    }
                    id.user = Some(v.into());
                }
                "device" => {
                    if !valid_name(&v) {
                        return Err(bad("device"));
                    }
                    id.device = Some(v.into());
                }
                "channels" => {
                    for c in v.split(',').filter(|c| !c.is_empty()) {
                        if !valid_name(c) {
                            return Err(bad("channels"));
                        }
                        if !id.channels.iter().any(|x| &**x == c) {
                            id.channels.push(c.into());
                        }
                    }
                }
                "session" => id.session = Some(v.to_string()),
                "resume" => {
                    use base64::Engine as _;
                    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                    let json = b64
                        .decode(v.trim_end_matches('='))
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok())
                        .ok_or_else(|| {
                            IdentityError("invalid resume: not base64url JSON".into())
                        })?;
                    let streams = parse_resume_streams(&json)
                        .map_err(|e| IdentityError(format!("invalid resume: {}", e.reason())))?;
                    id.resume = streams.into_iter().map(|(c, p)| (Arc::from(c), p)).collect();
                }
                _ => {} // other parameters belong to the application
            }
        }
        let resumed_only = id.resume.iter().filter(|(c, _)| !id.channels.contains(c)).count();
        if id.channels.len() + resumed_only > self.max_channels {
            return Err(IdentityError(format!("too many channels: at most {}", self.max_channels)));
        }
        if id.device.is_some() && id.user.is_none() {
            return Err(IdentityError("device given without user".into()));
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_mode_reads_the_query() {
        let m = OpenMode { max_channels: 2 };
        let id = m.identify(Some("user=u%4042&device=phone&channels=a,b,a&x=1")).unwrap();
        assert_eq!(id.user.as_deref(), Some("u@42"));
        assert_eq!(id.device.as_deref(), Some("phone"));
        assert_eq!(id.channels.len(), 2);
        assert_eq!(m.identify(None).unwrap(), Identity::default());
        assert!(m.identify(Some("user=a%20b")).unwrap_err().0.contains("user"));
        assert!(m.identify(Some("channels=a,b,c")).unwrap_err().0.contains("at most 2"));
        assert!(m.identify(Some("device=x")).is_err());
        assert!(m.identify(Some("user=%zz")).is_err());
        // {"channel:a":{"epoch":1,"seq":2}} in base64url.
        let id = m.identify(Some("resume=eyJjaGFubmVsOmEiOnsiZXBvY2giOjEsInNlcSI6Mn19")).unwrap();
        assert_eq!(id.resume, [(Arc::from("a"), Position { epoch: 1, seq: 2 })]);
        assert!(m.identify(Some("resume=!!")).unwrap_err().0.contains("base64url"));
        assert!(m
            .identify(Some("channels=a,b&resume=eyJjaGFubmVsOmMiOnsiZXBvY2giOjEsInNlcSI6Mn19"))
            .is_err());
    }
}
