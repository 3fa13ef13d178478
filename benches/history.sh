#!/usr/bin/env bash
# What stream history costs, measured on this checkout's build:
#
# 1. Fan-out with history against without: 19,000 subscribers of one channel (10 loopback
#    source addresses), 64-byte publishes at R msgs/s for 5 s, the channel recoverable (the
#    default) or ephemeral (a [[streams]] rule). One shard pinned to core 0, loadgen on core 1,
#    rounds alternating. Prints deliveries per server CPU-second and latency per run.
# 2. Memory per history entry: M channels nobody subscribes to, each sent H publishes of
#    64-byte payloads through /v1/batch, so every message is kept; RSS growth per entry, less
#    the frame bytes the histories report (ringcast_history_bytes).
#
#   benches/history.sh [subscribers] [rate] [rounds] [channels] [per-channel]
#   defaults: 19000 200 2 1000 100
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-19000}
rate=${2:-200}
rounds=${3:-2}
channels=${4:-1000}
per=${5:-100}
out=target/bench/history
mkdir -p "$out"
cargo build --release --quiet --workspace
lg=target/release/loadgen
printf '[[streams]]\npattern = "bench"\nguarantee = "ephemeral"\n' >"$out/ephemeral.toml"
printf 'history_size = 100\n' >"$out/recoverable.toml"
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
[ "${SKIP_FANOUT:-}" ] && rounds=0
for round in $(seq "$rounds"); do
  for mode in recoverable ephemeral; do
    taskset -c 0 target/release/ringcast --data-dir none --config "$out/$mode.toml" --listen 127.0.0.1:18120 \
      --api-listen 127.0.0.1:18121 --shards 1 --log-level warn &
    pid=$!
    wait_port 18120
    taskset -c 1 $lg fanout -n "$n" --sources 127.0.0.1-127.0.0.10 --max-duration 180s --json \
      --target 127.0.0.1:18120 --path "/ws?channels=bench" --pub-url http://127.0.0.1:18121/v1/publish \
      --messages $((rate * 5)) --pub-rate "$rate" --server-pid $pid >"$out/fanout-$mode-$round.json"
    kill -TERM $pid; wait $pid
  done
done
[ "$rounds" -gt 0 ] && python3 - "$out" "$rounds" <<'PY'
import json, sys, statistics as st
out, rounds = sys.argv[1], int(sys.argv[2])
print("| history | run | deliveries per server CPU-s | delivered | latency p50 / p99 / p999 |")
print("|---|---|---|---|---|")
med = {}
for mode in ("recoverable", "ephemeral"):
    for r in range(1, rounds + 1):
        f = json.load(open(f"{out}/fanout-{mode}-{r}.json"))
        l = f["latency_us"]
        med.setdefault(mode, []).append(f["deliveries_per_server_cpu_sec"])
        print("| %s | %d | %.0f | %d/%d (missing %d) | %.1f / %.1f / %.1f ms |" % (mode, r,
            f["deliveries_per_server_cpu_sec"], f["unique"], f["expected"], f["missing"],
            l["p50"] / 1e3, l["p99"] / 1e3, l["p999"] / 1e3))
rec, eph = st.median(med["recoverable"]), st.median(med["ephemeral"])
print()
print("median deliveries per server CPU-s: recoverable %.0f, ephemeral %.0f (recoverable/ephemeral %.3f)" % (rec, eph, rec / eph))
PY
# Memory per entry: the same publishes to a server that keeps them and to one that does not
# (an ephemeral rule for the h* channels); the difference in RSS, less the frame bytes held, is
# what an entry costs beyond its frame (transient API and allocator memory cancels out).
payload=$(python3 -c 'print("\"" + "x" * 62 + "\"")')
python3 - "$channels" "$per" "$payload" >"$out/batch.ndjson" <<'PY'
import sys
channels, per, payload = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for i in range(per):
    for c in range(channels):
        print('{"op":"publish","channel":"h%d","data":%s}' % (c, payload))
PY
split -l 2000 "$out/batch.ndjson" "$out/batch-part-"
printf '[[streams]]\npattern = "h*"\nguarantee = "ephemeral"\n' >"$out/mem-ephemeral.toml"
printf 'history_size = %d\n' "$per" >"$out/mem-recoverable.toml"
declare -A grew held
for mode in recoverable ephemeral; do
  taskset -c 0 target/release/ringcast --data-dir none --config "$out/mem-$mode.toml" --listen 127.0.0.1:18120 \
    --api-listen 127.0.0.1:18121 --shards 1 --log-level warn &
  pid=$!
  wait_port 18121
  before=$(awk '/^VmRSS/ {print $2 * 1024}' /proc/$pid/status)
  for f in "$out"/batch-part-*; do
    curl -s -o /dev/null --data-binary @"$f" http://127.0.0.1:18121/v1/batch
  done
  sleep 0.5
  after=$(awk '/^VmRSS/ {print $2 * 1024}' /proc/$pid/status)
  grew[$mode]=$((after - before))
  held[$mode]=$(curl -s http://127.0.0.1:18121/metrics | awk '$1 ~ /^ringcast_history_bytes/ {s += $2} END {print s + 0}')
  kill -TERM $pid; wait $pid
done
rm -f "$out"/batch-part-*
python3 - "${grew[recoverable]}" "${grew[ephemeral]}" "${held[recoverable]}" "$((channels * per))" <<'PY'
import sys
rec, eph, held, entries = map(int, sys.argv[1:])
print()
print("history: %d entries, frame bytes held %d (%.1f per entry)" % (entries, held, held / entries))
print("RSS grew %d B keeping them, %d B not keeping them: %.1f B per entry, %.1f B beyond its frame bytes" % (
    rec, eph, (rec - eph) / entries, (rec - eph - held) / entries))
PY
