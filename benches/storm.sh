#!/usr/bin/env bash
# Reconnect storm with resume: ringcast against Socket.IO 4 with connection state recovery.
# Every server pinned to core 0, the load on core 1. Each run: N subscribers of one channel at
# R msgs/s; after 3 s every client drops, is away D seconds, and comes back resuming; 5 s more
# of publishing. Modes: the old sockets closed (the server sees the drop), or left open and
# unread (a silent drop the server has not noticed).
#
# A silent drop holds the old and the new sockets at once, on both sides, so its N is capped
# by the open-file limit (20,000 per process here): SILENT_N. Socket.IO's silent run uses
# SIO_SILENT_N (1000: at 2000 its server stopped answering its own control endpoint within
# 10 s). ringcast keeps HISTORY messages per stream (1000: at 20 msgs/s the default 100 is 5 s,
# shorter than 15,000 reconnects with replay take on one core, so clients get `reset`).
#
#   benches/storm.sh [N] [rate] [away-seconds] [SIO_N]     # defaults: 15000 20 2 2000
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-15000}
rate=${2:-20}
away=${3:-2}
sio_n=${4:-2000}
silent_n=${SILENT_N:-9000}
sio_silent_n=${SIO_SILENT_N:-1000}
history=${HISTORY:-1000}
out=target/bench/storm
mkdir -p "$out"
cargo build --release --quiet --workspace
(cd benches/socketio && [ -d node_modules ] || npm ci --silent)
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
ringcast_run() { # mode clients
  taskset -c 0 target/release/ringcast --data-dir none --listen 127.0.0.1:18150 --api-listen 127.0.0.1:18151 --shards 1 \
    --log-level warn --history-size "$history" &
  local pid=$!
  wait_port 18151
  taskset -c 1 timeout 300 target/release/loadgen resume --target 127.0.0.1:18150 -n "$2" \
    --sources 127.0.0.1-127.0.0.10 --pub-url http://127.0.0.1:18151/v1/publish --pub-rate "$rate" \
    --before 3s --away "${away}s" --after 5s --mode "$1" --server-pid $pid --max-duration 280s \
    >"$out/ringcast-$1-$2.json"
  kill -TERM $pid; wait $pid || true
}
sio_run() { # mode clients
  (cd benches/socketio && exec taskset -c 0 timeout 200 node server.js 18160) &
  local pid=$!
  wait_port 18160
  local spid; spid=$(pgrep -P "$pid" -x node || echo "$pid") # timeout runs node as its child
  (cd benches/socketio && taskset -c 1 timeout 180 node storm.js --url http://127.0.0.1:18160 \
    --clients "$2" --rate "$rate" --before 3 --away "$away" --after 5 --mode "$1" \
    --silent-close keep --server-pid "$spid") >"$out/socketio-$1-$2.json" || true
  kill $pid 2>/dev/null; wait $pid 2>/dev/null || true
  pkill -f "node server.js 18160" 2>/dev/null || true
  sleep 1
}
ringcast_run close "$n"
ringcast_run close "$sio_n"
ringcast_run silent "$silent_n"
ringcast_run silent "$sio_n"
sio_run reset "$sio_n"
sio_run silent "$sio_silent_n"
python3 - "$out" "$n" "$sio_n" "$silent_n" "$sio_silent_n" <<'PY'
import json, sys
out, n, sio_n, silent_n, sio_silent_n = sys.argv[1], *sys.argv[2:]
print("| server | drop | clients | missing (clients) | duplicates | resumed / recovered | resets | caught up | catch-up p50 / p99 / max | server CPU before the drop | server CPU in the storm |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
pc = lambda v: "%.0f %%" % (v * 100) if v is not None else "n/a"
def ring(mode, k):
    r = json.load(open(f"{out}/ringcast-{mode}-{k}.json"))
    c = r["catch_up_ms"]
    print("| ringcast | %s | %d | %d (%d) | %d | %d | %s | %d/%d | %s / %s / %s ms | %s | %s |" % (
        mode, r["clients"], r["missing"], r["clients_with_missing"], r["duplicates"], r["resumed"],
        sum(r["resets"].values()), r["caught_up"], r["clients"], c["p50"], c["p99"], c["max"],
        pc(r.get("server_cpu_steady")), pc(r.get("server_cpu_in_storm"))))
def sio(mode, k):
    r = json.load(open(f"{out}/socketio-{mode}-{k}.json"))
    c = r["catchup_ms"]
    print("| Socket.IO 4.8.4 | %s | %d | %d (%d) | %d | %d | - | %d/%d | %s / %s / %s ms | %s | %s |" % (
        mode, r["clients"], r["missing_total"], r["clients_with_missing"], r["duplicates_total"], r["recovered"],
        r["clients"] - r["never_caught_up"], r["clients"], c["p50"], c["p99"], c["max"],
        pc(r.get("server_cpu_steady")), pc(r.get("server_cpu_in_storm"))))
ring("close", n); ring("close", sio_n); ring("silent", silent_n); ring("silent", sio_n)
sio("reset", sio_n); sio("silent", sio_silent_n)
PY
