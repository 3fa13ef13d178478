#!/usr/bin/env bash
# The end-to-end benchmark: builds release, and at 1,000, 5,000 and 19,000 connections runs
# loadgen's hold, fanout and push scenarios against ringcast (one shard pinned to core 0,
# loadgen on core 1), then hold and fanout against the tokio-tungstenite peer under the same
# pins (it has no users, so no push). It writes the tables, the machine and the commands into
# docs/benchmarks.md between the e2e markers, and keeps the JSON in target/bench/e2e/.
#
#   benches/e2e.sh [sizes...]        # default: 1000 5000 19000
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000 5000 19000)
out=target/bench/e2e
rm -rf "$out" && mkdir -p "$out"
cargo build --release --quiet --workspace
(cd benches/tungstenite-broadcast && cargo build --release --quiet)
peer=benches/tungstenite-broadcast/target/release/tungstenite-broadcast
lg=target/release/loadgen
src=(--sources 127.0.0.1-127.0.0.10 --max-duration 180s --json)
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }

start_ringcast() {
  taskset -c 0 target/release/ringcast --data-dir none --listen 127.0.0.1:18200 --api-listen 127.0.0.1:18201 --shards 1 --log-level warn &
  pid=$!
  wait_port 18200
}
start_peer() {
  taskset -c 0 $peer 127.0.0.1:18202 127.0.0.1:18203 2>/dev/null &
  pid=$!
  wait_port 18202
}

for n in "${sizes[@]}"; do
  echo "e2e: $n connections" >&2
  start_ringcast
  taskset -c 1 $lg hold "${src[@]}" --target 127.0.0.1:18200 -n "$n" --hold 3s --server-pid $pid >"$out/hold-ringcast-$n.json"
  kill -TERM $pid; wait $pid
  start_ringcast
  taskset -c 1 $lg fanout "${src[@]}" --target 127.0.0.1:18200 -n "$n" --messages 500 --pub-rate 100 \
    --pub-url http://127.0.0.1:18201/v1/publish --server-pid $pid >"$out/fanout-ringcast-$n.json"
  kill -TERM $pid; wait $pid
  start_ringcast
  taskset -c 1 $lg push "${src[@]}" --target 127.0.0.1:18200 -n "$n" --pushes 5000 --pub-rate 1000 \
    --pub-url http://127.0.0.1:18201/v1/push --server-pid $pid >"$out/push-ringcast-$n.json"
  kill -TERM $pid; wait $pid

  start_peer
  taskset -c 1 $lg hold "${src[@]}" --target 127.0.0.1:18202 --path / -n "$n" --hold 3s --server-pid $pid >"$out/hold-tungstenite-$n.json"
  kill $pid; wait $pid 2>/dev/null || true
  start_peer
  taskset -c 1 $lg fanout "${src[@]}" --target 127.0.0.1:18202 --path / --pub-format raw -n "$n" --messages 500 --pub-rate 100 \
    --pub-url http://127.0.0.1:18203/publish --server-pid $pid >"$out/fanout-tungstenite-$n.json"
  kill $pid; wait $pid 2>/dev/null || true
done

python3 - "$out" "${sizes[@]}" <<'PY'
import json, os, platform, subprocess, sys, datetime
out, sizes = sys.argv[1], sys.argv[2:]
def load(name):
    p = os.path.join(out, name + ".json")
    return json.load(open(p)) if os.path.exists(p) else None
def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception:
        return "?"
cpu = sh("lscpu | sed -n 's/^Model name: *//p'") or platform.processor()
mem = sh("free -g | awk '/^Mem:/{print $2}'")
lines = []
lines.append("<!-- BEGIN e2e: written by benches/e2e.sh; do not edit by hand -->")
lines.append("## End-to-end at 1,000, 5,000 and 19,000 connections")
lines.append("")
lines.append("Written by `benches/e2e.sh` on %s UTC (commit %s), on %s: %s CPUs (%s), %s GiB, Linux %s, %s." % (
    datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M"), sh("git rev-parse --short HEAD"), platform.node() or "this machine",
    sh("nproc"), cpu, mem, platform.release(), sh("rustc --version")))
lines.append("Each server runs pinned to core 0 (ringcast with `--shards 1`); loadgen runs on core 1 with 10 source addresses.")
lines.append("Commands, for N in %s:" % ", ".join(sizes))
lines.append("")
lines.append("```")
lines.append("loadgen hold   --target WS -n N --hold 3s --server-pid PID")
lines.append("loadgen fanout --target WS -n N --messages 500 --pub-rate 100 --pub-url API/v1/publish --server-pid PID   # peer: --path / --pub-format raw")
lines.append("loadgen push   --target WS -n N --pushes 5000 --pub-rate 1000 --pub-url API/v1/push --server-pid PID")
lines.append("```")
lines.append("")
lines.append("| hold: N | server | upgraded | upgrades/s | handshake p99 | user-space RSS / conn | kernel slab / conn (both ends) | loadgen CPU |")
lines.append("|---|---|---|---|---|---|---|---|")
for n in sizes:
    for srv in ("ringcast", "tungstenite"):
        r = load("hold-%s-%s" % (srv, n))
        if not r: continue
        m, k = r.get("server_memory") or {}, r.get("kernel_memory") or {}
        lines.append("| %s | %s | %d/%d | %.0f | %.1f ms | %.0f B | %.0f B | %.2f s |" % (
            n, "ringcast" if srv == "ringcast" else "tokio-tungstenite", r["upgraded"], r["attempted"], r["upgrades_per_sec"],
            r["handshake_us"]["p99"] / 1e3, m.get("rss_per_conn", float("nan")), k.get("slab_per_conn_both_ends", float("nan")), r["loadgen_cpu_secs"]))
lines.append("")
lines.append("| fanout (64 B, 100 msgs/s, 500 messages): N | server | delivered (missing, dup) | deliveries/s | deliveries per server CPU-s | latency p50 / p99 / p999 | completion max | loadgen CPU |")
lines.append("|---|---|---|---|---|---|---|---|")
for n in sizes:
    for srv in ("ringcast", "tungstenite"):
        r = load("fanout-%s-%s" % (srv, n))
        if not r: continue
        l = r["latency_us"]
        lines.append("| %s | %s | %d/%d (%d, %d) | %.0f | %.0f | %.1f / %.1f / %.1f ms | %.1f ms | %.2f s |" % (
            n, "ringcast" if srv == "ringcast" else "tokio-tungstenite", r["unique"], r["expected"], r["missing"], r["duplicates"],
            r["deliveries_per_sec"], r.get("deliveries_per_server_cpu_sec") or 0, l["p50"] / 1e3, l["p99"] / 1e3, l["p999"] / 1e3,
            r["completion_us"]["max"] / 1e3, r["loadgen_cpu_secs"]))
lines.append("")
lines.append("| push (64 B, 1,000 pushes/s to random users, 5,000 pushes): N | server | delivered (missing, misdelivered) | latency p50 / p99 / p999 / max | server CPU | loadgen CPU |")
lines.append("|---|---|---|---|---|---|")
for n in sizes:
    r = load("push-ringcast-%s" % n)
    if not r: continue
    l = r["latency_us"]
    lines.append("| %s | ringcast | %d/%d (%d, %d) | %.2f / %.2f / %.2f / %.2f ms | %.2f s | %.2f s |" % (
        n, r["unique"], r["expected"], r["missing"], r["misdelivered"], l["p50"] / 1e3, l["p99"] / 1e3, l["p999"] / 1e3, l["max"] / 1e3,
        r["server_cpu_secs"] or 0, r["loadgen_cpu_secs"]))
lines.append("")
lines.append("The peer has no users, so it has no push row. Its user-space RSS includes tokio-tungstenite's 128 KiB read buffer per connection.")
lines.append("<!-- END e2e -->")
section = "\n".join(lines) + "\n"
doc = "docs/benchmarks.md"
text = open(doc).read()
b, e = "<!-- BEGIN e2e", "<!-- END e2e -->"
if b in text and e in text:
    start = text.index(b)
    end = text.index(e) + len(e) + 1
    text = text[:start] + section + text[end:]
else:
    text = text.rstrip("\n") + "\n\n" + section
open(doc, "w").write(text)
print(section)
PY
