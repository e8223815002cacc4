//! Benchmarks of hostgw-routed (binary `bench-routed`; figures printed, nothing asserted):
//! convergence and peak RSS at 5,000 leases, propagation latency of a new lease, drift
//! repair latency, etcd range requests per minute while idle, and lease-to-route latency
//! while 10,000 other leases are put and deleted in a loop.
//!
//! `cargo build --release --workspace --bins && target/release/bench-routed [convergence|churn]`
//! (as root).
//! Everything runs in throwaway namespaces; run time is bounded (about two minutes).

use std::{
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use hostgw_harness::{
    Proc, require_root,
    routed::{Cluster, PREFIX, Spec, lease_json, subnet_key},
    wait_for,
};

const LEASES: usize = 5_000;
const SAMPLES: usize = 200;
const IDLE: Duration = Duration::from_secs(60);

/// Runs every benchmark, or with `only_convergence` only the first.
pub fn run(only_convergence: bool) -> Result<()> {
    require_root();
    convergence()?;
    if only_convergence {
        return Ok(());
    }
    let mut c = Cluster::new(Spec::default())?;
    c.start_all()?;
    c.wait_converged(Duration::from_secs(20))?;
    let installed = propagation(&c)?;
    drift_repair(&c, &installed)?;
    idle(&c)?;
    churn()?;
    Ok(())
}

const CHURN_LEASES: usize = 10_000;
const CHURN_FOR: Duration = Duration::from_secs(40);
const CHURN_PROBES: usize = 100;

/// Lease-to-route latency under churn: a writer puts 10,000 leases (/32s in
/// 198.18.200-239.x, 100 per transaction) and deletes them all (one range delete), over
/// and over; meanwhile probe leases in 198.18.10.x are put one at a time and the time
/// until each one's route is in the kernel is measured (polled every ~5 ms).
pub fn churn() -> Result<()> {
    let cfg = r#"{"Network":"198.18.0.0/16","SubnetLen":32,"SubnetMin":"198.18.0.1","SubnetMax":"198.18.0.250","Backend":{"Type":"host-gw"}}"#;
    let mut c = Cluster::new(Spec {
        nodes: 1,
        tls: false,
        config: cfg,
    })?;
    c.nodes[0]
        .ns
        .ip(&["addr", "add", "198.19.255.10/16", "dev", "eth0"])?;
    c.start(0)?;
    c.wait_subnet(0)?;
    let kvs: Vec<(String, String)> = (0..CHURN_LEASES)
        .map(|i| {
            let subnet = format!("198.18.{}.{}/32", 200 + i / 250, i % 250);
            let ip = format!("198.19.{}.{}", 1 + i / 250, 1 + i % 250);
            (subnet_key(&subnet), lease_json(&ip, &format!("churn-{i}")))
        })
        .collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (lat, cycles) = std::thread::scope(|s| -> Result<(Vec<f64>, usize)> {
        let writer = s.spawn(|| -> Result<usize> {
            let mut cycles = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.etcd.put_many(&kvs)?;
                c.etcd
                    .ctl(&["del", "--prefix", &format!("{PREFIX}/subnets/198.18.2")])?;
                cycles += 1;
            }
            Ok(cycles)
        });
        std::thread::sleep(Duration::from_secs(3));
        let lat = probe_under_churn(&c);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let cycles = writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
        Ok((lat?, cycles))
    })?;
    percentiles(
        &format!(
            "churn (lease put to route in the kernel while {CHURN_LEASES} other leases are put and deleted in a loop, {cycles} cycles = {} events)",
            cycles * CHURN_LEASES * 2
        ),
        lat,
        "",
    );
    Ok(())
}

fn probe_under_churn(c: &Cluster) -> Result<Vec<f64>> {
    let ns = c.nodes[0].ns.name().to_owned();
    let started = Instant::now();
    let mut lat = vec![];
    for k in 0..CHURN_PROBES {
        if started.elapsed() > CHURN_FOR {
            break;
        }
        let dst = format!("198.18.10.{}/32", k + 1);
        let t0 = Instant::now();
        c.etcd.put(
            &subnet_key(&dst),
            &lease_json(&format!("198.19.100.{}", k + 1), &format!("probe-{k}")),
        )?;
        wait_for(&format!("route {dst}"), Duration::from_secs(60), || {
            let out = Command::new("ip")
                .args(["-n", &ns, "route", "show", "exact", &dst, "proto", "75"])
                .output()
                .ok()?;
            (!out.stdout.is_empty()).then_some(())
        })
        .with_context(|| c.log(0))?;
        lat.push(t0.elapsed().as_secs_f64());
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(lat)
}

fn owned_count(ns: &str) -> Result<usize> {
    // `.output()` reads while the child writes: 5,000 routes overflow a pipe buffer.
    let out = Command::new("ip")
        .args(["-n", ns, "route", "show", "proto", "75"])
        .output()?;
    Ok(out
        .stdout
        .split(|b| *b == b'\n')
        // Routes to peers: the node's own `unreachable <subnet>` is not one.
        .filter(|l| !l.is_empty() && !l.starts_with(b"unreachable"))
        .count())
}

fn convergence() -> Result<()> {
    let cfg = r#"{"Network":"198.18.0.0/16","SubnetLen":29,"Backend":{"Type":"host-gw"}}"#;
    let mut c = Cluster::new(Spec {
        nodes: 1,
        tls: false,
        config: cfg,
    })?;
    // Peers spread over 198.19.0.0/16, all on the node's segment.
    c.nodes[0]
        .ns
        .ip(&["addr", "add", "198.19.255.10/16", "dev", "eth0"])?;
    let kvs: Vec<(String, String)> = (1..LEASES)
        .map(|i| {
            let subnet = format!("198.18.{}.{}/29", i / 32, (i % 32) * 8);
            let ip = format!("198.19.{}.{}", 1 + i / 250, 1 + i % 250);
            (subnet_key(&subnet), lease_json(&ip, &format!("peer-{i}")))
        })
        .collect();
    c.etcd.put_many(&kvs)?;
    let ns = c.nodes[0].ns.name().to_owned();
    let start = Instant::now();
    c.start(0)?;
    wait_for("all routes", Duration::from_secs(30), || {
        (owned_count(&ns).ok()? >= LEASES - 1).then_some(())
    })
    .with_context(|| {
        format!(
            "{} routes; log:\n{}",
            owned_count(&ns).unwrap_or(0),
            c.log(0)
        )
    })?;
    let took = start.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let pid = c.nodes[0].daemon.as_ref().map(|p| p.pid()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?")
        .to_owned();
    println!(
        "convergence: {LEASES} leases in etcd, {} routes installed {:.0} ms after start (process start to last route, polled every ~5 ms)",
        LEASES - 1,
        took.as_secs_f64() * 1e3
    );
    if let Some(l) = c.log(0).lines().find(|l| l.contains("routes applied")) {
        println!(
            "  daemon: {}",
            l.split("routes applied").nth(1).unwrap_or("").trim()
        );
    }
    println!("peak RSS: {}", hwm.trim_start_matches("VmHWM:").trim());
    Ok(())
}

/// Seconds since midnight UTC of an `ip -ts monitor` line: `[2026-11-22T17:06:20.887300] …`.
fn ts(line: &str) -> Option<f64> {
    let t = line
        .strip_prefix('[')?
        .split(']')
        .next()?
        .split('T')
        .nth(1)?;
    let mut p = t.split(':');
    let (h, m, s): (f64, f64, f64) = (
        p.next()?.parse().ok()?,
        p.next()?.parse().ok()?,
        p.next()?.parse().ok()?,
    );
    Some(h * 3600.0 + m * 60.0 + s)
}

fn now_of_day() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() % 86_400.0)
        .unwrap_or(0.0)
}

struct Monitor {
    _proc: Proc,
    path: std::path::PathBuf,
}

impl Monitor {
    fn start(c: &Cluster, i: usize, name: &str) -> Result<Monitor> {
        let path = c.dir.path().join(name);
        let mut cmd = Command::new("ip");
        cmd.args(["-ts", "-n", c.nodes[i].ns.name(), "monitor", "route"])
            .env("TZ", "UTC")
            .stdout(std::fs::File::create(&path)?);
        let m = Monitor {
            _proc: Proc::spawn(cmd)?,
            path,
        };
        std::thread::sleep(Duration::from_millis(200));
        Ok(m)
    }

    /// Timestamp of the first line after `from` that contains `needle` (and, if `added`,
    /// is not a deletion).
    fn wait(&self, needle: &str, added: bool, from: f64) -> Result<f64> {
        wait_for(needle, Duration::from_secs(3), || {
            let text = std::fs::read_to_string(&self.path).ok()?;
            text.lines()
                .filter(|l| {
                    l.contains(needle) && l.contains("proto 75") && (l.contains("Deleted") != added)
                })
                .filter_map(ts)
                .find(|t| *t >= from)
        })
    }
}

fn percentiles(name: &str, mut v: Vec<f64>, extra: &str) {
    v.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1] * 1e3;
    println!(
        "{name}: n={} p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms{extra}",
        v.len(),
        p(0.5),
        p(0.99),
        p(1.0)
    );
}

/// A new lease written to etcd until its route appears on node 1.
fn propagation(c: &Cluster) -> Result<Vec<String>> {
    let mon = Monitor::start(c, 1, "prop.txt")?;
    let used: Vec<String> = (0..3).filter_map(|i| c.subnet(i)).collect();
    let free: Vec<String> = (1..=254)
        .map(|n| format!("198.18.{n}.0/24"))
        .filter(|s| !used.contains(s))
        .take(SAMPLES)
        .collect();
    if free.len() < SAMPLES {
        bail!("not enough free subnets");
    }
    let (mut lat, mut put) = (vec![], vec![]);
    for (k, subnet) in free.iter().enumerate() {
        let t0 = now_of_day();
        let started = Instant::now();
        c.etcd.put(
            &subnet_key(subnet),
            &lease_json(&format!("198.19.0.{}", 100 + k % 100), &format!("p{k}")),
        )?;
        put.push(started.elapsed().as_secs_f64());
        let seen = mon.wait(&format!("{subnet} via"), true, t0)?;
        lat.push(seen - t0);
    }
    percentiles(
        "propagation (etcd put on one side to route in another node's kernel)",
        lat,
        "",
    );
    percentiles(
        "  of which the etcdctl put command itself",
        put,
        " (process start + gRPC; an upper bound on overhead)",
    );
    Ok(free)
}

/// An owned route deleted by hand until the daemon has put it back (kernel timestamps of
/// both events from `ip -ts monitor`).
fn drift_repair(c: &Cluster, subnets: &[String]) -> Result<()> {
    let mon = Monitor::start(c, 0, "drift.txt")?;
    let mut lat = vec![];
    for subnet in subnets.iter().take(SAMPLES) {
        let t0 = now_of_day();
        c.nodes[0].ns.ip(&["route", "del", subnet])?;
        let deleted = mon.wait(&format!("{subnet} via"), false, t0 - 0.001)?;
        let back = mon.wait(&format!("{subnet} via"), true, deleted)?;
        lat.push(back - deleted);
    }
    percentiles("drift repair (route deleted to route restored)", lat, "");
    Ok(())
}

fn idle(c: &Cluster) -> Result<()> {
    std::thread::sleep(Duration::from_secs(2));
    let before = c.etcd.range_requests()?;
    std::thread::sleep(IDLE);
    let after = c.etcd.range_requests()?;
    println!(
        "idle: {} etcd Range requests in {}s with 3 daemons and {} leases (grpc_server_handled_total{{grpc_method=\"Range\"}})",
        after - before,
        IDLE.as_secs(),
        SAMPLES + 3
    );
    Ok(())
}
