#!/usr/bin/env bash
# The whole test suite: unit tests, no-root tests of the binaries, root tests in throwaway
# network namespaces (a real etcd, the real kernel), and the fuzz and benchmark smoke runs.
# Root tests refuse to pass without root: they fail with "this test needs root".
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
# This run's namespaces and cgroups carry their own prefix, so its sweep leaves other runs alone.
export HOSTGW_TEST_PREFIX="hgwt-r$$-"
trap 'scripts/cleanup.sh' EXIT
trap 'scripts/cleanup.sh; exit 130' INT TERM

if [ "$(id -u)" != 0 ]; then
  echo "test: NOT ROOT - the root tests in netns-tests/ will fail with 'this test needs root'" >&2
fi

echo "test: building"
cargo build --workspace --bins --quiet
cargo nextest run --workspace --no-fail-fast "$@"
