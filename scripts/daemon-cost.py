#!/usr/bin/env python3
"""One hostgw-routed daemon's memory and CPU per lease event, against a real etcd.

    sudo scripts/daemon-cost.py [--bin target/release/hostgw-routed] [--leases 1000] [--events 100]

Everything runs in one network namespace made here (`hgwt-lean-cost-<pid>`, or
`$HOSTGW_TEST_PREFIX` + `cost-<pid>`) and removed at the end: an uplink `eth0` (a veth whose
peer stays in the namespace) with 198.19.0.1/16, etcd on its loopback (127.0.0.1:23791,
data in /dev/shm), and the daemon.
N leases of other nodes (/29s of 198.18.0.0/16, next hops 198.19.x.y) are written first; once
the daemon holds N routes and has been idle for a while, `--events` joins and as many releases
of one more lease are made one at a time (each waited for in the kernel, then a gap), and
the daemon's CPU over them (`/proc/PID/schedstat`, less its idle rate) is divided by the
number of events. Prints RSS and its parts (`/proc/PID/smaps_rollup`, `smaps`) after them.
`--callgrind FILE` runs the daemon under callgrind and dumps the counts of the events alone
(zeroed before the first, dumped after the last) to FILE; `--perf FILE` records it with
`perf record -e cpu-clock -g` over the events; `--wrap CMD` runs it under another tool.
The CPU figures are then the tool's, not the daemon's. Needs root, `etcd`, `ip`.
"""

import argparse
import base64
import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ETCD = "http://127.0.0.1:23791"
PREFIX = "/hostgw/network"
CLONE_NEWNET = 0x40000000


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True).stdout


def b64(s):
    return base64.b64encode(s.encode()).decode()


def etcd(path, body):
    req = urllib.request.Request(ETCD + path, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def put(k, v):
    etcd("/v3/kv/put", {"key": b64(k), "value": b64(v)})


def delete(k):
    etcd("/v3/kv/deleterange", {"key": b64(k)})


def subnet(i):
    """The i-th /29 of 198.18.0.0/16 (i >= 1)."""
    return f"198.18.{i // 32}.{(i % 32) * 8}/29"


def lease(i):
    ip = f"198.19.{1 + i // 250}.{1 + i % 250}"
    v = {"PublicIP": ip, "PublicIPv6": None, "BackendType": "host-gw", "NodeName": f"peer-{i}"}
    return f"{PREFIX}/subnets/{subnet(i).replace('/', '-')}", json.dumps(v)


def routes(ns):
    return sh("ip", "-n", ns, "route", "show", "proto", "75").count("\n")


def has_route(ns, dst):
    return sh("ip", "-n", ns, "route", "show", dst) != ""


def cpu_ns(pid):
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def wait(what, cond, secs):
    end = time.monotonic() + secs
    while not cond():
        if time.monotonic() > end:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.002)


def memory(pid):
    rollup = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            p = line.split()
            if len(p) >= 3 and p[2] == "kB":
                rollup[p[0].rstrip(":")] = int(p[1])
    # Resident KiB per mapping kind: our binary's code, its other mappings, heap, stack, libs.
    exe = os.readlink(f"/proc/{pid}/exe")
    parts = {}
    with open(f"/proc/{pid}/smaps") as f:
        name = ""
        for line in f:
            p = line.split()
            if "-" in p[0] and len(p) >= 5 and not p[0].endswith(":"):
                perms = p[1]
                path = p[5] if len(p) > 5 else "[anon]"
                if path == exe:
                    name = "binary " + ("code" if "x" in perms else "data")
                elif path == "[heap]" or path == "[stack]":
                    name = path
                elif path.startswith("/"):
                    name = "libs " + ("code" if "x" in perms else "data")
                else:
                    name = "anon"
            elif p[0] == "Rss:":
                parts[name] = parts.get(name, 0) + int(p[1])
    return rollup, parts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/hostgw-routed")
    ap.add_argument("--leases", type=int, default=1000)
    ap.add_argument("--events", type=int, default=100, help="joins, and as many releases")
    ap.add_argument("--gap", type=float, default=0.2, help="seconds between events")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds of idle measured")
    ap.add_argument("--wrap", default="", help="a command the daemon runs under")
    ap.add_argument("--callgrind", default="",
                    help="run the daemon under callgrind; its counts of the events go to this file")
    ap.add_argument("--perf", default="",
                    help="perf record (cpu-clock, call graphs) the daemon over the events into this file")
    ap.add_argument("--log", default="", help="keep the daemon's log here")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root")
    ns = os.environ.get("HOSTGW_TEST_PREFIX", "hgwt-lean-") + f"cost-{os.getpid()}"
    dirs = tempfile.TemporaryDirectory(prefix="lean-cost", dir="/dev/shm")
    procs = []

    def cleanup(*_):
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        sh("ip", "netns", "del", ns, check=False)
        dirs.cleanup()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        sh("ip", "netns", "add", ns)
        for cmd in (
            "link set lo up",
            "link add eth0 type veth peer name eth0p",
            "addr add 198.19.0.1/16 dev eth0",
            "link set eth0p up",
            "link set eth0 up",
        ):
            sh("ip", "-n", ns, *cmd.split())
        # This process talks to etcd from inside the namespace too.
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            sys.exit(f"setns: errno {ctypes.get_errno()}")
        os.close(fd)
        data = os.path.join(dirs.name, "etcd")
        etcd_log = open(os.path.join(dirs.name, "etcd.log"), "w")
        procs.append(subprocess.Popen(
            ["etcd", "--data-dir", data, "--listen-client-urls", ETCD, "--advertise-client-urls",
             ETCD, "--listen-peer-urls", "http://127.0.0.1:23792", "--initial-advertise-peer-urls",
             "http://127.0.0.1:23792", "--initial-cluster", "default=http://127.0.0.1:23792",
             "--listen-metrics-urls", "http://127.0.0.1:23793", "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=etcd_log))

        def etcd_up():
            try:
                etcd("/v3/kv/range", {"key": b64("x")})
                return True
            except OSError:
                return False

        wait("etcd", etcd_up, 20)
        # Our own subnet comes from 198.18.200.0/24, away from the others' leases.
        put(f"{PREFIX}/config", json.dumps(
            {"Network": "198.18.0.0/16", "SubnetLen": 29, "SubnetMin": "198.18.200.0",
             "SubnetMax": "198.18.200.248", "Backend": {"Type": "host-gw"}}))
        kvs = [lease(i) for i in range(1, a.leases + 1)]
        for c in range(0, len(kvs), 100):
            ops = [{"request_put": {"key": b64(k), "value": b64(v)}} for k, v in kvs[c:c + 100]]
            etcd("/v3/kv/txn", {"success": ops})

        log_path = a.log or os.path.join(dirs.name, "daemon.log")
        log = open(log_path, "w")
        wrap = shlex.split(a.wrap)
        if a.callgrind:
            wrap = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={a.callgrind}"]
        argv = wrap + [
            os.path.abspath(a.bin), "run", "--etcd-endpoints", ETCD, "--node-name", "me",
            "--public-ip", "198.19.0.1", "--subnet-file", os.path.join(dirs.name, "subnet.json")]
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
        t0 = time.monotonic()
        d = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, env=env)
        procs.append(d)
        wait(f"{a.leases} routes", lambda: routes(ns) >= a.leases, 120)
        print(f"start: {a.leases} routes after {time.monotonic() - t0:.2f} s, "
              f"CPU {cpu_ns(d.pid) / 1e6:.1f} ms")
        time.sleep(2)
        c0, t0 = cpu_ns(d.pid), time.monotonic()
        time.sleep(a.idle)
        idle_rate = (cpu_ns(d.pid) - c0) / (time.monotonic() - t0)
        k, v = lease(a.leases + 1)
        dst = subnet(a.leases + 1)
        if a.callgrind:
            sh("callgrind_control", "--zero", str(d.pid))
        if a.perf:
            rec = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "20000", "-g",
                                    "-p", str(d.pid), "-o", a.perf], stdout=subprocess.DEVNULL)
            procs.append(rec)
            time.sleep(1)
        c0, t0 = cpu_ns(d.pid), time.monotonic()
        lat = []
        for _ in range(a.events):
            s = time.monotonic()
            put(k, v)
            wait("join", lambda: has_route(ns, dst), 10)
            lat.append(time.monotonic() - s)
            time.sleep(a.gap)
            s = time.monotonic()
            delete(k)
            wait("release", lambda: not has_route(ns, dst), 10)
            lat.append(time.monotonic() - s)
            time.sleep(a.gap)
        busy = cpu_ns(d.pid) - c0 - idle_rate * (time.monotonic() - t0)
        n = 2 * a.events
        if a.perf:
            rec.send_signal(signal.SIGINT)
            rec.wait()
        if a.callgrind:
            sh("callgrind_control", "--dump", str(d.pid))
        lat.sort()
        print(f"events: {n}, CPU per event {busy / n / 1e3:.0f} µs (idle {idle_rate / 1e3:.1f} "
              f"µs/s), put/delete → kernel p50 {lat[n // 2] * 1e3:.1f} ms")
        rollup, parts = memory(d.pid)
        print(f"memory: Rss {rollup['Rss']} KiB, Pss {rollup['Pss']} KiB, "
              f"Private_Dirty {rollup['Private_Dirty']} KiB; resident by mapping (KiB): "
              + ", ".join(f"{k} {v}" for k, v in sorted(parts.items())))
    finally:
        cleanup()


if __name__ == "__main__":
    main()
