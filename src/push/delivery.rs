//! Encoding a delivered message once, into a frame every recipient shares.

use bytes::Bytes;

use crate::proto::client::{self, Stream};
use crate::proto::frame::encode_frame;
use crate::proto::OpCode;

use super::msg::{Frame, Payload, Priority};

/// Encodes a delivered message once into a frame every recipient shares.
pub fn encode_message(
    stream: &Stream<'_>,
    seq: u64,
    payload: &Payload,
    priority: Priority,
) -> Frame {
    let (op, body) = match payload {
        Payload::Json(raw) => (OpCode::Text, client::message_json(stream, seq, raw)),
        Payload::Binary(b) => (OpCode::Binary, client::message_binary(stream, seq, b)),
    };
    let mut v = Vec::with_capacity(body.len() + 10);
    encode_frame(&mut v, op, true, None, &body);
    Frame { bytes: Bytes::from(v), priority }
}
