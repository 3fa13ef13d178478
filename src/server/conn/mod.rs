//! One connection's state: what the shard keeps per socket, kept small because an idle
//! connection is nothing but this slab entry (no task, no buffer, no timer future).

mod link;
mod liveness;
mod phase;

use std::net::IpAddr;
use std::os::fd::OwnedFd;

use crate::proto::Decoder;
use crate::push::session::Session;
use crate::timer_wheel::TimerKey;

use super::outbox::Outbox;

pub(crate) use link::{Link, TlsLink};
pub(crate) use liveness::{Deadlines, Liveness, State as LiveState, Verdict};
pub(crate) use phase::Phase;

/// Which endpoint the connection was upgraded on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Ws,
    Echo,
}

/// Flag bits.
pub(crate) mod flag {
    /// The socket may have unread bytes (edge seen, not read to the end).
    pub(crate) const READ_READY: u16 = 1;
    /// The last write hit a full socket buffer; wait for EPOLLOUT.
    pub(crate) const WRITE_BLOCKED: u16 = 2;
    /// Listed in the shard's flush list for this turn.
    pub(crate) const DIRTY: u16 = 4;
    /// Listed in the shard's ready list (read again next turn).
    pub(crate) const QUEUED_READ: u16 = 8;
    /// Shut the write side once the outbox drains.
    pub(crate) const SHUT_AFTER_FLUSH: u16 = 16;
    /// A ping is out and unanswered.
    pub(crate) const PING_OUT: u16 = 32;
    /// Counted in the open-connection limits (global, shard, address).
    pub(crate) const COUNTED: u16 = 64;
    /// Pushes have been dropped for a full outbox since `live.slow_since`.
    pub(crate) const SLOW: u16 = 128;
    /// The peer shut its side or the socket failed (EPOLLRDHUP, EPOLLHUP or EPOLLERR): read on
    /// to the EOF or error behind the bytes, however short a read is.
    pub(crate) const PEER_CLOSED: u16 = 256;
    /// The welcome waits for its streams' positions: nothing is written before it.
    pub(crate) const WELCOME_PENDING: u16 = 512;
    /// A channel's messages did not fit the outbox: the shard's `Repairs` holds the gap, to
    /// refill once the outbox drains.
    pub(crate) const GAPPED: u16 = 1024;
    /// A wss connection: its TLS state is in the shard's side map (`Core::links`), so a plain
    /// connection's slab entry holds nothing of it.
    pub(crate) const TLS: u16 = 2048;
    /// A connect backend is deciding who the connection is: the upgrade waits (its request is
    /// in `Core::authorizing`), and bytes that arrive meanwhile are kept.
    pub(crate) const AUTHORIZING: u16 = 4096;
    /// Its gap repair waits in the overload manager's queue (`pause` was on when its outbox
    /// drained).
    pub(crate) const REPAIR_DEFERRED: u16 = 8192;
}

/// Input kept between reads: an incomplete request head, frame header or control frame, and
/// the message being assembled. Allocated only while non-empty.
#[derive(Debug, Default)]
pub(crate) struct Bufs {
    pub(crate) pending: Vec<u8>,
    pub(crate) message: Vec<u8>,
    /// What of these the shard's `input_bytes` gauge counts ([`Conn::recount_input`]).
    pub(crate) counted: usize,
}

#[derive(Debug)]
pub(crate) struct Conn {
    /// Dropping the connection closes the socket.
    pub(crate) fd: OwnedFd,
    pub(crate) gen: u32,
    pub(crate) phase: Phase,
    pub(crate) route: Route,
    pub(crate) flags: u16,
    pub(crate) timer: Option<TimerKey>,
    /// The stamps its ping, pong, idle and slow-consumer deadlines are decided from.
    pub(crate) live: Liveness,
    pub(crate) decoder: Decoder,
    pub(crate) bufs: Option<Box<Bufs>>,
    pub(crate) outbox: Option<Box<Outbox>>,
    pub(crate) session: Option<Box<Session>>,
    pub(crate) ip: IpAddr,
}

impl Conn {
    pub(crate) fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }

    pub(crate) fn set(&mut self, f: u16) {
        self.flags |= f;
    }

    pub(crate) fn clear(&mut self, f: u16) {
        self.flags &= !f;
    }

    pub(crate) fn bufs(&mut self) -> &mut Bufs {
        self.bufs.get_or_insert_with(Default::default)
    }

    /// Frees the input buffers once nothing is kept in them.
    /// Frees the input buffers once they are empty and no longer counted.
    pub(crate) fn trim_bufs(&mut self) {
        if let Some(b) = &self.bufs {
            if b.pending.is_empty() && b.message.is_empty() && b.counted == 0 {
                self.bufs = None;
            }
        }
    }

    /// The input held now (a partial head or frame, the message being assembled) is what
    /// is counted from here on: returns (what was counted, what is now).
    pub(crate) fn recount_input(&mut self) -> (usize, usize) {
        let Some(b) = self.bufs.as_mut() else { return (0, 0) };
        let now = b.pending.len() + b.message.len();
        (std::mem::replace(&mut b.counted, now), now)
    }

    /// What the input gauge counts for this connection.
    pub(crate) fn counted_input(&self) -> usize {
        self.bufs.as_ref().map_or(0, |b| b.counted)
    }

    pub(crate) fn outbox_bytes(&self) -> usize {
        self.outbox.as_ref().map_or(0, |o| o.bytes())
    }

    pub(crate) fn outbox_frames(&self) -> usize {
        self.outbox.as_ref().map_or(0, |o| o.frames())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_idle_connection_is_small() {
        // The per-connection budget is 200 bytes of user space all told; the slab entry is
        // most of it.
        let size = std::mem::size_of::<super::Conn>();
        println!("Conn is {size} bytes");
        assert!(size <= 128, "{size}");
    }
}
