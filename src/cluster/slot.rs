//! The stable home of a name: CRC16 (the XMODEM variant Redis Cluster uses for key slots) of
//! the name, mod 16384, then mapped to a shard by range. Unlike `DefaultHasher`, whose output
//! may change between Rust releases, this never changes, so every thread, every build and
//! every node agree on which shard owns a user's or channel's stream.

/// Slots a name can hash to (the Redis Cluster slot count).
pub(crate) const SLOTS: u16 = 16384;

/// CRC16-XMODEM: polynomial 0x1021, initial value 0, no reflection.
const TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

pub(crate) fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| (crc << 8) ^ TABLE[usize::from((crc >> 8) as u8 ^ b)])
}

/// The slot of a name, in `0..SLOTS`.
pub(crate) fn slot(name: &str) -> u16 {
    crc16(name.as_bytes()) % SLOTS
}

/// The shard, of `shards`, that owns `slot`: contiguous ranges of slots per shard.
pub(crate) fn shard_of_slot(slot: u16, shards: usize) -> usize {
    let shards = shards.max(1);
    usize::from(slot) * shards / usize::from(SLOTS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_redis_cluster_test_vector() {
        // The check value of CRC16-XMODEM, and the one in the Redis Cluster specification.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b""), 0);
    }

    #[test]
    fn names_have_pinned_slots_and_shards() {
        // Pinned: a change here moves every stream's home and breaks mixed-version clusters.
        // (name, shards) -> (slot, shard); computed independently with a Python CRC16-XMODEM.
        let cases = [("news", 3), ("user-42", 2), ("prices/EURUSD:1m", 4), ("42", 2)];
        let got: Vec<(u16, usize)> =
            cases.iter().map(|&(n, s)| (slot(n), shard_of_slot(slot(n), s))).collect();
        let want: Vec<(u16, usize)> = vec![(5161, 0), (14587, 1), (5858, 1), (8000, 0)];
        assert_eq!(got, want, "pinned vector");
    }

    #[test]
    fn every_slot_maps_into_range_and_ranges_are_contiguous() {
        for shards in 1..9 {
            let mut last = 0;
            for s in 0..SLOTS {
                let h = shard_of_slot(s, shards);
                assert!(h < shards && h >= last);
                last = h;
            }
            assert_eq!(last, shards - 1);
        }
    }
}
