//! Start-up for the home service: its shard's log replayed record by record, before any
//! connection, into the same streams' numbering, mailboxes and device cursors.

use std::sync::Arc;

use super::super::journal::{self, Rec, RecordId};
use super::super::msg::{Frame, Meta, Priority};
use super::super::streams::{Position, StreamKey};
use super::Home;

impl Home {
    /// Replays one record of this shard's log (start-up, before any connection): the
    /// streams' numbering, the mailboxes and cursors come back as they were written. Returns
    /// false for a record this build cannot read (let go). Called as the log reads each
    /// record, before the home has its journal: what replay lets go and the marks it owes are
    /// kept until [`Home::replayed`] writes them.
    pub(crate) fn replay(&mut self, id: RecordId, kind: u8, body: &[u8]) -> bool {
        let Some(rec) = journal::decode(kind, body) else {
            self.mail.released.push(id);
            return false;
        };
        match rec {
            Rec::Push {
                user,
                epoch,
                seq,
                at_ms,
                ttl_ms_at,
                priority,
                first_ack,
                device,
                frame,
            } => {
                let user: Arc<str> = Arc::from(user);
                let key = StreamKey::User(user.clone());
                let keep = self.streams.keep(&key);
                if let Some(older) = self.streams.restore(&key, Position { epoch, seq }, at_ms) {
                    // The stream began again under a new epoch: what was kept of the old one
                    // is stale.
                    if older {
                        self.mail.released.push(id);
                        return true;
                    }
                    self.mail.forget(&user);
                }
                let ttl = (ttl_ms_at > 0).then(|| ttl_ms_at.saturating_sub(at_ms));
                let priority = match priority {
                    0 => Priority::Low,
                    2 => Priority::High,
                    _ => Priority::Normal,
                };
                let meta = (ttl_ms_at > 0)
                    .then(|| Arc::new(Meta { expires_ms: ttl_ms_at, conflate: None }));
                let bytes = bytes::Bytes::copy_from_slice(frame);
                let frame = Frame { bytes, priority, kept: true, meta };
                let device = device.map(Arc::from);
                self.mail.put(&user, seq, frame, device, first_ack, ttl, at_ms, &keep, Some(id));
            }
            Rec::Cursor { user, device, epoch, acked, at_ms } => {
                let user: Arc<str> = Arc::from(user);
                // A cursor names a position of its stream: with every message settled (their
                // records gone) it is what keeps the stream's numbering across the restart.
                if self.restore_position(&user, Position { epoch, seq: acked }, at_ms) {
                    let device: Arc<str> = Arc::from(device);
                    self.mail.restore_cursor(&user, &device, acked, at_ms, id, &self.p.mail);
                } else {
                    self.mail.released.push(id);
                }
            }
            Rec::Mark { user, epoch, lost_upto, gone_upto, at_ms } => {
                let user: Arc<str> = Arc::from(user);
                if self.restore_position(&user, Position { epoch, seq: lost_upto }, at_ms) {
                    self.mail.restore_mark(&user, (lost_upto, gone_upto), id);
                } else {
                    self.mail.released.push(id);
                }
            }
        }
        true
    }

    /// A replayed cursor or mark at `pos`: the stream's numbering goes on from at least there.
    /// False when `pos` is of an older epoch than the stream's (stale); a newer epoch begins
    /// the stream again, and what was replayed of the older one is forgotten.
    fn restore_position(&mut self, user: &Arc<str>, pos: Position, at_ms: u64) -> bool {
        match self.streams.restore(&StreamKey::User(user.clone()), pos, at_ms) {
            None => true,
            Some(true) => false,
            Some(false) => {
                self.mail.forget(user);
                true
            }
        }
    }

    /// Replay found records it could not read in this shard's log: every user stream it holds
    /// may have lost messages, so their devices are told `reset` at their next connection.
    pub(crate) fn replay_damaged(&mut self, now_ms: u64) {
        for user in self.mail.users() {
            let seq = self.streams.position(&StreamKey::User(user.clone()), now_ms).seq;
            self.mail.mark_lost(&user, seq);
        }
        self.settle_log(now_ms);
    }

    /// Replay is over: messages past their time go (and are marked lost for their devices).
    pub(crate) fn replayed(&mut self, now_ms: u64) {
        self.mail.settle_replayed();
        self.mail.expire(now_ms, &self.p.mail);
        self.settle_log(now_ms);
    }
}
