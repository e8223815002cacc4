#!/usr/bin/env bash
# Removes what an interrupted test run may have left: every network namespace named
# hgwt-* (the test harness's prefix) and the processes still running inside them.
# Processes are ended by PID, and only those inside our own namespaces.
set -u
for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^hgwt-/ {print $1}'); do
  for pid in $(ip netns pids "$ns" 2>/dev/null); do
    kill -KILL "$pid" 2>/dev/null
  done
  ip netns del "$ns" 2>/dev/null
done
exit 0
