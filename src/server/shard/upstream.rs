//! Calls to backends, on the shard's side: a session's `Effect::Upstream` is counted against
//! its connection's rates and handed to `upstream::Upstreams`; outcomes that came back go to
//! the session; requests that can start are left for the runtime to send (`runtime`), and a
//! client's own publish goes to its channel's home.

use std::sync::Arc;

use serde_json::value::RawValue;

use crate::auth::{proxy_identity, AuthError};
use crate::clock;
use crate::proto::handshake::{HandshakeError, Upgrade};
use crate::proto::reply::{self, Code, Failure};
use crate::push::call::{Call, Event, Outcome};
use crate::push::ids::{home_of, ConnId};
use crate::push::msg::{Payload, ShardMsg};
use crate::push::report::Report;
use crate::push::session::{failure_reply, Session};
use crate::upstream::{CallResult, Done, Request};

use super::super::conn::{flag, Phase, Route};
use super::Core;

impl Core {
    /// A call for `backend`: over the connection's rate it is refused (and counted against
    /// its error budget); refused by the backend's state it is answered at once.
    pub(super) fn call_backend(&mut self, backend: usize, event: Event) {
        let now = self.at();
        let conn = event.conn;
        let Some(key) = self.local(conn) else { return };
        if !matches!(event.call, Call::Subscribe { .. }) {
            if let Err(retry_ms) = self.upstream.admit(conn, event.call.data_len(), now.ms) {
                self.counters.client_rate_limited.inc();
                let f =
                    Failure::new(Code::RateLimited, "over the connection's message or byte rate")
                        .retry_after(retry_ms);
                let body = failure_reply(&event.call, &f);
                let (slot, p) = (&mut self.conns[key].session, &self.p.session);
                Session::refuse_with(slot, conn, body, now, p, &mut self.effects);
                return;
            }
        }
        let call = event.call.clone();
        if let Err(f) = self.upstream.submit(backend, event, now.ms) {
            if f.code_str() == Code::TooManyRequests.as_str() {
                self.counters.client_queue_full.inc();
            }
            let body = failure_reply(&call, &f);
            self.effects.push_back(crate::push::effect::Effect::Reply { conn, body });
        }
    }

    /// Outcomes of finished calls into the sessions, then the requests that can start now.
    pub(super) fn drive_upstream(&mut self) {
        if self.upstream.is_empty() {
            return;
        }
        let now = self.at();
        let mut done = std::mem::take(&mut self.upstream_done);
        let mut changes = Vec::new();
        for (backend, id, result) in std::mem::take(&mut self.upstream_results) {
            self.upstream.complete(backend, id, result, now.ms, &mut done, &mut changes);
        }
        self.upstream.poll(now.ms, &mut self.upstream_out, &mut done, &mut changes);
        for c in changes {
            let t = c.change;
            if t.to == crate::upstream::breaker::State::Open {
                tracing::warn!(
                    backend = &*c.backend,
                    shard = self.id,
                    "backend breaker {} -> open for {} ms: calls are refused at once",
                    t.from.as_str(),
                    t.open_ms
                );
            } else {
                tracing::info!(
                    backend = &*c.backend,
                    shard = self.id,
                    "backend breaker {} -> {}",
                    t.from.as_str(),
                    t.to.as_str()
                );
            }
        }
        for Done { event, outcome } in done.drain(..) {
            if let Outcome::Error(f) | Outcome::Refused(f) = &outcome {
                tracing::debug!(conn = %event.conn, code = f.code_str(), "backend call failed: {}", f.message);
            }
            self.upstream_answered(event, outcome, now);
        }
        self.upstream_done = done;
        self.apply_effects();
    }

    fn upstream_answered(&mut self, event: Event, outcome: Outcome, now: crate::push::effect::Now) {
        if matches!(event.call, Call::Connect { .. }) {
            self.connect_answered(event.conn, outcome);
            return;
        }
        let Some(key) = self.local(event.conn) else { return };
        let renewal = matches!(event.call, Call::Refresh { .. });
        let (slot, p) = (&mut self.conns[key].session, &self.p.session);
        Session::on_backend(slot, event.conn, event.call, outcome, now, p, &mut self.effects);
        if renewal && self.conns[key].phase == Phase::Open {
            // The expiry or the next ask moved: the connection's one timer follows.
            let deadline = self.open_deadline(key);
            self.arm(key, deadline);
        }
    }

    /// The connect backend for upgrades without a token, if one is configured.
    pub(super) fn connect_backend(&self) -> Option<usize> {
        let probe = Call::Connect { headers: Vec::new(), query: None };
        self.p.session.backends.route(&probe)
    }

    /// Holds the upgrade while the connect backend decides who the connection is.
    pub(super) fn ask_connect(&mut self, key: usize, up: &Upgrade) {
        let Some(backend) = self.connect_backend() else { return };
        let conn = self.conn_id(key);
        let call = Call::Connect { headers: up.headers.clone(), query: up.query.clone() };
        let event = Event { conn, user: None, device: None, call };
        match self.upstream.submit(backend, event, self.now_ms) {
            Ok(()) => {
                self.conns[key].set(flag::AUTHORIZING);
                self.authorizing.insert(key, Box::new(up.clone()));
            }
            Err(f) => {
                let wait = f.retry_ms.unwrap_or(1000);
                self.refuse_retry(key, HandshakeError::BackendUnavailable, &f.message, Some(wait));
            }
        }
    }

    /// The connect backend answered: the upgrade completes with the identity it gave, or is
    /// refused with its status (401, 403), or with 503 and `Retry-After` when it could not
    /// decide (a timeout, an open breaker, a temporary error).
    fn connect_answered(&mut self, conn: ConnId, outcome: Outcome) {
        let Some(key) = self.slot_of(conn) else { return };
        if !self.conns[key].has(flag::AUTHORIZING) {
            return;
        }
        self.conns[key].clear(flag::AUTHORIZING);
        let Some(up) = self.authorizing.remove(&key) else { return };
        match outcome {
            Outcome::Data(d) => {
                let max_info = self.p.max_connect_info;
                let max_channels = self.p.session.max_channels;
                match proxy_identity(
                    d.as_deref(),
                    up.query.as_deref(),
                    max_channels,
                    max_info,
                    self.now_ms,
                ) {
                    Ok(id) => {
                        let route = self.p.routes.get(up.route).copied().unwrap_or(Route::Ws);
                        if self.accept_upgrade(key, &up, route, Some(id)) {
                            // Frames the client sent before the 101 came.
                            let mut kept = self.conns[key]
                                .bufs
                                .as_mut()
                                .map(|b| std::mem::take(&mut b.pending))
                                .unwrap_or_default();
                            if !kept.is_empty() {
                                self.decode_kept(key, &mut kept);
                            }
                        }
                    }
                    Err(e) => {
                        self.counters.auth_refused[e.index()].inc();
                        tracing::debug!(shard = self.id, reason = %e.reason(), "connect backend answer refused");
                        // A bad answer is the backend's fault: refused, never guessed at. A
                        // bad `resume=` or `session=` is the client's, said as for a token.
                        let h = match e {
                            AuthError::Claim(_) => HandshakeError::Forbidden,
                            _ => e.handshake(),
                        };
                        self.refuse_with(key, h, &e.reason());
                    }
                }
            }
            Outcome::Refused(f) => {
                let e = match f.code.as_str() {
                    "401" | "\"401\"" => HandshakeError::Unauthorized,
                    "403" | "\"403\"" => HandshakeError::Forbidden,
                    _ if f.temporary => HandshakeError::BackendUnavailable,
                    _ => HandshakeError::Forbidden,
                };
                if e == HandshakeError::BackendUnavailable {
                    self.refuse_retry(key, e, &f.message, Some(1000));
                } else {
                    self.refuse_with(key, e, &f.message);
                }
            }
            Outcome::Error(f) => {
                let wait = f.retry_ms.unwrap_or(1000);
                self.refuse_retry(key, HandshakeError::BackendUnavailable, &f.message, Some(wait));
            }
            Outcome::Disconnect { reason, .. } => {
                self.refuse_with(key, HandshakeError::Forbidden, &reason);
            }
        }
        self.apply_effects();
    }

    /// A client's own publish: to the channel's home, which numbers and fans it out and
    /// answers with its seq (`Published`).
    pub(super) fn client_publish(
        &mut self,
        conn: ConnId,
        id: u32,
        channel: Arc<str>,
        data: String,
    ) {
        let raw = match RawValue::from_string(data) {
            Ok(r) => Arc::<RawValue>::from(r),
            Err(_) => return, // the client protocol and the backend results hand over valid JSON
        };
        self.counters.client_publishes.inc();
        let (_report, part, _done) = Report::new(clock::now());
        let shard = home_of(&channel, self.mesh.shards());
        let msg = ShardMsg::ClientPublish {
            channel,
            payload: Payload::Json(raw),
            from: conn,
            id,
            report: part,
        };
        if self.mesh.deliver(shard, msg).is_err() {
            self.counters.inbox_full.inc();
            let f = Failure::new(
                Code::UpstreamUnavailable,
                "the channel's shard is overloaded; retry later",
            )
            .retry_after(100);
            self.effects.push_back(crate::push::effect::Effect::Reply {
                conn,
                body: reply::reply_error(id, &f),
            });
        }
    }

    /// The home numbered a client's publish: answer its `id`.
    pub(super) fn published(&mut self, conn: ConnId, id: u32, channel: &str, seq: Option<u64>) {
        let data = reply::published(channel, seq);
        let Ok(raw) = serde_json::from_slice::<&RawValue>(&data) else { return };
        let body = reply::reply_data(id, raw);
        self.effects.push_back(crate::push::effect::Effect::Reply { conn, body });
    }

    /// The connection is gone: what it sent still goes, nothing more is answered to it.
    pub(super) fn upstream_forget(&mut self, conn: ConnId) {
        if !self.upstream.is_empty() {
            self.upstream.forget(conn);
        }
    }

    /// Requests to send now, for the runtime.
    pub(crate) fn take_upstream_requests(&mut self) -> Vec<Request> {
        std::mem::take(&mut self.upstream_out)
    }

    /// Requests that ended, from the runtime; applied in the next turn.
    pub(crate) fn upstream_ended(&mut self, backend: usize, id: u64, result: CallResult) {
        self.upstream_results.push((backend, id, result));
    }
}
