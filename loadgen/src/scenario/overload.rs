//! `overload`: a storm against a server that is already busy. `--readers` well-behaved
//! subscribers of one channel are connected first; then `-n` more clients arrive at `--rate`
//! (several times what the server admits under load) and each stops reading once upgraded,
//! so the share of slow readers grows for as long as the storm lasts, while messages are
//! published to the channel faster than a slow reader's send floor. Once the last message
//! is published the load stops (the storm's connections close) and the run measures how
//! long the server takes to be normal again: `/readyz` 200, no overload action on, and a new
//! client admitted. Reported: admitted and refused storm clients, the readers' delivery
//! latency and completeness, the server's RSS and the kernel's TCP memory over time
//! (`--rss-plot` draws them), and the time back to normal.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use crate::args::*;
use crate::deliver::*;
use crate::report::*;
use crate::run::*;
use crate::track::{Mode, Tracker};
use crate::{engine, output, probe, publish};

#[derive(Args, Debug)]
pub(crate) struct OverloadArgs {
    /// The storm: -n clients at --rate, each deaf once upgraded.
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// Well-behaved subscribers, connected before the storm; their latency is the figure.
    #[arg(long, default_value_t = 200)]
    pub(crate) readers: usize,
    /// The API base URL: publishes go to /v1/publish, and /readyz and /metrics are read.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub(crate) api_url: String,
    #[arg(long, default_value = "overload")]
    pub(crate) channel: String,
    /// Messages to publish during the storm.
    #[arg(long, short = 'm', default_value_t = 4000)]
    pub(crate) messages: u64,
    /// Messages published per second.
    #[arg(long, default_value_t = 200.0)]
    pub(crate) pub_rate: f64,
    #[command(flatten)]
    pub(crate) publish: PublishOpts,
    /// How often the server's RSS, the kernel's TCP memory and /readyz are sampled.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    pub(crate) sample: Duration,
    /// How long to wait for the server to be normal again after the load stops.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub(crate) recovery_timeout: Duration,
    /// SO_RCVBUF of each storm client, in bytes (0: the kernel's autotuned default, which on
    /// loopback lets each deaf client hold megabytes in its own receive queue, on this host,
    /// where a remote one would hold them on its own).
    #[arg(long, default_value_t = 65536)]
    pub(crate) storm_rcvbuf: usize,
    /// Write the server's RSS and the kernel's TCP memory over time (SVG) to this file.
    #[arg(long)]
    pub(crate) rss_plot: Option<std::path::PathBuf>,
}

/// One sample: seconds since the storm began, server RSS, kernel TCP memory, /readyz status.
#[derive(Clone, Copy, Debug)]
struct Sample {
    t: f64,
    rss: u64,
    tcp: u64,
    ready: u16,
}

/// GET `path` on the API; the status, or 0 when it does not answer.
fn status_of(url: &publish::Url, path: &str, key: &Option<String>) -> (u16, Vec<u8>) {
    let u = publish::Url { path: path.to_string(), ..url.clone() };
    // A probe: an answer slower than this counts as none (the recovery loop keeps its pace).
    let mut p = publish::Publisher::new(u, key.clone()).with_timeout(Duration::from_secs(2));
    p.get().unwrap_or((0, Vec::new()))
}

/// The overload actions on in any shard, from /metrics (0 when the server has none).
fn actions_on(url: &publish::Url, key: &Option<String>) -> Option<u64> {
    let (st, body) = status_of(url, "/metrics", key);
    if st != 200 {
        return None;
    }
    let text = String::from_utf8_lossy(&body);
    Some(
        text.lines()
            .filter(|l| l.starts_with("ringcast_overload_action{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum(),
    )
}

/// A gauge from /metrics, if the server has it.
fn gauge(url: &publish::Url, key: &Option<String>, name: &str) -> Option<u64> {
    let (st, body) = status_of(url, "/metrics", key);
    if st != 200 {
        return None;
    }
    let text = String::from_utf8_lossy(&body);
    text.lines()
        .find(|l| l.split(['{', ' ']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The server's counters a storm moves, summed over their series: slow-consumer closes,
/// what each overload action refused or closed, pushes dropped for full outboxes.
fn counters(url: &publish::Url, key: &Option<String>) -> Value {
    let (st, body) = status_of(url, "/metrics", key);
    if st != 200 {
        return Value::Null;
    }
    let text = String::from_utf8_lossy(&body);
    let sum = |name: &str, label: &str| -> u64 {
        text.lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    let mut refusals = serde_json::Map::new();
    for a in ["shed_low", "pause", "stop_admitting", "shed_normal", "reclaim"] {
        let label = format!("action=\"{a}\"");
        refusals.insert(a.into(), sum("ringcast_overload_refusals_total", &label).into());
    }
    json!({
        "slow_consumer_closes": sum("ringcast_evictions_total", "reason=\"slow_consumer\""),
        "dropped_outbox_full": sum("ringcast_drops_total", "reason=\"outbox_full\""),
        "deferred": sum("ringcast_deferred_total", ""),
        "overload_refusals": refusals,
    })
}

/// `after - before`, field by field, for the numbers of [`counters`].
fn delta(before: &Value, after: &Value) -> Value {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => Value::Object(
            a.iter()
                .map(|(k, v)| (k.clone(), delta(b.get(k).unwrap_or(&Value::Null), v)))
                .collect(),
        ),
        (b, Value::Number(a)) => {
            json!(a.as_u64().unwrap_or(0).saturating_sub(b.as_u64().unwrap_or(0)))
        }
        (_, a) => a.clone(),
    }
}

/// Whether a new client is admitted now: a plain upgrade answered 101 within 2 s.
fn admitted(a: &ConnArgs, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&a.target, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        a.target
    );
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && &buf == b"HTTP/1.1 101"
}

pub(crate) fn overload(a: OverloadArgs) -> Result<(), String> {
    if a.conn.tls {
        return Err("overload speaks plain ws (its recovery probe is a plain upgrade)".into());
    }
    if a.readers == 0 || a.messages == 0 {
        return Err("--readers and --messages must be positive".into());
    }
    let api = publish::parse_url(&a.api_url)?;
    let pub_url = publish::Url { path: "/v1/publish".into(), ..api.clone() };
    let key = a.publish.api_key.clone();
    let path = format!("/ws?channels={}", a.channel);
    let pid = a.conn.server_pid;
    let budget = gauge(&api, &key, "ringcast_memory_budget_bytes");
    // The readers: every message, measured.
    let readers_args = ConnArgs { connections: a.readers, rate: 0.0, threads: 1, ..a.conn.clone() };
    let received = Arc::new(AtomicU64::new(0));
    let (m, r2) = (a.messages, received.clone());
    let readers = start_connections(&readers_args, &path, Extras::default(), move |f, c| {
        Tracker::new(Mode::Fanout, f as u32, c as u32, m, r2.clone())
    })?;
    readers.wait_settled(a.readers, a.conn.json);
    let upgraded_readers = readers.progress.open.load(Relaxed) as u64;
    if upgraded_readers == 0 {
        return Err("no reader was admitted".into());
    }
    std::thread::sleep(Duration::from_secs(1)); // subscriptions reach their home shard
                                                // Sampling from the storm's start to the end of the recovery.
    let t0 = Instant::now();
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (samples, stop, api, key, every) =
            (samples.clone(), stop.clone(), api.clone(), key.clone(), a.sample);
        std::thread::spawn(move || {
            while !stop.load(Relaxed) {
                let rss = pid.and_then(|p| probe::proc_mem(p).ok()).map_or(0, |m| m.rss);
                let tcp = probe::tcp_sockstat().1 * 4096;
                let ready = status_of(&api, "/readyz", &key).0;
                let s = Sample { t: t0.elapsed().as_secs_f64(), rss, tcp, ready };
                samples.lock().unwrap_or_else(|p| p.into_inner()).push(s);
                std::thread::sleep(every);
            }
        })
    };
    let counters0 = counters(&api, &key);
    // `-n 0`: no storm, the same publishing (the unloaded figure to compare with).
    let storm_args = ConnArgs { threads: 1, ..a.conn.clone() };
    let extras = Extras { slow_every: 1, rcvbuf: a.storm_rcvbuf, ..Default::default() };
    let storm = (a.conn.connections > 0)
        .then(|| start_connections(&storm_args, &path, extras, |_, _| engine::Ignore))
        .transpose()?;
    let deadline = storm.as_ref().map_or(readers.deadline, |s| s.deadline);
    let cpu0 = pid.map(probe::proc_cpu_seconds).transpose()?;
    let channel = a.channel.clone();
    let size = a.publish.size;
    let progress =
        ProgressLine::start("delivered", received.clone(), upgraded_readers * m, a.conn.json);
    let Published { errors, first, last, statuses, reported, api_latency } = publish_loop(
        &pub_url,
        key.clone(),
        a.publish.pub_conns,
        a.messages,
        a.pub_rate,
        deadline,
        |i, t| {
            let p = publish::payload(i, t, None, size);
            format!(r#"{{"channel":{},"data":{p}}}"#, json!(channel)).into_bytes()
        },
    )?;
    // The load stops: the storm's clients go.
    let load_secs = t0.elapsed().as_secs_f64();
    let stopped = Instant::now();
    let storm_open = storm.as_ref().map_or(0, |s| s.progress.open.load(Relaxed));
    let storm_tally = match storm {
        Some(s) => s.finish()?.0,
        None => engine::Tally::empty(),
    };
    let cpu1 = pid.map(probe::proc_cpu_seconds).transpose()?;
    // What the storm moved on the server, before the recovery probes add their own.
    let moved = delta(&counters0, &counters(&api, &key));
    // Back to normal: ready, no action on, a new client admitted.
    let mut recovered = None;
    let mut alive = true;
    while stopped.elapsed() < a.recovery_timeout {
        if pid.is_some_and(|p| probe::proc_mem(p).is_err()) {
            alive = false;
            break;
        }
        let ready = status_of(&api, "/readyz", &key).0 == 200;
        let calm = actions_on(&api, &key).unwrap_or(u64::MAX) == 0;
        if ready && calm && admitted(&a.conn, &path) {
            recovered = Some(stopped.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_deliveries(&received, upgraded_readers * m, a.publish.drain, readers.deadline);
    drop(progress);
    stop.store(true, Relaxed);
    let _ = sampler.join();
    let (reader_tally, trackers) = readers.finish()?;
    let mut report = delivery_report(&trackers, Mode::Fanout, a.messages, first, last);
    let got = report["unique"].as_u64().unwrap_or(0);
    let expected = upgraded_readers * a.messages;
    let samples = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let peak = |f: fn(&Sample) -> u64| samples.iter().map(f).max().unwrap_or(0);
    let not_ready = samples.iter().filter(|s| s.ready != 200).count();
    // At most 240 points in the JSON (every sample is in the plot).
    let stride = samples.len().div_ceil(240).max(1);
    let series: Vec<Value> = samples
        .iter()
        .step_by(stride)
        .map(|s| json!([(s.t * 100.0).round() / 100.0, s.rss, s.tcp, s.ready]))
        .collect();
    let storm_summary = connect_summary(&storm_tally);
    merge(
        &mut report,
        json!({
            "scenario": "overload",
            "target": format!("ws://{}{}", a.conn.target, path),
            "readers": upgraded_readers,
            "readers_closed_by_server": connect_summary(&reader_tally)["closed_by_server"].clone(),
            "expected": expected,
            "missing": expected.saturating_sub(got),
            "storm": {
                "attempted": storm_tally.attempted,
                "admitted": storm_tally.upgraded,
                "refused_by_status": storm_summary["refused_by_status"].clone(),
                "errors": storm_summary["errors"].clone(),
                "closed_by_server": storm_summary["closed_by_server"].clone(),
                "dropped_by_server": storm_tally.dropped_by_server,
                "open_when_the_load_stopped": storm_open,
                "rate": a.conn.rate,
                "rcvbuf": a.storm_rcvbuf,
            },
            "messages": a.messages,
            "size": a.publish.size,
            "pub_rate": a.pub_rate,
            "load_secs": load_secs,
            "publish_errors": errors,
            "publish_error_statuses": statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "server_reported": reported_json(reported),
            "server_counters": moved,
            "api_latency_us": api_latency_json(&api_latency),
            "server_cpu_secs_under_load": match (cpu0, cpu1) { (Some(a), Some(b)) => json!(b - a), _ => Value::Null },
            "memory_budget": budget,
            "server_rss_max": pid.map(|_| peak(|s| s.rss)),
            "server_rss_max_while_loaded": pid.map(|_| samples.iter().filter(|s| s.t <= load_secs).map(|s| s.rss).max().unwrap_or(0)),
            "kernel_tcp_memory_max": peak(|s| s.tcp),
            "samples_not_ready": not_ready,
            "server_alive": alive,
            "recovery_ms": recovered.map(|d| d.as_millis() as u64),
            "series": {"columns": ["t_secs", "server_rss", "kernel_tcp_memory", "readyz"], "rows": series},
        }),
    );
    write_outputs(&a.conn, &merged_latency(&trackers), "readers' delivery latency")?;
    if let Some(p) = &a.rss_plot {
        let points: Vec<(f64, u64, u64)> = samples.iter().map(|s| (s.t, s.rss, s.tcp)).collect();
        let title = format!(
            "server RSS and kernel TCP memory (MiB); load stops at {load_secs:.1} s{}",
            budget.map(|b| format!(", budget {} MiB", b >> 20)).unwrap_or_default()
        );
        let svg = output::series_svg(&points, &title, load_secs, budget);
        std::fs::write(p, svg).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    print_report(&report, a.conn.json);
    if !alive {
        return Err("the server died under the load".into());
    }
    if got == 0 {
        return Err("no message reached the readers".into());
    }
    Ok(())
}
