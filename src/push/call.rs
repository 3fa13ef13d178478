//! What a client's message asks of a backend, as the session decides it, and the interface the
//! session asks where a call goes (the `upstream` layer implements it from `[[upstreams]]`).

use std::sync::Arc;

use crate::proto::reply::Failure;

use super::ids::ConnId;
use super::streams::Position;

/// What a client's message asks of a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    Rpc {
        id: u32,
        method: Arc<str>,
        data: String,
    },
    Send {
        data: String,
    },
    Publish {
        id: u32,
        channel: Arc<str>,
        data: String,
    },
    Subscribe {
        channel: Arc<str>,
        since: Option<Position>,
    },
    /// Who an upgrading connection is: the upgrade's forwarded headers and query string.
    Connect {
        headers: Vec<(String, String)>,
        query: Option<String>,
    },
    /// Renew a connect backend's identity before it expires (its expiry now, Unix ms).
    Refresh {
        expires_ms: u64,
    },
}

impl Call {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Call::Rpc { .. } => "rpc",
            Call::Send { .. } => "send",
            Call::Publish { .. } => "publish",
            Call::Subscribe { .. } => "subscribe",
            Call::Connect { .. } => "connect",
            Call::Refresh { .. } => "refresh",
        }
    }

    /// Bytes of client data it carries (what the byte rate counts).
    pub(crate) fn data_len(&self) -> usize {
        match self {
            Call::Rpc { data, .. } | Call::Send { data } | Call::Publish { data, .. } => data.len(),
            Call::Subscribe { .. } | Call::Connect { .. } | Call::Refresh { .. } => 0,
        }
    }
}

/// An event for a backend: a call and who made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Event {
    pub(crate) conn: ConnId,
    pub(crate) user: Option<Arc<str>>,
    pub(crate) device: Option<Arc<str>>,
    pub(crate) call: Call,
}

/// What became of an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The backend took it; `data` as it answered (raw JSON), if it answered any.
    Data(Option<String>),
    /// The backend answered it with an `error` (its code, message and `temporary`).
    Refused(Failure),
    /// No answer came: the server's own code (a timeout, an open breaker, a failed request).
    Error(Failure),
    /// The backend asks to close the connection with this code (4000-4999) and reason.
    Disconnect { code: u16, reason: String },
}

/// Which backend takes a call (by its position in `[[upstreams]]`), if any.
pub(crate) trait Backends: std::fmt::Debug + Send + Sync {
    fn route(&self, call: &Call) -> Option<usize>;
}

/// No backends configured.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct NoBackends;

#[cfg(test)]
impl Backends for NoBackends {
    fn route(&self, _: &Call) -> Option<usize> {
        None
    }
}
