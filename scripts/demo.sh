#!/usr/bin/env bash
# The main job: a 3-node hostgw cluster with a real etcd in network namespaces on this
# machine, pods wired by the plugin pinging each other across nodes, `hostgw-routed status`,
# and a full teardown. Everything lives in namespaces named hgwt-*; nothing touches the
# root namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# This run's namespaces and cgroups carry their own prefix, so its sweep leaves other runs alone.
export HOSTGW_TEST_PREFIX="hgwt-r$$-"
trap 'scripts/cleanup.sh' EXIT
trap 'scripts/cleanup.sh; exit 130' INT TERM
echo "demo: building (release)"
cargo build --release --quiet -p hostgw-cni -p hostgw-routed -p hostgw-demo --bins
exec target/release/demo "$@"
