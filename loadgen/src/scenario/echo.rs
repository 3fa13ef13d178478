//! `echo`: round trips against any RFC 6455 echo endpoint.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use crate::args::*;
use crate::deliver::*;
use crate::engine;
use crate::probe;
use crate::report::*;
use crate::run::*;
use crate::track::{Mode, Tracker};

#[derive(Args, Debug)]
pub(crate) struct EchoArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// Messages each connection sends.
    #[arg(long, default_value_t = 10)]
    pub(crate) messages_per_conn: u64,
    /// Messages per second, all connections together.
    #[arg(long, default_value_t = 1000.0)]
    pub(crate) msg_rate: f64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64)]
    pub(crate) size: usize,
    /// How long to wait for the last echoes after the last send.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) drain: Duration,
}

pub(crate) fn echo(a: EchoArgs) -> Result<(), String> {
    if a.messages_per_conn == 0 || a.msg_rate.is_nan() || a.msg_rate <= 0.0 {
        return Err("--messages-per-conn and --msg-rate must be positive".into());
    }
    let n = a.conn.connections;
    let total = a.messages_per_conn * n as u64;
    let received = Arc::new(AtomicU64::new(0));
    let r2 = received.clone();
    let path = a.conn.path_or("/echo");
    let extras =
        Extras { send: Some((a.messages_per_conn, a.msg_rate, a.size)), ..Default::default() };
    let own0 = probe::own_cpu_seconds();
    let pid = a.conn.server_pid;
    let cpu0 = pid.map(probe::proc_cpu_seconds).transpose()?;
    let run = start_connections(&a.conn, &path, extras, move |first, count| {
        Tracker::new(Mode::Push, first as u32, count as u32, total, r2.clone())
    })?;
    run.wait_settled(n, a.conn.json);
    let first = engine::now_ns();
    // The threads send on their own schedule; wait for the echoes.
    let send_secs = total as f64 / a.msg_rate;
    let end = (Instant::now() + Duration::from_secs_f64(send_secs) + a.drain).min(run.deadline);
    let progress = ProgressLine::start("echoed", received.clone(), total, a.conn.json);
    while received.load(Relaxed) < total && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(progress);
    let cpu1 = pid.map(probe::proc_cpu_seconds).transpose()?;
    let (tally, trackers) = run.finish()?;
    let mut report = delivery_report(&trackers, Mode::Push, total, first, engine::now_ns());
    let got = report["unique"].as_u64().unwrap_or(0);
    merge(
        &mut report,
        json!({
            "scenario": "echo",
            "target": format!("{}://{}{}", a.conn.scheme(), a.conn.target, path),
            "connections": tally.upgraded,
            "sent": tally.sent,
            "expected": tally.sent,
            "missing": tally.sent.saturating_sub(got),
            "size": a.size,
            "pub_rate": a.msg_rate,
            "publish_errors": 0,
            "publish_error_statuses": {},
            "server_cpu_secs": match (cpu0, cpu1) { (Some(a), Some(b)) => json!(b - a), _ => json!(null) },
            "loadgen_cpu_secs": probe::own_cpu_seconds() - own0,
            "connect": connect_summary(&tally),
        }),
    );
    write_outputs(&a.conn, &merged_latency(&trackers), "echo round trip")?;
    print_report(&report, a.conn.json);
    if got == 0 {
        return Err("no message was echoed".into());
    }
    Ok(())
}
