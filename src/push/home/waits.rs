//! Pushes that wait for their devices' acknowledgements (`wait_ack_ms`): the report is held
//! until every device the message was sent to has acknowledged it (under `first_ack`, until
//! the first one has), or the wait is over; it then says which devices did and which did not.

use std::collections::HashMap;
use std::sync::Arc;

use super::super::report::{Acks, ReportPart};

/// What a push waits for: message `seq` acknowledged before `deadline_ms`, by the first
/// device or by every one, of `device` only when it was addressed to one.
#[derive(Debug)]
pub(super) struct Wait {
    pub(super) seq: u64,
    pub(super) deadline_ms: u64,
    pub(super) first_ack: bool,
    pub(super) device: Option<Arc<str>>,
}

#[derive(Debug)]
struct AckWait {
    seq: u64,
    deadline_ms: u64,
    first_ack: bool,
    /// The device the push was addressed to: no other one is waited for or counted.
    device: Option<Arc<str>>,
    /// Devices the message was sent to: at the push, and later from the mailbox.
    sent: Vec<Arc<str>>,
    acked: Vec<Arc<str>>,
    part: ReportPart,
}

impl AckWait {
    fn for_device(&self, device: &str) -> bool {
        self.device.as_deref().is_none_or(|d| d == device)
    }

    /// Done once some device acked and, unless the first settles it, every one it was sent to.
    fn settled(&self) -> bool {
        !self.acked.is_empty()
            && (self.first_ack || self.sent.iter().all(|d| self.acked.contains(d)))
    }

    fn finish(self) -> ReportPart {
        let not_acked = self.sent.into_iter().filter(|d| !self.acked.contains(d)).collect();
        self.part.set_acks(Acks { acked: self.acked, not_acked });
        self.part
    }
}

/// The pushes homed on one shard that wait for acks, by user.
#[derive(Debug, Default)]
pub(super) struct AckWaits {
    by_user: HashMap<Arc<str>, Vec<AckWait>>,
    /// The earliest deadline among them (`u64::MAX`: none).
    next_ms: u64,
}

impl AckWaits {
    pub(super) fn new() -> AckWaits {
        AckWaits { by_user: HashMap::new(), next_ms: u64::MAX }
    }

    /// Holds `part` until the push is acknowledged by the devices it was `sent` to (and
    /// those the mailbox sends it to later), or until its deadline.
    pub(super) fn add(
        &mut self,
        user: &Arc<str>,
        w: Wait,
        mut sent: Vec<Arc<str>>,
        part: ReportPart,
    ) {
        sent.sort_unstable();
        sent.dedup();
        self.next_ms = self.next_ms.min(w.deadline_ms);
        let Wait { seq, deadline_ms, first_ack, device } = w;
        let w = AckWait { seq, deadline_ms, first_ack, device, sent, acked: Vec::new(), part };
        self.by_user.entry(user.clone()).or_default().push(w);
    }

    /// A device of `user` connected: the mailbox sends it what it has not acknowledged
    /// (`pending`: the seqs it holds for that device).
    pub(super) fn joined(&mut self, user: &str, device: &Arc<str>, pending: &[u64]) {
        for w in self.by_user.get_mut(user).into_iter().flatten() {
            if w.for_device(device) && pending.contains(&w.seq) && !w.sent.contains(device) {
                w.sent.push(device.clone());
            }
        }
    }

    /// `device` acknowledged `user`'s stream up to `seq`: the reports this settles.
    pub(super) fn acked(&mut self, user: &str, device: &Arc<str>, seq: u64) -> Vec<ReportPart> {
        let Some(ws) = self.by_user.get_mut(user) else { return Vec::new() };
        for w in ws.iter_mut().filter(|w| w.seq <= seq && w.for_device(device)) {
            if !w.acked.contains(device) {
                w.acked.push(device.clone());
            }
            if !w.sent.contains(device) {
                w.sent.push(device.clone());
            }
        }
        let (done, keep): (Vec<_>, Vec<_>) =
            std::mem::take(ws).into_iter().partition(|w| w.settled());
        if keep.is_empty() {
            self.by_user.remove(user);
        } else {
            *ws = keep;
        }
        done.into_iter().map(AckWait::finish).collect()
    }

    /// The reports whose wait is over at `now_ms`.
    pub(super) fn due(&mut self, now_ms: u64) -> Vec<ReportPart> {
        if now_ms < self.next_ms {
            return Vec::new();
        }
        let mut done = Vec::new();
        let mut next = u64::MAX;
        self.by_user.retain(|_, ws| {
            let (over, keep): (Vec<_>, Vec<_>) =
                std::mem::take(ws).into_iter().partition(|w| w.deadline_ms <= now_ms);
            done.extend(over.into_iter().map(AckWait::finish));
            next = keep.iter().map(|w| w.deadline_ms).fold(next, u64::min);
            *ws = keep;
            !ws.is_empty()
        });
        self.next_ms = next;
        done
    }

    /// Pushes waiting for acks.
    pub(super) fn len(&self) -> usize {
        self.by_user.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::report::Report;

    fn dev(d: &str) -> Arc<str> {
        Arc::from(d)
    }

    fn wait(seq: u64, deadline_ms: u64, first_ack: bool, device: Option<&str>) -> Wait {
        Wait { seq, deadline_ms, first_ack, device: device.map(Arc::from) }
    }

    #[test]
    fn a_push_to_one_device_waits_for_that_device_and_only_for_what_it_was_sent() {
        let mut w = AckWaits::new();
        let u: Arc<str> = "u".into();
        let (r1, p1, _d1) = Report::new(crate::clock::now());
        let (r2, p2, _d2) = Report::new(crate::clock::now());
        w.add(&u, wait(3, 100, false, Some("a")), vec![], p1);
        w.add(&u, wait(4, 100, false, None), vec![dev("a")], p2);
        // b connects: the mailbox has nothing of 3 for it, and 4 went (expired) before.
        w.joined("u", &dev("b"), &[]);
        assert!(w.acked("u", &dev("b"), 9).is_empty(), "b's ack says nothing of a's message");
        w.joined("u", &dev("a"), &[3, 4]);
        assert_eq!(w.acked("u", &dev("a"), 4).len(), 2);
        assert_eq!(r1.acks(), Some(Acks { acked: vec![dev("a")], not_acked: vec![] }));
        let want = Acks { acked: vec![dev("b"), dev("a")], not_acked: vec![] };
        assert_eq!(r2.acks(), Some(want), "b acked 4 cumulatively");
    }

    #[test]
    fn a_wait_ends_when_every_device_it_went_to_acked_or_at_its_deadline() {
        let mut w = AckWaits::new();
        let u: Arc<str> = "u".into();
        let (r1, p1, _d1) = Report::new(crate::clock::now());
        let (r2, p2, _d2) = Report::new(crate::clock::now());
        w.add(&u, wait(5, 100, false, None), vec![dev("a"), dev("b")], p1);
        w.add(&u, wait(6, 200, false, None), vec![dev("a")], p2);
        assert!(w.acked("u", &dev("a"), 4).is_empty(), "below both");
        assert!(w.acked("u", &dev("a"), 5).is_empty(), "b has not acked 5");
        let done = w.acked("u", &dev("b"), 9);
        assert_eq!(done.len(), 1);
        drop(done);
        let want = Acks { acked: vec![dev("a"), dev("b")], not_acked: vec![] };
        assert_eq!(r1.acks(), Some(want));
        assert_eq!(w.len(), 1, "6 still waits for a");
        assert!(w.due(199).is_empty());
        drop(w.due(200));
        let want = Acks { acked: vec![dev("b")], not_acked: vec![dev("a")] };
        assert_eq!(r2.acks(), Some(want), "b acked 6 cumulatively; a never did");
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn under_first_ack_the_first_device_settles_it_and_a_stored_push_waits_for_any() {
        let mut w = AckWaits::new();
        let u: Arc<str> = "u".into();
        let (r1, p1, _d1) = Report::new(crate::clock::now());
        let (r2, p2, _d2) = Report::new(crate::clock::now());
        w.add(&u, wait(1, 100, true, None), vec![dev("a"), dev("b")], p1);
        w.add(&u, wait(2, 100, false, None), vec![], p2);
        w.joined("u", &dev("c"), &[1, 2]);
        assert_eq!(w.acked("u", &dev("b"), 1).len(), 1, "first_ack: b settles 1");
        assert_eq!(r1.acks().unwrap().not_acked, [dev("a"), dev("c")], "c got 1 at connect");
        assert!(w.acked("u", &dev("a"), 2).is_empty(), "c got 2 when it connected");
        assert_eq!(w.acked("u", &dev("c"), 2).len(), 1);
        assert_eq!(r2.acks().unwrap().acked, [dev("a"), dev("c")]);
    }
}
