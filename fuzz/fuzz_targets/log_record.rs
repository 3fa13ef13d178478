#![no_main]
//! The durable log's record reader on arbitrary bytes (see `ringcast_store::testing`): no
//! panic, and never a record whose CRC failed.
libfuzzer_sys::fuzz_target!(|input: &[u8]| ringcast_store::testing::check_reader(input));
