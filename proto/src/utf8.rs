//! Incremental UTF-8 validation that fails at the first byte that cannot start or continue a
//! valid sequence, across any split of the input.

/// Validation state between pieces of one text message: the bytes of a code point cut by a
/// piece boundary (a valid prefix, at most 3 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Utf8State {
    partial: [u8; 3],
    len: u8,
}

/// The input is not UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidUtf8;

fn sequence_width(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4, // 0xF0..=0xF4: anything else was rejected before it was kept.
    }
}

impl Utf8State {
    /// Validates the next piece of the message.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), InvalidUtf8> {
        if self.len > 0 {
            let have = self.len as usize;
            let need = sequence_width(self.partial[0]) - have;
            let take = need.min(data.len());
            let mut tmp = [0u8; 4];
            tmp[..have].copy_from_slice(&self.partial[..have]);
            tmp[have..have + take].copy_from_slice(&data[..take]);
            match std::str::from_utf8(&tmp[..have + take]) {
                Ok(_) => self.len = 0,
                Err(e) if e.error_len().is_some() => return Err(InvalidUtf8),
                Err(_) => {
                    // Still a valid prefix, and `data` is used up.
                    self.partial[..have + take].copy_from_slice(&tmp[..have + take]);
                    self.len = (have + take) as u8;
                    return Ok(());
                }
            }
            data = &data[take..];
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(InvalidUtf8),
            Err(e) => {
                let tail = &data[e.valid_up_to()..];
                self.partial[..tail.len()].copy_from_slice(tail);
                self.len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// The message ended: a code point still open is an error.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let open = self.len != 0;
        *self = Self::default();
        if open {
            Err(InvalidUtf8)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunked(data: &[u8], cuts: &[usize]) -> Result<(), InvalidUtf8> {
        let mut st = Utf8State::default();
        let mut pos = 0;
        for &c in cuts {
            let c = c.min(data.len()).max(pos);
            st.feed(&data[pos..c])?;
            pos = c;
        }
        st.feed(&data[pos..])?;
        st.finish()
    }

    proptest! {
        #[test]
        fn any_split_agrees_with_std(data in proptest::collection::vec(any::<u8>(), 0..40),
                                     mut cuts in proptest::collection::vec(0usize..40, 0..6)) {
            cuts.sort();
            prop_assert_eq!(chunked(&data, &cuts).is_ok(), std::str::from_utf8(&data).is_ok());
        }

        #[test]
        fn valid_strings_pass_in_any_split(s in ".{0,20}", mut cuts in proptest::collection::vec(0usize..80, 0..6)) {
            cuts.sort();
            prop_assert!(chunked(s.as_bytes(), &cuts).is_ok());
        }
    }

    #[test]
    fn fails_fast_on_the_first_bad_byte() {
        let mut st = Utf8State::default();
        // U+10FFFF + 1 is out of range: the second byte already proves it.
        assert_eq!(st.feed(&[0xF4]), Ok(()));
        assert_eq!(st.feed(&[0x90]), Err(InvalidUtf8));
        let mut st = Utf8State::default();
        assert_eq!(st.feed(b"ok\xED\xA0"), Err(InvalidUtf8)); // surrogate
        let mut st = Utf8State::default();
        assert_eq!(st.feed(b"\xCE\xBA\xE1"), Ok(()));
        assert_eq!(st.finish(), Err(InvalidUtf8));
    }
}
