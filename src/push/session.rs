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
pub(crate) struct SessionParams {
    pub(crate) max_channels: usize,
    /// Bad client messages allowed per minute before the connection is closed with 1008.
    pub(crate) max_client_errors: u32,
    pub(crate) minute_ticks: u64,
    /// Activity reaches the user's home at most once per this many ticks.
    pub(crate) report_ticks: u64,
    /// The application heartbeat text (empty: none) and its answer, encoded once.
    pub(crate) heartbeat: Vec<u8>,
    pub(crate) heartbeat_frame: Bytes,
    /// Told to clients in `welcome`.
    pub(crate) epoch: u64,
    /// Shards on this node (home shards are computed from it).
    pub(crate) shards: usize,
}

/// Who a push connection is and what it follows; allocated only for connections that have
/// any of it (an anonymous connection that subscribes to nothing and says nothing wrong has
/// none).
#[derive(Debug, Default)]
pub(crate) struct Session {
    pub(crate) user: Option<Arc<str>>,
    pub(crate) channels: Vec<Arc<str>>,
    /// Last sequence number of this connection's direct stream.
    pub(crate) direct_seq: u64,
    /// Bad client messages in the current minute, and the tick that minute began.
    errors: u32,
    errors_since: u32,
    /// Tick of the last activity report to the user's home shard.
    reported: u32,
}

impl Session {
    /// A push connection is open: subscribe its channels, tell its user's home, welcome it.
    pub(crate) fn open(
        conn: ConnId,
        id: Identity,
        now: Now,
        p: &SessionParams,
        out: &mut Effects,
    ) -> Option<Box<Session>> {
        let mut slot = (id.user.is_some() || !id.channels.is_empty()).then(|| {
            Box::new(Session {
                user: id.user.clone(),
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
    pub(crate) fn on_message(
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
    pub(crate) fn next_direct_seq(slot: &mut Option<Box<Session>>) -> u64 {
        let session = slot.get_or_insert_with(Default::default);
        session.direct_seq += 1;
        session.direct_seq
    }

    /// The connection is closing: it takes no more pushes, so it leaves every channel and its
    /// user's directory now, not when the close handshake ends.
    pub(crate) fn close(self, conn: ConnId, p: &SessionParams, out: &mut Effects) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SessionParams {
        SessionParams {
            max_channels: 2,
            max_client_errors: 2,
            minute_ticks: 600,
            report_ticks: 10,
            heartbeat: b"hb".to_vec(),
            heartbeat_frame: Bytes::from_static(b"\x81\x02ok"),
            epoch: 9,
            shards: 4,
        }
    }

    const C: ConnId = ConnId { shard: 1, slot: 7, gen: 3 };

    fn text(out: &Effects) -> Vec<String> {
        out.iter()
            .map(|e| match e {
                Effect::Reply { body, .. } => String::from_utf8_lossy(body).into_owned(),
                Effect::Subscribe { channel, .. } => format!("+{channel}"),
                Effect::Unsubscribe { channel, .. } => format!("-{channel}"),
                Effect::Update { msg: ShardMsg::UserJoined { .. }, .. } => "joined".into(),
                Effect::Update { msg: ShardMsg::UserLeft { .. }, .. } => "left".into(),
                Effect::Update { msg: ShardMsg::UserActive { .. }, .. } => "active".into(),
                Effect::ClientError => "client-error".into(),
                Effect::Close { reason, .. } => format!("close {reason:?}"),
                e => format!("{e:?}"),
            })
            .collect()
    }

    fn open(user: Option<&str>, channels: &[&str], out: &mut Effects) -> Option<Box<Session>> {
        let id = Identity {
            user: user.map(Arc::from),
            device: None,
            channels: channels.iter().map(|c| Arc::from(*c)).collect(),
        };
        Session::open(C, id, Now { tick: 0, ms: 100 }, &params(), out)
    }

    #[test]
    fn opening_subscribes_joins_then_welcomes() {
        let mut out = Effects::new();
        let s = open(Some("42"), &["a", "b"], &mut out);
        let t = text(&out);
        assert_eq!(t[..3], ["+a", "+b", "joined"]);
        assert!(t[3].starts_with("{\"type\":\"welcome\""), "{t:?}");
        match &out[2] {
            Effect::Update { shard, .. } => assert_eq!(*shard, home_of("42", 4)),
            e => panic!("{e:?}"),
        }
        let mut out = Effects::new();
        s.unwrap().close(C, &params(), &mut out);
        assert_eq!(text(&out), ["-a", "-b", "left"]);
    }

    #[test]
    fn an_anonymous_connection_has_no_session_until_it_needs_one() {
        let mut out = Effects::new();
        let mut s = open(None, &[], &mut out);
        assert!(s.is_none());
        out.clear();
        let p = params();
        Session::on_message(&mut s, C, true, b"hb", Now::default(), &p, &mut out);
        assert!(s.is_none(), "a heartbeat allocates nothing");
        assert!(matches!(out.pop_front(), Some(Effect::ReplyFrame { .. })));
        Session::on_message(
            &mut s,
            C,
            true,
            br#"{"type":"subscribe","channel":"x"}"#,
            Now::default(),
            &p,
            &mut out,
        );
        assert_eq!(text(&out), ["+x", r#"{"type":"subscribed","channel":"x"}"#]);
        assert!(s.is_some());
    }

    #[test]
    fn subscriptions_are_capped_and_unsubscribing_twice_is_an_error() {
        let p = params();
        let mut out = Effects::new();
        let mut s = open(None, &["a", "b"], &mut out);
        out.clear();
        let sub = br#"{"type":"subscribe","channel":"c"}"#;
        Session::on_message(&mut s, C, true, sub, Now::default(), &p, &mut out);
        let t = text(&out);
        assert_eq!(t[0], "client-error");
        assert!(t[1].contains("too_many_channels"), "{t:?}");
        out.clear();
        let again = br#"{"type":"subscribe","channel":"a"}"#;
        Session::on_message(&mut s, C, true, again, Now::default(), &p, &mut out);
        assert_eq!(text(&out), [r#"{"type":"subscribed","channel":"a"}"#], "already subscribed");
        out.clear();
        let unsub = br#"{"type":"unsubscribe","channel":"a"}"#;
        Session::on_message(&mut s, C, true, unsub, Now::default(), &p, &mut out);
        Session::on_message(&mut s, C, true, unsub, Now::default(), &p, &mut out);
        let t = text(&out);
        assert_eq!(t[..2], ["-a", r#"{"type":"unsubscribed","channel":"a"}"#]);
        assert_eq!(t[2], "client-error");
    }

    #[test]
    fn too_many_bad_messages_in_a_minute_close_and_a_new_minute_forgives() {
        let p = params();
        let mut s = None;
        let mut out = Effects::new();
        let at = |tick| Now { tick, ms: 0 };
        for tick in [1, 2] {
            Session::on_message(&mut s, C, false, b"x", at(tick), &p, &mut out);
        }
        assert!(!text(&out).iter().any(|t| t.starts_with("close")));
        out.clear();
        Session::on_message(&mut s, C, true, b"{", at(700), &p, &mut out);
        assert!(!text(&out).iter().any(|t| t.starts_with("close")), "a new minute");
        Session::on_message(&mut s, C, true, b"{", at(701), &p, &mut out);
        Session::on_message(&mut s, C, true, b"{", at(702), &p, &mut out);
        assert_eq!(text(&out).last().map(String::as_str), Some("close TooManyBadMessages"));
    }

    #[test]
    fn activity_reaches_the_home_at_most_once_per_report_interval() {
        let p = params();
        let mut out = Effects::new();
        let mut s = open(Some("u"), &[], &mut out);
        out.clear();
        for tick in [10, 11, 19, 20] {
            Session::on_message(&mut s, C, true, b"hb", Now { tick, ms: 0 }, &p, &mut out);
        }
        let active = text(&out).iter().filter(|t| *t == "active").count();
        assert_eq!(active, 2);
    }
}
