#!/usr/bin/env bash
# wss against the tokio-tungstenite + tokio-rustls peer, in one run: for an ECDSA P-256 and an
# RSA-2048 certificate (made here, self-signed), each server on one thread pinned to core 0
# (ringcast --shards 1; the peer on tokio's current-thread runtime), loadgen on core 1 opening
# N wss connections (TLS 1.3) from 10 loopback addresses as fast as they upgrade and holding
# them 2 s. Prints, per server: upgraded, user-space RSS per idle connection, and TLS
# handshakes (with the upgrade) per server CPU-second.
#
#   benches/wss_peer.sh [N]       # default 15000
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-15000}
cargo build --release --quiet --workspace
(cd benches/tungstenite-broadcast && cargo build --release --quiet)
peer=benches/tungstenite-broadcast/target/release/tungstenite-broadcast
out=target/bench/wss-peer
mkdir -p "$out"
for key in ec rsa; do
  if [ $key = ec ]; then newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256); else newkey=(-newkey rsa:2048); fi
  openssl req -x509 "${newkey[@]}" -nodes -keyout "$out/$key.key" -out "$out/$key.crt" -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE 2>/dev/null
  for server in ringcast peer; do
    if [ $server = ringcast ]; then
      taskset -c 0 target/release/ringcast --data-dir none --listen 127.0.0.1:18400 --api-listen 127.0.0.1:18401 \
        --tls-listen 127.0.0.1:18402 --tls-cert "$out/$key.crt" --tls-key "$out/$key.key" \
        --shards 1 --log-level warn --max-connections $((n + 100)) &
      port=18402
    else
      taskset -c 0 $peer 127.0.0.1:18403 127.0.0.1:18404 0 "$out/$key.crt" "$out/$key.key" 2>/dev/null &
      port=18403
    fi
    pid=$!
    for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
    sleep 0.5
    taskset -c 1 target/release/loadgen hold --target 127.0.0.1:$port --path /ws -n "$n" --tls --ca "$out/$key.crt" \
      --sources 127.0.0.1-127.0.0.10 --hold 2s --server-pid $pid --max-duration 200s --json >"$out/$server-$key.json"
    kill -TERM $pid
    wait $pid || true
    python3 - "$out/$server-$key.json" "$server" "$key" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
m = r["server_memory"]
print("%-8s %-3s upgraded %d/%d  user RSS %5.0f B/conn  handshakes per server CPU-s %5.0f  (server CPU %.2f s, handshake p99 %d us)" % (
    sys.argv[2], sys.argv[3], r["upgraded"], r["attempted"], m["rss_per_conn"],
    r["upgraded"] / max(r["server_cpu_secs"], 1e-9), r["server_cpu_secs"], r["handshake_us"]["p99"]))
PY
  done
done
