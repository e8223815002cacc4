#!/usr/bin/env bash
# Installs what building and testing hostgw needs on a fresh Debian 12 machine.
# Idempotent: a second run installs nothing.
set -euo pipefail

PACKAGES=(
  protobuf-compiler          # etcd-client's build needs protoc
  etcd-server etcd-client    # a real etcd (3.4, v3 API) for the daemon's tests
  iproute2 nftables ethtool iputils-ping tcpdump procps util-linux openssl curl
  containernetworking-plugins  # the reference bridge/host-local, benchmarked against
  iperf3 sockperf            # data-plane comparison
  containerd runc busybox-static umoci  # a real container runtime for cluster tests
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
