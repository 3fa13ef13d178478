#!/usr/bin/env bash
# The overload manager on and off, under the same storm (issue "Staying up under pressure").
# One shard pinned to core 0, loadgen on core 1, plain ws on loopback.
#
# `loadgen overload`: R readers subscribe to one channel and read everything; then N clients
# arrive at RATE per second, each stops reading once upgraded (a growing share of slow
# readers), while M messages of B bytes are published to the channel at P per second (faster
# than a slow reader's send floor: they read nothing). When the last message is out, the storm
# clients go and the run measures the time until the server is normal again (/readyz 200, no
# overload action on, a new client admitted).
#
# Runs: "baseline" (manager on, no storm: the readers' unloaded latency), "on" (the storm,
# --memory-budget BUDGET), "off" (the storm, --overload off). The "off" server runs inside a
# cgroup v1 memory controller limited to OFF_LIMIT (where the host has one), which bounds its
# RSS; socket buffers are bounded by the kernel's tcp_mem, whatever the cgroup. Each run writes JSON and an RSS-over-time SVG under
# target/bench/overload/.
#
#   benches/overload.sh [readers] [storm] [rate] [messages] [pub-rate] [bytes] [budget]
#   defaults: 200 6000 400 4000 200 4096 256MiB
set -euo pipefail
cd "$(dirname "$0")/.."
readers=${1:-200}
storm=${2:-6000}
rate=${3:-400}
m=${4:-4000}
prate=${5:-200}
size=${6:-4096}
budget=${7:-256MiB}
off_limit=${OFF_LIMIT:-2G}
out=target/bench/overload
mkdir -p "$out"
cargo build --release --quiet --workspace
lg=target/release/loadgen
rc=target/release/ringcast
ports="--listen 127.0.0.1:18140 --api-listen 127.0.0.1:18141"
wait_port() { for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }
cg=""
if [ -d /sys/fs/cgroup/memory ] && [ -w /sys/fs/cgroup/memory ]; then
  cg=/sys/fs/cgroup/memory/ringcast-bench-off
  mkdir -p "$cg"
  echo "$off_limit" >"$cg/memory.limit_in_bytes"
fi
pid=""
trap '[ -n "$pid" ] && kill -TERM $pid 2>/dev/null || true' EXIT
for run in baseline on off; do
  case $run in
    baseline) args="--memory-budget $budget"; n=0 ;;
    on) args="--memory-budget $budget"; n=$storm ;;
    off) args="--overload off --memory-budget $budget"; n=$storm ;;
  esac
  taskset -c 0 $rc $args ${EXTRA:-} $ports --shards 1 --data-dir none --log-level warn 2>"$out/server-$run.log" &
  pid=$!
  if [ $run = off ] && [ -n "$cg" ]; then echo $pid >"$cg/cgroup.procs"; fi
  wait_port 18141
  taskset -c 1 $lg overload --target 127.0.0.1:18140 --api-url http://127.0.0.1:18141 \
    --readers "$readers" -n "$n" --rate "$rate" --sources 127.0.0.1-127.0.0.20 \
    -m "$m" --pub-rate "$prate" --size "$size" --server-pid $pid --max-duration 240s \
    --recovery-timeout 60s --json --rss-plot "$out/rss-$run.svg" >"$out/$run.json" || true
  if kill -0 $pid 2>/dev/null; then kill -TERM $pid; wait $pid || true; else echo "$run: the server is gone" >&2; fi
  if [ -n "$cg" ] && [ $run = off ]; then
    echo "off: cgroup peak $(cat $cg/memory.max_usage_in_bytes) bytes, OOM kills $(awk '/oom_kill/ {print $2}' $cg/memory.oom_control 2>/dev/null || echo ?)" | tee "$out/off-cgroup.txt"
  fi
done
[ -n "$cg" ] && rmdir "$cg" 2>/dev/null || true
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
print("| run | storm admitted / refused | readers p50 / p99 / max (ms) | missing | server RSS max (MiB) | kernel TCP max (MiB) | slow-consumer closes | back to normal |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for run in ("baseline", "on", "off"):
    try:
        r = json.load(open(f"{out}/{run}.json"))
    except Exception as e:
        print(f"| {run} | (no report: {e}) |")
        continue
    s = r["storm"]
    refused = sum(s["refused_by_status"].values())
    l = r["latency_us"]
    c = r.get("server_counters") or {}
    rec = r["recovery_ms"]
    print(f"| {run} | {s['admitted']} / {refused} | {l['p50']/1000:.1f} / {l['p99']/1000:.1f} / {l['max']/1000:.1f} | {r['missing']} | "
          f"{(r['server_rss_max'] or 0)/2**20:.0f} | {r['kernel_tcp_memory_max']/2**20:.0f} | {c.get('slow_consumer_closes','?')} | "
          f"{'%.2f s' % (rec/1000) if rec is not None else 'not within 60 s'} |")
PY
