//! The phases of `bench-scale`, each returning its figures and printing its table.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use hostgw_harness::{
    fleet::{Fleet, PREFIX, node_ip, par},
    must, wait_for,
};
use serde::Serialize;

use super::measure::{
    self, Change, EtcdCounters, all_changes, cpu_sum, daemons, log_events, now_of_day, percentiles,
    proc_stat, reset_peak,
};

fn workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Prints a phase's figures as a two-column Markdown table.
fn table(title: &str, rows: &[(&str, String)]) {
    let mut t = format!("\n### {title}\n\n| figure | value |\n|---|---|\n");
    for (k, v) in rows {
        let _ = writeln!(t, "| {k} | {v} |");
    }
    println!("{t}");
}

fn etcd_pids(f: &Fleet) -> Vec<u32> {
    f.etcd.members.iter().map(|m| m.pid()).collect()
}

fn etcd_cpu(f: &Fleet) -> f64 {
    etcd_pids(f).into_iter().map(|p| proc_stat(p).cpu).sum()
}

/// The subnet in node `i`'s subnet file.
fn subnet_of(f: &Fleet, i: usize) -> Option<String> {
    let text = std::fs::read_to_string(&f.nodes[i].subnet_file).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["subnet"].as_str().map(str::to_owned)
}

// === kernel floor ===

#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    pub routes: usize,
    pub secs: f64,
    /// The same routes again with one route listener (`ip monitor route`) per namespace,
    /// as when the daemons run: in one kernel every route added anywhere is offered to
    /// every namespace's listener socket (netlink_broadcast walks them all), which a real
    /// node with its one daemon does not pay.
    pub listening_secs: f64,
}

/// The kernels alone: N × (N-1) routes of the same shape (/29 via a peer on the segment)
/// put in by `ip -batch`, one per node namespace, as many at a time as there are cores.
/// They go into table 76 and are flushed afterwards.
pub fn floor(f: &Fleet, n: usize) -> Result<Floor> {
    let dir = f.dir.path();
    par(n, workers(), |i| {
        let mut b = String::new();
        for j in (0..n).filter(|&j| j != i) {
            let (a, c) = (j * 8 / 256, j * 8 % 256);
            let _ = writeln!(
                b,
                "route add 198.18.{a}.{c}/29 via {} table 76 proto 76",
                node_ip(j)
            );
        }
        std::fs::write(dir.join(format!("floor{i}")), b)?;
        Ok(())
    })?;
    let batch = || -> Result<f64> {
        let t = Instant::now();
        par(n, workers(), |i| {
            must(
                Command::new("ip")
                    .args(["-n", f.nodes[i].ns.name(), "-batch"])
                    .arg(dir.join(format!("floor{i}"))),
            )
            .map(|_| ())
        })?;
        let secs = t.elapsed().as_secs_f64();
        par(n, workers(), |i| {
            must(Command::new("ip").args([
                "-n",
                f.nodes[i].ns.name(),
                "route",
                "flush",
                "table",
                "76",
            ]))
            .map(|_| ())
        })?;
        Ok(secs)
    };
    let secs = batch()?;
    let mut listeners = Vec::with_capacity(n);
    for node in f.nodes.iter().take(n) {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", node.ns.name(), "monitor", "route"])
            .stdout(std::process::Stdio::null());
        listeners.push(hostgw_harness::Proc::spawn(cmd)?);
    }
    std::thread::sleep(Duration::from_secs(1));
    let listening_secs = batch();
    // SIGKILL: they inherited bench-scale's blocked SIGTERM (see its cleanup), so a stop
    // would wait out its grace for each of them.
    for l in &mut listeners {
        l.kill();
    }
    let fl = Floor {
        routes: n * (n - 1),
        secs,
        listening_secs: listening_secs?,
    };
    table(
        "kernel floor",
        &[
            ("routes (N × (N-1))", fl.routes.to_string()),
            (
                "ip -batch, all nodes",
                format!("{secs:.2} s ({} in parallel)", workers()),
            ),
            (
                "the same with a route listener in every namespace",
                format!("{:.2} s", fl.listening_secs),
            ),
        ],
    );
    Ok(fl)
}

// === cold start ===

#[derive(Debug, Clone, Serialize)]
pub struct ColdStart {
    /// From the first spawn to the last.
    pub spawn_secs: f64,
    /// Until every node held all N-1 peer routes (from the daemons' log timestamps).
    pub converged_secs: f64,
    pub converged_vs_floor: f64,
    pub etcd: EtcdCounters,
    pub ranges_per_node: f64,
    pub etcd_cpu_secs: f64,
    pub etcd_peak_rss_mib: f64,
    pub daemons_cpu_secs: f64,
    pub daemons_cpu_ms_per_node: f64,
    pub lost_races: usize,
    /// The machine's CPU busy during the storm (of all cores' time), and what bench-scale
    /// itself spent (polling logs, etcd's /metrics).
    pub machine_busy: f64,
    pub bench_cpu_secs: f64,
    pub restarted: usize,
    /// Nodes whose kernel did not hold N-1 owned routes at the end.
    pub stuck: usize,
    /// (seconds since the first spawn, owned routes across the cluster).
    pub curve: Vec<(f64, u64)>,
}

/// All N daemons started together; waits until each has N-1 routes.
pub fn cold_start(f: &mut Fleet, n: usize) -> Result<ColdStart> {
    let before = EtcdCounters::read(f)?;
    etcd_pids(f).into_iter().for_each(reset_peak);
    let etcd_cpu0 = etcd_cpu(f);
    let (busy0, own0) = (measure::machine_cpu(), measure::own_cpu());
    let t0 = now_of_day();
    let start = Instant::now();
    for i in 0..n {
        f.start(i)?;
    }
    let spawn_secs = start.elapsed().as_secs_f64();
    let limit = Duration::from_secs(120 + n as u64 / 2);
    // N-1 routes to peers plus the node's own `unreachable <subnet>`: the logs count both.
    let mut tail = measure::LogTail::default();
    let mut held = Converging::new(n, n as u64);
    let done = wait_for("every node's N-1 routes in the logs", limit, || {
        std::thread::sleep(Duration::from_millis(250));
        let seen = tail.changes.len();
        tail.poll(f, n);
        held.take(&tail.changes[seen..])
    });
    let (busy1, own1) = (measure::machine_cpu(), measure::own_cpu());
    let changes = tail.changes;
    let last = done.context("cold start did not converge")?;
    let counts = par(n, workers(), |i| f.route_lines(i).map(|r| r.len()))?;
    let stuck = counts.iter().filter(|&&c| c != n - 1).count();
    let etcd = EtcdCounters::read(f)?.since(&before);
    let peak: u64 = etcd_pids(f)
        .into_iter()
        .map(|p| proc_stat(p).hwm_kb)
        .max()
        .unwrap_or(0);
    let ds = daemons(f);
    let mut restarted = 0;
    for node in f.nodes.iter_mut().take(n) {
        restarted += usize::from(node.daemon.as_mut().is_some_and(|p| p.exited().is_some()));
    }
    let c = ColdStart {
        spawn_secs,
        converged_secs: last - t0,
        converged_vs_floor: 0.0,
        ranges_per_node: etcd.get("Range") / n as f64,
        etcd,
        etcd_cpu_secs: etcd_cpu(f) - etcd_cpu0,
        etcd_peak_rss_mib: peak as f64 / 1024.0,
        daemons_cpu_secs: cpu_sum(&ds),
        daemons_cpu_ms_per_node: cpu_sum(&ds) * 1e3 / n as f64,
        lost_races: log_events(f, t0)
            .get("lost create races")
            .copied()
            .unwrap_or(0),
        machine_busy: (busy1.0 - busy0.0) / (busy1.1 - busy0.1).max(1e-9),
        bench_cpu_secs: own1 - own0,
        restarted,
        stuck,
        curve: curve(&changes, t0),
    };
    print_cold(&c, n);
    Ok(c)
}

fn print_cold(c: &ColdStart, n: usize) {
    let e = &c.etcd;
    table(
        &format!("cold start storm, N = {n}"),
        &[
            ("daemons spawned within", format!("{:.2} s", c.spawn_secs)),
            (
                "every node holds all N-1 routes after",
                format!("{:.2} s", c.converged_secs),
            ),
            (
                "etcd Range / Txn / LeaseGrant / Watch",
                format!(
                    "{} / {} / {} / {}",
                    e.get("Range"),
                    e.get("Txn"),
                    e.get("LeaseGrant"),
                    e.get("Watch")
                ),
            ),
            ("Range per node", format!("{:.3}", c.ranges_per_node)),
            (
                "bytes sent by etcd",
                format!(
                    "{:.1} MiB ({:.1} KiB per node)",
                    e.sent_bytes / 1048576.0,
                    e.sent_bytes / 1024.0 / n as f64
                ),
            ),
            (
                "etcd CPU / peak RSS",
                format!("{:.2} s / {:.0} MiB", c.etcd_cpu_secs, c.etcd_peak_rss_mib),
            ),
            (
                "daemons' CPU (sum, per node)",
                format!(
                    "{:.1} s, {:.1} ms",
                    c.daemons_cpu_secs, c.daemons_cpu_ms_per_node
                ),
            ),
            ("lost create races", c.lost_races.to_string()),
            (
                "machine CPU busy during the storm / bench-scale's own CPU",
                format!(
                    "{:.0} % / {:.1} s",
                    c.machine_busy * 100.0,
                    c.bench_cpu_secs
                ),
            ),
            (
                "daemons restarted / stuck",
                format!("{} / {}", c.restarted, c.stuck),
            ),
        ],
    );
}

/// When every node in `0..n` had at least `want` routes (net of removals), by the logs.
/// Each node's routes as its log lines come (in its own order), and when it first held
/// `want`: the cluster converged when the last node did. Fed incrementally, so a poll costs
/// what the logs gained, not all of them.
struct Converging {
    want: i64,
    held: Vec<i64>,
    done: Vec<Option<f64>>,
    left: usize,
}

impl Converging {
    fn new(n: usize, want: u64) -> Self {
        Converging {
            want: want as i64,
            held: vec![0; n],
            done: vec![None; n],
            left: n,
        }
    }

    /// Takes more changes; the time the last node converged, once every node has.
    fn take(&mut self, changes: &[Change]) -> Option<f64> {
        let n = self.held.len();
        for c in changes.iter().filter(|c| c.node < n) {
            self.held[c.node] += c.added as i64 - c.removed as i64;
            if self.done[c.node].is_none() && self.held[c.node] >= self.want {
                self.done[c.node] = Some(c.at);
                self.left -= 1;
            }
        }
        (self.left == 0).then(|| self.done.iter().flatten().copied().fold(0.0, f64::max))
    }
}

/// Routes across the cluster over time, at most ~400 points.
fn curve(changes: &[Change], t0: f64) -> Vec<(f64, u64)> {
    let mut ev: Vec<(f64, i64)> = changes
        .iter()
        .map(|c| (c.at - t0, c.added as i64 - c.removed as i64))
        .collect();
    ev.sort_by(|a, b| a.0.total_cmp(&b.0));
    let step = (ev.len() / 400).max(1);
    let mut total = 0i64;
    let mut out = vec![(0.0, 0)];
    for (k, (t, d)) in ev.iter().enumerate() {
        total += d;
        if k % step == 0 || k + 1 == ev.len() {
            out.push((*t, total.max(0) as u64));
        }
    }
    out
}

/// Pings from a few nodes to an address inside another node's pod subnet (put on its
/// `lo`): packets that only arrive through the routes the daemons installed.
pub fn traffic(f: &Fleet, n: usize) -> Result<String> {
    let pairs = [(0, n - 1), (n - 1, 0), (n / 2, 1 % n)];
    let mut ok = 0;
    for (a, b) in pairs.into_iter().filter(|(a, b)| a != b) {
        let subnet = subnet_of(f, b).context("subnet file")?;
        let net: std::net::Ipv4Addr = subnet.split('/').next().unwrap_or_default().parse()?;
        let host = std::net::Ipv4Addr::from(u32::from(net) + 1).to_string();
        f.nodes[b]
            .ns
            .ip(&["addr", "add", &format!("{host}/32"), "dev", "lo"])?;
        let out = f.nodes[a]
            .ns
            .cmd("ping")
            .args(["-c", "1", "-W", "2", &host])
            .output()?;
        ok += usize::from(out.status.success());
        f.nodes[b]
            .ns
            .ip(&["addr", "del", &format!("{host}/32"), "dev", "lo"])?;
    }
    let s = format!("{ok}/3 pings to addresses in peers' pod subnets answered");
    println!("traffic: {s}");
    Ok(s)
}

// === steady state ===

#[derive(Debug, Clone, Serialize)]
pub struct Steady {
    pub secs: f64,
    pub etcd_per_minute: EtcdCounters,
    pub daemons_cpu_secs_per_minute: f64,
    pub rss_kib_p50: f64,
    pub rss_kib_max: f64,
    pub pss_kib_p50: f64,
    pub etcd_rss_mib: f64,
}

pub fn steady(f: &mut Fleet, n: usize, dur: Duration) -> Result<Steady> {
    std::thread::sleep(Duration::from_secs(3));
    let before = EtcdCounters::read(f)?;
    let cpu0 = cpu_sum(&daemons(f));
    std::thread::sleep(dur);
    let delta = EtcdCounters::read(f)?.since(&before);
    let ds = daemons(f);
    let per_min = 60.0 / dur.as_secs_f64();
    let mut etcd_per_minute = delta.clone();
    etcd_per_minute
        .requests
        .values_mut()
        .for_each(|v| *v *= per_min);
    etcd_per_minute.sent_bytes *= per_min;
    let mut rss: Vec<f64> = ds.iter().take(n).map(|p| p.rss_kb as f64).collect();
    let mut pss: Vec<f64> = ds.iter().take(n).map(|p| p.pss_kb as f64).collect();
    let [r50, _, rmax] = percentiles(&mut rss);
    let [p50, _, _] = percentiles(&mut pss);
    let s = Steady {
        secs: dur.as_secs_f64(),
        etcd_per_minute,
        daemons_cpu_secs_per_minute: (cpu_sum(&ds) - cpu0) * per_min,
        rss_kib_p50: r50,
        rss_kib_max: rmax,
        pss_kib_p50: p50,
        etcd_rss_mib: etcd_pids(f)
            .into_iter()
            .map(|p| proc_stat(p).rss_kb)
            .sum::<u64>() as f64
            / 1024.0,
    };
    let e = &s.etcd_per_minute;
    table(
        &format!("steady state, {:.0} s, N = {n}", s.secs),
        &[
            (
                "etcd requests per minute (Range / Txn / LeaseKeepAlive / Watch)",
                format!(
                    "{:.1} / {:.1} / {:.1} / {:.1}",
                    e.get("Range"),
                    e.get("Txn"),
                    e.get("LeaseKeepAlive"),
                    e.get("Watch")
                ),
            ),
            (
                "bytes sent by etcd per minute",
                format!("{:.1} KiB", e.sent_bytes / 1024.0),
            ),
            (
                "daemons' CPU per minute (sum)",
                format!("{:.2} s", s.daemons_cpu_secs_per_minute),
            ),
            (
                "daemon RSS p50 / max",
                format!("{:.1} / {:.1} MiB", r50 / 1024.0, rmax / 1024.0),
            ),
            (
                "daemon PSS p50 (shared pages split)",
                format!("{:.1} MiB", p50 / 1024.0),
            ),
            ("etcd RSS", format!("{:.0} MiB", s.etcd_rss_mib)),
        ],
    );
    Ok(s)
}

// === churn ===

#[derive(Debug, Clone, Serialize)]
pub struct ChurnFigures {
    pub events: usize,
    /// p50, p99, max (ms): the joiner's key created → route on every other node.
    pub join_ms: [f64; 3],
    /// The same from the joiner's process start.
    pub join_from_spawn_ms: [f64; 3],
    /// `release` started → route gone on every other node.
    pub release_ms: [f64; 3],
    /// Nodes that never logged an event's change.
    pub missed: usize,
    /// CPU of the N running nodes per event, above their steady-state rate (ms).
    pub others_cpu_ms_per_event: f64,
    /// The joiner's own start (listing N leases, installing N routes), ms.
    pub joiner_cpu_ms: f64,
    pub etcd_cpu_ms_per_event: f64,
}

struct Event {
    node: usize,
    subnet: String,
    /// Seconds of day: the key was written (join) or release began.
    at: f64,
    spawned: f64,
    join: bool,
}

/// `k` nodes join one at a time, then the same nodes are released one at a time.
pub fn churn(f: &mut Fleet, n: usize, k: usize, gap: Duration) -> Result<ChurnFigures> {
    let base = idle_rate(f, n)?;
    let (cpu0, etcd0, t0) = (cpu_sum(&daemons(f)[..n]), etcd_cpu(f), Instant::now());
    let mut events = Vec::new();
    let mut joiner_cpu = 0.0;
    for j in n..n + k {
        let spawned = now_of_day();
        f.start(j)?;
        let subnet = wait_for("joiner's subnet", Duration::from_secs(30), || {
            subnet_of(f, j)
        })?;
        let at = claim_time(&f.log(j)).unwrap_or(spawned);
        events.push(Event {
            node: j,
            subnet,
            at,
            spawned,
            join: true,
        });
        std::thread::sleep(gap);
        joiner_cpu += proc_stat(f.pids()[j]).cpu;
    }
    for j in n..n + k {
        if let Some(mut p) = f.nodes[j].daemon.take() {
            p.stop(Duration::from_secs(5));
        }
        let at = now_of_day();
        f.cli(j, "release")?;
        let subnet = events[j - n].subnet.clone();
        events.push(Event {
            node: j,
            subnet,
            at,
            spawned: at,
            join: false,
        });
        std::thread::sleep(gap);
    }
    let secs = t0.elapsed().as_secs_f64();
    let others = cpu_sum(&daemons(f)[..n]) - cpu0 - base * secs;
    let figures = latencies(&all_changes(f), &events, n);
    let dead: Vec<usize> = (0..n)
        .filter(|&i| {
            f.nodes[i]
                .daemon
                .as_mut()
                .is_some_and(|p| p.exited().is_some())
        })
        .collect();
    if !dead.is_empty() || figures.3 > 0 {
        eprintln!("daemons that exited during churn: {dead:?}");
        if let Some(&i) = dead.first() {
            eprintln!("node {i}'s log:\n{}", tail(&f.log(i), 30));
        }
    }
    let c = ChurnFigures {
        events: events.len(),
        join_ms: figures.0,
        join_from_spawn_ms: figures.1,
        release_ms: figures.2,
        missed: figures.3,
        others_cpu_ms_per_event: others * 1e3 / events.len() as f64,
        joiner_cpu_ms: joiner_cpu * 1e3 / k as f64,
        etcd_cpu_ms_per_event: (etcd_cpu(f) - etcd0) * 1e3 / events.len() as f64,
    };
    print_churn(&c, n);
    Ok(c)
}

fn print_churn(c: &ChurnFigures, n: usize) {
    let p = |v: [f64; 3]| format!("{:.0} / {:.0} / {:.0} ms", v[0], v[1], v[2]);
    table(
        &format!(
            "churn: {} joins then {} releases, one at a time, N = {n}",
            c.events / 2,
            c.events / 2
        ),
        &[
            (
                "join: key written → route on all others (p50 / p99 / max)",
                p(c.join_ms),
            ),
            (
                "join: process start → route on all others",
                p(c.join_from_spawn_ms),
            ),
            (
                "release started → route gone on all others",
                p(c.release_ms),
            ),
            ("changes never seen", c.missed.to_string()),
            (
                "CPU of the other N nodes per event (above idle)",
                format!(
                    "{:.0} ms ({:.1} µs per node)",
                    c.others_cpu_ms_per_event,
                    c.others_cpu_ms_per_event * 1e3 / n as f64
                ),
            ),
            ("a joiner's own CPU", format!("{:.0} ms", c.joiner_cpu_ms)),
            (
                "etcd CPU per event",
                format!("{:.1} ms", c.etcd_cpu_ms_per_event),
            ),
        ],
    );
}

/// Daemons' CPU per second while nothing happens (a short sample).
fn idle_rate(f: &Fleet, n: usize) -> Result<f64> {
    let a = cpu_sum(&daemons(f)[..n]);
    std::thread::sleep(Duration::from_secs(5));
    Ok((cpu_sum(&daemons(f)[..n]) - a) / 5.0)
}

/// When a daemon logged its claim.
fn claim_time(log: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains("claimed a new subnet"))?;
    measure::line_time(line)
}

type Lat = ([f64; 3], [f64; 3], [f64; 3], usize);

/// For each event, the last of the other running nodes to log it.
fn latencies(changes: &[Change], events: &[Event], n: usize) -> Lat {
    let mut seen: BTreeMap<(&str, bool), Vec<(usize, f64)>> = BTreeMap::new();
    for c in changes {
        if let Some(d) = &c.dst {
            seen.entry((d.as_str(), c.added > 0))
                .or_default()
                .push((c.node, c.at));
        }
    }
    let (mut join, mut spawn, mut rel, mut missed) = (vec![], vec![], vec![], 0);
    for ev in events {
        // Joins are seen by the N nodes and the joiners before it; releases by the N nodes
        // and the joiners still running (none: all are stopped before any release).
        let watchers: Vec<usize> = if ev.join {
            (0..n).chain(n..ev.node).collect()
        } else {
            (0..n).collect()
        };
        let got = seen
            .get(&(ev.subnet.as_str(), ev.join))
            .cloned()
            .unwrap_or_default();
        let mut last: f64 = 0.0;
        for w in watchers {
            match got
                .iter()
                .filter(|(node, at)| *node == w && *at >= ev.at - 0.5)
                .map(|x| x.1)
                .reduce(f64::min)
            {
                Some(at) => last = last.max(at),
                None => {
                    if missed < 5 {
                        eprintln!(
                            "never seen: node {w}, {} {} at {:.3}",
                            if ev.join { "join" } else { "release" },
                            ev.subnet,
                            ev.at
                        );
                    }
                    missed += 1;
                }
            }
        }
        if ev.join {
            join.push((last - ev.at) * 1e3);
            spawn.push((last - ev.spawned) * 1e3);
        } else {
            rel.push((last - ev.at) * 1e3);
        }
    }
    (
        percentiles(&mut join),
        percentiles(&mut spawn),
        percentiles(&mut rel),
        missed,
    )
}

// === full restart of every daemon ===

#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    /// Whether the daemons resumed from their lease cache (else it was removed first, so
    /// each listed as a start without a cache does).
    pub cache: bool,
    /// SIGTERM to all, until all had exited.
    pub stop_secs: f64,
    /// First spawn until etcd counted N watchers again and every daemon routed by its
    /// set (resumed or listed).
    pub resumed_secs: f64,
    /// Daemons that listed every lease, and that resumed from the cache.
    pub listed: usize,
    pub resumed: usize,
    /// Requests and bytes from the stop until every daemon was back.
    pub etcd: EtcdCounters,
    pub etcd_cpu_secs: f64,
    pub daemons_cpu_secs: f64,
    pub routes_changed: u64,
}

/// Every daemon stopped at once (SIGTERM) and started again, as an upgrade that restarts
/// them all does: with its lease cache (`cache`), or without (the file removed before the
/// start, which is how every start went before the cache).
pub fn restart(f: &mut Fleet, n: usize, cache: bool) -> Result<Restart> {
    std::thread::sleep(Duration::from_secs(2));
    let before = EtcdCounters::read(f)?;
    let etcd_cpu0 = etcd_cpu(f);
    let t_stop = now_of_day();
    let stop = Instant::now();
    f.stop_all();
    let stop_secs = stop.elapsed().as_secs_f64();
    if !cache {
        for node in f.nodes.iter().take(n) {
            let path = node.subnet_file.with_file_name("leases.json");
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    bail!("remove {}: {e}", path.display())
                }
                _ => {}
            }
        }
    }
    let t0 = now_of_day();
    let start = Instant::now();
    for i in 0..n {
        f.start(i)?;
    }
    const RESUMED: &str = "the watch resumed from the lease cache";
    let back = |f: &mut Fleet| {
        let watching = EtcdCounters::read(f).ok()?.watchers >= n as f64;
        let routing = measure::nodes_logged(f, n, t0, "listed leases")
            + measure::nodes_logged(f, n, t0, RESUMED);
        (watching && routing >= n).then(|| start.elapsed().as_secs_f64())
    };
    let resumed_secs = wait_for(
        "every daemon back",
        Duration::from_secs(120 + n as u64 / 2),
        || {
            std::thread::sleep(Duration::from_millis(250));
            back(f)
        },
    )
    .with_context(|| format!("node-0's log:\n{}", tail(&f.log(0), 30)))?;
    let etcd = EtcdCounters::read(f)?.since(&before);
    let ds = daemons(f);
    let r = Restart {
        cache,
        stop_secs,
        resumed_secs,
        listed: measure::nodes_logged(f, n, t0, "listed leases"),
        resumed: measure::nodes_logged(f, n, t0, RESUMED),
        etcd,
        etcd_cpu_secs: etcd_cpu(f) - etcd_cpu0,
        daemons_cpu_secs: cpu_sum(&ds),
        routes_changed: all_changes(f)
            .iter()
            .filter(|c| c.at >= t_stop)
            .map(|c| c.added + c.removed)
            .sum(),
    };
    print_restart(&r, n);
    Ok(r)
}

fn print_restart(r: &Restart, n: usize) {
    let (e, cache) = (&r.etcd, r.cache);
    table(
        &format!(
            "full restart of every daemon, N = {n}, {}",
            if cache {
                "with the lease cache"
            } else {
                "without a cache"
            }
        ),
        &[
            ("stop (SIGTERM to all)", format!("{:.2} s", r.stop_secs)),
            (
                "first start → all N watching and routing",
                format!("{:.2} s", r.resumed_secs),
            ),
            (
                "daemons that listed / resumed from the cache",
                format!("{} / {}", r.listed, r.resumed),
            ),
            (
                "etcd requests (Range / Txn / LeaseGrant / LeaseKeepAlive / Watch)",
                format!(
                    "{} / {} / {} / {} / {}",
                    e.get("Range"),
                    e.get("Txn"),
                    e.get("LeaseGrant"),
                    e.get("LeaseKeepAlive"),
                    e.get("Watch")
                ),
            ),
            (
                "bytes sent by etcd",
                format!(
                    "{:.1} MiB ({:.1} KiB per node)",
                    e.sent_bytes / 1048576.0,
                    e.sent_bytes / 1024.0 / n as f64
                ),
            ),
            ("etcd CPU", format!("{:.2} s", r.etcd_cpu_secs)),
            ("daemons' CPU, sum", format!("{:.2} s", r.daemons_cpu_secs)),
            ("routes changed anywhere", r.routes_changed.to_string()),
        ],
    );
}

// === etcd outage ===

#[derive(Debug, Clone, Serialize)]
pub struct Outage {
    /// "leader killed" (3 members) or "restarted" (1 member).
    pub what: String,
    /// Until etcd counted N watchers again.
    pub watches_resumed_secs: f64,
    /// Requests in the minute from the outage on (live members).
    pub minute: EtcdCounters,
    pub routes_changed: u64,
}

pub fn outage(f: &mut Fleet, n: usize) -> Result<Outage> {
    let leader = match f.etcd.members.len() >= 3 {
        true => Some(wait_for("an etcd leader", Duration::from_secs(20), || {
            f.etcd.leader()
        })?),
        false => None,
    };
    // The surviving members' counters only: the killed one's are gone from the reading
    // after (with them in, the minute's requests came out negative).
    let before = EtcdCounters::read_except(f, leader)?;
    let t0 = now_of_day();
    let start = Instant::now();
    let what = if let Some(l) = leader {
        f.etcd.kill(l);
        format!("leader (member {l} of {}) killed", f.etcd.members.len())
    } else {
        f.etcd.kill(0);
        std::thread::sleep(Duration::from_secs(2));
        f.etcd.members[0].restart()?;
        "single member killed, restarted after 2 s".to_owned()
    };
    let restarted = f.etcd.members.len() < 3;
    let resumed = wait_for("N watchers in etcd", Duration::from_secs(120), || {
        std::thread::sleep(Duration::from_millis(100));
        let c = EtcdCounters::read(f).ok()?;
        (c.watchers >= n as f64).then(|| start.elapsed().as_secs_f64())
    })?;
    std::thread::sleep(Duration::from_secs(60).saturating_sub(start.elapsed()));
    let now = EtcdCounters::read(f)?;
    // A restarted etcd counts from zero; surviving members from before the kill.
    let minute = if restarted { now } else { now.since(&before) };
    let routes_changed: u64 = all_changes(f)
        .iter()
        .filter(|c| c.at >= t0)
        .map(|c| c.added + c.removed)
        .sum();
    if let Some(l) = (0..f.etcd.members.len()).find(|&i| !f.etcd.members[i].alive()) {
        f.etcd.members[l].restart()?;
    }
    let o = Outage {
        what,
        watches_resumed_secs: resumed,
        minute,
        routes_changed,
    };
    let m = &o.minute;
    table(
        &format!("etcd outage, N = {n}: {}", o.what),
        &[
            (
                "all N watches resumed after",
                format!("{:.2} s", o.watches_resumed_secs),
            ),
            (
                "requests in that minute (Range / Txn / LeaseGrant / Watch)",
                format!(
                    "{} / {} / {} / {}",
                    m.get("Range"),
                    m.get("Txn"),
                    m.get("LeaseGrant"),
                    m.get("Watch")
                ),
            ),
            (
                "bytes sent by etcd in that minute",
                format!("{:.1} KiB", m.sent_bytes / 1024.0),
            ),
            ("routes changed anywhere", o.routes_changed.to_string()),
        ],
    );
    Ok(o)
}

// === compaction past every watch ===

#[derive(Debug, Clone, Serialize)]
pub struct Relist {
    pub compacted_watches: usize,
    pub ranges: f64,
    pub max_lists_per_node: usize,
    /// First to last re-list (daemons' log timestamps), seconds.
    pub burst_secs: f64,
    pub sent_mib: f64,
    pub until_all_listed_secs: f64,
}

const BLOCK: &str = "table inet hgwbench {\n chain in {\n  type filter hook input priority 0; policy accept;\n  iifname \"eth0\" tcp dport 2379 reject with tcp reset\n }\n}\n";

/// etcd's clients are cut off (a firewall rule in each member's namespace) until every
/// daemon's watch has broken, the store is written once and compacted, and the clients
/// are let back: every watch resumes at a compacted revision.
pub fn compaction(f: &mut Fleet, n: usize) -> Result<Relist> {
    let t_block = now_of_day();
    for ns in &f.etcd_ns {
        hostgw_harness::run_input(
            ns.cmd("nft").args(["-f", "-"]),
            BLOCK.as_bytes(),
            Duration::from_secs(10),
        )?;
    }
    let broke = wait_for("every watch broken", Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_secs(1));
        let k = measure::nodes_logged(f, n, t_block, "lease watch broke");
        (k >= n).then_some(k)
    });
    if broke.is_err() {
        unblock(f);
        bail!("not every watch broke within 60 s");
    }
    let m = &f.etcd.members[0];
    // etcd keeps the compacted revision itself: two writes put the daemons' next revision
    // (last seen + 1) below it.
    m.put(&format!("{PREFIX}/bench-tick"), "1")?;
    m.put(&format!("{PREFIX}/bench-tick"), "2")?;
    m.compact_now()?;
    let before = EtcdCounters::read(f)?;
    let t_open = now_of_day();
    let start = Instant::now();
    unblock(f);
    let all = wait_for("every daemon re-listed", Duration::from_secs(120), || {
        std::thread::sleep(Duration::from_millis(500));
        let k = measure::nodes_logged(f, n, t_open, "listed leases");
        (k >= n).then(|| start.elapsed().as_secs_f64())
    })
    .with_context(|| format!("node-0's log:\n{}", tail(&f.log(0), 30)))?;
    std::thread::sleep(Duration::from_secs(5));
    let delta = EtcdCounters::read(f)?.since(&before);
    let (per_node, times) = lists_since(f, n, t_open);
    let r = Relist {
        compacted_watches: log_events(f, t_open)
            .get("watch compacted")
            .copied()
            .unwrap_or(0),
        ranges: delta.get("Range"),
        max_lists_per_node: per_node,
        burst_secs: times.1 - times.0,
        sent_mib: delta.sent_bytes / 1048576.0,
        until_all_listed_secs: all,
    };
    table(
        &format!("compaction past every watch, N = {n}"),
        &[
            (
                "watches that found their revision compacted",
                r.compacted_watches.to_string(),
            ),
            ("etcd Range requests", r.ranges.to_string()),
            ("most lists by one daemon", r.max_lists_per_node.to_string()),
            (
                "re-list burst, first to last",
                format!("{:.2} s", r.burst_secs),
            ),
            ("bytes sent by etcd", format!("{:.1} MiB", r.sent_mib)),
            (
                "clients let back → all re-listed",
                format!("{:.2} s", r.until_all_listed_secs),
            ),
        ],
    );
    Ok(r)
}

fn unblock(f: &Fleet) {
    for ns in &f.etcd_ns {
        let _ = must(ns.cmd("nft").args(["delete", "table", "inet", "hgwbench"]));
    }
}

/// The most "listed leases" lines one node logged since `t`, and the first and last time.
fn lists_since(f: &Fleet, n: usize, t: f64) -> (usize, (f64, f64)) {
    let (mut most, mut first, mut last) = (0, f64::MAX, 0.0f64);
    for i in 0..n {
        let times: Vec<f64> = f
            .log(i)
            .lines()
            .filter(|l| l.contains("listed leases"))
            .filter_map(measure::line_time)
            .filter(|at| *at >= t)
            .collect();
        most = most.max(times.len());
        for at in times {
            first = first.min(at);
            last = last.max(at);
        }
    }
    (most, (first.min(last), last))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
