//! The backends' part of `GET /metrics`: per backend, summed over the shards.

use std::fmt::Write as _;

use crate::server::Upstreams;
use crate::upstream::stats::{BackendStats, BATCH, ERROR_KINDS, LATENCY_US};

/// Appends every backend family to `out`.
pub(crate) fn render(out: &mut String, u: &Upstreams) {
    if u.rules.is_empty() {
        return;
    }
    let sum = |b: usize, f: &dyn Fn(&BackendStats) -> u64| -> u64 {
        u.stats.iter().filter_map(|shard| shard.get(b)).map(|s| f(s)).sum()
    };
    let names: Vec<&str> = u.rules.iter().map(|r| r.name.as_str()).collect();
    let family =
        |out: &mut String, name: &str, kind: &str, help: &str, f: &dyn Fn(&BackendStats) -> u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (b, n) in names.iter().enumerate() {
                let _ = writeln!(out, "{name}{{backend=\"{n}\"}} {}", sum(b, f));
            }
        };
    family(
        out,
        "ringcast_upstream_requests_total",
        "counter",
        "Requests sent to the backend.",
        &|s| s.requests.get(),
    );
    family(
        out,
        "ringcast_upstream_events_total",
        "counter",
        "Events sent to the backend (a request carries one or more).",
        &|s| s.events.get(),
    );
    family(
        out,
        "ringcast_upstream_breaker_trips_total",
        "counter",
        "Times a shard's breaker for the backend opened.",
        &|s| s.breaker_trips.get(),
    );
    family(
        out,
        "ringcast_upstream_breakers_open",
        "gauge",
        "Shards whose breaker for the backend is open (half-open counts as open).",
        &|s| u64::from(s.breaker_state.get() > 0),
    );
    family(out, "ringcast_upstream_queued", "gauge", "Events waiting for a request slot.", &|s| {
        s.queued.get()
    });
    family(out, "ringcast_upstream_in_flight", "gauge", "Requests in flight.", &|s| {
        s.in_flight.get()
    });
    let name = "ringcast_upstream_errors_total";
    let _ = writeln!(
        out,
        "# HELP {name} Events that got no answer from the backend, by kind.\n# TYPE {name} counter"
    );
    for (b, n) in names.iter().enumerate() {
        for (k, kind) in ERROR_KINDS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}{{backend=\"{n}\",kind=\"{kind}\"}} {}",
                sum(b, &|s| s.errors[k].get())
            );
        }
    }
    let name = "ringcast_upstream_batch_events";
    let _ = writeln!(out, "# HELP {name} Events per request.\n# TYPE {name} histogram");
    for (b, n) in names.iter().enumerate() {
        let mut cumulative = 0;
        for (i, le) in BATCH.iter().enumerate() {
            cumulative += sum(b, &|s| s.batch[i].get());
            let _ = writeln!(out, "{name}_bucket{{backend=\"{n}\",le=\"{le}\"}} {cumulative}");
        }
        let count = sum(b, &|s| s.requests.get());
        let _ = writeln!(out, "{name}_bucket{{backend=\"{n}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{backend=\"{n}\"}} {}", sum(b, &|s| s.events.get()));
        let _ = writeln!(out, "{name}_count{{backend=\"{n}\"}} {count}");
    }
    let name = "ringcast_upstream_latency_seconds";
    let _ = writeln!(out, "# HELP {name} Time from sending a request to its end (answer, error or timeout).\n# TYPE {name} histogram");
    for (b, n) in names.iter().enumerate() {
        let mut cumulative = 0;
        for (i, le) in LATENCY_US.iter().enumerate() {
            cumulative += sum(b, &|s| s.latency[i].get());
            let _ = writeln!(
                out,
                "{name}_bucket{{backend=\"{n}\",le=\"{}\"}} {cumulative}",
                *le as f64 / 1e6
            );
        }
        let count = cumulative + sum(b, &|s| s.latency[LATENCY_US.len()].get());
        let _ = writeln!(out, "{name}_bucket{{backend=\"{n}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{backend=\"{n}\"}} {}",
            sum(b, &|s| s.latency_sum_us.get()) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{backend=\"{n}\"}} {count}");
    }
}
