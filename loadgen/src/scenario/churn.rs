//! `churn`: connections opened at a rate and closed cleanly after a lifetime.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use crate::args::*;
use crate::engine;
use crate::probe;
use crate::run::*;

#[derive(Args, Debug)]
pub(crate) struct ChurnArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// How long each connection stays open after its upgrade.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub(crate) lifetime: Duration,
    /// How often the server's memory is sampled.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub(crate) sample: Duration,
}

pub(crate) fn churn(a: ChurnArgs) -> Result<(), String> {
    if a.conn.rate <= 0.0 {
        return Err("churn needs --rate (connections per second)".into());
    }
    let n = a.conn.connections;
    let path = a.conn.path_or("/ws");
    let pid = a.conn.server_pid;
    let own0 = probe::own_cpu_seconds();
    let mut samples = Vec::new();
    let sample = |t: Duration, open: usize| -> Result<Value, String> {
        let m = pid.map(probe::proc_mem).transpose()?;
        Ok(json!({"t": t.as_secs_f64(), "open": open, "server_rss": m.map(|m| m.rss)}))
    };
    let extras = Extras { lifetime: Some(a.lifetime), ..Default::default() };
    let run = start_connections(&a.conn, &path, extras, |_, _| engine::Ignore)?;
    samples.push(sample(Duration::ZERO, 0)?);
    let mut next = Instant::now() + a.sample;
    loop {
        let done = run.progress.settled.load(Relaxed) >= n && run.progress.open.load(Relaxed) == 0;
        if done || Instant::now() >= run.deadline {
            break;
        }
        if Instant::now() >= next {
            samples.push(sample(run.start.elapsed(), run.progress.open.load(Relaxed))?);
            next += a.sample;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = run.start.elapsed();
    samples.push(sample(elapsed, run.progress.open.load(Relaxed))?);
    let (tally, _) = run.finish()?;
    let rss: Vec<u64> = samples.iter().filter_map(|s| s["server_rss"].as_u64()).collect();
    let mut report = connect_summary(&tally);
    merge(
        &mut report,
        json!({
            "scenario": "churn",
            "target": format!("{}://{}{}", a.conn.scheme(), a.conn.target, path),
            "connections": n,
            "connect_rate": a.conn.rate,
            "lifetime_secs": a.lifetime.as_secs_f64(),
            "duration_secs": elapsed.as_secs_f64(),
            "closed_by_client": tally.closed_by_client,
            "close_answered": tally.close_answered,
            "server_rss_first": rss.first(),
            "server_rss_peak": rss.iter().max(),
            "server_rss_last": rss.last(),
            "samples": samples,
            "loadgen_cpu_secs": probe::own_cpu_seconds() - own0,
        }),
    );
    write_outputs(&a.conn, &tally.handshake_us, "handshake latency")?;
    if a.conn.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        let f = |v: &Value| v.as_f64().unwrap_or(0.0);
        println!(
            "churn  {}  ({} at {}/s, each open {} s)",
            report["target"].as_str().unwrap_or(""),
            n,
            a.conn.rate,
            a.lifetime.as_secs_f64()
        );
        println!(
            "  upgraded            {} / {}   refused {}   errors {}",
            report["upgraded"], report["attempted"], report["refused_by_status"], report["errors"]
        );
        println!(
            "  closed by loadgen   {}   answered by the server {}",
            report["closed_by_client"], report["close_answered"]
        );
        println!(
            "  closed by server    {}   dropped {}",
            report["closed_by_server"], report["dropped_by_server"]
        );
        let h = &report["handshake_us"];
        println!("  handshake µs        p50 {}  p99 {}  max {}", h["p50"], h["p99"], h["max"]);
        if !rss.is_empty() {
            println!(
                "  server RSS          first {:.1} MiB   peak {:.1} MiB   last {:.1} MiB",
                f(&report["server_rss_first"]) / 1048576.0,
                f(&report["server_rss_peak"]) / 1048576.0,
                f(&report["server_rss_last"]) / 1048576.0
            );
        }
        println!("  loadgen CPU         {:.2} s", f(&report["loadgen_cpu_secs"]));
    }
    if tally.upgraded == 0 {
        return Err("no connection upgraded".into());
    }
    Ok(())
}
