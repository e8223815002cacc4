//! Benchmarks of hostgw-routed: convergence and peak RSS at 5,000 leases, propagation
//! latency of a new lease, drift repair latency, etcd range requests while idle (method:
//! `hostgw_bench::routed`).
//!
//! `cargo build --release --workspace --bins && target/release/bench-routed [convergence]`
//! (as root).
#![forbid(unsafe_code)]

use anyhow::Result;
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, ValueEnum)]
enum Part {
    /// Only the convergence benchmark.
    Convergence,
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
    hostgw_bench::routed::run(matches!(a.part, Some(Part::Convergence)))
}
