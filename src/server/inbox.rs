//! Shard inboxes: one bounded crossbeam queue per shard, with one wake per batch. A sender
//! queues, then writes the shard's eventfd only if nobody has since the shard last woke (the
//! `notified` flag); the shard clears the flag before draining, so a message queued while it
//! drains either is drained now or wakes it again. When a queue is full the send fails and the
//! caller applies its policy (docs/architecture.md): a request is refused with 503, a delivery
//! is counted as dropped, a directory update is kept and retried next turn.

use std::collections::VecDeque;
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
pub(crate) struct Inbox {
    pub(crate) rx: Receiver<ShardMsg>,
}

impl Router {
    /// Inboxes of `capacity` messages for shards with these wake fds.
    pub(crate) fn new(wakes: &[Arc<EventFd>], capacity: usize) -> (Arc<Router>, Vec<Inbox>) {
        let mut peers = Vec::with_capacity(wakes.len());
        let mut inboxes = Vec::with_capacity(wakes.len());
        for w in wakes {
            let (tx, rx) = crossbeam_channel::bounded(capacity);
            peers.push(Peer { tx, wake: w.clone(), notified: AtomicBool::new(false) });
            inboxes.push(Inbox { rx });
        }
        (Arc::new(Router { peers }), inboxes)
    }

    pub(crate) fn shards(&self) -> usize {
        self.peers.len()
    }

    /// Queues `msg` for `shard`; gives it back if the inbox is full (or the shard is gone).
    pub(crate) fn send(&self, shard: usize, msg: ShardMsg) -> Result<(), ShardMsg> {
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
    pub(crate) fn woke(&self, shard: usize) {
        if let Some(p) = self.peers.get(shard) {
            p.notified.store(false, Release);
        }
    }

    /// Messages waiting in `shard`'s inbox.
    pub(crate) fn depth(&self, shard: usize) -> usize {
        self.peers.get(shard).map_or(0, |p| p.tx.len())
    }
}

/// A shard's end of the mesh: its inbox, the router to every inbox, the messages it sends
/// itself (a FIFO handled after the input that sent them, never by recursion), and the updates
/// a full inbox refused (resent in order).
#[derive(Debug)]
pub(crate) struct Mesh {
    id: usize,
    pub(crate) router: Arc<Router>,
    inbox: Inbox,
    local: VecDeque<ShardMsg>,
    retry: VecDeque<(usize, ShardMsg)>,
}

impl Mesh {
    /// The inbox's backlog against its capacity (0 to 1).
    pub(crate) fn backlog(&self) -> f64 {
        let cap = self.inbox.rx.capacity().unwrap_or(0).max(1);
        self.inbox.rx.len() as f64 / cap as f64
    }

    pub(crate) fn new(id: usize, router: Arc<Router>, inbox: Inbox) -> Mesh {
        Mesh { id, router, inbox, local: VecDeque::new(), retry: VecDeque::new() }
    }

    pub(crate) fn shards(&self) -> usize {
        self.router.shards()
    }

    /// Whether this shard has sent itself a message not handled yet.
    pub(crate) fn has_local(&self) -> bool {
        !self.local.is_empty()
    }

    /// The next message this shard sent itself.
    pub(crate) fn next_local(&mut self) -> Option<ShardMsg> {
        self.local.pop_front()
    }

    /// The next message from the inbox (clear the wake flag with [`Mesh::woke`] first).
    pub(crate) fn next_inbox(&mut self) -> Option<ShardMsg> {
        self.inbox.rx.try_recv().ok()
    }

    pub(crate) fn woke(&self) {
        self.router.woke(self.id);
    }

    /// Sends a message that must not be lost (a directory update, a kick). Returns false if a
    /// full inbox (or earlier updates still waiting, to keep them in order) made it wait for a
    /// retry.
    pub(crate) fn update(&mut self, shard: usize, m: ShardMsg) -> bool {
        if shard == self.id {
            self.local.push_back(m);
            return true;
        }
        if !self.retry.is_empty() {
            self.retry.push_back((shard, m));
            return false;
        }
        match self.router.send(shard, m) {
            Ok(()) => true,
            Err(m) => {
                self.retry.push_back((shard, m));
                false
            }
        }
    }

    /// Sends a delivery; a full inbox gives it back.
    pub(crate) fn deliver(&mut self, shard: usize, m: ShardMsg) -> Result<(), ShardMsg> {
        if shard == self.id {
            self.local.push_back(m);
            return Ok(());
        }
        self.router.send(shard, m)
    }

    /// Resends refused updates, in order, until an inbox is full again.
    pub(crate) fn flush_retry(&mut self) {
        while let Some((shard, m)) = self.retry.pop_front() {
            if let Err(m) = self.router.send(shard, m) {
                self.retry.push_front((shard, m));
                break;
            }
        }
    }
}
