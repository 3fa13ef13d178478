#![no_main]
//! The upgrade parser on arbitrary bytes (see `ringcast_proto::testing::check_handshake`).
libfuzzer_sys::fuzz_target!(|input: &[u8]| ringcast_proto::testing::check_handshake(input));
