//! Starting connections over client threads, waiting for them, and summing what they saw.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::args::*;
use crate::engine::{self, MessageSink, Plan, Progress, Tally};
use crate::output;
use crate::track::Tracker;

pub(crate) fn cpus() -> usize {
    ringcast_sys::allowed_cpus().len().max(1)
}

pub(crate) fn check_nofile(n: usize) -> Result<(), String> {
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

/// Connections under way: the threads, their shared progress, and when it all started.
pub(crate) struct Running<S> {
    pub(crate) handles: Vec<JoinHandle<(Tally, S)>>,
    pub(crate) progress: Arc<Progress>,
    pub(crate) start: Instant,
    pub(crate) deadline: Instant,
    pub(crate) threads: usize,
}

/// What a scenario adds to the plain connect-and-hold plan.
#[derive(Clone, Debug, Default)]
pub(crate) struct Extras {
    pub(crate) lifetime: Option<Duration>,
    pub(crate) slow_every: usize,
    /// (messages per connection, total rate, size) for echo and rpc.
    pub(crate) send: Option<(u64, f64, usize)>,
    /// rpc: the method each message calls (else messages are sent as they are).
    pub(crate) rpc_method: Option<Arc<str>>,
    /// A path per connection (resume), and whether to leave sockets open at stop.
    pub(crate) paths: Option<Arc<Vec<String>>>,
    pub(crate) keep_open: bool,
    /// SO_RCVBUF for each socket (0: the kernel's default).
    pub(crate) rcvbuf: usize,
}

/// Starts the client threads, each with a sink made by `sink(first, count)`.
pub(crate) fn start_connections<S: MessageSink + Send + 'static>(
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
    let tls = crate::tls::client_config(a)?;
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
                rpc_method: extras.rpc_method.clone(),
            }),
            paths: extras.paths.clone(),
            keep_open: extras.keep_open,
            tls: tls.clone(),
            rcvbuf: extras.rcvbuf,
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
    pub(crate) fn wait_settled(&self, n: usize, quiet: bool) {
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

    pub(crate) fn finish(self) -> Result<(Tally, Vec<S>), String> {
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

pub(crate) fn connect_summary(tally: &Tally) -> Value {
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
        "acks_sent": tally.acks_sent,
    })
}

pub(crate) fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

pub(crate) fn merged_latency(trackers: &[Tracker]) -> hdrhistogram::Histogram<u64> {
    let mut h =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("static bounds");
    for t in trackers {
        let _ = h.add(&t.latency_us);
    }
    h
}

/// `--hdr-out` and `--plot` for a microsecond histogram.
pub(crate) fn write_outputs(
    a: &ConnArgs,
    h: &hdrhistogram::Histogram<u64>,
    what: &str,
) -> Result<(), String> {
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
