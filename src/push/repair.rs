//! Gap repair: when a slow consumer's outbox has no room for a channel's message, the message is
//! not lost. The connection is held back on that channel from the message it missed, and once
//! its outbox drains, the channel's home replays what it missed from the history ring, in order,
//! after which it continues live. Where the ring no longer holds the start of the gap (or the
//! channel keeps no history), the client is told with a `reset` instead.
//!
//! One `Repairs` per shard, keyed by slab slot; a connection with no gap costs nothing here
//! (the shard keeps a flag on the connection so the fan-out checks the map only for those).
//! Pure: the shard tells it what happened and applies the effects it returns.
//!
//! Why this is exact: the home handles publishes and repair requests one at a time, and its
//! messages reach the connection's shard in one FIFO. Every message numbered before the home
//! reads the request is in the answer (or the answer says it is gone); every one numbered
//! after arrives behind the answer. Until the answer, the shard drops the channel's messages
//! for the connection: each of them is in the answer.

use std::collections::HashMap;
use std::sync::Arc;

use super::effect::{Effect, Effects};
use super::ids::{home_of, ConnId};
use super::msg::ShardMsg;

/// A channel a connection is missing messages of.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Gap {
    channel: Arc<str>,
    /// The connection has (or has queued) every message up to this seq.
    after: u64,
    /// The home has been asked; the answer is on its way.
    asked: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Repairs {
    gaps: HashMap<u32, Vec<Gap>>,
}

impl Repairs {
    /// Message `seq` of `channel` did not reach connection `slot` (its outbox was full, or the
    /// message was shed from it): the connection holds everything before it, unless an
    /// earlier gap is open. Returns whether this opened the connection's first gap.
    pub(crate) fn lost(&mut self, slot: u32, channel: &Arc<str>, seq: u64) -> bool {
        let gaps = self.gaps.entry(slot).or_default();
        let first = gaps.is_empty();
        let after = seq.saturating_sub(1);
        match gaps.iter_mut().find(|g| g.channel == *channel) {
            Some(g) if !g.asked => g.after = g.after.min(after),
            // A message lost while the answer is on its way is in the answer.
            Some(_) => {}
            None => gaps.push(Gap { channel: channel.clone(), after, asked: false }),
        }
        first
    }

    /// Whether the connection's messages of `channel` are held back (they will come from the
    /// history, or a `reset` will say they cannot).
    pub(crate) fn holds(&self, slot: u32, channel: &str) -> bool {
        self.gaps.get(&slot).is_some_and(|gs| gs.iter().any(|g| &*g.channel == channel))
    }

    /// The seq the connection has everything up to on `channel`, while a gap is open there.
    #[cfg(test)]
    pub(crate) fn after(&self, slot: u32, channel: &str) -> Option<u64> {
        self.gaps.get(&slot)?.iter().find(|g| &*g.channel == channel).map(|g| g.after)
    }

    /// The connection's outbox drained: ask the home of every gap not asked yet for what it
    /// missed.
    pub(crate) fn drained(&mut self, conn: ConnId, shards: usize, out: &mut Effects) {
        let Some(gaps) = self.gaps.get_mut(&conn.slot) else { return };
        for g in gaps.iter_mut().filter(|g| !g.asked) {
            g.asked = true;
            let msg = ShardMsg::Repair { channel: g.channel.clone(), conn, after: g.after };
            out.push_back(Effect::Update { shard: home_of(&g.channel, shards), msg });
        }
    }

    /// The home answered for `channel`: closes the gap and returns where it began, or `None`
    /// when no asked gap is open there (the connection left the channel since).
    pub(crate) fn answered(&mut self, slot: u32, channel: &str) -> Option<u64> {
        let gaps = self.gaps.get_mut(&slot)?;
        let i = gaps.iter().position(|g| &*g.channel == channel && g.asked)?;
        let g = gaps.swap_remove(i);
        if gaps.is_empty() {
            self.gaps.remove(&slot);
        }
        Some(g.after)
    }

    /// Whether connection `slot` has any gap open.
    pub(crate) fn any(&self, slot: u32) -> bool {
        self.gaps.contains_key(&slot)
    }

    /// The connection left `channel`: nothing to repair there.
    pub(crate) fn left(&mut self, slot: u32, channel: &str) {
        if let Some(gaps) = self.gaps.get_mut(&slot) {
            gaps.retain(|g| &*g.channel != channel);
            if gaps.is_empty() {
                self.gaps.remove(&slot);
            }
        }
    }

    /// The connection is gone.
    pub(crate) fn forget(&mut self, slot: u32) {
        self.gaps.remove(&slot);
    }

    /// Connections with a gap open (a gauge).
    pub(crate) fn open(&self) -> usize {
        self.gaps.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(slot: u32) -> ConnId {
        ConnId { shard: 0, slot, gen: 1 }
    }

    #[test]
    fn a_gap_starts_at_its_first_loss_and_is_asked_for_once_drained() {
        let mut r = Repairs::default();
        let a: Arc<str> = "a".into();
        assert!(r.lost(3, &a, 10), "the first gap");
        assert!(!r.lost(3, &a, 12));
        assert!(!r.lost(3, &a, 8), "an older frame shed later moves the start back");
        assert_eq!(r.after(3, "a"), Some(7));
        assert!(r.holds(3, "a") && !r.holds(3, "b") && !r.holds(4, "a"));
        let mut out = Effects::new();
        r.drained(conn(3), 4, &mut out);
        match out.pop_front() {
            Some(Effect::Update { shard, msg: ShardMsg::Repair { channel, after, .. } }) => {
                assert_eq!((shard, &*channel, after), (home_of("a", 4), "a", 7));
            }
            e => panic!("{e:?}"),
        }
        r.drained(conn(3), 4, &mut out);
        assert!(out.is_empty(), "asked once");
        // Lost while the answer travels: the answer covers it.
        r.lost(3, &a, 20);
        assert_eq!(r.after(3, "a"), Some(7));
        assert_eq!(r.answered(3, "b"), None);
        assert_eq!(r.answered(3, "a"), Some(7));
        assert!(!r.any(3) && r.open() == 0);
    }

    #[test]
    fn an_answer_nobody_asked_for_or_for_a_channel_left_is_ignored() {
        let mut r = Repairs::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        r.lost(1, &a, 5);
        assert_eq!(r.answered(1, "a"), None, "not asked yet");
        r.lost(1, &b, 9);
        r.left(1, "a");
        let mut out = Effects::new();
        r.drained(conn(1), 1, &mut out);
        assert_eq!(out.len(), 1, "only b is asked for");
        r.forget(1);
        assert!(!r.any(1) && r.answered(1, "b").is_none());
    }
}
