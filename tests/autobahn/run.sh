#!/usr/bin/env bash
# Runs the Autobahn fuzzing client (cases 1.* to 10.*) against ringcast's /echo endpoint, over
# ws and over wss (TLS 1.3, a self-signed certificate made here with openssl), and fails on any
# FAILED case of either. Installs the suite on first use: autobahntestsuite is Python 2
# code, so it lives in a Python 2.7 virtualenv with its upstream pins (requirements-py27.txt).
#
#   tests/autobahn/run.sh            # build release, run, summarise (about 40 s)
#   RINGCAST_BIN=path tests/autobahn/run.sh   # use an existing binary
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=${AUTOBAHN_VENV:-$root/.venv-autobahn}
out=${AUTOBAHN_REPORTS:-$root/target/autobahn}
port=${AUTOBAHN_PORT:-19001}
tls_port=${AUTOBAHN_TLS_PORT:-19002}

find_python2() {
  local c
  for c in "$(pyenv root 2>/dev/null)/versions/2.7.18/bin/python2.7" \
           "$HOME/.pyenv/versions/2.7.18/bin/python2.7" python2.7 python2; do
    if [ -x "$c" ] || command -v "$c" >/dev/null 2>&1; then
      "$c" -c 'import sys; assert sys.version_info[:2] == (2, 7)' 2>/dev/null && { echo "$c"; return 0; }
    fi
  done
  return 1
}

if [ ! -x "$venv/bin/wstest" ]; then
  py2=$(find_python2) || {
    echo "autobahn: no Python 2.7 found (pyenv 2.7.18 or python2.7 on PATH); the fuzzing client needs it" >&2
    exit 1
  }
  echo "autobahn: installing the test suite into $venv (Python 2.7: $py2)"
  "$py2" -m virtualenv --version >/dev/null 2>&1 || "$py2" -m pip install -q --disable-pip-version-check 'virtualenv<20.22'
  rm -rf "$venv"
  "$py2" -m virtualenv -q "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements-py27.txt" 2>&1 | grep -v DEPRECATION || true
  "$venv/bin/wstest" --help >/dev/null 2>&1 || { echo "autobahn: wstest does not run after install" >&2; exit 1; }
fi

bin=${RINGCAST_BIN:-}
if [ -z "$bin" ]; then
  (cd "$root" && cargo build --release --quiet --bin ringcast)
  bin=$root/target/release/ringcast
fi

rm -rf "$out" && mkdir -p "$out"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$out/key.pem" \
  -out "$out/cert.pem" -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>/dev/null
# Autobahn sends messages up to 16 MiB (case 9); the defaults are sized for push clients.
"$bin" --listen "127.0.0.1:$port" --tls-listen "127.0.0.1:$tls_port" --tls-cert "$out/cert.pem" \
  --tls-key "$out/key.pem" --shards 2 --max-frame-size 20MiB --max-message-size 20MiB \
  --outbox-max-bytes 64MiB --log-level warn 2>"$out/server.log" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
  sleep 0.1
done

cat >"$out/fuzzingclient.json" <<JSON
{
  "outdir": "$out/reports",
  "servers": [{"agent": "ringcast", "url": "ws://127.0.0.1:$port/echo"},
              {"agent": "ringcast-wss", "url": "wss://127.0.0.1:$tls_port/echo"}],
  "cases": ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "8.*", "9.*", "10.*"],
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
JSON
(cd "$out" && timeout 600 "$venv/bin/wstest" -m fuzzingclient -s fuzzingclient.json >"$out/wstest.log" 2>&1) || {
  echo "autobahn: wstest failed; see $out/wstest.log" >&2
  tail -20 "$out/wstest.log" >&2
  exit 1
}
kill -TERM $pid
wait $pid || { echo "autobahn: ringcast did not exit cleanly; see $out/server.log" >&2; exit 1; }
trap - EXIT

python3 "$here/summarize.py" "$out/reports/index.json" "$here/expected.txt"
