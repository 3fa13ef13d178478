//! Per-shard counters. Each shard is the only writer of its own counters (a relaxed load and
//! store, no read-modify-write shared across cores); readers on other threads sum the shards.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::auth::AuthError;
use crate::proto::handshake::HandshakeError;
use crate::proto::CloseReason;

/// A counter or gauge written by one shard thread only.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline]
    pub(crate) fn inc(&self) {
        self.add(1);
    }

    #[inline]
    pub(crate) fn sub(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_sub(n), Relaxed);
    }

    pub(crate) fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

macro_rules! counters {
    ($($name:ident: $help:literal,)*) => {
        /// One shard's counters and gauges.
        #[derive(Debug, Default)]
        pub struct Counters {
            $(#[doc = $help] pub $name: Counter,)*
            /// Handshakes refused, by [`HandshakeError`], in `HandshakeError::ALL` order.
            pub(crate) refused: [Counter; HandshakeError::ALL.len()],
            /// Upgrades the authenticator refused, by `AuthError::LABELS`.
            pub(crate) auth_refused: [Counter; AuthError::LABELS.len()],
            /// Time from the API receiving a delivery to this shard queueing it.
            pub(crate) publish_to_queued: LatencyHistogram,
            /// The overload manager's pressures in thousandths, by `Monitor::ALL` (gauges).
            pub(crate) overload_pressure: [Counter; crate::server::overload::MONITORS],
            /// Whether each overload action is on (0 or 1), by `Action::ALL` (gauges).
            pub(crate) overload_action: [Counter; 5],
        }

        impl Counters {
            /// (name, help, value) for every scalar counter.
            pub(crate) fn scalars(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($name), $help, self.$name.get()),)*]
            }
        }
    };
}

counters! {
    open_connections: "open WebSocket connections (gauge)",
    handshaking: "connections still in the handshake (gauge)",
    accepted: "TCP connections accepted",
    accept_errors: "accept calls that failed (EMFILE and the like)",
    pending_overflow: "connections closed at accept: too many pending handshakes",
    upgrades: "handshakes completed with 101",
    handshake_timeouts: "connections dropped for not completing the handshake in time",
    handshake_aborted: "connections closed by the peer during the handshake",
    closed_by_client: "close handshakes started by the client",
    closed_by_server: "close handshakes started by the server (shutdown, idle)",
    protocol_errors: "connections failed for a protocol violation",
    pong_timeouts: "connections evicted for not answering a ping",
    idle_timeouts: "connections closed for sending no message",
    abnormal_closures: "connections that dropped without a close frame",
    io_errors: "connections closed on a socket error",
    close_timeouts: "close handshakes that timed out",
    unread_resets: "connections given up on whose socket still held unread bytes, closed with RST to free them",
    drain_forced: "connections still open at the drain deadline",
    messages_in: "messages received",
    bytes_in: "bytes received",
    frames_out: "frames queued for sending",
    bytes_out: "bytes written to sockets",
    pings_sent: "pings sent",
    subscriptions: "channel subscriptions held (gauge)",
    pushes_queued: "pushed frames queued to connections",
    pushes_dropped: "pushed frames dropped: outbox full, or connection gone",
    pushes_evicted: "queued frames dropped to make room for higher priorities",
    pushes_expired: "queued pushes dropped unwritten because their ttl passed",
    pushes_conflated: "queued pushes replaced by a later one with the same conflation key",
    pushes_discarded: "queued pushes dropped because a kick, replacement, slow-consumer or pong-timeout close went first",
    slow_consumers_closed: "connections closed for losing pushes too long",
    token_expired: "connections closed with 4003 because their token expired",
    tls_errors: "wss connections closed for a bad TLS record, an alert or a failed handshake",
    overload_closes: "overload refusals answered with an upgrade and a 1013 close (--overload-close)",
    drain_waves: "connections closed by a wave of --drain-spread",
    token_refreshes: "refreshes (a client's token, or the refresh backend) that extended a connection's expiry",
    refreshes_declined: "refresh backend answers that did not extend a connection's expiry (it closes with 4003 when the expiry passes)",
    kicks: "connections closed by kick or replacement",
    client_errors: "client messages answered with an error",
    client_rate_limited: "client messages refused over the connection's rate (--client-message-rate, --client-byte-rate)",
    client_queue_full: "client calls refused because the connection had --client-queue calls waiting",
    client_publishes: "client publishes published (allowed by pub_allow or a backend)",
    inbox_messages: "messages taken from the shard inbox",
    inbox_full: "deliveries (per recipient) dropped because a shard inbox was full",
    mesh_retries: "directory updates and kicks a full shard inbox refused, kept and resent in order",
    replayed: "history frames queued to clients that resumed",
    replay_overflows: "replays of a stream without gap repair cut short by a full outbox (the client got a reset)",
    pushes_deferred: "channel pushes a slow subscriber's outbox had no room for, left to gap repair",
    gap_repairs: "gaps refilled from history once a slow subscriber's outbox drained",
    gap_repaired: "history frames queued by gap repairs",
    gap_resets: "gaps the history could not refill (the client got a reset; a kept stream's subscriber is closed 4002)",
    gapped_connections: "connections with a gap waiting for repair (gauge)",
    resets: "resume requests answered with a reset (history exceeded or epoch changed)",
    outbox_bytes: "bytes queued in connection outboxes (gauge)",
    input_bytes: "bytes of clients' input held between reads: partial heads and frames, messages being assembled, TLS records not yet whole and ciphertext not yet sent (gauge)",
    history_bytes: "frame bytes held in stream histories (gauge)",
    mailbox_bytes: "frame bytes held in durable user streams' mailboxes (gauge)",
    ack_waits: "durable pushes whose API report waits for acks (wait_ack_ms) (gauge)",
    mailbox_evicted: "mailbox messages dropped unsettled by the caps (--mailbox-size, --mailbox-bytes)",
    mailbox_expired: "mailbox messages dropped unsettled by age (--mailbox-ttl) or their ttl",
    redelivered: "durable messages sent again after going unacknowledged past --ack-timeout",
    redelivery_gave_up: "connections given up on after --ack-attempts redeliveries (their messages wait for the device's next connection)",
    acks: "ack messages from clients",
    log_syncs: "fdatasync calls of the shard's durable log",
    log_sync_micros: "microseconds the durable log's syncs took, in all",
    log_bytes_written: "bytes written to the shard's durable log",
    log_segments_deleted: "durable log segments deleted whole (nothing in them was needed)",
    log_copied_forward: "live records written again at the log's end so a mostly dead segment could be deleted",
    log_failures: "shards whose durable log failed (durable pushes are refused with 503 since)",
    overload_reclaimed: "connections closed (4002) by the overload manager to reclaim memory",
    repairs_deferred: "gap repairs held back while the overload manager had pause on (let through a few per sample)",
    overload_shed: "normal-priority frames refused to the fullest outboxes while shed_normal was on",
}

impl Counters {
    /// Bytes this shard holds for clients: outboxes, histories, mailboxes, input.
    pub(crate) fn held_for_clients(&self) -> u64 {
        self.outbox_bytes.get()
            + self.history_bytes.get()
            + self.mailbox_bytes.get()
            + self.input_bytes.get()
    }

    pub(crate) fn refused(&self, e: HandshakeError) -> &Counter {
        &self.refused[e.index()]
    }

    /// Counts a server-initiated close: the one mapping from reason to counters.
    pub(crate) fn count_close(&self, reason: &CloseReason) {
        match reason {
            CloseReason::Idle => {
                self.idle_timeouts.inc();
                self.closed_by_server.inc();
            }
            CloseReason::ShuttingDown { .. } => self.closed_by_server.inc(),
            CloseReason::PongTimeout => self.pong_timeouts.inc(),
            CloseReason::Protocol(_) | CloseReason::TooManyBadMessages => {
                self.protocol_errors.inc()
            }
            CloseReason::Replaced | CloseReason::Kicked { .. } => self.kicks.inc(),
            CloseReason::SlowConsumer => {
                self.slow_consumers_closed.inc();
                self.kicks.inc();
            }
            CloseReason::TokenExpired => {
                self.token_expired.inc();
                self.closed_by_server.inc();
            }
        }
    }
}

/// Counters summed over shards.
pub(crate) fn sum(shards: &[std::sync::Arc<Counters>]) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for (i, c) in shards.iter().enumerate() {
        for (j, (name, _, v)) in c.scalars().into_iter().enumerate() {
            if i == 0 {
                out.push((name.to_string(), 0));
            }
            out[j].1 += v;
        }
        let refused = HandshakeError::ALL.iter().map(|e| format!("refused_{}", e.label()));
        let auth = AuthError::LABELS.iter().map(|l| format!("auth_refused_{l}"));
        let values = c.refused.iter().chain(c.auth_refused.iter());
        for (name, v) in refused.chain(auth).zip(values) {
            match out.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => slot.1 += v.get(),
                None => out.push((name, v.get())),
            }
        }
    }
    out
}

/// Upper bounds of the latency histogram buckets, in microseconds (the last bucket is +Inf).
pub(crate) const LATENCY_BUCKETS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

/// A latency histogram with fixed buckets, written by one shard.
#[derive(Debug, Default)]
pub(crate) struct LatencyHistogram {
    /// Per bucket (not cumulative); the last is +Inf.
    pub(crate) buckets: [Counter; LATENCY_BUCKETS_US.len() + 1],
    pub(crate) sum_us: Counter,
    pub(crate) count: Counter,
}

impl LatencyHistogram {
    pub(crate) fn observe(&self, d: std::time::Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let i =
            LATENCY_BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[i].inc();
        self.sum_us.add(us);
        self.count.inc();
    }
}
