//! What `bench-scale` reads: etcd's own /metrics (requests by gRPC method, bytes sent,
//! watchers), /proc for CPU and memory, and the daemons' logs for when each route went in
//! or out (their timestamps cost the measured system nothing).

use std::{collections::BTreeMap, time::SystemTime};

use anyhow::Result;
use hostgw_harness::{etcd::metric_sum, fleet::Fleet};
use serde::Serialize;

/// The gRPC methods a daemon uses, as etcd names them.
pub const METHODS: [&str; 6] = [
    "Range",
    "Txn",
    "Put",
    "LeaseGrant",
    "LeaseKeepAlive",
    "Watch",
];

/// etcd's counters summed over the live members.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EtcdCounters {
    /// Requests started by method (`grpc_server_started_total`; a Watch is one stream).
    pub requests: BTreeMap<String, f64>,
    /// `etcd_network_client_grpc_sent_bytes_total`.
    pub sent_bytes: f64,
    /// `etcd_debugging_mvcc_watcher_total`: open watchers.
    pub watchers: f64,
}

impl EtcdCounters {
    pub fn read(f: &mut Fleet) -> Result<EtcdCounters> {
        Self::read_except(f, None)
    }

    /// [`Self::read`] without member `skip`: the one about to be killed, whose counters
    /// the reading after the kill can no longer include.
    pub fn read_except(f: &mut Fleet, skip: Option<usize>) -> Result<EtcdCounters> {
        let mut c = EtcdCounters::default();
        for (i, m) in f.etcd.members.iter_mut().enumerate() {
            if !m.alive() || Some(i) == skip {
                continue;
            }
            let text = m.metrics()?;
            for method in METHODS {
                let label = format!("grpc_method=\"{method}\"");
                *c.requests.entry(method.to_owned()).or_default() +=
                    metric_sum(&text, "grpc_server_started_total", &[&label]);
            }
            c.sent_bytes += metric_sum(&text, "etcd_network_client_grpc_sent_bytes_total", &[]);
            c.watchers += metric_sum(&text, "etcd_debugging_mvcc_watcher_total", &[]);
        }
        Ok(c)
    }

    /// `self - before`, per counter (watchers: the value now).
    pub fn since(&self, before: &EtcdCounters) -> EtcdCounters {
        let requests = self
            .requests
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v - before.requests.get(k).copied().unwrap_or(0.0),
                )
            })
            .collect();
        EtcdCounters {
            requests,
            sent_bytes: self.sent_bytes - before.sent_bytes,
            watchers: self.watchers,
        }
    }

    pub fn get(&self, method: &str) -> f64 {
        self.requests.get(method).copied().unwrap_or(0.0)
    }
}

/// One process as /proc shows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStat {
    /// User + system CPU, seconds.
    pub cpu: f64,
    pub rss_kb: u64,
    pub hwm_kb: u64,
    pub pss_kb: u64,
}

/// CPU ticks per second: `CLK_TCK` is 100 on every Linux this runs on.
const TICK: f64 = 100.0;

pub fn proc_stat(pid: u32) -> ProcStat {
    if pid == 0 {
        return ProcStat::default();
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`, which may hold spaces: utime and stime are 14 and 15.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    ProcStat {
        cpu: (tick(11) + tick(12)) / TICK,
        rss_kb: kb(&status, "VmRSS:"),
        hwm_kb: kb(&status, "VmHWM:"),
        pss_kb: kb(&rollup, "Pss:"),
    }
}

fn kb(text: &str, field: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Resets a process's peak RSS (VmHWM) to its current RSS.
pub fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Every daemon's /proc figures, in node order.
pub fn daemons(f: &Fleet) -> Vec<ProcStat> {
    f.pids().into_iter().map(proc_stat).collect()
}

pub fn cpu_sum(s: &[ProcStat]) -> f64 {
    s.iter().map(|p| p.cpu).sum()
}

/// Seconds since midnight UTC, now.
pub fn now_of_day() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() % 86_400.0)
        .unwrap_or(0.0)
}

/// A route change read from a daemon's log.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub node: usize,
    /// Seconds since midnight UTC.
    pub at: f64,
    /// Routes added (a summary line counts all of them), and removed.
    pub added: u64,
    pub removed: u64,
    /// The route's destination, for a per-route line.
    pub dst: Option<String>,
}

/// Seconds since midnight UTC of a `tracing` line: `2026-12-02T01:22:33.123456Z  INFO …`.
pub fn line_time(line: &str) -> Option<f64> {
    let t = line.split_whitespace().next()?.split('T').nth(1)?;
    let t = t.trim_end_matches('Z');
    let mut p = t.split(':');
    let (h, m, s): (f64, f64, f64) = (
        p.next()?.parse().ok()?,
        p.next()?.parse().ok()?,
        p.next()?.parse().ok()?,
    );
    Some(h * 3600.0 + m * 60.0 + s)
}

/// `key=value` of a field in a `tracing` line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..].split_whitespace().next()
}

/// The route changes in one log.
pub fn changes(node: usize, log: &str) -> Vec<Change> {
    let mut out = Vec::new();
    for line in log.lines() {
        let Some(at) = line_time(line) else { continue };
        let num = |k| field(line, k).and_then(|v| v.parse().ok()).unwrap_or(0);
        let (added, removed, dst) = if line.contains("routes applied") {
            (num("added"), num("removed"), None)
        } else if line.contains("route added") || line.contains("route repaired") {
            (1, 0, field(line, "dst").map(str::to_owned))
        } else if line.contains("route removed") {
            (0, 1, field(line, "dst").map(str::to_owned))
        } else {
            continue;
        };
        out.push(Change {
            node,
            at,
            added,
            removed,
            dst,
        });
    }
    out
}

/// The daemons' route changes, read incrementally: each poll parses only what the logs
/// gained since the last (a poll over every whole log, twice a second, cost the machine
/// under test CPU that grew with the storm).
#[derive(Default)]
pub struct LogTail {
    offsets: Vec<u64>,
    pub changes: Vec<Change>,
}

impl LogTail {
    /// Reads what the first `n` logs gained (complete lines only).
    pub fn poll(&mut self, f: &Fleet, n: usize) {
        use std::io::{Read, Seek, SeekFrom};
        self.offsets.resize(n.max(self.offsets.len()), 0);
        let mut buf = Vec::new();
        for i in 0..n {
            let Ok(mut file) = std::fs::File::open(&f.nodes[i].log) else {
                continue;
            };
            buf.clear();
            if file.seek(SeekFrom::Start(self.offsets[i])).is_err()
                || file.read_to_end(&mut buf).is_err()
            {
                continue;
            }
            let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
                continue;
            };
            let text = String::from_utf8_lossy(&buf[..=end]);
            self.changes.extend(changes(i, &text));
            self.offsets[i] += end as u64 + 1;
        }
    }
}

/// The machine's CPU time from /proc/stat, in seconds: (busy, all).
pub fn machine_cpu() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let all: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    ((all - idle) / TICK, all / TICK)
}

/// This process's own CPU seconds (user + system).
pub fn own_cpu() -> f64 {
    proc_stat(std::process::id()).cpu
}

/// Every daemon's route changes.
pub fn all_changes(f: &Fleet) -> Vec<Change> {
    (0..f.nodes.len())
        .flat_map(|i| changes(i, &f.log(i)))
        .collect()
}

/// Lines in all logs that report a restart, a lost race or trouble, counted by kind.
pub fn log_events(f: &Fleet, since: f64) -> BTreeMap<&'static str, usize> {
    const KINDS: [(&str, &str); 5] = [
        ("lost create races", "lost the race for a subnet"),
        ("claims", "claimed a new subnet"),
        ("watch compacted", "watch revision compacted"),
        ("watch broke", "lease watch broke"),
        ("lists", "listed leases"),
    ];
    let mut out = BTreeMap::new();
    for i in 0..f.nodes.len() {
        for line in f.log(i).lines() {
            if line_time(line).is_none_or(|t| t < since) {
                continue;
            }
            for (name, needle) in KINDS {
                if line.contains(needle) {
                    *out.entry(name).or_default() += 1;
                }
            }
        }
    }
    out
}

/// How many of the first `n` nodes logged a line containing `needle` at or after `since`.
pub fn nodes_logged(f: &Fleet, n: usize, since: f64, needle: &str) -> usize {
    (0..n.min(f.nodes.len()))
        .filter(|&i| {
            f.log(i)
                .lines()
                .any(|l| l.contains(needle) && line_time(l).is_some_and(|t| t >= since))
        })
        .count()
}

/// p50, p99 and max of `v` (in its unit); zeros when empty.
pub fn percentiles(v: &mut [f64]) -> [f64; 3] {
    if v.is_empty() {
        return [0.0; 3];
    }
    v.sort_by(f64::total_cmp);
    let p = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    [p(0.5), p(0.99), p(1.0)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_lines_are_read_with_their_time() {
        let log = "2026-12-02T01:22:33.500000Z  INFO reconcile{leases=3}: hostgw_routed::reconcile: routes applied added=42 removed=1 repaired=0 read_ms=1 apply_ms=2\n\
                   2026-12-02T01:22:34.250000Z  INFO reconcile{leases=3}: hostgw_routed::reconcile: route added dst=198.18.0.8/29 gw=198.19.1.2\n\
                   2026-12-02T01:22:35.000000Z  INFO hostgw_routed::reconcile: route removed dst=198.18.0.16/29 gw=198.19.1.3\n\
                   2026-12-02T01:22:35.000000Z  INFO hostgw_routed: started";
        let c = changes(4, log);
        assert_eq!(c.len(), 3);
        assert_eq!((c[0].added, c[0].removed, c[0].dst.clone()), (42, 1, None));
        assert!((c[0].at - (3600.0 + 22.0 * 60.0 + 33.5)).abs() < 1e-6);
        assert_eq!(c[1].dst.as_deref(), Some("198.18.0.8/29"));
        assert_eq!((c[2].added, c[2].removed), (0, 1));
        assert!(c.iter().all(|c| c.node == 4));
    }

    #[test]
    fn percentiles_of_a_sample() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentiles(&mut v), [50.0, 99.0, 100.0]);
        assert_eq!(percentiles(&mut []), [0.0; 3]);
    }
}
