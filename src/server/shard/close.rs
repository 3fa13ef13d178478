//! Closing: the one path of every server-initiated close (`close_for`), the close frame as the
//! last frame, lingering, removal, the drain, and phase changes with the gauges they move.

use bytes::Bytes;

use crate::proto::frame::{close_payload, encode_frame};
use crate::proto::handshake::HandshakeError;
use crate::proto::{CloseReason, Closing, OpCode};

use super::super::conn::{flag, Link, Phase};
use super::super::sys;
use super::Core;

impl Core {
    /// Moves a connection to another phase: the one place phases change, keeping the
    /// handshakes-in-progress gauge in step.
    pub(super) fn set_phase(&mut self, key: usize, to: Phase) {
        let conn = &mut self.conns[key];
        if conn.phase.is_handshake() && !to.is_handshake() {
            self.handshaking -= 1;
            self.counters.handshaking.sub(1);
        }
        conn.phase = to;
    }

    /// Closes a connection for `reason`: the one path of every server-initiated close. Counts
    /// it, queues the close frame as the last frame (dropping queued pushes first where the
    /// reason says so), and proceeds as the reason's [`Closing`] says. Returns how many queued
    /// pushes were dropped.
    pub(super) fn close_for(&mut self, key: usize, reason: CloseReason) -> u64 {
        self.counters.count_close(&reason);
        // A close does not wait for a welcome still waiting for its positions.
        self.conns[key].clear(flag::WELCOME_PENDING);
        // After our own close frame (phase Closing) no second one may follow.
        let dropped = if self.conns[key].phase.is_open() {
            let (code, text) = reason.frame();
            self.queue_close(key, &close_payload(code.0, text), reason.discards_queued())
        } else {
            0
        };
        match reason.closing() {
            Closing::Handshake => {
                let d = match reason {
                    CloseReason::ShuttingDown { .. } => self.drain_deadline,
                    _ => (self.now + self.p.close_ticks).min(self.drain_deadline),
                };
                self.leave_indexes(key);
                self.set_phase(key, Phase::Closing);
                self.arm(key, Some(d));
            }
            Closing::Linger => self.linger(key),
            Closing::Drop => {
                self.flush(key);
                self.reset_if_unread(key);
                self.remove(key);
            }
        }
        dropped
    }

    /// What a connection holds of its client's input (a partial head or frame, the message
    /// being assembled, a TLS record not yet whole, ciphertext not yet sent) is counted in
    /// `input_bytes` (part of what the overload manager weighs): called after each read,
    /// each TLS flush, and when a linger drops the input.
    pub(super) fn account_input(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let (was, now) = conn.recount_input();
        conn.trim_bufs();
        let (was_tls, now_tls) = match conn.has(flag::TLS) {
            true => self.links.get_mut(&key).map_or((0, 0), Link::recount),
            false => (0, 0),
        };
        self.counters.input_bytes.add((now + now_tls) as u64);
        self.counters.input_bytes.sub((was + was_tls) as u64);
    }

    /// A connection given up on (its close not answered in time, or its peer gone silent)
    /// whose socket still holds bytes the peer has not read: its close sends RST, so the
    /// kernel frees them now rather than keep them for minutes in an orphan that probes a
    /// peer that does not read. Counted in `ringcast_unread_resets_total`.
    pub(super) fn reset_if_unread(&mut self, key: usize) -> bool {
        // A flush just before may have removed it (a failed write).
        let Some(conn) = self.conns.get(key) else { return false };
        let fd = std::os::fd::AsFd::as_fd(&conn.fd);
        if sys::unacked_bytes(fd) == 0 {
            return false;
        }
        sys::reset_on_close(fd);
        self.counters.unread_resets.inc();
        true
    }

    /// Queues the close frame behind everything queued (RFC 6455 §5.5.1: it is the last
    /// frame). With `discard`, queued pushes are dropped first and counted; returns how many.
    pub(super) fn queue_close(&mut self, key: usize, payload: &[u8], discard: bool) -> u64 {
        let mut v = Vec::with_capacity(payload.len() + 2);
        encode_frame(&mut v, OpCode::Close, true, None, payload);
        let conn = &mut self.conns[key];
        let ob = conn.outbox.get_or_insert_with(Default::default);
        let before = ob.bytes();
        let dropped = ob.close(Bytes::from(v), discard) as u64;
        let after = ob.bytes();
        self.counters.frames_out.inc();
        self.counters.outbox_bytes.add(after as u64);
        self.counters.outbox_bytes.sub(before as u64);
        self.counters.pushes_discarded.add(dropped);
        self.mark_dirty(key);
        dropped
    }

    /// Stops reading: the write side is shut once the outbox drains; the socket closes at EOF
    /// or at the close deadline.
    pub(super) fn linger(&mut self, key: usize) {
        self.leave_indexes(key);
        self.set_phase(key, Phase::Linger);
        let conn = &mut self.conns[key];
        conn.set(flag::SHUT_AFTER_FLUSH);
        if let Some(b) = conn.bufs.as_mut() {
            b.pending = Vec::new();
            b.message = Vec::new();
        }
        self.account_input(key);
        self.mark_dirty(key);
        let deadline = (self.now + self.p.close_ticks).min(self.drain_deadline);
        self.arm(key, Some(deadline));
    }

    /// A closing connection takes no more pushes: its session leaves the channel index and its
    /// user's directory at once, not when the close handshake ends.
    pub(super) fn leave_indexes(&mut self, key: usize) {
        if self.conns.contains(key) {
            // What it sent its backends still goes; nothing more comes back to it.
            let id = self.conn_id(key);
            self.upstream_forget(id);
        }
        let Some(session) = self.conns.get_mut(key).and_then(|c| c.session.take()) else {
            return;
        };
        let id = self.conn_id(key);
        session.close(id, &self.p.session, &mut self.effects);
        self.apply_effects();
    }

    pub(super) fn remove(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        self.authorizing.remove(&key);
        self.leave_indexes(key);
        let Some(conn) = self.conns.try_remove(key) else { return };
        let mut counted = conn.counted_input();
        if conn.has(flag::TLS) {
            if let Some(mut l) = self.links.remove(&key) {
                counted += l.counted();
                l.close_notify(|w| sys::writev(std::os::fd::AsFd::as_fd(&conn.fd), w));
            }
        }
        self.counters.input_bytes.sub(counted as u64);
        if conn.has(flag::GAPPED) {
            self.repairs.forget(key as u32);
            self.counters.gapped_connections.set(self.repairs.open() as u64);
        }
        self.counters.outbox_bytes.sub(conn.outbox_bytes() as u64);
        if let Some(t) = conn.timer {
            self.wheel.cancel(t);
        }
        if conn.phase.is_handshake() {
            self.handshaking -= 1;
            self.counters.handshaking.sub(1);
        }
        if conn.has(flag::COUNTED) {
            self.open -= 1;
            self.counters.open_connections.sub(1);
            self.shared.release();
            if let Some(l) = &self.shared.limiter {
                l.release(conn.ip);
            }
        }
        // Dropping `conn` closes its socket, which also takes it out of the epoll set.
    }

    /// Starts the drain: the listener closes, handshakes in progress get 503, and open
    /// connections get 1001 with a retry hint: all now, or with `--drain-spread` in waves,
    /// one per tick, over that window ([`Core::drain_wave`]). Connections still open
    /// `--drain-timeout` after the last wave are dropped.
    pub(super) fn begin_drain(&mut self) {
        self.draining = true;
        let spread = self.p.drain_spread_ticks;
        self.drain_deadline = self.now + spread + self.p.drain_ticks;
        sys::shutdown_listener(self.listener_fd);
        if self.tls_listener_fd >= 0 {
            sys::shutdown_listener(self.tls_listener_fd);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        tracing::info!(
            shard = self.id,
            spread_ticks = spread,
            connections = keys.len(),
            "draining"
        );
        for key in keys {
            match self.conns[key].phase {
                Phase::Handshake => self.refuse(key, HandshakeError::Draining),
                Phase::Open if spread == 0 => self.close_draining(key),
                Phase::Open => {
                    let c = &self.conns[key];
                    self.drain_queue.push(super::token(key, c.gen));
                }
                Phase::Closing | Phase::Linger => {}
            }
        }
        // Waves in a random order, so no class of client (the oldest, one shard's first
        // slots) is always the first to go.
        for i in (1..self.drain_queue.len()).rev() {
            let j = self.jitter.below(i as u64 + 1) as usize;
            self.drain_queue.swap(i, j);
        }
        self.drain_from = self.now;
        self.drain_total = self.drain_queue.len();
    }

    /// One tick's wave of a spread drain: closes as many connections as bring the share
    /// closed up to the share of the window passed.
    pub(super) fn drain_wave(&mut self) {
        if self.drain_queue.is_empty() {
            return;
        }
        let spread = self.p.drain_spread_ticks.max(1);
        let elapsed = (self.now.saturating_sub(self.drain_from) + 1).min(spread);
        let due = (self.drain_total as u64 * elapsed).div_ceil(spread) as usize;
        let closed = self.drain_total - self.drain_queue.len();
        for _ in closed..due {
            let Some(tok) = self.drain_queue.pop() else { break };
            if let Some(key) = self.lookup(tok) {
                if self.conns[key].phase.is_open() {
                    self.counters.drain_waves.inc();
                    self.close_draining(key);
                    self.settle();
                }
            }
        }
    }

    /// 1001 with a retry hint of 1-3 s, jittered, so the clients of one wave spread out too.
    fn close_draining(&mut self, key: usize) {
        let retry_ms = 1000 + self.jitter.below(2001);
        self.close_for(key, CloseReason::shutting_down(retry_ms));
    }
}
