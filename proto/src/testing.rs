//! Harnesses shared by the unit tests and the fuzz targets, so a fuzz target is one line and
//! what it checks is tested on every `cargo test` too.

use crate::client::parse_client;
use crate::handshake::{parse_upgrade, write_accept, write_refusal, HandshakePolicy};
use crate::{Decoder, Event, Limits, Role};

/// What the decoder made of a byte stream, with data frames merged into whole messages.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Message { text: bool, payload: Vec<u8> },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
    Error(String),
}

/// Decodes `wire` as a server would, fed `chunk` bytes at a time (kept bytes in front, as the
/// shard keeps a partial frame), up to the first error.
pub fn decode_chunked(wire: &[u8], chunk: usize, limits: &Limits) -> Vec<Decoded> {
    let mut dec = Decoder::new(Role::Server);
    let mut out = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut data: Vec<u8> = Vec::new(); // payload since the last message end
    let mut text = false;
    for piece in wire.chunks(chunk.max(1)) {
        pending.extend_from_slice(piece);
        let mut pos = 0;
        loop {
            match dec.decode(&mut pending[pos..], limits) {
                Ok(Some((ev, n))) => {
                    pos += n;
                    match ev {
                        Event::Data { text: t, payload, first, last } => {
                            if first {
                                text = t;
                            }
                            data.extend_from_slice(payload);
                            if last {
                                out.push(Decoded::Message {
                                    text,
                                    payload: std::mem::take(&mut data),
                                });
                            }
                        }
                        Event::Ping(p) => out.push(Decoded::Ping(p.to_vec())),
                        Event::Pong(p) => out.push(Decoded::Pong(p.to_vec())),
                        Event::Close(c, r) => {
                            out.push(Decoded::Close(c.map(|c| c.0), r.to_string()))
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    out.push(Decoded::Error(e.to_string()));
                    return out;
                }
            }
        }
        pending.drain(..pos);
    }
    out
}

/// The frame decoder on arbitrary bytes: never panics, and feeding the same bytes in other
/// chunks (the first input byte picks the chunk size) yields the same messages and error.
pub fn check_decoder(input: &[u8]) {
    let Some((&c, wire)) = input.split_first() else { return };
    let limits = Limits { max_frame: 1 << 16, max_message: 1 << 17 };
    let whole = decode_chunked(wire, wire.len().max(1), &limits);
    assert_eq!(decode_chunked(wire, usize::from(c % 17) + 1, &limits), whole);
}

/// The upgrade parser on arbitrary bytes: never panics, never claims more bytes than it was
/// given, an accepted head is accepted again on its own, and both answers can be written.
pub fn check_handshake(data: &[u8]) {
    let policy = HandshakePolicy {
        routes: vec!["/ws".into(), "/echo".into()],
        allowed_origins: vec!["https://a.example".into()],
        subprotocols: vec!["v1".into()],
        max_header_bytes: 4096,
        keep_headers: vec!["cookie".into(), "origin".into()],
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
}

/// The client protocol parser on arbitrary bytes: never panics, and whatever it accepts names
/// only streams the name rule allows.
pub fn check_client(data: &[u8]) {
    use crate::client::{delivered_at, valid_name, ClientMsg};
    // The server's own frames read back: any bytes give an answer or none, never a panic.
    let _ = delivered_at(data);
    match parse_client(data) {
        Ok(ClientMsg::Subscribe { channel, .. }) | Ok(ClientMsg::Unsubscribe(channel)) => {
            assert!(valid_name(&channel))
        }
        Ok(ClientMsg::Resume { streams, .. }) => {
            assert!(streams.len() <= crate::client::MAX_RESUME_STREAMS);
            assert!(streams.iter().all(|(c, _)| valid_name(c)));
        }
        Ok(ClientMsg::Refresh { token }) => assert!(!token.is_empty()),
        Ok(ClientMsg::Rpc { method, data, .. }) => {
            assert!(valid_name(&method));
            assert!(serde_json::from_str::<&serde_json::value::RawValue>(&data).is_ok());
        }
        Ok(ClientMsg::Publish { channel, data, .. }) => {
            assert!(valid_name(&channel));
            assert!(serde_json::from_str::<&serde_json::value::RawValue>(&data).is_ok());
        }
        Ok(ClientMsg::Send { data }) => {
            assert!(serde_json::from_str::<&serde_json::value::RawValue>(&data).is_ok())
        }
        Ok(ClientMsg::Ack { user, .. }) => assert!(valid_name(&user)),
        Ok(ClientMsg::Ping) | Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_frame;
    use crate::OpCode;
    use proptest::prelude::*;

    fn masked(op: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_frame(&mut v, op, fin, Some([1, 2, 3, 4]), payload);
        v
    }

    #[test]
    fn the_harness_merges_fragments_and_stops_at_an_error() {
        let mut wire = masked(OpCode::Text, false, b"he");
        wire.extend(masked(OpCode::Continuation, true, b"llo"));
        wire.extend(masked(OpCode::Ping, true, b"p"));
        wire.extend(encode_unmasked());
        let limits = Limits { max_frame: 1 << 16, max_message: 1 << 17 };
        let out = decode_chunked(&wire, 3, &limits);
        assert_eq!(out[0], Decoded::Message { text: true, payload: b"hello".to_vec() });
        assert_eq!(out[1], Decoded::Ping(b"p".to_vec()));
        assert!(matches!(out[2], Decoded::Error(_)), "{out:?}");
        assert_eq!(out.len(), 3);
    }

    fn encode_unmasked() -> Vec<u8> {
        let mut v = Vec::new();
        encode_frame(&mut v, OpCode::Text, true, None, b"x");
        v
    }

    #[test]
    fn the_handshake_harness_takes_a_good_and_a_bad_head() {
        check_handshake(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        );
        check_handshake(b"GET / HTTP/1.0\r\n\r\n");
        check_client(br#"{"type":"subscribe","channel":"news"}"#);
        check_client(b"\xff");
    }

    proptest! {
        #[test]
        fn the_fuzz_checks_hold_on_random_input(input in proptest::collection::vec(any::<u8>(), 0..512)) {
            check_decoder(&input);
            check_handshake(&input);
            check_client(&input);
        }
    }
}
