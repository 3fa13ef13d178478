#![no_main]
//! The upgrade parser on arbitrary bytes: never panics, never claims more bytes than it was
//! given, and an accepted head is accepted again on its own.

use libfuzzer_sys::fuzz_target;
use ringcast::proto::handshake::{parse_upgrade, write_accept, write_refusal, HandshakePolicy};

fuzz_target!(|data: &[u8]| {
    let policy = HandshakePolicy {
        routes: vec!["/ws".into(), "/echo".into()],
        allowed_origins: vec!["https://a.example".into()],
        subprotocols: vec!["v1".into()],
        max_header_bytes: 4096,
    };
    match parse_upgrade(data, &policy) {
        Ok(Some((up, n))) => {
            assert!(n <= data.len());
            assert!(matches!(parse_upgrade(&data[..n], &policy), Ok(Some(_))));
            let mut out = Vec::new();
            write_accept(&mut out, &up, &policy);
        }
        Ok(None) => assert!(data.len() <= 4096),
        Err(e) => {
            let mut out = Vec::new();
            write_refusal(&mut out, e);
        }
    }
});
