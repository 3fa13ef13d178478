//! The record reader's checks, for the fuzz target (`log_record`) and the tests.

use super::record::{self, Reader, Tail};

/// Reads any bytes as records: no panic, every record returned re-encodes to exactly the
/// bytes it was read from (so its CRC matched), offsets follow each other, and the reader
/// ends saying how.
pub fn check_reader(data: &[u8]) {
    let mut r = Reader::new(data);
    let mut next = 0;
    let mut again = Vec::new();
    for rec in r.by_ref() {
        assert_eq!(rec.offset, next, "records follow each other");
        again.clear();
        let n = record::encode(&mut again, rec.kind, rec.body).expect("read bodies fit");
        assert_eq!(&data[rec.offset..rec.offset + n], &again[..], "a record whose CRC failed");
        next += n;
    }
    assert_eq!(r.valid_len(), next);
    assert!(r.valid_len() <= data.len());
    match r.tail() {
        Some(Tail::Clean) => assert_eq!(next, data.len()),
        Some(Tail::Torn | Tail::Corrupt(_)) => assert!(next < data.len()),
        None => panic!("the reader ended without saying how"),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            super::check_reader(&data);
        }
    }
}
