//! Close codes, the one mapping from protocol errors to them, and the one list of reasons the
//! server closes a connection for ([`CloseReason`]).

use std::fmt;
use std::sync::Arc;

/// A WebSocket close status code (RFC 6455 section 7.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    pub const NORMAL: CloseCode = CloseCode(1000);
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// Never sent on the wire: "the close frame carried no status code".
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// Never sent on the wire: "the connection dropped without a close frame".
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);
    /// ringcast: the same user and device connected again (`--replace-same-device`).
    pub const REPLACED: CloseCode = CloseCode(4000);
    /// ringcast: the default code of `POST /v1/kick`.
    pub const KICKED: CloseCode = CloseCode(4001);
    /// ringcast: the connection kept losing pushes for `--slow-consumer-timeout`.
    pub const SLOW_CONSUMER: CloseCode = CloseCode(4002);
    /// ringcast: the connection's token expired and no `refresh` extended it.
    pub const TOKEN_EXPIRED: CloseCode = CloseCode(4003);

    /// Whether a peer may send this code in a close frame. 1004-1006 and 1015 are reserved,
    /// below 1000 and 1016-2999 are unassigned; 3000-4999 belong to libraries and applications.
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }

    /// Whether a backend may close a connection with this code (`POST /v1/kick`): the
    /// standard codes that make sense for a server to send, and the application range.
    pub fn is_kick_allowed(self) -> bool {
        matches!(self.0, 1000 | 1001 | 1008 | 1011 | 1013 | 3000..=4999)
    }
}

/// Every reason the server closes an open connection on its own initiative. Each maps to
/// exactly one code and reason text ([`CloseReason::frame`]), one way of closing
/// ([`CloseReason::closing`]) and one rule for what is still queued
/// ([`CloseReason::discards_queued`]); the server maps each to its counters in one place
/// (`Counters::count_close`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// 1000: no message for `--idle-timeout`.
    Idle,
    /// 1001: a ping went unanswered for `--pong-timeout`.
    PongTimeout,
    /// 1001: the server is draining; the reason is a retry hint
    /// ([`CloseReason::shutting_down`]).
    ShuttingDown { reason: Arc<str> },
    /// The peer broke RFC 6455 (its mapped code).
    Protocol(ProtocolError),
    /// 1008: more than `--max-client-errors` bad client messages in a minute.
    TooManyBadMessages,
    /// 4000: a newer connection of the same user and device.
    Replaced,
    /// A backend's kick (4001 by default), with its code and reason.
    Kicked { code: CloseCode, reason: Arc<str> },
    /// 4002: kept losing pushes for `--slow-consumer-timeout`.
    SlowConsumer,
    /// 4003: the token's `exp` passed without a `refresh`.
    TokenExpired,
}

/// How a close proceeds after the close frame is queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closing {
    /// Keep reading until the client's answering close frame (or the close deadline).
    Handshake,
    /// Stop reading; shut the write side once the outbox drains; close at EOF or the deadline.
    Linger,
    /// The peer is presumed dead: one write attempt, then close at once.
    Drop,
}

impl CloseReason {
    /// The drain's close: 1001 with `{"retry_ms":N,"reason":"server shutting down"}`, so a
    /// client waits about that long before it reconnects.
    pub fn shutting_down(retry_ms: u64) -> CloseReason {
        CloseReason::ShuttingDown { reason: retry_reason(retry_ms, "server shutting down").into() }
    }

    /// A kick by a backend, with the default code and reason where it gave none.
    pub fn kicked(code: Option<CloseCode>, reason: Option<Arc<str>>) -> CloseReason {
        CloseReason::Kicked {
            code: code.unwrap_or(CloseCode::KICKED),
            reason: reason.unwrap_or_else(|| Arc::from("kicked")),
        }
    }

    /// The code and reason text of the close frame.
    pub fn frame(&self) -> (CloseCode, &str) {
        match self {
            CloseReason::Idle => (CloseCode::NORMAL, "idle timeout"),
            CloseReason::PongTimeout => (CloseCode::GOING_AWAY, "pong timeout"),
            CloseReason::ShuttingDown { reason } => (CloseCode::GOING_AWAY, reason),
            CloseReason::Protocol(e) => (e.close_code(), e.reason()),
            CloseReason::TooManyBadMessages => {
                (CloseCode::POLICY_VIOLATION, "too many bad messages")
            }
            CloseReason::Replaced => (CloseCode::REPLACED, "replaced"),
            CloseReason::Kicked { code, reason } => (*code, reason),
            CloseReason::SlowConsumer => (CloseCode::SLOW_CONSUMER, "slow consumer"),
            CloseReason::TokenExpired => (CloseCode::TOKEN_EXPIRED, "token expired"),
        }
    }

    pub fn closing(&self) -> Closing {
        match self {
            CloseReason::Idle
            | CloseReason::ShuttingDown { .. }
            | CloseReason::Replaced
            | CloseReason::Kicked { .. }
            | CloseReason::SlowConsumer
            | CloseReason::TokenExpired => Closing::Handshake,
            CloseReason::Protocol(_) | CloseReason::TooManyBadMessages => Closing::Linger,
            CloseReason::PongTimeout => Closing::Drop,
        }
    }

    /// Whether pushes still queued are dropped (and counted) so the close goes out at once:
    /// for closes by request or for the connection's behaviour. A healthy connection closed
    /// for idleness, a drain or a protocol error gets what is queued first.
    pub fn discards_queued(&self) -> bool {
        matches!(
            self,
            CloseReason::PongTimeout
                | CloseReason::Replaced
                | CloseReason::Kicked { .. }
                | CloseReason::SlowConsumer
                | CloseReason::TokenExpired
        )
    }
}

/// A close reason that tells the client when to come back:
/// `{"retry_ms":N,"reason":"…"}` (at most 123 bytes with a short `why`).
pub fn retry_reason(retry_ms: u64, why: &str) -> String {
    let mut s = format!("{{\"retry_ms\":{retry_ms},\"reason\":");
    s.push_str(&serde_json::Value::String(why.to_string()).to_string());
    s.push('}');
    s
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Everything a peer can get wrong after the upgrade. Each variant maps to exactly one close
/// code through [`ProtocolError::close_code`]; nothing else in the code base picks one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// RSV1-3 set while no extension was negotiated.
    ReservedBits,
    /// Opcode 3-7 or 11-15.
    ReservedOpcode,
    /// A frame from the client without a mask, or a masked frame from the server.
    BadMasking,
    /// A control frame with FIN clear.
    FragmentedControl,
    /// A control frame with more than 125 bytes of payload.
    ControlTooLong,
    /// A continuation frame while no fragmented message is in progress.
    UnexpectedContinuation,
    /// A text or binary frame while a fragmented message is in progress.
    ExpectedContinuation,
    /// A 64-bit length with the most significant bit set.
    BadLength,
    /// A close payload of exactly one byte.
    BadClosePayload,
    /// A close code that may not appear on the wire.
    BadCloseCode(u16),
    /// Text (or a close reason) that is not UTF-8.
    InvalidUtf8,
    /// A frame longer than the configured maximum.
    FrameTooLarge,
    /// A message longer than the configured maximum.
    MessageTooLarge,
}

impl ProtocolError {
    /// The close code that answers this error.
    pub fn close_code(self) -> CloseCode {
        use ProtocolError::*;
        match self {
            ReservedBits
            | ReservedOpcode
            | BadMasking
            | FragmentedControl
            | ControlTooLong
            | UnexpectedContinuation
            | ExpectedContinuation
            | BadLength
            | BadClosePayload
            | BadCloseCode(_) => CloseCode::PROTOCOL_ERROR,
            InvalidUtf8 => CloseCode::INVALID_PAYLOAD,
            FrameTooLarge | MessageTooLarge => CloseCode::MESSAGE_TOO_BIG,
        }
    }

    /// A short reason for the close frame and the logs.
    pub fn reason(self) -> &'static str {
        use ProtocolError::*;
        match self {
            ReservedBits => "reserved bits set",
            ReservedOpcode => "reserved opcode",
            BadMasking => "bad masking",
            FragmentedControl => "fragmented control frame",
            ControlTooLong => "control frame too long",
            UnexpectedContinuation => "continuation without a message",
            ExpectedContinuation => "new message inside a fragmented one",
            BadLength => "bad payload length",
            BadClosePayload => "close payload of one byte",
            BadCloseCode(_) => "invalid close code",
            InvalidUtf8 => "invalid utf-8",
            FrameTooLarge => "frame too large",
            MessageTooLarge => "message too large",
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for ProtocolError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_validity_follows_rfc_6455_and_the_iana_registry() {
        for ok in
            [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999]
        {
            assert!(CloseCode(ok).is_valid_on_wire(), "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            assert!(!CloseCode(bad).is_valid_on_wire(), "{bad}");
        }
    }

    #[test]
    fn close_reasons_match_the_protocol_doc() {
        // docs/protocol.md, "Close codes the server sends", row by row.
        let doc = include_str!("../../docs/protocol.md");
        let reasons = [
            CloseReason::Idle,
            CloseReason::PongTimeout,
            CloseReason::shutting_down(2000),
            CloseReason::TooManyBadMessages,
            CloseReason::Replaced,
            CloseReason::kicked(None, None),
            CloseReason::SlowConsumer,
            CloseReason::TokenExpired,
        ];
        for r in reasons {
            let (code, reason) = r.frame();
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| {code} |")))
                .unwrap_or_else(|| panic!("no row for {code} in docs/protocol.md"));
            assert!(row.contains(&format!("`{reason}`")), "{row} lacks {reason}");
            assert!(code.is_valid_on_wire() && reason.len() <= 123);
        }
    }

    #[test]
    fn errors_map_to_their_close_codes() {
        assert_eq!(ProtocolError::ReservedOpcode.close_code(), CloseCode::PROTOCOL_ERROR);
        assert_eq!(ProtocolError::InvalidUtf8.close_code(), CloseCode::INVALID_PAYLOAD);
        assert_eq!(ProtocolError::MessageTooLarge.close_code(), CloseCode::MESSAGE_TOO_BIG);
        assert_eq!(ProtocolError::BadCloseCode(1005).close_code(), CloseCode::PROTOCOL_ERROR);
    }
}
