//! ringcast's wire protocols, sans-IO: the WebSocket protocol and the client protocol on it.
//!
//! Owns the HTTP/1.1 upgrade handshake, the RFC 6455 frame codec (header parsing and encoding,
//! masking, the streaming payload decoder with incremental UTF-8 validation) and close codes.
//! Everything here is plain functions and small state machines over byte slices: nothing in
//! this tree may import monoio, touch a socket or read the clock. The shard loop feeds bytes
//! in and takes frames and actions out; the fuzz targets and unit tests drive it the same way.

#![forbid(unsafe_code)]

pub mod client;
pub mod close;
pub mod decoder;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod reply;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod utf8;

pub use close::{CloseCode, CloseReason, Closing, ProtocolError};
pub use decoder::{Decoder, Event, Limits, Role};
pub use frame::{FrameHeader, OpCode};
