#![no_main]
//! The channel index and user directory against models (see `ringcast::push::testing`).
libfuzzer_sys::fuzz_target!(|input: &[u8]| ringcast::push::testing::check_index(input));
