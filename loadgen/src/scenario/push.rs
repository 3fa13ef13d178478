//! `push`: N connections, one user each, and pushes to random users.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use crate::args::*;
use crate::deliver::*;
use crate::report::*;
use crate::run::*;
use crate::track::{Mode, Tracker};
use crate::{probe, publish};

#[derive(Args, Debug)]
pub(crate) struct PushArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// Where pushes go (ringcast's /v1/push).
    #[arg(long, default_value = "http://127.0.0.1:8081/v1/push")]
    pub(crate) pub_url: String,
    /// User names are this prefix plus the connection number; use the same in --path.
    #[arg(long, default_value = "u")]
    pub(crate) user_prefix: String,
    /// Pushes to send.
    #[arg(long, short = 'm', default_value_t = 1000)]
    pub(crate) pushes: u64,
    /// Pushes per second.
    #[arg(long, default_value_t = 200.0)]
    pub(crate) pub_rate: f64,
    #[command(flatten)]
    pub(crate) publish: PublishOpts,
}

pub(crate) fn push(a: PushArgs) -> Result<(), String> {
    let url = publish::parse_url(&a.pub_url)?;
    if a.pushes == 0 {
        return Err("--pushes must be positive".into());
    }
    let n = a.conn.connections;
    let received = Arc::new(AtomicU64::new(0));
    let m = a.pushes;
    let r2 = received.clone();
    let path = a.conn.path_or("/ws?user=u{i}");
    let run = start_connections(&a.conn, &path, Extras::default(), move |first, count| {
        Tracker::new(Mode::Push, first as u32, count as u32, m, r2.clone())
    })?;
    run.wait_settled(n, a.conn.json);
    let upgraded = run.progress.open.load(Relaxed) as u64;
    std::thread::sleep(Duration::from_secs(1)); // users reach their home shard
    let pid = a.conn.server_pid;
    let cpu0 = pid.map(probe::proc_cpu_seconds).transpose()?;
    let own0 = probe::own_cpu_seconds();
    let prefix = a.user_prefix.clone();
    let progress = ProgressLine::start("delivered", received.clone(), a.pushes, a.conn.json);
    let Published { errors, first, last, statuses, reported, api_latency } = publish_loop(
        &url,
        a.publish.api_key.clone(),
        a.publish.pub_conns,
        a.pushes,
        a.pub_rate,
        run.deadline,
        |i, t| {
            // A fixed pseudo-random user per push (splitmix64 of the push number).
            let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            let u = (z ^ (z >> 31)) % n as u64;
            let p = publish::payload(i, t, Some(u), a.publish.size);
            format!(r#"{{"user":"{prefix}{u}","data":{p}}}"#).into_bytes()
        },
    )?;
    wait_deliveries(&received, a.pushes, a.publish.drain, run.deadline);
    drop(progress);
    let cpu1 = pid.map(probe::proc_cpu_seconds).transpose()?;
    let own = probe::own_cpu_seconds() - own0;
    let (tally, trackers) = run.finish()?;
    let mut report = delivery_report(&trackers, Mode::Push, a.pushes, first, last);
    let got = report["unique"].as_u64().unwrap_or(0);
    merge(
        &mut report,
        json!({
            "scenario": "push",
            "target": format!("{}://{}{}", a.conn.scheme(), a.conn.target, path),
            "connections": upgraded,
            "pushes": a.pushes,
            "size": a.publish.size,
            "pub_rate": a.pub_rate,
            "publish_errors": errors,
            "publish_error_statuses": statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "server_reported": reported_json(reported),
            "api_latency_us": api_latency_json(&api_latency),
            "expected": a.pushes,
            "missing": a.pushes.saturating_sub(got),
            "server_cpu_secs": match (cpu0, cpu1) { (Some(a), Some(b)) => json!(b - a), _ => json!(null) },
            "loadgen_cpu_secs": own,
            "connect": connect_summary(&tally),
        }),
    );
    write_outputs(&a.conn, &merged_latency(&trackers), "push latency")?;
    print_report(&report, a.conn.json);
    if got == 0 {
        return Err("no push was delivered".into());
    }
    Ok(())
}
