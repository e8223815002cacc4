//! The data-plane comparison suite: native, hostgw ptp and bridge, a VXLAN overlay, the
//! reference CNI bridge with host-gw routes, and same-node pods, all in network namespaces
//! on this machine (see `hostgw_netns_tests::dataplane` for the topology and method).
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo run --release -p hostgw-netns-tests --bin bench-dataplane -- [--smoke] [--out DIR]
//!     [--secs 3] [--runs 5] [--lat-secs 2] [--lat-runs 5] [--streams 1,4] [--modes a,b]
//!     [--tune a,b] [--hold S]
//! target/release/bench-dataplane --render bench-out/dataplane.json   # redraw chart + table
//! ```
//!
//! Needs root. Writes `DIR/dataplane.json` and `DIR/dataplane.svg` (DIR defaults to
//! `bench-out/`) and prints a Markdown table. The full run takes about six minutes;
//! `--smoke` runs every mode once for one second.

use anyhow::Result;
use hostgw_netns_tests::{dataplane, require_root};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `--render DIR/dataplane.json`: redraw the chart and the table of an earlier run.
    if args.first().map(String::as_str) == Some("--render") {
        let path = std::path::PathBuf::from(
            args.get(1)
                .map(String::as_str)
                .unwrap_or("bench-out/dataplane.json"),
        );
        let mut report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        dataplane::rederive(&mut report);
        std::fs::write(path.with_extension("svg"), dataplane::svg(&report))?;
        print!("{}", dataplane::table(&report));
        return Ok(());
    }
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
