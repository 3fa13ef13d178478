//! loadgen: measures what a WebSocket server holds and how fast it answers.
//!
//! Scenarios are subcommands, each with a hard time cap so a run always ends. Every figure in
//! docs/benchmarks.md comes from here.

mod engine;
mod probe;
mod sources;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use engine::{Plan, Progress, Tally};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(name = "loadgen", version, about = "Load generator for ringcast and any RFC 6455 server")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Open N connections at a ramp rate, hold them, report outcomes, upgrade rate, handshake
    /// latency and (given --server-pid) the server's memory per connection.
    Hold(HoldArgs),
}

#[derive(clap::Args, Debug)]
struct HoldArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: SocketAddr,
    /// Endpoint path.
    #[arg(long, default_value = "/ws")]
    path: String,
    /// Connections to open.
    #[arg(long, short = 'n', default_value_t = 1000)]
    connections: usize,
    /// Connections opened per second; 0 opens them as fast as the server upgrades.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// How long to hold them once all have an outcome.
    #[arg(long, default_value = "5s", value_parser = ringcast::config::parse_duration)]
    hold: Duration,
    /// Source addresses: `127.0.0.1-127.0.0.40` or a comma list.
    #[arg(long, default_value = "127.0.0.1", value_parser = sources::parse_sources)]
    sources: std::vec::Vec<IpAddr>,
    /// Client threads; 0: one per CPU available to loadgen.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Time one connection may take to connect and upgrade.
    #[arg(long, default_value = "10s", value_parser = ringcast::config::parse_duration)]
    connect_timeout: Duration,
    /// The server's PID: report its memory and CPU per connection.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Hard cap on the whole run.
    #[arg(long, default_value = "300s", value_parser = ringcast::config::parse_duration)]
    max_duration: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn cpus() -> usize {
    ringcast::server::sys::allowed_cpus().len().max(1)
}

fn check_nofile(n: usize) -> Result<(), String> {
    let limit = ringcast::server::sys::raise_nofile_limit();
    let room = limit.saturating_sub(64) as usize;
    if n > room {
        return Err(format!(
            "{n} connections need about {} open files, but this process may open {limit}: \
             at most {room} connections here. Raise the limit (`ulimit -n`, or tuning/apply on a \
             host you tune), or split the load over several loadgen processes.",
            n + 64
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.scenario {
        Scenario::Hold(a) => hold(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn hold(a: HoldArgs) -> Result<(), String> {
    if a.connections == 0 {
        return Err("--connections must be positive".into());
    }
    if a.rate < 0.0 || !a.rate.is_finite() {
        return Err("--rate must be 0 or a positive number".into());
    }
    check_nofile(a.connections)?;
    let threads = if a.threads == 0 { cpus() } else { a.threads }.min(a.connections);
    // Fail fast on an unreachable server rather than after N timeouts.
    std::net::TcpStream::connect_timeout(&a.target, Duration::from_secs(3))
        .map_err(|e| format!("cannot reach {}: {e}", a.target))?;

    let pid = a.server_pid;
    let mem0 = pid.map(probe::proc_mem).transpose()?;
    let cpu0 = pid.map(probe::proc_cpu_seconds).transpose()?;
    let slab0 = pid.and_then(|_| probe::slab_bytes().ok());
    let sock0 = probe::tcp_sockstat();
    let own0 = probe::own_cpu_seconds();

    let start = Instant::now();
    let deadline = start + a.max_duration;
    let progress = Arc::new(Progress::default());
    let mut handles = Vec::new();
    for t in 0..threads {
        let share = a.connections / threads + usize::from(t < a.connections % threads);
        let plan = Plan {
            target: a.target,
            path: a.path.clone(),
            conns: share,
            rate: a.rate / threads as f64,
            sources: a.sources.clone(),
            connect_timeout: a.connect_timeout,
            deadline,
        };
        let p = progress.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("loadgen-{t}"))
                .spawn(move || engine::run(plan, t, p))
                .map_err(|e| format!("cannot start a thread: {e}"))?,
        );
    }
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr()) && !a.json;
    while progress.settled.load(Relaxed) < a.connections && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        if tty {
            eprint!(
                "\r  {} / {} settled, {} open   ",
                progress.settled.load(Relaxed),
                a.connections,
                progress.open.load(Relaxed)
            );
        }
    }
    if tty {
        eprintln!();
    }
    let connect_phase = start.elapsed();
    // Let the server settle (buffers freed, timers armed) before reading its memory.
    let settle = Duration::from_secs(1).min(a.hold);
    std::thread::sleep(settle);
    let held_open = progress.open.load(Relaxed);
    let mem1 = pid.map(probe::proc_mem).transpose()?;
    let slab1 = pid.and_then(|_| probe::slab_bytes().ok());
    let sock1 = probe::tcp_sockstat();
    let rest = a.hold.saturating_sub(settle);
    let hold_end = Instant::now() + rest;
    while Instant::now() < hold_end.min(deadline) {
        std::thread::sleep(Duration::from_millis(50));
    }
    progress.stop.store(true, Relaxed);
    let mut tally = Tally::empty();
    for h in handles {
        tally.merge(h.join().map_err(|_| "a loadgen thread panicked".to_string())?);
    }
    let cpu1 = pid.map(probe::proc_cpu_seconds).transpose()?;
    let own = probe::own_cpu_seconds() - own0;

    let n = held_open.max(1) as f64;
    let upgrade_secs = match (tally.first_attempt, tally.last_upgrade) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => 0.0,
    };
    let rate = if upgrade_secs > 0.0 { tally.upgraded as f64 / upgrade_secs } else { 0.0 };
    let q = |p: f64| tally.handshake_us.value_at_quantile(p);
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
    let report = json!({
        "scenario": "hold",
        "target": format!("ws://{}{}", a.target, a.path),
        "connections": a.connections,
        "threads": threads,
        "sources": a.sources.len(),
        "attempted": tally.attempted,
        "upgraded": tally.upgraded,
        "refused_by_status": tally.refused.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "errors": tally.errors.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "upgrades_per_sec": rate,
        "connect_phase_secs": connect_phase.as_secs_f64(),
        "handshake_us": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": tally.handshake_us.max()},
        "open_when_measured": held_open,
        "open_at_end": tally.open_at_end,
        "closed_by_server": tally.closed_by_server.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "dropped_by_server": tally.dropped_by_server,
        "pings_answered": tally.pings_answered,
        "server_memory": mem,
        "kernel_memory": kernel,
        "server_cpu_secs": match (cpu0, cpu1) { (Some(a), Some(b)) => json!(b - a), _ => json!(null) },
        "loadgen_cpu_secs": own,
    });
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

fn print_hold(r: &serde_json::Value) {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    println!(
        "hold  {}  ({} threads, {} source addresses)",
        r["target"].as_str().unwrap_or(""),
        r["threads"],
        r["sources"]
    );
    println!("  upgraded            {} / {}", r["upgraded"], r["attempted"]);
    println!("  refused by status   {}", r["refused_by_status"]);
    println!("  errors              {}", r["errors"]);
    println!("  upgrades/s          {:.0}  (first attempt to last 101)", f(&r["upgrades_per_sec"]));
    let h = &r["handshake_us"];
    println!(
        "  handshake µs        p50 {}  p90 {}  p99 {}  p999 {}  max {}",
        h["p50"], h["p90"], h["p99"], h["p999"], h["max"]
    );
    println!(
        "  open when measured  {}   open at end {}",
        r["open_when_measured"], r["open_at_end"]
    );
    println!(
        "  closed by server    {}   dropped {}",
        r["closed_by_server"], r["dropped_by_server"]
    );
    if let Some(m) = r["server_memory"].as_object() {
        println!(
            "  server RSS          {:.1} MiB -> {:.1} MiB: {:.0} B/conn (anon {:.0} B/conn)",
            f(&m["rss_before"]) / 1048576.0,
            f(&m["rss_after"]) / 1048576.0,
            f(&m["rss_per_conn"]),
            f(&m["anon_per_conn"])
        );
    }
    if let Some(k) = r["kernel_memory"].as_object() {
        println!(
            "  kernel slab         {:.0} B/conn (both ends of loopback, and loadgen's epoll)",
            f(&k["slab_per_conn_both_ends"])
        );
        if let Some(top) = k["top"].as_array() {
            let parts: Vec<String> = top
                .iter()
                .map(|t| format!("{} {:.0}", t["cache"].as_str().unwrap_or(""), f(&t["per_conn"])))
                .collect();
            println!("                      {}", parts.join(", "));
        }
    }
    if !r["server_cpu_secs"].is_null() {
        println!("  server CPU          {:.2} s", f(&r["server_cpu_secs"]));
    }
    println!("  loadgen CPU         {:.2} s", f(&r["loadgen_cpu_secs"]));
}
