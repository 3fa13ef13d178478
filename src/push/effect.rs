//! How this layer's state machines (a connection's [`Session`](super::session::Session), a
//! shard's [`Home`](super::home::Home)) tell the shard what to do. They take their input and
//! the time and push effects; the shard applies them in order. None of them does I/O, reads the
//! clock or calls back into the shard, so each is tested with plain values.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::proto::CloseReason;

use super::call::Event;
use super::ids::ConnId;
use super::msg::{Frame, ShardMsg};
use super::streams::{Position, StreamKey};

/// One thing the shard must do.
#[derive(Debug)]
pub(crate) enum Effect {
    /// A text frame to `conn` in the high lane, outside the push caps (welcome, acks, errors,
    /// the protocol pong). Dropped if the connection is no longer open.
    Reply { conn: ConnId, body: Vec<u8> },
    /// Frame bytes encoded once and shared (the heartbeat answer), in the high lane.
    ReplyFrame { conn: ConnId, frame: Bytes },
    /// The first message on `conn`, which waited for its streams' positions; frames held for
    /// it may now be written.
    Welcome { conn: ConnId, body: Vec<u8> },
    /// Ask the channel's home to count `conn`'s subscription (`count`; false when it only asks
    /// where the channel stands) and answer with its position, and, with `since`, what was
    /// missed. `conn` receives the channel's deliveries once the answer is in.
    Subscribe { conn: ConnId, channel: Arc<str>, since: Option<Position>, count: bool },
    /// Take `conn` out of the channel's local subscribers (whatever its phase now) and tell
    /// the home.
    Unsubscribe { conn: ConnId, channel: Arc<str> },
    /// Frames `conn` missed of `stream`, in order, within the outbox caps; if they do not all
    /// fit, the client is told with a `reset` at `at`.
    Replay { conn: ConnId, stream: StreamKey, at: Position, frames: Vec<Frame> },
    /// Messages of `conn`'s durable user stream it has not acknowledged, in order, within the
    /// outbox caps (what does not fit comes again with the redelivery).
    Mail { conn: ConnId, frames: Vec<Frame> },
    /// A client message was refused (counted in `client_errors`).
    ClientError,
    /// A `refresh` (a client's token, or the refresh backend) extended a connection's expiry
    /// (counted in `token_refreshes`).
    Refreshed,
    /// The refresh backend declined to extend it (counted in `refreshes_declined`): the
    /// connection closes with 4003 when its expiry passes.
    RefreshDeclined,
    /// Close `conn` for this reason.
    Close { conn: ConnId, reason: CloseReason },
    /// A message for a shard (this one included) that must not be lost: a directory update or
    /// a kick. A full inbox keeps it for a retry, in order.
    Update { shard: usize, msg: ShardMsg },
    /// A delivery for a shard: a full inbox refuses it and its recipients count as dropped.
    Deliver { shard: usize, msg: ShardMsg, expected: Expected },
    /// A call for backend `backend` (an `rpc`, a `send`, a publish or subscribe a backend
    /// decides); its outcome comes back through [`Session::on_backend`](super::session::Session::on_backend).
    Upstream { backend: usize, event: Event },
    /// A client publish the token allows (or a backend approved): publish `data` into the
    /// channel and answer the client's `id` with where it went.
    ClientPublish { conn: ConnId, id: u32, channel: Arc<str>, data: String },
}

/// How many recipients a refused delivery loses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expected {
    Recipients(u64),
    /// Every open connection of the target shard (a broadcast); the shard reads its gauge.
    OpenConnections,
}

/// The effects of one input, applied front to back.
pub(crate) type Effects = VecDeque<Effect>;

/// When an input happens: the shard's tick (wrapping) for its own deadlines, and wall-clock
/// milliseconds for what other shards and the API see. Converted from the clock once per turn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Now {
    pub(crate) tick: u32,
    pub(crate) ms: u64,
}
