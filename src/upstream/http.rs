//! The HTTP/1.1 client codec for backend calls, sans-IO: a POST request's bytes, and a
//! response parser fed whatever the socket gave (any split), with caps on the head and the
//! body. Content-Length and chunked bodies; a body delimited by the connection's end only when
//! the response says neither (then the connection is not reused). The I/O is `client`.

/// Why a response could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HttpError {
    /// The head is not HTTP/1.x (httparse's reason).
    BadHead(&'static str),
    /// The head is longer than the cap.
    HeadTooLarge,
    /// The body is longer than the cap.
    BodyTooLarge,
    /// A bad Content-Length or chunk size, or both a length and chunked.
    BadLength,
    /// The connection ended before the response did.
    Truncated,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::BadHead(why) => write!(f, "bad response head: {why}"),
            HttpError::HeadTooLarge => f.write_str("response head over its cap"),
            HttpError::BodyTooLarge => f.write_str("response body over its cap"),
            HttpError::BadLength => f.write_str("bad response length or chunk framing"),
            HttpError::Truncated => f.write_str("connection ended inside the response"),
        }
    }
}

/// A whole response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
    /// Whether the connection may carry the next request.
    pub(crate) keep_alive: bool,
}

/// The bytes of a POST with a JSON body: `Host`, `Content-Type`, `Content-Length`, then
/// `headers` (names and values already checked to be header-safe), then the body.
pub(crate) fn encode_request(
    out: &mut Vec<u8>,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    out.reserve(160 + body.len());
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    Length(usize),
    Chunked,
    UntilClose,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line.
    Size,
    /// Reading this many bytes of chunk data, then its CRLF.
    Data(usize),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailer,
}

/// Reads one response from the bytes it is given. Feed [`ResponseParser::feed`] everything
/// read, in order; it answers once the response is whole. Bytes past the response (a server
/// that pipelined more) are left unread and make the connection not reusable.
#[derive(Debug)]
pub(crate) struct ResponseParser {
    max_head: usize,
    max_body: usize,
    buf: Vec<u8>,
    head: Option<(u16, Body, bool)>,
    /// Where in `buf` unparsed bytes begin (after the head, the body's framing).
    at: usize,
    body: Vec<u8>,
    chunk: Chunk,
}

impl ResponseParser {
    pub(crate) fn new(max_head: usize, max_body: usize) -> ResponseParser {
        ResponseParser {
            max_head,
            max_body,
            buf: Vec::new(),
            head: None,
            at: 0,
            body: Vec::new(),
            chunk: Chunk::Size,
        }
    }

    /// Takes the next bytes read; the response once it is whole.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<Option<Response>, HttpError> {
        self.buf.extend_from_slice(bytes);
        loop {
            if self.head.is_none() {
                match self.parse_head()? {
                    true => continue,
                    false => return Ok(None),
                }
            }
            return self.parse_body();
        }
    }

    /// The connection ended: the response if its body runs to the end, else an error.
    pub(crate) fn eof(&mut self) -> Result<Response, HttpError> {
        match self.head {
            Some((status, Body::UntilClose, _)) => {
                self.take_until_close()?;
                Ok(Response { status, body: std::mem::take(&mut self.body), keep_alive: false })
            }
            _ => Err(HttpError::Truncated),
        }
    }

    /// Parses the head if it is all there; skips 1xx interim responses. True when parsed.
    fn parse_head(&mut self) -> Result<bool, HttpError> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        let len = match r.parse(&self.buf[self.at..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if self.buf.len() - self.at > self.max_head {
                    return Err(HttpError::HeadTooLarge);
                }
                return Ok(false);
            }
            Err(e) => return Err(HttpError::BadHead(error_str(e))),
        };
        if len > self.max_head {
            return Err(HttpError::HeadTooLarge);
        }
        let status = r.code.unwrap_or(0);
        let http10 = r.version == Some(0);
        let (mut length, mut chunked, mut close, mut keep) = (None, false, false, false);
        for h in r.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(h.value).map_err(|_| HttpError::BadLength)?.trim();
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(HttpError::BadLength);
                }
                let n: usize = v.parse().map_err(|_| HttpError::BadLength)?;
                if length.is_some_and(|l| l != n) {
                    return Err(HttpError::BadLength);
                }
                length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                if v.split(',').map(str::trim).next_back() == Some("chunked") {
                    chunked = true;
                } else {
                    return Err(HttpError::BadLength); // only chunked is understood
                }
            } else if h.name.eq_ignore_ascii_case("connection") {
                let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                close |= v.split(',').any(|t| t.trim() == "close");
                keep |= v.split(',').any(|t| t.trim() == "keep-alive");
            }
        }
        if (100..200).contains(&status) {
            // An interim response (100 Continue): the real one follows.
            self.at += len;
            return Ok(true);
        }
        let body = match (chunked, length) {
            (true, Some(_)) => return Err(HttpError::BadLength),
            _ if status == 204 || status == 304 => Body::Length(0),
            (true, None) => Body::Chunked,
            (false, Some(n)) => Body::Length(n),
            (false, None) => Body::UntilClose,
        };
        if let Body::Length(n) = body {
            if n > self.max_body {
                return Err(HttpError::BodyTooLarge);
            }
        }
        let keep_alive = !close && (!http10 || keep) && body != Body::UntilClose;
        self.head = Some((status, body, keep_alive));
        self.at += len;
        Ok(true)
    }

    fn parse_body(&mut self) -> Result<Option<Response>, HttpError> {
        let Some((status, body, keep_alive)) = self.head else { return Ok(None) };
        let done = match body {
            Body::Length(n) => {
                let have = self.buf.len() - self.at;
                if have < n {
                    return Ok(None);
                }
                self.body.extend_from_slice(&self.buf[self.at..self.at + n]);
                self.at += n;
                true
            }
            Body::Chunked => self.parse_chunks()?,
            Body::UntilClose => {
                self.take_until_close()?;
                false
            }
        };
        if !done {
            return Ok(None);
        }
        // Bytes after the response: a server that sent more than asked. Not reused.
        let keep_alive = keep_alive && self.at == self.buf.len();
        Ok(Some(Response { status, body: std::mem::take(&mut self.body), keep_alive }))
    }

    fn take_until_close(&mut self) -> Result<(), HttpError> {
        let rest = &self.buf[self.at..];
        if self.body.len() + rest.len() > self.max_body {
            return Err(HttpError::BodyTooLarge);
        }
        self.body.extend_from_slice(rest);
        self.at = self.buf.len();
        Ok(())
    }

    /// Advances through chunks; true at the end of the trailer.
    fn parse_chunks(&mut self) -> Result<bool, HttpError> {
        loop {
            match self.chunk {
                Chunk::Size => {
                    let Some(line) = self.line()? else { return Ok(false) };
                    let size = line.split(|&b| b == b';').next().unwrap_or(&[]);
                    let size = std::str::from_utf8(size).map_err(|_| HttpError::BadLength)?.trim();
                    if size.is_empty() || size.len() > 15 {
                        return Err(HttpError::BadLength);
                    }
                    let n = usize::from_str_radix(size, 16).map_err(|_| HttpError::BadLength)?;
                    if self.body.len().saturating_add(n) > self.max_body {
                        return Err(HttpError::BodyTooLarge);
                    }
                    self.chunk = if n == 0 { Chunk::Trailer } else { Chunk::Data(n) };
                }
                Chunk::Data(n) => {
                    let have = self.buf.len() - self.at;
                    let take = have.min(n);
                    self.body.extend_from_slice(&self.buf[self.at..self.at + take]);
                    self.at += take;
                    if take < n {
                        self.chunk = Chunk::Data(n - take);
                        return Ok(false);
                    }
                    self.chunk = Chunk::DataEnd;
                }
                Chunk::DataEnd => {
                    let rest = &self.buf[self.at..];
                    if rest.len() < 2 {
                        return Ok(false);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(HttpError::BadLength);
                    }
                    self.at += 2;
                    self.chunk = Chunk::Size;
                }
                Chunk::Trailer => {
                    let Some(line) = self.line()? else { return Ok(false) };
                    if line.is_empty() {
                        return Ok(true);
                    }
                }
            }
        }
    }

    /// The next CRLF-ended line (without it), if whole; lines are capped by the head cap.
    fn line(&mut self) -> Result<Option<Vec<u8>>, HttpError> {
        let rest = &self.buf[self.at..];
        match rest.windows(2).position(|w| w == b"\r\n") {
            Some(i) => {
                let line = rest[..i].to_vec();
                self.at += i + 2;
                Ok(Some(line))
            }
            None if rest.len() > self.max_head => Err(HttpError::HeadTooLarge),
            None => Ok(None),
        }
    }
}

fn error_str(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid new line",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "more than 32 headers",
        httparse::Error::Version => "not HTTP/1.x",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(bytes: &[u8]) -> Result<Option<Response>, HttpError> {
        ResponseParser::new(8192, 1 << 20).feed(bytes)
    }

    /// The same bytes fed one at a time give the same answer.
    fn bytewise(bytes: &[u8]) -> Result<Option<Response>, HttpError> {
        let mut p = ResponseParser::new(8192, 1 << 20);
        for (i, b) in bytes.iter().enumerate() {
            if let Some(r) = p.feed(std::slice::from_ref(b))? {
                assert_eq!(i, bytes.len() - 1, "answered before the end");
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    #[test]
    fn a_request_is_a_post_with_its_length() {
        let mut out = Vec::new();
        encode_request(
            &mut out,
            "127.0.0.1:9000",
            "/rc",
            &[("X-Ringcast-Signature", "sha256=ab")],
            b"{}",
        );
        assert_eq!(
            out,
            b"POST /rc HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nContent-Type: application/json\r\nContent-Length: 2\r\nX-Ringcast-Signature: sha256=ab\r\n\r\n{}".to_vec()
        );
    }

    #[test]
    fn content_length_bodies_at_any_split() {
        let bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"results\"}";
        let want = Response { status: 200, body: b"{\"results\"}".to_vec(), keep_alive: true };
        assert_eq!(whole(bytes), Ok(Some(want.clone())));
        assert_eq!(bytewise(bytes), Ok(Some(want)));
        assert_eq!(whole(&bytes[..bytes.len() - 1]), Ok(None));
    }

    #[test]
    fn chunked_bodies_with_extensions_and_trailers() {
        let bytes = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=1\r\n{\"re\r\nA\r\nsults\":[]}\r\n0\r\nX-T: 1\r\n\r\n";
        let want = Response { status: 200, body: b"{\"results\":[]}".to_vec(), keep_alive: true };
        assert_eq!(whole(bytes), Ok(Some(want.clone())));
        assert_eq!(bytewise(bytes), Ok(Some(want)));
        assert_eq!(
            whole(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            Err(HttpError::BadLength)
        );
        assert_eq!(
            whole(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc"),
            Err(HttpError::BadLength)
        );
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        let r = whole(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!r.keep_alive);
        let r = whole(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap().unwrap();
        assert!(!r.keep_alive);
        let r = whole(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(r.keep_alive);
        // More than the response: not reused.
        let r = whole(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1").unwrap().unwrap();
        assert!(!r.keep_alive);
    }

    #[test]
    fn a_body_to_the_end_of_the_connection() {
        let mut p = ResponseParser::new(8192, 1 << 20);
        assert_eq!(p.feed(b"HTTP/1.1 500 Oops\r\n\r\npart"), Ok(None));
        assert_eq!(p.feed(b" two"), Ok(None));
        assert_eq!(
            p.eof(),
            Ok(Response { status: 500, body: b"part two".to_vec(), keep_alive: false })
        );
        let mut p = ResponseParser::new(8192, 1 << 20);
        assert_eq!(p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"), Ok(None));
        assert_eq!(p.eof(), Err(HttpError::Truncated));
    }

    #[test]
    fn interim_responses_are_skipped_and_no_content_has_no_body() {
        let r = whole(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((r.status, r.body.len(), r.keep_alive), (204, 0, true));
    }

    #[test]
    fn caps_and_bad_framing_are_errors() {
        let mut p = ResponseParser::new(64, 8);
        assert!(matches!(p.feed(&[b'a'; 65]), Err(HttpError::BadHead(_))));
        let mut p = ResponseParser::new(64, 8);
        assert_eq!(p.feed(b"HTTP/1.1 200 OK\r\nX: "), Ok(None));
        assert_eq!(p.feed(&[b'x'; 64]), Err(HttpError::HeadTooLarge));
        let mut p = ResponseParser::new(64, 8);
        assert_eq!(
            p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"),
            Err(HttpError::BodyTooLarge)
        );
        let mut p = ResponseParser::new(64, 8);
        assert_eq!(
            p.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n4\r\n"),
            Err(HttpError::BodyTooLarge)
        );
        assert_eq!(
            whole(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(HttpError::BadLength)
        );
        assert_eq!(
            whole(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
            Err(HttpError::BadLength)
        );
        assert_eq!(
            whole(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HttpError::BadLength)
        );
        assert_eq!(
            whole(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Err(HttpError::BadLength)
        );
        assert!(matches!(whole(b"SSH-2.0-OpenSSH\r\n\r\n"), Err(HttpError::BadHead(_))));
    }
}
