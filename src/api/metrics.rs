//! `GET /metrics`: every shard's counters in the Prometheus text format, summed at scrape time
//! (each shard writes its own counters; nothing on the hot path is shared).

use crate::server::overload::{Action, Monitor};
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::proto::handshake::HandshakeError;
use crate::server::inbox::Router;
use crate::server::stats::{Counters, LATENCY_BUCKETS_US};
use crate::server::Shared;

fn sum(c: &[Arc<Counters>], f: impl Fn(&Counters) -> u64) -> u64 {
    c.iter().map(|c| f(c)).sum()
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, v: u64) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {v}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {v}");
        }
    }

    fn counter(&mut self, name: &str, help: &str, v: u64) {
        self.family(name, "counter", help);
        self.sample(name, "", v);
    }

    fn labelled(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        values: &[(&str, u64)],
    ) {
        self.family(name, kind, help);
        for (l, v) in values {
            self.sample(name, &format!("{label}=\"{l}\""), *v);
        }
    }
}

/// Renders the metrics exposition.
pub(crate) fn render(
    c: &[Arc<Counters>],
    router: &Router,
    shared: &Shared,
    driver: &str,
) -> String {
    let mut o = Out(String::with_capacity(8192));
    o.family("ringcast_info", "gauge", "Build and runtime information.");
    o.sample(
        "ringcast_info",
        &format!("version=\"{}\",driver=\"{driver}\"", env!("CARGO_PKG_VERSION")),
        1,
    );
    o.family("ringcast_draining", "gauge", "1 while the server is shutting down.");
    o.sample("ringcast_draining", "", u64::from(shared.draining.load(Relaxed)));
    o.family(
        "ringcast_overload_pressure",
        "gauge",
        "The overload manager's pressures, 0 to 1 (above 1: past the limit), per shard.",
    );
    for (i, s) in c.iter().enumerate() {
        for (m, g) in Monitor::ALL.iter().zip(&s.overload_pressure) {
            let v = g.get();
            let _ = writeln!(
                o.0,
                "ringcast_overload_pressure{{shard=\"{i}\",monitor=\"{}\"}} {}.{:03}",
                m.label(),
                v / 1000,
                v % 1000
            );
        }
    }
    o.family(
        "ringcast_overload_action",
        "gauge",
        "1 while the overload manager has the action on in the shard.",
    );
    for (i, s) in c.iter().enumerate() {
        for (a, g) in Action::ALL.iter().zip(&s.overload_action) {
            let labels = format!("shard=\"{i}\",action=\"{}\"", a.label());
            o.sample("ringcast_overload_action", &labels, g.get());
        }
    }
    o.family("ringcast_memory_held_bytes", "gauge", "Bytes held for clients (outboxes, histories, mailboxes), all shards; the overload manager weighs it and the RSS against the budget.");
    o.sample("ringcast_memory_held_bytes", "", c.iter().map(|s| s.held_for_clients()).sum());
    o.family(
        "ringcast_memory_rss_bytes",
        "gauge",
        "The process's resident set, as the overload manager last read it.",
    );
    o.sample("ringcast_memory_rss_bytes", "", shared.overload.rss.load(Relaxed));
    let pages = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed).saturating_mul(4096);
    o.family(
        "ringcast_kernel_tcp_memory_bytes",
        "gauge",
        "The kernel's TCP socket buffer memory, host-wide (/proc/net/sockstat), as last read.",
    );
    o.sample("ringcast_kernel_tcp_memory_bytes", "", pages(&shared.overload.tcp_pages));
    o.family(
        "ringcast_kernel_tcp_pressure_bytes",
        "gauge",
        "Where the kernel starts to squeeze TCP buffers (net.ipv4.tcp_mem, its second value).",
    );
    o.sample("ringcast_kernel_tcp_pressure_bytes", "", pages(&shared.overload.tcp_pressure_pages));
    o.family("ringcast_memory_budget_bytes", "gauge", "--memory-budget as resolved.");
    o.sample("ringcast_memory_budget_bytes", "", shared.overload.budget.load(Relaxed));
    o.family(
        "ringcast_connections_limit",
        "gauge",
        "The most connections the node admits: --max-connections, or what the open-file limit allows.",
    );
    o.sample("ringcast_connections_limit", "", shared.max_total.min(shared.fd_limit) as u64);
    if let Some(tls) = &shared.tls {
        o.family(
            "ringcast_tls_certificate_expiry_timestamp_seconds",
            "gauge",
            "When each --tls-cert's leaf certificate expires (Unix seconds), as last loaded.",
        );
        for (file, when) in tls.expiry().iter() {
            let file = file.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            let _ = writeln!(
                o.0,
                "ringcast_tls_certificate_expiry_timestamp_seconds{{cert=\"{file}\"}} {when}"
            );
        }
    }

    let per_shard = |o: &mut Out, name: &str, help: &str, f: &dyn Fn(usize, &Counters) -> u64| {
        o.family(name, "gauge", help);
        for (i, s) in c.iter().enumerate() {
            o.sample(name, &format!("shard=\"{i}\""), f(i, s));
        }
    };
    per_shard(&mut o, "ringcast_connections", "Open WebSocket connections.", &|_, s| {
        s.open_connections.get()
    });
    per_shard(
        &mut o,
        "ringcast_handshakes_in_progress",
        "Connections still in the handshake.",
        &|_, s| s.handshaking.get(),
    );
    per_shard(&mut o, "ringcast_subscriptions", "Channel subscriptions held.", &|_, s| {
        s.subscriptions.get()
    });
    per_shard(&mut o, "ringcast_outbox_bytes", "Bytes queued in connection outboxes.", &|_, s| {
        s.outbox_bytes.get()
    });
    per_shard(
        &mut o,
        "ringcast_input_bytes",
        "Clients' input held between reads: partial heads and frames, messages being assembled, TLS records not yet whole, ciphertext not yet sent.",
        &|_, s| s.input_bytes.get(),
    );
    per_shard(
        &mut o,
        "ringcast_history_bytes",
        "Frame bytes held in stream histories (replayed to clients that resume).",
        &|_, s| s.history_bytes.get(),
    );
    per_shard(
        &mut o,
        "ringcast_mailbox_bytes",
        "Frame bytes held in durable user streams' mailboxes.",
        &|_, s| s.mailbox_bytes.get(),
    );
    per_shard(
        &mut o,
        "ringcast_ack_waits",
        "Durable pushes whose API report waits for the devices' acks (wait_ack_ms).",
        &|_, s| s.ack_waits.get(),
    );
    for (name, help, get) in [
        (
            "ringcast_mailbox_evicted_total",
            "Mailbox messages dropped unsettled by --mailbox-size or --mailbox-bytes.",
            (|s: &Counters| s.mailbox_evicted.get()) as fn(&Counters) -> u64,
        ),
        (
            "ringcast_mailbox_expired_total",
            "Mailbox messages dropped unsettled by --mailbox-ttl or their own ttl.",
            |s: &Counters| s.mailbox_expired.get(),
        ),
        (
            "ringcast_redelivered_total",
            "Durable messages sent again after going unacknowledged past --ack-timeout.",
            |s: &Counters| s.redelivered.get(),
        ),
        (
            "ringcast_redelivery_gave_up_total",
            "Connections given up on after --ack-attempts redeliveries.",
            |s: &Counters| s.redelivery_gave_up.get(),
        ),
        ("ringcast_acks_total", "Ack messages from clients.", |s: &Counters| s.acks.get()),
        (
            "ringcast_log_syncs_total",
            "fdatasync calls of the shards' durable logs.",
            |s: &Counters| s.log_syncs.get(),
        ),
        (
            "ringcast_log_sync_microseconds_total",
            "Microseconds the durable logs' syncs took, in all.",
            |s: &Counters| s.log_sync_micros.get(),
        ),
        (
            "ringcast_log_written_bytes_total",
            "Bytes written to the durable logs.",
            |s: &Counters| s.log_bytes_written.get(),
        ),
        (
            "ringcast_log_segments_deleted_total",
            "Durable log segments deleted whole.",
            |s: &Counters| s.log_segments_deleted.get(),
        ),
        (
            "ringcast_log_copied_forward_total",
            "Live records written again so a mostly dead log segment could be deleted.",
            |s: &Counters| s.log_copied_forward.get(),
        ),
        (
            "ringcast_gap_repairs_deferred_total",
            "Gap repairs held back while the overload manager had pause on (let through a few per sample).",
            |s: &Counters| s.repairs_deferred.get(),
        ),
        (
            "ringcast_unread_resets_total",
            "Connections given up on (close timeout, pong timeout, overload reclaim) whose socket still held unread bytes: closed with RST so the kernel frees them at once.",
            |s: &Counters| s.unread_resets.get(),
        ),
        (
            "ringcast_log_failures_total",
            "Shards whose durable log failed (durable pushes get 503 since).",
            |s: &Counters| s.log_failures.get(),
        ),
    ] {
        o.counter(name, help, sum(c, get));
    }
    per_shard(
        &mut o,
        "ringcast_gapped_connections",
        "Connections with a gap waiting for repair.",
        &|_, s| s.gapped_connections.get(),
    );
    per_shard(&mut o, "ringcast_inbox_depth", "Messages waiting in the shard inbox.", &|i, _| {
        router.depth(i) as u64
    });

    let refused: u64 = sum(c, |s| s.refused.iter().map(|r| r.get()).sum());
    o.labelled(
        "ringcast_connection_attempts_total",
        "counter",
        "TCP connections accepted, by outcome.",
        "result",
        &[
            ("upgraded", sum(c, |s| s.upgrades.get())),
            ("refused", refused),
            ("handshake_timeout", sum(c, |s| s.handshake_timeouts.get())),
            ("aborted", sum(c, |s| s.handshake_aborted.get())),
            ("pending_overflow", sum(c, |s| s.pending_overflow.get())),
        ],
    );
    o.counter(
        "ringcast_accept_errors_total",
        "Accept calls that failed (EMFILE and the like).",
        sum(c, |s| s.accept_errors.get()),
    );
    let reasons: Vec<(&str, u64)> =
        HandshakeError::ALL.iter().map(|e| (e.label(), sum(c, |s| s.refused(*e).get()))).collect();
    o.labelled(
        "ringcast_handshake_failures_total",
        "counter",
        "Upgrades refused, by reason.",
        "reason",
        &reasons,
    );
    let auth: Vec<(&str, u64)> = crate::auth::AuthError::LABELS
        .iter()
        .enumerate()
        .map(|(i, l)| (*l, sum(c, |s| s.auth_refused[i].get())))
        .collect();
    o.labelled(
        "ringcast_auth_failures_total",
        "counter",
        "Upgrades the authenticator refused (401, 403, or 400 in open mode), by reason.",
        "reason",
        &auth,
    );
    o.counter(
        "ringcast_tls_errors_total",
        "wss connections closed for a bad TLS record, an alert or a failed handshake.",
        sum(c, |s| s.tls_errors.get()),
    );
    o.counter(
        "ringcast_overload_closes_total",
        "Overload refusals answered with an upgrade and a 1013 close (--overload-close).",
        sum(c, |s| s.overload_closes.get()),
    );
    o.counter(
        "ringcast_token_refreshes_total",
        "Refreshes (a client's token, or the refresh backend) that extended a connection's expiry.",
        sum(c, |s| s.token_refreshes.get()),
    );
    o.counter(
        "ringcast_refreshes_declined_total",
        "Refresh backend answers that did not extend a connection's expiry.",
        sum(c, |s| s.refreshes_declined.get()),
    );
    o.counter(
        "ringcast_replayed_messages_total",
        "History messages queued to clients that resumed.",
        sum(c, |s| s.replayed.get()),
    );
    o.labelled(
        "ringcast_resets_total",
        "counter",
        "Streams a client could not resume without loss, and was told so.",
        "reason",
        &[
            ("history", sum(c, |s| s.resets.get())),
            ("outbox_full", sum(c, |s| s.replay_overflows.get())),
            ("gap", sum(c, |s| s.gap_resets.get())),
        ],
    );
    o.counter(
        "ringcast_deferred_total",
        "Channel pushes a slow subscriber's outbox had no room for, left to gap repair.",
        sum(c, |s| s.pushes_deferred.get()),
    );
    o.counter(
        "ringcast_gap_repairs_total",
        "Gaps refilled from history once a slow subscriber's outbox drained.",
        sum(c, |s| s.gap_repairs.get()),
    );
    o.counter(
        "ringcast_gap_repaired_messages_total",
        "History messages queued by gap repairs.",
        sum(c, |s| s.gap_repaired.get()),
    );
    o.counter(
        "ringcast_messages_received_total",
        "Messages received from clients.",
        sum(c, |s| s.messages_in.get()),
    );
    o.counter(
        "ringcast_received_bytes_total",
        "Bytes received from clients.",
        sum(c, |s| s.bytes_in.get()),
    );
    o.counter(
        "ringcast_frames_sent_total",
        "Frames queued for clients.",
        sum(c, |s| s.frames_out.get()),
    );
    o.counter(
        "ringcast_sent_bytes_total",
        "Bytes written to client sockets.",
        sum(c, |s| s.bytes_out.get()),
    );
    o.counter(
        "ringcast_deliveries_total",
        "Pushed messages queued to connections.",
        sum(c, |s| s.pushes_queued.get()),
    );
    o.labelled(
        "ringcast_drops_total",
        "counter",
        "Pushed messages not delivered, by reason.",
        "reason",
        &[
            ("outbox_full", sum(c, |s| s.pushes_dropped.get())),
            ("evicted_for_priority", sum(c, |s| s.pushes_evicted.get())),
            ("discarded_on_close", sum(c, |s| s.pushes_discarded.get())),
            ("expired", sum(c, |s| s.pushes_expired.get())),
            ("conflated", sum(c, |s| s.pushes_conflated.get())),
            ("inbox_full", sum(c, |s| s.inbox_full.get())),
        ],
    );
    o.labelled(
        "ringcast_overload_refusals_total",
        "counter",
        "What the overload manager refused or closed, by action.",
        "action",
        &[
            ("shed_low", shared.overload.shed_low.load(Relaxed)),
            ("pause", shared.overload.paused.load(Relaxed)),
            ("stop_admitting", sum(c, |s| s.refused(HandshakeError::Overloaded).get())),
            ("shed_normal", sum(c, |s| s.overload_shed.get())),
            ("reclaim", sum(c, |s| s.overload_reclaimed.get())),
        ],
    );
    o.counter(
        "ringcast_mesh_retries_total",
        "Directory updates and kicks a full shard inbox refused, kept and resent in order.",
        sum(c, |s| s.mesh_retries.get()),
    );
    o.labelled(
        "ringcast_evictions_total",
        "counter",
        "Connections closed by the server for their behaviour, by reason.",
        "reason",
        &[
            ("idle", sum(c, |s| s.idle_timeouts.get())),
            ("pong_timeout", sum(c, |s| s.pong_timeouts.get())),
            ("slow_consumer", sum(c, |s| s.slow_consumers_closed.get())),
            ("protocol_error", sum(c, |s| s.protocol_errors.get())),
            ("token_expired", sum(c, |s| s.token_expired.get())),
        ],
    );
    o.labelled(
        "ringcast_closes_total",
        "counter",
        "Connections ended, by how.",
        "how",
        &[
            ("client_close", sum(c, |s| s.closed_by_client.get())),
            ("server_close", sum(c, |s| s.closed_by_server.get())),
            ("abnormal", sum(c, |s| s.abnormal_closures.get())),
            ("io_error", sum(c, |s| s.io_errors.get())),
            ("close_timeout", sum(c, |s| s.close_timeouts.get())),
            ("drain_forced", sum(c, |s| s.drain_forced.get())),
        ],
    );
    o.counter(
        "ringcast_kicks_total",
        "Connections closed by kick, replacement or as slow consumers.",
        sum(c, |s| s.kicks.get()),
    );
    o.counter(
        "ringcast_pings_sent_total",
        "Pings sent to clients.",
        sum(c, |s| s.pings_sent.get()),
    );
    o.counter(
        "ringcast_client_errors_total",
        "Client messages answered with an error.",
        sum(c, |s| s.client_errors.get()),
    );
    o.labelled(
        "ringcast_client_refusals_total",
        "counter",
        "Client messages for backends refused by the connection's limits.",
        "reason",
        &[
            ("rate_limited", sum(c, |s| s.client_rate_limited.get())),
            ("too_many_requests", sum(c, |s| s.client_queue_full.get())),
        ],
    );
    o.counter(
        "ringcast_client_publishes_total",
        "Client publishes published (allowed by pub_allow or a backend).",
        sum(c, |s| s.client_publishes.get()),
    );
    o.counter(
        "ringcast_inbox_messages_total",
        "Messages taken from shard inboxes.",
        sum(c, |s| s.inbox_messages.get()),
    );

    let name = "ringcast_publish_to_queued_seconds";
    o.family(name, "histogram", "Time from the API taking a delivery to a shard queueing it.");
    let mut cumulative = 0;
    for (i, b) in LATENCY_BUCKETS_US.iter().enumerate() {
        cumulative += sum(c, |s| s.publish_to_queued.buckets[i].get());
        let _ = writeln!(o.0, "{name}_bucket{{le=\"{}\"}} {cumulative}", *b as f64 / 1e6);
    }
    let count = sum(c, |s| s.publish_to_queued.count.get());
    let _ = writeln!(o.0, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ =
        writeln!(o.0, "{name}_sum {}", sum(c, |s| s.publish_to_queued.sum_us.get()) as f64 / 1e6);
    let _ = writeln!(o.0, "{name}_count {count}");
    super::upstream_metrics::render(&mut o.0, &shared.upstreams);
    o.0
}
