//! `fanout` and `slow`: N subscribers of one channel, M messages published at a rate; in
//! `slow` a fraction of subscribers stop reading.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use crate::args::*;
use crate::deliver::*;
use crate::report::*;
use crate::run::*;
use crate::track::{Mode, Tracker};
use crate::{probe, publish};

#[derive(Args, Debug)]
pub(crate) struct FanoutArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// Where messages are published.
    #[arg(long, default_value = "http://127.0.0.1:8081/v1/publish")]
    pub(crate) pub_url: String,
    #[arg(long, value_enum, default_value_t = PubFormat::Ringcast)]
    pub(crate) pub_format: PubFormat,
    /// Channel (ringcast format).
    #[arg(long, default_value = "bench")]
    pub(crate) channel: String,
    /// Messages to publish.
    #[arg(long, short = 'm', default_value_t = 100)]
    pub(crate) messages: u64,
    /// Messages published per second.
    #[arg(long, default_value_t = 20.0)]
    pub(crate) pub_rate: f64,
    #[command(flatten)]
    pub(crate) publish: PublishOpts,
}

#[derive(Args, Debug)]
pub(crate) struct SlowArgs {
    #[command(flatten)]
    pub(crate) fanout: FanoutArgs,
    /// Fraction of subscribers that stop reading once upgraded.
    #[arg(long, default_value_t = 0.1)]
    pub(crate) slow_fraction: f64,
}

pub(crate) fn fanout(a: FanoutArgs) -> Result<(), String> {
    fanout_with(a, 0)
}

pub(crate) fn slow(a: SlowArgs) -> Result<(), String> {
    if !(a.slow_fraction > 0.0 && a.slow_fraction < 1.0) {
        return Err("--slow-fraction must be between 0 and 1".into());
    }
    let every = (1.0 / a.slow_fraction).round().max(2.0) as usize;
    fanout_with(a.fanout, every)
}

/// `fanout`, or `slow` when `slow_every` > 0 (every slow_every-th subscriber stops reading).
pub(crate) fn fanout_with(a: FanoutArgs, slow_every: usize) -> Result<(), String> {
    let url = publish::parse_url(&a.pub_url)?;
    if a.messages == 0 {
        return Err("--messages must be positive".into());
    }
    let n = a.conn.connections;
    let received = Arc::new(AtomicU64::new(0));
    let m = a.messages;
    let r2 = received.clone();
    let path = a.conn.path_or("/ws?channels=bench");
    let extras = Extras { slow_every, ..Default::default() };
    let pid = a.conn.server_pid;
    let mem0 = pid.map(probe::proc_mem).transpose()?;
    let run = start_connections(&a.conn, &path, extras, move |first, count| {
        Tracker::new(Mode::Fanout, first as u32, count as u32, m, r2.clone())
    })?;
    run.wait_settled(n, a.conn.json);
    let upgraded = run.progress.open.load(Relaxed) as u64;
    let slow_conns = if slow_every > 0 {
        (0..n).filter(|i| i % slow_every == slow_every - 1).count() as u64
    } else {
        0
    };
    let readers = upgraded.saturating_sub(slow_conns);
    std::thread::sleep(Duration::from_secs(1)); // subscriptions reach their home shard
    let mem1 = pid.map(probe::proc_mem).transpose()?;
    let cpu0 = pid.map(probe::proc_cpu_seconds).transpose()?;
    let own0 = probe::own_cpu_seconds();
    let channel = a.channel.clone();
    let progress =
        ProgressLine::start("delivered", received.clone(), readers * a.messages, a.conn.json);
    let Published { errors, first, last, statuses, reported, api_latency } = publish_loop(
        &url,
        a.publish.api_key.clone(),
        a.publish.pub_conns,
        a.messages,
        a.pub_rate,
        run.deadline,
        |i, t| {
            let p = publish::payload(i, t, None, a.publish.size);
            match a.pub_format {
                PubFormat::Ringcast => {
                    format!(r#"{{"channel":{},"data":{p}}}"#, json!(channel)).into_bytes()
                }
                PubFormat::Raw => p.into_bytes(),
            }
        },
    )?;
    wait_deliveries(&received, readers * a.messages, a.publish.drain, run.deadline);
    drop(progress);
    let cpu1 = pid.map(probe::proc_cpu_seconds).transpose()?;
    let mem2 = pid.map(probe::proc_mem).transpose()?;
    let own = probe::own_cpu_seconds() - own0;
    let (tally, trackers) = run.finish()?;
    let mut report = delivery_report(&trackers, Mode::Fanout, a.messages, first, last);
    let expected = readers * a.messages;
    let got = report["unique"].as_u64().unwrap_or(0);
    let server_cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    merge(
        &mut report,
        json!({
            "scenario": if slow_every > 0 { "slow" } else { "fanout" },
            "target": format!("{}://{}{}", a.conn.scheme(), a.conn.target, path),
            "subscribers": upgraded,
            "slow_subscribers": tally.slow,
            "server_rss": match (mem0, mem1, mem2) {
                (Some(a), Some(b), Some(c)) => json!({"before_connect": a.rss, "connected": b.rss, "after_publish": c.rss}),
                _ => Value::Null,
            },
            "messages": a.messages,
            "size": a.publish.size,
            "pub_rate": a.pub_rate,
            "publish_errors": errors,
            "publish_error_statuses": statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "server_reported": reported_json(reported),
            "api_latency_us": api_latency_json(&api_latency),
            "expected": expected,
            "missing": expected.saturating_sub(got),
            "server_cpu_secs": server_cpu,
            "deliveries_per_server_cpu_sec": server_cpu.filter(|c| *c > 0.0).map(|c| got as f64 / c),
            "loadgen_cpu_secs": own,
            "connect": connect_summary(&tally),
        }),
    );
    write_outputs(&a.conn, &merged_latency(&trackers), "delivery latency")?;
    print_report(&report, a.conn.json);
    if got == 0 {
        return Err("no message was delivered".into());
    }
    Ok(())
}
