//! Copy-forward: a closed log segment whose records are mostly settled is emptied by writing
//! its few live ones (mailbox entries, cursors, marks) again at the log's end, so the whole
//! segment can be deleted instead of being held by them for a mailbox's lifetime.

use super::super::journal::Rec;
use super::super::mailbox::Kept;
use super::super::streams::StreamKey;
use super::Home;

/// How often the home asks its log for segments to empty.
const EVERY_MS: u64 = 1000;

impl Home {
    /// At most once a second: the live records of mostly dead segments are written again.
    /// Returns how many were.
    pub(crate) fn copy_forward(&mut self, now_ms: u64) -> usize {
        if now_ms < self.next_copy_ms {
            return 0;
        }
        self.next_copy_ms = now_ms.saturating_add(EVERY_MS);
        let Some(j) = self.journal.as_mut() else { return 0 };
        let segments = j.to_copy_forward();
        if segments.is_empty() {
            return 0;
        }
        let streams = &mut self.streams;
        let mut body = Vec::new();
        let moved = self.mail.copy_forward(&segments, |user, kept| {
            let epoch = streams.position(&StreamKey::User(user.clone()), now_ms).epoch;
            body.clear();
            let kind = match kept {
                Kept::Push { seq, at_ms, frame, device, first_ack } => Rec::Push {
                    user,
                    epoch,
                    seq,
                    at_ms,
                    ttl_ms_at: frame.meta.as_ref().map_or(0, |m| m.expires_ms),
                    priority: frame.priority as u8,
                    first_ack,
                    device,
                    frame: &frame.bytes,
                }
                .encode(&mut body),
                Kept::Cursor { device, acked, at_ms } => {
                    Rec::Cursor { user, device, epoch, acked, at_ms }.encode(&mut body)
                }
                Kept::Mark { lost_upto, gone_upto } => {
                    Rec::Mark { user, epoch, lost_upto, gone_upto, at_ms: now_ms }.encode(&mut body)
                }
            };
            j.append(kind, &body)
        });
        self.settle_log(now_ms);
        moved
    }
}
