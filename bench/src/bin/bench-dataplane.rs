//! The data-plane comparison suite: native, hostgw ptp and bridge, a VXLAN overlay, the
//! reference CNI bridge with host-gw routes, and same-node pods, all in network namespaces
//! on this machine (see `hostgw_bench::dataplane` for the topology and method).
//!
//! ```text
//! cargo build --release --workspace --bins
//! target/release/bench-dataplane [--smoke] [--out DIR] [--secs 3] [--runs 5] [--lat-secs 2]
//!     [--lat-runs 5] [--streams 1,4] [--modes a,b] [--tune a,b] [--hold S] [--perf] [--no-pin]
//! target/release/bench-dataplane --render bench-out/dataplane.json   # redraw chart + table
//! ```
//!
//! Needs root. Writes `DIR/dataplane.json` and `DIR/dataplane.svg` (DIR defaults to
//! `bench-out/`) and prints a Markdown table. The full run takes about six minutes;
//! `--smoke` runs every mode once for one second.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Parser;
use hostgw_bench::dataplane::{self, MODES, Options, Report, TUNES};
use hostgw_harness::require_root;

#[derive(Parser)]
#[command(name = "bench-dataplane", about = "hostgw data plane vs native, overlay and reference", after_help = dataplane::modes_help())]
struct Args {
    /// Every mode once for one second (the defaults below become 1).
    #[arg(long)]
    smoke: bool,
    /// Where dataplane.json and dataplane.svg go.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Seconds per iperf3 run [default: 3, smoke 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    secs: Option<u32>,
    /// iperf3 runs per mode and stream count [default: 5, smoke 1].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    runs: Option<u64>,
    /// Seconds per sockperf run [default: 2, smoke 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    lat_secs: Option<u32>,
    /// sockperf runs per mode [default: 5, smoke 1].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    lat_runs: Option<u64>,
    /// Stream counts of the throughput runs.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    streams: Vec<u32>,
    /// Modes to measure (native always is); all when not given.
    #[arg(long, value_delimiter = ',')]
    modes: Vec<String>,
    /// Investigation knobs.
    #[arg(long, value_delimiter = ',')]
    tune: Vec<String>,
    /// Seconds to keep the topology up after building it.
    #[arg(long, default_value_t = 0)]
    hold: u64,
    /// Also profile one single-stream run of every mode with perf.
    #[arg(long)]
    perf: bool,
    /// Do not pin clients to CPU 0 and servers to CPU 1.
    #[arg(long)]
    no_pin: bool,
    /// Redraw the chart and the table of an earlier run's dataplane.json instead.
    #[arg(long, value_name = "JSON", num_args = 0..=1, default_missing_value = "bench-out/dataplane.json")]
    render: Option<PathBuf>,
}

impl Args {
    fn options(self) -> Result<Options> {
        for m in &self.modes {
            if !MODES.iter().any(|(id, ..)| id == m) {
                bail!("unknown mode {m:?}\n{}", dataplane::modes_help());
            }
        }
        for t in &self.tune {
            if !TUNES.iter().any(|(id, _)| id == t) {
                bail!("unknown tune {t:?}\n{}", dataplane::modes_help());
            }
        }
        let base = if self.smoke {
            Options::smoke(self.out)
        } else {
            Options::full(self.out)
        };
        Ok(Options {
            secs: self.secs.unwrap_or(base.secs),
            runs: self.runs.map_or(base.runs, |n| n as usize),
            lat_secs: self.lat_secs.unwrap_or(base.lat_secs),
            lat_runs: self.lat_runs.map_or(base.lat_runs, |n| n as usize),
            streams: self.streams,
            modes: self.modes,
            tune: self.tune,
            hold: self.hold,
            perf: self.perf,
            pin: !self.no_pin,
            command: std::iter::once("bench-dataplane".to_owned())
                .chain(std::env::args().skip(1))
                .collect::<Vec<_>>()
                .join(" "),
            ..base
        })
    }
}

fn render(path: PathBuf) -> Result<()> {
    let mut report: Report = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    dataplane::rederive(&mut report);
    std::fs::write(path.with_extension("svg"), dataplane::report::svg(&report))?;
    print!("{}", dataplane::table(&report));
    print!("\n{}", dataplane::concurrent_table(&report));
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(path) = args.render.clone() {
        return render(path);
    }
    let opts = args.options()?;
    require_root();
    let t0 = std::time::Instant::now();
    dataplane::run(&opts, &mut |line| {
        println!("[{:>6.1}s] {line}", t0.elapsed().as_secs_f64())
    })?;
    Ok(())
}
