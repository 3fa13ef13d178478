#![no_main]
//! Token and claims handling on arbitrary bytes (see `ringcast::auth::testing`).
libfuzzer_sys::fuzz_target!(|input: &[u8]| ringcast::auth::testing::check_token(input));
