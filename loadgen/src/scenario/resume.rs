//! `resume`: N subscribers of a channel while messages are published at R/s; after `--before`
//! every connection drops (`--mode close`: the sockets are closed, so the server sees it;
//! `silent`: they are left open and unread, a drop the server has not noticed), and after
//! `--away` each client reconnects and resumes from the last position it saw (`?resume=`).
//! Every client checks its stream: each message must be the next seq, unless a `reset` said
//! where it continues. Reports missing, duplicated, resets by reason, how long until every
//! client caught up with what was published before it came back, and the server's CPU in
//! the storm.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use crate::args::*;
use crate::deliver::*;
use crate::engine::{self, MessageSink};
use crate::run::*;
use crate::track::field;
use crate::{probe, publish};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum DropMode {
    /// Close every socket: the server sees the drop.
    Close,
    /// Leave every socket open and unread: the server has not noticed yet.
    Silent,
}

#[derive(Args, Debug)]
pub(crate) struct ResumeArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// Where messages are published (ringcast's /v1/publish).
    #[arg(long, default_value = "http://127.0.0.1:8081/v1/publish")]
    pub(crate) pub_url: String,
    #[arg(long, default_value = "bench")]
    pub(crate) channel: String,
    /// Messages published per second, from the first connection to the end.
    #[arg(long, default_value_t = 20.0)]
    pub(crate) pub_rate: f64,
    /// Steady traffic before the drop.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub(crate) before: Duration,
    /// Time between the drop and the reconnects.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub(crate) away: Duration,
    /// Publishing after the reconnects start.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) after: Duration,
    #[arg(long, value_enum, default_value_t = DropMode::Close)]
    pub(crate) mode: DropMode,
    #[command(flatten)]
    pub(crate) publish: PublishOpts,
}

/// What one client knows of its stream, across its connections.
#[derive(Clone, Debug, Default)]
struct Follow {
    epoch: u64,
    seq: u64,
    missing: u64,
    duplicates: u64,
    resets: [u64; 3],
    resumed: u64,
    /// Time (ns) this client got to `target` after coming back.
    caught_up_ns: Option<u64>,
}

const RESET_REASONS: [&str; 3] = ["history_exceeded", "epoch_changed", "outbox_full"];

struct Sink {
    first: u32,
    follows: Vec<Follow>,
    stream: String,
    /// The seq to reach (the stream's position when the reconnects began), 0 before.
    target: Arc<AtomicU64>,
    back_at: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
}

impl MessageSink for Sink {
    fn message(&mut self, conn: u32, text: bool, data: &[u8], now_ns: u64) {
        if !text {
            return;
        }
        let Some(f) = self.follows.get_mut((conn - self.first) as usize) else { return };
        // The common case without a JSON parse (a parse per message would make loadgen, not
        // the server, the bottleneck): `{"type":"message","stream":"<stream>",…"seq":N,…}`.
        if data.starts_with(br#"{"type":"message","stream":""#) {
            let rest = &data[br#"{"type":"message","stream":""#.len()..];
            if !(rest.starts_with(self.stream.as_bytes())
                && rest.get(self.stream.len()) == Some(&b'"'))
            {
                return;
            }
            let Some(seq) = field(data, b"\"seq\":") else { return };
            self.received.fetch_add(1, Relaxed);
            if seq <= f.seq {
                f.duplicates += 1;
                return;
            }
            f.missing += seq - f.seq - 1;
            f.seq = seq;
            let target = self.target.load(Relaxed);
            if target > 0 && f.caught_up_ns.is_none() && seq >= target {
                f.caught_up_ns = Some(now_ns.saturating_sub(self.back_at.load(Relaxed)));
            }
            return;
        }
        let Ok(m) = serde_json::from_slice::<Value>(data) else { return };
        match m["type"].as_str() {
            Some("welcome") => {
                if let Some(p) = m["streams"].get(&self.stream) {
                    let (e, s) = (p["epoch"].as_u64().unwrap_or(0), p["seq"].as_u64().unwrap_or(0));
                    if f.epoch == 0 {
                        (f.epoch, f.seq) = (e, s);
                    }
                }
            }
            Some("resumed") => f.resumed += 1,
            Some("reset") => {
                if let Some(i) = RESET_REASONS.iter().position(|r| m["reason"] == *r) {
                    f.resets[i] += 1;
                }
                f.epoch = m["epoch"].as_u64().unwrap_or(f.epoch);
                f.seq = m["seq"].as_u64().unwrap_or(f.seq);
                // Told where the stream continues: caught up if that is past the target.
                let target = self.target.load(Relaxed);
                if target > 0 && f.caught_up_ns.is_none() && f.seq >= target {
                    f.caught_up_ns = Some(now_ns.saturating_sub(self.back_at.load(Relaxed)));
                }
            }
            _ => {}
        }
    }
}

fn resume_path(base: &str, stream: &str, f: &Follow) -> String {
    let json = format!(r#"{{"{stream}":{{"epoch":{},"seq":{}}}}}"#, f.epoch, f.seq);
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}resume={}", base64url(json.as_bytes()))
}

fn base64url(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &x)| n | u32::from(x) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// The stream's last seq, from the history API next to the publish URL.
fn stream_seq(url: &publish::Url, key: Option<String>, stream: &str) -> Result<u64, String> {
    let mut u = url.clone();
    u.path = format!("/v1/streams/{stream}");
    let mut c = publish::Publisher::new(u, key);
    let (status, body) = c.get()?;
    let v: Value = serde_json::from_slice(&body).map_err(|e| format!("stream position: {e}"))?;
    match (status, v["seq"].as_u64()) {
        (200, Some(s)) => Ok(s),
        _ => Err(format!("stream position: {status} {v}")),
    }
}

pub(crate) fn resume(a: ResumeArgs) -> Result<(), String> {
    let url = publish::parse_url(&a.pub_url)?;
    let n = a.conn.connections;
    let stream = format!("channel:{}", a.channel);
    let base = a.conn.path_or(&format!("/ws?channels={}", a.channel));
    let (target, back_at, received) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let pid = a.conn.server_pid;
    // Phase 1: connect, follow.
    let states: Arc<Mutex<Vec<Follow>>> = Arc::new(Mutex::new(vec![Follow::default(); n]));
    let make = |states: Arc<Mutex<Vec<Follow>>>| {
        let (stream, target, back_at, received) =
            (stream.clone(), target.clone(), back_at.clone(), received.clone());
        move |first: usize, count: usize| {
            let follows =
                states.lock().map(|s| s[first..first + count].to_vec()).unwrap_or_default();
            Sink {
                first: first as u32,
                follows,
                stream: stream.clone(),
                target: target.clone(),
                back_at: back_at.clone(),
                received: received.clone(),
            }
        }
    };
    let keep_open = a.mode == DropMode::Silent;
    let extras = Extras { keep_open, ..Default::default() };
    let run = start_connections(&a.conn, &base, extras, make(states.clone()))?;
    run.wait_settled(n, a.conn.json);
    std::thread::sleep(Duration::from_secs(1)); // subscriptions reach their home shard
    let total = (a.pub_rate * (a.before + a.away + a.after).as_secs_f64()).ceil() as u64;
    let own0 = probe::own_cpu_seconds();
    let started = Instant::now();
    let deadline = run.deadline;
    std::thread::scope(|scope| -> Result<(), String> {
        let publisher = scope.spawn(|| {
            publish_loop(
                &url,
                a.publish.api_key.clone(),
                a.publish.pub_conns,
                total,
                a.pub_rate,
                deadline,
                |i, t| {
                    let p = publish::payload(i, t, None, a.publish.size);
                    format!(r#"{{"channel":{},"data":{p}}}"#, json!(a.channel)).into_bytes()
                },
            )
        });
        // The server's CPU while it only follows the live stream (the last part of the before
        // window, after the publisher's first second): the floor the storm adds to.
        let steady_from =
            a.before.saturating_sub(Duration::from_secs(1)).min(Duration::from_secs(1));
        std::thread::sleep(steady_from);
        let steady0 = (pid.map(probe::proc_cpu_seconds).transpose()?, Instant::now());
        std::thread::sleep(a.before - steady_from);
        let steady1 = pid.map(probe::proc_cpu_seconds).transpose()?;
        let steady_secs = steady0.1.elapsed().as_secs_f64();
        // The drop.
        let (tally1, sinks) = run.finish()?;
        let kept = tally1.kept.len();
        let _held = tally1.kept; // silent: the sockets stay open, unread, to the end
        let at_drop: Vec<u64> = {
            let mut st = states.lock().map_err(|_| "state lock")?;
            for s in &sinks {
                for (k, f) in s.follows.iter().enumerate() {
                    st[s.first as usize + k] = f.clone();
                }
            }
            let mut v: Vec<u64> = st.iter().map(|f| f.seq).collect();
            v.sort_unstable();
            v
        };
        std::thread::sleep(a.away);
        // Phase 2: everyone back, each from its own position.
        let seq_now = stream_seq(&url, a.publish.api_key.clone(), &stream)?;
        target.store(seq_now.max(1), Relaxed);
        back_at.store(engine::now_ns(), Relaxed);
        let cpu0 = pid.map(probe::proc_cpu_seconds).transpose()?;
        let storm_start = Instant::now();
        let paths: Vec<String> = {
            let st = states.lock().map_err(|_| "state lock")?;
            st.iter().map(|f| resume_path(&base, &stream, f)).collect()
        };
        let extras = Extras { paths: Some(Arc::new(paths)), ..Default::default() };
        let run2 = start_connections(&a.conn, &base, extras, make(states.clone()))?;
        run2.wait_settled(n, a.conn.json);
        let published = publisher.join().map_err(|_| "publisher panicked")??;
        // Drain: wait until every client has the last message, or the drain time.
        let last_seq = stream_seq(&url, a.publish.api_key.clone(), &stream)?;
        let end = (Instant::now() + a.publish.drain).min(deadline);
        let storm_secs = storm_start.elapsed().as_secs_f64();
        let cpu1 = pid.map(probe::proc_cpu_seconds).transpose()?;
        while Instant::now() < end && received.load(Relaxed) < (n as u64) * total {
            std::thread::sleep(Duration::from_millis(20));
        }
        let (tally2, sinks) = run2.finish()?;
        let follows: Vec<&Follow> = sinks.iter().flat_map(|s| s.follows.iter()).collect();
        let mut catch: Vec<u64> =
            follows.iter().filter_map(|f| f.caught_up_ns).map(|n| n / 1000).collect();
        catch.sort_unstable();
        let pick = |q: f64| {
            catch
                .get(((catch.len() as f64 * q) as usize).min(catch.len().saturating_sub(1)))
                .copied()
        };
        let resets: serde_json::Map<String, Value> = RESET_REASONS
            .iter()
            .enumerate()
            .map(|(i, r)| (r.to_string(), json!(follows.iter().map(|f| f.resets[i]).sum::<u64>())))
            .collect();
        let behind = follows.iter().filter(|f| f.seq < last_seq).count();
        let report = json!({
            "scenario": "resume",
            "mode": match a.mode { DropMode::Close => "close", DropMode::Silent => "silent" },
            "clients": n,
            "reconnected": tally2.upgraded,
            "kept_open_silently": kept,
            "published": total - published.errors,
            "publish_errors": published.errors,
            "last_seq": last_seq,
            "seq_at_reconnect": seq_now,
            "seq_seen_at_drop": {"min": at_drop.first(), "p50": at_drop.get(at_drop.len() / 2), "max": at_drop.last()},
            "missing": follows.iter().map(|f| f.missing).sum::<u64>(),
            "clients_with_missing": follows.iter().filter(|f| f.missing > 0).count(),
            "duplicates": follows.iter().map(|f| f.duplicates).sum::<u64>(),
            "resumed": follows.iter().map(|f| f.resumed).sum::<u64>(),
            "resets": resets,
            "clients_behind_at_end": behind,
            "caught_up": catch.len(),
            "catch_up_ms": {"p50": pick(0.5).map(|u| u as f64 / 1e3), "p99": pick(0.99).map(|u| u as f64 / 1e3), "max": catch.last().map(|u| *u as f64 / 1e3)},
            "storm_secs": storm_secs,
            "server_cpu_in_storm": match (cpu0, cpu1) { (Some(a), Some(b)) => json!((b - a) / storm_secs), _ => Value::Null },
            "server_cpu_steady": match (steady0.0, steady1) { (Some(a), Some(b)) if steady_secs > 0.0 => json!((b - a) / steady_secs), _ => Value::Null },
            "loadgen_cpu_secs": probe::own_cpu_seconds() - own0,
            "run_secs": started.elapsed().as_secs_f64(),
            "connect": connect_summary(&tally2),
        });
        // One JSON object, with or without --json: the fields are the report.
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        Ok(())
    })
}
