//! What each stream keeps of its past: the guarantee its name gets (`ephemeral` keeps nothing,
//! `recoverable` keeps a ring), from the first `[[streams]]` rule whose pattern matches, and the
//! ring itself, capped by count, bytes and age. A ring holds the encoded frames, so a replay
//! sends the very bytes live subscribers got.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use super::msg::{Meta, Priority};

use super::streams::StreamKey;

/// What a stream promises about messages a client missed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guarantee {
    /// No history: a client that was away is told (`reset`) and continues live.
    Ephemeral,
    /// A history ring in memory on the stream's home shard.
    Recoverable,
    /// User streams: every message is acknowledged by the client, redelivered until it is,
    /// and kept in the user's mailbox while a device has not acknowledged it (the caps of
    /// its `Keep` are the mailbox's).
    Durable,
}

impl Guarantee {
    pub fn parse(s: &str) -> Option<Guarantee> {
        match s {
            "ephemeral" => Some(Guarantee::Ephemeral),
            "recoverable" => Some(Guarantee::Recoverable),
            "durable" => Some(Guarantee::Durable),
            _ => None,
        }
    }
}

/// The caps of one stream's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keep {
    pub guarantee: Guarantee,
    /// Most messages kept.
    pub size: usize,
    /// Oldest message kept (ms).
    pub ttl_ms: u64,
    /// Most frame bytes kept.
    pub bytes: usize,
}

impl Keep {
    pub const NOTHING: Keep =
        Keep { guarantee: Guarantee::Ephemeral, size: 0, ttl_ms: 0, bytes: 0 };

    /// Whether the stream keeps a history ring.
    pub fn keeps(&self) -> bool {
        self.guarantee == Guarantee::Recoverable && self.size > 0 && self.bytes > 0
    }

    /// Whether the stream's messages are acknowledged and kept in a mailbox.
    pub fn durable(&self) -> bool {
        self.guarantee == Guarantee::Durable
    }
}

/// A `[[streams]]` rule: streams whose wire name matches `pattern` get `keep`. A pattern is a
/// channel name (`prices.*`), `user:` and a user name (`user:*`), or `broadcast`; `*` matches
/// any run of characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub pattern: String,
    pub keep: Keep,
}

/// Every rule, and the defaults when none matches: channels recoverable (`default`), user
/// streams durable (`user_default`), the broadcast ephemeral.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    pub rules: Vec<Rule>,
    pub default: Keep,
    pub user_default: Keep,
}

impl Rules {
    /// What a stream keeps: the first matching rule, else the default (the broadcast is
    /// ephemeral unless a rule names it).
    pub fn keep_for(&self, key: &StreamKey) -> Keep {
        let (name, prefix) = match key {
            StreamKey::Channel(c) => (&**c, ""),
            StreamKey::User(u) => (&**u, "user:"),
            StreamKey::Broadcast => ("broadcast", ""),
        };
        for r in &self.rules {
            let matched = match key {
                StreamKey::Broadcast => r.pattern == "broadcast",
                _ => r.pattern.strip_prefix(prefix).is_some_and(|p| {
                    (prefix.is_empty() != r.pattern.starts_with("user:")) && glob(p, name)
                }),
            };
            if matched {
                return r.keep;
            }
        }
        match key {
            StreamKey::Broadcast => Keep::NOTHING,
            StreamKey::User(_) => self.user_default,
            StreamKey::Channel(_) => self.default,
        }
    }
}

pub use crate::proto::client::glob;

/// One kept message.
#[derive(Clone, Debug)]
pub struct Stored {
    pub seq: u64,
    pub at_ms: u64,
    pub frame: Bytes,
    /// The lane it was delivered in: a replay goes in the same one, so the stream's live
    /// messages cannot overtake it.
    pub priority: Priority,
    /// Its expiry and conflation key, if the publisher gave any: an expired message is not
    /// replayed.
    pub meta: Option<Arc<Meta>>,
}

/// A stream's history ring.
#[derive(Debug, Default)]
pub struct Ring {
    entries: VecDeque<Stored>,
    bytes: usize,
}

impl Ring {
    /// Keeps a message within `keep`'s caps; returns the change in bytes held (may be negative).
    pub fn push(&mut self, s: Stored, keep: &Keep, now_ms: u64) -> isize {
        if !keep.keeps() {
            return -(self.clear() as isize);
        }
        let before = self.bytes;
        self.bytes += s.frame.len();
        self.entries.push_back(s);
        while self.entries.len() > keep.size || self.bytes > keep.bytes {
            self.pop_oldest();
        }
        self.expire(keep, now_ms);
        self.bytes as isize - before as isize
    }

    /// Drops messages older than the ttl; returns the bytes freed.
    pub fn expire(&mut self, keep: &Keep, now_ms: u64) -> usize {
        let before = self.bytes;
        while self.entries.front().is_some_and(|e| now_ms.saturating_sub(e.at_ms) >= keep.ttl_ms) {
            self.pop_oldest();
        }
        before - self.bytes
    }

    /// Drops the oldest message; returns the bytes freed.
    pub fn pop_oldest(&mut self) -> usize {
        match self.entries.pop_front() {
            Some(e) => {
                self.bytes -= e.frame.len();
                e.frame.len()
            }
            None => 0,
        }
    }

    pub fn clear(&mut self) -> usize {
        let b = self.bytes;
        self.entries.clear();
        self.bytes = 0;
        b
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The oldest seq held.
    pub fn oldest(&self) -> Option<u64> {
        self.entries.front().map(|e| e.seq)
    }

    /// The messages after `seq`, oldest first.
    pub fn after(&self, seq: u64) -> impl Iterator<Item = &Stored> {
        // Seqs in a ring are consecutive, so the start is found by subtraction.
        let skip = match self.oldest() {
            Some(o) if seq >= o => (seq - o + 1) as usize,
            _ => 0,
        };
        self.entries.iter().skip(skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: Keep =
        Keep { guarantee: Guarantee::Recoverable, size: 3, ttl_ms: 1000, bytes: 100 };

    fn stored(seq: u64, at_ms: u64, len: usize) -> Stored {
        Stored {
            seq,
            at_ms,
            frame: Bytes::from(vec![0u8; len]),
            priority: Priority::Normal,
            meta: None,
        }
    }

    #[test]
    fn globs_match_runs() {
        for (p, n, want) in [
            ("prices.*", "prices.eur", true),
            ("prices.*", "prices.", true),
            ("prices.*", "price", false),
            ("*", "x", true),
            ("a*b*c", "aXXbYc", true),
            ("a*b*c", "aXXbY", false),
            ("news", "news", true),
            ("news", "newsx", false),
        ] {
            assert_eq!(glob(p, n), want, "{p} {n}");
        }
    }

    #[test]
    fn rules_pick_the_first_match_by_kind_of_stream() {
        let eph = Keep { guarantee: Guarantee::Ephemeral, ..KEEP };
        let big = Keep { size: 1000, ..KEEP };
        let rules = Rules {
            rules: vec![
                Rule { pattern: "ticks.*".into(), keep: eph },
                Rule { pattern: "user:vip*".into(), keep: big },
                Rule { pattern: "*".into(), keep: big },
            ],
            default: KEEP,
            user_default: eph,
        };
        assert_eq!(rules.keep_for(&StreamKey::Channel("ticks.x".into())), eph);
        assert_eq!(rules.keep_for(&StreamKey::Channel("news".into())), big);
        assert_eq!(rules.keep_for(&StreamKey::User("vip1".into())), big);
        assert_eq!(rules.keep_for(&StreamKey::User("u1".into())), eph, "`*` is for channels");
        assert_eq!(rules.keep_for(&StreamKey::Broadcast), Keep::NOTHING);
    }

    #[test]
    fn a_ring_keeps_within_count_bytes_and_age() {
        let mut r = Ring::default();
        for seq in 1..=5 {
            r.push(stored(seq, seq * 10, 10), &KEEP, seq * 10);
        }
        assert_eq!((r.oldest(), r.bytes()), (Some(3), 30), "count cap");
        assert_eq!(r.after(3).map(|s| s.seq).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(r.after(0).count(), 3);
        r.push(stored(6, 60, 90), &KEEP, 60);
        assert_eq!((r.oldest(), r.bytes()), (Some(5), 100), "byte cap");
        assert_eq!(r.expire(&KEEP, 1055), 10, "age cap");
        assert_eq!(r.expire(&KEEP, 1060), 90);
        assert_eq!(r.oldest(), None);
        let eph = Keep { guarantee: Guarantee::Ephemeral, ..KEEP };
        assert_eq!(r.push(stored(7, 0, 10), &eph, 0), 0);
        assert_eq!(r.oldest(), None);
    }
}
