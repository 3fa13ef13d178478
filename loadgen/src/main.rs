//! loadgen: measures what a WebSocket server holds and how fast it delivers.
//!
//! Scenarios are subcommands, each with a hard time cap (`--max-duration`) so a run always
//! ends. Every figure in docs/benchmarks.md comes from here.

#![forbid(unsafe_code)] // reason: syscalls go through ringcast-sys, the one crate with unsafe

mod engine;
mod output;
mod probe;
mod publish;
mod sources;
mod track;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use engine::{MessageSink, Plan, Progress, Tally};
use serde_json::{json, Value};
use track::{Mode, Tracker};

#[derive(Parser, Debug)]
#[command(name = "loadgen", version, about = "Load generator for ringcast and any RFC 6455 server")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Open N connections, hold them, report outcomes, upgrade rate, handshake latency and
    /// (given --server-pid) the server's memory per connection.
    Hold(ConnArgs),
    /// N subscribers on a channel; M messages of B bytes published at rate R; delivery
    /// latency, completion time, throughput, server CPU per delivery, completeness.
    Fanout(FanoutArgs),
    /// N connections, one user each (`{i}` in --path); M pushes to random users at rate R;
    /// latency and completeness.
    Push(PushArgs),
    /// Connect at --rate and close each connection (cleanly) after --lifetime; outcomes,
    /// errors and the server's memory over time.
    Churn(ChurnArgs),
    /// Fanout where a fraction of subscribers stop reading: the others' latency and
    /// completeness, and the server's memory.
    Slow(SlowArgs),
    /// Round trips against an echo endpoint (any RFC 6455 server): latency and throughput.
    Echo(EchoArgs),
}

#[derive(Args, Debug, Clone)]
struct ConnArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: SocketAddr,
    /// Endpoint path; `{i}` becomes the connection's number (0..N). Default per scenario:
    /// hold and churn `/ws`, fanout and slow `/ws?channels=bench`, push `/ws?user=u{i}`,
    /// echo `/echo`.
    #[arg(long)]
    path: Option<String>,
    /// Connections to open.
    #[arg(long, short = 'n', default_value_t = 1000)]
    connections: usize,
    /// Connections opened per second; 0 opens them as fast as the server upgrades.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// How long to hold the connections once all have an outcome (hold only).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Source addresses: `127.0.0.1-127.0.0.40` or a comma list.
    #[arg(long, default_value = "127.0.0.1", value_parser = sources::parse_sources)]
    sources: std::vec::Vec<IpAddr>,
    /// Client threads; 0: one per CPU available to loadgen.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Time one connection may take to connect and upgrade.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// The server's PID: report its memory and CPU.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Hard cap on the whole run.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    max_duration: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Write the latency distribution (HdrHistogram .hgrm text) to this file.
    #[arg(long)]
    hdr_out: Option<std::path::PathBuf>,
    /// Write a latency-by-percentile chart (SVG) to this file.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
}

impl ConnArgs {
    fn path_or(&self, default: &str) -> String {
        self.path.clone().unwrap_or_else(|| default.to_string())
    }
}

#[derive(Args, Debug)]
struct ChurnArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// How long each connection stays open after its upgrade.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    lifetime: Duration,
    /// How often the server's memory is sampled.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    sample: Duration,
}

#[derive(Args, Debug)]
struct SlowArgs {
    #[command(flatten)]
    fanout: FanoutArgs,
    /// Fraction of subscribers that stop reading once upgraded.
    #[arg(long, default_value_t = 0.1)]
    slow_fraction: f64,
}

#[derive(Args, Debug)]
struct EchoArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Messages each connection sends.
    #[arg(long, default_value_t = 10)]
    messages_per_conn: u64,
    /// Messages per second, all connections together.
    #[arg(long, default_value_t = 1000.0)]
    msg_rate: f64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// How long to wait for the last echoes after the last send.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    drain: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PubFormat {
    /// `{"channel": C, "data": PAYLOAD}` to ringcast's /v1/publish.
    Ringcast,
    /// The payload itself as the POST body (a generic broadcast server).
    Raw,
}

#[derive(Args, Debug)]
struct FanoutArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Where messages are published.
    #[arg(long, default_value = "http://127.0.0.1:8081/v1/publish")]
    pub_url: String,
    #[arg(long, value_enum, default_value_t = PubFormat::Ringcast)]
    pub_format: PubFormat,
    /// Channel (ringcast format).
    #[arg(long, default_value = "bench")]
    channel: String,
    /// Messages to publish.
    #[arg(long, short = 'm', default_value_t = 100)]
    messages: u64,
    /// Messages published per second.
    #[arg(long, default_value_t = 20.0)]
    pub_rate: f64,
    #[command(flatten)]
    publish: PublishOpts,
}

/// What `fanout` and `push` share on the publishing side.
#[derive(Args, Debug)]
struct PublishOpts {
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Publisher connections, used in turn, so a slow answer does not delay the schedule.
    #[arg(long, default_value_t = 16)]
    pub_conns: usize,
    /// Bearer key for the publish URL.
    #[arg(long, env = "RINGCAST_API_KEY")]
    api_key: Option<String>,
    /// How long to wait for the last deliveries after the last publish.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    drain: Duration,
}

#[derive(Args, Debug)]
struct PushArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Where pushes go (ringcast's /v1/push).
    #[arg(long, default_value = "http://127.0.0.1:8081/v1/push")]
    pub_url: String,
    /// User names are this prefix plus the connection number; use the same in --path.
    #[arg(long, default_value = "u")]
    user_prefix: String,
    /// Pushes to send.
    #[arg(long, short = 'm', default_value_t = 1000)]
    pushes: u64,
    /// Pushes per second.
    #[arg(long, default_value_t = 200.0)]
    pub_rate: f64,
    #[command(flatten)]
    publish: PublishOpts,
}

fn cpus() -> usize {
    ringcast_sys::allowed_cpus().len().max(1)
}

fn check_nofile(n: usize) -> Result<(), String> {
    let limit = ringcast_sys::raise_nofile_limit();
    let room = limit.saturating_sub(64) as usize;
    if n > room {
        return Err(format!(
            "{n} connections need about {} open files, but this process may open {limit}: \
             at most {room} connections here. Raise the limit (`ulimit -n`, or tuning/ on a \
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
        Scenario::Fanout(a) => fanout(a),
        Scenario::Push(a) => push(a),
        Scenario::Churn(a) => churn(a),
        Scenario::Slow(a) => slow(a),
        Scenario::Echo(a) => echo(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Connections under way: the threads, their shared progress, and when it all started.
struct Running<S> {
    handles: Vec<JoinHandle<(Tally, S)>>,
    progress: Arc<Progress>,
    start: Instant,
    deadline: Instant,
    threads: usize,
}

/// What a scenario adds to the plain connect-and-hold plan.
#[derive(Clone, Copy, Debug, Default)]
struct Extras {
    lifetime: Option<Duration>,
    slow_every: usize,
    /// (messages per connection, total rate, size) for echo.
    send: Option<(u64, f64, usize)>,
}

/// Starts the client threads, each with a sink made by `sink(first, count)`.
fn start_connections<S: MessageSink + Send + 'static>(
    a: &ConnArgs,
    path: &str,
    extras: Extras,
    sink: impl Fn(usize, usize) -> S,
) -> Result<Running<S>, String> {
    if a.connections == 0 {
        return Err("--connections must be positive".into());
    }
    if a.rate < 0.0 || !a.rate.is_finite() {
        return Err("--rate must be 0 or a positive number".into());
    }
    check_nofile(a.connections)?;
    std::net::TcpStream::connect_timeout(&a.target, Duration::from_secs(3))
        .map_err(|e| format!("cannot reach {}: {e}", a.target))?;
    let threads = if a.threads == 0 { cpus() } else { a.threads }.min(a.connections);
    let start = Instant::now();
    let deadline = start + a.max_duration;
    let progress = Arc::new(Progress::default());
    let mut handles = Vec::new();
    let mut first = 0;
    for t in 0..threads {
        let share = a.connections / threads + usize::from(t < a.connections % threads);
        let plan = Plan {
            target: a.target,
            path: path.to_string(),
            first,
            conns: share,
            rate: a.rate / threads as f64,
            sources: a.sources.clone(),
            connect_timeout: a.connect_timeout,
            deadline,
            lifetime: extras.lifetime,
            slow_every: extras.slow_every,
            send: extras.send.map(|(per_conn, rate, size)| engine::SendPlan {
                per_conn,
                rate: rate / threads as f64,
                size,
                first_msg: first as u64 * per_conn,
            }),
        };
        let mut s = sink(first, share);
        first += share;
        let p = progress.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("loadgen-{t}"))
                .spawn(move || {
                    let tally = engine::run(plan, t, p, &mut s);
                    (tally, s)
                })
                .map_err(|e| format!("cannot start a thread: {e}"))?,
        );
    }
    Ok(Running { handles, progress, start, deadline, threads })
}

impl<S> Running<S> {
    /// Waits until every connection has an outcome; shows progress on a terminal.
    fn wait_settled(&self, n: usize, quiet: bool) {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr()) && !quiet;
        while self.progress.settled.load(Relaxed) < n && Instant::now() < self.deadline {
            std::thread::sleep(Duration::from_millis(50));
            if tty {
                eprint!(
                    "\r  connecting: {} / {} settled, {} open   ",
                    self.progress.settled.load(Relaxed),
                    n,
                    self.progress.open.load(Relaxed)
                );
            }
        }
        if tty {
            eprintln!();
        }
    }

    fn finish(self) -> Result<(Tally, Vec<S>), String> {
        self.progress.stop.store(true, Relaxed);
        let mut tally = Tally::empty();
        let mut sinks = Vec::new();
        for h in self.handles {
            let (t, s) = h.join().map_err(|_| "a loadgen thread panicked".to_string())?;
            tally.merge(t);
            sinks.push(s);
        }
        Ok((tally, sinks))
    }
}

fn connect_summary(tally: &Tally) -> Value {
    let q = |p: f64| tally.handshake_us.value_at_quantile(p);
    json!({
        "attempted": tally.attempted,
        "upgraded": tally.upgraded,
        "refused_by_status": tally.refused.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "errors": tally.errors.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "handshake_us": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": tally.handshake_us.max()},
        "closed_by_server": tally.closed_by_server.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "dropped_by_server": tally.dropped_by_server,
        "pings_answered": tally.pings_answered,
    })
}

fn hold(a: ConnArgs) -> Result<(), String> {
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
        "target": format!("ws://{}{}", a.target, path),
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

fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

/// Publishes `count` messages at `rate` over `conns` keep-alive connections (message `i` goes
/// on connection `i % conns` at time `i / rate`), so a server that answers only once a
/// publish is queued everywhere does not slow the schedule. `body(i, t_ns)` makes each body.
/// Returns (failed publishes, first send ns, last send ns, failures by status, and the sum of
/// the delivery reports the server answered with, if it sends ringcast's).
fn publish_loop(
    url: &publish::Url,
    api_key: Option<String>,
    conns: usize,
    count: u64,
    rate: f64,
    deadline: Instant,
    body: impl Fn(u64, u64) -> Vec<u8> + Send + Sync,
) -> Result<Published, String> {
    if !(rate > 0.0 && rate.is_finite()) {
        return Err("--pub-rate must be a positive number".into());
    }
    let conns = conns.clamp(1, 256) as u64;
    let start = Instant::now();
    let first = engine::now_ns();
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..conns)
            .map(|k| {
                let body = &body;
                let mut publisher = publish::Publisher::new(url.clone(), api_key.clone());
                scope.spawn(move || {
                    let mut errors = 0u64;
                    let mut last = 0u64;
                    let mut reported = [0u64; 4];
                    let mut statuses: std::collections::BTreeMap<u16, u64> =
                        std::collections::BTreeMap::new();
                    let mut i = k;
                    while i < count {
                        let due = start + Duration::from_secs_f64(i as f64 / rate);
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        last = engine::now_ns();
                        match publisher.post(&body(i, last)) {
                            Ok((200, resp)) => {
                                if let Ok(v) = serde_json::from_slice::<Value>(&resp) {
                                    for (slot, k) in ["recipients", "queued", "dropped", "offline"]
                                        .iter()
                                        .enumerate()
                                    {
                                        reported[slot] += v[*k].as_u64().unwrap_or(0);
                                    }
                                }
                            }
                            Ok((status, _)) => {
                                errors += 1;
                                *statuses.entry(status).or_default() += 1;
                            }
                            Err(e) => {
                                if errors == 0 {
                                    eprintln!("loadgen: publish failed: {e}");
                                }
                                errors += 1;
                            }
                        }
                        i += conns;
                    }
                    (errors, last, statuses, reported)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()
    });
    let mut errors = 0;
    let mut last = first;
    let mut statuses = std::collections::BTreeMap::new();
    let mut reported = [0u64; 4];
    for r in results {
        let (e, l, st, rep) = r.map_err(|_| "a publisher thread panicked".to_string())?;
        errors += e;
        last = last.max(l);
        for (a, b) in reported.iter_mut().zip(rep) {
            *a += b;
        }
        for (k, v) in st {
            *statuses.entry(k).or_insert(0) += v;
        }
    }
    Ok(Published { errors, first, last, statuses, reported })
}

/// What the publish side of a run did.
struct Published {
    /// Publishes that failed, and their statuses.
    errors: u64,
    statuses: std::collections::BTreeMap<u16, u64>,
    /// First and last send time (ns since loadgen started).
    first: u64,
    last: u64,
    /// The delivery reports the server answered with, summed (recipients, queued, dropped,
    /// offline), if it sends ringcast's.
    reported: [u64; 4],
}

fn reported_json(r: [u64; 4]) -> Value {
    json!({"recipients": r[0], "queued": r[1], "dropped": r[2], "offline": r[3]})
}

/// A live progress line on stderr while deliveries arrive, when stderr is a terminal;
/// stops when dropped.
struct ProgressLine {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ProgressLine {
    fn start(
        label: &'static str,
        counter: Arc<AtomicU64>,
        expected: u64,
        quiet: bool,
    ) -> ProgressLine {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr()) && !quiet;
        let thread = tty.then(|| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    eprint!("\r  {label}: {} / {expected}   ", counter.load(Relaxed));
                    std::thread::sleep(Duration::from_millis(200));
                }
                eprintln!("\r  {label}: {} / {expected}   ", counter.load(Relaxed));
            })
        });
        ProgressLine { stop, thread }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits until `expected` deliveries arrived or `drain` passed since the last publish.
fn wait_deliveries(progress: &AtomicU64, expected: u64, drain: Duration, deadline: Instant) {
    let end = (Instant::now() + drain).min(deadline);
    while progress.load(Relaxed) < expected && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn delivery_report(
    trackers: &[Tracker],
    mode: Mode,
    messages: u64,
    first_send: u64,
    last_send: u64,
) -> Value {
    let mut hist =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("static bounds");
    let mut completion = vec![0u64; messages as usize];
    let mut sent = vec![0u64; messages as usize];
    let (mut received, mut dup, mut ooo, mut mis, mut other, mut gaps) = (0, 0, 0, 0, 0, 0);
    let by_seq = trackers.iter().any(|t| t.by_seq);
    let mut seen: Vec<u64> = Vec::new();
    let mut unique = 0;
    for t in trackers {
        let _ = hist.add(&t.latency_us);
        for (c, x) in completion.iter_mut().zip(&t.completion) {
            *c = (*c).max(*x);
        }
        for (s, x) in sent.iter_mut().zip(&t.sent) {
            *s = (*s).max(*x);
        }
        received += t.received;
        dup += t.duplicates;
        ooo += t.out_of_order;
        gaps += t.seq_gaps;
        mis += t.misdelivered;
        other += t.other;
        match mode {
            Mode::Fanout => unique += t.unique(),
            Mode::Push => {
                if seen.is_empty() {
                    seen = t.seen_words().to_vec();
                } else {
                    for (a, b) in seen.iter_mut().zip(t.seen_words()) {
                        *a |= *b;
                    }
                }
            }
        }
    }
    if mode == Mode::Push {
        unique = seen.iter().map(|w| u64::from(w.count_ones())).sum();
    }
    let last_recv = completion.iter().copied().max().unwrap_or(0);
    let secs = last_recv.saturating_sub(first_send) as f64 / 1e9;
    // Completion time of a message: from its send to its last arrival anywhere.
    let mut per_msg: Vec<u64> = completion
        .iter()
        .zip(&sent)
        .filter(|(c, _)| **c > 0)
        .map(|(c, s)| c.saturating_sub(*s) / 1000)
        .collect();
    per_msg.sort_unstable();
    let pick = |q: f64| {
        per_msg
            .get(((per_msg.len() as f64 * q) as usize).min(per_msg.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let q = |p: f64| hist.value_at_quantile(p);
    json!({
        "received": received,
        "unique": unique,
        "duplicates": dup,
        "out_of_order": ooo,
        "order_judged_by": if by_seq { "server seq" } else { "message number" },
        "seq_gaps": if by_seq { json!(gaps) } else { Value::Null },
        "misdelivered": mis,
        "other_messages": other,
        "deliveries_per_sec": if secs > 0.0 { received as f64 / secs } else { 0.0 },
        "first_send_to_last_receive_secs": secs,
        "publish_secs": (last_send.saturating_sub(first_send)) as f64 / 1e9,
        "latency_us": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": hist.max()},
        "messages_with_a_delivery": per_msg.len(),
        "completion_us": {"p50": pick(0.5), "p99": pick(0.99), "max": per_msg.last().copied().unwrap_or(0)},
    })
}

fn fanout(a: FanoutArgs) -> Result<(), String> {
    fanout_with(a, 0)
}

fn slow(a: SlowArgs) -> Result<(), String> {
    if !(a.slow_fraction > 0.0 && a.slow_fraction < 1.0) {
        return Err("--slow-fraction must be between 0 and 1".into());
    }
    let every = (1.0 / a.slow_fraction).round().max(2.0) as usize;
    fanout_with(a.fanout, every)
}

/// `fanout`, or `slow` when `slow_every` > 0 (every slow_every-th subscriber stops reading).
fn fanout_with(a: FanoutArgs, slow_every: usize) -> Result<(), String> {
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
    let Published { errors, first, last, statuses, reported } = publish_loop(
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
            "target": format!("ws://{}{}", a.conn.target, path),
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

fn push(a: PushArgs) -> Result<(), String> {
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
    let Published { errors, first, last, statuses, reported } = publish_loop(
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
            "target": format!("ws://{}{}", a.conn.target, path),
            "connections": upgraded,
            "pushes": a.pushes,
            "size": a.publish.size,
            "pub_rate": a.pub_rate,
            "publish_errors": errors,
            "publish_error_statuses": statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "server_reported": reported_json(reported),
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

fn merged_latency(trackers: &[Tracker]) -> hdrhistogram::Histogram<u64> {
    let mut h =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("static bounds");
    for t in trackers {
        let _ = h.add(&t.latency_us);
    }
    h
}

/// `--hdr-out` and `--plot` for a microsecond histogram.
fn write_outputs(a: &ConnArgs, h: &hdrhistogram::Histogram<u64>, what: &str) -> Result<(), String> {
    if let Some(p) = &a.hdr_out {
        std::fs::write(p, output::hgrm(h, 1000.0))
            .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    if let Some(p) = &a.plot {
        let svg = output::svg(h, &format!("{what} (ms), {} samples", h.len()), 1000.0, "ms");
        std::fs::write(p, svg).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    Ok(())
}

fn churn(a: ChurnArgs) -> Result<(), String> {
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
            "target": format!("ws://{}{}", a.conn.target, path),
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

fn echo(a: EchoArgs) -> Result<(), String> {
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
            "target": format!("ws://{}{}", a.conn.target, path),
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

fn print_report(r: &Value, as_json: bool) {
    if as_json {
        println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
        return;
    }
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    println!("{}  {}", r["scenario"].as_str().unwrap_or(""), r["target"].as_str().unwrap_or(""));
    let c = &r["connect"];
    println!(
        "  connected           {} / {} (refused {}, errors {})",
        c["upgraded"], c["attempted"], c["refused_by_status"], c["errors"]
    );
    println!(
        "  expected            {}   received {}   unique {}   missing {}",
        r["expected"], r["received"], r["unique"], r["missing"]
    );
    println!(
        "  duplicated          {}   out of order {} (by {})   seq gaps {}   misdelivered {}   (other messages {})",
        r["duplicates"], r["out_of_order"], r["order_judged_by"].as_str().unwrap_or(""), r["seq_gaps"], r["misdelivered"], r["other_messages"]
    );
    println!("  publish errors      {} {}", r["publish_errors"], r["publish_error_statuses"]);
    let l = &r["latency_us"];
    println!(
        "  latency µs          p50 {}  p90 {}  p99 {}  p999 {}  max {}",
        l["p50"], l["p90"], l["p99"], l["p999"], l["max"]
    );
    let c = &r["completion_us"];
    println!(
        "  completion µs       p50 {}  p99 {}  max {}  (send to last arrival, per message)",
        c["p50"], c["p99"], c["max"]
    );
    println!(
        "  deliveries/s        {:.0}  (first send to last receive: {:.3} s)",
        f(&r["deliveries_per_sec"]),
        f(&r["first_send_to_last_receive_secs"])
    );
    if !r["server_cpu_secs"].is_null() {
        println!("  server CPU          {:.3} s", f(&r["server_cpu_secs"]));
    }
    if !r["deliveries_per_server_cpu_sec"].is_null() {
        println!("  deliveries/server CPU-s  {:.0}", f(&r["deliveries_per_server_cpu_sec"]));
    }
    if let Some(m) = r["server_rss"].as_object() {
        println!(
            "  server RSS          {:.1} MiB before, {:.1} MiB connected, {:.1} MiB after publishing ({} slow subscribers)",
            f(&m["before_connect"]) / 1048576.0,
            f(&m["connected"]) / 1048576.0,
            f(&m["after_publish"]) / 1048576.0,
            r["slow_subscribers"]
        );
    }
    println!("  loadgen CPU         {:.3} s", f(&r["loadgen_cpu_secs"]));
}

fn print_hold(r: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
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
