//! Writing: frames into a connection's outbox lanes, and one gather write per dirty connection
//! per turn, through its link.

use std::os::fd::AsFd;

use bytes::Bytes;

use crate::proto::frame::encode_frame;
use crate::proto::OpCode;
use crate::push::msg::Priority;

use super::super::conn::{flag, Link};
use super::super::outbox::{Flushed, Outbox};
use super::super::sys;
use super::{token, Core};

impl Core {
    /// Queues a frame outside the push caps at normal priority (echoes, handshake answers).
    pub(super) fn queue_frame(&mut self, key: usize, op: OpCode, payload: &[u8]) {
        let mut v = Vec::new();
        encode_frame(&mut v, op, true, None, payload);
        self.queue_bytes(key, Bytes::from(v));
    }

    /// Queues a control or protocol frame in the high lane, outside the caps.
    pub(super) fn queue_control(&mut self, key: usize, op: OpCode, payload: &[u8]) {
        let mut v = Vec::new();
        encode_frame(&mut v, op, true, None, payload);
        self.queue_lane(key, Bytes::from(v), Priority::High);
    }

    pub(super) fn queue_bytes(&mut self, key: usize, frame: Bytes) {
        self.queue_lane(key, frame, Priority::Normal);
    }

    pub(super) fn queue_lane(&mut self, key: usize, frame: Bytes, p: Priority) {
        self.counters.frames_out.inc();
        self.counters.outbox_bytes.add(frame.len() as u64);
        self.conns[key].outbox.get_or_insert_with(|| Box::new(Outbox::default())).push(frame, p);
        self.mark_dirty(key);
    }

    pub(super) fn mark_dirty(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.has(flag::DIRTY) {
            conn.set(flag::DIRTY);
            self.dirty.push(token(key, conn.gen));
        }
    }

    pub(super) fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for tok in &dirty {
            if let Some(key) = self.lookup(*tok) {
                self.conns[key].clear(flag::DIRTY);
                self.flush(key);
            }
        }
        if self.dirty.is_empty() {
            self.dirty = dirty;
            self.dirty.clear();
        }
    }

    /// Writes everything queued for a connection in gather writes.
    pub(super) fn flush(&mut self, key: usize) {
        let tls = self.conns.get(key).is_some_and(|c| c.has(flag::TLS));
        self.flush_queued(key);
        if tls {
            // Ciphertext the socket refused is held for the client.
            self.account_input(key);
        }
    }

    fn flush_queued(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.has(flag::WRITE_BLOCKED) {
            return;
        }
        let mut plain = Link::Plain;
        let link = match conn.has(flag::TLS) {
            true => self.links.get_mut(&key).unwrap_or(&mut plain),
            false => &mut plain,
        };
        if link.has_output() {
            // TLS: a handshake flight, or sealed records the socket refused, go first.
            let fd = conn.fd.as_fd();
            match link.flush_output(&mut |w| sys::writev(fd, w)) {
                Ok(true) => {}
                Ok(false) => {
                    conn.set(flag::WRITE_BLOCKED);
                    return;
                }
                Err(_) => {
                    self.counters.io_errors.inc();
                    self.remove(key);
                    return;
                }
            }
        }
        if conn.has(flag::WELCOME_PENDING) {
            return;
        }
        if let Some(ob) = conn.outbox.as_mut() {
            // What its publisher gave a ttl for and has expired is not written.
            let before = ob.bytes();
            let expired = ob.expire(self.now_ms);
            if expired > 0 {
                self.counters.pushes_expired.add(expired as u64);
                self.counters.outbox_bytes.sub((before - ob.bytes()) as u64);
            }
            let fd = conn.fd.as_fd();
            let result = ob.flush(|iov| link.write(iov, |w| sys::writev(fd, w)));
            if let Ok((_, n)) = &result {
                self.counters.outbox_bytes.sub(*n as u64);
            }
            match result {
                Ok((Flushed::All, n)) => {
                    self.counters.bytes_out.add(n as u64);
                    conn.outbox = None;
                    conn.clear(flag::SLOW);
                    if link.has_output() {
                        // Sealed but not all taken by the socket: wait for room.
                        conn.set(flag::WRITE_BLOCKED);
                    }
                }
                Ok((Flushed::Blocked, n)) => {
                    self.counters.bytes_out.add(n as u64);
                    conn.set(flag::WRITE_BLOCKED);
                }
                Err(_) => {
                    self.counters.io_errors.inc();
                    self.remove(key);
                    return;
                }
            }
        }
        if conn.outbox.is_none() && conn.has(flag::GAPPED) && !conn.has(flag::REPAIR_DEFERRED) {
            // Room again: ask the homes for what the gaps missed; under `pause`, in turn with
            // the other repairs, a few per sample.
            let id = self.conn_id(key);
            if self.overloaded(super::super::overload::Action::Pause) {
                self.conns[key].set(flag::REPAIR_DEFERRED);
                self.watch.deferred_repairs.push_back(id);
                self.counters.repairs_deferred.inc();
            } else {
                self.repairs.drained(id, self.mesh.shards(), &mut self.effects);
                self.apply_effects();
            }
        }
        let conn = &mut self.conns[key];
        let tls_out = conn.has(flag::TLS) && self.links.get(&key).is_some_and(Link::has_output);
        if conn.outbox.is_none() && !tls_out && conn.has(flag::SHUT_AFTER_FLUSH) {
            conn.clear(flag::SHUT_AFTER_FLUSH);
            let fd = conn.fd.as_fd();
            if let Some(l) = self.links.get_mut(&key).filter(|_| conn.has(flag::TLS)) {
                l.close_notify(|w| sys::writev(fd, w));
            }
            sys::shutdown_write(fd);
        }
        let conn = &self.conns[key];
        if conn.has(flag::READ_READY) && !conn.has(flag::QUEUED_READ) && !self.paused(conn) {
            self.queue_read(key);
        }
    }
}
