#![no_main]
//! The streaming frame decoder on arbitrary bytes (see `ringcast_proto::testing::check_decoder`).
libfuzzer_sys::fuzz_target!(|input: &[u8]| ringcast_proto::testing::check_decoder(input));
