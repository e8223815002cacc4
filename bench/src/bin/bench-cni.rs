//! Benchmark of the `hostgw` CNI plugin against the reference `bridge` + `host-local`
//! (method: `hostgw_bench::cni`).
//!
//! ```text
//! cargo build --release --workspace --bins
//! target/release/bench-cni [--runs 200] [--burst 100] [--burst-reps 3] [--warmup 3] [--json out.json]
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use hostgw_bench::cni;

#[derive(Parser)]
#[command(
    name = "bench-cni",
    about = "hostgw CNI plugin vs reference bridge + host-local (needs root)"
)]
struct Args {
    /// Sequential ADD+DEL pairs per contender.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// ADDs launched at once (at most 250).
    #[arg(long, default_value_t = 100)]
    burst: usize,
    #[arg(long, default_value_t = 3)]
    burst_reps: usize,
    /// Sequential pairs not counted.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Also write the figures as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    #[command(subcommand)]
    probe: Option<Probe>,
}

#[derive(Subcommand)]
enum Probe {
    /// Internal: runs the calls given on stdin and prints their peak RSS.
    #[command(hide = true)]
    RssProbe,
}

fn main() {
    let a = Args::parse();
    let r = match a.probe {
        Some(Probe::RssProbe) => cni::probe::probe_main(),
        None => cni::run(&cni::Options {
            runs: a.runs,
            burst: a.burst,
            burst_reps: a.burst_reps,
            warmup: a.warmup,
            json: a.json,
        }),
    };
    if let Err(e) = r {
        eprintln!("bench-cni: {e:#}");
        std::process::exit(1);
    }
}
