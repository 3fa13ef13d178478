//! The one owner of stream numbering. Every stream that outlives a connection (a channel, a
//! user, the broadcast) is numbered by its home shard's `Streams`, as a [`Position`]: the
//! stream's epoch and a sequence number that grows by one per delivered message.
//!
//! Numbering does not restart when a stream's last listener leaves: a stream is forgotten only
//! after `idle_ttl` without a message, which bounds the memory idle streams hold. A stream
//! that comes back after that starts again at 1 under a new epoch (the time it came back), so
//! `(epoch, seq)` never names two messages. The per-connection `direct` stream is numbered by
//! its connection and ends with it.

use std::collections::HashMap;
use std::sync::Arc;

use crate::proto::client::Stream;

/// A stream that outlives connections.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum StreamKey {
    Channel(Arc<str>),
    User(Arc<str>),
    Broadcast,
}

impl StreamKey {
    /// The name whose slot decides the stream's home shard. The broadcast stream is homed
    /// like any other name, so no thread is special.
    pub(crate) fn home_name(&self) -> &str {
        match self {
            StreamKey::Channel(n) | StreamKey::User(n) => n,
            StreamKey::Broadcast => "broadcast",
        }
    }

    /// The stream as the client protocol names it.
    pub(crate) fn wire(&self) -> Stream<'_> {
        match self {
            StreamKey::Channel(c) => Stream::Channel(c),
            StreamKey::User(u) => Stream::User(u),
            StreamKey::Broadcast => Stream::Broadcast,
        }
    }
}

/// Where a message sits in its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Position {
    /// When this incarnation of the stream began (Unix ms): the node's epoch for streams it
    /// has numbered since start-up, a later time for one forgotten and begun again.
    pub(crate) epoch: u64,
    pub(crate) seq: u64,
}

#[derive(Debug)]
struct Entry {
    epoch: u64,
    seq: u64,
    last_ms: u64,
}

#[derive(Debug)]
pub(crate) struct Streams {
    /// The node's epoch (Unix ms at start-up), the epoch of every stream first seen.
    epoch: u64,
    idle_ttl_ms: u64,
    entries: HashMap<StreamKey, Entry>,
    /// Set once a stream has been forgotten: later first appearances get a fresh epoch.
    forgot_any: bool,
}

impl Streams {
    pub(crate) fn new(epoch: u64, idle_ttl_ms: u64) -> Streams {
        Streams { epoch, idle_ttl_ms, entries: HashMap::new(), forgot_any: false }
    }

    /// Numbers the next message of `key`.
    pub(crate) fn append(&mut self, key: &StreamKey, now_ms: u64) -> Position {
        let (epoch, forgot) = (self.epoch, self.forgot_any);
        let e = match self.entries.get_mut(key) {
            Some(e) => e,
            None => {
                // A stream seen for the first time since start-up continues the node's epoch;
                // once anything was forgotten, a first appearance may be a return, so it gets
                // an epoch of its own (never below the node's).
                let epoch = if forgot { now_ms.max(epoch + 1) } else { epoch };
                self.entries.entry(key.clone()).or_insert(Entry { epoch, seq: 0, last_ms: now_ms })
            }
        };
        e.seq += 1;
        e.last_ms = now_ms;
        Position { epoch: e.epoch, seq: e.seq }
    }

    /// Forgets streams with no message for the idle TTL; returns how many.
    pub(crate) fn expire(&mut self, now_ms: u64) -> usize {
        let ttl = self.idle_ttl_ms;
        let before = self.entries.len();
        self.entries.retain(|_, e| now_ms.saturating_sub(e.last_ms) < ttl);
        let gone = before - self.entries.len();
        self.forgot_any |= gone > 0;
        gone
    }
}

impl Streams {
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbering_is_per_stream_and_survives_until_the_ttl() {
        let mut s = Streams::new(1000, 60_000);
        let ch = StreamKey::Channel("news".into());
        let user = StreamKey::User("news".into());
        assert_eq!(s.append(&ch, 1), Position { epoch: 1000, seq: 1 });
        assert_eq!(s.append(&ch, 2), Position { epoch: 1000, seq: 2 });
        assert_eq!(s.append(&user, 3).seq, 1, "a user and a channel of one name are apart");
        assert_eq!(s.append(&StreamKey::Broadcast, 3).seq, 1);
        assert_eq!(s.expire(50_000), 0);
        assert_eq!(s.append(&ch, 50_000), Position { epoch: 1000, seq: 3 });
        // Idle past the TTL: forgotten; back again under a new epoch.
        assert_eq!(s.expire(100_000), 2, "the user and broadcast streams went idle");
        assert_eq!(s.expire(200_000), 1);
        assert!(s.is_empty());
        let back = s.append(&ch, 200_001);
        assert_eq!(back, Position { epoch: 200_001, seq: 1 });
        assert!(back > Position { epoch: 1000, seq: 3 }, "positions never repeat");
    }
}
