//! `bench-scale`: N real `hostgw-routed` daemons (default 1,000) in node namespaces on one
//! segment against one real etcd (or three members), through the phases of issue 11: the
//! kernel floor, a cold start storm, a steady state, churn, etcd leader loss or restart,
//! and a compaction past every watch. Figures come from etcd's own /metrics, /proc and the
//! daemons' logs; each phase prints a table, and the whole run is written as JSON and a
//! convergence chart (SVG).
//!
//! `cargo build --release --workspace --bins && target/release/bench-scale --nodes 1000`
//! (as root; `--help` for the phase lengths). Everything it makes is removed at the end, and
//! on Ctrl-C or SIGTERM (namespaces of this run by name, processes by PID).

use std::{path::PathBuf, time::Duration};

use anyhow::Result;
use hostgw_harness::{
    fleet::{Fleet, FleetSpec},
    require_root,
};
use serde::Serialize;

pub mod chart;
pub mod cleanup;
pub mod measure;
mod phases;

pub use phases::{ChurnFigures, ColdStart, Floor, Outage, Relist, Restart, Steady};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub nodes: usize,
    pub etcd_members: usize,
    pub steady: Duration,
    /// Nodes that join one at a time (then the same nodes are released).
    pub churn: usize,
    /// Pause between two churn events (each event's latency is read from the logs, so the
    /// pause only needs to outlast it).
    pub event_gap: Duration,
    /// Also run the full-restart phases (with and without the lease cache).
    pub restarts: bool,
    /// Also run the outage and compaction phases.
    pub outages: bool,
    /// Where the JSON and SVG go (nothing written when `None`).
    pub out: Option<PathBuf>,
}

/// `/27`s: 2,048 subnets in 198.18.0.0/16, and the pool is what decides how often nodes
/// starting together pick the same subnet (birthday odds: ~N²/2P lost races for N
/// nodes and P free subnets). `/29`: 8,192 subnets, about 6 % lost races at N = 1,000.
pub const CONFIG: &str =
    r#"{"Network":"198.18.0.0/16","SubnetLen":29,"Backend":{"Type":"host-gw"}}"#;

#[derive(Debug, Serialize)]
pub struct Report {
    pub nodes: usize,
    pub etcd_members: usize,
    pub date: String,
    pub machine: String,
    pub setup_secs: f64,
    pub floor: Floor,
    pub cold: ColdStart,
    pub steady: Steady,
    pub churn: Option<ChurnFigures>,
    /// Every daemon restarted at once: with the lease cache, then without.
    pub restarts: Vec<Restart>,
    pub outage: Option<Outage>,
    pub relist: Option<Relist>,
    pub traffic: String,
    /// Memory the machine used with everything up (MemTotal - MemAvailable), MiB.
    pub machine_used_mib: u64,
}

pub fn run(o: &Options) -> Result<Report> {
    require_root();
    cleanup::install()?;
    let t = std::time::Instant::now();
    let mut f = Fleet::new(FleetSpec {
        nodes: o.nodes + o.churn,
        etcd_members: o.etcd_members,
        config: CONFIG,
    })?;
    cleanup::register(&f);
    let setup_secs = t.elapsed().as_secs_f64();
    println!(
        "setup: {} node namespaces + {} etcd member(s) in {setup_secs:.1} s",
        f.nodes.len(),
        o.etcd_members
    );
    let floor = phases::floor(&f, o.nodes)?;
    let mut cold = phases::cold_start(&mut f, o.nodes)?;
    cold.converged_vs_floor = cold.converged_secs / floor.secs;
    println!(
        "cold start: {:.2} × the kernel floor (target ≤ 2), {:.2} × the floor with a listener per namespace\n",
        cold.converged_vs_floor,
        cold.converged_secs / floor.listening_secs
    );
    let traffic = phases::traffic(&f, o.nodes)?;
    let steady = phases::steady(&mut f, o.nodes, o.steady)?;
    let machine_used_mib = machine_used_mib();
    let churn = if o.churn > 0 {
        Some(phases::churn(&mut f, o.nodes, o.churn, o.event_gap)?)
    } else {
        None
    };
    let mut restarts = Vec::new();
    if o.restarts {
        for cache in [true, false] {
            match phases::restart(&mut f, o.nodes, cache) {
                Ok(r) => restarts.push(r),
                Err(e) => eprintln!("restart phase (cache: {cache}): {e:#}"),
            }
        }
    }
    // The last two phases break etcd on purpose: one that fails is reported, and the
    // figures gathered so far are still written.
    let (outage, relist) = if o.outages {
        (
            phases::outage(&mut f, o.nodes)
                .inspect_err(|e| eprintln!("outage phase: {e:#}"))
                .ok(),
            phases::compaction(&mut f, o.nodes)
                .inspect_err(|e| eprintln!("compaction phase: {e:#}"))
                .ok(),
        )
    } else {
        (None, None)
    };
    let report = Report {
        nodes: o.nodes,
        etcd_members: o.etcd_members,
        date: date(),
        machine: machine(),
        setup_secs,
        floor,
        cold,
        steady,
        churn,
        restarts,
        outage,
        relist,
        traffic,
        machine_used_mib,
    };
    if let Some(dir) = &o.out {
        write(dir, &report)?;
    }
    let t = std::time::Instant::now();
    drop(f);
    println!("teardown: {:.1} s", t.elapsed().as_secs_f64());
    Ok(report)
}

fn write(dir: &std::path::Path, r: &Report) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let stem = format!("scale-{}n-{}m", r.nodes, r.etcd_members);
    let json = dir.join(format!("{stem}.json"));
    std::fs::write(&json, serde_json::to_string_pretty(r)?)?;
    let svg = dir.join(format!("{stem}.svg"));
    std::fs::write(&svg, chart::convergence_svg(r))?;
    println!("wrote {} and {}", json.display(), svg.display());
    Ok(())
}

fn machine_used_mib() -> u64 {
    let m = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb = |k: &str| {
        m.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    kb("MemTotal:").saturating_sub(kb("MemAvailable:")) / 1024
}

fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}
