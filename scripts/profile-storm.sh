#!/usr/bin/env bash
# A whole-machine CPU profile of bench-scale's cold-start storm (as root):
#   scripts/profile-storm.sh [N] [OUT_DIR]
# Runs `bench-scale --nodes N` (cold start only), starts `perf record -a -g` (software clock,
# so it works where hardware counters are not offered) when the floors are done and the first
# daemon is about to be spawned, and records 80 s. Then: perf report -i OUT_DIR/storm.data
# --no-children --sort comm,dso (or --sort sym). Needs the release binaries and linux-perf.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
OUT=${2:-target/profile-storm}
mkdir -p "$OUT"
export HOSTGW_BIN_DIR=${HOSTGW_BIN_DIR:-$PWD/target/release}
target/release/bench-scale --nodes "$N" --churn 0 --steady-secs 5 --no-outages --no-restarts \
  --out "$OUT" >"$OUT/bench.log" 2>&1 &
bench=$!
trap 'kill "$bench" 2>/dev/null || true' INT TERM
until grep -q 'with a route listener in every namespace' "$OUT/bench.log" 2>/dev/null; do
  kill -0 "$bench" 2>/dev/null || { cat "$OUT/bench.log"; exit 1; }
  sleep 0.5
done
perf record -a -F 199 -e cpu-clock -g -o "$OUT/storm.data" -- sleep 80 >"$OUT/perf.log" 2>&1
wait "$bench"
grep -A14 'cold start storm' "$OUT/bench.log"
echo "profile: $OUT/storm.data"
