//! One log record, sans-IO: `[len u32][crc u32][kind u8][body]`, little-endian, where `len` is
//! the byte count of kind and body and `crc` the CRC-32 (IEEE) of the len bytes, the kind and
//! the body. A reader never returns a record whose CRC failed: it stops at the first record
//! that is cut short (a torn tail) or does not check out (corruption), and says which.

/// Bytes before a record's kind: its length and CRC.
pub const HEAD: usize = 8;

/// The largest body a record may have. Larger lengths in a file are corruption.
pub const MAX_BODY: usize = 16 << 20;

/// A body over [`MAX_BODY`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLarge(pub usize);

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a log record body of {} bytes is over the {MAX_BODY} byte limit", self.0)
    }
}

impl std::error::Error for TooLarge {}

fn crc(len: [u8; 4], kind: u8, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(&[kind]);
    h.update(body);
    h.finalize()
}

/// Appends the record to `out`; returns the bytes it took.
pub fn encode(out: &mut Vec<u8>, kind: u8, body: &[u8]) -> Result<usize, TooLarge> {
    if body.len() > MAX_BODY {
        return Err(TooLarge(body.len()));
    }
    let len = ((body.len() + 1) as u32).to_le_bytes();
    out.reserve(HEAD + 1 + body.len());
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc(len, kind, body).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    Ok(HEAD + 1 + body.len())
}

/// How the records of a buffer end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tail {
    /// Every byte belongs to a valid record.
    Clean,
    /// The last record is cut short (a write the crash interrupted).
    Torn,
    /// A record does not check out: a bad CRC, a zero or oversized length.
    Corrupt(&'static str),
}

/// The valid records of a buffer, in order, with their offsets.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    tail: Option<Tail>,
}

/// A record as read: where it starts in the buffer, its kind and body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub offset: usize,
    pub kind: u8,
    pub body: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0, tail: None }
    }

    /// Bytes of valid records read so far (where a torn or corrupt tail would be cut).
    pub fn valid_len(&self) -> usize {
        self.pos
    }

    /// How the buffer ended, once the reader has returned `None`.
    pub fn tail(&self) -> Option<Tail> {
        self.tail
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        if self.tail.is_some() {
            return None;
        }
        let rest = &self.buf[self.pos..];
        let stop = |r: &mut Self, t: Tail| {
            r.tail = Some(t);
            None
        };
        if rest.is_empty() {
            return stop(self, Tail::Clean);
        }
        let (Some(len), Some(sum)) = (rest.get(0..4), rest.get(4..8)) else {
            return stop(self, Tail::Torn);
        };
        let len_bytes = [len[0], len[1], len[2], len[3]];
        let len = u32::from_le_bytes(len_bytes) as usize;
        let sum = u32::from_le_bytes([sum[0], sum[1], sum[2], sum[3]]);
        if len == 0 {
            return stop(self, Tail::Corrupt("a record of length 0"));
        }
        if len > MAX_BODY + 1 {
            return stop(self, Tail::Corrupt("a record longer than the limit"));
        }
        let Some(payload) = rest.get(HEAD..HEAD + len) else {
            return stop(self, Tail::Torn);
        };
        let (kind, body) = (payload[0], &payload[1..]);
        if crc(len_bytes, kind, body) != sum {
            return stop(self, Tail::Corrupt("a record whose CRC does not match"));
        }
        let offset = self.pos;
        self.pos += HEAD + len;
        Some(Record { offset, kind, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn log(records: &[(u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, b) in records {
            encode(&mut out, *k, b).unwrap();
        }
        out
    }

    #[test]
    fn records_read_back_with_their_offsets_and_a_clean_end() {
        let buf = log(&[(1, b"hello"), (2, b""), (3, &[0xff; 300])]);
        let mut r = Reader::new(&buf);
        let got: Vec<Record<'_>> = r.by_ref().collect();
        assert_eq!(got.len(), 3);
        assert_eq!((got[0].offset, got[0].kind, got[0].body), (0, 1, &b"hello"[..]));
        assert_eq!((got[1].offset, got[1].kind, got[1].body.len()), (14, 2, 0));
        assert_eq!((got[2].offset, got[2].body.len()), (23, 300));
        assert_eq!((r.tail(), r.valid_len()), (Some(Tail::Clean), buf.len()));
    }

    #[test]
    fn a_cut_record_is_torn_and_a_flipped_byte_is_corrupt() {
        let buf = log(&[(1, b"first"), (1, b"second")]);
        for cut in 15..buf.len() {
            let mut r = Reader::new(&buf[..cut]);
            assert_eq!(r.by_ref().count(), 1, "cut at {cut}");
            assert_eq!((r.tail(), r.valid_len()), (Some(Tail::Torn), 14), "cut at {cut}");
        }
        for flip in 14..buf.len() {
            let mut bad = buf.clone();
            bad[flip] ^= 0x40;
            let mut r = Reader::new(&bad);
            assert_eq!(r.by_ref().count(), 1, "flip at {flip}");
            assert!(matches!(r.tail(), Some(Tail::Corrupt(_) | Tail::Torn)), "flip at {flip}");
            assert_eq!(r.valid_len(), 14);
        }
        let mut zeros = buf.clone();
        zeros.extend_from_slice(&[0; 64]);
        let mut r = Reader::new(&zeros);
        assert_eq!(r.by_ref().count(), 2);
        assert_eq!(r.tail(), Some(Tail::Corrupt("a record of length 0")));
    }

    #[test]
    fn an_oversized_body_is_refused() {
        let mut out = Vec::new();
        assert_eq!(encode(&mut out, 1, &vec![0; MAX_BODY + 1]), Err(TooLarge(MAX_BODY + 1)));
        assert!(out.is_empty());
    }

    proptest! {
        /// Whatever follows valid records, they read back whole, and nothing after them that
        /// fails its CRC is returned.
        #[test]
        fn valid_records_survive_any_tail(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
            junk in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut buf = Vec::new();
            for (i, b) in bodies.iter().enumerate() {
                encode(&mut buf, i as u8, b).unwrap();
            }
            let valid = buf.len();
            buf.extend_from_slice(&junk);
            let got: Vec<Vec<u8>> = Reader::new(&buf).map(|r| r.body.to_vec()).collect();
            prop_assert!(got.len() >= bodies.len());
            prop_assert_eq!(&got[..bodies.len()], &bodies[..]);
            let mut r = Reader::new(&buf);
            r.by_ref().for_each(drop);
            prop_assert!(r.valid_len() >= valid);
        }
    }
}
