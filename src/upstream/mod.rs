//! Backends: what clients send (`rpc`, `send`, `publish`, `subscribe` where a backend decides)
//! goes to the `[[upstreams]]` that take it, batched per shard. A pure state machine with time
//! as input, like the session: the shard hands it events and the outcomes of calls; it answers
//! with requests to make and with what became of each event. The I/O is `client`.
//!
//! Per shard and backend: a bounded queue of events, at most `max_in_flight` requests in
//! flight, and a [`breaker::Breaker`]. An event that arrives while every request slot is busy
//! waits and leaves with the others in the next request (up to `batch_max` events or
//! `batch_bytes`), so under load thousands of events make tens of requests, and an idle
//! backend gets each event at once. Per connection, one event is in flight at a time (its
//! order is kept) and at most `client_queue` wait behind it. Connections that have sent
//! something have an entry in a side table (their rate buckets); others cost nothing.

pub(crate) mod breaker;
pub(crate) mod client;
pub(crate) mod http;
pub mod stats;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::{EventRule, UpstreamRule};
use crate::proto::client::glob;
use crate::proto::reply::{Code, Failure};
use crate::push::call::Backends;
pub(crate) use crate::push::call::{Call, Event, Outcome};
use crate::push::ids::ConnId;

use breaker::{Breaker, Permit, Transition};
use stats::{BackendStats, ErrorKind};

/// An event's outcome.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Done {
    pub(crate) event: Event,
    pub(crate) outcome: Outcome,
}

/// A request to make: POST `body` to backend `backend`; answer with [`Upstreams::complete`]
/// and the same `id`.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) backend: usize,
    pub(crate) id: u64,
    pub(crate) body: Vec<u8>,
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CallResult {
    /// A whole response.
    Response { status: u16, body: Vec<u8> },
    /// No whole response within the timeout: the backend may have acted on it.
    Timeout,
    /// The connection failed (connect refused, reset, a response that does not parse).
    Transport(String),
}

/// Per-connection limits on what clients send.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ClientLimits {
    pub(crate) messages_per_s: f64,
    pub(crate) message_burst: f64,
    pub(crate) bytes_per_s: f64,
    pub(crate) byte_burst: f64,
    /// Events of one connection that may wait behind its one in flight.
    pub(crate) queue: usize,
}

/// A token bucket: `tokens` at `at_ms`, refilled at a rate up to a burst.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    fn full(burst: f64, now_ms: u64) -> Bucket {
        Bucket { tokens: burst, at_ms: now_ms }
    }

    fn refill(&mut self, rate: f64, burst: f64, now_ms: u64) {
        let dt = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// Milliseconds until `n` tokens are there (0: now).
    fn wait_ms(&self, n: f64, rate: f64) -> u64 {
        if self.tokens >= n {
            0
        } else {
            (((n - self.tokens) / rate) * 1000.0).ceil().max(1.0) as u64
        }
    }
}

/// What a connection that has sent something holds here.
#[derive(Debug)]
struct ConnState {
    messages: Bucket,
    bytes: Bucket,
    /// An event of this connection is queued or in flight.
    busy: bool,
    /// Events behind it, with their backend.
    waiting: VecDeque<(usize, Event)>,
    /// The connection has closed: the entry goes once nothing of it is left.
    closed: bool,
}

#[derive(Debug)]
struct Pending {
    events: Vec<Event>,
    permit: Permit,
    sent_ms: u64,
}

/// One backend on this shard.
#[derive(Debug)]
struct Backend {
    rule: Arc<UpstreamRule>,
    breaker: Breaker,
    queue: VecDeque<Event>,
    in_flight: HashMap<u64, Pending>,
    stats: Arc<BackendStats>,
}

/// Every backend of one shard, and the connections that have sent to them.
#[derive(Debug)]
pub(crate) struct Upstreams {
    backends: Vec<Backend>,
    node: Arc<str>,
    limits: ClientLimits,
    conns: HashMap<ConnId, ConnState>,
    next_id: u64,
}

/// A breaker changed state (for the log line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BreakerChange {
    pub(crate) backend: Arc<str>,
    pub(crate) change: Transition,
}

impl Upstreams {
    /// `stats`: one per rule, in order (the API reads them).
    pub(crate) fn new(
        rules: &[Arc<UpstreamRule>],
        stats: &[Arc<BackendStats>],
        node: Arc<str>,
        limits: ClientLimits,
        seed: u64,
    ) -> Upstreams {
        let backends = rules
            .iter()
            .zip(stats)
            .enumerate()
            .map(|(i, (rule, stats))| Backend {
                rule: rule.clone(),
                breaker: Breaker::new(rule.breaker, seed.wrapping_add(i as u64 * 0x9E37_79B9)),
                queue: VecDeque::new(),
                in_flight: HashMap::new(),
                stats: stats.clone(),
            })
            .collect();
        Upstreams { backends, node, limits, conns: HashMap::new(), next_id: 1 }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// Counts a client message against its connection's rates; `Err(retry_ms)` when over.
    pub(crate) fn admit(&mut self, conn: ConnId, bytes: usize, now_ms: u64) -> Result<(), u64> {
        let l = self.limits;
        let c = self.conns.entry(conn).or_insert_with(|| ConnState {
            messages: Bucket::full(l.message_burst, now_ms),
            bytes: Bucket::full(l.byte_burst, now_ms),
            busy: false,
            waiting: VecDeque::new(),
            closed: false,
        });
        c.messages.refill(l.messages_per_s, l.message_burst, now_ms);
        c.bytes.refill(l.bytes_per_s, l.byte_burst, now_ms);
        let wait = c
            .messages
            .wait_ms(1.0, l.messages_per_s)
            .max(c.bytes.wait_ms(bytes as f64, l.bytes_per_s));
        if wait > 0 {
            return Err(wait);
        }
        c.messages.tokens -= 1.0;
        c.bytes.tokens -= bytes as f64;
        Ok(())
    }

    /// Takes an event for `backend`; `Err` answers the client at once (the breaker is open,
    /// the connection's queue or the backend's is full).
    pub(crate) fn submit(
        &mut self,
        backend: usize,
        event: Event,
        now_ms: u64,
    ) -> Result<(), Failure> {
        let b = &self.backends[backend];
        let wait = b.breaker.retry_in(now_ms);
        if wait > 0 {
            b.stats.error(ErrorKind::Refused, 1);
            return Err(unavailable(&b.rule.name, wait));
        }
        let queue = self.limits.queue;
        let l = self.limits;
        let c = self.conns.entry(event.conn).or_insert_with(|| ConnState {
            messages: Bucket::full(l.message_burst, now_ms),
            bytes: Bucket::full(l.byte_burst, now_ms),
            busy: false,
            waiting: VecDeque::new(),
            closed: false,
        });
        if c.busy {
            if c.waiting.len() >= queue {
                return Err(Failure::new(
                    Code::TooManyRequests,
                    format!("{queue} calls already wait for an answer on this connection"),
                ));
            }
            c.waiting.push_back((backend, event));
            return Ok(());
        }
        let b = &mut self.backends[backend];
        if b.queue.len() >= b.rule.queue_max {
            b.stats.error(ErrorKind::Refused, 1);
            return Err(unavailable(&b.rule.name, b.rule.timeout.as_millis() as u64));
        }
        c.busy = true;
        b.queue.push_back(event);
        b.stats.queued.set(b.queue.len() as u64);
        Ok(())
    }

    /// The connection closed: nothing more of it will be answered to it, but what it sent
    /// still goes (a `send` already accepted reaches its backend).
    pub(crate) fn forget(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.closed = true;
            if !c.busy && c.waiting.is_empty() {
                self.conns.remove(&conn);
            }
        }
    }

    /// Connections with an entry here.
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.conns.len()
    }

    /// Starts what can start: requests for the queued events of every backend with a free
    /// slot. Events a just-opened breaker will not let through are answered in `done`.
    pub(crate) fn poll(
        &mut self,
        now_ms: u64,
        out: &mut Vec<Request>,
        done: &mut Vec<Done>,
        changes: &mut Vec<BreakerChange>,
    ) {
        let mut freed = Vec::new();
        for i in 0..self.backends.len() {
            loop {
                let b = &mut self.backends[i];
                if b.queue.is_empty() || b.in_flight.len() >= b.rule.max_in_flight {
                    break;
                }
                let (permit, moved) = b.breaker.allow(now_ms);
                if let Some(change) = moved {
                    b.stats.breaker_state.set(b.breaker.state().gauge());
                    changes.push(BreakerChange { backend: Arc::from(&*b.rule.name), change });
                }
                let permit = match permit {
                    Ok(p) => p,
                    Err(wait) => {
                        // Open (or every probe out): fail fast rather than wait.
                        let name = b.rule.name.clone();
                        let failed: Vec<Event> = b.queue.drain(..).collect();
                        b.stats.error(ErrorKind::Refused, failed.len());
                        b.stats.queued.set(0);
                        for event in failed {
                            freed.push(event.conn);
                            done.push(Done {
                                event,
                                outcome: Outcome::Error(unavailable(&name, wait)),
                            });
                        }
                        break;
                    }
                };
                let mut events = Vec::new();
                let mut body = Vec::with_capacity(256);
                body.extend_from_slice(b"{\"events\":[");
                while let Some(e) = b.queue.front() {
                    let before = body.len();
                    if !events.is_empty() {
                        body.push(b',');
                    }
                    encode_event(&mut body, e, &self.node);
                    if !events.is_empty()
                        && (events.len() >= b.rule.batch_max || body.len() + 2 > b.rule.batch_bytes)
                    {
                        body.truncate(before);
                        break;
                    }
                    if let Some(e) = b.queue.pop_front() {
                        events.push(e);
                    }
                }
                body.extend_from_slice(b"]}");
                let id = self.next_id;
                self.next_id += 1;
                b.stats.request(events.len());
                b.stats.queued.set(b.queue.len() as u64);
                b.in_flight.insert(id, Pending { events, permit, sent_ms: now_ms });
                b.stats.in_flight.set(b.in_flight.len() as u64);
                out.push(Request { backend: i, id, body });
            }
        }
        // Connections whose event failed fast: their next events queue for the next poll.
        for conn in freed {
            self.release(conn, now_ms, done);
        }
    }

    /// A request ended: the outcome of each of its events, in order, into `done`.
    pub(crate) fn complete(
        &mut self,
        backend: usize,
        id: u64,
        result: CallResult,
        now_ms: u64,
        done: &mut Vec<Done>,
        changes: &mut Vec<BreakerChange>,
    ) {
        let Some(b) = self.backends.get_mut(backend) else { return };
        let Some(p) = b.in_flight.remove(&id) else { return };
        b.stats.in_flight.set(b.in_flight.len() as u64);
        b.stats.latency(now_ms.saturating_sub(p.sent_ms) * 1000);
        let n = p.events.len();
        let name = b.rule.name.clone();
        let (outcomes, failed): (Result<Vec<Outcome>, (ErrorKind, Failure)>, bool) = match result {
            CallResult::Response { status, body } if (200..300).contains(&status) => {
                match parse_results(&body, n) {
                    Ok(o) => (Ok(o), false),
                    Err(why) => (
                        Err((
                            ErrorKind::BadAnswer,
                            Failure::new(
                                Code::UpstreamError,
                                format!("backend {name} answered badly: {why}"),
                            ),
                        )),
                        true,
                    ),
                }
            }
            CallResult::Response { status, .. } if status >= 500 => (
                Err((
                    ErrorKind::Status5xx,
                    Failure::new(
                        Code::UpstreamError,
                        format!("backend {name} failed with status {status}"),
                    ),
                )),
                true,
            ),
            CallResult::Response { status, .. } => (
                Err((ErrorKind::StatusOther, {
                    let mut f = Failure::new(
                        Code::UpstreamError,
                        format!("backend {name} refused the request with status {status}"),
                    );
                    f.temporary = false;
                    f
                })),
                false,
            ),
            CallResult::Timeout => (
                Err((
                    ErrorKind::Timeout,
                    Failure::new(
                        Code::UpstreamTimeout,
                        format!(
                            "backend {name} did not answer within {} ms",
                            b.rule.timeout.as_millis()
                        ),
                    ),
                )),
                true,
            ),
            CallResult::Transport(why) => (
                Err((
                    ErrorKind::Transport,
                    Failure::new(Code::UpstreamError, format!("backend {name}: {why}")),
                )),
                true,
            ),
        };
        if let Some(change) = b.breaker.record(p.permit, failed, now_ms) {
            if change.to == breaker::State::Open {
                b.stats.breaker_trips.inc();
            }
            b.stats.breaker_state.set(b.breaker.state().gauge());
            changes.push(BreakerChange { backend: Arc::from(&*name), change });
        }
        let outcomes = match outcomes {
            Ok(o) => o,
            Err((kind, f)) => {
                b.stats.error(kind, n);
                vec![Outcome::Error(f); n]
            }
        };
        let mut freed = Vec::with_capacity(n);
        for (event, outcome) in p.events.into_iter().zip(outcomes) {
            freed.push(event.conn);
            done.push(Done { event, outcome });
        }
        for conn in freed {
            self.release(conn, now_ms, done);
        }
    }

    /// `conn`'s event is answered: its next waiting one goes to its backend's queue.
    fn release(&mut self, conn: ConnId, now_ms: u64, done: &mut Vec<Done>) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.busy = false;
        while let Some((backend, event)) = c.waiting.pop_front() {
            let b = &mut self.backends[backend];
            let wait = b.breaker.retry_in(now_ms);
            let refused = if wait > 0 {
                Some(unavailable(&b.rule.name, wait))
            } else if b.queue.len() >= b.rule.queue_max {
                Some(unavailable(&b.rule.name, b.rule.timeout.as_millis() as u64))
            } else {
                None
            };
            match refused {
                Some(f) => {
                    b.stats.error(ErrorKind::Refused, 1);
                    done.push(Done { event, outcome: Outcome::Error(f) });
                }
                None => {
                    b.queue.push_back(event);
                    b.stats.queued.set(b.queue.len() as u64);
                    c.busy = true;
                    return;
                }
            }
        }
        if c.closed {
            self.conns.remove(&conn);
        }
    }
}

fn unavailable(name: &str, retry_ms: u64) -> Failure {
    Failure::new(Code::UpstreamUnavailable, format!("backend {name} is unavailable; retry later"))
        .retry_after(retry_ms.max(1))
}

/// The backends' rules, as the session asks them where a call goes.
#[derive(Debug)]
pub(crate) struct Routes(pub(crate) Vec<Arc<UpstreamRule>>);

impl Backends for Routes {
    fn route(&self, call: &Call) -> Option<usize> {
        route(self.0.iter().map(|r| &**r), call)
    }
}

/// The first rule whose events take `call`.
pub(crate) fn route<'a>(
    rules: impl Iterator<Item = &'a UpstreamRule>,
    call: &Call,
) -> Option<usize> {
    for (i, r) in rules.enumerate() {
        let takes = r.events.iter().any(|e| match (e, call) {
            (EventRule::Rpc(p), Call::Rpc { method, .. }) => glob(p, method),
            (EventRule::Send, Call::Send { .. }) => true,
            (EventRule::Publish(p), Call::Publish { channel, .. }) => glob(p, channel),
            (EventRule::Subscribe(p), Call::Subscribe { channel, .. }) => glob(p, channel),
            (EventRule::Connect, Call::Connect { .. }) => true,
            (EventRule::Refresh, Call::Refresh { .. }) => true,
            _ => false,
        });
        if takes {
            return Some(i);
        }
    }
    None
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str as JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn push_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// One event as the backend receives it.
fn encode_event(out: &mut Vec<u8>, e: &Event, node: &str) {
    out.extend_from_slice(b"{\"event\":");
    push_str(out, e.call.name());
    out.extend_from_slice(b",\"conn\":");
    push_str(out, &e.conn.to_string());
    out.extend_from_slice(b",\"user\":");
    push_opt(out, e.user.as_deref());
    out.extend_from_slice(b",\"device\":");
    push_opt(out, e.device.as_deref());
    out.extend_from_slice(b",\"node\":");
    push_str(out, node);
    match &e.call {
        Call::Rpc { method, data, .. } => {
            out.extend_from_slice(b",\"method\":");
            push_str(out, method);
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(data.as_bytes());
        }
        Call::Send { data } => {
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(data.as_bytes());
        }
        Call::Publish { channel, data, .. } => {
            out.extend_from_slice(b",\"channel\":");
            push_str(out, channel);
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(data.as_bytes());
        }
        Call::Subscribe { channel, .. } => {
            out.extend_from_slice(b",\"channel\":");
            push_str(out, channel);
        }
        Call::Connect { headers, query } => {
            // `{"cookie":"a","x-forwarded-for":"b"}`; a header sent twice is joined with ", ".
            out.extend_from_slice(b",\"headers\":{");
            let mut names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
            names.dedup();
            names.sort_unstable();
            names.dedup();
            for (k, name) in names.iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                let joined: Vec<&str> =
                    headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect();
                push_str(out, name);
                out.push(b':');
                push_str(out, &joined.join(", "));
            }
            out.extend_from_slice(b"},\"query\":");
            push_opt(out, query.as_deref());
        }
        Call::Refresh { expires_ms } => {
            // Unix seconds, as the connect answer gave it.
            out.extend_from_slice(format!(",\"expire_at\":{}", expires_ms / 1000).as_bytes());
        }
    }
    out.push(b'}');
}

#[derive(Deserialize)]
struct Results<'a> {
    #[serde(borrow)]
    results: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireResult<'a> {
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<WireError>,
    #[serde(default)]
    disconnect: Option<WireDisconnect>,
}

#[derive(Deserialize)]
struct WireError {
    code: Box<RawValue>,
    #[serde(default)]
    message: String,
    #[serde(default)]
    temporary: bool,
}

#[derive(Deserialize)]
struct WireDisconnect {
    code: u16,
    #[serde(default)]
    reason: String,
}

/// The longest backend error message or disconnect reason passed on (a close reason must fit
/// 123 bytes; messages are cut at a character boundary).
const MAX_MESSAGE: usize = 256;

fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
    s
}

/// `{"results":[…]}` with exactly `n` results, each `{"data":…}`, `{"error":{…}}`,
/// `{"disconnect":{…}}` or `{}`.
pub(crate) fn parse_results(body: &[u8], n: usize) -> Result<Vec<Outcome>, String> {
    let r: Results<'_> =
        serde_json::from_slice(body).map_err(|e| format!("not {{\"results\":[…]}}: {e}"))?;
    if r.results.len() != n {
        return Err(format!("{} results for {n} events", r.results.len()));
    }
    r.results
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let w: WireResult<'_> = serde_json::from_str(raw.get()).map_err(|e| {
                format!("result {i} is not {{\"data\"}}, {{\"error\"}} or {{\"disconnect\"}}: {e}")
            })?;
            match (w.data, w.error, w.disconnect) {
                (None, Some(e), None) => {
                    let code = e.code.get();
                    let ok = code.starts_with('"')
                        || code.bytes().all(|b| b.is_ascii_digit() || b == b'-');
                    if !ok {
                        return Err(format!(
                            "result {i}: error.code must be a string or an integer"
                        ));
                    }
                    Ok(Outcome::Refused(Failure {
                        code: cut(code.to_string(), MAX_MESSAGE),
                        message: cut(e.message, MAX_MESSAGE),
                        temporary: e.temporary,
                        retry_ms: None,
                    }))
                }
                (None, None, Some(d)) => {
                    if !(4000..5000).contains(&d.code) {
                        return Err(format!(
                            "result {i}: disconnect.code must be 4000-4999, got {}",
                            d.code
                        ));
                    }
                    Ok(Outcome::Disconnect { code: d.code, reason: cut(d.reason, 120) })
                }
                (data, None, None) => Ok(Outcome::Data(data.map(|d| d.get().to_string()))),
                _ => Err(format!("result {i} has more than one of data, error, disconnect")),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
