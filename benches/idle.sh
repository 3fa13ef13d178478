#!/usr/bin/env bash
# Idle-connection cost and upgrade rate of ringcast on one pinned core.
#
# Starts ringcast with one shard pinned to core 0 and loadgen on core 1, opens N connections
# (default 19,000, the most this machine's 20,000 open-file cap allows per process) from 10
# loopback source addresses as fast as the server upgrades them, holds them, and prints the
# server's user-space RSS per connection, the kernel slab bytes per connection and the
# upgrades per second. Run it three times and report the median (as docs/benchmarks.md does).
#
#   benches/idle.sh [N] [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-19000}
runs=${2:-3}
port=${BENCH_PORT:-18090}
cargo build --release --quiet --workspace
out=target/bench
mkdir -p "$out"
for i in $(seq "$runs"); do
  taskset -c 0 target/release/ringcast --data-dir none --listen 127.0.0.1:$port --shards 1 --log-level warn &
  pid=$!
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  sleep 0.5
  taskset -c 1 target/release/loadgen hold --target 127.0.0.1:$port --path /ws -n "$n" \
    --sources 127.0.0.1-127.0.0.10 --hold 3s --server-pid $pid --json >"$out/idle-$i.json"
  kill -TERM $pid
  wait $pid
  python3 - "$out/idle-$i.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
m, k = r["server_memory"], r["kernel_memory"] or {}
print("run: upgraded %d/%d  user RSS %.0f B/conn (anon %.0f)  kernel slab %.0f B/conn (both ends)  upgrades/s %.0f  handshake p99 %d us  server CPU %.2f s  loadgen CPU %.2f s" % (
    r["upgraded"], r["attempted"], m["rss_per_conn"], m["anon_per_conn"],
    k.get("slab_per_conn_both_ends", float("nan")), r["upgrades_per_sec"], r["handshake_us"]["p99"],
    r["server_cpu_secs"], r["loadgen_cpu_secs"]))
PY
done
