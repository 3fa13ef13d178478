//! The two-way half of a session: `rpc`, `send` and `publish` routed to backends (or, for a
//! publish the token allows, straight to the channel), and what a backend's outcome makes of
//! each call.

use std::sync::Arc;

use crate::proto::client::{self, ClientError, ClientMsg};
use crate::proto::reply::{self, Code, Failure};
use crate::proto::{CloseCode, CloseReason};

use super::super::call::{Call, Event, Outcome};
use super::super::effect::{Effect, Effects, Now};
use super::super::ids::ConnId;
use super::{client_error, refuse, subscribe, Session, SessionParams};

/// An `rpc`, `send` or `publish` from the client.
pub(super) fn on_call(
    slot: &mut Option<Box<Session>>,
    conn: ConnId,
    msg: ClientMsg,
    now: Now,
    p: &SessionParams,
    out: &mut Effects,
) {
    match msg {
        ClientMsg::Rpc { id, method, data } => {
            let call = Call::Rpc { id, method: Arc::from(method), data };
            match p.backends.route(&call) {
                Some(backend) => {
                    out.push_back(Effect::Upstream { backend, event: event_of(slot, conn, call) })
                }
                None => {
                    let Call::Rpc { method, .. } = &call else { return };
                    let f =
                        Failure::new(Code::NoBackend, format!("no backend takes method {method}"));
                    refuse(slot, conn, reply::reply_error(id, &f), now, p, out);
                }
            }
        }
        ClientMsg::Send { data } => {
            let call = Call::Send { data };
            match p.backends.route(&call) {
                Some(backend) => {
                    out.push_back(Effect::Upstream { backend, event: event_of(slot, conn, call) })
                }
                None => {
                    let f = Failure::new(Code::NoBackend, "no backend takes send");
                    refuse(slot, conn, reply::send_refused(&f), now, p, out);
                }
            }
        }
        ClientMsg::Publish { id, channel, data } => {
            let channel: Arc<str> = Arc::from(channel);
            let grant = slot.as_ref().and_then(|s| s.grant.clone());
            if grant.is_some_and(|g| g.may_publish(&channel)) {
                out.push_back(Effect::ClientPublish { conn, id, channel, data });
                return;
            }
            let call = Call::Publish { id, channel: channel.clone(), data };
            match p.backends.route(&call) {
                Some(backend) => {
                    out.push_back(Effect::Upstream { backend, event: event_of(slot, conn, call) })
                }
                None => {
                    let f = Failure::new(
                        Code::Forbidden,
                        format!("the connection's token does not allow publishing into {channel} (pub_allow) and no backend decides it"),
                    );
                    refuse(slot, conn, reply::reply_error(id, &f), now, p, out);
                }
            }
        }
        _ => {}
    }
}

impl Session {
    /// What a backend made of a call of this connection (the connection may have closed
    /// since: then the shard drops what this queues).
    pub(crate) fn on_backend(
        slot: &mut Option<Box<Session>>,
        conn: ConnId,
        call: Call,
        outcome: Outcome,
        now: Now,
        p: &SessionParams,
        out: &mut Effects,
    ) {
        if let Outcome::Disconnect { code, reason } = outcome {
            let reason = CloseReason::Kicked { code: CloseCode(code), reason: Arc::from(reason) };
            out.push_back(Effect::Close { conn, reason });
            return;
        }
        let body = match (call, outcome) {
            (Call::Rpc { id, .. }, Outcome::Data(d)) => {
                let data = d.unwrap_or_else(|| "null".to_string());
                match serde_json::from_str::<&serde_json::value::RawValue>(&data) {
                    Ok(raw) => reply::reply_data(id, raw),
                    Err(_) => return, // parse_results handed over valid JSON
                }
            }
            (Call::Rpc { id, .. }, Outcome::Refused(f) | Outcome::Error(f)) => {
                reply::reply_error(id, &f)
            }
            (Call::Send { .. }, Outcome::Data(_)) => return,
            (Call::Send { .. }, Outcome::Refused(f) | Outcome::Error(f)) => reply::send_refused(&f),
            (Call::Publish { id, channel, data }, Outcome::Data(d)) => {
                // The backend may replace what is published.
                let data = d.unwrap_or(data);
                out.push_back(Effect::ClientPublish { conn, id, channel, data });
                return;
            }
            (Call::Publish { id, .. }, Outcome::Refused(f)) => {
                let refused = Failure { code: "\"forbidden\"".into(), ..f };
                reply::reply_error(id, &refused)
            }
            (Call::Publish { id, .. }, Outcome::Error(f)) => reply::reply_error(id, &f),
            (Call::Subscribe { channel, since }, Outcome::Data(_)) => {
                let already = slot.as_ref().is_some_and(|s| s.channels.contains(&channel));
                if already {
                    out.push_back(Effect::Subscribe { conn, channel, since: None, count: false });
                } else if !subscribe(slot, conn, channel, since, p, out) {
                    client_error(slot, conn, ClientError::TooManyChannels, now, p, out);
                }
                return;
            }
            (Call::Subscribe { channel, .. }, Outcome::Refused(f)) => client::error_with(
                ClientError::Forbidden,
                &format!("the backend refused channel {channel}: {}", f.message),
            ),
            (Call::Subscribe { .. }, Outcome::Error(f)) => reply::send_refused(&f),
            (Call::Refresh { .. }, outcome) => {
                if let Some(s) = slot.as_mut() {
                    s.on_refresh(conn, outcome, now, p, out);
                }
                return;
            }
            // A connect is answered by the shard (the upgrade), never through a session.
            (Call::Connect { .. }, _) | (_, Outcome::Disconnect { .. }) => return,
        };
        out.push_back(Effect::Reply { conn, body });
    }

    /// Refuses a client message with `body` (an `error` or error `reply`), counted against
    /// the connection's error budget like any bad message (a rate limit's refusal).
    pub(crate) fn refuse_with(
        slot: &mut Option<Box<Session>>,
        conn: ConnId,
        body: Vec<u8>,
        now: Now,
        p: &SessionParams,
        out: &mut Effects,
    ) {
        refuse(slot, conn, body, now, p, out);
    }
}

/// The answer to a call refused with `f` before any backend saw it: an error `reply` to an
/// `rpc` or `publish` (its `id`), an `error` to a `send` or `subscribe`.
pub(crate) fn failure_reply(call: &Call, f: &Failure) -> Vec<u8> {
    match call {
        Call::Rpc { id, .. } | Call::Publish { id, .. } => reply::reply_error(*id, f),
        Call::Send { .. }
        | Call::Subscribe { .. }
        | Call::Connect { .. }
        | Call::Refresh { .. } => reply::send_refused(f),
    }
}

/// The event of a call by this connection.
/// When to ask for a renewal of an identity that expires at `expires_ms`: `refresh_lead_ms`
/// before it, but never sooner than halfway there (an answer that renews for less than the
/// lead is not asked again at once). 0: no refresh backend.
pub(super) fn refresh_time(expires_ms: u64, now_ms: u64, p: &SessionParams) -> u64 {
    let renewable = p.refresh_lead_ms > 0
        && p.backends.route(&Call::Refresh { expires_ms }).is_some()
        && expires_ms > now_ms;
    if !renewable {
        return 0;
    }
    let halfway = now_ms + (expires_ms - now_ms) / 2;
    expires_ms.saturating_sub(p.refresh_lead_ms).max(halfway).max(1)
}

/// What a refresh backend may answer in `data`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Renewal {
    /// Unix seconds.
    expire_at: f64,
}

impl Session {
    /// The refresh is due: asks the backend, once (the answer sets the next time).
    pub(crate) fn refresh_due(
        slot: &mut Option<Box<Session>>,
        conn: ConnId,
        now: Now,
        p: &SessionParams,
        out: &mut Effects,
    ) {
        let Some(s) = slot.as_mut() else { return };
        if s.refresh_at_ms == 0 || now.ms < s.refresh_at_ms {
            return;
        }
        s.refresh_at_ms = 0;
        let call = Call::Refresh { expires_ms: s.expires_ms };
        if let Some(backend) = p.backends.route(&call) {
            out.push_back(Effect::Upstream { backend, event: event_of(slot, conn, call) });
        }
    }

    /// The refresh backend's answer: a later `expire_at` extends the connection (and the
    /// client is told, `refreshed`); a refusal or an answer that extends nothing leaves the
    /// expiry as it was (the connection closes with 4003 then); a failure (timeout, breaker,
    /// a temporary error) is asked again after its retry hint while there is time.
    fn on_refresh(
        &mut self,
        conn: ConnId,
        outcome: Outcome,
        now: Now,
        p: &SessionParams,
        out: &mut Effects,
    ) {
        match outcome {
            Outcome::Data(d) => {
                let renewed = d
                    .as_deref()
                    .and_then(|d| serde_json::from_str::<Renewal>(d).ok())
                    .filter(|r| r.expire_at.is_finite() && r.expire_at > 0.0)
                    .map(|r| (r.expire_at * 1000.0).min(u64::MAX as f64) as u64)
                    .filter(|&ms| ms > self.expires_ms && ms > now.ms);
                match renewed {
                    Some(ms) => {
                        self.expires_ms = ms;
                        self.refresh_at_ms = refresh_time(ms, now.ms, p);
                        out.push_back(Effect::Refreshed);
                        out.push_back(Effect::Reply { conn, body: client::refreshed(ms) });
                    }
                    None => self.decline(out),
                }
            }
            Outcome::Refused(_) => self.decline(out),
            Outcome::Error(f) => {
                let retry = now.ms + f.retry_ms.unwrap_or(1000).max(100);
                self.refresh_at_ms = if retry < self.expires_ms { retry } else { 0 };
            }
            Outcome::Disconnect { .. } => {}
        }
    }

    /// The backend will not renew: asked no more, closed with 4003 when the expiry passes.
    fn decline(&mut self, out: &mut Effects) {
        self.refresh_at_ms = 0;
        out.push_back(Effect::RefreshDeclined);
    }
}

pub(super) fn event_of(slot: &Option<Box<Session>>, conn: ConnId, call: Call) -> Event {
    let (user, device) = slot.as_ref().map_or((None, None), |s| (s.user.clone(), s.device.clone()));
    Event { conn, user, device, call }
}

/// Whether a subscribe backend decides `channel`.
pub(super) fn backend_decides(p: &SessionParams, channel: &Arc<str>) -> bool {
    p.backends.route(&Call::Subscribe { channel: channel.clone(), since: None }).is_some()
}

/// The `error` for a channel named where a backend cannot be asked (at connect, in `resume`).
pub(super) fn backend_only(channel: &str) -> Vec<u8> {
    client::error_with(
        ClientError::Forbidden,
        &format!("a backend decides channel {channel}: subscribe to it with a subscribe message (since resumes it)"),
    )
}
