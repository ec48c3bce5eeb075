#!/usr/bin/env bash
# The flake hunt: the whole suite from a fresh clone of HEAD, RUNS times in a row on an idle machine, then LOADED
# more times while stress-ng keeps every core busy. Each run's pytest summary line goes to OUT/summary.txt and its
# whole output to OUT/run-N.log; the script exits non-zero if any run failed.
#   bash tests/flake_hunt.sh [RUNS=5] [LOADED=2] [OUT=/tmp/flake-hunt]
# Needs stress-ng (apt-get install stress-ng) and the Debian packages .ci/run installs.
set -euo pipefail
runs=${1:-5}; loaded=${2:-2}; out=${3:-/tmp/flake-hunt}
repo=$(cd "$(dirname "$0")/.." && pwd)
command -v stress-ng >/dev/null || { echo "flake hunt: needs stress-ng (apt-get install stress-ng)" >&2; exit 2; }
rm -rf "$out" && mkdir -p "$out"
clone="$out/clone"
git clone -q "$repo" "$clone"
(cd "$clone" && make install >"$out/install.log" 2>&1) || { tail -40 "$out/install.log" >&2; exit 1; }
failed=0
for i in $(seq 1 $((runs + loaded))); do
  stress_pid=""
  if [ "$i" -gt "$runs" ]; then
    stress-ng --cpu "$(nproc)" --timeout 3600s >/dev/null 2>&1 &
    stress_pid=$!
  fi
  start=$(date +%s)
  if (cd "$clone" && .venv/bin/python -m pytest -p no:cacheprovider >"$out/run-$i.log" 2>&1); then rc=0; else rc=$?; fi
  [ -n "$stress_pid" ] && { kill "$stress_pid" 2>/dev/null || true; wait "$stress_pid" 2>/dev/null || true; }
  what=$([ -n "$stress_pid" ] && echo "under stress-ng" || echo "idle")
  echo "run $i ($what, $(($(date +%s) - start)) s, exit $rc): $(tail -1 "$out/run-$i.log")" | tee -a "$out/summary.txt"
  [ "$rc" -eq 0 ] || failed=1
done
exit "$failed"
