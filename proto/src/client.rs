//! Client protocol v2: JSON text frames between ringcast and its clients (docs/protocol.md).
//! Parsing what clients send and encoding what the server sends; sans-IO like the rest of
//! `proto`. v2 adds stream positions (`welcome`, `subscribed`, `reset`), resume (`resume`,
//! `subscribe` with `since`) and its answers (`resumed`, `reset`); a v1 client that never
//! resumes sees the same envelope with the extra fields.

use serde::Deserialize;
use serde_json::value::RawValue;

/// The longest user, device or channel name.
pub const MAX_NAME: usize = 128;

/// Whether `s` is a valid user, device or channel name: 1 to 128 bytes of ASCII letters,
/// digits and `_ - . : @ /`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.:@/".contains(&b))
}

/// Where a message sits in its stream: the stream's epoch (when this incarnation of it began,
/// Unix ms) and its sequence number there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub seq: u64,
}

/// The most streams one `resume` may name.
pub const MAX_RESUME_STREAMS: usize = 256;

/// What a client may send, parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMsg {
    /// Subscribe to a channel; with `since`, first replay what came after that position.
    Subscribe {
        channel: String,
        since: Option<Position>,
    },
    Unsubscribe(String),
    Ping,
    /// Resume: the subscriptions a session token names (if given), and channel streams (by
    /// channel name) from these positions, in name order.
    Resume {
        session: Option<String>,
        streams: Vec<(String, Position)>,
    },
    /// A fresh token for the same user, before the connection's one expires.
    Refresh {
        token: String,
    },
    /// A call to a backend; answered with a `reply` carrying the same `id`. `data` is the
    /// message's `data` as the client wrote it (valid JSON; `null` when absent).
    Rpc {
        id: u32,
        method: String,
        data: String,
    },
    /// A message for a backend that expects no answer.
    Send {
        data: String,
    },
    /// A message the client publishes into a channel; answered with a `reply` carrying `id`.
    Publish {
        id: u32,
        channel: String,
        data: String,
    },
    /// Everything of a durable user stream up to `seq` arrived (cumulative, per device).
    Ack {
        /// The user's name (the stream was `user:NAME`).
        user: String,
        seq: u64,
    },
}

/// Why a client message was rejected; the `code` of the `error` message sent back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientError {
    BadJson,
    UnknownType,
    MissingChannel,
    BadChannel,
    TooManyChannels,
    NotSubscribed,
    BinaryNotAccepted,
    BadPosition,
    BadStream,
    TooManyStreams,
    AlreadySubscribed,
    /// The connection's token does not allow it (a channel outside `sub_allow`).
    Forbidden,
    /// A `refresh` without a usable token; the error's reason says why.
    BadToken,
    /// An `rpc` or `publish` without a u32 `id`.
    BadId,
    /// An `rpc` without a valid `method`.
    BadMethod,
    BadAck,
}

impl ClientError {
    pub fn code(self) -> &'static str {
        match self {
            ClientError::BadJson => "bad_json",
            ClientError::UnknownType => "unknown_type",
            ClientError::MissingChannel => "missing_channel",
            ClientError::BadChannel => "bad_channel",
            ClientError::TooManyChannels => "too_many_channels",
            ClientError::NotSubscribed => "not_subscribed",
            ClientError::BinaryNotAccepted => "binary_not_accepted",
            ClientError::BadPosition => "bad_position",
            ClientError::BadStream => "bad_stream",
            ClientError::TooManyStreams => "too_many_streams",
            ClientError::AlreadySubscribed => "already_subscribed",
            ClientError::Forbidden => "forbidden",
            ClientError::BadToken => "bad_token",
            ClientError::BadId => "bad_id",
            ClientError::BadMethod => "bad_method",
            ClientError::BadAck => "bad_ack",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            ClientError::BadJson => "message is not a JSON object with a string \"type\"",
            ClientError::UnknownType => {
                "unknown message type (subscribe, unsubscribe, resume, refresh, ping, rpc, send, publish, ack)"
            }
            ClientError::MissingChannel => "\"channel\" is required",
            ClientError::BadChannel => "channel names are 1-128 bytes of A-Z a-z 0-9 _ - . : @ /",
            ClientError::TooManyChannels => "subscription limit reached",
            ClientError::NotSubscribed => "not subscribed to that channel",
            ClientError::BinaryNotAccepted => "clients send text frames only",
            ClientError::BadPosition => {
                "a position is {\"epoch\":E,\"seq\":S} with non-negative integers"
            }
            ClientError::BadStream => {
                "resume takes \"session\" and/or \"streams\", and only channel streams (\"channel:NAME\") resume"
            }
            ClientError::TooManyStreams => "too many streams in one resume",
            ClientError::AlreadySubscribed => {
                "already subscribed: resume a channel by naming it in resume or ?resume=, not in ?channels= too"
            }
            ClientError::Forbidden => "the connection's token does not allow this channel",
            ClientError::BadToken => "refresh takes \"token\": a token for the connection's user",
            ClientError::BadId => "rpc and publish take \"id\": an integer from 0 to 4294967295",
            ClientError::BadMethod => {
                "rpc takes \"method\": 1-128 bytes of A-Z a-z 0-9 _ - . : @ /"
            }
            ClientError::BadAck => {
                "ack takes \"stream\" (the connection's durable user stream, user:NAME) and \"seq\" (a non-negative integer)"
            }
        }
    }
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    channel: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    since: Option<&'a RawValue>,
    #[serde(default, borrow)]
    streams: Option<&'a RawValue>,
    #[serde(default, borrow)]
    session: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    token: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    method: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    stream: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    seq: Option<&'a RawValue>,
}

fn position(raw: &RawValue) -> Result<Position, ClientError> {
    serde_json::from_str(raw.get()).map_err(|_| ClientError::BadPosition)
}

/// Parses the `streams` of a resume (`{"channel:NAME":{"epoch":E,"seq":S},…}`, also the
/// content of `?resume=`): channel names and positions, in name order.
pub fn parse_resume_streams(raw: &str) -> Result<Vec<(String, Position)>, ClientError> {
    let map: Vec<(String, Position)> = {
        let m: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(raw).map_err(|_| ClientError::BadJson)?;
        if m.len() > MAX_RESUME_STREAMS {
            return Err(ClientError::TooManyStreams);
        }
        let mut out = Vec::with_capacity(m.len());
        for (k, v) in m {
            let name = k.strip_prefix("channel:").ok_or(ClientError::BadStream)?;
            if !valid_name(name) {
                return Err(ClientError::BadChannel);
            }
            let p: Position = serde_json::from_value(v).map_err(|_| ClientError::BadPosition)?;
            out.push((name.to_string(), p));
        }
        out
    };
    Ok(map)
}

/// A client's `id`: a JSON integer that fits a u32 (echoed, never interpreted).
fn client_id(raw: Option<&RawValue>) -> Result<u32, ClientError> {
    raw.and_then(|r| r.get().parse::<u32>().ok()).ok_or(ClientError::BadId)
}

/// A message's `data` as written (already valid JSON), `null` when absent.
fn raw_data(raw: Option<&RawValue>) -> String {
    raw.map_or_else(|| "null".to_string(), |r| r.get().to_string())
}

/// Parses one text message from a client.
pub fn parse_client(text: &[u8]) -> Result<ClientMsg, ClientError> {
    let w: Wire<'_> = serde_json::from_slice(text).map_err(|_| ClientError::BadJson)?;
    let channel = || -> Result<String, ClientError> {
        let c = w.channel.as_deref().ok_or(ClientError::MissingChannel)?;
        if !valid_name(c) {
            return Err(ClientError::BadChannel);
        }
        Ok(c.to_string())
    };
    match &*w.kind {
        "subscribe" => {
            let since = w.since.map(position).transpose()?;
            Ok(ClientMsg::Subscribe { channel: channel()?, since })
        }
        "unsubscribe" => Ok(ClientMsg::Unsubscribe(channel()?)),
        "ping" => Ok(ClientMsg::Ping),
        "resume" => {
            let session = w.session.map(|s| s.into_owned());
            let streams = match (w.streams, &session) {
                (Some(raw), _) => parse_resume_streams(raw.get())?,
                (None, Some(_)) => Vec::new(),
                (None, None) => return Err(ClientError::BadStream),
            };
            Ok(ClientMsg::Resume { session, streams })
        }
        "refresh" => match w.token {
            Some(t) if !t.is_empty() => Ok(ClientMsg::Refresh { token: t.into_owned() }),
            _ => Err(ClientError::BadToken),
        },
        "rpc" => {
            let id = client_id(w.id)?;
            let method = match w.method.as_deref() {
                Some(m) if valid_name(m) => m.to_string(),
                _ => return Err(ClientError::BadMethod),
            };
            Ok(ClientMsg::Rpc { id, method, data: raw_data(w.data) })
        }
        "send" => Ok(ClientMsg::Send { data: raw_data(w.data) }),
        "publish" => {
            let id = client_id(w.id)?;
            Ok(ClientMsg::Publish { id, channel: channel()?, data: raw_data(w.data) })
        }
        "ack" => {
            let user = w.stream.as_deref().and_then(|s| s.strip_prefix("user:"));
            let seq = w.seq.and_then(|r| r.get().parse::<u64>().ok());
            match (user, seq) {
                (Some(u), Some(seq)) if valid_name(u) => {
                    Ok(ClientMsg::Ack { user: u.to_string(), seq })
                }
                _ => Err(ClientError::BadAck),
            }
        }
        _ => Err(ClientError::UnknownType),
    }
}

/// Which stream a delivered message belongs to; each has its own sequence numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stream<'a> {
    Channel(&'a str),
    User(&'a str),
    Broadcast,
    /// Sent to one connection by id.
    Direct,
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str as JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn push_stream(out: &mut Vec<u8>, stream: &Stream<'_>) {
    out.extend_from_slice(b"\"stream\":\"");
    match stream {
        Stream::Channel(c) => {
            out.extend_from_slice(b"channel:");
            out.extend_from_slice(c.as_bytes());
        }
        Stream::User(u) => {
            out.extend_from_slice(b"user:");
            out.extend_from_slice(u.as_bytes());
        }
        Stream::Broadcast => out.extend_from_slice(b"broadcast"),
        Stream::Direct => out.extend_from_slice(b"direct"),
    }
    out.push(b'"');
}

/// `,"name":N`.
fn push_num(out: &mut Vec<u8>, name: &str, n: u64) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(n.to_string().as_bytes());
}

/// `,"ack":true` on a message of a durable stream: the client acknowledges it.
fn push_ack(out: &mut Vec<u8>, ack: bool) {
    if ack {
        out.extend_from_slice(b",\"ack\":true");
    }
}

/// `{"type":"cancel","stream":"user:NAME","seq":N}`: another device acknowledged this
/// `first_ack` message first; it is settled and will not come again.
pub fn cancel(user: &str, seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + user.len());
    out.extend_from_slice(b"{\"type\":\"cancel\",");
    push_stream(&mut out, &Stream::User(user));
    push_num(&mut out, "seq", seq);
    out.push(b'}');
    out
}

fn push_epoch(out: &mut Vec<u8>, epoch: Option<u64>) {
    if let Some(e) = epoch {
        push_num(out, "epoch", e);
    }
}

fn push_position(out: &mut Vec<u8>, p: Position) {
    out.extend_from_slice(b"{\"epoch\":");
    out.extend_from_slice(p.epoch.to_string().as_bytes());
    push_num(out, "seq", p.seq);
    out.push(b'}');
}

/// `{"type":"message","stream":"…","seq":N,"data":<data>}` for a JSON payload. `data` must be
/// valid JSON (the API checks it); names are valid names, so they need no escaping.
pub fn message_json(stream: &Stream<'_>, seq: u64, data: &RawValue) -> Vec<u8> {
    message_json_at(stream, None, seq, false, data)
}

/// A message as [`message_json`], with `"epoch"` when given (the first message of a stream's
/// incarnation carries it, so a client sees the epoch change in the stream itself).
pub fn message_json_at(
    stream: &Stream<'_>,
    epoch: Option<u64>,
    seq: u64,
    ack: bool,
    data: &RawValue,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + data.get().len());
    out.extend_from_slice(b"{\"type\":\"message\",");
    push_stream(&mut out, stream);
    push_epoch(&mut out, epoch);
    push_num(&mut out, "seq", seq);
    push_ack(&mut out, ack);
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data.get().as_bytes());
    out.push(b'}');
    out
}

/// A binary message: a 4-byte big-endian length, that many bytes of JSON header
/// `{"type":"message","stream":"…","seq":N}`, then the payload as published.
pub fn message_binary(stream: &Stream<'_>, seq: u64, data: &[u8]) -> Vec<u8> {
    message_binary_at(stream, None, seq, false, data)
}

/// A binary message as [`message_binary`], with `"epoch"` in its header when given.
pub fn message_binary_at(
    stream: &Stream<'_>,
    epoch: Option<u64>,
    seq: u64,
    ack: bool,
    data: &[u8],
) -> Vec<u8> {
    let mut head = Vec::with_capacity(64);
    head.extend_from_slice(b"{\"type\":\"message\",");
    push_stream(&mut head, stream);
    push_epoch(&mut head, epoch);
    push_num(&mut head, "seq", seq);
    push_ack(&mut head, ack);
    head.push(b'}');
    let mut out = Vec::with_capacity(4 + head.len() + data.len());
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(data);
    out
}

/// Where a message frame the server encoded belongs: its wire stream name and seq. Takes the
/// whole frame as [`message_json_at`] or [`message_binary_at`] made it, WebSocket header
/// included; anything else is `None`. The shard reads this back only on its rare paths (a
/// queued message shed from a full outbox), so frames carry no side table of positions.
pub fn delivered_at(frame: &[u8]) -> Option<(&str, u64)> {
    let (header, at) = crate::frame::FrameHeader::parse(frame).ok()??;
    let body = frame.get(at..)?;
    let body = match header.opcode {
        crate::OpCode::Text => body,
        crate::OpCode::Binary => body.get(4..)?,
        _ => return None,
    };
    let rest = body.strip_prefix(b"{\"type\":\"message\",\"stream\":\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let stream = std::str::from_utf8(&rest[..end]).ok()?;
    let mut rest = &rest[end + 1..];
    if let Some(r) = rest.strip_prefix(b",\"epoch\":") {
        let digits = r.iter().take_while(|b| b.is_ascii_digit()).count();
        rest = &r[digits..];
    }
    let r = rest.strip_prefix(b",\"seq\":")?;
    let digits = r.iter().take_while(|b| b.is_ascii_digit()).count();
    let seq = std::str::from_utf8(&r[..digits]).ok()?.parse().ok()?;
    Some((stream, seq))
}

/// The first message on a connection: who it is, its channels, and the position of each
/// stream it starts with (`streams`, wire stream name → position; seq 0 for a stream with no
/// message yet).
pub fn welcome(
    conn: &str,
    user: Option<&str>,
    device: Option<&str>,
    epoch: u64,
    channels: &[&str],
    streams: &[(Stream<'_>, Position)],
    session: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"{\"type\":\"welcome\",\"conn\":");
    push_json_str(&mut out, conn);
    out.extend_from_slice(b",\"user\":");
    match user {
        Some(u) => push_json_str(&mut out, u),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"device\":");
    match device {
        Some(d) => push_json_str(&mut out, d),
        None => out.extend_from_slice(b"null"),
    }
    push_num(&mut out, "epoch", epoch);
    out.extend_from_slice(b",\"channels\":[");
    for (i, c) in channels.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json_str(&mut out, c);
    }
    out.extend_from_slice(b"],\"streams\":{");
    for (i, (stream, p)) in streams.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // `"stream":"channel:x"` without the key: the name alone, as the map key.
        let mut key = Vec::new();
        push_stream(&mut key, stream);
        out.extend_from_slice(&key[b"\"stream\":".len()..]);
        out.push(b':');
        push_position(&mut out, *p);
    }
    out.push(b'}');
    if let Some(t) = session {
        out.extend_from_slice(b",\"session\":");
        push_json_str(&mut out, t);
    }
    out.push(b'}');
    out
}

/// Adds `"session":TOKEN` to a server message (a fresh session token rides on the answers to
/// subscription changes and on `pong`).
pub fn with_session(mut body: Vec<u8>, token: &str) -> Vec<u8> {
    if body.last() == Some(&b'}') {
        body.pop();
        body.extend_from_slice(b",\"session\":");
        push_json_str(&mut body, token);
        body.push(b'}');
    }
    body
}

/// `{"type":"reset","reason":"session_expired"}`: a session token was refused (expired,
/// forged, or another user's); the connection goes on as a new one.
pub const SESSION_EXPIRED: &[u8] = b"{\"type\":\"reset\",\"reason\":\"session_expired\"}";

/// `{"type":"subscribed","channel":…,"epoch":E,"seq":S}`: subscribed, and where the channel's
/// stream stands (the next message is S+1, or 1 of a new epoch).
pub fn subscribed(channel: &str, p: Position) -> Vec<u8> {
    let mut out = Vec::with_capacity(80 + channel.len());
    out.extend_from_slice(b"{\"type\":\"subscribed\",\"channel\":");
    push_json_str(&mut out, channel);
    push_num(&mut out, "epoch", p.epoch);
    push_num(&mut out, "seq", p.seq);
    out.push(b'}');
    out
}

/// `{"type":"resumed","stream":…,"from":F,"to":T}`: the messages F..=T were replayed (none
/// when F > T) and the stream continues live with T+1.
pub fn resumed(stream: &Stream<'_>, from: u64, to: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(80);
    out.extend_from_slice(b"{\"type\":\"resumed\",");
    push_stream(&mut out, stream);
    push_num(&mut out, "from", from);
    push_num(&mut out, "to", to);
    out.push(b'}');
    out
}

/// Why a stream could not be resumed without loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetReason {
    /// The history no longer holds the message after the client's position.
    HistoryExceeded,
    /// The stream's epoch is not the client's: it was lost (a restart, or forgotten while idle).
    EpochChanged,
    /// The replay did not fit in the connection's outbox.
    OutboxFull,
}

impl ResetReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ResetReason::HistoryExceeded => "history_exceeded",
            ResetReason::EpochChanged => "epoch_changed",
            ResetReason::OutboxFull => "outbox_full",
        }
    }
}

/// `{"type":"reset","stream":…,"epoch":E,"seq":S,"reason":…}`: continuity was lost; the stream
/// continues live after position (E, S).
pub fn reset(stream: &Stream<'_>, p: Position, reason: ResetReason) -> Vec<u8> {
    let mut out = Vec::with_capacity(112);
    out.extend_from_slice(b"{\"type\":\"reset\",");
    push_stream(&mut out, stream);
    push_num(&mut out, "epoch", p.epoch);
    push_num(&mut out, "seq", p.seq);
    out.extend_from_slice(b",\"reason\":");
    push_json_str(&mut out, reason.as_str());
    out.push(b'}');
    out
}

/// `{"type":"subscribed","channel":…}` or `unsubscribed`.
pub fn ack(kind: &str, channel: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + channel.len());
    out.extend_from_slice(b"{\"type\":");
    push_json_str(&mut out, kind);
    out.extend_from_slice(b",\"channel\":");
    push_json_str(&mut out, channel);
    out.push(b'}');
    out
}

/// `{"type":"error","code":…,"reason":…}`.
pub fn error(e: ClientError) -> Vec<u8> {
    error_with(e, e.reason())
}

/// `{"type":"error","code":…,"reason":…}` with a reason more specific than the code's own.
pub fn error_with(e: ClientError, reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + reason.len());
    out.extend_from_slice(b"{\"type\":\"error\",\"code\":");
    push_json_str(&mut out, e.code());
    out.extend_from_slice(b",\"reason\":");
    push_json_str(&mut out, reason);
    out.push(b'}');
    out
}

/// `{"type":"refreshed","expires":MS}`: a `refresh` was accepted; the connection now lasts
/// until `expires` (Unix ms).
pub fn refreshed(expires_ms: u64) -> Vec<u8> {
    let mut out = b"{\"type\":\"refreshed\"".to_vec();
    push_num(&mut out, "expires", expires_ms);
    out.push(b'}');
    out
}

/// `*` matches any run of characters (none included); everything else matches itself. The
/// pattern language of stream rules and of a token's `sub_allow`.
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = ni;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

pub const PONG: &[u8] = b"{\"type\":\"pong\"}";

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn a_message_frame_says_where_it_belongs(
            name in "[a-zA-Z0-9_.:@/-]{1,128}",
            kind in 0u8..4,
            epoch in proptest::option::of(proptest::prelude::any::<u64>()),
            seq in proptest::prelude::any::<u64>(),
            binary in proptest::prelude::any::<bool>(),
            len in 0usize..70_000,
        ) {
            let stream = match kind {
                0 => Stream::Channel(&name),
                1 => Stream::User(&name),
                2 => Stream::Broadcast,
                _ => Stream::Direct,
            };
            let (op, body) = if binary {
                (crate::OpCode::Binary, message_binary_at(&stream, epoch, seq, len % 2 == 0, &vec![b'"'; len]))
            } else {
                let data = serde_json::value::RawValue::from_string(format!("\"{}\"", "x".repeat(len))).unwrap();
                (crate::OpCode::Text, message_json_at(&stream, epoch, seq, len % 2 == 1, &data))
            };
            let mut frame = Vec::new();
            crate::frame::encode_frame(&mut frame, op, true, None, &body);
            let want = match stream {
                Stream::Channel(c) => format!("channel:{c}"),
                Stream::User(u) => format!("user:{u}"),
                Stream::Broadcast => "broadcast".into(),
                Stream::Direct => "direct".into(),
            };
            proptest::prop_assert_eq!(delivered_at(&frame), Some((want.as_str(), seq)));
            // Cut short, or not a message at all: no answer, and no panic.
            proptest::prop_assert_eq!(delivered_at(&frame[..12]), None);
        }
    }

    #[test]
    fn only_message_frames_have_a_position() {
        let mut f = Vec::new();
        crate::frame::encode_frame(&mut f, crate::OpCode::Text, true, None, PONG);
        assert_eq!(delivered_at(&f), None);
        assert_eq!(delivered_at(b""), None);
        assert_eq!(delivered_at(&[0x81]), None);
    }

    #[test]
    fn parses_client_messages() {
        assert_eq!(
            parse_client(br#"{"type":"subscribe","channel":"a.b"}"#),
            Ok(ClientMsg::Subscribe { channel: "a.b".into(), since: None })
        );
        assert_eq!(
            parse_client(br#"{"type":"subscribe","channel":"a","since":{"epoch":5,"seq":9}}"#),
            Ok(ClientMsg::Subscribe {
                channel: "a".into(),
                since: Some(Position { epoch: 5, seq: 9 })
            })
        );
        assert_eq!(
            parse_client(br#"{"type":"subscribe","channel":"a","since":{"epoch":-1,"seq":9}}"#),
            Err(ClientError::BadPosition)
        );
        assert_eq!(
            parse_client(br#"{"type":"resume","streams":{"channel:b":{"epoch":1,"seq":2},"channel:a":{"epoch":1,"seq":0}}}"#),
            Ok(ClientMsg::Resume {
                session: None,
                streams: vec![
                    ("a".into(), Position { epoch: 1, seq: 0 }),
                    ("b".into(), Position { epoch: 1, seq: 2 })
                ]
            })
        );
        assert_eq!(
            parse_client(br#"{"type":"resume","streams":{"user:1":{"epoch":1,"seq":2}}}"#),
            Err(ClientError::BadStream)
        );
        assert_eq!(parse_client(br#"{"type":"resume"}"#), Err(ClientError::BadStream));
        assert_eq!(
            parse_client(br#"{"type":"resume","session":"t.s"}"#),
            Ok(ClientMsg::Resume { session: Some("t.s".into()), streams: vec![] })
        );
        assert_eq!(
            parse_client(br#"{"channel":"x","type":"unsubscribe"}"#),
            Ok(ClientMsg::Unsubscribe("x".into()))
        );
        assert_eq!(parse_client(br#"{"type":"ping"}"#), Ok(ClientMsg::Ping));
        assert_eq!(
            parse_client(br#"{"type":"ack","stream":"user:42","seq":7}"#),
            Ok(ClientMsg::Ack { user: "42".into(), seq: 7 })
        );
        for bad in [
            &br#"{"type":"ack","stream":"channel:a","seq":7}"#[..],
            br#"{"type":"ack","stream":"user:42"}"#,
            br#"{"type":"ack","stream":"user:a b","seq":1}"#,
            br#"{"type":"ack","stream":"user:42","seq":-1}"#,
        ] {
            assert_eq!(
                parse_client(bad),
                Err(ClientError::BadAck),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(cancel("42", 3), br#"{"type":"cancel","stream":"user:42","seq":3}"#.to_vec());
        assert_eq!(parse_client(b"nope"), Err(ClientError::BadJson));
        assert_eq!(parse_client(br#"{"type":3}"#), Err(ClientError::BadJson));
        assert_eq!(parse_client(br#"{"type":"dance"}"#), Err(ClientError::UnknownType));
        assert_eq!(parse_client(br#"{"type":"subscribe"}"#), Err(ClientError::MissingChannel));
        assert_eq!(
            parse_client(br#"{"type":"subscribe","channel":"a b"}"#),
            Err(ClientError::BadChannel)
        );
        // Escapes are decoded before the name check.
        assert_eq!(
            parse_client(br#"{"type":"subscribe","channel":"\u0061"}"#),
            Ok(ClientMsg::Subscribe { channel: "a".into(), since: None })
        );
    }

    #[test]
    fn encodes_valid_json() {
        let data = RawValue::from_string(r#"{"px":1.5,"s":"é\"q"}"#.into()).unwrap();
        let m = message_json(&Stream::Channel("prices"), 7, &data);
        let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
        assert_eq!(v["stream"], "channel:prices");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["data"]["s"], "é\"q");
        let streams = [
            (Stream::User("u\"1"), Position { epoch: 99, seq: 0 }),
            (Stream::Channel("a"), Position { epoch: 99, seq: 4 }),
        ];
        let w = welcome("c0.1.2", Some("u\"1"), None, 99, &["a", "b"], &streams[1..], Some("t.s"));
        let v: serde_json::Value = serde_json::from_slice(&w).unwrap();
        assert_eq!(
            (v["user"].as_str(), v["device"].is_null(), v["channels"][1].as_str()),
            (Some("u\"1"), true, Some("b"))
        );
        assert_eq!(v["streams"]["channel:a"]["seq"], 4);
        assert_eq!(v["session"], "t.s");
        let v: serde_json::Value =
            serde_json::from_slice(&with_session(PONG.to_vec(), "x.y")).unwrap();
        assert_eq!((v["type"].as_str(), v["session"].as_str()), (Some("pong"), Some("x.y")));
        let v: serde_json::Value = serde_json::from_slice(SESSION_EXPIRED).unwrap();
        assert_eq!(v["reason"], "session_expired");
        let v: serde_json::Value =
            serde_json::from_slice(&subscribed("a", Position { epoch: 3, seq: 8 })).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["epoch"].as_u64(), v["seq"].as_u64()),
            (Some("subscribed"), Some(3), Some(8))
        );
        let r =
            reset(&Stream::Channel("a"), Position { epoch: 3, seq: 8 }, ResetReason::EpochChanged);
        let v: serde_json::Value = serde_json::from_slice(&r).unwrap();
        assert_eq!(
            (v["stream"].as_str(), v["reason"].as_str()),
            (Some("channel:a"), Some("epoch_changed"))
        );
        let v: serde_json::Value =
            serde_json::from_slice(&resumed(&Stream::Channel("a"), 4, 9)).unwrap();
        assert_eq!((v["from"].as_u64(), v["to"].as_u64()), (Some(4), Some(9)));
        let m = message_json_at(&Stream::Channel("a"), Some(77), 1, false, &data);
        let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
        assert_eq!((v["epoch"].as_u64(), v["seq"].as_u64()), (Some(77), Some(1)));
        let e: serde_json::Value = serde_json::from_slice(&error(ClientError::BadJson)).unwrap();
        assert_eq!(e["code"], "bad_json");
        let b = message_binary(&Stream::User("42"), 3, &[0, 255]);
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let head: serde_json::Value = serde_json::from_slice(&b[4..4 + n]).unwrap();
        assert_eq!((head["stream"].as_str(), head["seq"].as_u64()), (Some("user:42"), Some(3)));
        assert_eq!(&b[4 + n..], &[0, 255]);
    }
}
