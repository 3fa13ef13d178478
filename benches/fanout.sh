#!/usr/bin/env bash
# Fan-out and push delivery, ringcast against a tokio-tungstenite broadcast server, same pins.
#
# For each publish rate, 19,000 subscribers (from 10 loopback source addresses) receive 5 s of
# 64-byte messages: ringcast with one shard pinned to core 0, then the peer
# (benches/tungstenite-broadcast, built from crates.io) pinned to core 0; loadgen on core 1.
# Then the user-push run: 19,000 connections, one user each, a steady stream of pushes to
# random users. Results go to target/bench/*.json; a markdown row per run is printed.
#
# PEERS lists the peer's runtimes to run: 0 is tokio's current-thread runtime (the default),
# N its multi-thread runtime with N workers (still pinned to core 0, like ringcast).
#
#   [PEERS="0 2"] benches/fanout.sh [subscribers] [rates...]      # defaults: 19000 20 100 300
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-19000}
shift || true
rates=("$@")
[ ${#rates[@]} -gt 0 ] || rates=(20 100 300)
out=target/bench
mkdir -p "$out"
cargo build --release --quiet --workspace
(cd benches/tungstenite-broadcast && cargo build --release --quiet)
peer=benches/tungstenite-broadcast/target/release/tungstenite-broadcast
lg=target/release/loadgen
common=(-n "$n" --sources 127.0.0.1-127.0.0.10 --max-duration 180s --json)

wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }

row() {
  python3 - "$1" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l, c = r["latency_us"], r["completion_us"]
cpu = r.get("deliveries_per_server_cpu_sec") or 0
order = ("out of order %d, seq gaps %d" % (r["out_of_order"], r["seq_gaps"])) if r["order_judged_by"] == "server seq" else "order: no server seq"
if r["scenario"] == "push":
    order = "out of order %d, misdelivered %d" % (r["out_of_order"], r["misdelivered"])
print("| %s | %s | %d | %d/%d (missing %d, dup %d, %s) | %.0f | %.0f | %.2f s | %.1f / %.1f / %.1f ms | %.1f / %.1f ms | %.2f s |" % (
    sys.argv[2], r.get("pub_rate"), r.get("messages", r.get("pushes", 0)), r["unique"], r["expected"], r["missing"], r["duplicates"], order,
    r["deliveries_per_sec"], cpu, r["server_cpu_secs"] or 0, l["p50"]/1e3, l["p99"]/1e3, l["p999"]/1e3, c["p50"]/1e3, c["max"]/1e3, r["loadgen_cpu_secs"]))
PY
}

echo "| server | msgs/s | messages | delivered (completeness) | deliveries/s | deliveries per server CPU-s | server CPU | latency p50 / p99 / p999 | completion p50 / max | loadgen CPU |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for rate in "${rates[@]}"; do
  m=$((rate * 5))
  taskset -c 0 target/release/ringcast --data-dir none --listen 127.0.0.1:18100 --api-listen 127.0.0.1:18101 --shards 1 --log-level warn &
  pid=$!
  wait_port 18100
  taskset -c 1 $lg fanout "${common[@]}" --target 127.0.0.1:18100 --path "/ws?channels=bench" \
    --pub-url http://127.0.0.1:18101/v1/publish --messages $m --pub-rate "$rate" --server-pid $pid >"$out/fanout-ringcast-$rate.json"
  kill -TERM $pid; wait $pid
  row "$out/fanout-ringcast-$rate.json" ringcast

  for threads in ${PEERS:-0}; do
    name=tungstenite; label=tokio-tungstenite
    if [ "$threads" != 0 ]; then name=tungstenite-mt$threads; label="tokio-tungstenite (multi-thread, $threads workers)"; fi
    taskset -c 0 $peer 127.0.0.1:18102 127.0.0.1:18103 "$threads" 2>/dev/null &
    pid=$!
    wait_port 18102
    taskset -c 1 $lg fanout "${common[@]}" --target 127.0.0.1:18102 --path / --pub-format raw \
      --pub-url http://127.0.0.1:18103/publish --messages $m --pub-rate "$rate" --server-pid $pid >"$out/fanout-$name-$rate.json"
    kill $pid; wait $pid 2>/dev/null || true
    row "$out/fanout-$name-$rate.json" "$label"
  done
done
echo
for rate in "${rates[@]}"; do
  for threads in ${PEERS:-0}; do
    name=tungstenite; [ "$threads" != 0 ] && name=tungstenite-mt$threads
    python3 - "$out/fanout-ringcast-$rate.json" "$out/fanout-$name-$rate.json" "$rate" "$name" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
ca, cb = a["deliveries_per_server_cpu_sec"], b["deliveries_per_server_cpu_sec"]
print("%s msgs/s: ringcast %.0f vs %s %.0f deliveries per server CPU-second: %.2fx; p99 %.0f vs %.0f ms; missing %d vs %d" % (
    sys.argv[3], ca, sys.argv[4], cb, ca / cb, a["latency_us"]["p99"] / 1e3, b["latency_us"]["p99"] / 1e3, a["missing"], b["missing"]))
PY
  done
done

echo
echo "| user push | pushes/s | pushes | delivered (completeness) | deliveries/s | - | server CPU | latency p50 / p99 / p999 | completion p50 / max | loadgen CPU |"
echo "|---|---|---|---|---|---|---|---|---|---|"
taskset -c 0 target/release/ringcast --data-dir none --listen 127.0.0.1:18100 --api-listen 127.0.0.1:18101 --shards 1 --log-level warn &
pid=$!
wait_port 18100
taskset -c 1 $lg push "${common[@]}" --target 127.0.0.1:18100 --path "/ws?user=u{i}" \
  --pub-url http://127.0.0.1:18101/v1/push --pushes 10000 --pub-rate 2000 --server-pid $pid >"$out/push-ringcast.json"
kill -TERM $pid; wait $pid
row "$out/push-ringcast.json" ringcast
