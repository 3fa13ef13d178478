#!/usr/bin/env bash
# Performance against an earlier commit, measured in one run on the same pins: user-space RSS
# per idle connection at N connections, and broadcast fan-out at N subscribers and R msgs/s
# (deliveries per server CPU-second and latency percentiles). The earlier commit is built in a
# temporary worktree (or OLD_BIN names a binary already built from it); loadgen is this
# checkout's. Rounds alternate old and new.
#
#   benches/compare.sh [commit] [N] [rate] [rounds]     # defaults: c4c8aa3 19000 200 2
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:-c4c8aa3}
n=${2:-19000}
rate=${3:-200}
rounds=${4:-2}
out=target/bench/compare
mkdir -p "$out"
old_bin=${OLD_BIN:-}
if [ -z "$old_bin" ]; then
  wt=$(mktemp -d)
  trap 'git worktree remove --force "$wt" >/dev/null 2>&1 || true' EXIT
  git worktree add -q --detach "$wt" "$base"
  (cd "$wt" && CARGO_TARGET_DIR="$PWD/target" cargo build --release --quiet --bin ringcast)
  old_bin="$wt/target/release/ringcast"
fi
cargo build --release --quiet --workspace
lg=target/release/loadgen
declare -A bins=([old]="$old_bin" [new]=target/release/ringcast)
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
for round in $(seq "$rounds"); do
  for which in old new; do
    bin=${bins[$which]}
    taskset -c 0 "$bin" --listen 127.0.0.1:18110 --shards 1 --log-level warn &
    pid=$!
    wait_port 18110
    sleep 0.5
    taskset -c 1 $lg hold --target 127.0.0.1:18110 --path /ws -n "$n" --sources 127.0.0.1-127.0.0.10 \
      --hold 3s --server-pid $pid --json >"$out/idle-$which-$round.json"
    kill -TERM $pid; wait $pid
    taskset -c 0 "$bin" --listen 127.0.0.1:18110 --api-listen 127.0.0.1:18111 --shards 1 --log-level warn &
    pid=$!
    wait_port 18110
    taskset -c 1 $lg fanout -n "$n" --sources 127.0.0.1-127.0.0.10 --max-duration 180s --json \
      --target 127.0.0.1:18110 --path "/ws?channels=bench" --pub-url http://127.0.0.1:18111/v1/publish \
      --messages $((rate * 5)) --pub-rate "$rate" --server-pid $pid >"$out/fanout-$which-$round.json"
    kill -TERM $pid; wait $pid
  done
done
python3 - "$out" "$rounds" "$base" "$(git rev-parse --short HEAD)" <<'PY'
import json, sys, statistics as st
out, rounds, base, head = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
print("| build | run | idle RSS per conn | upgrades/s | fan-out deliveries per server CPU-s | delivered | latency p50 / p99 / p999 |")
print("|---|---|---|---|---|---|---|")
agg = {}
for which, name in (("old", base), ("new", head)):
    for r in range(1, rounds + 1):
        i = json.load(open(f"{out}/idle-{which}-{r}.json"))
        f = json.load(open(f"{out}/fanout-{which}-{r}.json"))
        l = f["latency_us"]
        agg.setdefault(which, []).append((i["server_memory"]["rss_per_conn"], f["deliveries_per_server_cpu_sec"]))
        print("| %s (%s) | %d | %.0f B | %.0f | %.0f | %d/%d (missing %d) | %.1f / %.1f / %.1f ms |" % (
            which, name, r, i["server_memory"]["rss_per_conn"], i["upgrades_per_sec"],
            f["deliveries_per_server_cpu_sec"], f["unique"], f["expected"], f["missing"],
            l["p50"] / 1e3, l["p99"] / 1e3, l["p999"] / 1e3))
om = st.median(x[1] for x in agg["old"]); nm = st.median(x[1] for x in agg["new"])
print()
print("median idle RSS per conn: old %.0f B, new %.0f B; median deliveries per server CPU-s: old %.0f, new %.0f (new/old %.3f)" % (
    st.median(x[0] for x in agg["old"]), st.median(x[0] for x in agg["new"]), om, nm, nm / om))
PY
