#!/usr/bin/env bash
# Assembles the hostgw image without a registry or a container build: an OCI image made
# with umoci from the built binaries, the shared libraries they and `nft` load, and
# busybox-static as the userland of the install step. The same image as Containerfile's,
# made from this machine's files so the tests run exactly what they built.
#
#   manifests/build-image.sh BIN_DIR OUT_DIR [TAG]
#
#   BIN_DIR  holds `hostgw` and `hostgw-routed` (target/release or target/debug)
#   OUT_DIR  receives layout/ (an OCI image layout) and hostgw-image.tar (that layout as a
#            tarball: `ctr images import OUT_DIR/hostgw-image.tar` names it
#            localhost/hostgw:TAG)
#   TAG      default 0.1.0
#
# Needs umoci, busybox-static, nftables, ldd and containernetworking-plugins (the chained
# portmap and bandwidth plugins, carried at /cni-plugins with their Debian version in
# /cni-plugins/VERSION; install-cni.sh puts them on hosts that lack them). All on Debian 12
# via scripts/setup.sh.
set -euo pipefail

if [ $# -lt 2 ]; then
  sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//;/^set -e/d' >&2
  exit 2
fi
BIN_DIR=$(cd "$1" && pwd)
OUT_DIR=$2
TAG=${3:-0.1.0}
NAME=localhost/hostgw
HERE=$(cd "$(dirname "$0")" && pwd)

for tool in umoci ldd; do
  command -v "$tool" >/dev/null || { echo "build-image: $tool is missing" >&2; exit 1; }
done
BUSYBOX=$(command -v busybox) || { echo "build-image: busybox(-static) is missing" >&2; exit 1; }
NFT=$(command -v nft || echo /usr/sbin/nft)
[ -x "$NFT" ] || { echo "build-image: nft is missing" >&2; exit 1; }
if ldd "$BUSYBOX" >/dev/null 2>&1; then
  echo "build-image: $BUSYBOX is dynamically linked; install busybox-static" >&2
  exit 1
fi
for b in hostgw hostgw-routed; do
  [ -x "$BIN_DIR/$b" ] || { echo "build-image: $BIN_DIR/$b is not built" >&2; exit 1; }
done
CNI_PLUGINS_DIR=${CNI_PLUGINS_DIR:-/usr/lib/cni}
CHAINED="portmap bandwidth"
for p in $CHAINED; do
  [ -x "$CNI_PLUGINS_DIR/$p" ] || { echo "build-image: $CNI_PLUGINS_DIR/$p is missing; install containernetworking-plugins" >&2; exit 1; }
done
CNI_PLUGINS_VERSION=$(dpkg-query -W -f='${Version}' containernetworking-plugins 2>/dev/null || echo unknown)

mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
STAGE=$(mktemp -d "$OUT_DIR/.rootfs.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
R=$STAGE/rootfs
mkdir -p "$R"/{bin,sbin,usr/local/bin,usr/sbin,etc/hostgw,tmp,run,var/run,lib64,proc,sys,dev,cni-plugins}
chmod 1777 "$R/tmp"

# copy_libs BINARY: every shared object it loads (ldd), at the same path, symlinks resolved.
copy_libs() {
  ldd "$1" | awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}' | while read -r lib; do
    mkdir -p "$R$(dirname "$lib")"
    cp -L "$lib" "$R$lib"
  done
}

install -m 0755 "$BIN_DIR/hostgw-routed" "$R/usr/local/bin/hostgw-routed"
install -m 0755 "$BIN_DIR/hostgw" "$R/hostgw"
install -m 0755 "$NFT" "$R/usr/sbin/nft"
for b in "$BIN_DIR/hostgw-routed" "$BIN_DIR/hostgw" "$NFT"; do copy_libs "$b"; done

# The chained plugins run on the host (the runtime executes them there), so only the
# binaries are carried, with the Debian version they came from.
for p in $CHAINED; do install -m 0755 "$CNI_PLUGINS_DIR/$p" "$R/cni-plugins/$p"; done
echo "containernetworking-plugins $CNI_PLUGINS_VERSION (Debian)" >"$R/cni-plugins/VERSION"

install -m 0755 "$BUSYBOX" "$R/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  case $applet in busybox) continue ;; esac
  [ -e "$R/bin/$applet" ] || ln -s busybox "$R/bin/$applet"
done

install -m 0755 "$HERE/install-cni.sh" "$R/install-cni.sh"
install -m 0755 "$HERE/enable-forwarding.sh" "$R/enable-forwarding.sh"
install -m 0644 "$HERE/10-hostgw.conflist" "$R/etc/hostgw/10-hostgw.conflist"
install -m 0644 "$HERE/net-conf.json" "$R/etc/hostgw/net-conf.json"
printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$R/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' >"$R/etc/group"
for f in /etc/protocols /etc/services; do [ -f "$f" ] && cp "$f" "$R$f"; done

# Every binary must start inside the rootfs, with nothing from the host.
for b in /usr/local/bin/hostgw-routed /usr/sbin/nft; do
  chroot "$R" "$b" --version >/dev/null || { echo "build-image: $b does not start in the rootfs" >&2; exit 1; }
done

L=$OUT_DIR/layout
rm -rf "$L" "$OUT_DIR/hostgw-image.tar"
umoci init --layout "$L"
umoci new --image "$L:$TAG"
umoci insert --image "$L:$TAG" "$R" /
umoci config --image "$L:$TAG" \
  --os linux --architecture amd64 \
  --config.entrypoint /usr/local/bin/hostgw-routed --config.entrypoint run \
  --clear config.cmd \
  --config.env PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.env RUST_LOG=info \
  --config.workingdir / \
  --config.label org.opencontainers.image.title=hostgw \
  --config.label org.opencontainers.image.description="hostgw-routed, the hostgw CNI plugin and its installer" \
  --config.label org.opencontainers.image.version="$TAG" \
  --config.label io.hostgw.cni-plugins.version="$CNI_PLUGINS_VERSION"
umoci gc --layout "$L"

# umoci names the manifest with org.opencontainers.image.ref.name=TAG; containerd takes the
# full name from io.containerd.image.name, so `ctr images import` needs no --base-name.
sed -i "s|\"org.opencontainers.image.ref.name\":\"$TAG\"|&,\"io.containerd.image.name\":\"$NAME:$TAG\"|" "$L/index.json"
grep -q "io.containerd.image.name" "$L/index.json" || { echo "build-image: could not name the image in index.json" >&2; exit 1; }

tar -C "$L" -cf "$OUT_DIR/hostgw-image.tar" .
echo "build-image: $NAME:$TAG in $L and $OUT_DIR/hostgw-image.tar" >&2
