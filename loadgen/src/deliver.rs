//! The publish side of `fanout` and `push` (a paced schedule over keep-alive connections) and
//! the delivery report built from what every receiving thread tracked.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::engine;
use crate::publish;
use crate::track::{Mode, Tracker};

/// Publishes `count` messages at `rate` over `conns` keep-alive connections (message `i` goes
/// on connection `i % conns` at time `i / rate`), so a server that answers only once a
/// publish is queued everywhere does not slow the schedule. `body(i, t_ns)` makes each body.
/// Returns (failed publishes, first send ns, last send ns, failures by status, and the sum of
/// the delivery reports the server answered with, if it sends ringcast's).
pub(crate) fn publish_loop(
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
                    let mut reported = [0u64; REPORT_FIELDS.len()];
                    let mut statuses: std::collections::BTreeMap<u16, u64> =
                        std::collections::BTreeMap::new();
                    let mut api = api_histogram();
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
                        let sent = Instant::now();
                        let answer = publisher.post(&body(i, last));
                        let _ = api.record((sent.elapsed().as_micros() as u64).max(1));
                        match answer {
                            Ok((200, resp)) => {
                                if let Ok(v) = serde_json::from_slice::<Value>(&resp) {
                                    for (slot, k) in REPORT_FIELDS.iter().enumerate() {
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
                    (errors, last, statuses, reported, api)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()
    });
    let mut errors = 0;
    let mut last = first;
    let mut statuses = std::collections::BTreeMap::new();
    let mut reported = [0u64; REPORT_FIELDS.len()];
    let mut api_latency = api_histogram();
    for r in results {
        let (e, l, st, rep, api) = r.map_err(|_| "a publisher thread panicked".to_string())?;
        let _ = api_latency.add(&api);
        errors += e;
        last = last.max(l);
        for (a, b) in reported.iter_mut().zip(rep) {
            *a += b;
        }
        for (k, v) in st {
            *statuses.entry(k).or_insert(0) += v;
        }
    }
    Ok(Published { errors, first, last, statuses, reported, api_latency })
}

fn api_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("static bounds")
}

/// Percentiles of the publish API's answer times (request sent to answer read), in µs.
pub(crate) fn api_latency_json(h: &hdrhistogram::Histogram<u64>) -> Value {
    let q = |p: f64| h.value_at_quantile(p);
    json!({"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": h.max(), "count": h.len()})
}

/// What the publish side of a run did.
pub(crate) struct Published {
    /// Publishes that failed, and their statuses.
    pub(crate) errors: u64,
    pub(crate) statuses: std::collections::BTreeMap<u16, u64>,
    /// First and last send time (ns since loadgen started).
    pub(crate) first: u64,
    pub(crate) last: u64,
    /// The delivery reports the server answered with, summed field by field
    /// ([`REPORT_FIELDS`]), if it sends ringcast's.
    pub(crate) reported: [u64; REPORT_FIELDS.len()],
    /// How long each publish took to be answered, in µs.
    pub(crate) api_latency: hdrhistogram::Histogram<u64>,
}

/// The fields of ringcast's delivery report, in `Published::reported` order.
const REPORT_FIELDS: [&str; 7] =
    ["recipients", "queued", "dropped", "deferred", "conflated", "offline", "stored"];

pub(crate) fn reported_json(r: [u64; REPORT_FIELDS.len()]) -> Value {
    let mut o = serde_json::Map::new();
    for (k, v) in REPORT_FIELDS.iter().zip(r) {
        o.insert((*k).to_string(), v.into());
    }
    Value::Object(o)
}

/// A live progress line on stderr while deliveries arrive, when stderr is a terminal;
/// stops when dropped.
pub(crate) struct ProgressLine {
    pub(crate) stop: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) thread: Option<JoinHandle<()>>,
}

impl ProgressLine {
    pub(crate) fn start(
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
pub(crate) fn wait_deliveries(
    progress: &AtomicU64,
    expected: u64,
    drain: Duration,
    deadline: Instant,
) {
    let end = (Instant::now() + drain).min(deadline);
    while progress.load(Relaxed) < expected && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub(crate) fn delivery_report(
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
