//! The HTTP API backends use: publish, push, send, broadcast, kick, batch, and queries.
//!
//! It runs on its own thread with its own monoio runtime and listener (`--api-listen`).
//! Request heads are decoded by monoio-http's `RequestHeadDecoder` under our own caps (16 KiB
//! head: 431; `--api-max-body`: 413; chunked bodies: 411). Requests become shard messages
//! through the same inboxes the shards use, and a publish answers with a delivery report
//! once every shard involved has done its part (docs/api.md).

pub mod fields;
pub mod metrics;

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_channel::oneshot;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use monoio_codec::{Decoded, Decoder};
use monoio_http::h1::codec::decoder::RequestHeadDecoder;
use serde_json::{json, Value};

use crate::clock;
use crate::proto::CloseReason;
use crate::push::ids::home_of;
use crate::push::msg::ShardMsg;
use crate::push::report::{Report, Totals};
use crate::push::streams::StreamKey;
use crate::server::inbox::Router;
use crate::server::stats::{self, Counters};
use crate::server::Shared;
use fields::{BadRequest, Fields};

const MAX_HEAD: usize = 16 * 1024;
/// Time a client has to send a whole request once it has started, and an idle keep-alive lasts.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a delivery report (a shard would have to be stuck).
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the API needs from the server.
pub struct ApiContext {
    pub router: Arc<Router>,
    pub shared: Arc<Shared>,
    pub counters: Vec<Arc<Counters>>,
    pub api_key: Option<String>,
    pub max_body: usize,
    /// The I/O driver in use, for `ringcast_info`.
    pub driver: &'static str,
    /// Concurrent API connections allowed.
    pub max_connections: usize,
}

/// An API answer: status and JSON body.
pub struct Reply {
    status: u16,
    body: Vec<u8>,
    extra: &'static str,
    content_type: &'static str,
}

impl Reply {
    fn json(status: u16, v: &Value) -> Reply {
        Reply {
            status,
            body: v.to_string().into_bytes(),
            extra: "",
            content_type: "application/json",
        }
    }

    /// Every error answer has one shape: `{"error": …, "field": …}`, `field` null when no
    /// single field is at fault.
    fn error(status: u16, message: &str) -> Reply {
        Reply::json(status, &json!({ "error": message, "field": null }))
    }

    fn bad(e: BadRequest) -> Reply {
        Reply::json(400, &json!({ "error": e.message, "field": e.field }))
    }
}

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

/// Binds the API listener (so a bad address fails start-up with a clear error).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, String> {
    let l = std::net::TcpListener::bind(addr).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            format!("cannot listen on {addr} for the API: the address is already in use")
        } else {
            format!("cannot listen on {addr} for the API: {e}")
        }
    })?;
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(l)
}

/// The running API: stop it before the process exits.
pub struct ApiHandle {
    listener_fd: std::os::fd::RawFd,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl ApiHandle {
    /// Stops accepting and ends the API thread. The listener is shut explicitly: a pending
    /// io_uring accept would otherwise keep the socket listening for a moment after the
    /// process exits, and a restart on the same address would find it in use.
    pub fn stop(self) {
        self.stop.store(true, Relaxed);
        crate::server::sys::shutdown_listener(self.listener_fd);
        let _ = self.thread.join();
    }
}

/// Runs the API on a thread of its own until [`ApiHandle::stop`].
pub fn spawn(
    listener: std::net::TcpListener,
    ctx: ApiContext,
    use_uring: bool,
) -> io::Result<ApiHandle> {
    use std::os::fd::AsRawFd;
    let listener_fd = listener.as_raw_fd();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::Builder::new().name("ringcast-api".into()).spawn(move || {
        let run = async move {
            let listener = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!("API listener: {e}");
                    return;
                }
            };
            let ctx = Rc::new(ctx);
            let open = Rc::new(std::cell::Cell::new(0usize));
            loop {
                match listener.accept().await {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        if open.get() >= ctx.max_connections {
                            let reply = Reply::error(
                                503,
                                "too many API connections (--api-max-connections)",
                            );
                            monoio::spawn(async move {
                                let _ = write_reply(&mut stream, reply, true).await;
                            });
                            continue;
                        }
                        open.set(open.get() + 1);
                        let (ctx, open) = (ctx.clone(), open.clone());
                        monoio::spawn(async move {
                            serve(stream, ctx).await;
                            open.set(open.get() - 1);
                        });
                    }
                    Err(_) if stopping.load(Relaxed) => return,
                    Err(e) => {
                        tracing::warn!("API accept failed: {e}");
                        monoio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        };
        let built = if use_uring {
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .enable_timer()
                .build()
                .map(|mut rt| rt.block_on(run))
        } else {
            monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .map(|mut rt| rt.block_on(run))
        };
        if let Err(e) = built {
            tracing::error!("API runtime: {e}");
        }
    })?;
    Ok(ApiHandle { listener_fd, stop, thread })
}

/// A request head that is not HTTP/1.x.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedHead;

/// Decodes a request head from the start of `buf` with monoio-http's decoder: `Ok(None)` needs
/// more bytes, `Err(MalformedHead)` is malformed. The decoder unwraps internally where it trusts
/// httparse's validation; a panic there must cost one request a 400, not the API thread.
pub fn decode_head(buf: &mut BytesMut) -> Result<Option<http::request::Parts>, MalformedHead> {
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

async fn write_reply(stream: &mut TcpStream, r: Reply, close: bool) -> io::Result<()> {
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
async fn refuse(stream: &mut TcpStream, buf: &mut BytesMut, r: Reply) {
    if write_reply(stream, r, true).await.is_err() {
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
fn body_length(head: &http::request::Parts) -> Result<usize, Reply> {
    let mut lengths = head.headers.get_all(http::header::CONTENT_LENGTH).iter();
    let length = lengths.next();
    if lengths.next().is_some() {
        return Err(Reply::error(400, "more than one Content-Length"));
    }
    if head.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Err(if length.is_some() {
            Reply::error(400, "Content-Length together with Transfer-Encoding")
        } else {
            Reply::error(411, "send the body with Content-Length")
        });
    }
    let Some(v) = length else { return Ok(0) };
    let v = v.as_bytes();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return Err(Reply::error(400, "Content-Length must be decimal digits"));
    }
    // Past usize it is over any body limit anyway.
    Ok(std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).unwrap_or(usize::MAX))
}

/// Whether a path answers without the API key (health probes, for load balancers).
fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

/// One HTTP/1.1 connection: requests in turn, kept alive until the client closes, asks to
/// close, idles out, or sends something we must refuse with a close. Each request must arrive
/// whole within [`REQUEST_TIMEOUT`] of its first byte (408 otherwise), its head within
/// [`MAX_HEAD`] bytes (431); its key is checked as soon as its head is complete, before any of
/// its body is read.
async fn serve(mut stream: TcpStream, ctx: Rc<ApiContext>) {
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
        let late = || Reply::error(408, "the request did not arrive whole within 10 s");
        let head = loop {
            let before = buf.len();
            match decode_head(&mut buf) {
                Ok(Some(_)) if before - buf.len() > MAX_HEAD => {
                    return refuse(&mut stream, &mut buf, head_too_large()).await;
                }
                Ok(Some(h)) => break h,
                Ok(None) if buf.len() > MAX_HEAD => {
                    return refuse(&mut stream, &mut buf, head_too_large()).await;
                }
                Ok(None) => {}
                Err(MalformedHead) => {
                    let r = Reply::error(400, "malformed HTTP request");
                    return refuse(&mut stream, &mut buf, r).await;
                }
            }
            match fill_by(&mut stream, &mut buf, deadline).await {
                Ok(()) => {}
                Err(ReadFail::Late) => return refuse(&mut stream, &mut buf, late()).await,
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
            Err(r) => return refuse(&mut stream, &mut buf, r).await,
        };
        if !is_probe(head.uri.path()) {
            if let Err(r) = authorized(&ctx, &head) {
                return refuse(&mut stream, &mut buf, r).await;
            }
        }
        if len > ctx.max_body {
            let msg = format!("body over the {} byte limit (--api-max-body)", ctx.max_body);
            return refuse(&mut stream, &mut buf, Reply::error(413, &msg)).await;
        }
        while buf.len() < len {
            match fill_by(&mut stream, &mut buf, deadline).await {
                Ok(()) => {}
                Err(ReadFail::Late) => return refuse(&mut stream, &mut buf, late()).await,
                Err(ReadFail::Gone) => return,
            }
        }
        let body = buf.split_to(len).freeze();
        let reply = handle(&ctx, &head, body).await;
        if write_reply(&mut stream, reply, close).await.is_err() || close {
            return;
        }
    }
}

fn head_too_large() -> Reply {
    Reply::error(431, "request head over 16 KiB")
}

fn authorized(ctx: &ApiContext, head: &http::request::Parts) -> Result<(), Reply> {
    let Some(key) = ctx.api_key.as_deref() else { return Ok(()) };
    let given = head
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => {
            let mut r = Reply::error(401, "missing \"Authorization: Bearer <key>\"");
            r.extra = "WWW-Authenticate: Bearer\r\n";
            Err(r)
        }
        // Compare without an early exit, so timing does not tell how much of a key is right.
        Some(g)
            if g.len() == key.len()
                && g.bytes().zip(key.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0 =>
        {
            Ok(())
        }
        Some(_) => Err(Reply::error(403, "wrong API key")),
    }
}

async fn handle(ctx: &ApiContext, head: &http::request::Parts, body: Bytes) -> Reply {
    // Health probes answer without the key: load balancers and supervisors use them.
    match head.uri.path() {
        "/healthz" => return Reply::json(200, &json!({"status": "alive"})),
        "/readyz" => {
            return if ctx.shared.draining.load(Relaxed) {
                Reply::json(503, &json!({"ready": false, "reason": "draining"}))
            } else {
                Reply::json(200, &json!({"ready": true}))
            };
        }
        _ => {}
    }
    // The key was checked at the head (`serve`).
    let path = head.uri.path();
    if path == "/metrics" {
        let text = metrics::render(&ctx.counters, &ctx.router, &ctx.shared, ctx.driver);
        return Reply {
            status: 200,
            body: text.into_bytes(),
            extra: "",
            content_type: "text/plain; version=0.0.4",
        };
    }
    let method = &head.method;
    let post = |allowed: &'static str| -> Result<(), Reply> {
        if method == http::Method::POST {
            Ok(())
        } else {
            let mut r = Reply::error(405, "use POST");
            r.extra = allowed;
            Err(r)
        }
    };
    let get = || -> Result<(), Reply> {
        if method == http::Method::GET {
            Ok(())
        } else {
            let mut r = Reply::error(405, "use GET");
            r.extra = "Allow: GET\r\n";
            Err(r)
        }
    };
    const ALLOW_POST: &str = "Allow: POST\r\n";
    let op = match path {
        "/v1/publish" | "/v1/push" | "/v1/send" | "/v1/broadcast" | "/v1/kick" => {
            if let Err(r) = post(ALLOW_POST) {
                return r;
            }
            &path[4..]
        }
        "/v1/batch" => {
            if let Err(r) = post(ALLOW_POST) {
                return r;
            }
            return batch(ctx, &body).await;
        }
        "/v1/stats" => {
            if let Err(r) = get() {
                return r;
            }
            return stats_reply(ctx);
        }
        p if p.starts_with("/v1/users/") => {
            if let Err(r) = get() {
                return r;
            }
            return query_user(ctx, &p["/v1/users/".len()..]).await;
        }
        p if p.starts_with("/v1/channels/") => {
            if let Err(r) = get() {
                return r;
            }
            return query_channel(ctx, &p["/v1/channels/".len()..]).await;
        }
        _ => return Reply::error(404, "no such endpoint"),
    };
    let dispatched =
        Fields::parse_any(&body).map_err(Reply::bad).and_then(|f| dispatch(ctx, op, f));
    match dispatched {
        Ok(pending) => pending.finish().await,
        Err(r) => r,
    }
}

/// An operation dispatched to the shards, waiting for its report.
enum Pending {
    Report { report: Arc<Report>, done: oneshot::Receiver<()>, kick: bool },
    Ready(Reply),
}

impl Pending {
    async fn finish(self) -> Reply {
        match self {
            Pending::Ready(r) => r,
            Pending::Report { report, done, kick } => {
                if monoio::time::timeout(REPORT_TIMEOUT, done).await.is_err() {
                    return Reply::error(504, "the delivery report did not complete in 10 s");
                }
                let t = report.totals();
                if kick {
                    Reply::json(
                        200,
                        &json!({ "kicked": t.recipients, "offline": t.offline, "discarded": t.dropped }),
                    )
                } else {
                    Reply::json(200, &report_json(t))
                }
            }
        }
    }
}

fn report_json(t: Totals) -> Value {
    json!({ "recipients": t.recipients, "queued": t.queued, "dropped": t.dropped, "offline": t.offline })
}

fn busy(shard: usize) -> Reply {
    Reply::error(503, &format!("shard {shard} inbox is full; retry later"))
}

/// Checks an operation's fields and hands it to the shards.
fn dispatch(ctx: &ApiContext, op: &str, f: Fields) -> Result<Pending, Reply> {
    let n = ctx.router.shards();
    let (report, part, done) = Report::new(clock::now());
    let pending = |kick| Pending::Report { report: report.clone(), done, kick };
    match op {
        "publish" => {
            f.only(&["channel", "data", "data_base64", "priority"]).map_err(Reply::bad)?;
            let (channel, payload, priority) = (
                f.name("channel").map_err(Reply::bad)?,
                f.payload().map_err(Reply::bad)?,
                f.priority().map_err(Reply::bad)?,
            );
            let home = home_of(&channel, n);
            ctx.router
                .send(home, ShardMsg::Publish { channel, payload, priority, report: part })
                .map_err(|_| busy(home))?;
            Ok(pending(false))
        }
        "push" => {
            f.only(&["user", "device", "data", "data_base64", "policy", "priority"])
                .map_err(Reply::bad)?;
            let user = f.name("user").map_err(Reply::bad)?;
            let device = f.opt_name("device").map_err(Reply::bad)?;
            let (payload, policy, priority) = (
                f.payload().map_err(Reply::bad)?,
                f.policy().map_err(Reply::bad)?,
                f.priority().map_err(Reply::bad)?,
            );
            let home = home_of(&user, n);
            let m = ShardMsg::PushUser { user, device, policy, payload, priority, report: part };
            ctx.router.send(home, m).map_err(|_| busy(home))?;
            Ok(pending(false))
        }
        "send" => {
            f.only(&["conn", "data", "data_base64", "priority"]).map_err(Reply::bad)?;
            let conn = f
                .conn("conn")
                .map_err(Reply::bad)?
                .ok_or_else(|| Reply::bad(BadRequest::new("conn", "\"conn\" is required")))?;
            let (payload, priority) =
                (f.payload().map_err(Reply::bad)?, f.priority().map_err(Reply::bad)?);
            let shard = usize::from(conn.shard);
            if shard >= n {
                part.add(Totals { offline: 1, ..Default::default() });
                drop(part);
                return Ok(pending(false));
            }
            ctx.router
                .send(shard, ShardMsg::SendConn { conn, payload, priority, report: part })
                .map_err(|_| busy(shard))?;
            Ok(pending(false))
        }
        "broadcast" => {
            f.only(&["data", "data_base64", "priority"]).map_err(Reply::bad)?;
            let (payload, priority) =
                (f.payload().map_err(Reply::bad)?, f.priority().map_err(Reply::bad)?);
            let home = home_of(StreamKey::Broadcast.home_name(), n);
            ctx.router
                .send(home, ShardMsg::Broadcast { payload, priority, report: part })
                .map_err(|_| busy(home))?;
            Ok(pending(false))
        }
        "kick" => {
            f.only(&["user", "conn", "code", "reason"]).map_err(Reply::bad)?;
            let reason = CloseReason::kicked(
                f.close_code().map_err(Reply::bad)?,
                f.reason().map_err(Reply::bad)?,
            );
            match (f.opt_name("user").map_err(Reply::bad)?, f.conn("conn").map_err(Reply::bad)?) {
                (Some(_), Some(_)) | (None, None) => Err(Reply::bad(BadRequest::new(
                    "user",
                    "give exactly one of \"user\" and \"conn\"",
                ))),
                (Some(user), None) => {
                    let home = home_of(&user, n);
                    ctx.router
                        .send(home, ShardMsg::KickUser { user, reason, report: part })
                        .map_err(|_| busy(home))?;
                    Ok(pending(true))
                }
                (None, Some(conn)) => {
                    let shard = usize::from(conn.shard);
                    if shard >= n {
                        part.add(Totals { offline: 1, ..Default::default() });
                        drop(part);
                        return Ok(pending(true));
                    }
                    let m = ShardMsg::Kick { conns: vec![conn], reason, report: Some(part) };
                    ctx.router.send(shard, m).map_err(|_| busy(shard))?;
                    Ok(pending(true))
                }
            }
        }
        _ => Err(Reply::error(404, "no such endpoint")),
    }
}

/// `POST /v1/batch`: one operation per line (`{"op":"publish", …}`), one result per line, in
/// order. Every line is dispatched before any report is awaited.
async fn batch(ctx: &ApiContext, body: &[u8]) -> Reply {
    let mut pending = Vec::new();
    for line in body.split(|&b| b == b'\n') {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        pending.push(batch_line(ctx, line));
    }
    let mut out = Vec::new();
    for p in pending {
        let r = p.finish().await;
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let line = if r.status == 200 {
            v
        } else {
            json!({ "status": r.status, "error": v["error"], "field": v["field"] })
        };
        out.extend_from_slice(line.to_string().as_bytes());
        out.push(b'\n');
    }
    Reply { status: 200, body: out, extra: "", content_type: "application/x-ndjson" }
}

/// One batch line: a JSON object whose `op` names the operation. Its values stay raw, as in a
/// single request, so the same rules (and the same depth limit on `data`) hold.
fn batch_line(ctx: &ApiContext, line: &[u8]) -> Pending {
    const OPS: &str = "\"op\" must be \"publish\", \"push\", \"send\", \"broadcast\" or \"kick\"";
    let mut f = match Fields::parse_any(line) {
        Ok(f) => f,
        Err(e) => {
            return Pending::Ready(Reply::bad(BadRequest::body(format!(
                "line is not a JSON object: {}",
                e.message.trim_start_matches("body must be a JSON object: ")
            ))))
        }
    };
    let op = match f.take_str("op") {
        Ok(Some(s)) if matches!(s.as_str(), "publish" | "push" | "send" | "broadcast" | "kick") => {
            s
        }
        _ => return Pending::Ready(Reply::bad(BadRequest::new("op", OPS))),
    };
    match dispatch(ctx, &op, f) {
        Ok(p) => p,
        Err(r) => Pending::Ready(r),
    }
}

fn name_in_path(s: &str) -> Option<Arc<str>> {
    crate::push::ids::valid_name(s).then(|| Arc::from(s))
}

async fn query_user(ctx: &ApiContext, user: &str) -> Reply {
    let Some(user) = name_in_path(user) else { return Reply::error(400, "invalid user name") };
    let home = home_of(&user, ctx.router.shards());
    let (tx, rx) = oneshot::channel();
    if ctx.router.send(home, ShardMsg::QueryUser { user: user.clone(), reply: tx }).is_err() {
        return busy(home);
    }
    let Ok(Ok(conns)) = monoio::time::timeout(REPORT_TIMEOUT, rx).await else {
        return Reply::error(504, "no answer from the user's shard");
    };
    let list: Vec<Value> = conns
        .iter()
        .map(|c| {
            json!({
                "conn": c.conn.to_string(),
                "shard": c.conn.shard,
                "device": c.device.as_deref(),
                "connected_at_ms": c.connected_ms,
                "active_at_ms": c.active_ms,
            })
        })
        .collect();
    let devices: std::collections::BTreeSet<&str> =
        conns.iter().filter_map(|c| c.device.as_deref()).collect();
    let shards: std::collections::BTreeSet<u16> = conns.iter().map(|c| c.conn.shard).collect();
    Reply::json(
        200,
        &json!({ "user": &*user, "connections": list, "devices": devices, "shards": shards }),
    )
}

async fn query_channel(ctx: &ApiContext, channel: &str) -> Reply {
    let Some(channel) = name_in_path(channel) else {
        return Reply::error(400, "invalid channel name");
    };
    let home = home_of(&channel, ctx.router.shards());
    let (tx, rx) = oneshot::channel();
    if ctx
        .router
        .send(home, ShardMsg::QueryChannel { channel: channel.clone(), reply: tx })
        .is_err()
    {
        return busy(home);
    }
    let Ok(Ok(n)) = monoio::time::timeout(REPORT_TIMEOUT, rx).await else {
        return Reply::error(504, "no answer from the channel's shard");
    };
    Reply::json(200, &json!({ "channel": &*channel, "subscribers": n }))
}

fn stats_reply(ctx: &ApiContext) -> Reply {
    let totals: serde_json::Map<String, Value> =
        stats::sum(&ctx.counters).into_iter().map(|(k, v)| (k, json!(v))).collect();
    let shards: Vec<Value> = ctx
        .counters
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({
                "shard": i,
                "open_connections": c.open_connections.get(),
                "subscriptions": c.subscriptions.get(),
                "inbox_depth": ctx.router.depth(i),
            })
        })
        .collect();
    Reply::json(
        200,
        &json!({
            "epoch": ctx.shared.epoch,
            "connections": ctx.shared.total.load(Relaxed),
            "draining": ctx.shared.draining.load(Relaxed),
            "shards": shards,
            "totals": totals,
        }),
    )
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
