#!/usr/bin/env bash
# Installs what building and testing hostgw needs on a fresh Debian 12 machine.
# Idempotent: a second run installs nothing.
set -euo pipefail

PACKAGES=(
  protobuf-compiler libprotobuf-dev  # etcd-client's build needs protoc and descriptor.proto
  etcd-server etcd-client    # a real etcd (3.4, v3 API) for the daemon's tests
  iproute2 nftables ethtool iputils-ping tcpdump procps util-linux openssl curl
  containernetworking-plugins  # the reference bridge/host-local, benchmarked against
  iperf3 sockperf            # data-plane comparison
  containerd runc busybox-static umoci  # a real container runtime for cluster tests
  iptables                   # the chained portmap plugin programs hostPorts with it
  golang-go golang-github-appc-cni-dev  # a libcni client (netns-tests/cni-client) for chained plugins
  clang libbpf-dev           # ebpf/: the BPF C programs (clang -target bpf, libbpf's headers)
  libelf-dev zlib1g-dev pkg-config make  # ebpf/: libbpf-sys builds its vendored libbpf
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

# --- manifests (issue 6): offline validation of the Kubernetes manifests -----------------
# kubernetes-validate bundles the Kubernetes JSON schemas, so tests/tests/manifests.rs runs
# offline; PyYAML comes with it. Debian's own python3 refuses a plain `pip install`
# (externally managed), hence the fallback.
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "setup: installing kubernetes-validate"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  python3 -m pip install --quiet kubernetes-validate==1.37.0 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages kubernetes-validate==1.37.0
  # Under pyenv the command appears only once its shim exists.
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
  command -v kubernetes-validate >/dev/null 2>&1 \
    || { echo "setup: kubernetes-validate installed but not on PATH" >&2; exit 1; }
fi
command -v systemd-analyze >/dev/null 2>&1 || echo "setup: systemd-analyze missing; the unit is only parsed, not verified"
# --- end manifests -----------------------------------------------------------------------
