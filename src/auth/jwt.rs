//! JWT identity (`--auth jwt`): a token signed by a key of the ring, checked at `now` (an
//! input, never the clock), whose claims say who the connection is and what it may follow.
//!
//! The token's own header picks the key (`kid`) but never the algorithm: each key is bound to
//! one, so `alg: none` and algorithm confusion (an HS256 token "signed" with an RSA public key)
//! are refused before any signature is checked. jsonwebtoken verifies the signature only;
//! `exp`, `nbf`, `aud` and `iss` are checked here against the time the shard gives.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::keys::KeyRing;
use super::{query, AuthError, Authenticator, Grant, Identity, Refreshed, UpgradeRequest};
use crate::proto::client::{valid_name, MAX_NAME};

/// The longest token accepted (the request head cap bounds it anyway).
pub(crate) const MAX_TOKEN: usize = 8 * 1024;
/// The most `sub_allow` patterns one token may carry.
pub(crate) const MAX_PATTERNS: usize = 64;

/// What `--auth jwt` is configured with.
#[derive(Clone, Debug)]
pub(crate) struct JwtSettings {
    pub(crate) keys_path: PathBuf,
    /// Accepted `aud` values; empty: `aud` is not checked.
    pub(crate) audience: Vec<String>,
    /// Accepted `iss` values; empty: `iss` is not checked.
    pub(crate) issuer: Vec<String>,
    pub(crate) leeway_ms: u64,
    pub(crate) max_channels: usize,
    pub(crate) max_info_bytes: usize,
}

/// `--auth jwt`.
#[derive(Debug)]
pub(crate) struct JwtAuth {
    settings: JwtSettings,
    /// Swapped whole by [`Authenticator::reload`]; a handshake takes a read lock only to
    /// clone the `Arc`.
    ring: RwLock<Arc<KeyRing>>,
}

/// `aud`: one string or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    dev: Option<String>,
    exp: Option<f64>,
    nbf: Option<f64>,
    aud: Option<OneOrMany>,
    iss: Option<String>,
    #[serde(default)]
    ch: Vec<String>,
    #[serde(default)]
    sub_allow: Vec<String>,
    #[serde(default)]
    pub_allow: Vec<String>,
    info: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

/// A verified token's identity.
#[derive(Debug)]
struct Verified {
    user: Arc<str>,
    device: Option<Arc<str>>,
    expires_ms: u64,
    grant: Grant,
    info: Option<Arc<str>>,
}

/// Seconds since the epoch (a JSON number, perhaps fractional) as Unix ms.
fn seconds_ms(s: f64) -> u64 {
    if s <= 0.0 {
        0
    } else {
        (s * 1000.0).min(u64::MAX as f64) as u64
    }
}

/// A `sub_allow` pattern: the name rule, with `*` as well.
fn valid_pattern(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= MAX_NAME
        && p.bytes().all(|b| b == b'*' || b.is_ascii_alphanumeric() || b"_-.:@/".contains(&b))
}

impl JwtAuth {
    /// Loads the key ring; a file that does not load is a start-up error naming it.
    pub(crate) fn new(settings: JwtSettings) -> Result<JwtAuth, String> {
        let ring = load(&settings.keys_path)?;
        Ok(JwtAuth { settings, ring: RwLock::new(Arc::new(ring)) })
    }

    /// From a ring already parsed (tests and the fuzz harness).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn from_jwks(settings: JwtSettings, jwks: &str) -> Result<JwtAuth, String> {
        Ok(JwtAuth { settings, ring: RwLock::new(Arc::new(KeyRing::from_jwks(jwks)?)) })
    }

    pub(crate) fn describe(&self) -> String {
        self.keys().describe()
    }

    fn keys(&self) -> Arc<KeyRing> {
        self.ring.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Verifies `token` at `now_ms`: signature, then the time and audience claims, then the
    /// shape of every claim ringcast reads.
    fn verify(&self, token: &str, now_ms: u64) -> Result<Verified, AuthError> {
        if token.len() > MAX_TOKEN {
            return Err(AuthError::Malformed("longer than 8 KiB"));
        }
        let mut parts = token.split('.');
        let (Some(head), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed("not three dot-separated parts"));
        };
        let head = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(head)
            .map_err(|_| AuthError::Malformed("header is not base64url"))?;
        let header: Header = serde_json::from_slice(&head)
            .map_err(|_| AuthError::Malformed("header is not a JSON object with \"alg\""))?;
        let Ok(alg) = header.alg.parse::<Algorithm>() else {
            return Err(AuthError::Algorithm(format!(
                "token algorithm {:?} is not accepted",
                header.alg.chars().take(16).collect::<String>()
            )));
        };
        let ring = self.keys();
        let key = ring.find(header.kid.as_deref()).ok_or(AuthError::UnknownKey)?;
        if key.alg != alg {
            return Err(AuthError::Algorithm(format!(
                "token algorithm {alg:?} is not the key's ({:?})",
                key.alg
            )));
        }
        let mut v = Validation::new(key.alg);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.key, &v).map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::Base64(_) => AuthError::Malformed("a part is not base64url"),
                ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
                    AuthError::Claim("claims are not a JSON object of the expected types".into())
                }
                _ => AuthError::BadSignature,
            })?;
        let c = data.claims;
        let s = &self.settings;
        let exp = c.exp.ok_or_else(|| AuthError::Claim("exp is required".into()))?;
        let expires_ms = seconds_ms(exp).saturating_add(s.leeway_ms);
        if now_ms >= expires_ms {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = c.nbf {
            if seconds_ms(nbf) > now_ms.saturating_add(s.leeway_ms) {
                return Err(AuthError::NotYetValid);
            }
        }
        if !s.issuer.is_empty() && !c.iss.as_ref().is_some_and(|i| s.issuer.contains(i)) {
            return Err(AuthError::Issuer);
        }
        if !s.audience.is_empty() {
            let ok = match &c.aud {
                Some(OneOrMany::One(a)) => s.audience.contains(a),
                Some(OneOrMany::Many(list)) => list.iter().any(|a| s.audience.contains(a)),
                None => false,
            };
            if !ok {
                return Err(AuthError::Audience);
            }
        }
        let user = match c.sub {
            Some(u) if valid_name(&u) => Arc::<str>::from(u),
            Some(_) => return Err(AuthError::Claim("sub does not follow the name rule".into())),
            None => return Err(AuthError::Claim("sub is required".into())),
        };
        let device = match c.dev {
            Some(d) if valid_name(&d) => Some(Arc::<str>::from(d)),
            Some(_) => return Err(AuthError::Claim("dev does not follow the name rule".into())),
            None => None,
        };
        let mut channels: Vec<Arc<str>> = Vec::with_capacity(c.ch.len());
        for ch in c.ch {
            if !valid_name(&ch) {
                return Err(AuthError::Claim("ch names a channel outside the name rule".into()));
            }
            if !channels.iter().any(|x| **x == *ch) {
                channels.push(ch.into());
            }
        }
        if channels.len() > s.max_channels {
            return Err(AuthError::Claim(format!(
                "ch names more than --max-channels-per-conn ({})",
                s.max_channels
            )));
        }
        for (name, list) in [("sub_allow", &c.sub_allow), ("pub_allow", &c.pub_allow)] {
            if list.len() > MAX_PATTERNS || !list.iter().all(|p| valid_pattern(p)) {
                return Err(AuthError::Claim(format!(
                    "{name} takes up to {MAX_PATTERNS} patterns of name characters and *"
                )));
            }
        }
        let info = match c.info {
            Some(raw) if raw.get().len() > s.max_info_bytes => {
                return Err(AuthError::Claim(format!(
                    "info is larger than --jwt-max-info ({} bytes)",
                    s.max_info_bytes
                )))
            }
            Some(raw) => Some(Arc::<str>::from(raw.get())),
            None => None,
        };
        let sub_allow = c.sub_allow.into_iter().map(String::into_boxed_str).collect();
        let pub_allow = c.pub_allow.into_iter().map(String::into_boxed_str).collect();
        let grant = Grant { channels, sub_allow, pub_allow };
        Ok(Verified { user, device, expires_ms, grant, info })
    }
}

fn load(path: &std::path::Path) -> Result<KeyRing, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --jwt-keys {}: {e}", path.display()))?;
    KeyRing::from_jwks(&text).map_err(|e| format!("--jwt-keys {}: {e}", path.display()))
}

impl Authenticator for JwtAuth {
    fn authenticate(&self, req: &UpgradeRequest<'_>, now_ms: u64) -> Result<Identity, AuthError> {
        let q = query::parse(req.query)?;
        let token = req.bearer.or(q.token.as_deref()).ok_or(AuthError::Missing)?;
        let v = self.verify(token, now_ms)?;
        if q.user.as_ref().is_some_and(|u| *u != v.user) {
            return Err(AuthError::Forbidden("user does not match the token's sub".into()));
        }
        if let (Some(d), Some(td)) = (&q.device, &v.device) {
            if d != td {
                return Err(AuthError::Forbidden("device does not match the token's dev".into()));
            }
        }
        if let Some(c) = q.asked().find(|c| !v.grant.allows(c)) {
            return Err(AuthError::Forbidden(format!("channel not allowed by the token: {c}")));
        }
        let mut channels = v.grant.channels.clone();
        for c in &q.channels {
            if !channels.contains(c) {
                channels.push(c.clone());
            }
        }
        let resumed_only = q.resume.iter().filter(|(c, _)| !channels.contains(c)).count();
        if channels.len() + resumed_only > self.settings.max_channels {
            return Err(AuthError::Forbidden(format!(
                "too many channels: at most {}",
                self.settings.max_channels
            )));
        }
        Ok(Identity {
            user: Some(v.user),
            device: v.device.or(q.device),
            channels,
            resume: q.resume,
            session: q.session,
            grant: Some(Arc::new(v.grant)),
            expires_ms: Some(v.expires_ms),
            info: v.info,
            backend_renews: false,
        })
    }

    fn refresh(&self, token: &str, now_ms: u64) -> Result<Refreshed, AuthError> {
        let v = self.verify(token, now_ms)?;
        Ok(Refreshed {
            user: v.user,
            device: v.device,
            expires_ms: v.expires_ms,
            grant: Arc::new(v.grant),
        })
    }

    fn reload(&self) -> Result<String, String> {
        let ring = load(&self.settings.keys_path)?;
        let said = ring.describe();
        *self.ring.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ring);
        Ok(said)
    }
}

#[cfg(test)]
mod tests;
