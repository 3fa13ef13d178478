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

use bytes::Bytes;

use super::msg::{Frame, Meta, Priority};

use crate::proto::client::{ResetReason, Stream};

use super::history::{Keep, Ring, Rules, Stored};
use super::msg::StreamInfo;

/// A stream that outlives connections.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StreamKey {
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

// One position type, shared with the wire.
pub use crate::proto::client::Position;

#[derive(Debug)]
struct Entry {
    epoch: u64,
    seq: u64,
    last_ms: u64,
    keep: Keep,
    ring: Ring,
}

/// What a client that was at `since` gets.
#[derive(Debug, PartialEq, Eq)]
pub enum CatchUp {
    /// The frames after `since`, oldest first (none when it missed nothing); the stream
    /// continues live after `to`.
    Replay { from: u64, to: Position, frames: Vec<Frame> },
    /// Continuity is lost; the stream continues live after `at`.
    Reset { at: Position, reason: ResetReason },
}

#[derive(Debug)]
pub(crate) struct Streams {
    /// The node's epoch (Unix ms at start-up), the epoch of every stream first seen.
    epoch: u64,
    idle_ttl_ms: u64,
    entries: HashMap<StreamKey, Entry>,
    /// Set once a stream has been forgotten: later first appearances get a fresh epoch.
    forgot_any: bool,
    rules: Rules,
    /// Frame bytes all rings of this shard may hold, and what they hold.
    budget: usize,
    held: usize,
}

impl Streams {
    #[cfg(test)]
    pub(crate) fn new(epoch: u64, idle_ttl_ms: u64) -> Streams {
        let rules =
            Rules { rules: Vec::new(), default: Keep::NOTHING, user_default: Keep::NOTHING };
        Streams::with_history(epoch, idle_ttl_ms, rules, 0)
    }

    /// Streams that keep history by `rules`, all rings together within `budget` bytes.
    pub(crate) fn with_history(
        epoch: u64,
        idle_ttl_ms: u64,
        rules: Rules,
        budget: usize,
    ) -> Streams {
        Streams {
            epoch,
            idle_ttl_ms,
            entries: HashMap::new(),
            forgot_any: false,
            rules,
            budget,
            held: 0,
        }
    }

    fn entry(&mut self, key: &StreamKey, now_ms: u64) -> &mut Entry {
        let (epoch, forgot) = (self.epoch, self.forgot_any);
        if !self.entries.contains_key(key) {
            // A stream seen for the first time since start-up continues the node's epoch;
            // once anything was forgotten, a first appearance may be a return, so it gets an
            // epoch of its own (never below the node's).
            let epoch = if forgot { now_ms.max(epoch + 1) } else { epoch };
            let keep = self.rules.keep_for(key);
            let e = Entry { epoch, seq: 0, last_ms: now_ms, keep, ring: Ring::default() };
            self.entries.insert(key.clone(), e);
        }
        // Just inserted if it was missing.
        self.entries.get_mut(key).expect("entry present")
    }

    /// Replay: a message of `key` at `pos` was written at `at_ms`. The stream continues from
    /// the highest position replayed. `None` when `pos` is of the stream's epoch (or the first
    /// seen); `Some(true)` when it is of an older epoch (stale); `Some(false)` when the stream
    /// began again under `pos`'s epoch, replacing what was replayed of the older one.
    pub(crate) fn restore(&mut self, key: &StreamKey, pos: Position, at_ms: u64) -> Option<bool> {
        let keep = self.rules.keep_for(key);
        match self.entries.get_mut(key) {
            None => {
                let e = Entry {
                    epoch: pos.epoch,
                    seq: pos.seq,
                    last_ms: at_ms,
                    keep,
                    ring: Ring::default(),
                };
                self.entries.insert(key.clone(), e);
                None
            }
            Some(e) if e.epoch == pos.epoch => {
                e.seq = e.seq.max(pos.seq);
                e.last_ms = e.last_ms.max(at_ms);
                None
            }
            Some(e) if e.epoch > pos.epoch => Some(true),
            Some(e) => {
                let freed = e.ring.clear();
                *e = Entry {
                    epoch: pos.epoch,
                    seq: pos.seq,
                    last_ms: at_ms,
                    keep,
                    ring: Ring::default(),
                };
                self.held -= freed;
                Some(false)
            }
        }
    }

    /// What `key` keeps (by its entry, else by the rules).
    pub(crate) fn keep(&self, key: &StreamKey) -> Keep {
        self.entries.get(key).map_or_else(|| self.rules.keep_for(key), |e| e.keep)
    }

    /// Whether `key` keeps a history (by its entry, else by the rules).
    pub(crate) fn recoverable(&self, key: &StreamKey) -> bool {
        self.entries.get(key).map_or_else(|| self.rules.keep_for(key), |e| e.keep).keeps()
    }

    /// Where `key` stands: its epoch and last seq (0 before its first message). A stream asked
    /// about is remembered from then on, so its epoch holds for the one who asked.
    pub(crate) fn position(&mut self, key: &StreamKey, now_ms: u64) -> Position {
        let e = self.entry(key, now_ms);
        Position { epoch: e.epoch, seq: e.seq }
    }

    /// Numbers the next message of `key`.
    #[cfg(test)]
    pub(crate) fn append(&mut self, key: &StreamKey, now_ms: u64) -> Position {
        self.append_with(key, now_ms, (Priority::Normal, None), |_| Bytes::new()).0
    }

    /// Numbers the next message of `key`, encodes it with `encode` (given its position and
    /// whether it is the first of its epoch), and keeps the frame if the stream is recoverable.
    pub(crate) fn append_with(
        &mut self,
        key: &StreamKey,
        now_ms: u64,
        (priority, meta): (Priority, Option<Arc<Meta>>),
        encode: impl FnOnce(Position) -> Bytes,
    ) -> (Position, Bytes) {
        let e = self.entry(key, now_ms);
        e.seq += 1;
        e.last_ms = now_ms;
        let pos = Position { epoch: e.epoch, seq: e.seq };
        let frame = encode(pos);
        let keep = e.keep;
        let delta = e.ring.push(
            Stored { seq: pos.seq, at_ms: now_ms, frame: frame.clone(), priority, meta },
            &keep,
            now_ms,
        );
        self.held = self.held.saturating_add_signed(delta);
        if self.held > self.budget {
            self.shrink();
        }
        (pos, frame)
    }

    /// Over the budget: the oldest entries of the largest rings go first, down to 90 % of the
    /// budget so the next few appends do not scan again.
    fn shrink(&mut self) {
        let target = self.budget / 10 * 9;
        let mut sizes: Vec<(usize, StreamKey)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.ring.bytes() > 0)
            .map(|(k, e)| (e.ring.bytes(), k.clone()))
            .collect();
        sizes.sort_unstable_by_key(|s| std::cmp::Reverse(s.0));
        let mut i = 0;
        while self.held > target && !sizes.is_empty() {
            let key = &sizes[i % sizes.len()].1;
            let freed = self.entries.get_mut(key).map_or(0, |e| e.ring.pop_oldest());
            self.held -= freed;
            if freed == 0 {
                sizes.remove(i % sizes.len());
                continue;
            }
            // Stay on the largest ring until it is no larger than the next one.
            let now = self.entries.get(key).map_or(0, |e| e.ring.bytes());
            if sizes.get(i + 1).is_some_and(|n| now < n.0) {
                i += 1;
            } else {
                i = 0;
            }
        }
    }

    /// What a client at `since` missed of `key`.
    pub(crate) fn catch_up(&mut self, key: &StreamKey, since: Position, now_ms: u64) -> CatchUp {
        let e = self.entry(key, now_ms);
        let at = Position { epoch: e.epoch, seq: e.seq };
        if since.epoch != e.epoch || since.seq > e.seq {
            // Not a position of this incarnation of the stream.
            return CatchUp::Reset { at, reason: ResetReason::EpochChanged };
        }
        let keep = e.keep;
        let freed = e.ring.expire(&keep, now_ms);
        self.held -= freed;
        let e = self.entries.get_mut(key).expect("entry present");
        if since.seq == e.seq {
            return CatchUp::Replay { from: since.seq + 1, to: at, frames: Vec::new() };
        }
        match e.ring.oldest() {
            Some(oldest) if oldest <= since.seq + 1 => {
                let frames = e
                    .ring
                    .after(since.seq)
                    .filter(|s| !s.meta.as_ref().is_some_and(|m| m.expired(now_ms)))
                    .map(|s| Frame {
                        bytes: s.frame.clone(),
                        priority: s.priority,
                        kept: true,
                        meta: s.meta.clone(),
                    })
                    .collect();
                CatchUp::Replay { from: since.seq + 1, to: at, frames }
            }
            _ => CatchUp::Reset { at, reason: ResetReason::HistoryExceeded },
        }
    }

    /// Forgets streams with no message for the idle TTL unless `listened` says someone still
    /// follows them (their epoch must hold for those); trims every ring to its age. Returns
    /// how many streams were forgotten.
    pub(crate) fn expire(&mut self, now_ms: u64, listened: impl Fn(&StreamKey) -> bool) -> usize {
        let ttl = self.idle_ttl_ms;
        let before = self.entries.len();
        let mut freed = 0;
        self.entries.retain(|k, e| {
            let keep = e.keep;
            freed += e.ring.expire(&keep, now_ms);
            let stay = now_ms.saturating_sub(e.last_ms) < ttl || listened(k);
            if !stay {
                freed += e.ring.clear();
            }
            stay
        });
        self.held -= freed;
        let gone = before - self.entries.len();
        self.forgot_any |= gone > 0;
        gone
    }

    /// What the history API shows of `key`, without creating an entry for it.
    /// Messages whose ttl has passed at `now_ms` are left out, as from a replay.
    pub(crate) fn info(
        &self,
        key: &StreamKey,
        since: u64,
        limit: usize,
        now_ms: u64,
    ) -> StreamInfo {
        let Some(e) = self.entries.get(key) else {
            return StreamInfo {
                recoverable: self.rules.keep_for(key).keeps(),
                ..Default::default()
            };
        };
        StreamInfo {
            at: Some(Position { epoch: e.epoch, seq: e.seq }),
            recoverable: e.keep.keeps(),
            held: e.ring.len(),
            bytes: e.ring.bytes(),
            oldest: e.ring.oldest(),
            messages: e
                .ring
                .after(since)
                .filter(|s| !s.meta.as_ref().is_some_and(|m| m.expired(now_ms)))
                .take(limit)
                .map(|s| (s.seq, s.frame.clone()))
                .collect(),
        }
    }

    /// Frame bytes held in this shard's rings.
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::history::Guarantee;

    #[test]
    fn numbering_is_per_stream_and_survives_until_the_ttl() {
        let mut s = Streams::new(1000, 60_000);
        let ch = StreamKey::Channel("news".into());
        let user = StreamKey::User("news".into());
        assert_eq!(s.append(&ch, 1), Position { epoch: 1000, seq: 1 });
        assert_eq!(s.append(&ch, 2), Position { epoch: 1000, seq: 2 });
        assert_eq!(s.append(&user, 3).seq, 1, "a user and a channel of one name are apart");
        assert_eq!(s.append(&StreamKey::Broadcast, 3).seq, 1);
        assert_eq!(s.expire(50_000, |_| false), 0);
        assert_eq!(s.append(&ch, 50_000), Position { epoch: 1000, seq: 3 });
        // Idle past the TTL: forgotten; back again under a new epoch.
        assert_eq!(s.expire(100_000, |_| false), 2, "the user and broadcast streams went idle");
        assert_eq!(s.expire(200_000, |_| false), 1);
        assert!(s.is_empty());
        let back = s.append(&ch, 200_001);
        assert_eq!(back, Position { epoch: 200_001, seq: 1 });
        assert!(back > Position { epoch: 1000, seq: 3 }, "positions never repeat");
        // A stream someone follows keeps its epoch however long it is quiet.
        let quiet = StreamKey::Channel("quiet".into());
        assert_eq!(s.position(&quiet, 200_002).seq, 0);
        assert_eq!(s.expire(900_000, |k| *k == quiet), 1);
        assert_eq!(s.position(&quiet, 900_001).epoch, 200_002);
    }

    fn recoverable(size: usize, bytes: usize) -> Streams {
        let keep = Keep { guarantee: Guarantee::Recoverable, size, ttl_ms: 10_000, bytes };
        Streams::with_history(
            1000,
            60_000,
            Rules { rules: Vec::new(), default: keep, user_default: keep },
            1000,
        )
    }

    fn push(s: &mut Streams, key: &StreamKey, now: u64, len: usize) -> Position {
        s.append_with(key, now, (Priority::Normal, None), |p| Bytes::from(vec![p.seq as u8; len])).0
    }

    #[test]
    fn catch_up_replays_what_was_missed_or_says_why_not() {
        let mut s = recoverable(5, 1000);
        let ch = StreamKey::Channel("a".into());
        let start = s.position(&ch, 0);
        for t in 1..=8 {
            push(&mut s, &ch, t, 10);
        }
        let at = Position { epoch: 1000, seq: 8 };
        match s.catch_up(&ch, Position { epoch: 1000, seq: 5 }, 9) {
            CatchUp::Replay { from, to, frames } => {
                assert_eq!((from, to), (6, at));
                assert_eq!(frames.iter().map(|f| f.bytes[0]).collect::<Vec<_>>(), [6, 7, 8]);
            }
            r => panic!("{r:?}"),
        }
        assert_eq!(s.catch_up(&ch, at, 9), CatchUp::Replay { from: 9, to: at, frames: vec![] });
        assert_eq!(
            s.catch_up(&ch, start, 9),
            CatchUp::Reset { at, reason: ResetReason::HistoryExceeded },
            "seqs 1-3 are gone"
        );
        let old = Position { epoch: 7, seq: 8 };
        assert_eq!(
            s.catch_up(&ch, old, 9),
            CatchUp::Reset { at, reason: ResetReason::EpochChanged }
        );
        // Past the age cap nothing can be replayed.
        assert!(matches!(
            s.catch_up(&ch, Position { epoch: 1000, seq: 6 }, 20_000),
            CatchUp::Reset { reason: ResetReason::HistoryExceeded, .. }
        ));
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn the_budget_takes_the_oldest_of_the_largest_rings_first() {
        let mut s = recoverable(100, 1000);
        let (big, small) = (StreamKey::Channel("big".into()), StreamKey::Channel("small".into()));
        for t in 0..20 {
            push(&mut s, &small, t, 10);
        }
        for t in 0..90 {
            push(&mut s, &big, t, 10);
        }
        assert!(s.held() <= 1000, "{}", s.held());
        assert_eq!(s.entries[&small].ring.bytes(), 200, "the small ring is untouched");
        assert!(s.entries[&big].ring.oldest().unwrap() > 1);
    }
}
