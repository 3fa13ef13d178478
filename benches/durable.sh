#!/usr/bin/env bash
# What durable user streams cost, measured on this checkout's build (issue "Delivery you can
# count on"). One shard pinned to core 0, loadgen on core 1, the log on this machine's disk
# under target/bench/durable (not tmpfs).
#
# 1. Throughput: N connected users (one connection each, 10 loopback source addresses), M
#    durable 64-byte pushes to random users over P keep-alive API connections as fast as the
#    answers come (each answer waits for the turn's group commit), the loadgen acking every
#    message. --durability always (an fdatasync per turn) against none (written, not synced),
#    and, for reference, the same pushes to user streams that are not durable (a [[streams]]
#    rule: recoverable, no acks, no log).
#    Prints pushes per second, per server CPU-second, and the API's answer p50/p99.
# 2. Disk and restart: S stored messages (nobody connected: U users, S/U each, 64-byte
#    payloads, through /v1/batch at --durability always), the data directory's bytes per
#    stored message, then a TERM and a restart on the same directory: the time until /readyz
#    answers 200 (the log is replayed before the listeners open), against an empty directory.
#
#   benches/durable.sh [pushes] [pub-conns] [stored] [stored-users]
#   defaults: 40000 128 1000000 20000
set -euo pipefail
cd "$(dirname "$0")/.."
m=${1:-40000}
conns=${2:-128}
stored=${3:-1000000}
susers=${4:-20000}
out=target/bench/durable
mkdir -p "$out"
cargo build --release --quiet --workspace
lg=target/release/loadgen
rc=target/release/ringcast
ports="--listen 127.0.0.1:18130 --api-listen 127.0.0.1:18131"
wait_port() { for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }
[ "${SKIP_PUSH:-}" ] || for users in 1000 19000; do
  for d in always none off; do
    rm -rf "$out/data"
    if [ $d = off ]; then
      printf '[[streams]]\npattern = "user:*"\nguarantee = "recoverable"\n' >"$out/off.toml"
      args="--data-dir none --config $out/off.toml"
    else
      args="--data-dir $out/data --durability $d"
    fi
    taskset -c 0 $rc $args $ports --shards 1 --log-level warn &
    pid=$!
    wait_port 18131
    taskset -c 1 $lg push -n "$users" --sources 127.0.0.1-127.0.0.10 --max-duration 300s --json \
      --target 127.0.0.1:18130 --path "/ws?user=u{i}&device=d" --pub-url http://127.0.0.1:18131/v1/push \
      --pushes "$m" --pub-rate 1000000 --pub-conns "$conns" --server-pid $pid >"$out/push-$users-$d.json"
    curl -s http://127.0.0.1:18131/metrics | awk '$1 ~ /^ringcast_log_syncs_total/ {s += $2} END {print s + 0}' >"$out/syncs-$users-$d"
    kill -TERM $pid; wait $pid
  done
done
[ "${SKIP_PUSH:-}" ] || python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
print("| users | durability | pushes answered | per second | per server CPU-s | fdatasyncs | API p50 / p99 | delivered (missing) |")
print("|---:|---|---:|---:|---:|---:|---:|---:|")
for users in (1000, 19000):
    for d in ("always", "none", "off"):
        f = json.load(open(f"{out}/push-{users}-{d}.json"))
        answered = f["pushes"] - f["publish_errors"]
        span = f["publish_secs"]
        cpu = f["server_cpu_secs"]
        a = f["api_latency_us"]
        syncs = open(f"{out}/syncs-{users}-{d}").read().strip()
        name = {"always": "`always`", "none": "`none`", "off": "not durable"}[d]
        print("| %d | %s | %d | %.0f | %.0f | %s | %.2f / %.2f ms | %d (%d) |" % (users, name, answered,
            answered / span, answered / cpu, syncs, a["p50"] / 1e3, a["p99"] / 1e3, f["unique"], f["missing"]))
PY
[ "${SKIP_STORE:-}" ] && exit 0
payload=$(python3 -c 'print("\"" + "x" * 62 + "\"")')
python3 - "$stored" "$susers" "$payload" "$out/fill" <<'PY'
import sys
stored, users, payload, prefix = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
per_file, n, f = 2000, 0, None
for i in range(stored):
    if i % per_file == 0:
        f = open("%s-%05d.ndjson" % (prefix, i // per_file), "w")
    f.write('{"op":"push","user":"s%d","data":%s}\n' % (i % users, payload))
PY
rm -rf "$out/data"
taskset -c 0 $rc --data-dir "$out/data" $ports --shards 1 --log-level warn &
pid=$!
wait_port 18131
t0=$(date +%s.%N)
ls "$out"/fill-*.ndjson | xargs -P 8 -I{} curl -s -o /dev/null --data-binary @{} http://127.0.0.1:18131/v1/batch
t1=$(date +%s.%N)
count=$(curl -s "http://127.0.0.1:18131/v1/users/s0/mailbox" | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])')
rss_before=$(awk '/^VmRSS/ {print $2 * 1024}' /proc/$pid/status)
kill -TERM $pid; wait $pid
rm -f "$out"/fill-*.ndjson
bytes=$(du -sb "$out/data" | cut -f1)
restart() {  # $1: data dir; prints seconds until /readyz is 200, and RSS then
  local s e p
  s=$(date +%s.%N)
  taskset -c 0 $rc --data-dir "$1" $ports --shards 1 --log-level warn &
  p=$!
  until [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18131/readyz 2>/dev/null)" = 200 ]; do
    kill -0 $p 2>/dev/null || { echo "ringcast exited before it was ready" >&2; exit 1; }
    sleep 0.01
  done
  e=$(date +%s.%N)
  echo "$(python3 -c "print('%.2f' % ($e - $s))") $(awk '/^VmRSS/ {print $2 * 1024}' /proc/$p/status)"
  if [ -n "${2:-}" ]; then curl -s "http://127.0.0.1:18131/v1/users/s0/mailbox" >"$2"; fi
  kill -TERM $p; wait $p
}
restart "$out/data" "$out/mailbox-after" >"$out/restart-full"
read -r full_s full_rss <"$out/restart-full"
after=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["count"])' "$out/mailbox-after")
rm -rf "$out/empty"
restart "$out/empty" >"$out/restart-empty"
read -r empty_s empty_rss <"$out/restart-empty"
python3 - "$stored" "$susers" "$count" "$after" "$bytes" "$t0" "$t1" "$full_s" "$full_rss" "$empty_s" "$empty_rss" "$rss_before" <<'PY'
import sys
stored, users, count, after, disk = map(int, sys.argv[1:6])
t0, t1, full_s = map(float, sys.argv[6:9])
full_rss = int(sys.argv[9]); empty_s = float(sys.argv[10]); empty_rss, rss_before = int(sys.argv[11]), int(sys.argv[12])
print()
print("stored %d messages (64-byte payloads) for %d users through /v1/batch in %.1f s (%.0f per second, --durability always)" % (stored, users, t1 - t0, stored / (t1 - t0)))
print("user s0's mailbox: %d before the restart, %d after" % (count, after))
print("data directory: %d bytes, %.1f per stored message" % (disk, disk / stored))
print("restart to /readyz 200: %.2f s with them (RSS %.0f MiB; %.0f MiB before the restart), %.2f s empty (RSS %.0f MiB)" % (
    full_s, full_rss / 2**20, rss_before / 2**20, empty_s, empty_rss / 2**20))
PY
