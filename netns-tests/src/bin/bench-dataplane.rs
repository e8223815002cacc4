//! The data-plane comparison suite: native, hostgw ptp and bridge, a VXLAN overlay, the
//! reference CNI bridge with host-gw routes, and same-node pods, all in network namespaces
//! on this machine (see `hostgw_netns_tests::dataplane` for the topology and method).
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo run --release -p hostgw-netns-tests --bin bench-dataplane -- [--smoke] [--out DIR]
//!     [--secs 5] [--runs 3] [--lat-secs 3] [--lat-runs 3] [--modes a,b] [--tune a,b] [--hold S]
//! ```
//!
//! Needs root. Writes `DIR/dataplane.json` and `DIR/dataplane.svg` (DIR defaults to
//! `bench-out/`) and prints a Markdown table. The full run takes about five minutes;
//! `--smoke` runs every mode once for one second.

use anyhow::Result;
use hostgw_netns_tests::{dataplane, require_root};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut opts = dataplane::Options::parse(&args)?;
    opts.command = std::iter::once("bench-dataplane".to_owned())
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ");
    require_root();
    let t0 = std::time::Instant::now();
    dataplane::run(&opts, &mut |line| {
        println!("[{:>6.1}s] {line}", t0.elapsed().as_secs_f64())
    })?;
    Ok(())
}
