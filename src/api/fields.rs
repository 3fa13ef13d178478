//! Strict parsing of API request bodies: a JSON object, known fields only, each of the right
//! type, with errors that name the field.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::value::RawValue;

use crate::config::parse_duration;
use crate::proto::CloseCode;
use crate::push::directory::Policy;
use crate::push::ids::{valid_name, ConnId};
use crate::push::msg::{Meta, Payload, Priority};

/// A bad request: the message and the field it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BadRequest {
    /// The field at fault: a known one, or an unknown one the client sent.
    pub(crate) field: Option<Cow<'static, str>>,
    pub(crate) message: String,
}

impl BadRequest {
    pub(crate) fn new(field: &'static str, message: impl Into<String>) -> Self {
        BadRequest { field: Some(Cow::Borrowed(field)), message: message.into() }
    }

    pub(crate) fn body(message: impl Into<String>) -> Self {
        BadRequest { field: None, message: message.into() }
    }
}

/// A request body's fields, not yet interpreted.
#[derive(Debug)]
pub(crate) struct Fields {
    map: HashMap<String, Box<RawValue>>,
}

const NAME_RULE: &str = "1-128 bytes of A-Z a-z 0-9 _ - . : @ /";

/// The longest `ttl` a message may ask for.
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// The longest a push's report may wait for acknowledgements (`wait_ack_ms`).
pub(crate) const MAX_WAIT_ACK_MS: u32 = 60_000;

/// How deeply `data` may nest arrays and objects, on every endpoint (batch lines included).
/// Deeper payloads are refused with 400: clients' JSON parsers are not all built for more.
pub(crate) const MAX_DATA_DEPTH: usize = 64;

impl Fields {
    #[cfg(test)]
    /// Parses a JSON object; `allowed` lists the fields this operation takes.
    pub(crate) fn parse(body: &[u8], allowed: &[&str]) -> Result<Fields, BadRequest> {
        let f = Fields::parse_any(body)?;
        f.only(allowed)?;
        Ok(f)
    }

    /// Parses a JSON object with any fields. Values stay raw, so nesting costs no recursion
    /// here; `payload` bounds the depth of `data`.
    pub(crate) fn parse_any(body: &[u8]) -> Result<Fields, BadRequest> {
        let map: HashMap<String, Box<RawValue>> = serde_json::from_slice(body)
            .map_err(|e| BadRequest::body(format!("body must be a JSON object: {e}")))?;
        Ok(Fields { map })
    }

    /// Refuses a field this operation does not take.
    pub(crate) fn only(&self, allowed: &[&str]) -> Result<(), BadRequest> {
        match self.map.keys().find(|k| !allowed.contains(&k.as_str())) {
            None => Ok(()),
            Some(unknown) => Err(BadRequest {
                field: Some(Cow::Owned(unknown.clone())),
                message: format!(
                    "unknown field {unknown:?} (this operation takes: {})",
                    allowed.join(", ")
                ),
            }),
        }
    }

    /// Takes a string field out (a batch line's `op`).
    pub(crate) fn take_str(&mut self, f: &'static str) -> Result<Option<String>, BadRequest> {
        let v = self.opt_str(f)?;
        self.map.remove(f);
        Ok(v)
    }

    fn opt_str(&self, f: &'static str) -> Result<Option<String>, BadRequest> {
        match self.map.get(f) {
            None => Ok(None),
            Some(raw) => serde_json::from_str::<String>(raw.get())
                .map(Some)
                .map_err(|_| BadRequest::new(f, format!("{f:?} must be a string"))),
        }
    }

    /// A required name (user, channel, device).
    pub(crate) fn name(&self, f: &'static str) -> Result<Arc<str>, BadRequest> {
        self.opt_name(f)?.ok_or_else(|| BadRequest::new(f, format!("{f:?} is required")))
    }

    pub(crate) fn opt_name(&self, f: &'static str) -> Result<Option<Arc<str>>, BadRequest> {
        match self.opt_str(f)? {
            None => Ok(None),
            Some(s) if valid_name(&s) => Ok(Some(s.into())),
            Some(_) => Err(BadRequest::new(f, format!("{f:?} must be {NAME_RULE}"))),
        }
    }

    pub(crate) fn conn(&self, f: &'static str) -> Result<Option<ConnId>, BadRequest> {
        match self.opt_str(f)? {
            None => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| {
                BadRequest::new(f, format!("{f:?} must be a connection id like \"c0.12.3\""))
            }),
        }
    }

    /// `data` (any JSON) or `data_base64` (a binary payload): exactly one.
    pub(crate) fn payload(&self) -> Result<Payload, BadRequest> {
        match (self.map.get("data"), self.opt_str("data_base64")?) {
            (Some(_), Some(_)) => {
                Err(BadRequest::new("data", "give \"data\" or \"data_base64\", not both"))
            }
            (None, None) => {
                Err(BadRequest::new("data", "\"data\" (any JSON) or \"data_base64\" is required"))
            }
            (Some(raw), None) => {
                if depth(raw.get().as_bytes()) > MAX_DATA_DEPTH {
                    return Err(BadRequest::new(
                        "data",
                        format!("\"data\" nests deeper than {MAX_DATA_DEPTH} arrays and objects"),
                    ));
                }
                let raw: Arc<RawValue> = Arc::from(raw.clone());
                Ok(Payload::Json(raw))
            }
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map(|v| Payload::Binary(Bytes::from(v)))
                .map_err(|_| {
                    BadRequest::new("data_base64", "\"data_base64\" must be standard base64")
                }),
        }
    }

    /// `ttl` (seconds as a number, or a duration string such as "500ms", "30s", "2m"; from
    /// 1 ms to 24 h) and `conflate` (a key by the name rule), for a message of `stream` sent at
    /// `now_ms` (Unix). `None` when neither is given.
    pub(crate) fn meta(&self, stream: &str, now_ms: u64) -> Result<Option<Arc<Meta>>, BadRequest> {
        const TTL: &str = "\"ttl\" must be a duration from 1ms to 24h: seconds as a number, or a string like \"500ms\", \"30s\", \"2m\"";
        let ttl = match self.map.get("ttl") {
            None => None,
            Some(raw) => {
                let d = match serde_json::from_str::<serde_json::Value>(raw.get()) {
                    Ok(serde_json::Value::Number(n)) => n
                        .as_f64()
                        .filter(|s| s.is_finite() && (0.0..=1e9).contains(s))
                        .map(Duration::from_secs_f64),
                    Ok(serde_json::Value::String(s)) => parse_duration(&s).ok(),
                    _ => None,
                };
                match d {
                    Some(d) if d >= Duration::from_millis(1) && d <= MAX_TTL => Some(d),
                    _ => return Err(BadRequest::new("ttl", TTL)),
                }
            }
        };
        let conflate = match self.opt_str("conflate")? {
            None => None,
            Some(k) if valid_name(&k) => Some(format!("{stream}\u{0}{k}").into_boxed_str()),
            Some(_) => {
                return Err(BadRequest::new(
                    "conflate",
                    format!("\"conflate\" must be {NAME_RULE}"),
                ))
            }
        };
        if ttl.is_none() && conflate.is_none() {
            return Ok(None);
        }
        let expires_ms = ttl.map_or(0, |d| now_ms.saturating_add(d.as_millis() as u64));
        Ok(Some(Arc::new(Meta { expires_ms, conflate })))
    }

    /// `wait_ack_ms`: how long a durable push's report waits for acks, 1 to
    /// [`MAX_WAIT_ACK_MS`]; 0 when not given.
    pub(crate) fn wait_ack_ms(&self) -> Result<u32, BadRequest> {
        match self.map.get("wait_ack_ms") {
            None => Ok(0),
            Some(raw) => match serde_json::from_str::<u32>(raw.get()) {
                Ok(n) if (1..=MAX_WAIT_ACK_MS).contains(&n) => Ok(n),
                _ => Err(BadRequest::new(
                    "wait_ack_ms",
                    format!("\"wait_ack_ms\" must be a whole number of milliseconds from 1 to {MAX_WAIT_ACK_MS}"),
                )),
            },
        }
    }

    pub(crate) fn priority(&self) -> Result<Priority, BadRequest> {
        match self.opt_str("priority")? {
            None => Ok(Priority::Normal),
            Some(p) => Priority::parse(&p).ok_or_else(|| {
                BadRequest::new("priority", "\"priority\" must be \"high\", \"normal\" or \"low\"")
            }),
        }
    }

    pub(crate) fn policy(&self) -> Result<Policy, BadRequest> {
        match self.opt_str("policy")?.as_deref() {
            None | Some("all") => Ok(Policy::All),
            Some("active") => Ok(Policy::Active),
            Some("one") => Ok(Policy::One),
            Some("first_ack") => Ok(Policy::FirstAck),
            Some(_) => Err(BadRequest::new(
                "policy",
                "\"policy\" must be \"all\", \"active\", \"one\" or \"first_ack\"",
            )),
        }
    }

    /// A close code a kick may use: 1000, 1001, 1008, 1011, 1013, or 3000-4999.
    pub(crate) fn close_code(&self) -> Result<Option<CloseCode>, BadRequest> {
        match self.map.get("code") {
            None => Ok(None),
            Some(raw) => match serde_json::from_str::<u16>(raw.get()).map(CloseCode) {
                Ok(c) if c.is_kick_allowed() => Ok(Some(c)),
                _ => Err(BadRequest::new(
                    "code",
                    "\"code\" must be 1000, 1001, 1008, 1011, 1013 or 3000-4999",
                )),
            },
        }
    }

    /// A close reason: at most 123 bytes (a close frame carries 125, two for the code).
    pub(crate) fn reason(&self) -> Result<Option<Arc<str>>, BadRequest> {
        match self.opt_str("reason")? {
            None => Ok(None),
            Some(r) if r.len() <= 123 => Ok(Some(r.into())),
            Some(_) => Err(BadRequest::new("reason", "\"reason\" must be at most 123 bytes")),
        }
    }
}

/// The deepest nesting of arrays and objects in valid JSON text.
fn depth(json: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_nesting_outside_strings() {
        assert_eq!(depth(b"1"), 0);
        assert_eq!(depth(br#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(depth(br#"["[[[{{", "\"[["]"#), 1);
        let at = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let f = |d: &str| Fields::parse(format!(r#"{{"data":{d}}}"#).as_bytes(), &["data"]);
        assert!(f(&at(MAX_DATA_DEPTH)).unwrap().payload().is_ok());
        assert_eq!(
            f(&at(MAX_DATA_DEPTH + 1)).unwrap().payload().unwrap_err().field.as_deref(),
            Some("data")
        );
    }

    #[test]
    fn errors_name_the_field() {
        let f = |b: &str| {
            Fields::parse(
                b.as_bytes(),
                &["channel", "data", "data_base64", "priority", "code", "reason", "conn"],
            )
        };
        assert!(f("[1]").unwrap_err().message.contains("JSON object"));
        assert!(f(r#"{"chanel":"x"}"#).unwrap_err().message.contains("unknown field \"chanel\""));
        assert_eq!(
            f(r#"{"channel":5}"#).unwrap().name("channel").unwrap_err().field.as_deref(),
            Some("channel")
        );
        assert_eq!(
            f(r#"{}"#).unwrap().name("channel").unwrap_err().message,
            "\"channel\" is required"
        );
        assert_eq!(
            f(r#"{"channel":"a b"}"#).unwrap().name("channel").unwrap_err().field.as_deref(),
            Some("channel")
        );
        assert_eq!(f(r#"{}"#).unwrap().payload().unwrap_err().field.as_deref(), Some("data"));
        assert!(matches!(f(r#"{"data":null}"#).unwrap().payload(), Ok(Payload::Json(_))));
        assert!(
            matches!(f(r#"{"data_base64":"AAE="}"#).unwrap().payload(), Ok(Payload::Binary(b)) if b[..] == [0, 1])
        );
        assert_eq!(
            f(r#"{"data_base64":"!!"}"#).unwrap().payload().unwrap_err().field.as_deref(),
            Some("data_base64")
        );
        assert_eq!(
            f(r#"{"priority":"urgent"}"#).unwrap().priority().unwrap_err().field.as_deref(),
            Some("priority")
        );
        assert_eq!(
            f(r#"{"code":1005}"#).unwrap().close_code().unwrap_err().field.as_deref(),
            Some("code")
        );
        assert_eq!(f(r#"{"code":4321}"#).unwrap().close_code(), Ok(Some(CloseCode(4321))));
        assert_eq!(f(r#"{}"#).unwrap().close_code(), Ok(None));
        assert_eq!(
            f(r#"{"conn":"x"}"#).unwrap().conn("conn").unwrap_err().field.as_deref(),
            Some("conn")
        );
        assert_eq!(
            f(&format!(r#"{{"reason":"{}"}}"#, "r".repeat(124)))
                .unwrap()
                .reason()
                .unwrap_err()
                .field
                .as_deref(),
            Some("reason")
        );
    }
}
