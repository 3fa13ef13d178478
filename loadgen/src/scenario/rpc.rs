//! `rpc`: N clients each making RPCs at R/s through ringcast to a backend; client-side latency
//! from send to reply, lost and mismatched replies, and the backend requests per event (from
//! ringcast's `/metrics`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use crate::args::*;
use crate::deliver::*;
use crate::engine;
use crate::probe;
use crate::publish;
use crate::report::*;
use crate::run::*;
use crate::track::{Mode, Tracker};

#[derive(Args, Debug)]
pub(crate) struct RpcArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// RPCs each connection makes.
    #[arg(long, default_value_t = 10)]
    pub(crate) calls_per_conn: u64,
    /// RPCs per second each connection makes.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) rate_per_conn: f64,
    /// The method called.
    #[arg(long, default_value = "bench.echo")]
    pub(crate) method: String,
    /// Payload bytes per call.
    #[arg(long, default_value_t = 64)]
    pub(crate) size: usize,
    /// ringcast's API (for `/metrics`: backend requests and events), e.g. http://127.0.0.1:8081.
    #[arg(long)]
    pub(crate) api_url: Option<String>,
    /// API key for `/metrics`.
    #[arg(long, env = "RINGCAST_API_KEY")]
    pub(crate) api_key: Option<String>,
    /// How long to wait for the last replies after the last call.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) drain: Duration,
}

/// The backends' requests and events so far, summed over backends.
fn upstream_totals(url: &str, key: Option<String>) -> Result<(u64, u64), String> {
    let mut u = publish::parse_url(url)?;
    u.path = "/metrics".into();
    let (status, body) = publish::Publisher::new(u, key).get()?;
    if status != 200 {
        return Err(format!("GET /metrics: {status}"));
    }
    let text = String::from_utf8_lossy(&body);
    let total = |name: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b'{'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    Ok((total("ringcast_upstream_requests_total"), total("ringcast_upstream_events_total")))
}

pub(crate) fn rpc(a: RpcArgs) -> Result<(), String> {
    if a.calls_per_conn == 0 || a.rate_per_conn.is_nan() || a.rate_per_conn <= 0.0 {
        return Err("--calls-per-conn and --rate-per-conn must be positive".into());
    }
    let n = a.conn.connections;
    let total = a.calls_per_conn * n as u64;
    let rate = a.rate_per_conn * n as f64;
    let received = Arc::new(AtomicU64::new(0));
    let r2 = received.clone();
    let path = a.conn.path_or("/ws");
    let extras = Extras {
        send: Some((a.calls_per_conn, rate, a.size)),
        rpc_method: Some(Arc::from(a.method.as_str())),
        ..Default::default()
    };
    let before = a.api_url.as_deref().map(|u| upstream_totals(u, a.api_key.clone())).transpose()?;
    let own0 = probe::own_cpu_seconds();
    let pid = a.conn.server_pid;
    let run = start_connections(&a.conn, &path, extras, move |first, count| {
        Tracker::new(Mode::Push, first as u32, count as u32, total, r2.clone())
    })?;
    run.wait_settled(n, a.conn.json);
    let cpu0 = pid.map(probe::proc_cpu_seconds).transpose()?;
    let first = engine::now_ns();
    let started = Instant::now();
    let send_secs = total as f64 / rate;
    let end = (Instant::now() + Duration::from_secs_f64(send_secs) + a.drain).min(run.deadline);
    let progress = ProgressLine::start("replied", received.clone(), total, a.conn.json);
    while received.load(Relaxed) < total && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(progress);
    let secs = started.elapsed().as_secs_f64();
    let cpu1 = pid.map(probe::proc_cpu_seconds).transpose()?;
    let after = a.api_url.as_deref().map(|u| upstream_totals(u, a.api_key.clone())).transpose()?;
    let (tally, trackers) = run.finish()?;
    let mut report = delivery_report(&trackers, Mode::Push, total, first, engine::now_ns());
    let got = report["unique"].as_u64().unwrap_or(0);
    let mismatched = report["misdelivered"].clone();
    // Frames without a payload: the welcomes, and replies with an error instead of data.
    let others: u64 = trackers.iter().map(|t| t.other).sum();
    let errors = others.saturating_sub(tally.upgraded);
    let (requests, events) = match (before, after) {
        (Some(b), Some(a)) => (Some(a.0 - b.0), Some(a.1 - b.1)),
        _ => (None, None),
    };
    let server_cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    merge(
        &mut report,
        json!({
            "scenario": "rpc",
            "target": format!("{}://{}{}", a.conn.scheme(), a.conn.target, path),
            "connections": tally.upgraded,
            "sent": tally.sent,
            "expected": tally.sent,
            // Calls that got neither data nor an error back.
            "lost": tally.sent.saturating_sub(got + errors),
            "mismatched": mismatched,
            "error_replies": errors,
            "rate_per_conn": a.rate_per_conn,
            "size": a.size,
            "run_secs": secs,
            "backend_requests": requests,
            "backend_events": events,
            "backend_requests_per_event": match (requests, events) {
                (Some(r), Some(e)) if e > 0 => json!(r as f64 / e as f64),
                _ => json!(null),
            },
            "server_cpu_secs": server_cpu,
            "events_per_server_cpu_sec": match (server_cpu, events) {
                (Some(c), Some(e)) if c > 0.0 => json!(e as f64 / c),
                _ => json!(null),
            },
            "loadgen_cpu_secs": probe::own_cpu_seconds() - own0,
            "connect": connect_summary(&tally),
        }),
    );
    write_outputs(&a.conn, &merged_latency(&trackers), "rpc round trip")?;
    print_report(&report, a.conn.json);
    if got == 0 {
        return Err("no rpc was answered".into());
    }
    Ok(())
}
