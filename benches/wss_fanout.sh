#!/usr/bin/env bash
# Broadcast over wss against plain ws, in one run: one ringcast shard pinned to core 0 with a
# plain and a TLS listener (a self-signed ECDSA P-256 certificate made here), loadgen on core 1
# with N subscribers of one channel on each in turn, M messages of 64 B at R msgs/s through the
# API. Prints deliveries per server CPU-second, latency and completeness for each, and the
# ratio wss/ws. Rounds alternate ws and wss.
#
#   benches/wss_fanout.sh [N] [R] [rounds]      # defaults: 15000 200 2
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-15000}
rate=${2:-200}
rounds=${3:-2}
cargo build --release --quiet --workspace
out=target/bench/wss
mkdir -p "$out"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$out/key.pem" \
  -out "$out/cert.pem" -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -addext basicConstraints=critical,CA:FALSE 2>/dev/null
lg=target/release/loadgen
for round in $(seq "$rounds"); do
  for which in ws wss; do
    taskset -c 0 target/release/ringcast --data-dir none --listen 127.0.0.1:18300 --api-listen 127.0.0.1:18301 \
      --tls-listen 127.0.0.1:18302 --tls-cert "$out/cert.pem" --tls-key "$out/key.pem" \
      --shards 1 --log-level warn &
    pid=$!
    for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/18301) 2>/dev/null && break; sleep 0.1; done
    if [ "$which" = wss ]; then target=(--target 127.0.0.1:18302 --tls --ca "$out/cert.pem"); else target=(--target 127.0.0.1:18300); fi
    taskset -c 1 $lg fanout "${target[@]}" -n "$n" --sources 127.0.0.1-127.0.0.10 --max-duration 240s --json \
      --path "/ws?channels=bench" --pub-url http://127.0.0.1:18301/v1/publish --size 64 \
      --messages $((rate * 5)) --pub-rate "$rate" --server-pid $pid >"$out/fanout-$which-$round.json"
    kill -TERM $pid
    wait $pid || true
  done
done
python3 - "$out" "$rounds" <<'PY'
import json, sys, statistics
out, rounds = sys.argv[1], int(sys.argv[2])
agg = {}
for r in range(1, rounds + 1):
    for which in ("ws", "wss"):
        f = json.load(open(f"{out}/fanout-{which}-{r}.json"))
        lat = f["latency_us"]
        print("%-3s round %d: %9.0f deliveries per server CPU-s  delivered %d/%d missing %d  p50 %.1f ms  p99 %.1f ms" % (
            which, r, f["deliveries_per_server_cpu_sec"], f["unique"], f["expected"], f["missing"],
            lat["p50"] / 1000, lat["p99"] / 1000))
        agg.setdefault(which, []).append(f["deliveries_per_server_cpu_sec"])
ws, wss = statistics.median(agg["ws"]), statistics.median(agg["wss"])
print("median deliveries per server CPU-s: ws %.0f, wss %.0f (wss/ws %.2f)" % (ws, wss, wss / ws))
PY
