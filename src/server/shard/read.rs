//! Reading: readiness from the epoll set, recv into the shard's one buffer, through the
//! connection's link into the handshake parser or the frame decoder, and on to the session.

use std::io;
use std::os::fd::AsFd;

use crate::proto::handshake::{self, HandshakeError};
use crate::proto::{CloseReason, Event, OpCode};
use crate::push::session::Session;

use super::super::conn::{flag, Conn, Link, Phase, Route};
use super::super::sys::{self, EV_ERR, EV_IN, EV_OUT, EV_RDHUP};
use super::{token, Core, Shard, TICK_TOKEN, WAKE_TOKEN};

/// Reads of one connection per turn before others get theirs.
const READS_PER_TURN: usize = 4;
/// A message buffer larger than this is freed after use instead of kept.
const KEEP_MESSAGE_CAPACITY: usize = 16 * 1024;

impl Shard {
    /// Takes the epoll set's readiness and reads each connection that has bytes or news.
    pub(super) fn read_ready_sockets(&mut self) {
        let c = &mut self.core;
        let n = match c.epoll.poll(&mut c.events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => {
                tracing::error!(shard = c.id, "epoll_wait failed: {e}");
                0
            }
        };
        for i in 0..n {
            let ev = self.core.events[i];
            let (bits, tok) = (ev.events, ev.u64);
            match tok {
                WAKE_TOKEN => self.core.drain_requested(),
                TICK_TOKEN => self.core.tickfd.drain(),
                tok => {
                    let Some(key) = self.core.lookup(tok) else { continue };
                    self.core.on_readiness(key, bits);
                    if bits & (EV_IN | EV_RDHUP | EV_ERR) != 0 {
                        self.read_conn(key);
                    }
                }
            }
        }
    }

    /// Reads the connections that had bytes left over from earlier turns.
    pub(super) fn read_again(&mut self) {
        let ready = std::mem::take(&mut self.core.ready);
        for tok in &ready {
            if let Some(key) = self.core.lookup(*tok) {
                let conn = &mut self.core.conns[key];
                conn.clear(flag::QUEUED_READ);
                if conn.has(flag::READ_READY) {
                    self.read_conn(key);
                }
            }
        }
        // Keep the allocation of whichever list is larger.
        if self.core.ready.is_empty() {
            self.core.ready = ready;
            self.core.ready.clear();
        }
    }

    /// Reads a connection up to READS_PER_TURN times, handling what arrives.
    fn read_conn(&mut self, key: usize) {
        self.read_conn_bytes(key);
        self.core.account_input(key);
    }

    fn read_conn_bytes(&mut self, key: usize) {
        let Shard { read_buf, core } = self;
        for _ in 0..READS_PER_TURN {
            let Some(conn) = core.conns.get(key) else { return };
            if core.paused(conn) {
                return; // READ_READY stays set; the flush that drains the outbox resumes it.
            }
            let now32 = core.now32();
            let conn = &mut core.conns[key];
            // Bytes kept from the last read (a partial head or frame) go in front.
            let kept = match conn.bufs.as_mut() {
                Some(b) if !b.pending.is_empty() => {
                    let l = b.pending.len();
                    read_buf[..l].copy_from_slice(&b.pending);
                    b.pending.clear();
                    l
                }
                _ => 0,
            };
            // A TLS record not yet whole goes next, then what arrives now.
            let mut plain = Link::Plain;
            let link = match conn.has(flag::TLS) {
                true => core.links.get_mut(&key).unwrap_or(&mut plain),
                false => &mut plain,
            };
            let pre = link.take_partial(&mut read_buf[kept..]);
            let at = kept + pre;
            let space = read_buf.len() - at;
            match sys::recv(conn.fd.as_fd(), &mut read_buf[at..]) {
                Ok(0) => {
                    core.on_eof(key);
                    core.settle();
                    return;
                }
                Ok(n) => {
                    core.counters.bytes_in.add(n as u64);
                    conn.live.last_recv = now32;
                    conn.clear(flag::PING_OUT);
                    let read = match link.read(read_buf, kept, at + n, &mut core.tls_plain) {
                        Ok(r) => r,
                        Err(e) => {
                            // A bad record or an alert: nothing more can be read or written.
                            core.counters.tls_errors.inc();
                            tracing::debug!(shard = core.id, "TLS error: {}", e.0);
                            core.remove(key);
                            core.settle();
                            return;
                        }
                    };
                    if link.has_output() {
                        core.mark_dirty(key); // a handshake flight to send
                    }
                    core.process(key, &mut read_buf[..read.end]);
                    core.settle();
                    if read.closed {
                        if core.conns.contains(key) {
                            core.on_eof(key);
                            core.settle();
                        }
                        return;
                    }
                    let Some(conn) = core.conns.get_mut(key) else { return };
                    conn.trim_bufs();
                    if n < space && !conn.has(flag::PEER_CLOSED) {
                        // A short read emptied the socket; the next arrival is a new edge.
                        conn.clear(flag::READ_READY);
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    link.put_back_partial(&read_buf[kept..at]);
                    if kept > 0 {
                        conn.bufs().pending.extend_from_slice(&read_buf[..kept]);
                    }
                    conn.clear(flag::READ_READY);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    link.put_back_partial(&read_buf[kept..at]);
                    if kept > 0 {
                        conn.bufs().pending.extend_from_slice(&read_buf[..kept]);
                    }
                }
                Err(_) => {
                    core.counters.io_errors.inc();
                    core.remove(key);
                    core.settle();
                    return;
                }
            }
        }
        core.queue_read(key);
    }
}

impl Core {
    /// Notes what an epoll edge says about a connection.
    fn on_readiness(&mut self, key: usize, bits: u32) {
        if bits & (EV_OUT | EV_ERR) != 0 {
            let conn = &mut self.conns[key];
            conn.clear(flag::WRITE_BLOCKED);
            let tls_out = conn.has(flag::TLS) && self.links.get(&key).is_some_and(Link::has_output);
            if conn.outbox.is_some() || tls_out {
                self.mark_dirty(key);
            }
        }
        let conn = &mut self.conns[key];
        if bits & (EV_RDHUP | EV_ERR) != 0 {
            // The FIN or RST may have come in the same edge as the last bytes: a short read no
            // longer means the socket is drained.
            conn.set(flag::PEER_CLOSED);
        }
        if bits & (EV_IN | EV_RDHUP | EV_ERR) != 0 {
            conn.set(flag::READ_READY);
        }
    }

    pub(super) fn queue_read(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.has(flag::QUEUED_READ) {
            conn.set(flag::QUEUED_READ);
            self.ready.push(token(key, conn.gen));
        }
    }

    /// Whether reading waits for the outbox to drain. A peer that has closed is read on to its
    /// EOF regardless, so it is released at once.
    pub(super) fn paused(&self, conn: &Conn) -> bool {
        conn.phase.pauses_when_full()
            && !conn.has(flag::PEER_CLOSED)
            && (conn.outbox_bytes() >= self.p.outbox_max_bytes
                || conn.outbox_frames() >= self.p.outbox_max_frames)
    }

    fn on_eof(&mut self, key: usize) {
        match self.conns[key].phase {
            Phase::Handshake => self.counters.handshake_aborted.inc(),
            Phase::Open | Phase::Closing => self.counters.abnormal_closures.inc(),
            // Our close frame answered the client's (or a refusal is queued): the peer may
            // only have shut its write side, so give what is queued one try first.
            Phase::Linger => self.flush(key),
        }
        self.remove(key);
    }

    /// Handles bytes just read (with any kept bytes in front).
    fn process(&mut self, key: usize, data: &mut [u8]) {
        match self.conns[key].phase {
            Phase::Handshake if self.conns[key].has(flag::AUTHORIZING) => {
                // Sent before the 101: kept for when the connect backend has answered, within
                // the head cap (a client has no reason to send much before it).
                let pending = &mut self.conns[key].bufs().pending;
                if pending.len() + data.len() > self.p.policy.max_header_bytes {
                    self.refuse(key, HandshakeError::HeaderTooLarge);
                } else {
                    pending.extend_from_slice(data);
                }
            }
            Phase::Handshake => match handshake::parse_upgrade(data, &self.p.policy) {
                Ok(None) => self.conns[key].bufs().pending.extend_from_slice(data),
                Err(e) => self.refuse(key, e),
                Ok(Some((up, n))) => {
                    if self.upgrade(key, &up) {
                        self.decode_frames(key, &mut data[n..]);
                    } else if self.conns.get(key).is_some_and(|c| c.has(flag::AUTHORIZING)) {
                        self.conns[key].bufs().pending.extend_from_slice(&data[n..]);
                    }
                }
            },
            Phase::Open | Phase::Closing => self.decode_frames(key, data),
            Phase::Linger => {}
        }
    }

    /// Frames kept while the upgrade waited for its connect backend.
    pub(super) fn decode_kept(&mut self, key: usize, data: &mut [u8]) {
        self.decode_frames(key, data);
    }

    fn decode_frames(&mut self, key: usize, data: &mut [u8]) {
        let limits = self.p.limits;
        let mut pos = 0;
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return };
            if !conn.phase.reads_frames() {
                return;
            }
            match conn.decoder.decode(&mut data[pos..], &limits) {
                Ok(Some((ev, n))) => {
                    pos += n;
                    self.on_frame(key, ev);
                    self.apply_effects();
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(shard = self.id, conn = key, "protocol error: {e}");
                    self.close_for(key, CloseReason::Protocol(e));
                    return;
                }
            }
        }
        if pos < data.len() {
            self.conns[key].bufs().pending.extend_from_slice(&data[pos..]);
        }
    }

    fn on_frame(&mut self, key: usize, ev: Event<'_>) {
        let now32 = self.now32();
        let conn = &mut self.conns[key];
        match ev {
            Event::Data { text, payload, first, last } => {
                if !conn.phase.is_open() {
                    return; // after our close, data is discarded
                }
                if last {
                    self.counters.messages_in.inc();
                    conn.live.last_msg = now32;
                }
                if first && last {
                    self.on_message(key, text, payload);
                    return;
                }
                let bufs = conn.bufs();
                bufs.message.extend_from_slice(payload);
                if last {
                    let mut msg = std::mem::take(&mut bufs.message);
                    self.on_message(key, text, &msg);
                    if msg.capacity() <= KEEP_MESSAGE_CAPACITY {
                        msg.clear();
                        if let Some(b) = self.conns.get_mut(key).and_then(|c| c.bufs.as_mut()) {
                            b.message = msg;
                        }
                    }
                }
            }
            Event::Ping(payload) => {
                if conn.phase.is_open() {
                    self.queue_control(key, OpCode::Pong, payload);
                }
            }
            Event::Pong(_) => {}
            Event::Close(code, _reason) => match conn.phase {
                Phase::Open => {
                    self.counters.closed_by_client.inc();
                    let reply = code.map(|c| c.0.to_be_bytes().to_vec()).unwrap_or_default();
                    self.queue_close(key, &reply, false);
                    self.linger(key);
                }
                // The answer to our close: the handshake is complete.
                _ => self.remove(key),
            },
        }
    }

    /// A whole message from the client: echoed on the echo route, else the session's.
    fn on_message(&mut self, key: usize, text: bool, msg: &[u8]) {
        match self.conns[key].route {
            Route::Echo => {
                let op = if text { OpCode::Text } else { OpCode::Binary };
                self.queue_frame(key, op, msg);
            }
            Route::Ws => {
                let (id, at) = (self.conn_id(key), self.at());
                let slot = &mut self.conns[key].session;
                Session::on_message(slot, id, text, msg, at, &self.p.session, &mut self.effects);
            }
        }
    }
}
