//! A connection's queue of frames waiting for the socket, in three priority lanes. Frames are
//! reference-counted `Bytes`, so a frame shared by many connections is queued by reference;
//! everything queued goes out in one gather write per turn of the shard loop, high lane first.
//! Protocol frames (101, welcome, acks, pongs) travel in the high lane. The close frame goes
//! at the back of the low lane, which is written last, and nothing is queued after it, so it
//! is the last frame sent (RFC 6455 §5.5.1).
//!
//! When a push does not fit (`--outbox-max-bytes` / `--outbox-max-frames`), queued frames of
//! *lower* priority are dropped, lowest lane and oldest first, until it fits; if that is not
//! enough, the new frame is dropped. Control frames bypass the caps.
//!
//! A push may carry what its publisher asked beyond the data ([`Meta`]): an expiry, after which
//! it is dropped rather than written, and a conflation key, by which a later push replaces it
//! while it still waits. Those are kept in a side list naming their frames, so the lanes stay
//! plain `Bytes` and a push without them costs nothing more.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;

use bytes::Bytes;

use crate::push::msg::{Frame, Meta, Priority};

/// Most slices handed to one gather write (the kernel's IOV_MAX is 1024).
const MAX_IOV: usize = 64;

#[derive(Debug, Default)]
pub struct Outbox {
    /// Indexed by `Priority as usize`: low, normal, high.
    lanes: [VecDeque<Bytes>; 3],
    /// A frame partly written, and how much of it went out; it goes first.
    head: Option<(Bytes, usize)>,
    bytes: usize,
    frames: usize,
    /// What their publishers asked of the queued frames that have a `Meta`, by the address of
    /// their bytes (each message is its own allocation, queued once per connection). Empty,
    /// and unallocated, for most outboxes.
    metas: Vec<(usize, Arc<Meta>)>,
}

fn addr(b: &Bytes) -> usize {
    b.as_ptr() as usize
}

/// How a flush ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything was written.
    All,
    /// The socket buffer is full; wait for writability.
    Blocked,
}

/// What queueing a push did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Queued {
    /// The frame itself was queued.
    pub queued: bool,
    /// Older, lower-priority frames dropped to make room.
    pub(crate) evicted: usize,
    /// An older frame with the same conflation key it replaced.
    pub(crate) conflated: bool,
}

impl Outbox {
    /// Queues a frame regardless of the caps (control frames, handshake responses, echoes).
    pub(crate) fn push(&mut self, frame: Bytes, p: Priority) {
        self.bytes += frame.len();
        self.frames += 1;
        self.lanes[p as usize].push_back(frame);
    }

    /// Takes a frame's counts off (it has left a lane), and its `Meta` if it had one.
    fn forget(&mut self, b: &Bytes) {
        self.bytes -= b.len();
        self.frames -= 1;
        self.forget_meta(b);
    }

    fn forget_meta(&mut self, b: &Bytes) {
        if !self.metas.is_empty() {
            if let Some(i) = self.metas.iter().position(|(a, _)| *a == addr(b)) {
                self.metas.swap_remove(i);
            }
        }
    }

    /// Queues the close frame behind everything already queued (the back of the low lane,
    /// which is written last); the caller queues nothing after it. With `discard`, the queued
    /// normal and low pushes are dropped first (not a frame already half-written, and not the
    /// high lane, which holds protocol frames and high-priority pushes); returns how many.
    pub(crate) fn close(&mut self, frame: Bytes, discard: bool) -> usize {
        let mut dropped = 0;
        if discard {
            for lane in [Priority::Low, Priority::Normal] {
                for b in std::mem::take(&mut self.lanes[lane as usize]) {
                    self.forget(&b);
                    dropped += 1;
                }
            }
        }
        self.push(frame, Priority::Low);
        dropped
    }

    /// Queues a push within the caps, shedding lower priorities first (the frames shed go into
    /// `shed`, so the caller can tell which streams lost what). A push with a conflation key
    /// first replaces the older frame with the same key still waiting, wherever it is queued.
    /// An empty outbox always takes one frame, however large: the caps bound the queue, not
    /// the message (whose size the API bounds).
    pub fn push_bounded(
        &mut self,
        frame: &Frame,
        (max_bytes, max_frames): (usize, usize),
        shed: &mut Vec<Bytes>,
    ) -> Queued {
        let p = frame.priority;
        let mut conflated = false;
        if let Some(key) = frame.meta.as_ref().and_then(|m| m.conflate.as_ref()) {
            if !self.metas.is_empty() {
                conflated = self.take_conflated(key);
            }
        }
        let len = frame.bytes.len();
        let fits =
            |o: &Outbox| o.frames == 0 || (o.bytes + len <= max_bytes && o.frames < max_frames);
        let mut evicted = 0;
        'shed: for lane in 0..(p as usize) {
            while !fits(self) {
                match self.lanes[lane].pop_front() {
                    Some(b) => {
                        self.forget(&b);
                        evicted += 1;
                        shed.push(b);
                    }
                    None => continue 'shed,
                }
            }
            break;
        }
        if !fits(self) {
            return Queued { queued: false, evicted, conflated };
        }
        if let Some(m) = &frame.meta {
            self.metas.push((addr(&frame.bytes), m.clone()));
        }
        self.push(frame.bytes.clone(), p);
        Queued { queued: true, evicted, conflated }
    }

    /// Takes out the queued frame with conflation key `key`, if one waits (at most one does:
    /// each replaced the one before). Not a frame already half-written.
    fn take_conflated(&mut self, key: &str) -> bool {
        let Some(i) = self.metas.iter().position(|(_, m)| m.conflate.as_deref() == Some(key))
        else {
            return false;
        };
        let (a, _) = self.metas.swap_remove(i);
        self.remove_at(a)
    }

    /// Takes the frame at address `a` out of its lane (its `Meta` is gone already).
    fn remove_at(&mut self, a: usize) -> bool {
        for lane in &mut self.lanes {
            if let Some(i) = lane.iter().position(|b| addr(b) == a) {
                if let Some(b) = lane.remove(i) {
                    self.bytes -= b.len();
                    self.frames -= 1;
                    return true;
                }
            }
        }
        false
    }

    /// Drops the frames whose expiry has passed at `now_ms` (not a frame already
    /// half-written); returns how many.
    pub(crate) fn expire(&mut self, now_ms: u64) -> usize {
        if self.metas.is_empty() {
            return 0;
        }
        let mut n = 0;
        let mut i = 0;
        while i < self.metas.len() {
            if self.metas[i].1.expired(now_ms) {
                let (a, _) = self.metas.swap_remove(i);
                n += usize::from(self.remove_at(a));
            } else {
                i += 1;
            }
        }
        n
    }

    /// Drops the queued frames `drop` picks (not a frame already half-written); returns how
    /// many.
    pub(crate) fn purge(&mut self, mut drop: impl FnMut(&Bytes) -> bool) -> usize {
        let mut n = 0;
        let mut gone = Vec::new();
        for lane in &mut self.lanes {
            lane.retain(|b| {
                let out = drop(b);
                if out {
                    gone.push(b.clone());
                }
                !out
            });
        }
        for b in &gone {
            self.forget(b);
            n += 1;
        }
        n
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn frames(&self) -> usize {
        self.frames
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// Writes as much as `write` accepts, in gather writes of up to 64 frames, high lane
    /// first. Returns how it ended and the bytes written.
    pub fn flush(
        &mut self,
        mut write: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<(Flushed, usize)> {
        let mut total = 0;
        while !self.is_empty() {
            let mut iov: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            if let Some((f, off)) = &self.head {
                iov[0] = IoSlice::new(&f[*off..]);
                n = 1;
            }
            'fill: for lane in self.lanes.iter().rev() {
                for e in lane {
                    if n == MAX_IOV {
                        break 'fill;
                    }
                    iov[n] = IoSlice::new(e);
                    n += 1;
                }
            }
            let written = match write(&iov[..n]) {
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok((Flushed::Blocked, total))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            total += written;
            self.consume(written);
        }
        Ok((Flushed::All, total))
    }

    /// Drops what was written, in the order `flush` laid it out.
    fn consume(&mut self, mut n: usize) {
        self.bytes -= n;
        if let Some((f, off)) = &mut self.head {
            let left = f.len() - *off;
            if n < left {
                *off += n;
                return;
            }
            n -= left;
            self.head = None;
            self.frames -= 1;
        }
        for lane in (0..3).rev() {
            while n > 0 {
                let Some(front) = self.lanes[lane].pop_front() else { break };
                // Written, or half-written: past expiring or being replaced either way.
                self.forget_meta(&front);
                if n >= front.len() {
                    n -= front.len();
                    self.frames -= 1;
                } else {
                    self.head = Some((front, n));
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fr(bytes: Bytes, priority: Priority) -> Frame {
        Frame { bytes, priority, kept: false, meta: None }
    }

    fn with(bytes: &'static str, expires_ms: u64, conflate: Option<&str>) -> Frame {
        let meta = Meta { expires_ms, conflate: conflate.map(Into::into) };
        Frame {
            meta: Some(Arc::new(meta)),
            ..fr(Bytes::from_static(bytes.as_bytes()), Priority::Normal)
        }
    }

    #[test]
    fn a_later_push_with_the_same_key_replaces_the_one_waiting() {
        let mut o = Outbox::default();
        let mut shed = Vec::new();
        let caps = (1000, 100);
        assert!(!o.push_bounded(&with("a1", 0, Some("s\0a")), caps, &mut shed).conflated);
        assert!(!o.push_bounded(&with("b1", 0, Some("s\0b")), caps, &mut shed).conflated);
        o.push(Bytes::from_static(b"x"), Priority::Normal);
        let q = o.push_bounded(&with("a2", 0, Some("s\0a")), caps, &mut shed);
        assert!(q.queued && q.conflated);
        assert!(
            !o.push_bounded(&with("a3", 0, Some("t\0a")), caps, &mut shed).conflated,
            "another stream's key"
        );
        assert_eq!((o.frames(), o.bytes()), (4, 7));
        assert_eq!(
            drain_all(&mut o),
            b"b1xa2a3",
            "the latest value, behind what was queued before it"
        );
        assert!(o.metas.is_empty());
    }

    #[test]
    fn expired_pushes_are_not_written() {
        let mut o = Outbox::default();
        let mut shed = Vec::new();
        let caps = (1000, 100);
        o.push_bounded(&with("e1", 100, None), caps, &mut shed);
        o.push_bounded(&fr(Bytes::from_static(b"k"), Priority::Normal), caps, &mut shed);
        o.push_bounded(&with("e2", 200, None), caps, &mut shed);
        assert_eq!(o.expire(99), 0);
        assert_eq!(o.expire(100), 1, "due at 100");
        assert_eq!((o.frames(), o.bytes(), o.metas.len()), (2, 3, 1));
        assert_eq!(o.expire(500), 1);
        assert_eq!(drain_all(&mut o), b"k");
    }

    fn drain_all(o: &mut Outbox) -> Vec<u8> {
        let mut sink = Vec::new();
        o.flush(|iov| {
            let n = iov.iter().map(|s| s.len()).sum();
            for s in iov {
                sink.extend_from_slice(s);
            }
            Ok(n)
        })
        .unwrap();
        sink
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut o = Outbox::default();
        for s in ["hello ", "wide ", "world"] {
            o.push(Bytes::from_static(s.as_bytes()), Priority::Normal);
        }
        let mut sink = Vec::new();
        let budget = [4usize, 3, 0];
        let mut call = 0;
        let r = o.flush(|iov| {
            let cap = budget.get(call).copied().unwrap_or(0);
            call += 1;
            if cap == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut left = cap;
            for s in iov {
                let k = left.min(s.len());
                sink.extend_from_slice(&s[..k]);
                left -= k;
            }
            Ok(cap)
        });
        assert_eq!(r.unwrap(), (Flushed::Blocked, 7));
        assert_eq!(sink, b"hello w");
        assert_eq!(o.bytes(), 9);
        // A high-priority frame queued now goes after the half-written one, before the rest.
        o.push(Bytes::from_static(b"!"), Priority::High);
        sink.extend(drain_all(&mut o));
        assert_eq!(sink, b"hello wide !world");
        assert!(o.is_empty());
        assert_eq!((o.bytes(), o.frames()), (0, 0));
    }

    #[test]
    fn the_close_frame_goes_last_and_discard_keeps_the_high_lane_and_the_head() {
        let f = |s: &'static str| Bytes::from_static(s.as_bytes());
        let mut o = Outbox::default();
        o.push(f("l"), Priority::Low);
        o.push(f("n"), Priority::Normal);
        o.push(f("h"), Priority::High);
        assert_eq!(o.close(f("C"), false), 0);
        assert_eq!(drain_all(&mut o), b"hnlC");
        // Half of a normal frame is out; a discarding close keeps it (the stream stays valid)
        // and the high lane, and drops the rest.
        let mut o = Outbox::default();
        o.push(f("nn"), Priority::Normal);
        o.push(f("n2"), Priority::Normal);
        o.push(f("l1"), Priority::Low);
        let mut first = true;
        let r = o.flush(|_| {
            if std::mem::take(&mut first) {
                Ok(1)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            }
        });
        assert_eq!(r.unwrap(), (Flushed::Blocked, 1));
        o.push(f("h"), Priority::High);
        assert_eq!(o.close(f("C"), true), 2);
        assert_eq!(drain_all(&mut o), b"nhC");
        assert_eq!((o.bytes(), o.frames()), (0, 0));
    }

    #[test]
    fn purge_drops_what_it_picks_but_not_the_half_written_frame() {
        let f = |s: &'static str| Bytes::from_static(s.as_bytes());
        let mut o = Outbox::default();
        o.push(f("a1"), Priority::Normal);
        o.push(f("b1"), Priority::Normal);
        o.push(f("a2"), Priority::Low);
        let mut first = true;
        let _ = o.flush(|_| {
            if std::mem::take(&mut first) {
                Ok(1)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            }
        });
        assert_eq!(o.purge(|x| x[0] == b'a'), 1, "a1 is half out and stays");
        assert_eq!((o.bytes(), o.frames()), (3, 2));
        assert_eq!(drain_all(&mut o), b"1b1");
    }

    #[test]
    fn high_goes_first() {
        let mut o = Outbox::default();
        o.push(Bytes::from_static(b"l"), Priority::Low);
        o.push(Bytes::from_static(b"n"), Priority::Normal);
        o.push(Bytes::from_static(b"h"), Priority::High);
        assert_eq!(drain_all(&mut o), b"hnl");
    }

    #[test]
    fn full_outbox_sheds_lower_priorities_oldest_first() {
        let mut o = Outbox::default();
        let mut shed = Vec::new();
        let f = |s: &'static str| Bytes::from_static(s.as_bytes());
        assert!(o.push_bounded(&fr(f("l1"), Priority::Low), (6, 10), &mut shed).queued);
        assert!(o.push_bounded(&fr(f("l2"), Priority::Low), (6, 10), &mut shed).queued);
        assert!(o.push_bounded(&fr(f("n1"), Priority::Normal), (6, 10), &mut shed).queued);
        // Full (6 bytes): a low push finds nothing lower to shed and is dropped.
        assert_eq!(
            o.push_bounded(&fr(f("l3"), Priority::Low), (6, 10), &mut shed),
            Queued { queued: false, evicted: 0, conflated: false }
        );
        // A high push sheds the oldest low frame.
        assert_eq!(
            o.push_bounded(&fr(f("h1"), Priority::High), (6, 10), &mut shed),
            Queued { queued: true, evicted: 1, conflated: false }
        );
        // A normal push sheds the remaining low frame.
        assert_eq!(
            o.push_bounded(&fr(f("n2"), Priority::Normal), (6, 10), &mut shed),
            Queued { queued: true, evicted: 1, conflated: false }
        );
        // Nothing lower than normal is left: the next normal push is dropped.
        assert_eq!(
            o.push_bounded(&fr(f("n3"), Priority::Normal), (6, 10), &mut shed),
            Queued { queued: false, evicted: 0, conflated: false }
        );
        assert_eq!(shed, [f("l1"), f("l2")], "what was shed, in order");
        assert_eq!(drain_all(&mut o), b"h1n1n2");
        // The frame cap counts too.
        assert!(o.push_bounded(&fr(f("a"), Priority::Low), (100, 1), &mut shed).queued);
        assert!(!o.push_bounded(&fr(f("b"), Priority::Low), (100, 1), &mut shed).queued);
        // A frame larger than the byte cap still goes into an empty outbox, alone.
        let mut o = Outbox::default();
        assert!(o.push_bounded(&fr(f("toolarge"), Priority::Normal), (4, 10), &mut shed).queued);
        assert!(!o.push_bounded(&fr(f("x"), Priority::Normal), (4, 10), &mut shed).queued);
    }
}
