//! The streaming frame decoder: one per connection, fed whatever bytes arrived.
//!
//! Data frame payloads are streamed: the decoder hands out each piece of payload as it
//! arrives, unmasked in place, so a connection never buffers a data frame; only an incomplete
//! header or an incomplete control frame (at most 131 bytes) is left for the caller to keep.
//! Text is UTF-8-validated piece by piece, so invalid text fails at the first bad byte.

use super::close::{CloseCode, ProtocolError};
use super::frame::{FrameHeader, OpCode, MAX_CONTROL_PAYLOAD};
use super::mask::apply_mask;
use super::utf8::Utf8State;

/// Which end of the connection this decoder reads for: a server reads masked frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// Size caps, checked from the header before any payload is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_frame: u64,
    pub max_message: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_frame: 64 * 1024, max_message: 64 * 1024 }
    }
}

/// What a call to [`Decoder::decode`] produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A piece of a text or binary message, unmasked. `first` marks the message's first piece,
    /// `last` its end. Text pieces are valid UTF-8 so far; the message is valid once `last`.
    Data {
        text: bool,
        payload: &'a [u8],
        first: bool,
        last: bool,
    },
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// A close frame: its code (`None` for an empty payload) and reason.
    Close(Option<CloseCode>, &'a str),
}

#[derive(Clone, Copy, Debug, Default)]
struct InFrame {
    remaining: u64,
    mask: [u8; 4],
    mask_pos: u8,
    fin: bool,
}

/// Per-connection decoding state; 40 bytes.
#[derive(Clone, Debug)]
pub struct Decoder {
    frame: Option<InFrame>,
    /// Length of the message in progress so far.
    message_len: u64,
    /// The message in progress: `Some(true)` text, `Some(false)` binary.
    message: Option<bool>,
    /// No piece of the message in progress has been handed out yet.
    first_pending: bool,
    utf8: Utf8State,
    role: Role,
}

impl Decoder {
    pub fn new(role: Role) -> Self {
        Decoder {
            frame: None,
            message_len: 0,
            message: None,
            first_pending: false,
            utf8: Utf8State::default(),
            role,
        }
    }

    /// Decodes the next event from the start of `buf`, unmasking payload in place. Returns the
    /// event and the bytes consumed, or `Ok(None)` when `buf` holds no complete header (or no
    /// complete control frame, or no payload byte of the current frame); nothing is consumed
    /// then and the caller keeps the bytes for the next call.
    pub fn decode<'a>(
        &mut self,
        buf: &'a mut [u8],
        limits: &Limits,
    ) -> Result<Option<(Event<'a>, usize)>, ProtocolError> {
        if let Some(frame) = self.frame {
            if buf.is_empty() {
                return Ok(None);
            }
            return self.payload(buf, frame, 0).map(Some);
        }
        let Some((h, hlen)) = FrameHeader::parse(buf)? else { return Ok(None) };
        if h.rsv != 0 {
            return Err(ProtocolError::ReservedBits);
        }
        if h.mask.is_some() != (self.role == Role::Server) {
            return Err(ProtocolError::BadMasking);
        }
        let mask = h.mask.unwrap_or_default();
        if h.opcode.is_control() {
            if !h.fin {
                return Err(ProtocolError::FragmentedControl);
            }
            if h.payload_len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(ProtocolError::ControlTooLong);
            }
            let end = hlen + h.payload_len as usize;
            if buf.len() < end {
                return Ok(None);
            }
            let payload = &mut buf[hlen..end];
            apply_mask(payload, mask, 0);
            let payload: &'a [u8] = payload;
            let event = match h.opcode {
                OpCode::Ping => Event::Ping(payload),
                OpCode::Pong => Event::Pong(payload),
                _ => parse_close(payload)?,
            };
            return Ok(Some((event, end)));
        }
        match (h.opcode, self.message) {
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                return Err(ProtocolError::ExpectedContinuation)
            }
            _ => {}
        }
        if h.payload_len > limits.max_frame {
            return Err(ProtocolError::FrameTooLarge);
        }
        if self.message_len.saturating_add(h.payload_len) > limits.max_message {
            return Err(ProtocolError::MessageTooLarge);
        }
        if self.message.is_none() {
            self.message = Some(h.opcode == OpCode::Text);
            self.first_pending = true;
        }
        self.message_len += h.payload_len;
        let frame = InFrame { remaining: h.payload_len, mask, mask_pos: 0, fin: h.fin };
        self.frame = Some(frame);
        self.payload(buf, frame, hlen).map(Some)
    }

    /// Hands out the payload bytes of the current frame that `buf` holds from `start` on.
    fn payload<'a>(
        &mut self,
        buf: &'a mut [u8],
        mut frame: InFrame,
        start: usize,
    ) -> Result<(Event<'a>, usize), ProtocolError> {
        let avail = (buf.len() - start) as u64;
        let n = frame.remaining.min(avail) as usize;
        let payload = &mut buf[start..start + n];
        frame.mask_pos = apply_mask(payload, frame.mask, frame.mask_pos as usize) as u8;
        frame.remaining -= n as u64;
        let text = self.message == Some(true);
        let frame_done = frame.remaining == 0;
        let last = frame_done && frame.fin;
        if text {
            self.utf8.feed(payload).map_err(|_| ProtocolError::InvalidUtf8)?;
            if last {
                self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
            }
        }
        let first = std::mem::take(&mut self.first_pending);
        if last {
            self.message = None;
            self.message_len = 0;
        }
        self.frame = if frame_done { None } else { Some(frame) };
        Ok((Event::Data { text, payload, first, last }, start + n))
    }
}

fn parse_close(payload: &[u8]) -> Result<Event<'_>, ProtocolError> {
    match payload {
        [] => Ok(Event::Close(None, "")),
        [_] => Err(ProtocolError::BadClosePayload),
        [a, b, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*a, *b]));
            if !code.is_valid_on_wire() {
                return Err(ProtocolError::BadCloseCode(code.0));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Event::Close(Some(code), reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::encode_frame;
    use super::*;
    use proptest::prelude::*;

    /// What a decoder reports, owned, with data pieces merged into whole messages.
    #[derive(Debug, PartialEq, Eq, Clone)]
    enum Out {
        Message(bool, Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>, String),
        Error(ProtocolError),
    }

    /// Feeds `wire` to a fresh server decoder in the given chunks, keeping unconsumed bytes
    /// the way the shard does, and returns everything it reported.
    fn run(wire: &[u8], cuts: &[usize], limits: Limits) -> Vec<Out> {
        let mut dec = Decoder::new(Role::Server);
        let mut out = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut msg: Vec<u8> = Vec::new();
        let mut bounds: Vec<usize> = cuts.iter().map(|&c| c.min(wire.len())).collect();
        bounds.push(wire.len());
        bounds.sort();
        let mut prev = 0;
        for b in bounds {
            pending.extend_from_slice(&wire[prev..b]);
            prev = b;
            let mut pos = 0;
            loop {
                match dec.decode(&mut pending[pos..], &limits) {
                    Ok(Some((ev, n))) => {
                        pos += n;
                        match ev {
                            Event::Data { text, payload, first, last } => {
                                if first {
                                    msg.clear();
                                }
                                msg.extend_from_slice(payload);
                                if last {
                                    out.push(Out::Message(text, msg.clone()));
                                }
                            }
                            Event::Ping(p) => out.push(Out::Ping(p.to_vec())),
                            Event::Pong(p) => out.push(Out::Pong(p.to_vec())),
                            Event::Close(c, r) => out.push(Out::Close(c.map(|c| c.0), r.into())),
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        out.push(Out::Error(e));
                        return out;
                    }
                }
            }
            pending.drain(..pos);
        }
        out
    }

    fn frame(op: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_frame(&mut v, op, fin, Some([0x37, 0xfa, 0x21, 0x3d]), payload);
        v
    }

    const BIG: Limits = Limits { max_frame: 1 << 20, max_message: 1 << 20 };

    #[test]
    fn fragmented_text_with_interleaved_ping() {
        let mut wire = frame(OpCode::Text, false, "Hel".as_bytes());
        wire.extend(frame(OpCode::Ping, true, b"p"));
        wire.extend(frame(OpCode::Continuation, true, "lo κόσμε".as_bytes()));
        assert_eq!(
            run(&wire, &[], BIG),
            vec![Out::Ping(b"p".to_vec()), Out::Message(true, "Hello κόσμε".as_bytes().to_vec())]
        );
    }

    #[test]
    fn violations_get_their_errors() {
        use ProtocolError::*;
        let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
            (vec![0x81 | 0x40, 0x80, 0, 0, 0, 0], ReservedBits),
            (vec![0x83, 0x80, 0, 0, 0, 0], ReservedOpcode),
            (vec![0x81, 0x00], BadMasking),
            (frame(OpCode::Ping, false, b""), FragmentedControl),
            (frame(OpCode::Ping, true, &[0; 126]), ControlTooLong),
            (frame(OpCode::Continuation, true, b"x"), UnexpectedContinuation),
            (
                [frame(OpCode::Text, false, b"a"), frame(OpCode::Text, true, b"b")].concat(),
                ExpectedContinuation,
            ),
            (frame(OpCode::Close, true, &[3]), BadClosePayload),
            (frame(OpCode::Close, true, &1005u16.to_be_bytes()), BadCloseCode(1005)),
            (frame(OpCode::Close, true, &[0x03, 0xe8, 0xff]), InvalidUtf8),
            (frame(OpCode::Text, true, &[0xce, 0xba, 0xff]), InvalidUtf8),
            (frame(OpCode::Binary, true, &[0; 2000]), FrameTooLarge),
            (
                [
                    frame(OpCode::Binary, false, &[0; 600]),
                    frame(OpCode::Continuation, true, &[0; 600]),
                ]
                .concat(),
                MessageTooLarge,
            ),
        ];
        let small = Limits { max_frame: 1000, max_message: 1000 };
        for (wire, err) in cases {
            assert_eq!(run(&wire, &[], small).last(), Some(&Out::Error(err)), "{err:?}");
        }
    }

    #[test]
    fn invalid_text_fails_before_the_frame_is_complete() {
        let wire = frame(OpCode::Text, true, &[b'a', 0xff, b'b', b'c', b'd']);
        let mut dec = Decoder::new(Role::Server);
        let mut partial = wire[..wire.len() - 2].to_vec();
        assert_eq!(dec.decode(&mut partial, &BIG), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn client_role_wants_unmasked_frames() {
        let mut dec = Decoder::new(Role::Client);
        let mut wire = Vec::new();
        encode_frame(&mut wire, OpCode::Binary, true, None, b"xy");
        let (ev, n) = dec.decode(&mut wire, &BIG).unwrap().unwrap();
        assert_eq!(ev, Event::Data { text: false, payload: b"xy", first: true, last: true });
        assert_eq!(n, 4);
        let mut masked = frame(OpCode::Binary, true, b"xy");
        assert_eq!(dec.decode(&mut masked, &BIG), Err(ProtocolError::BadMasking));
    }

    fn any_frame() -> impl Strategy<Value = Vec<u8>> {
        (0u8..16, any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300), any::<bool>())
            .prop_map(|(op, fin, payload, text_ok)| {
                let op = OpCode::from_u8(op).unwrap_or(OpCode::Binary);
                let payload = if text_ok && op == OpCode::Text {
                    String::from_utf8_lossy(&payload).into_owned().into_bytes()
                } else {
                    payload
                };
                let payload = if op.is_control() {
                    payload[..payload.len().min(125)].to_vec()
                } else {
                    payload
                };
                frame(op, fin || op.is_control(), &payload)
            })
    }

    proptest! {
        /// Feeding the same bytes in any chunking yields the same events and the same error.
        #[test]
        fn chunking_never_changes_the_outcome(frames in proptest::collection::vec(any_frame(), 1..8),
                                              cuts in proptest::collection::vec(0usize..3000, 0..12)) {
            let wire = frames.concat();
            let whole = run(&wire, &[], BIG);
            prop_assert_eq!(run(&wire, &cuts, BIG), whole.clone());
            let bytewise: Vec<usize> = (0..wire.len()).collect();
            prop_assert_eq!(run(&wire, &bytewise, BIG), whole);
        }

        /// Any message survives encode then decode, whole or split into fragments.
        #[test]
        fn messages_round_trip(text in any::<bool>(), data in proptest::collection::vec(any::<u8>(), 0..2000),
                               pieces in 1usize..5) {
            let data = if text { String::from_utf8_lossy(&data).into_owned().into_bytes() } else { data };
            let op = if text { OpCode::Text } else { OpCode::Binary };
            let chunk = data.len().div_ceil(pieces).max(1);
            let parts: Vec<&[u8]> = if data.is_empty() { vec![&data[..]] } else { data.chunks(chunk).collect() };
            let mut wire = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                let o = if i == 0 { op } else { OpCode::Continuation };
                wire.extend(frame(o, i + 1 == parts.len(), p));
            }
            prop_assert_eq!(run(&wire, &[], BIG), vec![Out::Message(text, data)]);
        }
    }
}
