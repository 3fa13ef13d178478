//! Time: arming each connection's one timer, and what a fired timer means in each phase (for
//! an open connection, the pure liveness decision of `conn::liveness`).

use crate::proto::handshake::HandshakeError;
use crate::proto::OpCode;
use crate::push::session::Session;

use super::super::conn::{flag, LiveState, Phase, Verdict};
use super::Core;

impl Core {
    pub(super) fn arm(&mut self, key: usize, deadline: Option<u64>) {
        let conn = &mut self.conns[key];
        if let Some(t) = conn.timer.take() {
            self.wheel.cancel(t);
        }
        if let Some(d) = deadline {
            conn.timer = Some(self.wheel.insert(d, key as u32));
        }
    }

    fn live_state(&self, key: usize) -> LiveState {
        let conn = &self.conns[key];
        // A token's expiry in Unix ms, as the tick it falls in (rounded up: never early).
        let tick_of = |ms: u64| {
            let left = u128::from(ms.saturating_sub(self.now_ms)) * 1_000_000;
            self.now + left.div_ceil(self.p.tick_nanos).min(u128::from(u32::MAX)) as u64
        };
        let expires = Session::expires_ms(&conn.session).map(tick_of);
        let refresh = Session::refresh_ms(&conn.session).map(tick_of);
        LiveState {
            ping_out: conn.has(flag::PING_OUT),
            slow: conn.has(flag::SLOW),
            expires,
            refresh,
        }
    }

    /// The next instant an open connection needs looking at.
    pub(super) fn open_deadline(&self, key: usize) -> Option<u64> {
        self.conns[key].live.next_deadline(self.now, self.live_state(key), &self.p.live)
    }

    /// Forgets streams idle past `--stream-idle-ttl`, once a minute.
    pub(super) fn sweep_streams(&mut self) {
        if self.now >= self.next_stream_sweep {
            self.next_stream_sweep = self.now + self.p.minute_ticks.max(1);
            self.home.sweep(self.now_ms);
            self.counters.history_bytes.set(self.home.history_bytes() as u64);
        }
    }

    /// Durable user-stream messages homed here whose ack is overdue go again.
    pub(super) fn redeliver(&mut self) {
        let now_ms = self.now_ms;
        self.home.tick(now_ms, &mut self.effects);
        if !self.effects.is_empty() {
            self.apply_effects();
        }
        let (held, m) = self.home.mail_stats();
        let c = &self.counters;
        c.mailbox_bytes.set(held as u64);
        c.ack_waits.set(self.home.ack_waits() as u64);
        c.mailbox_evicted.set(m.evicted);
        c.mailbox_expired.set(m.expired);
        c.redelivered.set(m.redelivered);
        c.redelivery_gave_up.set(m.gave_up);
        c.acks.set(m.acks);
    }

    pub(super) fn expire_timers(&mut self) {
        let mut fired = std::mem::take(&mut self.fired);
        self.wheel.expire(self.now, &mut fired);
        for &key in &fired {
            let key = key as usize;
            if let Some(conn) = self.conns.get_mut(key) {
                conn.timer = None;
                self.on_timer(key);
                self.settle();
            }
        }
        fired.clear();
        self.fired = fired;
    }

    fn on_timer(&mut self, key: usize) {
        match self.conns[key].phase {
            Phase::Handshake if self.conns[key].has(flag::AUTHORIZING) => {
                // The connect backend took longer than the upgrade may: answered, not dropped.
                self.conns[key].clear(flag::AUTHORIZING);
                self.authorizing.remove(&key);
                let e = HandshakeError::BackendUnavailable;
                self.refuse_retry(key, e, "the connect backend did not answer in time", Some(1000));
            }
            Phase::Handshake => {
                self.counters.handshake_timeouts.inc();
                self.remove(key);
            }
            Phase::Closing | Phase::Linger => {
                if self.draining && self.now >= self.drain_deadline {
                    self.counters.drain_forced.inc();
                } else {
                    self.counters.close_timeouts.inc();
                }
                self.reset_if_unread(key);
                self.remove(key);
            }
            Phase::Open => {
                let state = self.live_state(key);
                match self.conns[key].live.verdict(self.now, state, &self.p.live) {
                    Verdict::Close(reason) => {
                        self.close_for(key, reason);
                        return;
                    }
                    Verdict::Ping => {
                        let now32 = self.now32();
                        let conn = &mut self.conns[key];
                        conn.set(flag::PING_OUT);
                        conn.live.ping_sent = now32;
                        self.counters.pings_sent.inc();
                        self.queue_control(key, OpCode::Ping, &[]);
                    }
                    Verdict::Refresh => {
                        let (conn, now) = (self.conn_id(key), self.at());
                        let (slot, p) = (&mut self.conns[key].session, &self.p.session);
                        Session::refresh_due(slot, conn, now, p, &mut self.effects);
                        self.apply_effects();
                        if !self.conns.contains(key) {
                            return;
                        }
                    }
                    Verdict::Wait => {}
                }
                let deadline = self.open_deadline(key);
                self.arm(key, deadline);
            }
        }
    }
}
