//! The data-plane comparison suite: hostgw against native, a VXLAN overlay and the reference
//! plugins, all built in network namespaces on this machine.
//!
//! Topology: a `routed::Cluster` of two node namespaces (198.19.0.10 and .11) on one switch
//! bridge, with a real etcd and `hostgw-routed` running in both nodes. In those two nodes:
//!
//! | mode | client → server | how it is wired |
//! |---|---|---|
//! | `native` | node0 → node1 | the nodes' own uplinks |
//! | `hostgw-ptp` | pod on node0 → pod on node1 | our plugin, `mode: "ptp"`; routes from our daemon |
//! | `hostgw-bridge` | pod on node0 → pod on node1 | our plugin, `mode: "bridge"` (`cni0`); routes from our daemon |
//! | `overlay-vxlan` | pod on node0 → pod on node1 | our plugin in bridge mode on `vxbr0`, MTU 1450; pod subnets routed over a kernel VXLAN device (`vxlan0`, VNI 42, port 4789, static FDB and neighbour entries: flannel's vxlan backend) |
//! | `reference` | pod on node0 → pod on node1 | Debian's `/usr/lib/cni/bridge` + `host-local` on `refbr0`; host-gw routes added by hand (flannel host-gw) |
//! | `same-node` | pod on node1 → pod on node1 | our plugin, `mode: "ptp"` |
//!
//! Pod subnets: the daemon leases from 198.18.1.0–198.18.99.0 (/24s); the overlay uses
//! 198.18.210.0/24 and .211.0/24, the reference 198.18.220.0/24 and .221.0/24. Every pod of
//! every mode stays up for the whole run, and the runs are interleaved (one run of every
//! mode, then the next round), so that background load on a shared machine falls on every
//! mode alike.
//!
//! Measures: iperf3 TCP throughput with 1 and 4 streams (`runs` runs of `secs` seconds
//! each: median, min, max); UDP request/response round-trip latency with `sockperf
//! ping-pong --full-rtt` (p50 and p99 of each run, median over runs); CPU time per Gbit
//! from iperf3's own accounting (`cpu_utilization_percent`, sender + receiver process,
//! which includes the softirq work the kernel runs in their context) and, noisier, from
//! /proc/stat (the whole machine, background load included).
//!
//! Outputs `dataplane.json` ([`report::Report`]), `dataplane.svg` (a bar chart drawn by
//! [`crate::chart`], no plotting dependency) and a text table. Every server is a `Proc` (ended by PID on Drop), every
//! client run is bounded in time, every namespace is deleted on Drop.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

mod measure;
pub mod report;
mod topology;

pub use measure::parse_sockperf;
use measure::{Lat, Tcp, iperf, iperf_concurrent, profile, sockperf};
use report::{
    Concurrent, Latency, Mode, Params, Stats, TcpStats, Tune, loadavg, machine, median_opt, round,
    sh,
};
pub use report::{Report, concurrent_table, profile_table, rederive, table};
use topology::{Topology, all_namespaces, build, explain, node_state, topo_pin};

/// The daemon's network: leases only from 198.18.1.0/24 to 198.18.99.0/24, so that the
/// overlay's and the reference's static subnets (198.18.2xx.0/24) never collide with them.
pub const CONFIG: &str = r#"{"Network":"198.18.0.0/16","SubnetLen":24,"SubnetMin":"198.18.1.0","SubnetMax":"198.18.99.0","Backend":{"Type":"host-gw"}}"#;

const IPERF_PORT: &str = "5201";
const SOCKPERF_PORT: &str = "11111";
const VXLAN_MTU: u32 = 1450;

/// Every mode, in table order: (id, label for the chart, path description).
pub const MODES: &[(&str, &str, &str)] = &[
    ("native", "native", "node0 eth0 → switch → node1 eth0"),
    (
        "hostgw-ptp",
        "hostgw ptp",
        "pod → veth → node0 (route via node1) → switch → node1 (/32 route) → veth → pod",
    ),
    (
        "hostgw-ptp-ebpf",
        "hostgw ptp + eBPF",
        "pod → veth (tcx: FIB lookup, bpf_redirect) → node2 uplink → switch → node3 uplink (tcx: bpf_redirect_peer) → pod; nodes 2 and 3 run --datapath ebpf",
    ),
    (
        "hostgw-ptp-ebpf-bigtcp",
        "hostgw ptp + eBPF + BIG TCP",
        "as hostgw-ptp-ebpf on nodes 4 and 5, with BIG TCP (185000) on the pod veths (plugin \"bigTcp\"), the uplinks (--big-tcp) and their switch ports",
    ),
    (
        "hostgw-bridge",
        "hostgw bridge",
        "pod → veth → cni0 → node0 (route via node1) → switch → node1 → cni0 → veth → pod",
    ),
    (
        "overlay-vxlan",
        "overlay VXLAN",
        "pod → veth → vxbr0 → node0 → vxlan0 (UDP 4789, MTU 1450) → switch → node1 vxlan0 → vxbr0 → veth → pod",
    ),
    (
        "reference",
        "reference CNI bridge",
        "pod → veth → refbr0 (CNI bridge + host-local) → node0 (hand route) → switch → node1 → refbr0 → veth → pod",
    ),
    (
        "same-node",
        "same node (ptp)",
        "pod → veth → node1 (/32 route) → veth → pod",
    ),
    (
        "native-bigtcp",
        "native + BIG TCP",
        "node6 eth0 → switch → node7 eth0, BIG TCP (185000) on both uplinks and their switch ports (no daemon)",
    ),
];

/// Knobs for the investigation of where the time goes; none is on by default.
pub const TUNES: &[(&str, &str)] = &[
    (
        "gro",
        "GRO on every veth (ethtool -K <veth> gro on) in nodes, pods and switch",
    ),
    (
        "no-brnf",
        "net.bridge.bridge-nf-call-{iptables,ip6tables,arptables}=0 in nodes and switch",
    ),
    (
        "conntrack",
        "an nftables forward rule with `ct state` in nodes, so conntrack tracks every forwarded flow (as with kube-proxy)",
    ),
    ("rp-filter", "net.ipv4.conf.*.rp_filter=1 (strict) in nodes"),
];

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub smoke: bool,
    pub out: PathBuf,
    /// Seconds per iperf3 run.
    pub secs: u32,
    /// iperf3 runs per mode and stream count.
    pub runs: usize,
    /// Seconds per sockperf run.
    pub lat_secs: u32,
    /// sockperf runs per mode.
    pub lat_runs: usize,
    /// Stream counts of the throughput runs (1 and 4 unless told).
    pub streams: Vec<u32>,
    /// Modes to measure (ids); empty means all. `native` is always measured.
    pub modes: Vec<String>,
    /// Investigation knobs (ids of `TUNES`).
    pub tune: Vec<String>,
    /// Seconds to keep the topology up after building it (for poking at it by hand).
    pub hold: u64,
    /// Also profile one single-stream run of every mode with `perf` (where the time goes).
    pub perf: bool,
    /// Pin clients to CPU 0 and servers to CPU 1 (as if on two machines); on by default
    /// when there are two CPUs or more.
    pub pin: bool,
    /// The command line, for the report.
    pub command: String,
}

impl Options {
    /// The full run: 5 runs × 3 s per mode and stream count, 5 latency runs × 2 s, all
    /// interleaved across modes (about 6 minutes). More short runs rather than fewer long
    /// ones: on a shared machine a burst of background load then spoils one run of one
    /// mode, which the median discards, instead of a long run of one mode.
    pub fn full(out: PathBuf) -> Options {
        Options {
            smoke: false,
            out,
            secs: 3,
            runs: 5,
            lat_secs: 2,
            lat_runs: 5,
            streams: vec![1, 4],
            modes: vec![],
            tune: vec![],
            hold: 0,
            perf: false,
            pin: true,
            command: String::new(),
        }
    }

    /// The smoke run: every mode once, one second each.
    pub fn smoke(out: PathBuf) -> Options {
        Options {
            smoke: true,
            secs: 1,
            runs: 1,
            lat_secs: 1,
            lat_runs: 1,
            ..Options::full(out)
        }
    }

    fn wants(&self, mode: &str) -> bool {
        mode == "native" || self.modes.is_empty() || self.modes.iter().any(|m| m == mode)
    }
}

/// The modes and tunes, for `--help`.
pub fn modes_help() -> String {
    let mut s = String::from("modes:");
    for (id, _, path) in MODES {
        let _ = write!(s, "\n  {id:<14} {path}");
    }
    s += "\ntunes (investigation only):";
    for (id, what) in TUNES {
        let _ = write!(s, "\n  {id:<14} {what}");
    }
    s
}

// === the run ===

/// (mode, partner, streams) of a concurrent A/B series.
type AbKey = (&'static str, &'static str, u32);

/// Every run of every pair, by mode.
#[derive(Default)]
struct Runs {
    tcp: BTreeMap<(&'static str, u32), Vec<Tcp>>,
    /// (mode, partner, streams) -> (partner's run, mode's run) of each concurrent round.
    ab: BTreeMap<AbKey, Vec<(Tcp, Tcp)>>,
    lat: BTreeMap<&'static str, Vec<Lat>>,
    profiles: BTreeMap<String, report::Profile>,
}

/// `--hold`: keeps the topology up for poking at it by hand.
fn hold(opts: &Options, topo: &Topology, log: &mut dyn FnMut(&str)) {
    if opts.hold == 0 {
        return;
    }
    log(&format!(
        "holding the topology for {} s: {}",
        opts.hold,
        all_namespaces(topo)
            .iter()
            .map(|(r, p)| format!("{r}={}", p.display()))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    for p in &topo.pairs {
        log(&format!(
            "  {}: client {} server {} {}",
            p.mode,
            p.client.display(),
            p.server.display(),
            p.server_ip
        ));
    }
    std::thread::sleep(Duration::from_secs(opts.hold));
}

/// Throughput and latency runs, interleaved across modes (one run of every mode, then the
/// next round), then the profiles.
fn measure_all(opts: &Options, topo: &Topology, log: &mut dyn FnMut(&str)) -> Result<Runs> {
    let mut runs = Runs::default();
    for &streams in &opts.streams {
        for round in 0..opts.runs {
            for p in &topo.pairs {
                let r = iperf(p, streams, opts.secs).map_err(|e| explain(topo, e))?;
                log(&format!(
                    "tcp -P {streams} run {}/{} {:<14} {:>7.2} Gbit/s",
                    round + 1,
                    opts.runs,
                    p.mode,
                    r.gbps
                ));
                runs.tcp.entry((p.mode, streams)).or_default().push(r);
            }
        }
    }
    measure_concurrent(opts, topo, &mut runs, log)?;
    for round in 0..opts.lat_runs {
        for p in &topo.pairs {
            let r = sockperf(p, opts.lat_secs).map_err(|e| explain(topo, e))?;
            log(&format!(
                "rr run {}/{} {:<14} p50 {:>7.1} µs  p99 {:>7.1} µs",
                round + 1,
                opts.lat_runs,
                p.mode,
                r.p50_us,
                r.p99_us
            ));
            runs.lat.entry(p.mode).or_default().push(r);
        }
    }
    if opts.perf {
        for p in &topo.pairs {
            let prof = profile(p, opts.secs).map_err(|e| explain(topo, e))?;
            log(&format!(
                "perf {:<14} {:>6.0} CPU ms per GB (iperf3 + ksoftirqd, {:.1} Gbit/s)",
                p.mode, prof.cpu_ms_per_gb, prof.gbps
            ));
            runs.profiles.insert(p.mode.to_owned(), prof);
        }
    }
    Ok(runs)
}

/// Which partner flows each mode runs beside: native always, and the BIG TCP fast path also
/// beside native with BIG TCP (its fair comparison).
fn partners(mode: &str) -> &'static [&'static str] {
    match mode {
        "native" | "native-bigtcp" => &[],
        "hostgw-ptp-ebpf-bigtcp" => &["native", "native-bigtcp"],
        _ => &["native"],
    }
}

/// The concurrent A/B rounds (issue 13's figure of record), interleaved like the others.
fn measure_concurrent(
    opts: &Options,
    topo: &Topology,
    runs: &mut Runs,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let find = |id: &str| topo.pairs.iter().find(|p| p.mode == id);
    for &streams in &opts.streams {
        for round in 0..opts.runs {
            for p in &topo.pairs {
                for &partner in partners(p.mode) {
                    let Some(q) = find(partner) else { continue };
                    let (a, b) =
                        iperf_concurrent(q, p, streams, opts.secs).map_err(|e| explain(topo, e))?;
                    log(&format!(
                        "a/b -P {streams} run {}/{} {:<22} {:>6.2} beside {partner} {:>6.2} Gbit/s: {:.3}",
                        round + 1,
                        opts.runs,
                        p.mode,
                        b.gbps,
                        a.gbps,
                        if a.gbps > 0.0 { b.gbps / a.gbps } else { 0.0 }
                    ));
                    runs.ab
                        .entry((p.mode, q.mode, streams))
                        .or_default()
                        .push((a, b));
                }
            }
        }
    }
    Ok(())
}

fn concurrent_figures(mode: &str, runs: &Runs) -> Vec<Concurrent> {
    runs.ab
        .iter()
        .filter(|((m, ..), _)| *m == mode)
        .map(|((_, partner, streams), v)| {
            let ratios: Vec<f64> = v
                .iter()
                .filter(|(a, _)| a.gbps > 0.0)
                .map(|(a, b)| b.gbps / a.gbps)
                .collect();
            let ratio = Stats::of(&ratios);
            Concurrent {
                partner: (*partner).into(),
                streams: *streams,
                cpu_per_gbit_ratio: ratio
                    .as_ref()
                    .filter(|r| r.median > 0.0)
                    .map(|r| round(1.0 / r.median, 3)),
                ratio,
                gbps: Stats::of(&v.iter().map(|(_, b)| b.gbps).collect::<Vec<_>>()),
                partner_gbps: Stats::of(&v.iter().map(|(a, _)| a.gbps).collect::<Vec<_>>()),
            }
        })
        .collect()
}

fn tcp_stats(runs: Option<&Vec<Tcp>>) -> Option<TcpStats> {
    let runs = runs?;
    let of = |f: fn(&Tcp) -> Option<f64>| median_opt(&runs.iter().map(f).collect::<Vec<_>>());
    Some(TcpStats {
        gbps: Stats::of(&runs.iter().map(|r| r.gbps).collect::<Vec<_>>()),
        cpu_s_per_gbit: of(|r| r.cpu_s_per_gbit),
        machine_cpu_s_per_gbit: of(|r| r.machine_cpu_s_per_gbit),
        retransmits: runs.iter().map(|r| r.retransmits).collect(),
    })
}

/// One mode's figures from its runs.
fn mode_figures(mode: &'static str, mtu: u32, runs: &Runs) -> Mode {
    let (_, label, path) = MODES
        .iter()
        .find(|(id, ..)| *id == mode)
        .copied()
        .unwrap_or((mode, mode, ""));
    let l = runs.lat.get(mode).map(Vec::as_slice).unwrap_or_default();
    let lat = |f: fn(&Lat) -> f64| Stats::of(&l.iter().map(f).collect::<Vec<_>>());
    Mode {
        id: mode.into(),
        label: label.into(),
        path: path.into(),
        mtu,
        tcp_1: tcp_stats(runs.tcp.get(&(mode, 1))),
        tcp_4: tcp_stats(runs.tcp.get(&(mode, 4))),
        latency_us: Latency {
            p50: lat(|r| r.p50_us),
            p99: lat(|r| r.p99_us),
            avg: median_opt(&l.iter().map(|r| r.avg_us).collect::<Vec<_>>()),
        },
        ratio_to_native: None,
        concurrent: concurrent_figures(mode, runs),
    }
}

fn params(opts: &Options) -> Params {
    Params {
        iperf3_seconds: opts.secs,
        iperf3_runs: opts.runs,
        streams: opts.streams.clone(),
        latency: "sockperf ping-pong, UDP, 14-byte messages (sockperf's default), --full-rtt".into(),
        latency_seconds: opts.lat_secs,
        latency_runs: opts.lat_runs,
        pinned: topo_pin(opts),
        tunes: opts
            .tune
            .iter()
            .map(|t| Tune {
                id: t.clone(),
                what: TUNES.iter().find(|(id, _)| id == t).map(|x| x.1.to_owned()),
            })
            .collect(),
        cpu: "cpu_s_per_gbit: CPU seconds of the iperf3 sender and receiver processes (iperf3's cpu_utilization_percent, which includes the softirq work run in their context) per Gbit transferred; machine_cpu_s_per_gbit: all busy CPU time of the machine from /proc/stat (background load included) per Gbit".into(),
    }
}

/// Writes `dataplane.json` and `dataplane.svg` into `opts.out` and logs the tables.
fn write_outputs(
    opts: &Options,
    report: &Report,
    t0: Instant,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    std::fs::create_dir_all(&opts.out).with_context(|| format!("create {}", opts.out.display()))?;
    let json_path = opts.out.join("dataplane.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(report)? + "\n")?;
    let svg_path = opts.out.join("dataplane.svg");
    std::fs::write(&svg_path, report::svg(report))?;
    log(&format!("\n{}", table(report)));
    log(&format!("\n{}", concurrent_table(report)));
    if opts.perf {
        log(&format!("\n{}", profile_table(report)));
    }
    log(&format!(
        "wrote {} and {} ({:.0} s)",
        json_path.display(),
        svg_path.display(),
        t0.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Runs the suite and writes `dataplane.json` and `dataplane.svg` into `opts.out`; returns
/// the report and prints progress and the table through `log`.
pub fn run(opts: &Options, log: &mut dyn FnMut(&str)) -> Result<Report> {
    hostgw_harness::require_root();
    let t0 = Instant::now();
    let load_before = loadavg();
    let date = sh("date -u +%Y-%m-%dT%H:%M:%SZ");
    let topo = build(opts, log)?;
    let node_state = node_state(&topo);
    hold(opts, &topo, log);
    let mut runs = measure_all(opts, &topo, log)?;
    let load_after = loadavg();
    let mut modes: Vec<Mode> = topo
        .pairs
        .iter()
        .map(|p| mode_figures(p.mode, p.mtu, &runs))
        .collect();
    report::add_ratios(&mut modes);
    let report = Report {
        suite: "hostgw data plane".into(),
        smoke: opts.smoke,
        date,
        command: opts.command.clone(),
        machine: machine(),
        load_average: report::LoadAverage {
            before: load_before,
            after: load_after,
        },
        params: params(opts),
        node_state,
        targets: report::targets(&modes)
            .into_iter()
            .chain(report::fast_path_targets(&modes))
            .collect(),
        modes,
        profile: opts.perf.then(|| std::mem::take(&mut runs.profiles)),
        elapsed_s: round(t0.elapsed().as_secs_f64(), 1),
    };
    drop(topo);
    write_outputs(opts, &report, t0, log)?;
    Ok(report)
}
