//! Benchmarks of hostgw-routed: convergence and peak RSS at 5,000 leases, propagation
//! latency of a new lease, drift repair latency, etcd range requests while idle (method:
//! `hostgw_bench::routed`).
//!
//! `cargo build --release --workspace --bins && target/release/bench-routed [convergence|churn]`
//! (as root).
#![forbid(unsafe_code)]

use anyhow::Result;
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, ValueEnum)]
enum Part {
    /// Only the convergence benchmark.
    Convergence,
    /// Only the lease-to-route latency under churn (10,000 leases put and deleted in a loop).
    Churn,
}

#[derive(Parser)]
#[command(
    name = "bench-routed",
    about = "Benchmarks of hostgw-routed (needs root)"
)]
struct Args {
    /// Run only this part (all when not given).
    part: Option<Part>,
}

fn main() -> Result<()> {
    let a = Args::parse();
    match a.part {
        Some(Part::Churn) => hostgw_bench::routed::churn(),
        part => hostgw_bench::routed::run(matches!(part, Some(Part::Convergence))),
    }
}
