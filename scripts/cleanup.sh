#!/usr/bin/env bash
# Removes what an interrupted test run may have left, when Drop guards could not run:
# - every network namespace named hgwt-* (the test harness's prefix) and the processes
#   still inside it;
# - every cgroup named hgwt-* (the harness's containers, whose processes live in network
#   namespaces of their own) and the processes still in it.
# Processes are ended by PID, and only those inside our own namespaces and cgroups.
# HOSTGW_TEST_PREFIX (set by test.sh and demo.sh for their run) narrows the sweep to one run.
set -u
prefix=${HOSTGW_TEST_PREFIX:-hgwt-}
case "$prefix" in hgwt-*) ;; *) echo "cleanup: refusing prefix $prefix" >&2; exit 1 ;; esac
for ns in $(ip netns list 2>/dev/null | awk -v p="$prefix" 'index($1, p) == 1 {print $1}'); do
  for pid in $(ip netns pids "$ns" 2>/dev/null); do
    kill -KILL "$pid" 2>/dev/null
  done
  ip netns del "$ns" 2>/dev/null
done
# cgroup v2 (and any v1 hierarchy), deepest first so parents are empty when removed.
for top in $(find /sys/fs/cgroup -maxdepth 2 -type d -name "${prefix}*" 2>/dev/null); do
  for procs in $(find "$top" -name cgroup.procs 2>/dev/null); do
    while read -r pid; do kill -KILL "$pid" 2>/dev/null; done < "$procs"
  done
  for _ in 1 2 3 4 5; do
    find "$top" -depth -type d -exec rmdir {} \; 2>/dev/null
    [ -d "$top" ] || break
    sleep 0.2
  done
done
exit 0
