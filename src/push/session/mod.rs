//! A push connection's client session: who it is, what it follows, and what it says. A pure
//! state machine: it takes the client's messages and the time and returns [`Effect`]s (frames
//! to queue, subscriptions to make, directory updates, a close); the shard applies them.

use std::sync::Arc;

use bytes::Bytes;

use crate::proto::client::{self, ClientError, ClientMsg};
use crate::proto::CloseReason;

use super::call::{Backends, Call};
use super::effect::{Effect, Effects, Now};
use super::ids::{home_of, ConnId};
use super::mailbox::NO_DEVICE;
use super::msg::{MailCatchUp, ShardMsg};
use super::streams::{CatchUp, Position, StreamKey};
use super::token::{SessionToken, TokenKey};
use crate::auth::{Authenticator, Grant, Identity};

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
    /// Checks the token of a `refresh`.
    pub(crate) auth: Arc<dyn Authenticator>,
    /// Where `rpc`, `send`, and backend-decided publishes and subscriptions go.
    pub(crate) backends: Arc<dyn Backends>,
    /// How long before a connect backend's expiry its `refresh` backend is asked.
    pub(crate) refresh_lead_ms: u64,
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
    /// What the connection's token allows; `None` (open mode): any channel.
    grant: Option<Arc<Grant>>,
    /// When the connection's token expires (Unix ms; 0: never): closed then with 4003 unless
    /// a `refresh` extends it.
    expires_ms: u64,
    /// When to ask the refresh backend to renew `expires_ms` (Unix ms; 0: not to, or asked).
    refresh_at_ms: u64,
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
        let mut after = Vec::new();
        // The channels the client named itself (open mode's `channels=`) that a backend
        // decides are asked of it only through `subscribe`; a token's `ch` was decided by
        // whoever signed it, and a session token's channels when they were subscribed.
        let mut channels: Vec<(Arc<str>, Option<Position>)> = Vec::new();
        for c in &id.channels {
            if id.grant.is_none() && backend_decides(p, c) {
                after.push(backend_only(c));
            } else {
                channels.push((c.clone(), None));
            }
        }
        if let Some(token) = &id.session {
            match verify(token, id.user.as_deref(), id.device.as_deref(), now, p) {
                Some(t) => {
                    for c in t.channels {
                        let c: Arc<str> = Arc::from(c);
                        if !allowed(id.grant.as_deref(), &c) {
                            // The token of this connection no longer allows it: said, not
                            // dropped silently.
                            after.push(forbidden(&c));
                        } else if !channels.iter().any(|(x, _)| *x == c) {
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
                // A channel a backend decides is asked of it only through `subscribe`.
                None if backend_decides(p, c) => after.push(backend_only(c)),
                None => channels.push((c.clone(), Some(*pos))),
            }
        }
        if id.user.is_none() && channels.is_empty() && id.expires_ms.is_none() {
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
            grant: id.grant.clone(),
            expires_ms: id.expires_ms.unwrap_or(0),
            ..Default::default()
        });
        if id.backend_renews && session.expires_ms > 0 {
            session.refresh_at_ms = calls::refresh_time(session.expires_ms, now.ms, p);
        }
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
                info: id.info.clone(),
            };
            opening.awaited.push(StreamKey::User(user.clone()));
            out.push_back(Effect::Update { shard: home_of(user, p.shards), msg });
        }
        session.opening = Some(Box::new(opening));
        Some(session)
    }

    /// When the connection's token expires (Unix ms), if it has one.
    pub(crate) fn expires_ms(slot: &Option<Box<Session>>) -> Option<u64> {
        slot.as_ref().map(|s| s.expires_ms).filter(|&e| e > 0)
    }

    /// When the refresh backend is to be asked (Unix ms), if it is.
    pub(crate) fn refresh_ms(slot: &Option<Box<Session>>) -> Option<u64> {
        slot.as_ref().map(|s| s.refresh_at_ms).filter(|&e| e > 0)
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

    /// The channel named `name`, if the session follows it (asked for, answered or not).
    pub(crate) fn channel(&self, name: &str) -> Option<Arc<str>> {
        self.channels.iter().find(|c| &***c == name).cloned()
    }

    /// The user's home recorded the connection; its user stream stands at `at`. A durable
    /// stream's unacknowledged messages follow the welcome (after a `reset` if some were
    /// dropped before the device acknowledged them).
    pub(crate) fn on_joined(
        slot: &mut Option<Box<Session>>,
        conn: ConnId,
        at: Position,
        mail: Option<Box<MailCatchUp>>,
        p: &SessionParams,
        out: &mut Effects,
    ) {
        let Some(session) = slot.as_mut() else { return };
        let Some(user) = session.user.clone() else { return };
        let key = StreamKey::User(user);
        let mut replies = Vec::new();
        if mail.as_ref().is_some_and(|m| m.lost) {
            replies.push(client::reset(&key.wire(), at, client::ResetReason::HistoryExceeded));
        }
        session.answered(conn, key, Some(at), replies, p, out);
        if let Some(m) = mail.filter(|m| !m.frames.is_empty()) {
            out.push_back(Effect::Mail { conn, frames: m.frames });
        }
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
                } else if !allowed(slot.as_ref().and_then(|s| s.grant.as_deref()), &channel) {
                    client_error(slot, conn, ClientError::Forbidden, now, p, out);
                } else if let Some(backend) =
                    p.backends.route(&Call::Subscribe { channel: channel.clone(), since })
                {
                    // Asked first; `on_backend` subscribes once it agrees.
                    let event = event_of(slot, conn, Call::Subscribe { channel, since });
                    out.push_back(Effect::Upstream { backend, event });
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
            Ok(ClientMsg::Refresh { token }) => refresh(slot, conn, &token, now, p, out),
            Ok(ClientMsg::Ack { user, seq }) => {
                // Only the connection's own user stream, acknowledged for its device.
                match slot.as_ref().filter(|s| s.user.as_deref() == Some(user.as_str())) {
                    Some(s) => {
                        let user = s.user.clone().unwrap_or_else(|| Arc::from(user.as_str()));
                        let device = s.device.clone().unwrap_or_else(|| Arc::from(NO_DEVICE));
                        let shard = home_of(&user, p.shards);
                        out.push_back(Effect::Update {
                            shard,
                            msg: ShardMsg::Ack { user, device, seq },
                        });
                    }
                    None => client_error(slot, conn, ClientError::BadAck, now, p, out),
                }
            }
            Ok(
                msg @ (ClientMsg::Rpc { .. } | ClientMsg::Send { .. } | ClientMsg::Publish { .. }),
            ) => calls::on_call(slot, conn, msg, now, p, out),
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
    let mut decided: Vec<String> = Vec::new();
    if let Some(token) = session {
        let (user, device) =
            slot.as_ref().map_or((None, None), |s| (s.user.clone(), s.device.clone()));
        match verify(token, user.as_deref(), device.as_deref(), now, p) {
            None => out.push_back(Effect::Reply { conn, body: client::SESSION_EXPIRED.to_vec() }),
            Some(t) => {
                decided = t.channels.clone();
                // The token's channels without a position in `streams` come back plainly.
                let have: Vec<Arc<str>> =
                    slot.as_ref().map_or_else(Vec::new, |s| s.channels.clone());
                let grant = slot.as_ref().and_then(|s| s.grant.clone());
                for c in t.channels {
                    let named = streams.iter().any(|(x, _)| *x == c);
                    if !allowed(grant.as_deref(), &c) {
                        out.push_back(Effect::Reply { conn, body: forbidden(&c) });
                    } else if !named
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
    let grant = slot.as_ref().and_then(|s| s.grant.clone());
    if let Some((c, _)) = streams.iter().find(|(c, _)| !allowed(grant.as_deref(), c)) {
        let body = forbidden(c);
        refuse(slot, conn, body, now, p, out);
        return;
    }
    if let Some((c, _)) = streams
        .iter()
        .find(|(c, _)| !decided.contains(c) && backend_decides(p, &Arc::from(c.as_str())))
    {
        let body = backend_only(c);
        refuse(slot, conn, body, now, p, out);
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

/// Whether a connection with this grant may follow `channel` (open mode: any).
fn allowed(grant: Option<&Grant>, channel: &str) -> bool {
    grant.is_none_or(|g| g.allows(channel))
}

/// The `error` for a channel the token does not allow, naming it.
fn forbidden(channel: &str) -> Vec<u8> {
    client::error_with(
        ClientError::Forbidden,
        &format!("the connection's token does not allow channel {channel}"),
    )
}

/// `refresh`: a valid token for the same user (and device, where the token names one)
/// extends the connection's expiry and replaces what it allows from now on.
fn refresh(
    slot: &mut Option<Box<Session>>,
    conn: ConnId,
    token: &str,
    now: Now,
    p: &SessionParams,
    out: &mut Effects,
) {
    let why = match p.auth.refresh(token, now.ms) {
        Err(e) => e.reason(),
        Ok(r) => match slot.as_mut() {
            Some(s) if s.user.as_deref() == Some(&*r.user) => {
                if r.device.is_some() && r.device != s.device {
                    "the token is for another device".to_string()
                } else {
                    // Never shortened: the token it replaces was valid until its own expiry.
                    s.expires_ms = s.expires_ms.max(r.expires_ms);
                    s.grant = Some(r.grant);
                    let body = client::refreshed(s.expires_ms);
                    out.push_back(Effect::Refreshed);
                    out.push_back(Effect::Reply { conn, body });
                    return;
                }
            }
            _ => "the token is for another user".to_string(),
        },
    };
    refuse(slot, conn, client::error_with(ClientError::BadToken, &why), now, p, out);
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
    refuse(slot, conn, client::error(e), now, p, out);
}

/// Answers a bad client message with `body` (an `error`), counting it.
fn refuse(
    slot: &mut Option<Box<Session>>,
    conn: ConnId,
    body: Vec<u8>,
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
    out.push_back(Effect::Reply { conn, body });
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

mod calls;
#[cfg(test)]
mod tests;

pub(crate) use calls::failure_reply;
use calls::{backend_decides, backend_only, event_of};
