//! The HTTP/1.1 edge: reading requests whole within their deadline and caps, checking the key
//! at the head, and writing answers. Requests are decoded by monoio-http's
//! `RequestHeadDecoder` under our own caps (16 KiB head: 431; `--api-max-body`: 413; chunked
//! bodies: 411; one strict Content-Length).

use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio_codec::{Decoded, Decoder};
use monoio_http::h1::codec::decoder::RequestHeadDecoder;

use crate::clock;

use super::error::{ApiError, Reply};
use super::keys::Caller;
use super::{router, ApiContext};

const MAX_HEAD: usize = 16 * 1024;
/// Time a client has to send a whole request once it has started, and an idle keep-alive lasts.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

fn phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Internal Server Error",
    }
}

/// A request head that is not HTTP/1.x.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MalformedHead;

/// Decodes a request head from the start of `buf` with monoio-http's decoder: `Ok(None)` needs
/// more bytes, `Err(MalformedHead)` is malformed. The decoder unwraps internally where it trusts
/// httparse's validation; a panic there must cost one request a 400, not the API thread.
pub(crate) fn decode_head(
    buf: &mut BytesMut,
) -> Result<Option<http::request::Parts>, MalformedHead> {
    let r =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| RequestHeadDecoder.decode(buf)));
    match r {
        Ok(Ok(Decoded::Some(h))) => Ok(Some(h)),
        Ok(Ok(_)) => Ok(None),
        Ok(Err(_)) | Err(_) => Err(MalformedHead),
    }
}

/// Reads more bytes into `buf` (appending), waiting at most `limit`; `Ok(false)` at EOF.
async fn fill(stream: &mut TcpStream, buf: &mut BytesMut, limit: Duration) -> io::Result<bool> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8192);
    }
    let owned = std::mem::take(buf);
    let (len, cap) = (owned.len(), owned.capacity());
    let (res, slice) = monoio::time::timeout(limit, stream.read(owned.slice_mut(len..cap)))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request timed out"))?;
    *buf = slice.into_inner();
    Ok(res? > 0)
}

/// Why a request could not be read whole.
enum ReadFail {
    /// The peer closed or the socket failed: nobody to answer.
    Gone,
    /// The request did not arrive whole within [`REQUEST_TIMEOUT`] of its first byte.
    Late,
}

/// Reads more of the current request, within its deadline.
async fn fill_by(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    deadline: Instant,
) -> Result<(), ReadFail> {
    let left = deadline.saturating_duration_since(clock::now());
    if left.is_zero() {
        return Err(ReadFail::Late);
    }
    match fill(stream, buf, left).await {
        Ok(true) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(ReadFail::Late),
        _ => Err(ReadFail::Gone),
    }
}

pub(super) async fn write_reply(stream: &mut TcpStream, r: Reply, close: bool) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}{}\r\n",
        r.status,
        phrase(r.status),
        r.content_type,
        r.body.len(),
        r.extra,
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    out.extend_from_slice(&r.body);
    let (res, _) = stream.write_all(out).await;
    res.map(|_| ())
}

/// Longest a refused request's unread bytes are drained before the socket closes.
const LINGER: Duration = Duration::from_secs(1);
/// Most bytes drained that way.
const LINGER_BYTES: usize = 256 * 1024;

/// Answers and ends the connection. The write side is shut first and what the client is
/// still sending is read and discarded for a moment (bounded in time and bytes, into the
/// buffer already held), so closing over unread bytes does not reset the connection before the
/// client has read the answer.
async fn refuse(stream: &mut TcpStream, buf: &mut BytesMut, e: ApiError) {
    if write_reply(stream, e.reply(), true).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let deadline = clock::now() + LINGER;
    let mut drained = 0;
    while drained < LINGER_BYTES {
        drained += buf.len();
        buf.clear();
        if fill_by(stream, buf, deadline).await.is_err() {
            return;
        }
    }
}

/// The body length a head declares: strictly `1*DIGIT` in a single `Content-Length`
/// (RFC 9112 §6.3, §8.6), and never together with `Transfer-Encoding`.
fn body_length(head: &http::request::Parts) -> Result<usize, ApiError> {
    let mut lengths = head.headers.get_all(http::header::CONTENT_LENGTH).iter();
    let length = lengths.next();
    if lengths.next().is_some() {
        return Err(ApiError::Malformed("more than one Content-Length"));
    }
    if head.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Err(if length.is_some() {
            ApiError::Malformed("Content-Length together with Transfer-Encoding")
        } else {
            ApiError::LengthRequired
        });
    }
    let Some(v) = length else { return Ok(0) };
    let v = v.as_bytes();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return Err(ApiError::Malformed("Content-Length must be decimal digits"));
    }
    // Past usize it is over any body limit anyway.
    Ok(std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).unwrap_or(usize::MAX))
}

/// One HTTP/1.1 connection: requests in turn, kept alive until the client closes, asks to
/// close, idles out, or sends something we must refuse with a close. Each request must arrive
/// whole within [`REQUEST_TIMEOUT`] of its first byte (408 otherwise), its head within
/// [`MAX_HEAD`] bytes (431); its key is checked as soon as its head is complete, before any of
/// its body is read.
pub(crate) async fn serve(mut stream: TcpStream, ctx: Rc<ApiContext>) {
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        // An idle keep-alive connection waits for the first byte of its next request.
        if buf.is_empty() {
            match fill(&mut stream, &mut buf, IDLE_TIMEOUT).await {
                Ok(true) => {}
                _ => return,
            }
        }
        let deadline = clock::now() + REQUEST_TIMEOUT;
        let head = loop {
            let before = buf.len();
            match decode_head(&mut buf) {
                Ok(Some(_)) if before - buf.len() > MAX_HEAD => {
                    return refuse(&mut stream, &mut buf, ApiError::HeadTooLarge).await;
                }
                Ok(Some(h)) => break h,
                Ok(None) if buf.len() > MAX_HEAD => {
                    return refuse(&mut stream, &mut buf, ApiError::HeadTooLarge).await;
                }
                Ok(None) => {}
                Err(MalformedHead) => {
                    let e = ApiError::Malformed("malformed HTTP request");
                    return refuse(&mut stream, &mut buf, e).await;
                }
            }
            match fill_by(&mut stream, &mut buf, deadline).await {
                Ok(()) => {}
                Err(ReadFail::Late) => return refuse(&mut stream, &mut buf, ApiError::Late).await,
                Err(ReadFail::Gone) => return,
            }
        };
        let close = head.version == http::Version::HTTP_10
            || head
                .headers
                .get(http::header::CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let len = match body_length(&head) {
            Ok(n) => n,
            Err(e) => return refuse(&mut stream, &mut buf, e).await,
        };
        let caller = if ctx.metrics_only || router::is_probe(head.uri.path()) {
            Caller::OPEN
        } else {
            let header = head.headers.get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
            match ctx.keys.check(header, crate::clock::unix_ms()) {
                Ok(c) => c,
                Err(r) => return refuse(&mut stream, &mut buf, r).await,
            }
        };
        if len > ctx.max_body {
            let e = ApiError::BodyTooLarge { limit: ctx.max_body };
            return refuse(&mut stream, &mut buf, e).await;
        }
        while buf.len() < len {
            match fill_by(&mut stream, &mut buf, deadline).await {
                Ok(()) => {}
                Err(ReadFail::Late) => return refuse(&mut stream, &mut buf, ApiError::Late).await,
                Err(ReadFail::Gone) => return,
            }
        }
        let body = buf.split_to(len).freeze();
        let reply = router::handle(&ctx, &head, body, caller).await;
        if write_reply(&mut stream, reply, close).await.is_err() || close {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn heads_decode_and_need_more() {
        let mut b = BytesMut::from(
            &b"POST /v1/publish HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}"[..],
        );
        let h = decode_head(&mut b).unwrap().unwrap();
        assert_eq!((h.method.as_str(), h.uri.path()), ("POST", "/v1/publish"));
        assert_eq!(&b[..], b"{}", "the body stays in the buffer");
        let mut partial = BytesMut::from(&b"GET / HTTP/1.1\r\nHost"[..]);
        assert!(matches!(decode_head(&mut partial), Ok(None)));
    }

    proptest! {
        /// Whatever a client sends as a head, decoding answers (a head, more, or malformed)
        /// and never takes the thread down.
        #[test]
        fn arbitrary_heads_never_panic(head in proptest::collection::vec(any::<u8>(), 0..300), start in 0usize..4) {
            let starts: [&[u8]; 4] = [b"GET /", b"POST /v1/x HTTP/1.1\r\n", b"", b"\xff \x00 HTTP/9\r\n"];
            let mut bytes = starts[start].to_vec();
            bytes.extend_from_slice(&head);
            bytes.extend_from_slice(b"\r\n\r\n");
            let _ = decode_head(&mut BytesMut::from(&bytes[..]));
        }
    }
}
