//! Who a connection is, decided once at the upgrade, and what its token lets it do after.
//!
//! One [`Authenticator`] per server, shared by the shards: [`OpenMode`] trusts the query string
//! (development and loopback), [`JwtAuth`] verifies a signed token against a key ring that
//! SIGHUP reloads. Both are pure: the request and the time come in, an [`Identity`] or an
//! [`AuthError`] goes out; the shard writes the answer. The one mapping from a refusal to an
//! HTTP status is [`AuthError::handshake`].

mod jwt;
mod keys;
mod open;
mod proxy;
mod query;

use std::sync::Arc;

pub(crate) use jwt::{JwtAuth, JwtSettings};
pub(crate) use open::OpenMode;
pub(crate) use proxy::{identity as proxy_identity, ProxyMode};

use crate::proto::client::{glob, Position};
use crate::proto::handshake::HandshakeError;

/// What an upgrade request offers to identify itself.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct UpgradeRequest<'a> {
    /// The query string, without the `?`.
    pub(crate) query: Option<&'a str>,
    /// A token from `Authorization: Bearer` or a `ringcast.token.` subprotocol entry.
    pub(crate) bearer: Option<&'a str>,
}

/// What a verified token allows beyond what it names: the channels it subscribes at connect
/// (`ch`) and the patterns the client may subscribe to itself (`sub_allow`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) channels: Vec<Arc<str>>,
    pub(crate) sub_allow: Vec<Box<str>>,
    /// Channels the client may publish into itself (`pub_allow` patterns).
    pub(crate) pub_allow: Vec<Box<str>>,
}

impl Grant {
    /// Whether the connection may follow `channel`.
    pub(crate) fn allows(&self, channel: &str) -> bool {
        self.channels.iter().any(|c| &**c == channel)
            || self.sub_allow.iter().any(|p| glob(p, channel))
    }

    /// Whether the client may publish into `channel` without asking a backend.
    pub(crate) fn may_publish(&self, channel: &str) -> bool {
        self.pub_allow.iter().any(|p| glob(p, channel))
    }
}

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
    /// What the token allows; `None` (open mode): any channel.
    pub(crate) grant: Option<Arc<Grant>>,
    /// When the token stops being valid (Unix ms, leeway included): the connection is closed
    /// with 4003 then unless a `refresh` extends it.
    pub(crate) expires_ms: Option<u64>,
    /// The token's `info` claim (JSON text), shown in presence queries.
    pub(crate) info: Option<Arc<str>>,
    /// The expiry is a connect backend's: a `refresh` backend renews it (no client token).
    pub(crate) backend_renews: bool,
}

/// A `refresh` accepted: the token's user and device, its new expiry and grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refreshed {
    pub(crate) user: Arc<str>,
    pub(crate) device: Option<Arc<str>>,
    pub(crate) expires_ms: u64,
    pub(crate) grant: Arc<Grant>,
}

/// Why a request or a token was refused. The reason text never repeats the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AuthError {
    /// Open mode: a bad `user`, `device`, `channels`, `resume` or too many channels (400).
    BadQuery(String),
    /// No token in the header, the subprotocol list or `?token=`.
    Missing,
    /// Not three base64url parts, or a header or claims that are not JSON.
    Malformed(&'static str),
    /// An `alg` ringcast does not accept (`none` among them), or not the key's own.
    Algorithm(String),
    /// No key with the token's `kid` (or no `kid` where several keys are loaded).
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    Audience,
    Issuer,
    /// A claim missing or not what it must be (`sub`, `exp`, `ch`, `sub_allow`, `info`).
    Claim(String),
    /// A valid token that does not allow what the request asks for (403).
    Forbidden(String),
    /// Refresh in open mode: there is no token to refresh.
    NoTokens,
}

impl AuthError {
    /// Every failure label, in a fixed order (the metrics index by it).
    pub(crate) const LABELS: [&'static str; 13] = [
        "bad_query",
        "missing",
        "malformed",
        "algorithm",
        "unknown_key",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "audience",
        "issuer",
        "claim",
        "forbidden",
        "no_tokens",
    ];

    pub(crate) fn label(&self) -> &'static str {
        Self::LABELS[self.index()]
    }

    pub(crate) fn index(&self) -> usize {
        match self {
            AuthError::BadQuery(_) => 0,
            AuthError::Missing => 1,
            AuthError::Malformed(_) => 2,
            AuthError::Algorithm(_) => 3,
            AuthError::UnknownKey => 4,
            AuthError::BadSignature => 5,
            AuthError::Expired => 6,
            AuthError::NotYetValid => 7,
            AuthError::Audience => 8,
            AuthError::Issuer => 9,
            AuthError::Claim(_) => 10,
            AuthError::Forbidden(_) => 11,
            AuthError::NoTokens => 12,
        }
    }

    /// The one mapping to an HTTP refusal: 400 for a bad query in open mode, 403 for a
    /// valid token asking too much, 401 for everything wrong with the token itself.
    pub(crate) fn handshake(&self) -> HandshakeError {
        match self {
            AuthError::BadQuery(_) => HandshakeError::BadIdentity,
            AuthError::Forbidden(_) => HandshakeError::Forbidden,
            _ => HandshakeError::Unauthorized,
        }
    }

    /// The refusal's body, or an `error`'s reason after the upgrade.
    pub(crate) fn reason(&self) -> String {
        match self {
            AuthError::BadQuery(r) | AuthError::Forbidden(r) => r.clone(),
            AuthError::Missing => {
                "token missing: send Authorization: Bearer, a ringcast.token. subprotocol entry, or ?token=".into()
            }
            AuthError::Malformed(what) => format!("malformed token: {what}"),
            AuthError::Algorithm(r) => r.clone(),
            AuthError::UnknownKey => "token signed by an unknown key (kid)".into(),
            AuthError::BadSignature => "token signature invalid".into(),
            AuthError::Expired => "token expired".into(),
            AuthError::NotYetValid => "token not yet valid (nbf)".into(),
            AuthError::Audience => "token audience (aud) not accepted".into(),
            AuthError::Issuer => "token issuer (iss) not accepted".into(),
            AuthError::Claim(r) => format!("token claim invalid: {r}"),
            AuthError::NoTokens => {
                "this server does not use tokens (--auth open or proxy)".into()
            }
        }
    }
}

/// Decides who an upgrade request is, and checks a token a connection offers later.
pub(crate) trait Authenticator: Send + Sync + std::fmt::Debug {
    /// The identity of an upgrade request at `now_ms` (Unix ms).
    fn authenticate(&self, req: &UpgradeRequest<'_>, now_ms: u64) -> Result<Identity, AuthError>;

    /// A token sent in a `refresh`, checked as at the upgrade.
    fn refresh(&self, token: &str, now_ms: u64) -> Result<Refreshed, AuthError>;

    /// Reads its keys again (SIGHUP). `Ok` says what is loaded now; `Err` why the new ones
    /// were refused (the old ones stay).
    fn reload(&self) -> Result<String, String> {
        Ok("nothing to reload".into())
    }
}

#[cfg(any(test, feature = "testing"))]
pub mod testing;
