//! The measurements of one pair: iperf3 throughput with CPU accounting, sockperf round
//! trips, and a `perf` profile of where a single-stream run's CPU time goes.

use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use hostgw_harness::{Proc, must, run_timeout, wait_for};
use serde::Deserialize;

use super::{
    IPERF_PORT, SOCKPERF_PORT,
    report::{Profile, Symbol, round, sh},
    topology::{Pair, on_cpu, wait_listening},
};

#[derive(Clone, Debug, Default)]
pub(super) struct Tcp {
    pub(super) gbps: f64,
    /// CPU seconds (sender + receiver iperf3 processes) per Gbit transferred.
    pub(super) cpu_s_per_gbit: Option<f64>,
    /// CPU seconds of the whole machine (/proc/stat, background included) per Gbit.
    pub(super) machine_cpu_s_per_gbit: Option<f64>,
    pub(super) retransmits: Option<u64>,
}

#[derive(Clone, Debug, Default)]
pub(super) struct Lat {
    pub(super) p50_us: f64,
    pub(super) p99_us: f64,
    pub(super) avg_us: Option<f64>,
}

/// Busy and total jiffies of the whole machine.
fn proc_stat() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, total))
}

fn clk_tck() -> f64 {
    must(Command::new("getconf").arg("CLK_TCK"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

pub(super) fn iperf(p: &Pair, streams: u32, secs: u32) -> Result<Tcp> {
    let mut last_err = None;
    for _attempt in 0..2 {
        match iperf_once(p, streams, secs) {
            Ok(t) => return Ok(t),
            Err(e) => last_err = Some(e),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Err(last_err.unwrap())
}

/// The part of `iperf3 -J` output the suite reads.
#[derive(Deserialize)]
struct Iperf {
    error: Option<String>,
    #[serde(default)]
    end: IperfEnd,
}

#[derive(Default, Deserialize)]
struct IperfEnd {
    sum_received: Option<IperfSum>,
    sum_sent: Option<IperfSum>,
    cpu_utilization_percent: Option<IperfCpu>,
}

#[derive(Deserialize)]
struct IperfSum {
    #[serde(default)]
    bits_per_second: f64,
    seconds: Option<f64>,
    bytes: Option<f64>,
    retransmits: Option<u64>,
}

/// Sender (`host_total`) and receiver (`remote_total`) process CPU, % of one CPU.
#[derive(Default, Deserialize)]
struct IperfCpu {
    host_total: Option<f64>,
    remote_total: Option<f64>,
}

/// A one-shot iperf3 server of the pair, on CPU 1, listening once this returns.
fn iperf_server(p: &Pair) -> Result<Proc> {
    let mut s = on_cpu(&p.server, p.pin, 1, "iperf3");
    s.args(["-s", "-1", "-B", &p.server_ip, "-p", IPERF_PORT])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let server = Proc::spawn(s)?;
    wait_listening(&p.server, "-Hltn", &p.server_ip, IPERF_PORT)?;
    Ok(server)
}

/// The pair's iperf3 client, on CPU 0.
fn iperf_client(p: &Pair, streams: u32, secs: u32) -> Command {
    let mut c = on_cpu(&p.client, p.pin, 0, "iperf3");
    c.args([
        "-c",
        &p.server_ip,
        "-p",
        IPERF_PORT,
        "-t",
        &secs.to_string(),
        "-P",
        &streams.to_string(),
        "--connect-timeout",
        "3000",
        "-J",
    ]);
    c
}

fn iperf_once(p: &Pair, streams: u32, secs: u32) -> Result<Tcp> {
    let mut server = iperf_server(p)?;
    let before = proc_stat();
    let mut c = iperf_client(p, streams, secs);
    let out = run_timeout(&mut c, Duration::from_secs(u64::from(secs) + 20))?;
    let after = proc_stat();
    let _ = wait_for("iperf3 server exit", Duration::from_secs(3), || {
        server.exited()
    });
    drop(server);
    parse_iperf(p, streams, secs, &out.stdout, (before, after))
}

/// Native and `p` at the same time (issue 13's steadier method): both clients on CPU 0, both
/// servers on CPU 1, so the scheduler gives both senders the same CPU and `p / native` is the
/// inverse ratio of their CPU cost per byte; a slow phase of the machine hits both at once.
pub(super) fn iperf_concurrent(
    native: &Pair,
    p: &Pair,
    streams: u32,
    secs: u32,
) -> Result<(Tcp, Tcp)> {
    let mut servers = [iperf_server(native)?, iperf_server(p)?];
    let running = vec![
        hostgw_harness::proc::launch(&mut iperf_client(native, streams, secs), &[])?,
        hostgw_harness::proc::launch(&mut iperf_client(p, streams, secs), &[])?,
    ];
    let done =
        hostgw_harness::proc::finish_all(running, Duration::from_secs(u64::from(secs) + 20))?;
    for s in &mut servers {
        let _ = wait_for("iperf3 server exit", Duration::from_secs(3), || s.exited());
    }
    let mut outs = done.into_iter().map(|f| f.into_output().stdout);
    let (a, b) = (
        outs.next().unwrap_or_default(),
        outs.next().unwrap_or_default(),
    );
    Ok((
        parse_iperf(native, streams, secs, &a, (None, None))?,
        parse_iperf(p, streams, secs, &b, (None, None))?,
    ))
}

type Jiffies = (Option<(u64, u64)>, Option<(u64, u64)>);

fn parse_iperf(p: &Pair, streams: u32, secs: u32, stdout: &[u8], stat: Jiffies) -> Result<Tcp> {
    let (before, after) = stat;
    let text = String::from_utf8_lossy(stdout);
    let v: Iperf = serde_json::from_str(&text)
        .with_context(|| format!("{}: iperf3 output is not the JSON expected: {text}", p.mode))?;
    if let Some(e) = v.error {
        bail!("{}: iperf3 -P {streams}: {e}", p.mode);
    }
    let rx = v
        .end
        .sum_received
        .context("iperf3 JSON without end.sum_received")?;
    let secs_rx = rx.seconds.unwrap_or(f64::from(secs));
    let gbps = rx.bits_per_second / 1e9;
    let cpu = v.end.cpu_utilization_percent.unwrap_or_default();
    let cpu_s_per_gbit = match (cpu.host_total, cpu.remote_total) {
        (Some(h), Some(r)) if gbps > 0.0 => Some((h + r) / 100.0 / gbps),
        _ => None,
    };
    let machine_cpu_s_per_gbit = match (before, after) {
        (Some((b0, _)), Some((b1, _))) if gbps > 0.0 => {
            let cpu_s = (b1 - b0) as f64 / clk_tck();
            Some(cpu_s / (gbps * secs_rx))
        }
        _ => None,
    };
    Ok(Tcp {
        gbps,
        cpu_s_per_gbit,
        machine_cpu_s_per_gbit,
        retransmits: v.end.sum_sent.and_then(|s| s.retransmits),
    })
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ … final byte in @–~
            if it.peek() == Some(&'[') {
                it.next();
                for d in it.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// p50, p99 and average round trip (µs) from `sockperf ping-pong --full-rtt` output.
pub fn parse_sockperf(out: &str) -> Result<(f64, f64, Option<f64>)> {
    let out = strip_ansi(out);
    let mut pct = BTreeMap::new();
    let mut avg = None;
    for line in out.lines() {
        if let Some(rest) = line.split("---> percentile ").nth(1)
            && let Some((p, v)) = rest.split_once('=')
            && let (Ok(p), Ok(v)) = (p.trim().parse::<f64>(), v.trim().parse::<f64>())
        {
            pct.insert((p * 1000.0).round() as u64, v);
        }
        if let Some(rest) = line.split("avg-rtt=").nth(1) {
            avg = rest
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .next()
                .and_then(|x| x.parse().ok());
        }
    }
    match (pct.get(&50_000), pct.get(&99_000)) {
        (Some(&p50), Some(&p99)) => Ok((p50, p99, avg)),
        _ => bail!("no p50/p99 in sockperf output:\n{out}"),
    }
}

pub(super) fn sockperf(p: &Pair, secs: u32) -> Result<Lat> {
    let mut c = on_cpu(&p.client, p.pin, 0, "sockperf");
    c.args([
        "ping-pong",
        "-i",
        &p.server_ip,
        "-p",
        SOCKPERF_PORT,
        "-t",
        &secs.to_string(),
        "--full-rtt",
        // The path is warm already (every pair pinged); sockperf's warm-up stage would
        // only add 2 s to every run. Its first 400 ms are still left out of the figures.
        "--dontwarmup",
    ]);
    let out = run_timeout(&mut c, Duration::from_secs(u64::from(secs) + 20))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "{}: sockperf ping-pong failed ({}): {text}",
            p.mode,
            out.status
        );
    }
    let (p50_us, p99_us, avg_us) =
        parse_sockperf(&text).with_context(|| format!("{}: sockperf", p.mode))?;
    Ok(Lat {
        p50_us,
        p99_us,
        avg_us,
    })
}

// === profile ===

/// Buckets of kernel symbols, first match wins: (name, substrings).
pub const BUCKETS: &[(&str, &[&str])] = &[
    (
        "copy to/from user space",
        &[
            "rep_movs",
            "copy_to_iter",
            "copy_from_iter",
            "_copy_",
            "memcpy",
            "check_object_size",
            "virt_addr_valid",
        ],
    ),
    ("br_netfilter", &["br_nf", "ip_sabotage", "nf_bridge"]),
    (
        "nftables and netfilter hooks",
        &["nft_", "nf_hook", "nf_conntrack", "nf_ct_", "nf_nat"],
    ),
    ("bridge", &["br_"]),
    (
        "IP forward and route lookup",
        &[
            "ip_forward",
            "ip_route_input",
            "fib_",
            "ip_rcv_finish",
            "ip_finish_output",
            "ip_output",
            "dst_",
        ],
    ),
    (
        "veth, backlog, device xmit/receive",
        &[
            "veth",
            "netif_rx",
            "backlog",
            "netif_receive",
            "eth_type_trans",
            "dev_queue_xmit",
            "dev_hard_start",
            "validate_xmit",
            "netif_skb_features",
            "skb_scrub",
            "net_rx_action",
            "napi",
            "gro",
        ],
    ),
    (
        "IRQ-off regions (where their samples land)",
        &[
            "_raw_spin_unlock_irq",
            "handle_softirqs",
            "__local_bh_enable",
        ],
    ),
    (
        "TCP, sockets, syscalls, memory",
        &[
            "tcp", "inet", "sock", "skb", "kmem", "alloc", "free", "ip_rcv", "ip_local",
            "ip_queue", "select", "syscall", "entry_", "schedule", "switch", "page",
        ],
    ),
];

fn bucket(sym: &str) -> &'static str {
    BUCKETS
        .iter()
        .find(|(_, keys)| keys.iter().any(|k| sym.contains(k)))
        .map(|(name, _)| *name)
        .unwrap_or("other")
}

/// Where the CPU time of one single-stream run goes: `perf record -e cpu-clock -F 1000 -a`
/// around the iperf3 client; the samples of iperf3 and ksoftirqd (all the work of both
/// ends, softirq included, but not the background load) bucketed by symbol, in CPU ms per
/// GB received. Without a PMU (VMs) cpu-clock samples cannot land where interrupts are
/// off: they land where interrupts come back on, hence the IRQ-off bucket.
pub(super) fn profile(p: &Pair, secs: u32) -> Result<Profile> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("perf.data");
    let mut s = on_cpu(&p.server, p.pin, 1, "iperf3");
    s.args(["-s", "-1", "-B", &p.server_ip, "-p", IPERF_PORT])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _server = Proc::spawn(s)?;
    wait_listening(&p.server, "-Hltn", &p.server_ip, IPERF_PORT)?;
    let mut c = Command::new("perf");
    c.args(["record", "-e", "cpu-clock", "-F", "1000", "-a", "-o"])
        .arg(&data)
        .args(["--", "nsenter"])
        .arg(format!("--net={}", p.client.display()))
        .arg("--");
    if p.pin {
        c.args(["taskset", "-c", "0"]);
    }
    c.args([
        "iperf3",
        "-c",
        &p.server_ip,
        "-p",
        IPERF_PORT,
        "-t",
        &secs.to_string(),
        "-J",
    ]);
    let out = run_timeout(&mut c, Duration::from_secs(u64::from(secs) + 30))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Iperf = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: perf + iperf3: {text} {}",
            p.mode,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let rx = v
        .end
        .sum_received
        .context("iperf3 JSON without end.sum_received")?;
    let bytes = rx.bytes.context("iperf3 bytes")?;
    let gbps = rx.bits_per_second / 1e9;
    let mut prof = perf_report(&data, bytes / 1e9)?;
    prof.gbps = round(gbps, 2);
    Ok(prof)
}

/// `perf report` of iperf3 and ksoftirqd, bucketed, per GB received.
fn perf_report(data: &Path, gb: f64) -> Result<Profile> {
    let cpus = sh("nproc").parse::<usize>().unwrap_or(1);
    let comms: Vec<String> = std::iter::once("iperf3".to_owned())
        .chain((0..cpus).map(|i| format!("ksoftirqd/{i}")))
        .collect();
    let mut r = Command::new("perf");
    r.args(["report", "-i"]).arg(data).args([
        "--comm",
        &comms.join(","),
        "--no-children",
        "-n",
        "--sort",
        "sym",
        "--stdio",
    ]);
    let report = must(&mut r)?;
    let mut buckets: BTreeMap<&str, f64> = BTreeMap::new();
    let mut total = 0.0;
    let mut top = Vec::new();
    for line in report.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "  25.00%  1234  [k] symbol"
        if f.len() < 4 || !f[0].ends_with('%') {
            continue;
        }
        let Ok(n) = f[1].parse::<f64>() else { continue };
        let sym = f[3..].join(" ");
        total += n;
        *buckets.entry(bucket(&sym)).or_default() += n;
        if top.len() < 15 {
            top.push(Symbol {
                symbol: sym,
                cpu_ms_per_gb: round(n / gb, 1),
            });
        }
    }
    Ok(Profile {
        gbps: 0.0,
        cpu_ms_per_gb: round(total / gb, 1),
        buckets: buckets
            .iter()
            .map(|(k, v)| (k.to_string(), round(v / gb, 1)))
            .collect(),
        top_symbols: top,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sockperf_percentiles() {
        let out = "sockperf: \u{1b}[2;35m====> avg-rtt=8.022 (std-dev=39.728)\u{1b}[0m\n\
                   sockperf: ---> percentile 99.000 =   15.208\n\
                   sockperf: ---> percentile 50.000 =    7.353\n";
        let (p50, p99, avg) = parse_sockperf(out).unwrap();
        assert_eq!((p50, p99, avg), (7.353, 15.208, Some(8.022)));
        assert!(parse_sockperf("nothing").is_err());
    }
}
