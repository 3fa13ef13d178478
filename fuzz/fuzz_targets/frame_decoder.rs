#![no_main]
//! The streaming frame decoder on arbitrary bytes: never panics, and feeding the same bytes in
//! other chunks (the first input byte picks the chunk size) yields the same events and error.

use libfuzzer_sys::fuzz_target;
use ringcast::proto::{Decoder, Event, Limits, Role};

#[derive(Debug, PartialEq)]
enum Out {
    Data(bool, Vec<u8>, bool, bool),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
    Err(String),
}

fn run(wire: &[u8], chunk: usize) -> Vec<Out> {
    let limits = Limits { max_frame: 1 << 16, max_message: 1 << 17 };
    let mut dec = Decoder::new(Role::Server);
    let mut out = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut data: Vec<u8> = Vec::new(); // payload since the last message end, merged
    for piece in wire.chunks(chunk.max(1)) {
        pending.extend_from_slice(piece);
        let mut pos = 0;
        loop {
            match dec.decode(&mut pending[pos..], &limits) {
                Ok(Some((ev, n))) => {
                    pos += n;
                    match ev {
                        Event::Data { text, payload, last, .. } => {
                            data.extend_from_slice(payload);
                            if last {
                                out.push(Out::Data(text, std::mem::take(&mut data), true, true));
                            }
                        }
                        Event::Ping(p) => out.push(Out::Ping(p.to_vec())),
                        Event::Pong(p) => out.push(Out::Pong(p.to_vec())),
                        Event::Close(c, r) => out.push(Out::Close(c.map(|c| c.0), r.to_string())),
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    out.push(Out::Err(e.to_string()));
                    return out;
                }
            }
        }
        pending.drain(..pos);
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let Some((&c, wire)) = input.split_first() else { return };
    let whole = run(wire, wire.len().max(1));
    assert_eq!(run(wire, usize::from(c % 17) + 1), whole);
});
