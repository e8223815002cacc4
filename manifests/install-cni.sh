#!/bin/sh
# Installs the hostgw CNI plugin and its conflist on the host, each in one rename(2), so a
# container runtime never executes a half-written binary or parses a half-written conflist.
# The conflist chains the reference `portmap` (hostPort) and `bandwidth` plugins after
# hostgw, as flannel's does: where the host lacks one of them, it is installed from the
# image (which carries Debian's build, see build-image.sh); a host's own copy is kept.
# Run by the DaemonSet's init container (busybox sh) and usable by hand on any host.
#
#   HOST_ROOT       where the host's / is mounted          (default /host)
#   SRC_PLUGIN      the plugin binary to install            (default /hostgw)
#   SRC_CONFLIST    the conflist to install                 (default /etc/hostgw/10-hostgw.conflist)
#   SRC_CHAINED_DIR the chained plugins of the image        (default /cni-plugins)
#   CHAINED         the chained plugins the conflist needs  (default "portmap bandwidth")
#   CNI_BIN_DIR     plugin directory on the host            (default /opt/cni/bin)
#   CNI_CONF_DIR    conflist directory on the host          (default /etc/cni/net.d)
#   CONFLIST_NAME   file name of the conflist               (default 10-hostgw.conflist)
#
# Each file is copied to a temporary name in its destination directory (same filesystem),
# given its mode, flushed, and renamed over the destination. The old file's inode is never
# written to: a runtime that has it open or is executing it keeps the complete old version.
set -eu

HOST_ROOT=${HOST_ROOT:-/host}
SRC_PLUGIN=${SRC_PLUGIN:-/hostgw}
SRC_CONFLIST=${SRC_CONFLIST:-/etc/hostgw/10-hostgw.conflist}
SRC_CHAINED_DIR=${SRC_CHAINED_DIR:-/cni-plugins}
CHAINED=${CHAINED:-portmap bandwidth}
CNI_BIN_DIR=${CNI_BIN_DIR:-/opt/cni/bin}
CNI_CONF_DIR=${CNI_CONF_DIR:-/etc/cni/net.d}
CONFLIST_NAME=${CONFLIST_NAME:-10-hostgw.conflist}

log() { echo "install-cni: $*" >&2; }

# install_atomic SRC DEST_DIR NAME MODE
install_atomic() {
  src=$1 dir=$2 name=$3 mode=$4
  [ -f "$src" ] || { log "$src does not exist"; exit 1; }
  mkdir -p "$dir"
  # Hidden, and not ending in .conf/.conflist/.json: a runtime scanning the directory
  # never loads the temporary file as a network config.
  tmp="$dir/.$name.hostgw-tmp.$$"
  # A temporary file left by an install killed mid-copy is removed, never renamed.
  trap 'rm -f "$tmp"' EXIT INT TERM
  rm -f "$tmp"
  cp "$src" "$tmp"
  chmod "$mode" "$tmp"
  sync "$tmp" 2>/dev/null || sync
  mv -f "$tmp" "$dir/$name"
  trap - EXIT INT TERM
  log "installed $dir/$name (mode $mode)"
}

# Every source first: never install a new plugin next to a conflist that cannot follow.
for src in "$SRC_PLUGIN" "$SRC_CONFLIST"; do
  [ -f "$src" ] || { log "$src does not exist; nothing installed"; exit 1; }
done
missing=""
for p in $CHAINED; do
  if [ ! -x "$HOST_ROOT$CNI_BIN_DIR/$p" ]; then
    [ -f "$SRC_CHAINED_DIR/$p" ] || { log "the host has no $p and $SRC_CHAINED_DIR/$p does not exist; nothing installed"; exit 1; }
    missing="$missing $p"
  fi
done

# Temporary files of earlier installs that were killed before their rename.
for stale in "$HOST_ROOT$CNI_BIN_DIR"/.*.hostgw-tmp.* \
             "$HOST_ROOT$CNI_CONF_DIR"/."$CONFLIST_NAME".hostgw-tmp.*; do
  if [ -e "$stale" ]; then rm -f "$stale"; fi
done

for p in $CHAINED; do
  case " $missing " in
    *" $p "*) install_atomic "$SRC_CHAINED_DIR/$p" "$HOST_ROOT$CNI_BIN_DIR" "$p" 0755 ;;
    *) log "kept the host's $HOST_ROOT$CNI_BIN_DIR/$p" ;;
  esac
done
install_atomic "$SRC_PLUGIN" "$HOST_ROOT$CNI_BIN_DIR" hostgw 0755
# The conflist last: a runtime that loads it finds every plugin it names.
install_atomic "$SRC_CONFLIST" "$HOST_ROOT$CNI_CONF_DIR" "$CONFLIST_NAME" 0644
