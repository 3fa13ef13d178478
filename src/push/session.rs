//! A push connection's client session: who it is, what it follows, and what it says. A pure
//! state machine: it takes the client's messages and the time and returns [`Effect`]s (frames
//! to queue, subscriptions to make, directory updates, a close); the shard applies them.

use std::sync::Arc;

use bytes::Bytes;

use crate::proto::client::{self, ClientError, ClientMsg};
use crate::proto::CloseReason;

use super::effect::{Effect, Effects, Now};
use super::identity::Identity;
use super::ids::{home_of, ConnId};
use super::msg::ShardMsg;

/// What every session of a shard shares, derived from the configuration once.
#[derive(Debug)]
pub struct SessionParams {
    pub max_channels: usize,
    /// Bad client messages allowed per minute before the connection is closed with 1008.
    pub max_client_errors: u32,
    pub minute_ticks: u64,
    /// Activity reaches the user's home at most once per this many ticks.
    pub report_ticks: u64,
    /// The application heartbeat text (empty: none) and its answer, encoded once.
    pub heartbeat: Vec<u8>,
    pub heartbeat_frame: Bytes,
    /// Told to clients in `welcome`.
    pub epoch: u64,
    /// Shards on this node (home shards are computed from it).
    pub shards: usize,
}

/// Who a push connection is and what it follows; allocated only for connections that have
/// any of it (an anonymous connection that subscribes to nothing and says nothing wrong has
/// none).
#[derive(Debug, Default)]
pub struct Session {
    pub user: Option<Arc<str>>,
    pub device: Option<Arc<str>>,
    pub channels: Vec<Arc<str>>,
    /// Last sequence number of this connection's direct stream.
    pub direct_seq: u64,
    /// Bad client messages in the current minute, and the tick that minute began.
    errors: u32,
    errors_since: u32,
    /// Tick of the last activity report to the user's home shard.
    reported: u32,
}

impl Session {
    /// A push connection is open: subscribe its channels, tell its user's home, welcome it.
    pub fn open(
        conn: ConnId,
        id: Identity,
        now: Now,
        p: &SessionParams,
        out: &mut Effects,
    ) -> Option<Box<Session>> {
        let mut slot = (id.user.is_some() || !id.channels.is_empty()).then(|| {
            Box::new(Session {
                user: id.user.clone(),
                device: id.device.clone(),
                channels: Vec::with_capacity(id.channels.len()),
                ..Default::default()
            })
        });
        for ch in &id.channels {
            subscribe(&mut slot, conn, ch.clone(), p, out);
        }
        if let Some(user) = &id.user {
            let msg = ShardMsg::UserJoined {
                user: user.clone(),
                device: id.device.clone(),
                conn,
                at_ms: now.ms,
            };
            out.push_back(Effect::Update { shard: home_of(user, p.shards), msg });
        }
        let channels: Vec<&str> = id.channels.iter().map(|c| &**c).collect();
        let body = client::welcome(
            &conn.to_string(),
            id.user.as_deref(),
            id.device.as_deref(),
            p.epoch,
            &channels,
        );
        out.push_back(Effect::Reply { conn, body });
        slot
    }

    /// A whole text or binary message from the client.
    pub fn on_message(
        slot: &mut Option<Box<Session>>,
        conn: ConnId,
        text: bool,
        msg: &[u8],
        now: Now,
        p: &SessionParams,
        out: &mut Effects,
    ) {
        report_activity(slot, conn, now, p, out);
        if !text {
            client_error(slot, conn, ClientError::BinaryNotAccepted, now, p, out);
            return;
        }
        if !p.heartbeat.is_empty() && msg == p.heartbeat.as_slice() {
            out.push_back(Effect::ReplyFrame { conn, frame: p.heartbeat_frame.clone() });
            return;
        }
        match client::parse_client(msg) {
            Ok(ClientMsg::Ping) => {
                out.push_back(Effect::Reply { conn, body: client::PONG.to_vec() })
            }
            Ok(ClientMsg::Subscribe(ch)) => {
                let body = client::ack("subscribed", &ch);
                if subscribe(slot, conn, Arc::from(ch), p, out) {
                    out.push_back(Effect::Reply { conn, body });
                } else {
                    client_error(slot, conn, ClientError::TooManyChannels, now, p, out);
                }
            }
            Ok(ClientMsg::Unsubscribe(ch)) => {
                if unsubscribe(slot, conn, &ch, out) {
                    let body = client::ack("unsubscribed", &ch);
                    out.push_back(Effect::Reply { conn, body });
                } else {
                    client_error(slot, conn, ClientError::NotSubscribed, now, p, out);
                }
            }
            Err(e) => client_error(slot, conn, e, now, p, out),
        }
    }

    /// The next number of the connection's direct stream.
    pub fn next_direct_seq(slot: &mut Option<Box<Session>>) -> u64 {
        let session = slot.get_or_insert_with(Default::default);
        session.direct_seq += 1;
        session.direct_seq
    }

    /// The connection is closing: it takes no more pushes, so it leaves every channel and its
    /// user's directory now, not when the close handshake ends.
    pub fn close(self, conn: ConnId, p: &SessionParams, out: &mut Effects) {
        for channel in self.channels {
            out.push_back(Effect::Unsubscribe { conn, channel });
        }
        if let Some(user) = self.user {
            let shard = home_of(&user, p.shards);
            out.push_back(Effect::Update { shard, msg: ShardMsg::UserLeft { user, conn } });
        }
    }
}

/// Subscribes the connection; false if it is at its channel limit (already subscribed counts
/// as done).
fn subscribe(
    slot: &mut Option<Box<Session>>,
    conn: ConnId,
    channel: Arc<str>,
    p: &SessionParams,
    out: &mut Effects,
) -> bool {
    let session = slot.get_or_insert_with(Default::default);
    if session.channels.contains(&channel) {
        return true;
    }
    if session.channels.len() >= p.max_channels {
        return false;
    }
    session.channels.push(channel.clone());
    out.push_back(Effect::Subscribe { conn, channel });
    true
}

/// Unsubscribes the connection; false if it was not subscribed.
fn unsubscribe(
    slot: &mut Option<Box<Session>>,
    conn: ConnId,
    channel: &str,
    out: &mut Effects,
) -> bool {
    let Some(session) = slot.as_mut() else { return false };
    let Some(pos) = session.channels.iter().position(|c| &**c == channel) else { return false };
    let channel = session.channels.swap_remove(pos);
    out.push_back(Effect::Unsubscribe { conn, channel });
    true
}

/// Answers a bad client message; too many in a minute closes the connection with 1008.
fn client_error(
    slot: &mut Option<Box<Session>>,
    conn: ConnId,
    e: ClientError,
    now: Now,
    p: &SessionParams,
    out: &mut Effects,
) {
    out.push_back(Effect::ClientError);
    let session = slot.get_or_insert_with(Default::default);
    if u64::from(now.tick.wrapping_sub(session.errors_since)) >= p.minute_ticks {
        session.errors = 0;
        session.errors_since = now.tick;
    }
    session.errors += 1;
    if session.errors > p.max_client_errors {
        out.push_back(Effect::Close { conn, reason: CloseReason::TooManyBadMessages });
        return;
    }
    out.push_back(Effect::Reply { conn, body: client::error(e) });
}

/// Tells the user's home shard this connection is active, at most once per `report_ticks`.
fn report_activity(
    slot: &mut Option<Box<Session>>,
    conn: ConnId,
    now: Now,
    p: &SessionParams,
    out: &mut Effects,
) {
    let Some(session) = slot.as_mut() else { return };
    let Some(user) = session.user.clone() else { return };
    if u64::from(now.tick.wrapping_sub(session.reported)) < p.report_ticks {
        return;
    }
    session.reported = now.tick;
    let shard = home_of(&user, p.shards);
    out.push_back(Effect::Update {
        shard,
        msg: ShardMsg::UserActive { user, conn, at_ms: now.ms },
    });
}
