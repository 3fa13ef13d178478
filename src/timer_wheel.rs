//! A hashed timer wheel with coarse ticks: O(1) insert and cancel, expiry in time
//! proportional to the slots passed plus the timers fired.
//!
//! The shard owns one wheel and is the only code that reads the clock; it converts the time to
//! ticks and calls [`TimerWheel::expire`]. Timers live in one node array with intrusive
//! doubly-linked lists per slot, so a timer costs 24 bytes and no allocation once the array
//! has grown. Rules: a [`TimerKey`] is dead once its timer fired (it was returned by
//! `expire`) or was cancelled, and must not be used again; `expire` hands fired timers back
//! in a vector rather than through a callback, so the caller may insert and cancel freely
//! while handling them.

const NIL: u32 = u32::MAX;

/// Handle to a pending timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerKey(u32);

#[derive(Clone, Copy, Debug)]
struct Node<T> {
    value: T,
    deadline: u64,
    prev: u32,
    /// Next node in the slot list, or in the free list for a free node.
    next: u32,
    live: bool,
}

#[derive(Debug)]
pub struct TimerWheel<T> {
    slots: Box<[u32]>,
    nodes: Vec<Node<T>>,
    free: u32,
    /// The last tick expired.
    now: u64,
    len: usize,
}

impl<T: Copy + Default> TimerWheel<T> {
    /// A wheel of `slots` slots (rounded up to a power of two), starting at tick `now`.
    pub fn new(slots: usize, now: u64) -> Self {
        let n = slots.next_power_of_two().max(2);
        TimerWheel {
            slots: vec![NIL; n].into_boxed_slice(),
            nodes: Vec::new(),
            free: NIL,
            now,
            len: 0,
        }
    }

    /// Reserves room for `n` more timers, so inserts do not reallocate.
    pub fn reserve(&mut self, n: usize) {
        self.nodes.reserve(n);
    }

    fn slot_of(&self, tick: u64) -> usize {
        (tick as usize) & (self.slots.len() - 1)
    }

    /// Schedules `value` to fire at tick `deadline`; a deadline not after the last expired
    /// tick fires at the next call to `expire`.
    pub fn insert(&mut self, deadline: u64, value: T) -> TimerKey {
        let deadline = deadline.max(self.now + 1);
        let slot = self.slot_of(deadline);
        let head = self.slots[slot];
        let node = Node { value, deadline, prev: NIL, next: head, live: true };
        let idx = if self.free != NIL {
            let idx = self.free;
            self.free = self.nodes[idx as usize].next;
            self.nodes[idx as usize] = node;
            idx
        } else {
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        };
        if head != NIL {
            self.nodes[head as usize].prev = idx;
        }
        self.slots[slot] = idx;
        self.len += 1;
        TimerKey(idx)
    }

    /// Cancels a pending timer and returns its value.
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        let node = *self.nodes.get(key.0 as usize)?;
        debug_assert!(node.live, "cancel of a dead timer key");
        if !node.live {
            return None;
        }
        self.unlink(key.0, node);
        Some(node.value)
    }

    /// The tick a pending timer fires at.
    pub(crate) fn deadline(&self, key: TimerKey) -> Option<u64> {
        self.nodes.get(key.0 as usize).filter(|n| n.live).map(|n| n.deadline)
    }

    fn unlink(&mut self, idx: u32, node: Node<T>) {
        if node.prev != NIL {
            self.nodes[node.prev as usize].next = node.next;
        } else {
            let slot = self.slot_of(node.deadline);
            self.slots[slot] = node.next;
        }
        if node.next != NIL {
            self.nodes[node.next as usize].prev = node.prev;
        }
        let n = &mut self.nodes[idx as usize];
        n.live = false;
        n.value = T::default();
        n.next = self.free;
        self.free = idx;
        self.len -= 1;
    }

    /// Advances to tick `now`, appending the value of every timer due by then to `fired`.
    pub fn expire(&mut self, now: u64, fired: &mut Vec<T>) {
        if now <= self.now {
            return;
        }
        // Visiting every slot once is enough however far the clock jumped: a node fires when
        // its own deadline has passed, whichever visit finds it.
        let steps = (now - self.now).min(self.slots.len() as u64);
        for i in 1..=steps {
            let slot = self.slot_of(self.now + i);
            let mut idx = self.slots[slot];
            while idx != NIL {
                let node = self.nodes[idx as usize];
                if node.deadline <= now {
                    self.unlink(idx, node);
                    fired.push(node.value);
                }
                idx = node.next;
            }
        }
        self.now = now;
    }
}

impl<T: Copy + Default> TimerWheel<T> {
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[cfg(test)]
    /// Pending timers.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fires_at_deadline_not_before() {
        let mut w = TimerWheel::<u32>::new(8, 0);
        w.insert(3, 1);
        w.insert(20, 2); // more than one turn of the wheel away
        let mut fired = Vec::new();
        w.expire(2, &mut fired);
        assert!(fired.is_empty());
        w.expire(3, &mut fired);
        assert_eq!(fired, vec![1]);
        w.expire(19, &mut fired);
        assert_eq!(fired, vec![1]);
        w.expire(1000, &mut fired);
        assert_eq!(fired, vec![1, 2]);
        assert!(w.is_empty());
    }

    #[test]
    fn cancel_unlinks_and_reuses_nodes() {
        let mut w = TimerWheel::<u32>::new(4, 0);
        let a = w.insert(5, 1);
        let b = w.insert(5, 2);
        let c = w.insert(5, 3);
        assert_eq!(w.cancel(b), Some(2));
        assert_eq!(w.deadline(b), None);
        let d = w.insert(9, 4);
        assert_eq!(d, b, "freed node reused");
        assert_eq!(w.cancel(a), Some(1));
        let mut fired = Vec::new();
        w.expire(9, &mut fired);
        fired.sort();
        assert_eq!(fired, vec![3, 4]);
        let _ = c;
    }

    #[test]
    fn past_deadlines_fire_next_tick() {
        let mut w = TimerWheel::<u32>::new(4, 10);
        w.insert(2, 7);
        let mut fired = Vec::new();
        w.expire(11, &mut fired);
        assert_eq!(fired, vec![7]);
    }

    proptest! {
        /// Against a plain model: every timer fires exactly once, at the first expire at or
        /// after its deadline, unless cancelled first.
        #[test]
        fn agrees_with_a_model(ops in proptest::collection::vec((0u8..3, 0u64..200), 1..300)) {
            let mut w = TimerWheel::<u32>::new(16, 0);
            let mut model: Vec<(TimerKey, u64, u32)> = Vec::new();
            let mut now = 0u64;
            let mut next = 0u32;
            for (op, arg) in ops {
                match op {
                    0 => {
                        let deadline = now + arg;
                        let k = w.insert(deadline, next);
                        model.push((k, deadline.max(now + 1), next));
                        next += 1;
                    }
                    1 if !model.is_empty() => {
                        let (k, _, v) = model.remove(arg as usize % model.len());
                        prop_assert_eq!(w.cancel(k), Some(v));
                    }
                    _ => {
                        now += arg % 40;
                        let mut fired = Vec::new();
                        w.expire(now, &mut fired);
                        fired.sort();
                        let mut due: Vec<u32> = model.iter().filter(|m| m.1 <= now).map(|m| m.2).collect();
                        due.sort();
                        model.retain(|m| m.1 > now);
                        prop_assert_eq!(fired, due);
                    }
                }
                prop_assert_eq!(w.len(), model.len());
            }
        }
    }
}
