#!/usr/bin/env bash
# Every benchmark in one command, as root: the data-plane comparison suite (bench-dataplane:
# native, hostgw ptp and bridge, a VXLAN overlay, the reference CNI bridge, same node), the
# plugin's ADD benchmark (bench-cni) and the route daemon's benchmarks (bench-routed).
# Release build; everything runs in throwaway namespaces named hgwt-*; output and the
# figures are kept in bench-out/ (dataplane.json, dataplane.svg, *.txt). Arguments go to
# bench-dataplane (e.g. --smoke). BENCHMARKS.md says how the published figures were made.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# This run's namespaces are named hgwt-r<pid>-…, so the sweep on exit or interrupt removes
# only what this run left, never another run's.
export HOSTGW_TEST_PREFIX="hgwt-r$$-"
trap 'scripts/cleanup.sh' EXIT
trap 'scripts/cleanup.sh; exit 130' INT TERM
mkdir -p bench-out
echo "bench: building (release)"
cargo build --release --quiet -p hostgw-cni -p hostgw-routed -p hostgw-bench --bins
echo "bench: $(date -u +%FT%TZ), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)" \
  | tee bench-out/machine.txt

echo "bench: data plane (bench-dataplane)"
target/release/bench-dataplane --out bench-out "$@" 2>&1 | tee bench-out/dataplane.txt

if [ -x target/release/bench-cni ]; then
  echo "bench: CNI ADD/DEL (bench-cni)"
  target/release/bench-cni --json bench-out/cni.json 2>&1 | tee bench-out/cni.txt
else
  echo "bench: bench-cni is not built; skipped"
fi

if [ -x target/release/bench-routed ]; then
  echo "bench: route daemon (bench-routed)"
  target/release/bench-routed 2>&1 | tee bench-out/routed.txt
else
  echo "bench: bench-routed is not built; skipped"
fi
echo "bench: done; figures in bench-out/ (chart: bench-out/dataplane.svg)"
