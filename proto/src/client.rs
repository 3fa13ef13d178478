//! Client protocol v1: JSON text frames between ringcast and its clients (docs/protocol.md).
//! Parsing what clients send and encoding what the server sends; sans-IO like the rest of
//! `proto`.

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

/// What a client may send, parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMsg {
    Subscribe(String),
    Unsubscribe(String),
    Ping,
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
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            ClientError::BadJson => "message is not a JSON object with a string \"type\"",
            ClientError::UnknownType => "unknown message type (subscribe, unsubscribe, ping)",
            ClientError::MissingChannel => "\"channel\" is required",
            ClientError::BadChannel => "channel names are 1-128 bytes of A-Z a-z 0-9 _ - . : @ /",
            ClientError::TooManyChannels => "subscription limit reached",
            ClientError::NotSubscribed => "not subscribed to that channel",
            ClientError::BinaryNotAccepted => "clients send text frames only",
        }
    }
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    channel: Option<std::borrow::Cow<'a, str>>,
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
        "subscribe" => Ok(ClientMsg::Subscribe(channel()?)),
        "unsubscribe" => Ok(ClientMsg::Unsubscribe(channel()?)),
        "ping" => Ok(ClientMsg::Ping),
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

/// `{"type":"message","stream":"…","seq":N,"data":<data>}` for a JSON payload. `data` must be
/// valid JSON (the API checks it); names are valid names, so they need no escaping.
pub fn message_json(stream: &Stream<'_>, seq: u64, data: &RawValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + data.get().len());
    out.extend_from_slice(b"{\"type\":\"message\",");
    push_stream(&mut out, stream);
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data.get().as_bytes());
    out.push(b'}');
    out
}

/// A binary message: a 4-byte big-endian length, that many bytes of JSON header
/// `{"type":"message","stream":"…","seq":N}`, then the payload as published.
pub fn message_binary(stream: &Stream<'_>, seq: u64, data: &[u8]) -> Vec<u8> {
    let mut head = Vec::with_capacity(64);
    head.extend_from_slice(b"{\"type\":\"message\",");
    push_stream(&mut head, stream);
    head.extend_from_slice(b",\"seq\":");
    head.extend_from_slice(seq.to_string().as_bytes());
    head.push(b'}');
    let mut out = Vec::with_capacity(4 + head.len() + data.len());
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(data);
    out
}

/// The first message on a connection.
pub fn welcome(
    conn: &str,
    user: Option<&str>,
    device: Option<&str>,
    epoch: u64,
    channels: &[&str],
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
    out.extend_from_slice(b",\"epoch\":");
    out.extend_from_slice(epoch.to_string().as_bytes());
    out.extend_from_slice(b",\"channels\":[");
    for (i, c) in channels.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json_str(&mut out, c);
    }
    out.extend_from_slice(b"]}");
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
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"{\"type\":\"error\",\"code\":");
    push_json_str(&mut out, e.code());
    out.extend_from_slice(b",\"reason\":");
    push_json_str(&mut out, e.reason());
    out.push(b'}');
    out
}

pub const PONG: &[u8] = b"{\"type\":\"pong\"}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_client_messages() {
        assert_eq!(
            parse_client(br#"{"type":"subscribe","channel":"a.b"}"#),
            Ok(ClientMsg::Subscribe("a.b".into()))
        );
        assert_eq!(
            parse_client(br#"{"channel":"x","type":"unsubscribe"}"#),
            Ok(ClientMsg::Unsubscribe("x".into()))
        );
        assert_eq!(parse_client(br#"{"type":"ping"}"#), Ok(ClientMsg::Ping));
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
            Ok(ClientMsg::Subscribe("a".into()))
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
        let w = welcome("c0.1.2", Some("u\"1"), None, 99, &["a", "b"]);
        let v: serde_json::Value = serde_json::from_slice(&w).unwrap();
        assert_eq!(
            (v["user"].as_str(), v["device"].is_null(), v["channels"][1].as_str()),
            (Some("u\"1"), true, Some("b"))
        );
        let e: serde_json::Value = serde_json::from_slice(&error(ClientError::BadJson)).unwrap();
        assert_eq!(e["code"], "bad_json");
        let b = message_binary(&Stream::User("42"), 3, &[0, 255]);
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let head: serde_json::Value = serde_json::from_slice(&b[4..4 + n]).unwrap();
        assert_eq!((head["stream"].as_str(), head["seq"].as_u64()), (Some("user:42"), Some(3)));
        assert_eq!(&b[4 + n..], &[0, 255]);
    }
}
