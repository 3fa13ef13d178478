#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer on the stable toolchain (the coverage flags cargo-fuzz
# passes, without a sanitizer, which would need nightly) and runs each for a bounded time.
#
#   fuzz/run.sh            # every target, 30 s each
#   fuzz/run.sh 300 handshake
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(handshake frame_decoder client_msg push_index token upstream_response log_record)
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares"
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros.
host=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --quiet --bins --target "$host"
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  echo "fuzz: $t for ${secs}s"
  ./target/"$host"/release/"$t" -max_total_time="$secs" -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" "corpus/$t" 2>&1 | grep -E "Done|stat::number_of_executed_units|ERROR|panicked|SUMMARY" || true
  if ls "artifacts/$t"/crash-* >/dev/null 2>&1; then
    echo "fuzz: $t found a crash: $(ls artifacts/$t/crash-* | head -1)" >&2
    exit 1
  fi
done
echo "fuzz: no crash"
