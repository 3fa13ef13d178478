//! Every scenario against a real ringcast on loopback, at small N: loadgen's counts must equal
//! what the server says it did (its `/v1/stats` counters, before and after each run).
#![allow(clippy::unwrap_used)] // reason: test code; a panic is the failure report

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The ringcast binary `cargo test --workspace` builds next to this test.
fn ringcast_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = dir.join("ringcast");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo test --workspace` (or `cargo build`) first",
        bin.display()
    );
    bin
}

struct Ringcast {
    child: Child,
    ws: SocketAddr,
    api: SocketAddr,
}

impl Ringcast {
    fn start(args: &[&str]) -> Ringcast {
        let mut child = Command::new(ringcast_bin())
            .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", "--shards", "2"])
            .args(["--data-dir", "none"])
            .args(args)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut addr = |marker: &str| -> SocketAddr {
            loop {
                let line = lines.next().expect("ringcast exited").unwrap();
                if let Some(i) = line.find(marker) {
                    return line[i + marker.len()..]
                        .split_whitespace()
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap();
                }
            }
        };
        let ws = addr("listening on ws://");
        let api = addr("API on http://");
        std::thread::spawn(move || for _ in lines {});
        Ringcast { child, ws, api }
    }

    fn totals(&self) -> Value {
        let mut s = TcpStream::connect(self.api).unwrap();
        s.write_all(b"GET /v1/stats HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let body = out.split_once("\r\n\r\n").unwrap().1;
        serde_json::from_str::<Value>(body).unwrap()["totals"].clone()
    }

    fn delta(&self, before: &Value, key: &str) -> u64 {
        self.totals()[key].as_u64().unwrap() - before[key].as_u64().unwrap()
    }
}

impl Drop for Ringcast {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn loadgen(args: &[&str]) -> Value {
    let out =
        Command::new(env!("CARGO_BIN_EXE_loadgen")).args(args).arg("--json").output().unwrap();
    assert!(
        out.status.success(),
        "loadgen {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {v}"))
}

#[test]
fn every_scenario_matches_the_servers_counters() {
    // Outboxes hold about a dozen 20 KB messages: room for a reader that is briefly behind
    // (loadgen here is a debug build), none for a subscriber that stops reading.
    let r = Ringcast::start(&["--outbox-max-bytes", "256KiB", "--slow-consumer-timeout", "300ms"]);
    let ws = r.ws.to_string();
    let publish = format!("http://{}/v1/publish", r.api);
    let push = format!("http://{}/v1/push", r.api);

    let before = r.totals();
    let hold = loadgen(&["hold", "--target", &ws, "-n", "50", "--hold", "300ms"]);
    assert_eq!(u(&hold, "upgraded"), 50);
    assert_eq!(r.delta(&before, "upgrades"), 50);

    let before = r.totals();
    let fan = loadgen(&[
        "fanout",
        "--target",
        &ws,
        "-n",
        "40",
        "--messages",
        "25",
        "--pub-rate",
        "200",
        "--pub-url",
        &publish,
    ]);
    assert_eq!((u(&fan, "unique"), u(&fan, "missing"), u(&fan, "duplicates")), (1000, 0, 0));
    assert_eq!(r.delta(&before, "pushes_queued"), u(&fan, "received"));
    assert_eq!(u(&fan["server_reported"], "queued"), u(&fan, "received"), "reports match receipts");
    assert_eq!(u(&fan, "seq_gaps"), 0);

    let before = r.totals();
    let p = loadgen(&[
        "push",
        "--target",
        &ws,
        "-n",
        "30",
        "--pushes",
        "120",
        "--pub-rate",
        "400",
        "--pub-url",
        &push,
    ]);
    assert_eq!((u(&p, "unique"), u(&p, "missing"), u(&p, "misdelivered")), (120, 0, 0));
    assert_eq!(r.delta(&before, "pushes_queued"), 120);
    assert_eq!(u(&p["server_reported"], "queued"), 120);

    let before = r.totals();
    let c = loadgen(&[
        "churn",
        "--target",
        &ws,
        "-n",
        "60",
        "--rate",
        "300",
        "--lifetime",
        "150ms",
        "--sample",
        "100ms",
    ]);
    assert_eq!(
        (u(&c, "upgraded"), u(&c, "closed_by_client"), u(&c, "close_answered")),
        (60, 60, 60)
    );
    assert_eq!(r.delta(&before, "upgrades"), 60);
    assert_eq!(r.delta(&before, "closed_by_client"), 60);

    let before = r.totals();
    let e = loadgen(&[
        "echo",
        "--target",
        &ws,
        "-n",
        "20",
        "--messages-per-conn",
        "5",
        "--msg-rate",
        "500",
    ]);
    assert_eq!((u(&e, "sent"), u(&e, "unique"), u(&e, "missing")), (100, 100, 0));
    assert_eq!(r.delta(&before, "messages_in"), 100);

    // Every 4th subscriber stops reading: 12 MB each overflows its socket buffers and then its
    // outbox, so it is shed and closed, while the readers get everything.
    let before = r.totals();
    let s = loadgen(&[
        "slow",
        "--target",
        &ws,
        "-n",
        "20",
        "--messages",
        "600",
        "--size",
        "20000",
        // 300/s (6 MB/s per reader): a debug-built loadgen on a loaded 2-core machine keeps
        // up; at 600/s its readers' 256 KiB outboxes overflowed too, and the test was flaky.
        "--pub-rate",
        "300",
        "--pub-url",
        &publish,
        "--slow-fraction",
        "0.25",
        "--drain",
        "5s",
    ]);
    assert_eq!(u(&s, "slow_subscribers"), 5);
    assert_eq!((u(&s, "expected"), u(&s, "unique"), u(&s, "missing")), (15 * 600, 15 * 600, 0));
    let rep = &s["server_reported"];
    assert_eq!(
        u(rep, "queued") + u(rep, "dropped") + u(rep, "deferred"),
        u(rep, "recipients"),
        "every recipient accounted for"
    );
    assert_eq!(r.delta(&before, "pushes_queued"), u(rep, "queued"));
    assert_eq!(r.delta(&before, "pushes_dropped"), u(rep, "dropped"));
    // The channel keeps history, so what the slow subscribers have no room for waits for gap
    // repair (deferred) rather than being dropped; they never read again, so they are closed.
    assert!(u(rep, "deferred") > 0, "the slow subscribers were shed");
    assert!(r.delta(&before, "pushes_deferred") >= u(rep, "deferred"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(r.delta(&before, "slow_consumers_closed"), 5);
}

#[test]
fn clear_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["hold", "--target", "127.0.0.1:1", "-n", "5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach 127.0.0.1:1"));
    let out =
        Command::new(env!("CARGO_BIN_EXE_loadgen")).args(["hold", "-n", "30000"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("open files") && err.contains("tuning/"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["hold", "--sources", "banana"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an IP address"));
    // A refused upgrade is reported with its status.
    let r = Ringcast::start(&[]);
    let ws = r.ws.to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["hold", "--target", &ws, "--path", "/nowhere", "-n", "3", "--hold", "0s", "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["refused_by_status"]["404"], 3);
}

#[test]
fn resume_loses_nothing_whether_the_drop_is_seen_or_silent() {
    let r = Ringcast::start(&[]);
    let ws = r.ws.to_string();
    let publish = format!("http://{}/v1/publish", r.api);
    for mode in ["close", "silent"] {
        let before = r.totals();
        let v = loadgen(&[
            "resume",
            "--target",
            &ws,
            "-n",
            "40",
            "--pub-rate",
            "50",
            "--before",
            "500ms",
            "--away",
            "300ms",
            "--after",
            "500ms",
            "--mode",
            mode,
            "--channel",
            &format!("storm-{mode}"),
            "--pub-url",
            &publish,
        ]);
        assert_eq!((u(&v, "missing"), u(&v, "duplicates")), (0, 0), "{mode}: {v}");
        assert_eq!((u(&v, "reconnected"), u(&v, "resumed")), (40, 40), "{mode}: {v}");
        assert_eq!(u(&v, "clients_behind_at_end"), 0, "{mode}: {v}");
        assert_eq!(u(&v, "caught_up"), 40, "{mode}: {v}");
        // What the clients missed while away came from the history.
        assert!(r.delta(&before, "replayed") > 0, "{mode}: {v}");
    }
}

/// wss: fanout and echo over TLS against ringcast's `--tls-listen`, verifying the server with
/// `--ca` (a committed self-signed localhost certificate), and `--insecure`.
#[test]
fn scenarios_run_over_wss() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let (crt, key) = (format!("{fixtures}/localhost.crt"), format!("{fixtures}/localhost.key"));
    let mut child = Command::new(ringcast_bin())
        .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", "--shards", "2"])
        .args(["--data-dir", "none"])
        .args(["--tls-listen", "127.0.0.1:0", "--tls-cert", &crt, "--tls-key", &key])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut wss, mut api) = (None, None);
    while wss.is_none() || api.is_none() {
        let line = lines.next().expect("ringcast exited").unwrap();
        for (marker, slot) in [("listening on wss://", &mut wss), ("API on http://", &mut api)] {
            if let Some(i) = line.find(marker) {
                let a: SocketAddr =
                    line[i + marker.len()..].split_whitespace().next().unwrap().parse().unwrap();
                *slot = Some(a);
            }
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let (wss, api) = (wss.unwrap().to_string(), api.unwrap());
    let publish = format!("http://{api}/v1/publish");
    let fan = loadgen(&[
        "fanout",
        "--target",
        &wss,
        "--tls",
        "--ca",
        &crt,
        "-n",
        "40",
        "--messages",
        "25",
        "--pub-rate",
        "200",
        "--pub-url",
        &publish,
    ]);
    assert_eq!((u(&fan, "unique"), u(&fan, "missing"), u(&fan, "duplicates")), (1000, 0, 0));
    assert!(fan["target"].as_str().unwrap().starts_with("wss://"), "{}", fan["target"]);
    let echo = loadgen(&[
        "echo",
        "--target",
        &wss,
        "--tls",
        "--insecure",
        "-n",
        "10",
        "--messages-per-conn",
        "20",
        "--msg-rate",
        "400",
    ]);
    assert_eq!(u(&echo, "received"), 200, "{echo}");
    // A wrong name fails verification: no upgrade, and loadgen says why.
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "hold",
            "--target",
            &wss,
            "--tls",
            "--ca",
            &crt,
            "--sni",
            "other.test",
            "-n",
            "3",
            "--hold",
            "100ms",
            "--json",
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(v["upgraded"], 0, "{v} {}", String::from_utf8_lossy(&out.stderr));
    assert!(v["errors"].to_string().contains("certificate"), "{v}");
    let _ = child.kill();
    let _ = child.wait();
}

/// A backend answering every event of each request with its data, on its own threads; the
/// requests it served are counted.
fn echo_backend() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let requests = std::sync::Arc::new(AtomicU64::new(0));
    let r = requests.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let r = r.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Value = serde_json::from_slice(&buf[end + 4..end + 4 + len]).unwrap();
                    buf.drain(..end + 4 + len);
                    r.fetch_add(1, SeqCst);
                    let results: Vec<Value> = body["events"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| serde_json::json!({"data": e["data"]}))
                        .collect();
                    let out =
                        serde_json::to_vec(&serde_json::json!({ "results": results })).unwrap();
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", out.len());
                    if s.write_all(head.as_bytes()).and_then(|_| s.write_all(&out)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, requests)
}

#[test]
fn rpc_counts_every_reply_and_the_backend_requests() {
    let (backend, requests) = echo_backend();
    let cfg = std::env::temp_dir().join(format!("loadgen-rpc-{}.toml", std::process::id()));
    std::fs::write(
        &cfg,
        format!(
            "[[upstreams]]\nname = \"b\"\nurl = \"http://{backend}/rc\"\nevents = [\"rpc:*\"]\n"
        ),
    )
    .unwrap();
    let r = Ringcast::start(&["--config", cfg.to_str().unwrap()]);
    let v = loadgen(&[
        "rpc",
        "--target",
        &r.ws.to_string(),
        "-n",
        "50",
        "--calls-per-conn",
        "4",
        "--rate-per-conn",
        "5",
        "--api-url",
        &format!("http://{}", r.api),
    ]);
    let _ = std::fs::remove_file(&cfg);
    assert_eq!((u(&v, "sent"), u(&v, "unique")), (200, 200), "{v}");
    assert_eq!((u(&v, "lost"), u(&v, "mismatched"), u(&v, "error_replies")), (0, 0, 0), "{v}");
    assert_eq!(u(&v, "backend_events"), 200, "{v}");
    let per_event = v["backend_requests_per_event"].as_f64().unwrap();
    let served = requests.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(u(&v, "backend_requests"), served, "{v}");
    assert!(per_event > 0.0 && per_event <= 1.0, "{v}");
    assert!(v["latency_us"]["p99"].as_u64().is_some(), "{v}");
}

#[test]
fn overload_counts_admitted_and_refused_clients_and_the_time_back_to_normal() {
    // A small budget: some hundred deaf clients with 512 KiB outboxes fill it, admission
    // stops, the rest of the storm is refused with 503, and the readers still get everything.
    let r = Ringcast::start(&[
        "--memory-budget",
        "64MiB",
        "--outbox-max-bytes",
        "512KiB",
        "--overload-interval",
        "20ms",
        "--overload-hold",
        "200ms",
        "--socket-send-buffer",
        "32KiB",
    ]);
    let (ws, api) = (r.ws.to_string(), format!("http://{}", r.api));
    let o = loadgen(&[
        "overload",
        "--target",
        &ws,
        "--api-url",
        &api,
        "--readers",
        "5",
        "-n",
        "300",
        "--rate",
        "300",
        "--messages",
        "300",
        "--pub-rate",
        "100",
        "--size",
        "16000",
        "--storm-rcvbuf",
        "16384",
        "--recovery-timeout",
        "20s",
        "--sample",
        "50ms",
    ]);
    let storm = &o["storm"];
    let refused = storm["refused_by_status"]["503"].as_u64().unwrap_or(0);
    assert!(refused > 0, "the storm met a stopped admission: {storm}");
    assert_eq!(u(storm, "attempted"), 300);
    let errors: u64 = storm["errors"].as_object().unwrap().values().filter_map(Value::as_u64).sum();
    assert_eq!(
        u(storm, "admitted") + refused + errors,
        300,
        "every attempt has an outcome: {storm}"
    );
    assert!(u(storm, "admitted") > 0, "{storm}");
    assert_eq!((u(&o, "expected"), u(&o, "missing")), (5 * 300, 0), "the readers got everything");
    assert!(o["server_alive"].as_bool().unwrap());
    assert!(o["recovery_ms"].as_u64().is_some(), "back to normal: {o}");
    assert!(u(&o, "samples_not_ready") > 0, "/readyz said not ready while admission was stopped");
    let c = &o["server_counters"];
    assert_eq!(c["overload_refusals"]["stop_admitting"].as_u64().unwrap(), refused);
    assert!(!o["series"]["rows"].as_array().unwrap().is_empty());
}
