//! The HTTP/1.1 upgrade handshake (RFC 6455 section 4.2), sans-IO.
//!
//! [`parse_upgrade`] reads a request head from a byte slice and either accepts it (the route,
//! the accept key, the chosen subprotocol) or refuses it with a [`HandshakeError`], which maps
//! to exactly one HTTP status in [`HandshakeError::status`]. Refusals from the server's own
//! limits (full, draining) go through the same enum so every refusal is written one way.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MAX_HEADERS: usize = 64;

/// What the server accepts, fixed at start-up.
#[derive(Clone, Debug, Default)]
pub struct HandshakePolicy {
    /// Paths served, by route number.
    pub routes: Vec<String>,
    /// Origins allowed (`scheme://host[:port]`, compared case-insensitively). Empty: any.
    /// A request without an Origin header (a non-browser client) is always allowed.
    pub allowed_origins: Vec<String>,
    /// Subprotocols the server speaks, in its order of preference.
    pub subprotocols: Vec<String>,
    /// Cap on the request head in bytes.
    pub max_header_bytes: usize,
    /// Headers kept in [`Upgrade::headers`] (lower-case names), for a backend that decides
    /// who the connection is. Empty: none kept.
    pub keep_headers: Vec<String>,
}

/// An accepted upgrade request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// Index into [`HandshakePolicy::routes`].
    pub route: usize,
    /// The Sec-WebSocket-Accept value.
    pub accept: [u8; 28],
    /// Index into [`HandshakePolicy::subprotocols`] of the one chosen.
    pub subprotocol: Option<usize>,
    /// The query string, without the `?`, if any.
    pub query: Option<String>,
    /// A bearer token from `Authorization: Bearer TOKEN` or, for browsers (which cannot set
    /// headers), a `Sec-WebSocket-Protocol` entry `ringcast.token.TOKEN`. Never logged.
    pub bearer: Option<String>,
    /// The [`HandshakePolicy::keep_headers`] the request had (lower-case name, value as sent;
    /// a header sent twice appears twice). Never logged.
    pub headers: Vec<(String, String)>,
}

/// The prefix of a `Sec-WebSocket-Protocol` entry that carries a token; it is never chosen
/// as the subprotocol.
pub const TOKEN_PROTOCOL_PREFIX: &str = "ringcast.token.";

/// Why a request was refused before the upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// Not parseable as an HTTP/1.x request.
    Malformed,
    /// The head exceeds the configured cap, or has too many header lines.
    HeaderTooLarge,
    /// Not a GET.
    MethodNotAllowed,
    /// HTTP/1.0.
    HttpVersion,
    /// A body was announced.
    UnexpectedBody,
    /// No Host header, or more than one, or an empty one.
    BadHost,
    /// No `Upgrade: websocket`.
    NotWebSocket,
    /// No `upgrade` token in Connection.
    BadConnectionHeader,
    /// Sec-WebSocket-Version is not 13.
    UnsupportedVersion,
    /// Sec-WebSocket-Key missing, repeated or not the base64 of 16 bytes.
    BadKey,
    /// No route for the path.
    NotFound,
    /// The Origin is not in the allowlist.
    OriginNotAllowed,
    /// The server (or this shard) holds its maximum number of connections.
    ServerFull,
    /// The source address holds its maximum number of connections.
    AddressLimit,
    /// The server is shutting down.
    Draining,
    /// The identity step refused the request (bad user, device or channels).
    BadIdentity,
    /// No token, or one that is malformed, badly signed, signed by an unknown key, expired
    /// or not yet valid.
    Unauthorized,
    /// A valid token that does not allow what the request asks for.
    Forbidden,
    /// The source address made more handshakes than `--handshake-rate-per-ip` allows.
    RateLimited,
    /// The backend that decides who a connection is did not answer (a timeout, an open
    /// breaker, a failed request) or asked to be tried again.
    BackendUnavailable,
    /// The overload manager stopped admitting (memory, event-loop lag, handshakes or open
    /// files past their threshold).
    Overloaded,
}

impl HandshakeError {
    /// Every variant, in a fixed order (metrics index by it).
    pub const ALL: [HandshakeError; 21] = {
        use HandshakeError::*;
        [
            Malformed,
            HeaderTooLarge,
            MethodNotAllowed,
            HttpVersion,
            UnexpectedBody,
            BadHost,
            NotWebSocket,
            BadConnectionHeader,
            UnsupportedVersion,
            BadKey,
            NotFound,
            OriginNotAllowed,
            ServerFull,
            AddressLimit,
            Draining,
            BadIdentity,
            Unauthorized,
            Forbidden,
            RateLimited,
            BackendUnavailable,
            Overloaded,
        ]
    };

    /// Position in [`HandshakeError::ALL`].
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|e| *e == self).unwrap_or(0)
    }

    /// A snake_case name for metrics and logs.
    pub fn label(self) -> &'static str {
        use HandshakeError::*;
        match self {
            Malformed => "malformed",
            HeaderTooLarge => "header_too_large",
            MethodNotAllowed => "method_not_allowed",
            HttpVersion => "http_version",
            UnexpectedBody => "unexpected_body",
            BadHost => "bad_host",
            NotWebSocket => "not_websocket",
            BadConnectionHeader => "bad_connection_header",
            UnsupportedVersion => "unsupported_version",
            BadKey => "bad_key",
            NotFound => "not_found",
            OriginNotAllowed => "origin_not_allowed",
            ServerFull => "server_full",
            AddressLimit => "address_limit",
            Draining => "draining",
            BadIdentity => "bad_identity",
            Unauthorized => "unauthorized",
            Forbidden => "forbidden",
            RateLimited => "rate_limited",
            BackendUnavailable => "backend_unavailable",
            Overloaded => "overloaded",
        }
    }

    /// The status line's code and phrase; the one mapping from refusal to HTTP.
    pub fn status(self) -> (u16, &'static str) {
        use HandshakeError::*;
        match self {
            Malformed | UnexpectedBody | BadHost | BadConnectionHeader | BadKey | BadIdentity => {
                (400, "Bad Request")
            }
            HeaderTooLarge => (431, "Request Header Fields Too Large"),
            MethodNotAllowed => (405, "Method Not Allowed"),
            HttpVersion => (505, "HTTP Version Not Supported"),
            NotWebSocket | UnsupportedVersion => (426, "Upgrade Required"),
            NotFound => (404, "Not Found"),
            OriginNotAllowed | Forbidden => (403, "Forbidden"),
            Unauthorized => (401, "Unauthorized"),
            AddressLimit | RateLimited => (429, "Too Many Requests"),
            ServerFull | Draining | BackendUnavailable | Overloaded => (503, "Service Unavailable"),
        }
    }

    /// A short, stable label: the response body and the metrics label.
    pub fn reason(self) -> &'static str {
        use HandshakeError::*;
        match self {
            Malformed => "malformed request",
            HeaderTooLarge => "request head too large",
            MethodNotAllowed => "method must be GET",
            HttpVersion => "HTTP/1.1 required",
            UnexpectedBody => "upgrade request must not have a body",
            BadHost => "missing or invalid Host header",
            NotWebSocket => "expected Upgrade: websocket",
            BadConnectionHeader => "Connection header must contain upgrade",
            UnsupportedVersion => "unsupported Sec-WebSocket-Version",
            BadKey => "missing or invalid Sec-WebSocket-Key",
            NotFound => "no such endpoint",
            OriginNotAllowed => "origin not allowed",
            ServerFull => "server at connection limit",
            AddressLimit => "too many connections from this address",
            Draining => "server shutting down",
            BadIdentity => "invalid identity parameters",
            Unauthorized => "a valid token is required",
            Forbidden => "the token does not allow this",
            RateLimited => "too many handshakes from this address",
            BackendUnavailable => "the connect backend is unavailable; retry later",
            Overloaded => "server overloaded; retry later",
        }
    }

    /// Whether the refusal is for load (503, 429): it carries `Retry-After`, and with
    /// `--overload-close` it may be a 1013 close after the upgrade instead.
    pub fn is_overload(self) -> bool {
        matches!(
            self,
            HandshakeError::ServerFull
                | HandshakeError::AddressLimit
                | HandshakeError::RateLimited
                | HandshakeError::Draining
                | HandshakeError::BackendUnavailable
                | HandshakeError::Overloaded
        )
    }

    /// Extra header lines the status calls for.
    fn extra_headers(self) -> &'static str {
        match self {
            HandshakeError::UnsupportedVersion => "Sec-WebSocket-Version: 13\r\n",
            HandshakeError::NotWebSocket => "Upgrade: websocket\r\n",
            HandshakeError::MethodNotAllowed => "Allow: GET\r\n",
            HandshakeError::Unauthorized => "WWW-Authenticate: Bearer\r\n",
            _ => "",
        }
    }
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (code, _) = self.status();
        write!(f, "{code} {}", self.reason())
    }
}

impl std::error::Error for HandshakeError {}

/// Computes Sec-WebSocket-Accept for a client key.
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID);
    let mut out = [0u8; 28];
    // A 20-byte digest is always 28 base64 characters.
    let n = B64.encode_slice(h.finalize(), &mut out).unwrap_or(0);
    debug_assert_eq!(n, 28);
    out
}

fn has_token(value: &[u8], token: &str) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The path and query of a request target. The absolute form (`GET http://host/ws?x HTTP/1.1`,
/// which RFC 9112 §3.2.2 says a server must accept and RFC 6455 §4.2.1 allows) loses its scheme
/// and authority; an empty path is `/`.
fn split_target(target: &str) -> (&str, Option<&str>) {
    let (rest, absolute) = match target.split_once("://") {
        Some((scheme, after))
            if ["http", "https", "ws", "wss"].iter().any(|s| s.eq_ignore_ascii_case(scheme)) =>
        {
            (&after[after.find(['/', '?']).unwrap_or(after.len())..], true)
        }
        _ => (target, false),
    };
    let (path, query) = rest.split_once('?').map_or((rest, None), |(p, q)| (p, Some(q)));
    (if absolute && path.is_empty() { "/" } else { path }, query)
}

/// Parses and validates an upgrade request at the start of `buf`. `Ok(None)`: the head is not
/// complete yet (and within the cap). `Ok(Some((upgrade, n)))`: accepted, the head was `n`
/// bytes; what follows is the client's first frame bytes.
pub fn parse_upgrade(
    buf: &[u8],
    policy: &HandshakePolicy,
) -> Result<Option<(Upgrade, usize)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > policy.max_header_bytes {
                Err(HandshakeError::HeaderTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::HeaderTooLarge),
        Err(_) => return Err(HandshakeError::Malformed),
    };
    if head_len > policy.max_header_bytes {
        return Err(HandshakeError::HeaderTooLarge);
    }
    if req.method != Some("GET") {
        return Err(HandshakeError::MethodNotAllowed);
    }
    if req.version != Some(1) {
        return Err(HandshakeError::HttpVersion);
    }
    let (path, query) = split_target(req.path.unwrap_or(""));

    let mut host = 0usize;
    let mut upgrade = false;
    let mut connection = false;
    let mut version: Option<&[u8]> = None;
    let mut key: Option<&[u8]> = None;
    let mut keys = 0usize;
    let mut origin: Option<&[u8]> = None;
    let mut offered: Vec<&[u8]> = Vec::new();
    let mut bearer: Option<&[u8]> = None;
    let mut kept: Vec<(String, String)> = Vec::new();
    for h in req.headers.iter() {
        let v = h.value;
        let name = h.name;
        if policy.keep_headers.iter().any(|k| name.eq_ignore_ascii_case(k)) {
            if let Ok(value) = std::str::from_utf8(v.trim_ascii()) {
                kept.push((name.to_ascii_lowercase(), value.to_string()));
            }
        }
        if name.eq_ignore_ascii_case("host") {
            host += 1;
            if v.trim_ascii().is_empty() || v.iter().any(|b| b.is_ascii_whitespace()) {
                return Err(HandshakeError::BadHost);
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(v, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= has_token(v, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            version = Some(v.trim_ascii());
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            keys += 1;
            key = Some(v.trim_ascii());
        } else if name.eq_ignore_ascii_case("origin") {
            origin = Some(v.trim_ascii());
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            for p in v.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                match p.strip_prefix(TOKEN_PROTOCOL_PREFIX.as_bytes()) {
                    Some(t) => bearer = bearer.or(Some(t)),
                    None => offered.push(p),
                }
            }
        } else if name.eq_ignore_ascii_case("authorization") {
            let v = v.trim_ascii();
            if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
                bearer = Some(v[7..].trim_ascii());
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            if v.trim_ascii() != b"0" {
                return Err(HandshakeError::UnexpectedBody);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HandshakeError::UnexpectedBody);
        }
    }
    if host != 1 {
        return Err(HandshakeError::BadHost);
    }
    if !upgrade {
        return Err(HandshakeError::NotWebSocket);
    }
    if !connection {
        return Err(HandshakeError::BadConnectionHeader);
    }
    if version != Some(b"13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = match key {
        Some(k) if keys == 1 => k,
        _ => return Err(HandshakeError::BadKey),
    };
    match B64.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(HandshakeError::BadKey),
    }
    let route = policy.routes.iter().position(|r| r == path).ok_or(HandshakeError::NotFound)?;
    if let Some(o) = origin {
        if !policy.allowed_origins.is_empty()
            && !policy.allowed_origins.iter().any(|a| a.as_bytes().eq_ignore_ascii_case(o))
        {
            return Err(HandshakeError::OriginNotAllowed);
        }
    }
    let subprotocol = policy.subprotocols.iter().position(|s| offered.contains(&s.as_bytes()));
    let bearer = bearer.and_then(|b| std::str::from_utf8(b).ok()).map(str::to_owned);
    let upgrade = Upgrade {
        route,
        accept: accept_key(key),
        subprotocol,
        query: query.map(str::to_owned),
        bearer,
        headers: kept,
    };
    Ok(Some((upgrade, head_len)))
}

/// Writes the 101 response for an accepted upgrade.
pub fn write_accept(out: &mut Vec<u8>, up: &Upgrade, policy: &HandshakePolicy) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(&up.accept);
    if let Some(p) = up.subprotocol.and_then(|i| policy.subprotocols.get(i)) {
        out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
        out.extend_from_slice(p.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
}

/// Writes a complete refusal: status line, headers, and the reason as a short text body.
pub fn write_refusal(out: &mut Vec<u8>, err: HandshakeError) {
    write_refusal_with(out, err, err.reason());
}

/// Writes a refusal with a more specific reason as the body (an overload refusal says
/// `Retry-After: 5`).
pub fn write_refusal_with(out: &mut Vec<u8>, err: HandshakeError, body: &str) {
    write_refusal_retry(out, err, body, err.is_overload().then_some(5));
}

/// Writes a refusal with a reason and, where given, `Retry-After` in seconds (the server
/// jitters it, so refused clients do not come back together).
pub fn write_refusal_retry(
    out: &mut Vec<u8>,
    err: HandshakeError,
    body: &str,
    retry_after_s: Option<u64>,
) {
    use std::io::Write as _;
    let (code, phrase) = err.status();
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {code} {phrase}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n{}",
        body.len() + 1,
        err.extra_headers(),
    );
    if let Some(s) = retry_after_s {
        let _ = write!(out, "Retry-After: {s}\r\n");
    }
    let _ = write!(out, "\r\n{body}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> HandshakePolicy {
        HandshakePolicy {
            routes: vec!["/ws".into(), "/echo".into()],
            allowed_origins: vec!["https://app.example".into()],
            subprotocols: vec!["ringcast.v1".into(), "chat".into()],
            max_header_bytes: 1024,
            keep_headers: vec!["cookie".into()],
        }
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn req(extra: &str) -> String {
        format!("GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n")
    }

    #[test]
    fn absolute_form_targets_lose_scheme_and_authority() {
        assert_eq!(split_target("/ws?user=1"), ("/ws", Some("user=1")));
        assert_eq!(split_target("http://h:8080/ws?user=1"), ("/ws", Some("user=1")));
        assert_eq!(split_target("HTTPS://h/echo"), ("/echo", None));
        assert_eq!(split_target("ws://h?x=1"), ("/", Some("x=1")));
        assert_eq!(split_target("wss://h"), ("/", None));
        // Another scheme is not an absolute-form WebSocket target: no route matches it.
        assert_eq!(split_target("ftp://h/ws"), ("ftp://h/ws", None));
        let r = req("").replace("GET /echo", "GET http://x/echo");
        let (up, _) = parse_upgrade(r.as_bytes(), &policy()).unwrap().unwrap();
        assert_eq!(up.route, 1);
    }

    #[test]
    fn kept_headers_are_named_in_lower_case_with_their_values() {
        let r = req("Cookie: sid=1\r\nCOOKIE: b=2\r\nUser-Agent: x\r\n");
        let (up, _) = parse_upgrade(r.as_bytes(), &policy()).unwrap().unwrap();
        assert_eq!(
            up.headers,
            vec![
                ("cookie".to_string(), "sid=1".to_string()),
                ("cookie".to_string(), "b=2".to_string())
            ]
        );
    }

    #[test]
    fn a_bearer_token_comes_from_authorization_or_a_protocol_entry() {
        let r = req("Authorization: bearer abc.def.ghi\r\n");
        let (up, _) = parse_upgrade(r.as_bytes(), &policy()).unwrap().unwrap();
        assert_eq!(up.bearer.as_deref(), Some("abc.def.ghi"));
        let r = req("Sec-WebSocket-Protocol: ringcast.token.x.y.z, chat\r\n");
        let (up, _) = parse_upgrade(r.as_bytes(), &policy()).unwrap().unwrap();
        assert_eq!(up.bearer.as_deref(), Some("x.y.z"));
        assert_eq!(up.subprotocol, Some(1), "the token entry is never chosen");
        let r = req("Authorization: Basic dXNlcjpwdw==\r\n");
        let (up, _) = parse_upgrade(r.as_bytes(), &policy()).unwrap().unwrap();
        assert_eq!(up.bearer, None);
        let mut out = Vec::new();
        write_refusal_with(&mut out, HandshakeError::Unauthorized, "token expired");
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"));
        assert!(text.contains("WWW-Authenticate: Bearer\r\n"));
        assert!(text.ends_with("\r\n\r\ntoken expired\n"));
    }

    #[test]
    fn rfc_example_accept_key() {
        assert_eq!(&accept_key(KEY.as_bytes()), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn accepts_and_reports_leftover_bytes() {
        let r = req("Origin: HTTPS://APP.example\r\nSec-WebSocket-Protocol: chat, ringcast.v1\r\n");
        let mut wire = r.clone().into_bytes();
        wire.extend_from_slice(&[0x81, 0x80]);
        let (up, n) = parse_upgrade(&wire, &policy()).unwrap().unwrap();
        assert_eq!(n, r.len());
        assert_eq!(up.route, 1);
        assert_eq!(up.subprotocol, Some(0), "server preference wins");
        let mut out = Vec::new();
        write_accept(&mut out, &up, &policy());
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 "));
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.contains("Sec-WebSocket-Protocol: ringcast.v1\r\n"));
    }

    #[test]
    fn tokens_are_case_insensitive_lists() {
        let r = "GET /ws?user=1 HTTP/1.1\r\nhost: x\r\nupgrade: WebSocket\r\nconnection: keep-alive, UPGRADE\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let (up, _) = parse_upgrade(r.as_bytes(), &policy()).unwrap().unwrap();
        assert_eq!((up.route, up.query.as_deref(), up.subprotocol), (0, Some("user=1"), None));
    }

    #[test]
    fn incomplete_head_needs_more_until_the_cap() {
        let r = req("");
        assert_eq!(parse_upgrade(&r.as_bytes()[..r.len() - 1], &policy()), Ok(None));
        let long = format!("GET /echo HTTP/1.1\r\nX-Pad: {}", "a".repeat(2000));
        assert_eq!(parse_upgrade(long.as_bytes(), &policy()), Err(HandshakeError::HeaderTooLarge));
    }

    #[test]
    fn each_refusal_has_its_status() {
        use HandshakeError::*;
        let ok = req("");
        let cases: Vec<(String, HandshakeError, u16)> = vec![
            ("BLAH\r\n\r\n".into(), Malformed, 400),
            (ok.replace("GET", "POST"), MethodNotAllowed, 405),
            (ok.replace("HTTP/1.1", "HTTP/1.0"), HttpVersion, 505),
            (ok.replace("Host: x\r\n", ""), BadHost, 400),
            (req("Host: y\r\n"), BadHost, 400),
            (ok.replace("Upgrade: websocket", "Upgrade: h2c"), NotWebSocket, 426),
            (ok.replace("Connection: Upgrade", "Connection: close"), BadConnectionHeader, 400),
            (ok.replace("Version: 13", "Version: 8"), UnsupportedVersion, 426),
            (ok.replace(KEY, "c2hvcnQ="), BadKey, 400),
            (req("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"), BadKey, 400),
            (ok.replace("/echo", "/nope"), NotFound, 404),
            (req("Origin: https://evil.example\r\n"), OriginNotAllowed, 403),
            (req("Content-Length: 5\r\n"), UnexpectedBody, 400),
        ];
        for (r, err, code) in cases {
            assert_eq!(parse_upgrade(r.as_bytes(), &policy()), Err(err), "{r}");
            assert_eq!(err.status().0, code);
            let mut out = Vec::new();
            write_refusal(&mut out, err);
            let text = String::from_utf8(out).unwrap();
            assert!(text.starts_with(&format!("HTTP/1.1 {code} ")));
            assert!(text.ends_with(&format!("\r\n\r\n{}\n", err.reason())));
        }
        let mut out = Vec::new();
        write_refusal(&mut out, UnsupportedVersion);
        assert!(String::from_utf8(out).unwrap().contains("Sec-WebSocket-Version: 13\r\n"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_prefixes_never_accept_early(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = parse_upgrade(&data, &policy());
        }
    }
}
