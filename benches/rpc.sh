#!/usr/bin/env bash
# RPC through ringcast to a backend (benches/rpc-backend, answering at once), server pinned to
# core 0, load and backend on core 1, in one run:
#   1. N clients x R RPC/s with batch_max = 128, then the same with batch_max = 1 (one request
#      per event, the peers' model): upstream events per server CPU-second, RPC latency,
#      lost and mismatched replies, backend requests per event;
#   2. a stalled backend (answers after 30 s; timeout 1 s): how long until the breaker opens,
#      refusal latency while it is open (benches/rpc_probe.py), server memory while the N
#      clients keep sending.
#
#   benches/rpc.sh [N] [rate-per-conn] [calls-per-conn]     # defaults: 5000 2 20
#
# IN_FLIGHT sets the backend's max_in_flight (default 4); DELAY (ms, default 0) makes the backend
# of the batch runs take that long per request, as a real one does.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-5000}
rate=${2:-2}
calls=${3:-20}
out=target/bench/rpc
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
mkdir -p "$out"
cargo build --release --quiet --workspace
(cd benches/rpc-backend && cargo build --release --quiet)
backend=benches/rpc-backend/target/release/rpc-backend
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
rss_kb() { awk '/^VmRSS/ {print $2}' /proc/$1/status; }
config() { # batch_max timeout
  cat >"$out/ringcast-$1.toml" <<TOML
[[upstreams]]
name = "bench"
url = "http://127.0.0.1:19200/rc"
events = ["rpc:*"]
batch_max = $1
timeout = "$2"
max_in_flight = ${IN_FLIGHT:-4}
TOML
}
start_server() { # config-file
  taskset -c 0 target/release/ringcast --data-dir none --listen 127.0.0.1:18250 --api-listen 127.0.0.1:18251 --shards 1 \
    --log-level warn --config "$1" --client-message-rate 100 --client-message-burst 100 &
  server=$!
  wait_port 18251
}
run_batch() { # batch_max
  taskset -c 1 "$backend" 127.0.0.1:19200 "${DELAY:-0}" 2>/dev/null &
  local bpid=$!
  wait_port 19200
  config "$1" 2s
  start_server "$out/ringcast-$1.toml"
  taskset -c 1 timeout 300 target/release/loadgen rpc --target 127.0.0.1:18250 -n "$n" \
    --sources 127.0.0.1-127.0.0.4 --calls-per-conn "$calls" --rate-per-conn "$rate" \
    --api-url http://127.0.0.1:18251 --server-pid "$server" --max-duration 280s --json \
    >"$out/batch-$1.json"
  kill -TERM "$server"; wait "$server" || true
  kill "$bpid"; wait "$bpid" 2>/dev/null || true
}
run_batch 128
run_batch 1

# The stalled backend.
taskset -c 1 "$backend" 127.0.0.1:19200 30000 2>/dev/null &
bpid=$!
wait_port 19200
config 128 1s
start_server "$out/ringcast-128.toml"
rss0=$(rss_kb "$server")
stall_calls=$((rate * 15))
taskset -c 1 timeout 120 target/release/loadgen rpc --target 127.0.0.1:18250 -n "$n" \
  --sources 127.0.0.1-127.0.0.4 --calls-per-conn "$stall_calls" --rate-per-conn "$rate" \
  --api-url http://127.0.0.1:18251 --drain 2s --max-duration 110s --json >"$out/stalled.json" &
lg=$!
# Wait for the clients to be connected, then time from the first calls to the breaker opening.
for _ in $(seq 600); do
  open=$(curl -s localhost:18251/v1/stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["connections"])')
  [ "$open" -ge "$n" ] && break
  sleep 0.05
done
t0=$(date +%s%N)
opened=""
for _ in $(seq 400); do
  state=$(curl -s localhost:18251/v1/stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["upstreams"][0]["breakers"][0])')
  if [ "$state" = open ]; then opened=$(( ($(date +%s%N) - t0) / 1000000 )); break; fi
  sleep 0.02
done
probe=$(taskset -c 1 python3 benches/rpc_probe.py 127.0.0.1:18250 200)
peak=$rss0
for _ in $(seq 20); do r=$(rss_kb "$server"); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.25; done
wait "$lg" || true
kill -TERM "$server"; wait "$server" || true
kill "$bpid"; wait "$bpid" 2>/dev/null || true
python3 - "$out" "$n" "$rate" "$opened" "$probe" "$rss0" "$peak" <<'PY'
import json, sys
out, n, rate, opened, probe, rss0, peak = sys.argv[1:]
print(f"backend delay {__import__('os').environ.get('DELAY', '0')} ms, max_in_flight {__import__('os').environ.get('IN_FLIGHT', '4')}\n")
print(f"| batch_max | clients x RPC/s | events | backend requests per event | events per server CPU-second | RPC latency p50 / p99 / p999 (µs) | lost | mismatched | error replies |")
print("|---|---|---|---|---|---|---|---|---|")
rows = {}
for b in ("128", "1"):
    r = json.load(open(f"{out}/batch-{b}.json"))
    rows[b] = r
    l = r["latency_us"]
    print(f"| {b} | {n} x {rate} | {r['backend_events']} | {r['backend_requests_per_event']:.4f} | {r['events_per_server_cpu_sec']:.0f} | {l['p50']} / {l['p99']} / {l['p999']} | {r['lost']} | {r['mismatched']} | {r['error_replies']} |")
ratio = rows["128"]["events_per_server_cpu_sec"] / rows["1"]["events_per_server_cpu_sec"]
print(f"\nbatch_max 128 against 1: {ratio:.2f}x the events per server CPU-second")
p = json.loads(probe)
s = json.load(open(f"{out}/stalled.json"))
print(f"\nstalled backend (answers after 30 s, timeout 1 s): breaker open {opened} ms after the clients' first calls; "
      f"refusals while open: {p['replies']}, latency p50 / p99 / max {p['latency_ms']['p50']} / {p['latency_ms']['p99']} / {p['latency_ms']['max']} ms; "
      f"server RSS {int(rss0)//1024} MiB before the calls, peak {int(peak)//1024} MiB while {n} clients kept calling "
      f"({s['sent']} calls sent, {s['error_replies']} answered with an error, {s['lost']} unanswered at the end)")

PY
