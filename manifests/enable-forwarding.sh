#!/bin/sh
# Turns on IP forwarding in the network namespace this runs in, through a mount of that
# namespace's /proc/sys/net that is writable. Run by the DaemonSet's `forwarding` init
# container, which mounts the host's /proc/sys/net at /host/proc/sys/net: a container's own
# /proc/sys is read-only, and nothing may be mounted below /proc, so the daemon itself
# (which runs with NET_ADMIN, BPF and PERFMON only) finds forwarding already on.
#
#   PROC_SYS_NET  writable /proc/sys/net            (default /host/proc/sys/net)
#   NET_CONF      the network config (net-conf.json) (default /etc/hostgw/net-conf.json);
#                 IPv6 forwarding is turned on only when it names an IPv6Network, because
#                 forwarding=1 makes the kernel ignore router advertisements on every link.
set -eu

PROC_SYS_NET=${PROC_SYS_NET:-/host/proc/sys/net}
NET_CONF=${NET_CONF:-/etc/hostgw/net-conf.json}

echo 1 >"$PROC_SYS_NET/ipv4/ip_forward"
echo "enable-forwarding: net.ipv4.ip_forward=1" >&2
if [ -f "$NET_CONF" ] && grep -Eq '"IPv6Network"[[:space:]]*:[[:space:]]*"' "$NET_CONF"; then
  echo 1 >"$PROC_SYS_NET/ipv6/conf/all/forwarding"
  echo "enable-forwarding: net.ipv6.conf.all.forwarding=1" >&2
fi
