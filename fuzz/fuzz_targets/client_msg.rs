#![no_main]
//! The client protocol parser on arbitrary bytes (see `ringcast_proto::testing::check_client`).
libfuzzer_sys::fuzz_target!(|input: &[u8]| ringcast_proto::testing::check_client(input));
