//! Every answer the API gives that is not a success: one [`ApiError`] with one mapping to
//! status, message, field and header, rendered in one shape, `{"error": …, "field": …}`
//! (`field` names the body field at fault, null when no single field is).

use std::borrow::Cow;

use serde_json::{json, Value};

use super::fields::BadRequest;

/// An API answer: status, body and its type, and any extra header lines.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(super) status: u16,
    pub(super) body: Vec<u8>,
    pub(super) extra: &'static str,
    pub(super) content_type: &'static str,
}

impl Reply {
    pub(super) fn json(status: u16, v: &Value) -> Reply {
        Reply {
            status,
            body: v.to_string().into_bytes(),
            extra: "",
            content_type: "application/json",
        }
    }
}

/// Why a request was not done.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// 400: a body field (or the body itself) is wrong.
    Bad(BadRequest),
    /// 400: the request cannot be read as HTTP/1.1 (malformed head, Content-Length rules).
    Malformed(&'static str),
    /// 400: a name in the path breaks the name rule.
    BadName(&'static str),
    /// 401: no API key given.
    Unauthorized,
    /// 403: the wrong API key.
    Forbidden,
    /// 401: the API key's `expires` has passed.
    KeyExpired(String),
    /// 403: the key lacks the scope the request needs.
    Scope { key: String, scope: String },
    /// 404.
    NotFound,
    /// 405: the endpoint takes only this method.
    Method(http::Method),
    /// 405: the endpoint takes these methods (as `Allow` lists them).
    Methods(&'static str),
    /// 408: the request did not arrive whole within its deadline.
    Late,
    /// 411: a chunked body.
    LengthRequired,
    /// 413: the body is over `--api-max-body`.
    BodyTooLarge { limit: usize },
    /// 431: the head is over 16 KiB.
    HeadTooLarge,
    /// 503: a shard's inbox is full.
    Busy { shard: usize },
    /// 503: `--api-max-connections` are open.
    TooManyConnections,
    /// 503: the idempotency table holds `--idempotency-max-keys` keys still in their window.
    IdempotencyFull { max: usize },
    /// 503: the durable log could not take this many messages (they were delivered where they
    /// could be, but are not on disk).
    Unsaved(u64),
    /// 504: a delivery report or a query answer did not come back in time.
    NoAnswer(&'static str),
    /// 503 with `Retry-After`: the overload manager paused history and presence queries.
    Paused,
}

impl ApiError {
    pub(crate) fn status(&self) -> u16 {
        match self {
            ApiError::Bad(_) | ApiError::Malformed(_) | ApiError::BadName(_) => 400,
            ApiError::Unauthorized | ApiError::KeyExpired(_) => 401,
            ApiError::Forbidden | ApiError::Scope { .. } => 403,
            ApiError::NotFound => 404,
            ApiError::Method(_) | ApiError::Methods(_) => 405,
            ApiError::Late => 408,
            ApiError::LengthRequired => 411,
            ApiError::BodyTooLarge { .. } => 413,
            ApiError::HeadTooLarge => 431,
            ApiError::Busy { .. }
            | ApiError::TooManyConnections
            | ApiError::IdempotencyFull { .. }
            | ApiError::Unsaved(_)
            | ApiError::Paused => 503,
            ApiError::NoAnswer(_) => 504,
        }
    }

    pub(crate) fn message(&self) -> Cow<'_, str> {
        match self {
            ApiError::Bad(e) => Cow::Borrowed(&e.message),
            ApiError::Malformed(m) | ApiError::BadName(m) | ApiError::NoAnswer(m) => {
                Cow::Borrowed(m)
            }
            ApiError::Unauthorized => Cow::Borrowed("missing \"Authorization: Bearer <key>\""),
            ApiError::Forbidden => Cow::Borrowed("wrong API key"),
            ApiError::KeyExpired(name) => Cow::Owned(format!("the API key {name:?} has expired")),
            ApiError::Scope { key, scope } => {
                Cow::Owned(format!("the API key {key:?} lacks the scope {scope}"))
            }
            ApiError::NotFound => Cow::Borrowed("no such endpoint"),
            ApiError::Method(m) => Cow::Owned(format!("use {m}")),
            ApiError::Methods(m) => Cow::Owned(format!("use one of {m}")),
            ApiError::Late => Cow::Borrowed("the request did not arrive whole within 10 s"),
            ApiError::LengthRequired => Cow::Borrowed("send the body with Content-Length"),
            ApiError::BodyTooLarge { limit } => {
                Cow::Owned(format!("body over the {limit} byte limit (--api-max-body)"))
            }
            ApiError::HeadTooLarge => Cow::Borrowed("request head over 16 KiB"),
            ApiError::Busy { shard } => {
                Cow::Owned(format!("shard {shard} inbox is full; retry later"))
            }
            ApiError::TooManyConnections => {
                Cow::Borrowed("too many API connections (--api-max-connections)")
            }
            ApiError::Unsaved(n) => Cow::Owned(format!(
                "the durable log cannot be written (the server log says why): {n} message(s) are not on disk, though delivered where they could be"
            )),
            ApiError::Paused => Cow::Borrowed(
                "the server is overloaded: history and presence queries are paused; retry later",
            ),
            ApiError::IdempotencyFull { max } => Cow::Owned(format!(
                "{max} idempotency keys are within their window (--idempotency-max-keys); retry later"
            )),
        }
    }

    /// The body field at fault, if one is.
    pub(crate) fn field(&self) -> Option<&str> {
        match self {
            ApiError::Bad(e) => e.field.as_deref(),
            _ => None,
        }
    }

    fn header(&self) -> &'static str {
        match self {
            ApiError::Unauthorized | ApiError::KeyExpired(_) => "WWW-Authenticate: Bearer\r\n",
            ApiError::Method(m) if m == http::Method::GET => "Allow: GET\r\n",
            ApiError::Method(_) => "Allow: POST\r\n",
            ApiError::Methods(_) => "Allow: GET, DELETE\r\n",
            ApiError::Paused => "Retry-After: 2\r\n",
            _ => "",
        }
    }

    /// The error as a JSON object; a batch line adds its status.
    pub(crate) fn json(&self, with_status: bool) -> Value {
        let (error, field) = (self.message(), self.field());
        if with_status {
            json!({ "status": self.status(), "error": error, "field": field })
        } else {
            json!({ "error": error, "field": field })
        }
    }

    pub(crate) fn reply(&self) -> Reply {
        let mut r = Reply::json(self.status(), &self.json(false));
        r.extra = self.header();
        r
    }
}

impl From<BadRequest> for ApiError {
    fn from(e: BadRequest) -> ApiError {
        ApiError::Bad(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_the_one_shape() {
        let errors = [
            ApiError::Bad(BadRequest::new("channel", "bad")),
            ApiError::Malformed("malformed HTTP request"),
            ApiError::BadName("invalid user name"),
            ApiError::Unauthorized,
            ApiError::Forbidden,
            ApiError::NotFound,
            ApiError::Method(http::Method::POST),
            ApiError::Late,
            ApiError::LengthRequired,
            ApiError::BodyTooLarge { limit: 10 },
            ApiError::HeadTooLarge,
            ApiError::Busy { shard: 1 },
            ApiError::TooManyConnections,
            ApiError::IdempotencyFull { max: 3 },
            ApiError::NoAnswer("no answer"),
            ApiError::Paused,
        ];
        let statuses: Vec<u16> = errors.iter().map(ApiError::status).collect();
        assert_eq!(
            statuses,
            [400, 400, 400, 401, 403, 404, 405, 408, 411, 413, 431, 503, 503, 503, 504, 503]
        );
        for e in &errors {
            let v: Value = serde_json::from_slice(&e.reply().body).unwrap();
            let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
            assert_eq!(keys, ["error", "field"], "{e:?}");
            assert!(!v["error"].as_str().unwrap().is_empty());
        }
        assert_eq!(errors[0].json(false)["field"], "channel");
        assert_eq!(errors[6].reply().extra, "Allow: POST\r\n");
        assert_eq!(ApiError::Method(http::Method::GET).message(), "use GET");
    }
}
