//! `bench-scale`: N real `hostgw-routed` daemons against one etcd (method:
//! `hostgw_bench::scale`). As root:
//! `cargo build --release --workspace --bins && target/release/bench-scale --nodes 1000`.
#![forbid(unsafe_code)]

use std::{path::PathBuf, time::Duration};

use anyhow::Result;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "bench-scale",
    about = "N hostgw-routed daemons in node namespaces against one etcd (needs root)"
)]
struct Args {
    /// Node namespaces, each running one daemon.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// etcd members (1 or 3); with 3 every daemon is given all endpoints.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=3))]
    etcd_members: u8,
    /// Length of the steady-state phase, seconds.
    #[arg(long, default_value_t = 120)]
    steady_secs: u64,
    /// Nodes that join one at a time, then are released (0: no churn phase).
    #[arg(long, default_value_t = 100)]
    churn: usize,
    /// Pause between churn events, milliseconds.
    #[arg(long, default_value_t = 1500)]
    event_gap_ms: u64,
    /// Skip the etcd outage and compaction phases.
    #[arg(long)]
    no_outages: bool,
    /// Skip the full restarts of every daemon (with and without the lease cache).
    #[arg(long)]
    no_restarts: bool,
    /// Folder for the JSON and SVG.
    #[arg(long, default_value = "benchmarks")]
    out: PathBuf,
}

fn main() -> Result<()> {
    let a = Args::parse();
    anyhow::ensure!(a.nodes >= 2, "--nodes must be at least 2");
    hostgw_bench::scale::run(&hostgw_bench::scale::Options {
        nodes: a.nodes,
        etcd_members: usize::from(a.etcd_members),
        steady: Duration::from_secs(a.steady_secs),
        churn: a.churn,
        event_gap: Duration::from_millis(a.event_gap_ms),
        restarts: !a.no_restarts,
        outages: !a.no_outages,
        out: Some(a.out),
    })?;
    Ok(())
}
