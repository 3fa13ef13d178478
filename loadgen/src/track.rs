//! What receivers record in `fanout` and `push`: each payload carries `"i"` (the message
//! number), `"t"` (send time, ns since loadgen started) and, for pushes, `"u"` (the connection
//! it is for). Per thread: a latency histogram, each message's completion time, and
//! completeness (missing, duplicated, out of order per connection, misdelivered).

use hdrhistogram::Histogram;

use crate::engine::MessageSink;

/// Whether every connection gets every message, or each message goes to one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Fanout,
    Push,
}

pub struct Tracker {
    mode: Mode,
    /// Global index of this thread's first connection, and how many it has.
    first: u32,
    conns: u32,
    messages: u64,
    /// Bitset: (connection, message) for fanout, message for push.
    seen: Vec<u64>,
    last: Vec<i64>,
    pub latency_us: Histogram<u64>,
    /// Latest arrival (ns) of each message.
    pub completion: Vec<u64>,
    /// Send time (ns) of each message, from its payload.
    pub sent: Vec<u64>,
    pub received: u64,
    pub duplicates: u64,
    /// Order is judged by the server's `"seq"` when it sends one (gaps counted too), else by
    /// the message number, which is only meaningful with one publisher connection.
    pub out_of_order: u64,
    pub seq_gaps: u64,
    pub by_seq: bool,
    pub misdelivered: u64,
    /// Messages without the payload fields (welcome, acks): not counted as deliveries.
    pub other: u64,
    pub progress: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Reads the unsigned number after `key` (e.g. `"i":`) in `data`.
pub fn field(data: &[u8], key: &[u8]) -> Option<u64> {
    number_at(data, memchr::memmem::find(data, key)? + key.len())
}

fn number_at(data: &[u8], pos: usize) -> Option<u64> {
    let mut v: u64 = 0;
    let mut any = false;
    for &b in data.get(pos..)?.iter().take(20) {
        if !b.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        any = true;
    }
    any.then_some(v)
}

/// The fields a receiver reads, found with precompiled SIMD searches: loadgen must never be the
/// bottleneck, and it reads every one of millions of messages.
struct Keys {
    seq: memchr::memmem::Finder<'static>,
    i: memchr::memmem::Finder<'static>,
    t: memchr::memmem::Finder<'static>,
    u: memchr::memmem::Finder<'static>,
}

static KEYS: std::sync::LazyLock<Keys> = std::sync::LazyLock::new(|| Keys {
    seq: memchr::memmem::Finder::new(b"\"seq\":"),
    i: memchr::memmem::Finder::new(b"\"i\":"),
    t: memchr::memmem::Finder::new(b"\"t\":"),
    u: memchr::memmem::Finder::new(b"\"u\":"),
});

fn find(f: &memchr::memmem::Finder<'static>, data: &[u8], from: usize) -> Option<u64> {
    let rest = data.get(from..)?;
    number_at(rest, f.find(rest)? + f.needle().len())
}

impl Tracker {
    pub fn new(
        mode: Mode,
        first: u32,
        conns: u32,
        messages: u64,
        progress: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> Tracker {
        let bits = match mode {
            Mode::Fanout => u64::from(conns) * messages,
            Mode::Push => messages,
        };
        Tracker {
            mode,
            first,
            conns,
            messages,
            seen: vec![0; bits.div_ceil(64) as usize],
            last: vec![-1; conns as usize],
            latency_us: Histogram::new_with_bounds(1, 600_000_000, 3).expect("static bounds"),
            completion: vec![0; messages as usize],
            sent: vec![0; messages as usize],
            received: 0,
            duplicates: 0,
            out_of_order: 0,
            seq_gaps: 0,
            by_seq: false,
            misdelivered: 0,
            other: 0,
            progress,
        }
    }

    /// Unique (connection, message) deliveries seen, for fanout; messages seen, for push.
    pub fn unique(&self) -> u64 {
        self.seen.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Merges another thread's push bitset (a message is seen if any thread saw it).
    pub fn seen_words(&self) -> &[u64] {
        &self.seen
    }
}

impl MessageSink for Tracker {
    fn message(&mut self, conn: u32, _text: bool, data: &[u8], now_ns: u64) {
        let k = &*KEYS;
        let (Some(i), Some(t)) = (find(&k.i, data, 0), find(&k.t, data, 0)) else {
            self.other += 1;
            return;
        };
        let local = conn.wrapping_sub(self.first);
        if i >= self.messages || local >= self.conns {
            self.other += 1;
            return;
        }
        self.received += 1;
        self.progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _ = self.latency_us.record((now_ns.saturating_sub(t) / 1000).max(1));
        let c = &mut self.completion[i as usize];
        *c = (*c).max(now_ns);
        self.sent[i as usize] = t;
        let bit = match self.mode {
            Mode::Fanout => u64::from(local) * self.messages + i,
            Mode::Push => {
                if find(&k.u, data, 0) != Some(u64::from(conn)) {
                    self.misdelivered += 1;
                }
                i
            }
        };
        let (w, b) = ((bit / 64) as usize, bit % 64);
        if self.seen[w] & (1 << b) != 0 {
            self.duplicates += 1;
        }
        self.seen[w] |= 1 << b;
        let order = match find(&k.seq, data, 0) {
            Some(seq) => {
                self.by_seq = true;
                seq
            }
            None => i,
        };
        let last = &mut self.last[local as usize];
        if (order as i64) <= *last {
            self.out_of_order += 1;
        } else if self.by_seq && *last >= 0 && order as i64 > *last + 1 && self.mode == Mode::Fanout
        {
            self.seq_gaps += order - *last as u64 - 1;
        }
        *last = (*last).max(order as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn fields_parse_inside_an_envelope() {
        let m = br#"{"type":"message","stream":"channel:b","seq":9,"data":{"i":12,"t":345,"u":7,"p":"xx"}}"#;
        assert_eq!(
            (field(m, b"\"i\":"), field(m, b"\"t\":"), field(m, b"\"u\":")),
            (Some(12), Some(345), Some(7))
        );
        assert_eq!(field(b"{}", b"\"i\":"), None);
    }

    #[test]
    fn completeness_counts() {
        let p = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut t = Tracker::new(Mode::Fanout, 10, 2, 3, p.clone());
        let msg = |i: u64| format!(r#"{{"i":{i},"t":0}}"#).into_bytes();
        t.message(10, true, &msg(0), 1000);
        t.message(10, true, &msg(2), 2000);
        t.message(10, true, &msg(1), 3000); // out of order
        t.message(10, true, &msg(1), 3000); // duplicate (and not after the last either)
        t.message(11, true, &msg(0), 4000);
        t.message(11, true, b"junk", 4000);
        assert_eq!(
            (t.received, t.unique(), t.duplicates, t.out_of_order, t.other),
            (5, 4, 1, 2, 1)
        );
        assert_eq!(p.load(std::sync::atomic::Ordering::Relaxed), 5);
        assert_eq!(t.completion, vec![4000, 3000, 2000]);
        // With server sequence numbers, order and gaps follow them.
        let mut s = Tracker::new(Mode::Fanout, 0, 1, 4, Arc::new(Default::default()));
        for (i, seq) in [(0, 1), (2, 2), (1, 4)] {
            s.message(
                0,
                true,
                format!(r#"{{"seq":{seq},"data":{{"i":{i},"t":0}}}}"#).as_bytes(),
                1,
            );
        }
        assert_eq!((s.out_of_order, s.seq_gaps, s.by_seq), (0, 1, true));
        let mut push = Tracker::new(Mode::Push, 0, 4, 2, p);
        push.message(3, true, br#"{"i":0,"t":0,"u":3}"#, 10);
        push.message(2, true, br#"{"i":1,"t":0,"u":3}"#, 10);
        assert_eq!((push.unique(), push.misdelivered), (2, 1));
    }
}
