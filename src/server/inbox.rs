//! Shard inboxes: one bounded crossbeam queue per shard, with one wake per batch. A sender
//! queues, then writes the shard's eventfd only if nobody has since the shard last woke (the
//! `notified` flag); the shard clears the flag before draining, so a message queued while it
//! drains either is drained now or wakes it again. When a queue is full the send fails and the
//! caller applies its policy (docs/architecture.md): a request is refused with 503, a delivery
//! is counted as dropped, a directory update is kept and retried next turn.

use std::sync::atomic::{AtomicBool, Ordering::AcqRel, Ordering::Release};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::sys::EventFd;
use crate::push::msg::ShardMsg;

#[derive(Debug)]
struct Peer {
    tx: Sender<ShardMsg>,
    wake: Arc<EventFd>,
    notified: AtomicBool,
}

/// Every shard's inbox, shared by the shards and the API.
#[derive(Debug)]
pub struct Router {
    peers: Vec<Peer>,
}

/// The receiving end a shard keeps.
#[derive(Debug)]
pub struct Inbox {
    pub rx: Receiver<ShardMsg>,
}

impl Router {
    /// Inboxes of `capacity` messages for shards with these wake fds.
    pub fn new(wakes: &[Arc<EventFd>], capacity: usize) -> (Arc<Router>, Vec<Inbox>) {
        let mut peers = Vec::with_capacity(wakes.len());
        let mut inboxes = Vec::with_capacity(wakes.len());
        for w in wakes {
            let (tx, rx) = crossbeam_channel::bounded(capacity);
            peers.push(Peer { tx, wake: w.clone(), notified: AtomicBool::new(false) });
            inboxes.push(Inbox { rx });
        }
        (Arc::new(Router { peers }), inboxes)
    }

    pub fn shards(&self) -> usize {
        self.peers.len()
    }

    /// Queues `msg` for `shard`; gives it back if the inbox is full (or the shard is gone).
    pub fn send(&self, shard: usize, msg: ShardMsg) -> Result<(), ShardMsg> {
        let Some(p) = self.peers.get(shard) else { return Err(msg) };
        match p.tx.try_send(msg) {
            Ok(()) => {
                if !p.notified.swap(true, AcqRel) {
                    p.wake.notify();
                }
                Ok(())
            }
            Err(TrySendError::Full(m)) | Err(TrySendError::Disconnected(m)) => Err(m),
        }
    }

    /// Called by `shard` when it wakes, before it drains its inbox.
    pub fn woke(&self, shard: usize) {
        if let Some(p) = self.peers.get(shard) {
            p.notified.store(false, Release);
        }
    }

    /// Messages waiting in `shard`'s inbox.
    pub fn depth(&self, shard: usize) -> usize {
        self.peers.get(shard).map_or(0, |p| p.tx.len())
    }
}
