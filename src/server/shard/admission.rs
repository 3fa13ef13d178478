//! Admission: taking accepted sockets, and deciding an upgrade (identity, drain, the shard,
//! global and per-address caps) before the 101 goes out.

use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use bytes::Bytes;

use crate::auth::{AuthError, Identity, UpgradeRequest};
use crate::proto::close::retry_reason;
use crate::proto::frame::encode_frame;
use crate::proto::handshake::{self, HandshakeError, Upgrade};
use crate::proto::{CloseCode, Decoder, OpCode, Role};
use crate::push::msg::Priority;
use crate::push::session::Session;

use super::super::conn::{flag, Conn, Link, Liveness, Phase, Route, TlsLink};
use super::super::overload::Action;
use super::super::sys::{self, EV_IN, EV_OUT, EV_RDHUP};
use super::{token, Core};

/// The base retry hint of an upgrade refused while admission is stopped: 1 s at the
/// threshold `on`, growing to 5 s at full pressure (jittered up to twice it).
fn stop_admit_wait_ms(pressure: f64, on: f64) -> u64 {
    let over = if on >= 1.0 { 1.0 } else { ((pressure - on) / (1.0 - on)).clamp(0.0, 1.0) };
    1000 + (4000.0 * over).round() as u64
}

/// The base retry hint of an overload refusal (jittered up to twice it): a draining server
/// points clients elsewhere soon; a full one asks them to wait longer.
fn overload_wait_ms(e: HandshakeError) -> u64 {
    if e == HandshakeError::Draining {
        1000
    } else {
        5000
    }
}

impl Core {
    /// Takes a freshly accepted socket; refusing one means dropping `fd`, which closes it.
    pub(super) fn on_accept(&mut self, fd: OwnedFd, ip: IpAddr, tls: bool) {
        self.counters.accepted.inc();
        if self.draining {
            return;
        }
        if self.handshaking >= self.p.max_pending {
            self.counters.pending_overflow.inc();
            return;
        }
        let link = match (tls, &self.shared.tls) {
            (false, _) => None,
            (true, Some(t)) => match TlsLink::new(t.config()) {
                Ok(l) => Some(Link::Tls(Box::new(l))),
                Err(e) => {
                    self.counters.tls_errors.inc();
                    tracing::warn!(shard = self.id, "cannot start a TLS connection: {e}");
                    return;
                }
            },
            (true, None) => return,
        };
        sys::set_nodelay(fd.as_fd());
        if self.p.send_buffer > 0 {
            sys::set_send_buffer(fd.as_fd(), self.p.send_buffer);
        }
        self.gen = self.gen.wrapping_add(1);
        let gen = self.gen;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if key >= (u32::MAX - 2) as usize
            || self.epoll.add(fd.as_raw_fd(), token(key, gen), EV_IN | EV_OUT | EV_RDHUP).is_err()
        {
            self.counters.accept_errors.inc();
            return;
        }
        entry.insert(Conn {
            fd,
            gen,
            phase: Phase::Handshake,
            route: Route::Ws,
            flags: if link.is_some() { flag::TLS } else { 0 },
            timer: None,
            live: Liveness::new(self.now as u32),
            decoder: Decoder::new(Role::Server),
            bufs: None,
            outbox: None,
            session: None,
            ip,
        });
        if let Some(l) = link {
            self.links.insert(key, l);
        }
        self.handshaking += 1;
        self.counters.handshaking.inc();
        self.arm(key, Some(self.now + self.p.handshake_ticks));
    }

    /// Completes an accepted upgrade unless a limit refuses it; returns whether it is open.
    pub(super) fn upgrade(&mut self, key: usize, up: &Upgrade) -> bool {
        let ip = self.conns[key].ip;
        let route = self.p.routes.get(up.route).copied().unwrap_or(Route::Ws);
        // The rate first: it is the cheap check, and it bounds the work (a signature check)
        // one address can make the shard do.
        if let Some(rate) = &self.shared.rate {
            if let Err(wait_ms) = rate.try_take(ip, self.now_ms) {
                self.refuse_overload(key, up, HandshakeError::RateLimited, wait_ms);
                return false;
            }
        }
        let identity = if route == Route::Ws {
            let req = UpgradeRequest { query: up.query.as_deref(), bearer: up.bearer.as_deref() };
            match self.p.session.auth.authenticate(&req, self.now_ms) {
                Ok(id) => Some(id),
                Err(AuthError::Missing) if self.connect_backend().is_some() => {
                    // No token (or `--auth proxy`): the connect backend decides.
                    self.ask_connect(key, up);
                    return false;
                }
                Err(e) => {
                    self.counters.auth_refused[e.index()].inc();
                    // The reason, never the token (nor the query that may carry it).
                    tracing::debug!(shard = self.id, %ip, reason = e.label(), "upgrade refused");
                    self.refuse_with(key, e.handshake(), &e.reason());
                    return false;
                }
            }
        } else {
            None
        };
        self.accept_upgrade(key, up, route, identity)
    }

    /// The upgrade's limits, then the 101 and the session; returns whether it is open.
    pub(super) fn accept_upgrade(
        &mut self,
        key: usize,
        up: &Upgrade,
        route: Route,
        identity: Option<Identity>,
    ) -> bool {
        let ip = self.conns[key].ip;
        let refusal = if self.draining {
            Some(HandshakeError::Draining)
        } else if (self.p.max_per_shard > 0 && self.open >= self.p.max_per_shard)
            || !self.shared.acquire()
        {
            Some(HandshakeError::ServerFull)
        } else if self.shared.limiter.as_ref().is_some_and(|l| !l.try_acquire(ip)) {
            self.shared.release();
            Some(HandshakeError::AddressLimit)
        } else {
            None
        };
        if let Some(e) = refusal {
            self.refuse_overload(key, up, e, overload_wait_ms(e));
            return false;
        }
        if self.overloaded(Action::StopAdmit) {
            // The hint grows with the pressure: 1 s at the threshold, up to 5 s (jittered to
            // twice that) at full pressure, so refused clients do not come back together.
            let wait = stop_admit_wait_ms(
                self.pressure_of(Action::StopAdmit),
                self.watch.o.thresholds().of(Action::StopAdmit),
            );
            self.shared.release();
            if let Some(l) = &self.shared.limiter {
                l.release(ip);
            }
            self.refuse_overload(key, up, HandshakeError::Overloaded, wait);
            return false;
        }
        let mut resp = Vec::with_capacity(160);
        handshake::write_accept(&mut resp, up, &self.p.policy);
        self.set_phase(key, Phase::Open);
        let now32 = self.now32();
        let conn = &mut self.conns[key];
        conn.route = route;
        conn.set(flag::COUNTED);
        conn.live.last_recv = now32;
        conn.live.last_msg = now32;
        self.open += 1;
        self.counters.open_connections.inc();
        self.counters.upgrades.inc();
        // The high lane, like the welcome after it: nothing may overtake the 101.
        self.queue_lane(key, Bytes::from(resp), Priority::High);
        if let Some(id) = identity {
            let (conn_id, at) = (self.conn_id(key), self.at());
            let session = Session::open(conn_id, id, at, &self.p.session, &mut self.effects);
            if Session::welcome_pending(&session) {
                // Held until every home has told the positions the welcome carries.
                self.conns[key].set(flag::WELCOME_PENDING);
            }
            self.conns[key].session = session;
            self.apply_effects();
        }
        let deadline = self.open_deadline(key);
        self.arm(key, deadline);
        true
    }

    pub(super) fn refuse(&mut self, key: usize, e: HandshakeError) {
        self.refuse_retry(key, e, e.reason(), e.is_overload().then(|| overload_wait_ms(e)));
    }

    pub(super) fn refuse_with(&mut self, key: usize, e: HandshakeError, reason: &str) {
        self.refuse_retry(key, e, reason, None);
    }

    /// A retry hint of `base_ms` to twice that, so refused clients spread out.
    pub(super) fn retry_ms(&mut self, base_ms: u64) -> u64 {
        let base = base_ms.max(1000);
        base + self.jitter.below(base + 1)
    }

    /// An overload refusal: 503 or 429 with a jittered `Retry-After`; with
    /// `--overload-close`, the upgrade is accepted and closed at once with 1013 and
    /// `{"retry_ms":N,"reason":…}` instead (browsers cannot read a refused upgrade's status).
    /// A drain is always answered in HTTP: the listener is closing.
    fn refuse_overload(&mut self, key: usize, up: &Upgrade, e: HandshakeError, base_ms: u64) {
        if !self.p.overload_close || e == HandshakeError::Draining {
            self.refuse_retry(key, e, e.reason(), Some(base_ms));
            return;
        }
        self.counters.refused(e).inc();
        self.counters.overload_closes.inc();
        let retry = self.retry_ms(base_ms);
        let mut resp = Vec::with_capacity(256);
        handshake::write_accept(&mut resp, up, &self.p.policy);
        let mut payload = CloseCode::TRY_AGAIN_LATER.0.to_be_bytes().to_vec();
        payload.extend_from_slice(retry_reason(retry, e.reason()).as_bytes());
        encode_frame(&mut resp, OpCode::Close, true, None, &payload);
        self.queue_bytes(key, Bytes::from(resp));
        self.linger(key);
    }

    /// Answers the upgrade with an HTTP refusal, then lingers so it is read before the close.
    pub(super) fn refuse_retry(
        &mut self,
        key: usize,
        e: HandshakeError,
        reason: &str,
        base_ms: Option<u64>,
    ) {
        self.counters.refused(e).inc();
        // Retry-After is whole seconds: jitter in seconds, base to twice the base.
        let retry_s = base_ms.map(|b| {
            let base = b.div_ceil(1000).max(1);
            base + self.jitter.below(base + 1)
        });
        let mut resp = Vec::with_capacity(192);
        handshake::write_refusal_retry(&mut resp, e, reason, retry_s);
        self.queue_bytes(key, Bytes::from(resp));
        self.linger(key);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_stop_admitting_hint_grows_from_1_s_at_the_threshold_to_5_s_at_full_pressure() {
        assert_eq!(super::stop_admit_wait_ms(0.90, 0.90), 1000);
        assert_eq!(super::stop_admit_wait_ms(0.95, 0.90), 3000);
        assert_eq!(super::stop_admit_wait_ms(1.00, 0.90), 5000);
        assert_eq!(super::stop_admit_wait_ms(3.00, 0.90), 5000, "past the limit");
        assert_eq!(super::stop_admit_wait_ms(0.50, 0.90), 1000, "held on in the band");
        assert_eq!(super::stop_admit_wait_ms(1.50, 1.20), 5000, "a threshold above 1");
    }
}
