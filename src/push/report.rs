//! Delivery reports, exact across shards. The API creates a [`Report`] and hands a
//! [`ReportPart`] with the request; whoever forwards work splits the part, and every part
//! adds its counts and is dropped when its work is done. The report completes when the last
//! part is dropped, so a message lost on the way (a full inbox, a shard shutting down) still
//! completes it rather than hanging the API call.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::AcqRel, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use futures_channel::oneshot;

#[derive(Debug)]
pub struct Report {
    /// When the API took the request: the shards measure publish-to-queued time from it.
    pub(crate) started: std::time::Instant,
    recipients: AtomicU64,
    queued: AtomicU64,
    dropped: AtomicU64,
    offline: AtomicU64,
    stored: AtomicU64,
    unsaved: AtomicU64,
    deferred: AtomicU64,
    conflated: AtomicU64,
    shed: AtomicU64,
    pending: AtomicI64,
    done: Mutex<Option<oneshot::Sender<()>>>,
    /// A push that waited for acknowledgements (`wait_ack_ms`): the devices that acknowledged
    /// it in time and those it was sent to that did not. Written once, by its home shard.
    acks: Mutex<Option<Acks>>,
}

/// Which devices acknowledged a durable push within its `wait_ack_ms`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acks {
    /// Devices whose cumulative ack reached the message, in the order they acked.
    pub acked: Vec<Arc<str>>,
    /// Devices it was sent to (at the push, or later from the mailbox) that did not.
    pub not_acked: Vec<Arc<str>>,
}

/// Counts of one delivery.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Connections addressed.
    pub recipients: u64,
    /// Frames queued to them.
    pub queued: u64,
    /// Frames not queued (outbox full, inbox full, connection gone).
    pub dropped: u64,
    /// Addressed users, or connections, with nothing connected.
    pub offline: u64,
    /// Messages of a durable stream kept for a recipient with nothing connected (its
    /// mailbox): delivered at its next connection.
    pub stored: u64,
    /// Messages of a durable stream the log could not take (it is failing): delivered where
    /// they could be, but not on disk; the API answers 503 for them.
    pub unsaved: u64,
    /// Frames a slow subscriber's outbox had no room for, which its channel's history will
    /// refill once it drains (gap repair): late, not lost.
    pub deferred: u64,
    /// Older frames with the same conflation key this one replaced in outboxes.
    pub conflated: u64,
    /// Frames the overload manager refused (low priority at the API; normal priority to the
    /// fullest outboxes), never queued.
    pub shed: u64,
}

impl Totals {
    /// One recipient's frame that did not fit: deferred when its stream's history will refill
    /// it, dropped otherwise.
    pub(crate) fn add_lost(&mut self, kept: bool) {
        if kept {
            self.deferred += 1;
        } else {
            self.dropped += 1;
        }
    }
}

impl Report {
    /// A report taken at `started`, its first part, and what completes when every part is gone.
    pub fn new(started: std::time::Instant) -> (Arc<Report>, ReportPart, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let r = Arc::new(Report {
            started,
            recipients: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            offline: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            unsaved: AtomicU64::new(0),
            deferred: AtomicU64::new(0),
            conflated: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            pending: AtomicI64::new(1),
            done: Mutex::new(Some(tx)),
            acks: Mutex::new(None),
        });
        (r.clone(), ReportPart(r), rx)
    }

    pub fn totals(&self) -> Totals {
        Totals {
            recipients: self.recipients.load(Relaxed),
            queued: self.queued.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            offline: self.offline.load(Relaxed),
            stored: self.stored.load(Relaxed),
            unsaved: self.unsaved.load(Relaxed),
            deferred: self.deferred.load(Relaxed),
            conflated: self.conflated.load(Relaxed),
            shed: self.shed.load(Relaxed),
        }
    }

    /// What the acknowledgement wait found (`None`: the push did not wait).
    pub fn acks(&self) -> Option<Acks> {
        self.acks.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A share of a delivery's work. Dropping it marks that share done.
#[derive(Debug)]
pub struct ReportPart(Arc<Report>);

impl ReportPart {
    /// Another share, for work forwarded elsewhere.
    pub(crate) fn split(&self) -> ReportPart {
        self.0.pending.fetch_add(1, AcqRel);
        ReportPart(self.0.clone())
    }

    /// Time from the API taking the request to `now`.
    pub(crate) fn elapsed(&self, now: std::time::Instant) -> std::time::Duration {
        now.saturating_duration_since(self.0.started)
    }

    /// Records what an acknowledgement wait found (before this part is dropped).
    pub(crate) fn set_acks(&self, acks: Acks) {
        *self.0.acks.lock().unwrap_or_else(|p| p.into_inner()) = Some(acks);
    }

    pub(crate) fn add(&self, t: Totals) {
        self.0.recipients.fetch_add(t.recipients, Relaxed);
        self.0.queued.fetch_add(t.queued, Relaxed);
        self.0.dropped.fetch_add(t.dropped, Relaxed);
        self.0.offline.fetch_add(t.offline, Relaxed);
        self.0.stored.fetch_add(t.stored, Relaxed);
        self.0.unsaved.fetch_add(t.unsaved, Relaxed);
        for (total, n) in [
            (&self.0.deferred, t.deferred),
            (&self.0.conflated, t.conflated),
            (&self.0.shed, t.shed),
        ] {
            if n > 0 {
                total.fetch_add(n, Relaxed);
            }
        }
    }
}

impl Drop for ReportPart {
    fn drop(&mut self) {
        if self.0.pending.fetch_sub(1, AcqRel) == 1 {
            let tx = self.0.done.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(tx) = tx {
                let _ = tx.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_when_the_last_part_drops() {
        let (r, part, mut rx) = Report::new(crate::clock::now());
        let a = part.split();
        let b = a.split();
        part.add(Totals { recipients: 1, queued: 1, ..Default::default() });
        drop(part);
        b.add(Totals { recipients: 2, queued: 1, dropped: 1, ..Default::default() });
        drop(b);
        assert_eq!(rx.try_recv(), Ok(None), "a part is still out");
        drop(a);
        assert_eq!(rx.try_recv(), Ok(Some(())));
        assert_eq!(
            r.totals(),
            Totals { recipients: 3, queued: 2, dropped: 1, ..Default::default() }
        );
    }

    #[test]
    fn parts_dropped_across_threads_complete_exactly_once() {
        let (r, part, rx) = Report::new(crate::clock::now());
        let parts: Vec<ReportPart> = (0..64).map(|_| part.split()).collect();
        drop(part);
        let handles: Vec<_> = parts
            .into_iter()
            .map(|p| std::thread::spawn(move || p.add(Totals { queued: 1, ..Default::default() })))
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(futures_executor_lite(rx), Ok(()));
        assert_eq!(r.totals().queued, 64);
    }

    fn futures_executor_lite(mut rx: oneshot::Receiver<()>) -> Result<(), oneshot::Canceled> {
        loop {
            if let Some(v) = rx.try_recv()? {
                return Ok(v);
            }
            std::thread::yield_now();
        }
    }
}
