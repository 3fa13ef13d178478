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
use super::streams::{CatchUp, Position, StreamKey};
use super::token::{SessionToken, TokenKey};

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
    /// Session tokens: the key they are signed with and how long one stays valid.
    pub(crate) token_key: TokenKey,
    pub(crate) session_ttl_ms: u64,
}

/// Who a push connection is and what it follows; allocated only for connections that have
/// any of it (an anonymous connection that subscribes to nothing and says nothing wrong has
/// none).
#[derive(Debug, Default)]
pub(crate) struct Session {
    pub(crate) user: Option<Arc<str>>,
    device: Option<Arc<str>>,
    /// Every channel asked for (answered by its home or not yet).
    pub(crate) channels: Vec<Arc<str>>,
    /// Last sequence number of this connection's direct stream.
    pub(crate) direct_seq: u64,
    /// Bad client messages in the current minute, and the tick that minute began.
    errors: u32,
    errors_since: u32,
    /// Tick of the last activity report to the user's home shard.
    reported: u32,
    /// When the client's current session token was issued (Unix ms).
    token_ms: u64,
    /// Until the welcome goes out: what it will say. Freed once it is sent.
    opening: Option<Box<Opening>>,
}

/// A welcome waiting for the positions of the streams the connection starts with.
#[derive(Debug)]
struct Opening {
    channels: Vec<Arc<str>>,
    /// When the connection opened (Unix ms): its token's issue time.
    at_ms: u64,
    streams: Vec<(StreamKey, Position)>,
    /// Streams whose home has not answered yet (the user's, each channel's).
    awaited: Vec<StreamKey>,
    /// Replies that must follow the welcome (`resumed`, `reset`).
    after: Vec<Vec<u8>>,
}

impl Session {
    /// A push connection is open: ask each channel's home to count it (from its `?resume=`
    /// position where it gave one) and its user's home to record it. The welcome goes out
    /// once every home has answered with its stream's position ([`Session::on_subscribed`],
    /// [`Session::on_joined`]), or at once if there is nothing to wait for.
    pub(crate) fn open(
        conn: ConnId,
        id: Identity,
        now: Now,
        p: &SessionParams,
        out: &mut Effects,
    ) -> Option<Box<Session>> {
        let mut channels: Vec<(Arc<str>, Option<Position>)> =
            id.channels.iter().map(|c| (c.clone(), None)).collect();
        let mut after = Vec::new();
        if let Some(token) = &id.session {
            match verify(token, id.user.as_deref(), id.device.as_deref(), now, p) {
                Some(t) => {
                    for c in t.channels {
                        let c: Arc<str> = Arc::from(c);
                        if !channels.iter().any(|(x, _)| *x == c) {
                            channels.push((c, None));
                        }
                    }
                }
                None => after.push(client::SESSION_EXPIRED.to_vec()),
            }
        }
        for (c, pos) in &id.resume {
            match channels.iter_mut().find(|(x, _)| x == c) {
                Some(entry) => entry.1 = Some(*pos),
                None => channels.push((c.clone(), Some(*pos))),
            }
        }
        if id.user.is_none() && channels.is_empty() {
            let token = sign(None, id.device.as_deref(), &[], now.ms, p);
            let body = client::welcome(
                &conn.to_string(),
                None,
                id.device.as_deref(),
                p.epoch,
                &[],
                &[],
                Some(&token),
            );
            out.push_back(Effect::Welcome { conn, body });
            for body in after {
                out.push_back(Effect::Reply { conn, body });
            }
            return None;
        }
        let mut session = Box::new(Session {
            user: id.user.clone(),
            device: id.device.clone(),
            channels: Vec::with_capacity(channels.len()),
            token_ms: now.ms,
            ..Default::default()
        });
        let mut opening = Opening {
            channels: Vec::with_capacity(channels.len()),
            at_ms: now.ms,
            streams: Vec::with_capacity(channels.len() + 1),
            awaited: Vec::with_capacity(channels.len() + 1),
            after,
        };
        for (ch, since) in channels {
            if session.channels.len() >= p.max_channels || session.channels.contains(&ch) {
                continue; // the identity was checked against the limit; a duplicate is one
            }
            session.channels.push(ch.clone());
            opening.channels.push(ch.clone());
            opening.awaited.push(StreamKey::Channel(ch.clone()));
            out.push_back(Effect::Subscribe { conn, channel: ch, since, count: true });
        }
        if let Some(user) = &id.user {
            let msg = ShardMsg::UserJoined {
                user: user.clone(),
                device: id.device.clone(),
                conn,
                at_ms: now.ms,
            };
            opening.awaited.push(StreamKey::User(user.clone()));
            out.push_back(Effect::Update { shard: home_of(user, p.shards), msg });
        }
        session.opening = Some(Box::new(opening));
        Some(session)
    }

    /// Whether the connection still waits for its welcome (nothing may be written before it).
    pub(crate) fn welcome_pending(slot: &Option<Box<Session>>) -> bool {
        slot.as_ref().is_some_and(|s| s.opening.is_some())
    }

    /// A channel's home counted the subscription, with the channel's position and what the
    /// client missed if it resumed. Returns whether the connection should now receive the
    /// channel's deliveries (false if it has since unsubscribed or was never subscribed).
    pub(crate) fn on_subscribed(
        slot: &mut Option<Box<Session>>,
        conn: ConnId,
        channel: &Arc<str>,
        (at, catch_up): (Position, Option<CatchUp>),
        now: Now,
        p: &SessionParams,
        out: &mut Effects,
    ) -> bool {
        let Some(session) = slot.as_mut() else { return false };
        let key = StreamKey::Channel(channel.clone());
        if !session.channels.contains(channel) {
            // Left before the answer: nothing to say of it, but a welcome may wait for it.
            session.answered(conn, key, None, Vec::new(), p, out);
            return false;
        }
        let for_welcome = session.opening.as_ref().is_some_and(|o| o.awaited.contains(&key));
        let mut replies = Vec::new();
        match catch_up {
            None => {
                if !for_welcome {
                    replies.push(client::subscribed(channel, at));
                }
            }
            Some(CatchUp::Replay { from, to, frames }) => {
                replies.push(client::resumed(&key.wire(), from, to.seq));
                if !frames.is_empty() {
                    out.push_back(Effect::Replay { conn, stream: key.clone(), at: to, frames });
                }
            }
            Some(CatchUp::Reset { at, reason }) => {
                replies.push(client::reset(&key.wire(), at, reason));
            }
        }
        if session.opening.is_none() {
            // Answers to a subscription change carry the token for the subscriptions now.
            replies = replies.into_iter().map(|r| session.fresh_token(r, now, p)).collect();
        }
        session.answered(conn, key, Some(at), replies, p, out);
        true
    }

    /// The user's home recorded the connection; its user stream stands at `at`.
    pub(crate) fn on_joined(
        slot: &mut Option<Box<Session>>,
        conn: ConnId,
        at: Position,
        p: &SessionParams,
        out: &mut Effects,
    ) {
        let Some(session) = slot.as_mut() else { return };
        let Some(user) = session.user.clone() else { return };
        session.answered(conn, StreamKey::User(user), Some(at), Vec::new(), p, out);
    }

    /// A home answered for `key`: its replies go out now, or after the welcome while that
    /// still waits; the last awaited answer sends the welcome. An answer the welcome does not
    /// wait for (a stream asked for after the open) only queues its replies behind it.
    fn answered(
        &mut self,
        conn: ConnId,
        key: StreamKey,
        position: Option<Position>,
        replies: Vec<Vec<u8>>,
        p: &SessionParams,
        out: &mut Effects,
    ) {
        let Some(opening) = self.opening.as_mut() else {
            for body in replies {
                out.push_back(Effect::Reply { conn, body });
            }
            return;
        };
        opening.after.extend(replies);
        let Some(i) = opening.awaited.iter().position(|k| *k == key) else { return };
        opening.awaited.swap_remove(i);
        if let Some(pos) = position {
            opening.streams.push((key, pos));
        }
        if !opening.awaited.is_empty() {
            return;
        }
        let Some(o) = self.opening.take() else { return };
        // The channels it still follows (one may have been left before the welcome).
        let names: Vec<&str> =
            o.channels.iter().filter(|c| self.channels.contains(c)).map(|c| &**c).collect();
        let streams: Vec<_> = o.streams.iter().map(|(k, pos)| (k.wire(), *pos)).collect();
        // The token names what the session follows now (a channel asked for since the open
        // included).
        let token = self.token(o.at_ms, p);
        let body = client::welcome(
            &conn.to_string(),
            self.user.as_deref(),
            self.device.as_deref(),
            p.epoch,
            &names,
            &streams,
            Some(&token),
        );
        out.push_back(Effect::Welcome { conn, body });
        for body in o.after {
            out.push_back(Effect::Reply { conn, body });
        }
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
                // An active client's token is renewed on its pong once half its ttl has passed,
                // so it stays valid while the client is around.
                let mut body = client::PONG.to_vec();
                if let Some(s) = slot.as_mut() {
                    if now.ms.saturating_sub(s.token_ms) >= p.session_ttl_ms / 2 {
                        body = s.fresh_token(body, now, p);
                    }
                }
                out.push_back(Effect::Reply { conn, body })
            }
            Ok(ClientMsg::Subscribe { channel, since }) => {
                let channel: Arc<str> = Arc::from(channel);
                let already = slot.as_ref().is_some_and(|s| s.channels.contains(&channel));
                if already && since.is_some() {
                    // A replay now would repeat what it received live since it subscribed.
                    client_error(slot, conn, ClientError::AlreadySubscribed, now, p, out);
                } else if already {
                    // Answered with the channel's position, counted once.
                    out.push_back(Effect::Subscribe { conn, channel, since: None, count: false });
                } else if !subscribe(slot, conn, channel, since, p, out) {
                    client_error(slot, conn, ClientError::TooManyChannels, now, p, out);
                }
            }
            Ok(ClientMsg::Unsubscribe(ch)) => {
                if unsubscribe(slot, conn, &ch, out) {
                    let mut body = client::ack("unsubscribed", &ch);
                    if let Some(s) = slot.as_mut() {
                        body = s.fresh_token(body, now, p);
                    }
                    out.push_back(Effect::Reply { conn, body });
                } else {
                    client_error(slot, conn, ClientError::NotSubscribed, now, p, out);
                }
            }
            Ok(ClientMsg::Resume { session, streams }) => {
                resume(slot, conn, session.as_deref(), streams, now, p, out)
            }
            Err(e) => client_error(slot, conn, e, now, p, out),
        }
    }

    /// `body` with a token for what the session follows now, issued now.
    fn fresh_token(&mut self, body: Vec<u8>, now: Now, p: &SessionParams) -> Vec<u8> {
        self.token_ms = now.ms;
        client::with_session(body, &self.token(now.ms, p))
    }

    /// A token naming this session's user, device and channels, issued at `at_ms`.
    fn token(&self, at_ms: u64, p: &SessionParams) -> String {
        let channels: Vec<&str> = self.channels.iter().map(|c| &**c).collect();
        sign(self.user.as_deref(), self.device.as_deref(), &channels, at_ms, p)
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

/// `resume`: subscribe to each named channel from its position. All or nothing: a channel
/// already subscribed (it would get live messages twice) or one over the limit refuses it.
fn resume(
    slot: &mut Option<Box<Session>>,
    conn: ConnId,
    session: Option<&str>,
    streams: Vec<(String, Position)>,
    now: Now,
    p: &SessionParams,
    out: &mut Effects,
) {
    if let Some(token) = session {
        let (user, device) =
            slot.as_ref().map_or((None, None), |s| (s.user.clone(), s.device.clone()));
        match verify(token, user.as_deref(), device.as_deref(), now, p) {
            None => out.push_back(Effect::Reply { conn, body: client::SESSION_EXPIRED.to_vec() }),
            Some(t) => {
                // The token's channels without a position in `streams` come back plainly.
                let have: Vec<Arc<str>> =
                    slot.as_ref().map_or_else(Vec::new, |s| s.channels.clone());
                for c in t.channels {
                    let named = streams.iter().any(|(x, _)| *x == c);
                    if !named
                        && !have.iter().any(|x| **x == *c)
                        && !subscribe(slot, conn, Arc::from(c), None, p, out)
                    {
                        client_error(slot, conn, ClientError::TooManyChannels, now, p, out);
                        break;
                    }
                }
            }
        }
        if streams.is_empty() {
            return;
        }
    }
    let have = slot.as_ref().map_or(0, |s| s.channels.len());
    let subscribed = |c: &str| slot.as_ref().is_some_and(|s| s.channels.iter().any(|x| &**x == c));
    if streams.iter().any(|(c, _)| subscribed(c)) {
        client_error(slot, conn, ClientError::AlreadySubscribed, now, p, out);
        return;
    }
    if have + streams.len() > p.max_channels {
        client_error(slot, conn, ClientError::TooManyChannels, now, p, out);
        return;
    }
    for (channel, since) in streams {
        subscribe(slot, conn, Arc::from(channel), Some(since), p, out);
    }
}

/// The token's claims if `token` is ours, unexpired, and for this user and device.
fn verify(
    token: &str,
    user: Option<&str>,
    device: Option<&str>,
    now: Now,
    p: &SessionParams,
) -> Option<SessionToken> {
    let t = p.token_key.verify(token, now.ms).ok()?;
    (t.user.as_deref() == user && t.device.as_deref() == device).then_some(t)
}

fn sign(
    user: Option<&str>,
    device: Option<&str>,
    channels: &[&str],
    at_ms: u64,
    p: &SessionParams,
) -> String {
    p.token_key.sign(&SessionToken {
        user: user.map(str::to_string),
        device: device.map(str::to_string),
        channels: channels.iter().map(|c| c.to_string()).collect(),
        expires_ms: at_ms.saturating_add(p.session_ttl_ms),
    })
}

/// Asks the channel's home to count a new subscription (answered by `Subscribed`); false if
/// the connection is at its channel limit.
fn subscribe(
    slot: &mut Option<Box<Session>>,
    conn: ConnId,
    channel: Arc<str>,
    since: Option<Position>,
    p: &SessionParams,
    out: &mut Effects,
) -> bool {
    let session = slot.get_or_insert_with(Default::default);
    if session.channels.len() >= p.max_channels {
        return false;
    }
    session.channels.push(channel.clone());
    out.push_back(Effect::Subscribe { conn, channel, since, count: true });
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
    use crate::proto::client::ResetReason;

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
            token_key: TokenKey::new(b"session test key"),
            session_ttl_ms: 120_000,
        }
    }

    const C: ConnId = ConnId { shard: 1, slot: 7, gen: 3 };

    /// The effects as text, replies without the session token they may carry (checked by
    /// `a_session_token_…`).
    fn text(out: &Effects) -> Vec<String> {
        out.iter()
            .map(|e| match e {
                Effect::Reply { body, .. } => {
                    let t = String::from_utf8_lossy(body).into_owned();
                    match t.find(r#","session":"#) {
                        Some(i) => format!("{}}}", &t[..i]),
                        None => t,
                    }
                }
                Effect::Welcome { body, .. } => String::from_utf8_lossy(body).into_owned(),
                Effect::Subscribe { channel, since, count: true, .. } => match since {
                    None => format!("+{channel}"),
                    Some(p) => format!("+{channel}@{}.{}", p.epoch, p.seq),
                },
                Effect::Subscribe { channel, count: false, .. } => format!("?{channel}"),
                Effect::Unsubscribe { channel, .. } => format!("-{channel}"),
                Effect::Replay { frames, .. } => format!("replay {}", frames.len()),
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
            resume: Vec::new(),
            session: None,
        };
        Session::open(C, id, Now { tick: 0, ms: 100 }, &params(), out)
    }

    const AT: Position = Position { epoch: 9, seq: 4 };

    fn answer(
        s: &mut Option<Box<Session>>,
        ch: &str,
        catch_up: Option<CatchUp>,
        out: &mut Effects,
    ) -> bool {
        Session::on_subscribed(s, C, &Arc::from(ch), (AT, catch_up), Now::default(), &params(), out)
    }

    #[test]
    fn opening_asks_the_homes_and_welcomes_once_they_answer() {
        let mut out = Effects::new();
        let mut s = open(Some("42"), &["a", "b"], &mut out);
        assert_eq!(text(&out), ["+a", "+b", "joined"]);
        match &out[2] {
            Effect::Update { shard, .. } => assert_eq!(*shard, home_of("42", 4)),
            e => panic!("{e:?}"),
        }
        assert!(Session::welcome_pending(&s));
        out.clear();
        assert!(answer(&mut s, "b", None, &mut out));
        Session::on_joined(&mut s, C, Position { epoch: 9, seq: 0 }, &params(), &mut out);
        assert!(out.is_empty(), "one home has not answered");
        assert!(answer(&mut s, "a", None, &mut out));
        let t = text(&out);
        assert_eq!(t.len(), 1);
        let w: serde_json::Value = serde_json::from_str(&t[0]).unwrap();
        assert_eq!(w["type"], "welcome");
        assert_eq!(w["streams"]["channel:a"]["seq"], 4);
        assert_eq!(w["streams"]["user:42"]["seq"], 0);
        assert!(!Session::welcome_pending(&s));
        out.clear();
        s.unwrap().close(C, &params(), &mut out);
        assert_eq!(text(&out), ["-a", "-b", "left"]);
    }

    #[test]
    fn an_anonymous_connection_has_no_session_until_it_needs_one() {
        let mut out = Effects::new();
        let mut s = open(None, &[], &mut out);
        assert!(s.is_none());
        assert!(matches!(out.pop_front(), Some(Effect::Welcome { .. })), "welcomed at once");
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
        assert_eq!(text(&out), ["+x"]);
        out.clear();
        assert!(answer(&mut s, "x", None, &mut out));
        assert_eq!(text(&out), [r#"{"type":"subscribed","channel":"x","epoch":9,"seq":4}"#]);
    }

    #[test]
    fn subscriptions_are_capped_and_unsubscribing_twice_is_an_error() {
        let p = params();
        let mut out = Effects::new();
        let mut s = open(None, &["a", "b"], &mut out);
        answer(&mut s, "a", None, &mut out);
        answer(&mut s, "b", None, &mut out);
        out.clear();
        let sub = br#"{"type":"subscribe","channel":"c"}"#;
        Session::on_message(&mut s, C, true, sub, Now::default(), &p, &mut out);
        let t = text(&out);
        assert_eq!(t[0], "client-error");
        assert!(t[1].contains("too_many_channels"), "{t:?}");
        out.clear();
        let again = br#"{"type":"subscribe","channel":"a"}"#;
        Session::on_message(&mut s, C, true, again, Now::default(), &p, &mut out);
        assert_eq!(text(&out), ["?a"], "already subscribed: asks where it stands, counts nothing");
        out.clear();
        let unsub = br#"{"type":"unsubscribe","channel":"a"}"#;
        Session::on_message(&mut s, C, true, unsub, Now::default(), &p, &mut out);
        Session::on_message(&mut s, C, true, unsub, Now::default(), &p, &mut out);
        let t = text(&out);
        assert_eq!(t[..2], ["-a", r#"{"type":"unsubscribed","channel":"a"}"#]);
        assert_eq!(t[2], "client-error");
        out.clear();
        assert!(
            !answer(&mut s, "a", None, &mut out),
            "a late answer for a channel left is ignored"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn resuming_replays_or_resets_and_never_repeats_a_live_subscription() {
        let p = params();
        let mut out = Effects::new();
        let mut s = open(None, &["live"], &mut out);
        answer(&mut s, "live", None, &mut out);
        out.clear();
        let resume = br#"{"type":"resume","streams":{"channel:a":{"epoch":9,"seq":1},"channel:live":{"epoch":9,"seq":1}}}"#;
        Session::on_message(&mut s, C, true, resume, Now::default(), &p, &mut out);
        assert_eq!(text(&out)[0], "client-error", "`live` is subscribed: a replay would repeat it");
        out.clear();
        let resume = br#"{"type":"resume","streams":{"channel:a":{"epoch":9,"seq":1}}}"#;
        Session::on_message(&mut s, C, true, resume, Now::default(), &p, &mut out);
        assert_eq!(text(&out), ["+a@9.1"]);
        out.clear();
        let frames =
            vec![Bytes::from_static(b"2"), Bytes::from_static(b"3"), Bytes::from_static(b"4")];
        let replay = CatchUp::Replay { from: 2, to: AT, frames };
        assert!(answer(&mut s, "a", Some(replay), &mut out));
        assert_eq!(
            text(&out),
            ["replay 3", r#"{"type":"resumed","stream":"channel:a","from":2,"to":4}"#]
        );
        out.clear();
        let unsub = br#"{"type":"unsubscribe","channel":"live"}"#;
        Session::on_message(&mut s, C, true, unsub, Now::default(), &p, &mut out);
        let sub = br#"{"type":"subscribe","channel":"b","since":{"epoch":8,"seq":3}}"#;
        Session::on_message(&mut s, C, true, sub, Now::default(), &p, &mut out);
        assert_eq!(text(&out).last().map(String::as_str), Some("+b@8.3"));
        out.clear();
        let reset = CatchUp::Reset { at: AT, reason: ResetReason::EpochChanged };
        assert!(answer(&mut s, "b", Some(reset), &mut out));
        assert_eq!(
            text(&out),
            [r#"{"type":"reset","stream":"channel:b","epoch":9,"seq":4,"reason":"epoch_changed"}"#]
        );
    }

    fn token_of(out: &Effects) -> Option<String> {
        out.iter().rev().find_map(|e| match e {
            Effect::Reply { body, .. } | Effect::Welcome { body, .. } => {
                let v: serde_json::Value = serde_json::from_slice(body).ok()?;
                v["session"].as_str().map(str::to_string)
            }
            _ => None,
        })
    }

    #[test]
    fn a_session_token_brings_the_subscriptions_back_and_only_for_its_user() {
        let p = params();
        let mut out = Effects::new();
        let mut s = open(Some("u"), &["a"], &mut out);
        answer(&mut s, "a", None, &mut out);
        Session::on_joined(&mut s, C, AT, &p, &mut out);
        let welcome_token = token_of(&out).expect("the welcome carries a token");
        out.clear();
        let sub = br#"{"type":"subscribe","channel":"b"}"#;
        Session::on_message(&mut s, C, true, sub, Now { tick: 1, ms: 1000 }, &p, &mut out);
        let b = Arc::from("b");
        Session::on_subscribed(&mut s, C, &b, (AT, None), Now { tick: 1, ms: 1000 }, &p, &mut out);
        let token = token_of(&out).expect("the answer to a subscription change carries a token");
        assert_ne!(token, welcome_token);
        // A new connection of the same user resumes by token: a and b come back.
        let mut out = Effects::new();
        let mut again = open(Some("u"), &[], &mut out);
        Session::on_joined(&mut again, C, AT, &p, &mut out);
        out.clear();
        let resume = format!(
            r#"{{"type":"resume","session":"{token}","streams":{{"channel:b":{{"epoch":9,"seq":1}}}}}}"#
        );
        Session::on_message(
            &mut again,
            C,
            true,
            resume.as_bytes(),
            Now { tick: 2, ms: 2000 },
            &p,
            &mut out,
        );
        assert_eq!(text(&out), ["+a", "+b@9.1"], "a plainly, b from its position");
        // Expired, tampered and another user's tokens are refused with session_expired.
        let expired = format!(r#"{{"type":"resume","session":"{token}"}}"#);
        let mut out = Effects::new();
        let mut late = open(Some("u"), &[], &mut out);
        Session::on_joined(&mut late, C, AT, &p, &mut out);
        out.clear();
        Session::on_message(
            &mut late,
            C,
            true,
            expired.as_bytes(),
            Now { tick: 3, ms: 1000 + 120_000 },
            &p,
            &mut out,
        );
        assert_eq!(text(&out), [r#"{"type":"reset","reason":"session_expired"}"#]);
        let tampered = format!(r#"{{"type":"resume","session":"x{token}"}}"#);
        let mut other = open(Some("v"), &[], &mut out);
        Session::on_joined(&mut other, C, AT, &p, &mut out);
        for msg in [tampered, format!(r#"{{"type":"resume","session":"{token}"}}"#)] {
            out.clear();
            Session::on_message(
                &mut other,
                C,
                true,
                msg.as_bytes(),
                Now { tick: 3, ms: 3000 },
                &p,
                &mut out,
            );
            assert_eq!(text(&out), [r#"{"type":"reset","reason":"session_expired"}"#], "{msg}");
        }
        // ?session= at connect does the same before the welcome.
        let mut out = Effects::new();
        let id = Identity {
            user: Some(Arc::from("u")),
            device: None,
            channels: vec![],
            resume: vec![],
            session: Some(token),
        };
        let _ = Session::open(C, id, Now { tick: 4, ms: 4000 }, &p, &mut out);
        assert_eq!(text(&out), ["+a", "+b", "joined"]);
    }

    #[test]
    fn what_a_client_does_before_its_welcome_never_holds_or_reorders_it() {
        let p = params();
        let mut out = Effects::new();
        let mut s = open(Some("u"), &["a", "b"], &mut out);
        out.clear();
        // Leaves `a` and resumes `c` before any home has answered.
        let unsub = br#"{"type":"unsubscribe","channel":"a"}"#;
        Session::on_message(&mut s, C, true, unsub, Now::default(), &p, &mut out);
        let resume = br#"{"type":"resume","streams":{"channel:c":{"epoch":9,"seq":1}}}"#;
        Session::on_message(&mut s, C, true, resume, Now::default(), &p, &mut out);
        out.clear();
        // The answer for c (not awaited) must not send the welcome early.
        let frames = vec![Bytes::from_static(b"2")];
        answer(&mut s, "c", Some(CatchUp::Replay { from: 2, to: AT, frames }), &mut out);
        assert!(!text(&out).iter().any(|t| t.contains("welcome")), "{:?}", text(&out));
        // a's late answer and b's and the user's complete it.
        assert!(!answer(&mut s, "a", None, &mut out));
        answer(&mut s, "b", None, &mut out);
        assert!(Session::welcome_pending(&s));
        Session::on_joined(&mut s, C, AT, &p, &mut out);
        let t = text(&out);
        let w = t.iter().position(|x| x.starts_with(r#"{"type":"welcome""#)).expect("welcomed");
        let v: serde_json::Value = serde_json::from_str(&t[w]).unwrap();
        assert_eq!(v["channels"], serde_json::json!(["b"]), "a was left");
        let resumed = t.iter().position(|x| x.starts_with(r#"{"type":"resumed""#)).unwrap();
        assert!(resumed > w, "answers queue behind the welcome: {t:?}");
    }

    #[test]
    fn answers_to_a_resume_at_connect_follow_the_welcome() {
        let mut out = Effects::new();
        let id = Identity {
            user: None,
            device: None,
            channels: vec![],
            resume: vec![(Arc::from("a"), Position { epoch: 9, seq: 2 })],
            session: None,
        };
        let mut s = Session::open(C, id, Now::default(), &params(), &mut out);
        assert_eq!(text(&out), ["+a@9.2"]);
        out.clear();
        let frames = vec![Bytes::from_static(b"3"), Bytes::from_static(b"4")];
        answer(&mut s, "a", Some(CatchUp::Replay { from: 3, to: AT, frames }), &mut out);
        let t = text(&out);
        assert_eq!(t[0], "replay 2", "frames wait behind the held welcome in the outbox");
        assert!(t[1].starts_with(r#"{"type":"welcome""#), "{t:?}");
        assert!(t[2].starts_with(r#"{"type":"resumed""#), "{t:?}");
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
