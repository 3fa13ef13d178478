//! The server's answers to what a client sends its backends (docs/protocol.md, "Two-way"):
//! `reply` to an `rpc` or a `publish` (with `data` or with `error`), and the `error` that
//! refuses a `send`. Sans-IO encoders like the rest of `client`.

use serde_json::value::RawValue;

/// Why a client message for a backend was not answered with data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The code as JSON: a string such as `"rate_limited"`, or what a backend answered
    /// (a string or a number), as it wrote it.
    pub code: String,
    pub message: String,
    /// Whether trying again later may succeed.
    pub temporary: bool,
    /// When to try again, where the server knows (a rate limit, an open breaker).
    pub retry_ms: Option<u64>,
}

impl Failure {
    /// A failure with one of the server's own codes.
    pub fn new(code: Code, message: impl Into<String>) -> Failure {
        Failure {
            code: format!("\"{}\"", code.as_str()),
            message: message.into(),
            temporary: code.temporary(),
            retry_ms: None,
        }
    }

    pub fn retry_after(mut self, ms: u64) -> Failure {
        self.retry_ms = Some(ms);
        self
    }

    /// The code without its JSON quotes, where it is a string (for logs and metrics).
    pub fn code_str(&self) -> &str {
        self.code.trim_matches('"')
    }

    fn push_fields(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\"code\":");
        out.extend_from_slice(self.code.as_bytes());
        out.extend_from_slice(b",\"message\":");
        push_str(out, &self.message);
        out.extend_from_slice(if self.temporary {
            b",\"temporary\":true"
        } else {
            b",\"temporary\":false"
        });
        if let Some(ms) = self.retry_ms {
            out.extend_from_slice(b",\"retry_ms\":");
            out.extend_from_slice(ms.to_string().as_bytes());
        }
    }
}

/// The server's own failure codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// The connection has too many calls waiting for its backend (per-connection order).
    TooManyRequests,
    /// Over the connection's message or byte rate.
    RateLimited,
    /// The backend's breaker is open, or its queue is full: nothing was sent.
    UpstreamUnavailable,
    /// The backend did not answer within its timeout (it may have acted on the call).
    UpstreamTimeout,
    /// The backend failed (a transport error, a 5xx, an answer of the wrong shape).
    UpstreamError,
    /// No backend takes this call.
    NoBackend,
    /// Not allowed (a publish outside the token's `pub_allow` and refused or unasked by a
    /// backend).
    Forbidden,
    /// The connection closed or the server is shutting down before the answer came.
    Cancelled,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::TooManyRequests => "too_many_requests",
            Code::RateLimited => "rate_limited",
            Code::UpstreamUnavailable => "upstream_unavailable",
            Code::UpstreamTimeout => "upstream_timeout",
            Code::UpstreamError => "upstream_error",
            Code::NoBackend => "no_backend",
            Code::Forbidden => "forbidden",
            Code::Cancelled => "cancelled",
        }
    }

    pub fn temporary(self) -> bool {
        !matches!(self, Code::NoBackend | Code::Forbidden)
    }
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str as JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `{"type":"reply","id":N,"data":<data>}`; `data` is valid JSON.
pub fn reply_data(id: u32, data: &RawValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + data.get().len());
    out.extend_from_slice(b"{\"type\":\"reply\",\"id\":");
    out.extend_from_slice(id.to_string().as_bytes());
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data.get().as_bytes());
    out.push(b'}');
    out
}

/// `{"type":"reply","id":N,"error":{"code":…,"message":…,"temporary":…[,"retry_ms":N]}}`.
pub fn reply_error(id: u32, f: &Failure) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + f.message.len());
    out.extend_from_slice(b"{\"type\":\"reply\",\"id\":");
    out.extend_from_slice(id.to_string().as_bytes());
    out.extend_from_slice(b",\"error\":{");
    f.push_fields(&mut out);
    out.extend_from_slice(b"}}");
    out
}

/// `{"type":"error","code":…,"message":…,"reason":…,"temporary":…[,"retry_ms":N]}`: a
/// refused `send` (`reason` repeats `message`, as every other `error` carries one).
pub fn send_refused(f: &Failure) -> Vec<u8> {
    let mut out = Vec::with_capacity(112 + 2 * f.message.len());
    out.extend_from_slice(b"{\"type\":\"error\",");
    f.push_fields(&mut out);
    out.extend_from_slice(b",\"reason\":");
    push_str(&mut out, &f.message);
    out.push(b'}');
    out
}

/// `{"stream":"channel:NAME","seq":S}`: what a published message became (the `data` of a
/// publish's reply); `seq` is null for an ephemeral channel nobody follows (nothing numbered).
pub fn published(channel: &str, seq: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + channel.len());
    out.extend_from_slice(b"{\"stream\":");
    push_str(&mut out, &format!("channel:{channel}"));
    out.extend_from_slice(b",\"seq\":");
    match seq {
        Some(s) => out.extend_from_slice(s.to_string().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn json(b: &[u8]) -> Value {
        serde_json::from_slice(b).expect("valid JSON")
    }

    #[test]
    fn replies_are_the_documented_json() {
        let data = RawValue::from_string(r#"{"ok":[1,2]}"#.into()).unwrap();
        assert_eq!(
            json(&reply_data(7, &data)),
            serde_json::json!({"type":"reply","id":7,"data":{"ok":[1,2]}})
        );
        let f = Failure::new(Code::RateLimited, "slow \"down\"").retry_after(250);
        assert_eq!(
            json(&reply_error(u32::MAX, &f)),
            serde_json::json!({"type":"reply","id":4294967295u32,"error":{"code":"rate_limited","message":"slow \"down\"","temporary":true,"retry_ms":250}})
        );
        let f = Failure::new(Code::Forbidden, "no");
        let v = json(&send_refused(&f));
        assert_eq!(v["type"], "error");
        assert_eq!(v["code"], "forbidden");
        assert_eq!(v["temporary"], false);
        assert_eq!(v["reason"], "no");
        assert!(v.get("retry_ms").is_none());
        assert_eq!(
            json(&published("rooms.1", Some(9))),
            serde_json::json!({"stream":"channel:rooms.1","seq":9})
        );
        assert_eq!(
            json(&published("r", None)),
            serde_json::json!({"stream":"channel:r","seq":null})
        );
    }

    #[test]
    fn a_backend_code_passes_through_as_written() {
        let f =
            Failure { code: "4031".into(), message: "m".into(), temporary: false, retry_ms: None };
        assert_eq!(json(&reply_error(1, &f))["error"]["code"], 4031);
        assert_eq!(f.code_str(), "4031");
        assert_eq!(Failure::new(Code::NoBackend, "").code_str(), "no_backend");
    }

    #[test]
    fn two_way_messages_parse() {
        use crate::client::{parse_client, ClientError, ClientMsg};
        assert_eq!(
            parse_client(br#"{"type":"rpc","id":7,"method":"chat.send","data":{"text":"hi"}}"#),
            Ok(ClientMsg::Rpc {
                id: 7,
                method: "chat.send".into(),
                data: r#"{"text":"hi"}"#.into()
            })
        );
        assert_eq!(
            parse_client(br#"{"type":"rpc","id":0,"method":"m"}"#),
            Ok(ClientMsg::Rpc { id: 0, method: "m".into(), data: "null".into() })
        );
        assert_eq!(
            parse_client(br#"{"type":"send","data":[1,"x"]}"#),
            Ok(ClientMsg::Send { data: r#"[1,"x"]"#.into() })
        );
        assert_eq!(
            parse_client(br#"{"type":"publish","id":8,"channel":"rooms.1","data":"x"}"#),
            Ok(ClientMsg::Publish { id: 8, channel: "rooms.1".into(), data: r#""x""#.into() })
        );
        for bad in [
            &br#"{"type":"rpc","method":"m"}"#[..],
            br#"{"type":"rpc","id":-1,"method":"m"}"#,
            br#"{"type":"rpc","id":4294967296,"method":"m"}"#,
            br#"{"type":"rpc","id":1.5,"method":"m"}"#,
            br#"{"type":"rpc","id":"7","method":"m"}"#,
            br#"{"type":"publish","channel":"a"}"#,
        ] {
            assert_eq!(
                parse_client(bad),
                Err(ClientError::BadId),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse_client(br#"{"type":"rpc","id":1}"#), Err(ClientError::BadMethod));
        assert_eq!(
            parse_client(br#"{"type":"rpc","id":1,"method":"a b"}"#),
            Err(ClientError::BadMethod)
        );
        assert_eq!(parse_client(br#"{"type":"publish","id":1}"#), Err(ClientError::MissingChannel));
        assert_eq!(
            parse_client(br#"{"type":"publish","id":1,"channel":"a b"}"#),
            Err(ClientError::BadChannel)
        );
    }
}
