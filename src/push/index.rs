//! The shard-local channel index: channel → the slots of this shard's subscribers.
//!
//! Rules: fan-out iterates [`ChannelIndex::subscribers`] while queueing frames into the
//! connection slab (a separate structure, so the borrow checker allows it). While iterating,
//! nothing may subscribe or unsubscribe: a connection found to need closing during fan-out is
//! recorded and closed after the iteration, and only then leaves the index. A connection must
//! leave every channel it joined before its slot is freed; the connection's own list of
//! channels (in its session) is what makes that possible.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// Hashes a slot number (u32) by Fibonacci multiplication: cheap, with good high bits.
#[derive(Default)]
pub struct SlotHasher(u64);

impl Hasher for SlotHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub(crate) type SlotSet = HashSet<u32, BuildHasherDefault<SlotHasher>>;

/// Outcome of a subscribe or unsubscribe, for the home shard's counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing changed (already subscribed, or not subscribed).
    None,
    /// The slot joined or left.
    Changed,
}

#[derive(Debug, Default)]
pub struct ChannelIndex {
    channels: HashMap<Arc<str>, SlotSet>,
}

impl ChannelIndex {
    pub fn subscribe(&mut self, channel: &Arc<str>, slot: u32) -> Change {
        let set = self.channels.entry(channel.clone()).or_default();
        if set.insert(slot) {
            Change::Changed
        } else {
            Change::None
        }
    }

    pub fn unsubscribe(&mut self, channel: &str, slot: u32) -> Change {
        let Some(set) = self.channels.get_mut(channel) else { return Change::None };
        if !set.remove(&slot) {
            return Change::None;
        }
        if set.is_empty() {
            self.channels.remove(channel);
        }
        Change::Changed
    }

    pub fn subscribers(&self, channel: &str) -> Option<&SlotSet> {
        self.channels.get(channel)
    }

    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn count(&self, channel: &str) -> usize {
        self.channels.get(channel).map_or(0, HashSet::len)
    }
}

impl ChannelIndex {
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn subscribe_and_leave() {
        let mut ix = ChannelIndex::default();
        let a: Arc<str> = "a".into();
        assert_eq!(ix.subscribe(&a, 1), Change::Changed);
        assert_eq!(ix.subscribe(&a, 1), Change::None);
        assert_eq!(ix.subscribe(&a, 2), Change::Changed);
        assert_eq!(ix.count("a"), 2);
        assert_eq!(ix.unsubscribe("a", 3), Change::None);
        assert_eq!(ix.unsubscribe("a", 1), Change::Changed);
        assert_eq!(ix.unsubscribe("a", 2), Change::Changed);
        assert!(ix.is_empty(), "empty channels are dropped");
    }

    proptest! {
        /// Against a model of (channel, slot) pairs.
        #[test]
        fn agrees_with_a_model(ops in proptest::collection::vec((any::<bool>(), 0u8..4, 0u32..6), 0..200)) {
            let mut ix = ChannelIndex::default();
            let mut model = std::collections::BTreeSet::new();
            let names: Vec<Arc<str>> = (0..4).map(|i| Arc::from(format!("ch{i}"))).collect();
            for (sub, c, s) in ops {
                let name = &names[c as usize];
                if sub {
                    prop_assert_eq!(ix.subscribe(name, s) == Change::Changed, model.insert((c, s)));
                } else {
                    prop_assert_eq!(ix.unsubscribe(name, s) == Change::Changed, model.remove(&(c, s)));
                }
                for (i, n) in names.iter().enumerate() {
                    let want: Vec<u32> = model.iter().filter(|(cc, _)| *cc as usize == i).map(|(_, s)| *s).collect();
                    let mut got: Vec<u32> = ix.subscribers(n).map(|s| s.iter().copied().collect()).unwrap_or_default();
                    got.sort();
                    prop_assert_eq!(got, want);
                }
            }
        }
    }
}
