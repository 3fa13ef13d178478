//! A connection's queue of frames waiting for the socket. Frames are reference-counted
//! `Bytes`, so a frame shared by many connections is queued by reference; everything queued
//! goes out in one gather write per turn of the shard loop.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::Bytes;

/// Most slices handed to one writev (the kernel's IOV_MAX is 1024).
const MAX_IOV: usize = 64;

#[derive(Debug, Default)]
pub struct Outbox {
    frames: VecDeque<Bytes>,
    /// Bytes of the front frame already written.
    head: usize,
    /// Bytes queued and not yet written.
    bytes: usize,
}

/// How a flush ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything was written.
    All,
    /// The socket buffer is full; wait for writability.
    Blocked,
}

impl Outbox {
    pub fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn frames(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Writes as much as `write` accepts, in gather writes of up to 64 frames. Returns how it
    /// ended and the bytes written.
    pub fn flush(
        &mut self,
        mut write: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<(Flushed, usize)> {
        let mut total = 0;
        while !self.frames.is_empty() {
            let mut iov: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (i, f) in self.frames.iter().take(MAX_IOV).enumerate() {
                iov[i] = IoSlice::new(if i == 0 { &f[self.head..] } else { f });
                n += 1;
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

    fn consume(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let Some(front) = self.frames.front() else { break };
            let left = front.len() - self.head;
            if n >= left {
                n -= left;
                self.head = 0;
                self.frames.pop_front();
            } else {
                self.head += n;
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut o = Outbox::default();
        for s in ["hello ", "wide ", "world"] {
            o.push(Bytes::from_static(s.as_bytes()));
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
        let r = o.flush(|iov| {
            let n = iov.iter().map(|s| s.len()).sum();
            for s in iov {
                sink.extend_from_slice(s);
            }
            Ok(n)
        });
        assert_eq!(r.unwrap(), (Flushed::All, 9));
        assert_eq!(sink, b"hello wide world");
        assert!(o.is_empty());
    }
}
