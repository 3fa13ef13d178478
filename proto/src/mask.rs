//! XOR masking (RFC 6455 section 5.3), eight bytes at a time.

/// XORs `buf` with `key`, as if `buf` started `offset` bytes into a masked payload.
/// Returns the offset for the byte after `buf`, so a payload can be unmasked in pieces.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) -> usize {
    let mut k = key;
    k.rotate_left(offset % 4);
    // Bytewise until the slice is 8-byte aligned, then whole words: the loop below compiles to
    // vector XORs, and the head keeps those loads aligned.
    let head = buf.as_ptr().align_offset(8).min(buf.len());
    let (first, rest) = buf.split_at_mut(head);
    for (i, b) in first.iter_mut().enumerate() {
        *b ^= k[i % 4];
    }
    k.rotate_left(head % 4);
    let word = u64::from_ne_bytes([k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]]);
    let mut chunks = rest.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= k[i % 4];
    }
    (offset + buf.len()) % 4
}

/// The obvious byte-at-a-time version; the reference for tests and the benchmark baseline.
pub fn apply_mask_bytewise(buf: &mut [u8], key: [u8; 4], offset: usize) -> usize {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(offset + i) % 4];
    }
    (offset + buf.len()) % 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn word_masking_equals_bytewise(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            key in any::<[u8; 4]>(),
            offset in 0usize..4,
            start in 0usize..8,
            split in 0usize..300,
        ) {
            // Misaligned starts and payloads unmasked in two pieces.
            let mut a = vec![0u8; start];
            a.extend_from_slice(&data);
            let mut b = a.clone();
            let split = split.min(data.len());
            let mid = apply_mask(&mut a[start..start + split], key, offset);
            apply_mask(&mut a[start + split..], key, mid);
            apply_mask_bytewise(&mut b[start..], key, offset);
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn masking_twice_is_identity() {
        let mut data: Vec<u8> = (0..=255).collect();
        let orig = data.clone();
        apply_mask(&mut data, [1, 2, 3, 4], 0);
        assert_ne!(data, orig);
        apply_mask(&mut data, [1, 2, 3, 4], 0);
        assert_eq!(data, orig);
    }
}
