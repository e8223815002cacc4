//! The CNI benchmark's figures: statistics, the typed JSON report (`--json`), and the
//! Markdown tables it prints.

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;
use serde_json::Value;

/// No more than this peak RSS per call of our plugin.
pub const RSS_TARGET_KIB: i64 = 5 * 1024;

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of unsorted samples.
pub fn pct(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub n: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Summary {
    pub fn of(samples: &[f64]) -> Summary {
        Summary {
            n: samples.len(),
            p50_ms: pct(samples, 50.0),
            p90_ms: pct(samples, 90.0),
            p99_ms: pct(samples, 99.0),
            min_ms: pct(samples, 0.0),
            max_ms: pct(samples, 100.0),
            mean_ms: samples.iter().sum::<f64>() / samples.len().max(1) as f64,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub date: String,
    pub hostname: String,
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_kib: u64,
    pub kernel: String,
    pub loadavg_start: String,
    pub loadavg_end: String,
}

#[derive(Debug, Serialize)]
pub struct Burst {
    pub size: usize,
    pub add_wall_ms_per_rep: Vec<f64>,
    pub add_wall_ms_median: f64,
    pub add_calls: Summary,
    pub add_cpu_ms_sum_per_rep: Vec<f64>,
    pub del_wall_ms_per_rep: Vec<f64>,
    pub del_wall_ms_median: f64,
    pub del_calls: Summary,
}

#[derive(Debug, Serialize)]
pub struct PeakRss {
    pub add: i64,
    pub del: i64,
    pub max: i64,
}

#[derive(Debug, Serialize)]
pub struct ContenderReport {
    pub plugin: String,
    /// The config it ran with, as given.
    pub config: Value,
    pub add: Summary,
    pub del: Summary,
    pub add_del: Summary,
    pub add_cpu: Summary,
    pub del_cpu: Summary,
    pub burst: Burst,
    pub peak_rss_kib: PeakRss,
}

#[derive(Debug, Serialize)]
pub struct Params {
    pub runs: usize,
    pub warmup: usize,
    pub burst: usize,
    pub burst_reps: usize,
}

#[derive(Debug, Serialize)]
pub struct Method {
    pub timing: &'static str,
    pub rss: &'static str,
    pub burst_wall: &'static str,
    pub percentiles: &'static str,
}

pub const METHOD: Method = Method {
    timing: "spawn() of `nsenter --net=<node ns> -- <plugin>` (env + config on stdin, as cni::command) to pidfd-readable exit",
    rss: "ru_maxrss (KiB) of RUSAGE_CHILDREN in a probe process (bench-cni rss-probe) that ran only that contender's calls: max over each call's exec chain (spawn image, nsenter, plugin) and the children it waited for (reference: host-local)",
    burst_wall: "first spawn to last exit; median over reps",
    percentiles: "nearest rank",
};

#[derive(Debug, Serialize)]
pub struct Floor {
    pub cmd: &'static str,
    pub wall: Summary,
    pub peak_rss_kib: i64,
}

#[derive(Debug, Serialize)]
pub struct Target {
    pub contender: &'static str,
    pub single_add_p50_ratio: f64,
    pub single_add_met: bool,
    pub burst_wall_ratio: f64,
    pub burst_met: bool,
    pub peak_rss_kib: i64,
    pub rss_met: bool,
    pub rss_above_floor: bool,
}

#[derive(Debug, Serialize)]
pub struct PhaseSeconds {
    pub sequential: f64,
    pub bursts: f64,
    pub total: f64,
}

/// `--json`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub git: String,
    pub ours_binary: String,
    pub ours_binary_sha256: String,
    pub reference_sha256: String,
    pub ours_binary_bytes: u64,
    pub reference_version: String,
    pub params: Params,
    pub method: Method,
    pub contenders: BTreeMap<&'static str, ContenderReport>,
    pub floor: Floor,
    pub targets: Vec<Target>,
    pub node_links_after: BTreeMap<&'static str, Vec<String>>,
    pub phase_seconds: PhaseSeconds,
}

pub fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub fn mib(kib: i64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

pub fn verdict(ok: bool) -> &'static str {
    if ok { "MET" } else { "NOT MET" }
}

pub const TABLE_HEAD: [&str; 12] = [
    "contender",
    "ADD p50",
    "ADD p99",
    "DEL p50",
    "DEL p99",
    "ADD+DEL p50",
    "ADD+DEL p99",
    "burst wall",
    "burst p50",
    "burst p99",
    "burst DEL wall",
    "peak RSS",
];
