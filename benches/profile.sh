#!/usr/bin/env bash
# Where the fan-out's CPU goes (issue "Ahead of uWebSockets", step 1): one shard pinned to
# core 0, N subscribers of one channel (loadgen fanout on core 1), M messages of B bytes at
# R/s, and `perf record` (software cpu-clock sampling: this VM has no hardware counters) on
# the server while the messages go out. Prints the top entries, self time first, as text
# (written to target/bench/profile-top.txt).
#
#   benches/profile.sh [subscribers] [messages] [rate] [bytes]      # defaults: 15000 1000 200 64
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-15000}
m=${2:-1000}
rate=${3:-200}
size=${4:-64}
out=target/bench
mkdir -p "$out"
command -v perf >/dev/null || { echo "perf is missing (Debian: linux-perf)" >&2; exit 1; }
cargo build --release --quiet --workspace
rc=target/release/ringcast
lg=target/release/loadgen
wait_port() { for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }
taskset -c 0 $rc --listen 127.0.0.1:18150 --api-listen 127.0.0.1:18151 --shards 1 --data-dir none --log-level warn &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true' EXIT
wait_port 18151
secs=$(( m / rate + 2 ))
taskset -c 1 $lg fanout --target 127.0.0.1:18150 --pub-url http://127.0.0.1:18151/v1/publish \
  -n "$n" --sources 127.0.0.1-127.0.0.10 -m "$m" --pub-rate "$rate" --size "$size" \
  --server-pid $pid --max-duration 180s --json >"$out/profile-fanout.json" &
lgpid=$!
# Start sampling once the subscribers are in (the run prints nothing until the end: wait
# for the connection count instead).
for _ in $(seq 600); do
  c=$(curl -s http://127.0.0.1:18151/metrics | awk '$1 ~ /^ringcast_connections\{/ {s += $2} END {print s + 0}')
  [ "$c" -ge "$n" ] && break
  sleep 0.1
done
sleep 1.5
perf record -e cpu-clock -F 1999 -g -p $pid -o "$out/profile.data" -- sleep "$secs" 2>/dev/null
wait $lgpid
perf report -i "$out/profile.data" --stdio --no-children --percent-limit 0.8 --sort symbol -g none 2>/dev/null \
  | grep -v '^$' | head -60 | tee "$out/profile-top.txt"
python3 - "$out/profile-fanout.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_us"]
print(f"fanout: {r['subscribers']} subscribers, {r['unique']} deliveries, missing {r['missing']}, "
      f"p50/p99 {l['p50']/1000:.0f}/{l['p99']/1000:.0f} ms, {r['deliveries_per_server_cpu_sec']:.0f} deliveries per server CPU-s")
PY
