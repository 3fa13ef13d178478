//! Close codes and the one mapping from protocol errors to them.

use std::fmt;

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

    /// Whether a peer may send this code in a close frame. 1004-1006 and 1015 are reserved,
    /// below 1000 and 1016-2999 are unassigned; 3000-4999 belong to libraries and applications.
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
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
    fn errors_map_to_their_close_codes() {
        assert_eq!(ProtocolError::ReservedOpcode.close_code(), CloseCode::PROTOCOL_ERROR);
        assert_eq!(ProtocolError::InvalidUtf8.close_code(), CloseCode::INVALID_PAYLOAD);
        assert_eq!(ProtocolError::MessageTooLarge.close_code(), CloseCode::MESSAGE_TOO_BIG);
        assert_eq!(ProtocolError::BadCloseCode(1005).close_code(), CloseCode::PROTOCOL_ERROR);
    }
}
