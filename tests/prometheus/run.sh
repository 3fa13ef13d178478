#!/usr/bin/env bash
# Checks the shipped alert rules (deploy/prometheus/ringcast-rules.yml): `promtool check rules`
# for their syntax and `promtool test rules` on their unit tests (ringcast-rules.test.yml).
# Installs Debian's `prometheus` package, which ships promtool, where promtool is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v promtool >/dev/null; then
  echo "promtool not found: installing Debian's prometheus package"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # The package's service is not wanted here: the policy script keeps apt from starting it.
  policy=/usr/sbin/policy-rc.d
  made_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends prometheus \
    || { $sudo apt-get update && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends prometheus; }
  [ -z "$made_policy" ] || $sudo rm -f "$policy"
fi
promtool --version | head -1
promtool check rules deploy/prometheus/ringcast-rules.yml
promtool test rules tests/prometheus/ringcast-rules.test.yml
