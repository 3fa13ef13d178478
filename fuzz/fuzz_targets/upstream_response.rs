#![no_main]
//! A backend's HTTP response on arbitrary bytes (see `ringcast::upstream::testing`).
libfuzzer_sys::fuzz_target!(|input: &[u8]| ringcast::upstream::testing::check_response(input));
