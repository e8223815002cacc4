//! The suite's report (`dataplane.json`) as typed structs, the statistics behind it, the
//! derived ratios and target checks, and its Markdown tables.

use std::{collections::BTreeMap, fmt::Write as _, process::Command};

use hostgw_harness::must;
use serde::{Deserialize, Serialize};

use super::measure::BUCKETS;
use crate::chart::{Bar, Chart, Group, Panel, Series};

/// Everything one run measured, as written to `dataplane.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub suite: String,
    pub smoke: bool,
    pub date: String,
    pub command: String,
    pub machine: Machine,
    pub load_average: LoadAverage,
    pub params: Params,
    pub node_state: NodeState,
    pub modes: Vec<Mode>,
    pub targets: Vec<Target>,
    /// Per mode id, with `--perf` only.
    pub profile: Option<BTreeMap<String, Profile>>,
    pub elapsed_s: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cpus: u64,
    pub memory: String,
    pub os: String,
    pub virtualization: String,
    pub iperf3: String,
    pub sockperf: String,
    pub containernetworking_plugins: String,
    pub git: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoadAverage {
    pub before: String,
    pub after: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Params {
    pub iperf3_seconds: u32,
    pub iperf3_runs: usize,
    pub streams: Vec<u32>,
    pub latency: String,
    pub latency_seconds: u32,
    pub latency_runs: usize,
    pub pinned: String,
    pub tunes: Vec<Tune>,
    pub cpu: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tune {
    pub id: String,
    pub what: Option<String>,
}

/// What node 0 looks like on the forwarding path.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeState {
    pub node: String,
    pub nft_tables: Vec<String>,
    pub nf_conntrack_count: String,
    pub ip_forward: String,
    pub rp_filter_all: String,
    pub rp_filter_eth0: String,
    pub bridge_nf_call_iptables: String,
    pub eth0_gro: String,
    pub eth0_qdisc: String,
}

/// One mode's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Mode {
    pub id: String,
    pub label: String,
    pub path: String,
    pub mtu: u32,
    pub tcp_1: Option<TcpStats>,
    pub tcp_4: Option<TcpStats>,
    pub latency_us: Latency,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio_to_native: Option<Ratios>,
    /// The concurrent A/B runs against a partner (native, and for the BIG TCP mode also
    /// native-bigtcp): the figure of record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub concurrent: Vec<Concurrent>,
}

/// This mode's flow and `partner`'s at the same time, clients on CPU 0, servers on CPU 1.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Concurrent {
    pub partner: String,
    pub streams: u32,
    /// This mode's Gbit/s ÷ the partner's in the same run, over the rounds.
    pub ratio: Option<Stats>,
    pub gbps: Option<Stats>,
    pub partner_gbps: Option<Stats>,
    /// CPU per Gbit ÷ the partner's: the inverse of `ratio` (both senders share one CPU).
    pub cpu_per_gbit_ratio: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TcpStats {
    pub gbps: Option<Stats>,
    pub cpu_s_per_gbit: Option<f64>,
    pub machine_cpu_s_per_gbit: Option<f64>,
    pub retransmits: Vec<Option<u64>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: Option<Stats>,
    pub p99: Option<Stats>,
    pub avg: Option<f64>,
}

/// Median, min, max and spread ((max - min) / median, %) of a mode's runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub spread_pct: f64,
    pub runs: Vec<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ratios {
    pub method: String,
    pub tcp_1: Option<f64>,
    pub tcp_4: Option<f64>,
    pub latency_p50: Option<f64>,
    pub of_medians: OfMedians,
}

/// Ratios of the medians (carry the background load of a slow phase; for comparison).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OfMedians {
    pub tcp_1: Option<f64>,
    pub tcp_4: Option<f64>,
    pub latency_p50: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub mode: String,
    pub target: String,
    pub value: Option<f64>,
    pub goal: String,
    pub met: Option<bool>,
}

/// Where the CPU time of one single-stream run went (`--perf`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub gbps: f64,
    pub cpu_ms_per_gb: f64,
    pub buckets: BTreeMap<String, f64>,
    pub top_symbols: Vec<Symbol>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Symbol {
    pub symbol: String,
    pub cpu_ms_per_gb: f64,
}

// === statistics ===

impl Stats {
    /// `None` for no samples.
    pub fn of(v: &[f64]) -> Option<Stats> {
        if v.is_empty() {
            return None;
        }
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        let (min, max) = (s[0], s[n - 1]);
        Some(Stats {
            median: round(median, 3),
            min: round(min, 3),
            max: round(max, 3),
            spread_pct: if median > 0.0 {
                round((max - min) / median * 100.0, 1)
            } else {
                0.0
            },
            runs: v.iter().map(|x| round(*x, 3)).collect(),
        })
    }
}

/// The median of the values that are there.
pub fn median_opt(v: &[Option<f64>]) -> Option<f64> {
    let xs: Vec<f64> = v.iter().flatten().copied().collect();
    Stats::of(&xs).map(|s| s.median)
}

pub fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

/// The median of the per-round ratios `a[i] / b[i]`. Rounds are interleaved (one run of
/// every mode, then the next round), so a pair of runs of one round saw the same
/// background: a slow phase of a shared machine moves both and cancels out, where a
/// ratio of two medians would carry it.
pub fn paired_ratio(a: &[f64], b: &[f64]) -> Option<f64> {
    let r: Vec<f64> = a
        .iter()
        .zip(b)
        .filter(|(_, y)| **y > 0.0)
        .map(|(x, y)| x / y)
        .collect();
    Stats::of(&r).map(|s| s.median)
}

// === derived figures ===

/// Which figure of a mode a ratio or chart series is about.
#[derive(Clone, Copy, Debug)]
pub enum Figure {
    Tcp1,
    Tcp4,
    LatencyP50,
    LatencyP99,
}

impl Figure {
    pub fn of(self, m: &Mode) -> Option<&Stats> {
        match self {
            Figure::Tcp1 => m.tcp_1.as_ref()?.gbps.as_ref(),
            Figure::Tcp4 => m.tcp_4.as_ref()?.gbps.as_ref(),
            Figure::LatencyP50 => m.latency_us.p50.as_ref(),
            Figure::LatencyP99 => m.latency_us.p99.as_ref(),
        }
    }

    fn runs(self, m: &Mode) -> &[f64] {
        self.of(m).map_or(&[], |s| &s.runs)
    }

    fn median(self, m: &Mode) -> Option<f64> {
        self.of(m).map(|s| s.median)
    }
}

fn ratios(m: &Mode, native: &Mode) -> Ratios {
    let ratio = |f: Figure| paired_ratio(f.runs(m), f.runs(native)).map(|x| round(x, 3));
    let of_medians = |f: Figure| match (f.median(m), f.median(native)) {
        (Some(x), Some(n)) if n > 0.0 => Some(round(x / n, 3)),
        _ => None,
    };
    Ratios {
        method: "median over rounds of this mode's run / native's run of the same round".into(),
        tcp_1: ratio(Figure::Tcp1),
        tcp_4: ratio(Figure::Tcp4),
        latency_p50: ratio(Figure::LatencyP50),
        of_medians: OfMedians {
            tcp_1: of_medians(Figure::Tcp1),
            tcp_4: of_medians(Figure::Tcp4),
            latency_p50: of_medians(Figure::LatencyP50),
        },
    }
}

pub fn add_ratios(modes: &mut [Mode]) {
    let Some(native) = modes.iter().find(|m| m.id == "native").cloned() else {
        return;
    };
    for m in modes.iter_mut() {
        m.ratio_to_native = Some(ratios(m, &native));
    }
}

/// The issue's targets for each hostgw mode: single-stream TCP ≥ 0.95× native, p50 ≤ 1.15×
/// native, single-stream TCP ≥ 1.3× the overlay.
pub fn targets(modes: &[Mode]) -> Vec<Target> {
    let get = |id: &str| modes.iter().find(|m| m.id == id);
    let overlay = get("overlay-vxlan").map(|m| Figure::Tcp1.runs(m));
    let mut out = Vec::new();
    for id in ["hostgw-ptp", "hostgw-bridge"] {
        let Some(m) = get(id) else { continue };
        let r = m.ratio_to_native.as_ref();
        let r1 = r.and_then(|r| r.tcp_1);
        let r50 = r.and_then(|r| r.latency_p50);
        let vs_overlay = overlay
            .and_then(|o| paired_ratio(Figure::Tcp1.runs(m), o))
            .map(|x| round(x, 3));
        let check = |target: &str, value: Option<f64>, goal: &str, met: fn(f64) -> bool| Target {
            mode: id.into(),
            target: target.into(),
            value,
            goal: goal.into(),
            met: value.map(met),
        };
        out.push(check("single-stream TCP vs native", r1, ">= 0.95", |r| {
            r >= 0.95
        }));
        out.push(check("latency p50 vs native", r50, "<= 1.15", |r| {
            r <= 1.15
        }));
        out.push(check(
            "single-stream TCP vs overlay",
            vs_overlay,
            ">= 1.3",
            |r| r >= 1.3,
        ));
    }
    out
}

/// Issue 13's targets for the fast-path modes, from the concurrent A/B runs against native
/// (single stream ≥ 0.97, 4 streams ≥ 0.95, CPU per Gbit ≤ 1.05) and the sequential paired
/// latency ratio (p50 ≤ 1.05).
pub fn fast_path_targets(modes: &[Mode]) -> Vec<Target> {
    let mut out = Vec::new();
    for m in modes.iter().filter(|m| m.id.contains("ebpf")) {
        let ab = |partner: &str, streams: u32| {
            m.concurrent
                .iter()
                .find(|c| c.partner == partner && c.streams == streams)
        };
        let mut check = |target: String, value: Option<f64>, goal: &str, met: bool| {
            out.push(Target {
                mode: m.id.clone(),
                target,
                value,
                goal: goal.into(),
                met: value.map(|_| met),
            })
        };
        for partner in ["native", "native-bigtcp"] {
            let (Some(c1), c4) = (ab(partner, 1), ab(partner, 4)) else {
                continue;
            };
            let r1 = c1.ratio.as_ref().map(|s| s.median);
            let r4 = c4.and_then(|c| c.ratio.as_ref()).map(|s| s.median);
            let cpu = c1.cpu_per_gbit_ratio;
            let t = |what: &str| format!("{what} vs {partner} (concurrent A/B)");
            check(
                t("single-stream TCP"),
                r1,
                ">= 0.97",
                r1.is_some_and(|r| r >= 0.97),
            );
            check(
                t("4-stream TCP"),
                r4,
                ">= 0.95",
                r4.is_some_and(|r| r >= 0.95),
            );
            check(
                t("CPU per Gbit/s"),
                cpu,
                "<= 1.05",
                cpu.is_some_and(|r| r <= 1.05),
            );
        }
        let p50 = m.ratio_to_native.as_ref().and_then(|r| r.latency_p50);
        check(
            "latency p50 vs native (sequential, paired)".into(),
            p50,
            "<= 1.05",
            p50.is_some_and(|r| r <= 1.05),
        );
    }
    out
}

/// The concurrent A/B table (the figure of record for issue 13).
pub fn concurrent_table(report: &Report) -> String {
    let mut s = String::from(
        "| mode | partner | streams | mode ÷ partner, same run (min–max) | mode Gbit/s | partner Gbit/s | CPU/Gbit ÷ partner |\n|---|---|---|---|---|---|---|\n",
    );
    let mut any = false;
    for m in &report.modes {
        for c in &m.concurrent {
            any = true;
            let stats = |x: &Option<Stats>| match x {
                Some(st) => format!("{:.3} ({:.3}–{:.3})", st.median, st.min, st.max),
                None => "-".into(),
            };
            let g = |x: &Option<Stats>| {
                x.as_ref()
                    .map_or("-".into(), |s| format!("{:.2}", s.median))
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                m.id,
                c.partner,
                c.streams,
                stats(&c.ratio),
                g(&c.gbps),
                g(&c.partner_gbps),
                fmt_opt(c.cpu_per_gbit_ratio, 3)
            );
        }
    }
    if any { s } else { String::new() }
}

/// Recomputes the ratios and the target checks of a report from its runs (for `--render`
/// of a report written by an older version).
pub fn rederive(report: &mut Report) {
    add_ratios(&mut report.modes);
    report.targets = targets(&report.modes);
    report.targets.extend(fast_path_targets(&report.modes));
}

// === the machine ===

pub fn sh(cmd: &str) -> String {
    must(Command::new("sh").args(["-c", cmd]))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

pub fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    Machine {
        kernel: sh("uname -r"),
        cpu,
        cpus: sh("nproc").parse().unwrap_or(0),
        memory: sh("free -h | awk '/^Mem:/ {print $2}'"),
        os: sh(". /etc/os-release 2>/dev/null && echo \"$PRETTY_NAME\""),
        virtualization: sh("systemd-detect-virt 2>/dev/null || true"),
        iperf3: sh("iperf3 --version 2>&1 | head -1"),
        sockperf: sh("sockperf --version 2>&1 | head -1"),
        containernetworking_plugins: sh(
            "dpkg-query -W -f='${Version}' containernetworking-plugins 2>/dev/null",
        ),
        git: sh("git rev-parse --short HEAD 2>/dev/null"),
    }
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// === tables ===

pub fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn mode_row(m: &Mode) -> String {
    let g = |f: Figure| f.of(m);
    let stat = |f: Figure, pick: fn(&Stats) -> f64| g(f).map(pick);
    let r = m.ratio_to_native.as_ref();
    let cpu = |t: &Option<TcpStats>| t.as_ref().and_then(|t| t.cpu_s_per_gbit);
    format!(
        "| {} | {} ({}–{}) | {} | {} ({}–{}) | {} | {} | {} | {} | {} / {} |",
        m.id,
        fmt_opt(stat(Figure::Tcp1, |s| s.median), 2),
        fmt_opt(stat(Figure::Tcp1, |s| s.min), 2),
        fmt_opt(stat(Figure::Tcp1, |s| s.max), 2),
        fmt_opt(r.and_then(|r| r.tcp_1), 2),
        fmt_opt(stat(Figure::Tcp4, |s| s.median), 2),
        fmt_opt(stat(Figure::Tcp4, |s| s.min), 2),
        fmt_opt(stat(Figure::Tcp4, |s| s.max), 2),
        fmt_opt(r.and_then(|r| r.tcp_4), 2),
        fmt_opt(stat(Figure::LatencyP50, |s| s.median), 1),
        fmt_opt(stat(Figure::LatencyP99, |s| s.median), 1),
        fmt_opt(r.and_then(|r| r.latency_p50), 2),
        fmt_opt(cpu(&m.tcp_1), 3),
        fmt_opt(cpu(&m.tcp_4), 3),
    )
}

/// The text table (Markdown, so that it pastes into BENCHMARKS.md as is).
pub fn table(report: &Report) -> String {
    let mut s = String::new();
    s += "| mode | TCP 1 stream Gbit/s (min–max) | × native¹ | TCP 4 streams Gbit/s (min–max) | × native¹ | RR p50 µs | RR p99 µs | p50 × native¹ | CPU s/Gbit (1 / 4 streams) |\n";
    s += "|---|---|---|---|---|---|---|---|---|\n";
    for m in &report.modes {
        let _ = writeln!(s, "{}", mode_row(m));
    }
    s += "\n¹ median over rounds of (this mode's run ÷ native's run in the same round): runs are interleaved across modes, so each pair saw the same background load.\n";
    if !report.targets.is_empty() {
        s += "\n| target | mode | value | goal | |\n|---|---|---|---|---|\n";
        for t in &report.targets {
            let met = match t.met {
                Some(true) => "MET",
                Some(false) => "NOT MET",
                None => "-",
            };
            let value = fmt_opt(t.value, 2);
            let _ = writeln!(
                s,
                "| {} | {} | {value} | {} | {met} |",
                t.target, t.mode, t.goal
            );
        }
    }
    s
}

/// The profile as a Markdown table: buckets × modes, CPU ms per GB.
pub fn profile_table(report: &Report) -> String {
    let Some(prof) = &report.profile else {
        return String::new();
    };
    let modes: Vec<&str> = report
        .modes
        .iter()
        .map(|m| m.id.as_str())
        .filter(|id| prof.contains_key(*id))
        .collect();
    let mut s = format!(
        "| CPU ms per GB (perf, iperf3 + ksoftirqd, 1 stream) | {} |\n",
        modes.join(" | ")
    );
    s += &format!("|---|{}\n", "---|".repeat(modes.len()));
    let row = |name: &str, f: &dyn Fn(&Profile) -> Option<f64>| {
        let cells: Vec<String> = modes.iter().map(|m| fmt_opt(f(&prof[*m]), 0)).collect();
        format!("| {name} | {} |\n", cells.join(" | "))
    };
    s += &row("Gbit/s during the profile", &|p| Some(p.gbps));
    s += &row("**total**", &|p| Some(p.cpu_ms_per_gb));
    let names: Vec<&str> = BUCKETS.iter().map(|(n, _)| *n).chain(["other"]).collect();
    for n in names {
        s += &row(n, &|p| Some(p.buckets.get(n).copied().unwrap_or(0.0)));
    }
    s
}

// === the chart ===

/// One panel's bars: (series name, colour, figure), and the ratios noted under each group.
struct PanelSpec {
    top: f64,
    height: f64,
    title: &'static str,
    ylabel: &'static str,
    series: [(&'static str, &'static str, Figure); 2],
    ratios: &'static [fn(&Ratios) -> Option<f64>],
}

fn panel(modes: &[Mode], p: &PanelSpec) -> Panel {
    let groups = modes
        .iter()
        .map(|m| {
            let bars = p
                .series
                .iter()
                .map(|(_, _, f)| {
                    f.of(m).map(|st| Bar {
                        value: st.median,
                        min: Some(st.min),
                        max: Some(st.max),
                    })
                })
                .collect();
            let r: Vec<String> = p
                .ratios
                .iter()
                .filter_map(|f| m.ratio_to_native.as_ref().and_then(f))
                .map(|x| format!("{x:.2}×"))
                .collect();
            Group {
                label: m.label.clone(),
                note: (!r.is_empty()).then(|| format!("{} native", r.join(" / "))),
                bars,
            }
        })
        .collect();
    Panel {
        top: p.top,
        height: p.height,
        title: p.title.into(),
        ylabel: p.ylabel.into(),
        series: p
            .series
            .iter()
            .map(|(name, color, _)| Series {
                name: (*name).into(),
                color: (*color).into(),
            })
            .collect(),
        groups,
    }
}

/// Grouped bars with min–max whiskers: throughput (1 and 4 streams) on top, latency (p50,
/// p99) below; one group per mode, each labelled with its ratio to native.
pub fn svg(report: &Report) -> String {
    let title = if report.smoke {
        "hostgw data plane (SMOKE RUN: 1 s per mode, not a measurement)"
    } else {
        "hostgw data plane: pod to pod across two nodes vs native, overlay and reference"
    };
    let (m, p) = (&report.machine, &report.params);
    let subtitle = format!(
        "{} · {} × {} · kernel {} · load average before/after {} / {} · iperf3 {} s × {} runs, sockperf {} s × {} runs",
        report.date,
        m.cpus,
        m.cpu,
        m.kernel,
        report.load_average.before,
        report.load_average.after,
        p.iperf3_seconds,
        p.iperf3_runs,
        p.latency_seconds,
        p.latency_runs,
    );
    let tcp = PanelSpec {
        top: 90.0,
        height: 250.0,
        title: "TCP throughput (iperf3): bar = median, whisker = min–max of the runs",
        ylabel: "Gbit/s",
        series: [
            ("1 stream", "#4e79a7", Figure::Tcp1),
            ("4 streams", "#f28e2b", Figure::Tcp4),
        ],
        ratios: &[|r| r.tcp_1, |r| r.tcp_4],
    };
    let lat = PanelSpec {
        top: 455.0,
        height: 230.0,
        title: "UDP request/response round trip (sockperf ping-pong): median over runs of each run's p50 / p99",
        ylabel: "µs",
        series: [
            ("p50", "#59a14f", Figure::LatencyP50),
            ("p99", "#e15759", Figure::LatencyP99),
        ],
        ratios: &[|r| r.latency_p50],
    };
    Chart {
        title: title.into(),
        subtitle,
        panels: vec![panel(&report.modes, &tcp), panel(&report.modes, &lat)],
        footer: "× native under each mode: throughput 1 / 4 streams (top), latency p50 (bottom). Two nodes in network namespaces on one switch bridge, veth links.".into(),
    }
    .svg()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_median_min_max() {
        let s = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!(s.median, 2.0);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 3.0);
        assert_eq!(s.spread_pct, 100.0);
        assert_eq!(Stats::of(&[1.0, 3.0]).unwrap().median, 2.0);
        assert_eq!(Stats::of(&[]), None);
    }

    #[test]
    fn the_published_report_reads_back_unchanged() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../benchmarks/dataplane.json");
        let text = std::fs::read_to_string(path).unwrap();
        let report: Report = serde_json::from_str(&text).unwrap();
        let back = serde_json::to_value(&report).unwrap();
        let orig: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back, orig,
            "typed report drops or changes a field of dataplane.json"
        );
    }
}
