//! One connection's state: what the shard keeps per socket, kept small because an idle
//! connection is nothing but this slab entry (no task, no buffer, no timer future).

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::proto::Decoder;
use crate::timer_wheel::TimerKey;

use super::outbox::Outbox;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading the upgrade request.
    Handshake,
    /// Upgraded; frames flow both ways.
    Open,
    /// We sent a close frame and read on until the client's close arrives.
    Closing,
    /// Nothing more will be read: input is discarded, the write side is shut once the outbox
    /// drains, and the socket closes at EOF or at the deadline.
    Linger,
}

/// Which endpoint the connection was upgraded on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Ws,
    Echo,
}

/// Flag bits.
pub mod flag {
    /// The socket may have unread bytes (edge seen, not read to the end).
    pub const READ_READY: u16 = 1;
    /// The last write hit a full socket buffer; wait for EPOLLOUT.
    pub const WRITE_BLOCKED: u16 = 2;
    /// Listed in the shard's flush list for this turn.
    pub const DIRTY: u16 = 4;
    /// Listed in the shard's ready list (read again next turn).
    pub const QUEUED_READ: u16 = 8;
    /// Shut the write side once the outbox drains.
    pub const SHUT_AFTER_FLUSH: u16 = 16;
    /// A ping is out and unanswered.
    pub const PING_OUT: u16 = 32;
    /// Counted in the open-connection limits (global, shard, address).
    pub const COUNTED: u16 = 64;
    /// Pushes have been dropped for a full outbox since `slow_since`.
    pub const SLOW: u16 = 128;
    /// The peer shut its side or the socket failed (EPOLLRDHUP, EPOLLHUP or EPOLLERR): read on
    /// to the EOF or error behind the bytes, however short a read is.
    pub const PEER_CLOSED: u16 = 256;
}

/// Input kept between reads: an incomplete request head, frame header or control frame, and
/// the message being assembled. Allocated only while non-empty.
#[derive(Debug, Default)]
pub struct Bufs {
    pub pending: Vec<u8>,
    pub message: Vec<u8>,
}

/// Who a push connection is and what it follows; allocated only for connections that have
/// any of it (an anonymous connection that subscribes to nothing has none).
#[derive(Debug, Default)]
pub struct Session {
    pub user: Option<Arc<str>>,
    pub device: Option<Arc<str>>,
    pub channels: Vec<Arc<str>>,
    /// Last sequence number of this connection's direct stream.
    pub direct_seq: u64,
    /// Bad client messages in the current minute, and when that minute began (tick).
    pub errors: u32,
    pub errors_since: u32,
    /// Tick of the last activity report to the user's home shard.
    pub reported: u32,
}

#[derive(Debug)]
pub struct Conn {
    /// Dropping the connection closes the socket.
    pub fd: OwnedFd,
    pub gen: u32,
    pub phase: Phase,
    pub route: Route,
    pub flags: u16,
    pub timer: Option<TimerKey>,
    /// Tick of the last bytes received (wrapping).
    pub last_recv: u32,
    /// Tick of the last message received (wrapping).
    pub last_msg: u32,
    /// Tick the outstanding ping was sent (wrapping).
    pub ping_sent: u32,
    pub decoder: Decoder,
    pub bufs: Option<Box<Bufs>>,
    pub outbox: Option<Box<Outbox>>,
    pub session: Option<Box<Session>>,
    /// Tick since which pushes are being dropped (with flag SLOW).
    pub slow_since: u32,
    pub ip: IpAddr,
}

impl Conn {
    pub fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }

    pub fn set(&mut self, f: u16) {
        self.flags |= f;
    }

    pub fn clear(&mut self, f: u16) {
        self.flags &= !f;
    }

    pub fn bufs(&mut self) -> &mut Bufs {
        self.bufs.get_or_insert_with(Default::default)
    }

    /// Frees the input buffers once nothing is kept in them.
    pub fn trim_bufs(&mut self) {
        if let Some(b) = &self.bufs {
            if b.pending.is_empty() && b.message.is_empty() {
                self.bufs = None;
            }
        }
    }

    pub fn outbox_bytes(&self) -> usize {
        self.outbox.as_ref().map_or(0, |o| o.bytes())
    }

    pub fn outbox_frames(&self) -> usize {
        self.outbox.as_ref().map_or(0, |o| o.frames())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_idle_connection_is_small() {
        // The per-connection budget is 200 bytes of user space all told; the slab entry is
        // most of it.
        assert!(
            std::mem::size_of::<super::Conn>() <= 128,
            "{}",
            std::mem::size_of::<super::Conn>()
        );
    }
}
