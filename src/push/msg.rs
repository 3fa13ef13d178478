//! The messages shards (and the API thread) send each other through the shard inboxes.

use crate::proto::CloseReason;
use std::sync::Arc;

use bytes::Bytes;
use futures_channel::oneshot;

use super::directory::Policy;
use super::ids::ConnId;
use super::report::ReportPart;
use super::streams::{CatchUp, Position, StreamKey};

/// Delivery priority: the lanes of a connection's outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Low = 0,
    Normal = 1,
    High = 2,
}

impl Priority {
    pub(crate) fn parse(s: &str) -> Option<Priority> {
        match s {
            "high" => Some(Priority::High),
            "normal" => Some(Priority::Normal),
            "low" => Some(Priority::Low),
            _ => None,
        }
    }
}

/// What a backend published: JSON (raw text, already validated) or binary bytes.
#[derive(Clone, Debug)]
pub enum Payload {
    Json(Arc<serde_json::value::RawValue>),
    Binary(Bytes),
}

/// A frame ready to queue, shared by every recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub bytes: Bytes,
    pub priority: Priority,
    /// The stream keeps a history this message is in, so a gap in it can be refilled.
    pub kept: bool,
    /// What the publisher asked beyond the data (`ttl`, `conflate`), if anything.
    pub meta: Option<Arc<Meta>>,
}

/// What a publisher asked of a message beyond its data. Shared by every recipient's outbox
/// entry and the history ring, by reference.
#[derive(Debug, PartialEq, Eq)]
pub struct Meta {
    /// Unix ms from which the message is neither written from an outbox nor replayed
    /// (`ttl`); 0: never.
    pub expires_ms: u64,
    /// The stream and the publisher's conflation key: a later message with the same replaces
    /// this one while it still waits in an outbox.
    pub conflate: Option<Box<str>>,
}

impl Meta {
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms != 0 && now_ms >= self.expires_ms
    }
}

/// Which local connections a delivery is for.
#[derive(Clone, Debug)]
pub enum Target {
    Conns(Vec<ConnId>),
    Channel(Arc<str>),
    All,
}

/// What a connection of a durable user stream missed: the messages its device has not
/// acknowledged, and whether some it had not were dropped (caps, age): then it is told
/// `reset` first.
#[derive(Debug, Default)]
pub struct MailCatchUp {
    pub frames: Vec<Frame>,
    pub lost: bool,
}

/// A stream as its home knows it, for the history API.
#[derive(Clone, Debug, Default)]
pub struct StreamInfo {
    /// None: the home has no entry for it (never used, or forgotten).
    pub at: Option<Position>,
    pub recoverable: bool,
    pub held: usize,
    pub bytes: usize,
    pub oldest: Option<u64>,
    /// (seq, encoded frame) after `since`, oldest first.
    pub messages: Vec<(u64, Bytes)>,
}

/// A connection as the user directory lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    pub(crate) conn: ConnId,
    pub(crate) device: Option<Arc<str>>,
    pub(crate) connected_ms: u64,
    pub(crate) active_ms: u64,
    pub(crate) info: Option<Arc<str>>,
}

#[derive(Debug)]
pub enum ShardMsg {
    // ----- directory upkeep, to the home shard -----
    UserJoined {
        user: Arc<str>,
        device: Option<Arc<str>>,
        conn: ConnId,
        at_ms: u64,
        /// The token's `info` claim, for presence queries.
        info: Option<Arc<str>>,
    },
    UserLeft {
        user: Arc<str>,
        conn: ConnId,
    },
    UserActive {
        user: Arc<str>,
        conn: ConnId,
        at_ms: u64,
    },
    /// A connection subscribes: count it, and answer with the channel's position (and, with
    /// `since`, what it missed) in `Subscribed`. The count goes down with `ChannelCount -1`.
    Subscribe {
        channel: Arc<str>,
        conn: ConnId,
        since: Option<Position>,
        /// False when the connection is subscribed already and only asks where it stands.
        count: bool,
    },
    ChannelCount {
        channel: Arc<str>,
        shard: u16,
        delta: i32,
    },
    /// A device acknowledged its durable user stream up to `seq` (cumulative).
    Ack {
        user: Arc<str>,
        /// The device key (`""` for a connection without a device).
        device: Arc<str>,
        seq: u64,
    },
    /// A subscriber's outbox had no room for some of the channel's messages and has drained:
    /// answer with what came after `after` (in `Repaired`).
    Repair {
        channel: Arc<str>,
        conn: ConnId,
        after: u64,
    },

    // ----- requests, to the home shard -----
    PushUser {
        user: Arc<str>,
        device: Option<Arc<str>>,
        policy: Policy,
        payload: Payload,
        priority: Priority,
        meta: Option<Arc<Meta>>,
        /// Durable streams: hold the report up to this long for the devices' acks (0: no).
        wait_ack_ms: u32,
        report: ReportPart,
    },
    Publish {
        channel: Arc<str>,
        payload: Payload,
        priority: Priority,
        meta: Option<Arc<Meta>>,
        report: ReportPart,
    },
    /// A client's own publish (the token's `pub_allow`, or a backend, allowed it): published
    /// like `Publish`, and where it went is told to `from` in `Published`.
    ClientPublish {
        channel: Arc<str>,
        payload: Payload,
        from: ConnId,
        id: u32,
        report: ReportPart,
    },
    /// A broadcast, to the broadcast stream's home: it numbers it, encodes it once and hands
    /// every shard a reference.
    Broadcast {
        payload: Payload,
        priority: Priority,
        meta: Option<Arc<Meta>>,
        report: ReportPart,
    },
    KickUser {
        user: Arc<str>,
        reason: CloseReason,
        report: ReportPart,
    },
    QueryUser {
        user: Arc<str>,
        reply: oneshot::Sender<Vec<ConnInfo>>,
    },
    /// Where a stream stands and what its history holds after `since` (at most `limit`).
    QueryStream {
        key: StreamKey,
        since: u64,
        limit: usize,
        reply: oneshot::Sender<StreamInfo>,
    },
    QueryChannel {
        channel: Arc<str>,
        reply: oneshot::Sender<u64>,
    },
    /// What a user's mailbox holds (and, with `clear`, empty it first: then `cleared` says
    /// how many messages went).
    QueryMailbox {
        user: Arc<str>,
        clear: bool,
        reply: oneshot::Sender<(super::mailbox::MailInfo, usize, bool)>,
    },

    // ----- answers of the home, to the shard holding the connection -----
    /// The home counted the subscription: from now on the channel's deliveries for this
    /// connection come after this message, from `at` on (after `catch_up`'s frames, if any).
    Subscribed {
        conn: ConnId,
        channel: Arc<str>,
        at: Position,
        catch_up: Option<CatchUp>,
    },
    /// The answer to `Repair`: what the subscriber missed, or a reset. `kept`: the channel
    /// keeps history (so a reset means the gap outgrew it).
    Repaired {
        conn: ConnId,
        channel: Arc<str>,
        catch_up: CatchUp,
        kept: bool,
    },
    /// The user's home recorded the connection; its user stream stands at `at`. On a durable
    /// stream, `mail` is what the device has not acknowledged (sent after the welcome).
    Joined {
        conn: ConnId,
        at: Position,
        mail: Option<Box<MailCatchUp>>,
    },
    /// Frames of a durable user stream for one connection: redeliveries, or a `cancel`.
    Mail {
        conn: ConnId,
        frames: Vec<Frame>,
    },
    /// A `ClientPublish` of `conn` became this seq of the channel (none: an ephemeral channel
    /// nobody follows, where nothing is numbered).
    Published {
        conn: ConnId,
        id: u32,
        channel: Arc<str>,
        seq: Option<u64>,
    },

    /// The shard's log writer: commits up to a number are durable (or failed).
    Synced {
        commit: ringcast_store::Commit,
    },

    // ----- work, to the shard holding the connections -----
    Deliver {
        target: Target,
        frame: Frame,
        report: ReportPart,
    },
    /// A message to one connection; its shard numbers it in the connection's direct stream.
    SendConn {
        conn: ConnId,
        payload: Payload,
        priority: Priority,
        meta: Option<Arc<Meta>>,
        report: ReportPart,
    },
    Kick {
        conns: Vec<ConnId>,
        reason: CloseReason,
        report: Option<ReportPart>,
    },
}
