//! Encoding a delivered message once, into a frame every recipient shares.

use bytes::Bytes;

use crate::proto::client::{self, Stream};
use crate::proto::frame::encode_frame;
use crate::proto::OpCode;

use super::msg::{Frame, Payload, Priority};
use super::streams::Position;

/// Encodes a delivered message once into a frame every recipient shares.
pub fn encode_message(
    stream: &Stream<'_>,
    seq: u64,
    payload: &Payload,
    priority: Priority,
) -> Frame {
    Frame { bytes: encode(stream, None, seq, false, payload), priority, kept: false, meta: None }
}

/// Encodes a numbered stream message: the first message of an epoch carries the epoch, so a
/// client sees a stream that began again in the stream itself; a durable stream's carries
/// `"ack":true`.
pub fn encode_at(stream: &Stream<'_>, pos: Position, ack: bool, payload: &Payload) -> Bytes {
    let epoch = (pos.seq == 1).then_some(pos.epoch);
    encode(stream, epoch, pos.seq, ack, payload)
}

fn encode(
    stream: &Stream<'_>,
    epoch: Option<u64>,
    seq: u64,
    ack: bool,
    payload: &Payload,
) -> Bytes {
    let (op, body) = match payload {
        Payload::Json(raw) => (OpCode::Text, client::message_json_at(stream, epoch, seq, ack, raw)),
        Payload::Binary(b) => {
            (OpCode::Binary, client::message_binary_at(stream, epoch, seq, ack, b))
        }
    };
    let mut v = Vec::with_capacity(body.len() + 10);
    encode_frame(&mut v, op, true, None, &body);
    Bytes::from(v)
}
