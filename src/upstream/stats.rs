//! Per backend, per shard: what the API's `/metrics` and `/v1/stats` show. Each shard is the
//! only writer of its own (a relaxed load and store); readers sum the shards.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A value one shard writes and others read.
#[derive(Debug, Default)]
pub struct Cell(AtomicU64);

impl Cell {
    pub(crate) fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    pub(crate) fn inc(&self) {
        self.add(1);
    }

    pub(crate) fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Upper bounds of the latency buckets (µs), for `ringcast_upstream_latency_seconds`.
pub const LATENCY_US: [u64; 12] = [
    1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000,
];
/// Upper bounds of the batch-size buckets (events per request).
pub const BATCH: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

/// Why events failed, in this order in `errors`.
pub const ERROR_KINDS: [&str; 6] =
    ["timeout", "transport", "status_5xx", "status_other", "bad_answer", "refused"];

/// How an event failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    Timeout,
    Transport,
    Status5xx,
    /// A status other than 2xx and 5xx (the backend refused the request as a whole).
    StatusOther,
    /// A 2xx whose body is not `{"results":[…]}` with one result per event of a known shape.
    BadAnswer,
    /// Refused before it was sent: the breaker was open, or the backend's queue was full.
    Refused,
}

impl ErrorKind {
    fn index(self) -> usize {
        self as usize
    }
}

/// One backend's figures on one shard.
#[derive(Debug, Default)]
pub struct BackendStats {
    pub requests: Cell,
    pub events: Cell,
    /// Per bucket of [`BATCH`] (not cumulative; the last is +Inf).
    pub batch: [Cell; BATCH.len() + 1],
    /// Per bucket of [`LATENCY_US`] (not cumulative; the last is +Inf), their sum and count.
    pub latency: [Cell; LATENCY_US.len() + 1],
    pub latency_sum_us: Cell,
    /// Events failed, by [`ERROR_KINDS`].
    pub errors: [Cell; ERROR_KINDS.len()],
    /// 0 closed, 1 half-open, 2 open.
    pub breaker_state: Cell,
    pub breaker_trips: Cell,
    /// Events waiting and requests in flight now (gauges).
    pub queued: Cell,
    pub in_flight: Cell,
}

impl BackendStats {
    pub(crate) fn request(&self, events: usize) {
        self.requests.inc();
        self.events.add(events as u64);
        let i = BATCH.iter().position(|&b| events as u64 <= b).unwrap_or(BATCH.len());
        self.batch[i].inc();
    }

    pub(crate) fn latency(&self, us: u64) {
        let i = LATENCY_US.iter().position(|&b| us <= b).unwrap_or(LATENCY_US.len());
        self.latency[i].inc();
        self.latency_sum_us.add(us);
    }

    pub(crate) fn error(&self, kind: ErrorKind, events: usize) {
        self.errors[kind.index()].add(events as u64);
    }
}
