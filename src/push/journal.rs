//! What a home shard writes to its log for durable user streams, and reads back at start-up:
//! three record kinds, each a plain binary encoding (little-endian integers, strings with a
//! u16 length).
//!
//! - `Push`: a message of a durable user stream, with its position, times and frame: it is
//!   the mailbox entry. Live until the entry is settled, dropped or expires.
//! - `Cursor`: a device's acknowledged seq (the latest per device is live). Replaying it
//!   settles again what it settled.
//! - `Mark`: the highest seq of a user's stream dropped unsettled (caps, age, a `DELETE` of
//!   the mailbox), so a device behind it is told `reset` after a restart too, and the seq up
//!   to which every message is gone (a `DELETE`), so a replay does not bring back what it let
//!   go while its records wait for their segment to go (the latest is live).
//!
//! A record replayed out of its stream's current epoch is stale and ignored; a `Push` whose
//! time has passed is dropped at replay.

pub(crate) use ringcast_store::RecordId;

/// The log a home writes: `None` from `append` when the log cannot take the record (it is
/// failing): the message is then not durable, and the caller says so.
pub(crate) trait Journal: std::fmt::Debug + Send {
    fn append(&mut self, kind: u8, body: &[u8]) -> Option<RecordId>;
    fn release(&mut self, id: RecordId);
    /// Ends the turn: what was appended since the last seal is one commit (its number; `None`
    /// when there was nothing), reported durable later (`ShardMsg::Synced`).
    fn seal(&mut self) -> Result<Option<u64>, String>;
    /// Closed segments mostly dead whose few live records should be written again, so the
    /// segment can go (none by default).
    fn to_copy_forward(&self) -> Vec<u32> {
        Vec::new()
    }
}

pub(crate) const PUSH: u8 = 1;
pub(crate) const CURSOR: u8 = 2;
pub(crate) const MARK: u8 = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Rec<'a> {
    Push {
        user: &'a str,
        epoch: u64,
        seq: u64,
        at_ms: u64,
        /// The push's own `ttl` end (Unix ms; 0: none).
        ttl_ms_at: u64,
        priority: u8,
        first_ack: bool,
        device: Option<&'a str>,
        frame: &'a [u8],
    },
    Cursor {
        user: &'a str,
        device: &'a str,
        epoch: u64,
        acked: u64,
        at_ms: u64,
    },
    Mark {
        user: &'a str,
        epoch: u64,
        lost_upto: u64,
        /// Every message up to here is gone (0: none said so). Written after `at_ms`, so a
        /// mark of an earlier build, without it, still reads.
        gone_upto: u64,
        at_ms: u64,
    },
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let n = s.len().min(u16::MAX as usize);
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..n]);
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

impl Rec<'_> {
    /// The record's kind, and its body appended to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) -> u8 {
        match self {
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
                put_str(out, user);
                for v in [*epoch, *seq, *at_ms, *ttl_ms_at] {
                    put_u64(out, v);
                }
                out.push(*priority);
                out.push(u8::from(*first_ack) | if device.is_some() { 2 } else { 0 });
                put_str(out, device.unwrap_or(""));
                out.extend_from_slice(frame);
                PUSH
            }
            Rec::Cursor { user, device, epoch, acked, at_ms } => {
                put_str(out, user);
                put_str(out, device);
                for v in [*epoch, *acked, *at_ms] {
                    put_u64(out, v);
                }
                CURSOR
            }
            Rec::Mark { user, epoch, lost_upto, gone_upto, at_ms } => {
                put_str(out, user);
                for v in [*epoch, *lost_upto, *at_ms, *gone_upto] {
                    put_u64(out, v);
                }
                MARK
            }
        }
    }
}

struct Cut<'a>(&'a [u8]);

impl<'a> Cut<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (a, b) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.bytes(1)?[0])
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.bytes(8)?;
        Some(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }
    fn str(&mut self) -> Option<&'a str> {
        let b = self.bytes(2)?;
        let n = u16::from_le_bytes([b[0], b[1]]) as usize;
        std::str::from_utf8(self.bytes(n)?).ok()
    }
}

/// A record as replayed; `None` for a kind or body this build does not know (logged and
/// skipped by the caller).
pub(crate) fn decode(kind: u8, body: &[u8]) -> Option<Rec<'_>> {
    let mut c = Cut(body);
    match kind {
        PUSH => {
            let user = c.str()?;
            let (epoch, seq, at_ms, ttl_ms_at) = (c.u64()?, c.u64()?, c.u64()?, c.u64()?);
            let (priority, flags) = (c.u8()?, c.u8()?);
            let device = c.str()?;
            let device = (flags & 2 != 0).then_some(device);
            Some(Rec::Push {
                user,
                epoch,
                seq,
                at_ms,
                ttl_ms_at,
                priority,
                first_ack: flags & 1 != 0,
                device,
                frame: c.0,
            })
        }
        CURSOR => {
            let (user, device) = (c.str()?, c.str()?);
            let (epoch, acked, at_ms) = (c.u64()?, c.u64()?, c.u64()?);
            c.0.is_empty().then_some(Rec::Cursor { user, device, epoch, acked, at_ms })
        }
        MARK => {
            let user = c.str()?;
            let (epoch, lost_upto, at_ms) = (c.u64()?, c.u64()?, c.u64()?);
            let gone_upto = if c.0.is_empty() { 0 } else { c.u64()? };
            c.0.is_empty().then_some(Rec::Mark { user, epoch, lost_upto, gone_upto, at_ms })
        }
        _ => None,
    }
}

/// A journal in memory, for tests: every record appended and what was released, shared
/// with the test that reads them back.
#[cfg(test)]
#[derive(Clone, Debug, Default)]
pub(crate) struct MemJournal(pub(crate) std::sync::Arc<std::sync::Mutex<MemLog>>);

#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct MemLog {
    pub(crate) records: Vec<(RecordId, u8, Vec<u8>)>,
    pub(crate) released: Vec<RecordId>,
}

#[cfg(test)]
impl MemLog {
    /// The records still live, in order: what a replay would read.
    pub(crate) fn live(&self) -> Vec<(RecordId, u8, Vec<u8>)> {
        self.records.iter().filter(|r| !self.released.contains(&r.0)).cloned().collect()
    }
}

#[cfg(test)]
impl Journal for MemJournal {
    fn append(&mut self, kind: u8, body: &[u8]) -> Option<RecordId> {
        let mut l = self.0.lock().ok()?;
        let id = RecordId { segment: 1, offset: l.records.len() as u32 };
        l.records.push((id, kind, body.to_vec()));
        Some(id)
    }
    fn release(&mut self, id: RecordId) {
        if let Ok(mut l) = self.0.lock() {
            l.released.push(id);
        }
    }
    fn seal(&mut self) -> Result<Option<u64>, String> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_as_written_and_bad_bodies_are_none() {
        let recs = [
            Rec::Push {
                user: "42",
                epoch: 7,
                seq: 9,
                at_ms: 100,
                ttl_ms_at: 0,
                priority: 1,
                first_ack: true,
                device: Some("phone"),
                frame: b"\x81\x05hello",
            },
            Rec::Push {
                user: "u",
                epoch: 1,
                seq: 2,
                at_ms: 3,
                ttl_ms_at: 4,
                priority: 2,
                first_ack: false,
                device: None,
                frame: b"",
            },
            Rec::Cursor { user: "42", device: "", epoch: 7, acked: 8, at_ms: 200 },
            Rec::Mark { user: "42", epoch: 7, lost_upto: 3, gone_upto: 2, at_ms: 300 },
        ];
        for r in &recs {
            let mut body = Vec::new();
            let kind = r.encode(&mut body);
            assert_eq!(decode(kind, &body).as_ref(), Some(r));
            // Cut anywhere before the frame (which is the rest of a push): no record.
            let frame = match r {
                Rec::Push { frame, .. } => frame.len(),
                _ => 0,
            };
            for cut in 0..body.len() - frame {
                if let (Rec::Mark { user, epoch, lost_upto, at_ms, .. }, true) =
                    (r, cut == body.len() - 8)
                {
                    // An earlier build's mark: without `gone_upto`.
                    let old = Rec::Mark {
                        user,
                        epoch: *epoch,
                        lost_upto: *lost_upto,
                        gone_upto: 0,
                        at_ms: *at_ms,
                    };
                    assert_eq!(decode(kind, &body[..cut]), Some(old));
                    continue;
                }
                assert!(decode(kind, &body[..cut]).is_none(), "{r:?} cut at {cut}");
            }
        }
        assert_eq!(decode(99, b""), None);
    }
}
