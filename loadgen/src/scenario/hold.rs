//! `hold`: open N connections, hold them, and measure what each costs the server.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::args::*;
use crate::engine;
use crate::probe;
use crate::report::*;
use crate::run::*;

pub(crate) fn hold(a: ConnArgs) -> Result<(), String> {
    let pid = a.server_pid;
    let mem0 = pid.map(probe::proc_mem).transpose()?;
    let cpu0 = pid.map(probe::proc_cpu_seconds).transpose()?;
    let slab0 = pid.and_then(|_| probe::slab_bytes().ok());
    let sock0 = probe::tcp_sockstat();
    let own0 = probe::own_cpu_seconds();
    let path = a.path_or("/ws");
    let run = start_connections(&a, &path, Extras::default(), |_, _| engine::Ignore)?;
    run.wait_settled(a.connections, a.json);
    let connect_phase = run.start.elapsed();
    // Let the server settle (buffers freed, timers armed) before reading its memory.
    let settle = Duration::from_secs(1).min(a.hold);
    std::thread::sleep(settle);
    let held_open = run.progress.open.load(Relaxed);
    let mem1 = pid.map(probe::proc_mem).transpose()?;
    let slab1 = pid.and_then(|_| probe::slab_bytes().ok());
    let sock1 = probe::tcp_sockstat();
    let hold_end = (Instant::now() + a.hold.saturating_sub(settle)).min(run.deadline);
    while Instant::now() < hold_end {
        std::thread::sleep(Duration::from_millis(50));
    }
    let threads = run.threads;
    let (tally, _) = run.finish()?;
    let cpu1 = pid.map(probe::proc_cpu_seconds).transpose()?;
    let own = probe::own_cpu_seconds() - own0;

    let n = held_open.max(1) as f64;
    let upgrade_secs = match (tally.first_attempt, tally.last_upgrade) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => 0.0,
    };
    let rate = if upgrade_secs > 0.0 { tally.upgraded as f64 / upgrade_secs } else { 0.0 };
    let mem = match (mem0, mem1) {
        (Some(m0), Some(m1)) => Some(json!({
            "rss_before": m0.rss, "rss_after": m1.rss,
            "rss_per_conn": (m1.rss as f64 - m0.rss as f64) / n,
            "anon_per_conn": (m1.rss_anon as f64 - m0.rss_anon as f64) / n,
        })),
        _ => None,
    };
    let kernel = match (&slab0, &slab1) {
        (Some(s0), Some(s1)) => {
            let d = probe::slab_delta(s0, s1);
            let total: i64 = d.iter().map(|(_, v)| v).sum();
            let top: Vec<_> = d
                .iter()
                .take(8)
                .map(|(k, v)| json!({"cache": k, "per_conn": *v as f64 / n}))
                .collect();
            Some(json!({"slab_per_conn_both_ends": total as f64 / n, "top": top,
                        "tcp_sockets_added": sock1.0 as i64 - sock0.0 as i64,
                        "tcp_buffer_pages_added": sock1.1 as i64 - sock0.1 as i64}))
        }
        _ => None,
    };
    let mut report = connect_summary(&tally);
    let extra = json!({
        "scenario": "hold",
        "target": format!("{}://{}{}", a.scheme(), a.target, path),
        "connections": a.connections,
        "threads": threads,
        "sources": a.sources.len(),
        "upgrades_per_sec": rate,
        "connect_phase_secs": connect_phase.as_secs_f64(),
        "open_when_measured": held_open,
        "open_at_end": tally.open_at_end,
        "server_memory": mem,
        "kernel_memory": kernel,
        "server_cpu_secs": match (cpu0, cpu1) { (Some(a), Some(b)) => json!(b - a), _ => json!(null) },
        "loadgen_cpu_secs": own,
    });
    merge(&mut report, extra);
    write_outputs(&a, &tally.handshake_us, "handshake latency")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        print_hold(&report);
    }
    if tally.upgraded == 0 {
        return Err("no connection upgraded".into());
    }
    Ok(())
}
