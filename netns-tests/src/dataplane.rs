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
//! Outputs `dataplane.json`, `dataplane.svg` (a bar chart drawn here, no plotting
//! dependency) and a text table. Every server is a `Proc` (ended by PID on Drop), every
//! client run is bounded in time, every namespace is deleted on Drop.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{
    Netns, Proc, bin,
    cni::{Call, invoke},
    must,
    routed::{Cluster, Spec},
    run_timeout, wait_for,
};

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
        "no-nft",
        "the daemon's nftables table (inet hostgw, a forward chain) deleted in nodes",
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

    /// Parses the command line of `bench-dataplane` (without the program name).
    pub fn parse(args: &[String]) -> Result<Options> {
        let smoke = args.iter().any(|a| a == "--smoke");
        let mut o = if smoke {
            Options::smoke(PathBuf::from("bench-out"))
        } else {
            Options::full(PathBuf::from("bench-out"))
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || {
                it.next()
                    .cloned()
                    .with_context(|| format!("{a} needs a value"))
            };
            match a.as_str() {
                "--smoke" => {}
                "--perf" => o.perf = true,
                "--no-pin" => o.pin = false,
                "--out" => o.out = PathBuf::from(val()?),
                "--secs" => o.secs = val()?.parse()?,
                "--runs" => o.runs = val()?.parse()?,
                "--lat-secs" => o.lat_secs = val()?.parse()?,
                "--lat-runs" => o.lat_runs = val()?.parse()?,
                "--modes" => o.modes = split_list(&val()?),
                "--streams" => {
                    o.streams = split_list(&val()?)
                        .iter()
                        .map(|x| x.parse())
                        .collect::<Result<_, _>>()?
                }
                "--tune" => o.tune = split_list(&val()?),
                "--hold" => o.hold = val()?.parse()?,
                "-h" | "--help" => bail!("{}", usage()),
                other => bail!("unknown argument {other:?}\n{}", usage()),
            }
        }
        for m in &o.modes {
            if !MODES.iter().any(|(id, ..)| id == m) {
                bail!("unknown mode {m:?}\n{}", usage());
            }
        }
        for t in &o.tune {
            if !TUNES.iter().any(|(id, _)| id == t) {
                bail!("unknown tune {t:?}\n{}", usage());
            }
        }
        if o.runs == 0 || o.lat_runs == 0 || o.secs == 0 || o.lat_secs == 0 {
            bail!("runs and seconds must be at least 1");
        }
        Ok(o)
    }

    fn wants(&self, mode: &str) -> bool {
        mode == "native" || self.modes.is_empty() || self.modes.iter().any(|m| m == mode)
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

pub fn usage() -> String {
    let mut s = String::from(
        "bench-dataplane [--smoke] [--out DIR] [--secs N] [--runs N] [--lat-secs N] [--lat-runs N]\n\
         \x20               [--streams 1,4] [--modes a,b,…] [--tune a,b,…] [--hold SECS] [--perf] [--no-pin]\nmodes:",
    );
    for (id, _, path) in MODES {
        let _ = write!(s, "\n  {id:<14} {path}");
    }
    s += "\ntunes (investigation only):";
    for (id, what) in TUNES {
        let _ = write!(s, "\n  {id:<14} {what}");
    }
    s
}

// === topology ===

/// One measured pair: a client namespace and a server address in another namespace.
struct Pair {
    /// Client on CPU 0 and server on CPU 1.
    pin: bool,
    mode: &'static str,
    client: PathBuf,
    server: PathBuf,
    server_ip: String,
    mtu: u32,
}

/// Everything of one run. Fields drop in order: servers end before their namespaces go,
/// pods before the nodes that hold their host ends.
struct Topology {
    servers: Vec<Proc>,
    pods: Vec<Netns>,
    cluster: Cluster,
    _tmp: tempfile::TempDir,
    pairs: Vec<Pair>,
}

fn nsenter(ns: &Path, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", ns.display()))
        .arg("--")
        .arg(program);
    c
}

/// `program` in namespace `ns`, on CPU `cpu` when the pair is pinned.
fn on_cpu(ns: &Path, pin: bool, cpu: u32, program: &str) -> Command {
    if pin {
        let mut c = nsenter(ns, "taskset");
        c.args(["-c", &cpu.to_string(), program]);
        c
    } else {
        nsenter(ns, program)
    }
}

/// The first IPv4 address of a CNI result, without its prefix length.
fn result_ip(result: &Value) -> Result<String> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str())
        .find(|a| !a.contains(':'))
        .map(|a| a.split('/').next().unwrap_or(a).to_owned())
        .with_context(|| format!("no IPv4 address in CNI result {result}"))
}

/// ADD of `pod` through `plugin` in `node`, as a runtime calls it; returns the pod's IPv4.
fn cni_add(
    plugin: &Path,
    cni_path: &str,
    node: &Netns,
    pod: &Netns,
    conf: &Value,
) -> Result<String> {
    let path = pod.path().display().to_string();
    let id = pod.name().to_owned();
    let call = Call {
        path: Some(cni_path),
        ..Call::attach("ADD", &id, &path)
    };
    let reply = invoke(plugin, node, &call, &conf.to_string())?;
    if !reply.ok() {
        bail!(
            "ADD of {} by {} failed ({:?}): {} {}",
            pod.name(),
            plugin.display(),
            reply.code,
            reply.stdout,
            reply.stderr
        );
    }
    result_ip(&reply.json()?)
}

/// Locally administered MAC of node `i`'s VXLAN device.
fn vtep_mac(i: usize) -> String {
    format!("0a:58:c6:12:d2:{:02x}", 0x10 + i)
}

fn build(opts: &Options, log: &mut dyn FnMut(&str)) -> Result<Topology> {
    let mut cluster = Cluster::new(Spec {
        nodes: 2,
        tls: false,
        config: CONFIG,
    })?;
    cluster.start_all()?;
    cluster.wait_converged(Duration::from_secs(20))?;
    let subnets = [cluster.wait_subnet(0)?, cluster.wait_subnet(1)?];
    log(&format!(
        "cluster up: etcd {}, node0 {} leased {}, node1 {} leased {}; routes by hostgw-routed",
        cluster.etcd.endpoint, cluster.nodes[0].ip, subnets[0], cluster.nodes[1].ip, subnets[1]
    ));
    let tmp = tempfile::tempdir()?;
    let ours = bin("hostgw");
    let mut pods = Vec::new();
    let mut pairs = Vec::new();
    let node_ip = |i: usize| cluster.nodes[i].ip.clone();

    // native: node to node.
    let pin = opts.pin && sh("nproc").parse::<u32>().unwrap_or(1) >= 2;
    pairs.push(Pair {
        pin,
        mode: "native",
        client: cluster.nodes[0].ns.path(),
        server: cluster.nodes[1].ns.path(),
        server_ip: node_ip(1),
        mtu: 1500,
    });

    // hostgw: both modes from the daemon's subnet file and one IPAM store per node, so ptp
    // and bridge pods of one node draw distinct addresses from the same leased subnet.
    let ours_conf = |i: usize, mode: &str| {
        json!({"cniVersion": "1.0.0", "name": "podnet", "type": "hostgw", "mode": mode,
               "subnetFile": cluster.nodes[i].subnet_file,
               "dataDir": tmp.path().join(format!("ipam-{i}")), "bridge": "cni0"})
    };
    let mut add_ours = |i: usize, conf: &Value| -> Result<(PathBuf, String)> {
        let pod = Netns::new("dp")?;
        let ip = cni_add(&ours, "/opt/cni/bin", &cluster.nodes[i].ns, &pod, conf)?;
        let path = pod.path();
        pods.push(pod);
        Ok((path, ip))
    };
    for (mode, plugin_mode) in [("hostgw-ptp", "ptp"), ("hostgw-bridge", "bridge")] {
        let same_node = mode == "hostgw-ptp" && opts.wants("same-node");
        if !(opts.wants(mode) || same_node) {
            continue;
        }
        let (client, _) = add_ours(0, &ours_conf(0, plugin_mode))?;
        let (server, server_ip) = add_ours(1, &ours_conf(1, plugin_mode))?;
        if mode == "hostgw-ptp" && opts.wants("same-node") {
            let (c2, _) = add_ours(1, &ours_conf(1, plugin_mode))?;
            pairs.push(Pair {
                pin,
                mode: "same-node",
                client: c2,
                server: server.clone(),
                server_ip: server_ip.clone(),
                mtu: 1500,
            });
        }
        if opts.wants(mode) {
            pairs.push(Pair {
                pin,
                mode,
                client,
                server,
                server_ip,
                mtu: 1500,
            });
        }
    }

    // overlay: flannel's vxlan backend by hand. Node i has vxlan0 with 198.18.21i.0/32 and
    // pods on vxbr0 in 198.18.21i.0/24; the peer's subnet is routed via its VTEP address
    // (onlink), with a permanent neighbour entry (VTEP MAC) and an FDB entry (node IP).
    if opts.wants("overlay-vxlan") {
        for i in 0..2 {
            let j = 1 - i;
            let ns = &cluster.nodes[i].ns;
            ns.ip(&[
                "link",
                "add",
                "vxlan0",
                "type",
                "vxlan",
                "id",
                "42",
                "local",
                &node_ip(i),
                "dev",
                "eth0",
                "dstport",
                "4789",
                "nolearning",
            ])?;
            ns.ip(&[
                "link",
                "set",
                "vxlan0",
                "mtu",
                &VXLAN_MTU.to_string(),
                "address",
                &vtep_mac(i),
                "up",
            ])?;
            ns.ip(&[
                "addr",
                "add",
                &format!("198.18.21{i}.0/32"),
                "dev",
                "vxlan0",
            ])?;
            let peer_vtep = format!("198.18.21{j}.0");
            ns.ip(&[
                "route",
                "add",
                &format!("{peer_vtep}/24"),
                "via",
                &peer_vtep,
                "dev",
                "vxlan0",
                "onlink",
            ])?;
            ns.ip(&[
                "neigh",
                "replace",
                &peer_vtep,
                "lladdr",
                &vtep_mac(j),
                "dev",
                "vxlan0",
                "nud",
                "permanent",
            ])?;
            must(ns.cmd("bridge").args([
                "fdb",
                "append",
                &vtep_mac(j),
                "dev",
                "vxlan0",
                "dst",
                &node_ip(j),
                "self",
                "permanent",
            ]))?;
        }
        let conf = |i: usize| {
            json!({"cniVersion": "1.0.0", "name": "overlay", "type": "hostgw", "mode": "bridge",
                   "bridge": "vxbr0", "subnet": format!("198.18.21{i}.0/24"), "mtu": VXLAN_MTU,
                   "dataDir": tmp.path().join(format!("ovl-{i}"))})
        };
        let (client, _) = add_ours(0, &conf(0))?;
        let (server, server_ip) = add_ours(1, &conf(1))?;
        pairs.push(Pair {
            pin,
            mode: "overlay-vxlan",
            client,
            server,
            server_ip,
            mtu: VXLAN_MTU,
        });
    }

    // reference: containernetworking-plugins bridge + host-local, flannel host-gw routes by hand.
    if opts.wants("reference") {
        let plugin = PathBuf::from("/usr/lib/cni/bridge");
        for p in [&plugin, &PathBuf::from("/usr/lib/cni/host-local")] {
            if !p.is_file() {
                bail!(
                    "{} is missing (Debian package containernetworking-plugins; scripts/setup.sh installs it)",
                    p.display()
                );
            }
        }
        let conf = |i: usize| {
            json!({"cniVersion": "1.0.0", "name": "refnet", "type": "bridge", "bridge": "refbr0",
                   "isGateway": true, "ipMasq": false, "mtu": 1500,
                   "ipam": {"type": "host-local", "subnet": format!("198.18.22{i}.0/24"),
                            "routes": [{"dst": "0.0.0.0/0"}],
                            "dataDir": tmp.path().join(format!("ref-{i}"))}})
        };
        let mut add_ref = |i: usize| -> Result<(PathBuf, String)> {
            let pod = Netns::new("dr")?;
            let ip = cni_add(
                &plugin,
                "/usr/lib/cni",
                &cluster.nodes[i].ns,
                &pod,
                &conf(i),
            )?;
            let path = pod.path();
            pods.push(pod);
            Ok((path, ip))
        };
        let (client, _) = add_ref(0)?;
        let (server, server_ip) = add_ref(1)?;
        for i in 0..2 {
            let j = 1 - i;
            cluster.nodes[i].ns.ip(&[
                "route",
                "add",
                &format!("198.18.22{j}.0/24"),
                "via",
                &node_ip(j),
            ])?;
        }
        pairs.push(Pair {
            pin,
            mode: "reference",
            client,
            server,
            server_ip,
            mtu: 1500,
        });
    }
    pairs.sort_by_key(|p| MODES.iter().position(|(id, ..)| *id == p.mode));

    let mut topo = Topology {
        servers: vec![],
        pods,
        cluster,
        _tmp: tmp,
        pairs,
    };
    apply_tunes(&topo, &opts.tune, log)?;

    // Every pair passes a ping before anything is timed (also warms neighbour caches).
    for p in &topo.pairs {
        let mut c = nsenter(&p.client, "ping");
        c.args(["-c", "3", "-i", "0.2", "-W", "2", &p.server_ip]);
        must(&mut c).with_context(|| format!("{}: ping {} failed", p.mode, p.server_ip))?;
    }
    // A sockperf server per pair, for the whole run.
    for p in &topo.pairs {
        let mut c = on_cpu(&p.server, p.pin, 1, "sockperf");
        c.args(["server", "-i", &p.server_ip, "-p", SOCKPERF_PORT])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        topo.servers.push(Proc::spawn(c)?);
        wait_listening(&p.server, "-Hlun", &p.server_ip, SOCKPERF_PORT)?;
    }
    log(&format!(
        "{} pods wired; every pair pings: {}",
        topo.pods.len(),
        topo.pairs
            .iter()
            .map(|p| format!("{} → {}", p.mode, p.server_ip))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(topo)
}

/// A failed measurement, with a hint when the topology itself has gone.
fn explain(t: &Topology, e: anyhow::Error) -> anyhow::Error {
    let gone: Vec<String> = all_namespaces(t)
        .into_iter()
        .filter(|(_, p)| !p.exists())
        .map(|(r, _)| r)
        .collect();
    if gone.is_empty() {
        e
    } else {
        e.context(format!(
            "namespaces of this run were deleted from outside ({}): another run's scripts/cleanup.sh sweeps every hgwt-* namespace; run the benchmark when no test run is going",
            gone.join(", ")
        ))
    }
}

fn topo_pin(opts: &Options) -> String {
    if opts.pin && sh("nproc").parse::<u32>().unwrap_or(1) >= 2 {
        "client (iperf3 -c, sockperf ping-pong) on CPU 0, server on CPU 1 (taskset)".into()
    } else {
        "no".into()
    }
}

fn wait_listening(ns: &Path, flags: &str, ip: &str, port: &str) -> Result<()> {
    let want = format!("{ip}:{port}");
    wait_for(
        &format!("a listener on {want}"),
        Duration::from_secs(10),
        || {
            let out = must(nsenter(ns, "ss").arg(flags)).ok()?;
            out.contains(&want).then_some(())
        },
    )
}

/// Every namespace of the topology: (role, path).
fn all_namespaces(t: &Topology) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = t
        .cluster
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.ns.path()))
        .collect();
    v.push(("switch".into(), t.cluster.sw.path()));
    v.extend(t.pods.iter().map(|p| (p.name().to_owned(), p.path())));
    v
}

fn veths_in(ns: &Path) -> Result<Vec<String>> {
    let out = must(nsenter(ns, "ip").args(["-j", "link", "show", "type", "veth"]))?;
    let v: Value = if out.trim().is_empty() {
        json!([])
    } else {
        serde_json::from_str(&out)?
    };
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect())
}

fn apply_tunes(t: &Topology, tunes: &[String], log: &mut dyn FnMut(&str)) -> Result<()> {
    let nodes: Vec<PathBuf> = t.cluster.nodes.iter().map(|n| n.ns.path()).collect();
    for tune in tunes {
        match tune.as_str() {
            "gro" => {
                for (_, ns) in all_namespaces(t) {
                    for dev in veths_in(&ns)? {
                        must(nsenter(&ns, "ethtool").args(["-K", &dev, "gro", "on"]))?;
                    }
                }
            }
            "no-brnf" => {
                for ns in nodes.iter().chain([&t.cluster.sw.path()]) {
                    for k in ["iptables", "ip6tables", "arptables"] {
                        must(
                            nsenter(ns, "sysctl")
                                .args(["-qw", &format!("net.bridge.bridge-nf-call-{k}=0")]),
                        )?;
                    }
                }
            }
            "no-nft" => {
                for ns in &nodes {
                    must(nsenter(ns, "nft").args(["delete", "table", "inet", "hostgw"]))?;
                }
            }
            "conntrack" => {
                for ns in &nodes {
                    // `nft -f -` reads stdin, which `must` closes: pipe the script through sh.
                    must(nsenter(ns, "sh").args([
                        "-c",
                        "printf 'table inet hgwbench {\\n chain forward {\\n  type filter hook forward priority -10; policy accept;\\n  ct state established,related counter accept\\n }\\n}\\n' | nft -f -",
                    ]))?;
                }
            }
            "rp-filter" => {
                for ns in &nodes {
                    for k in ["all", "default", "eth0"] {
                        must(
                            nsenter(ns, "sysctl")
                                .args(["-qw", &format!("net.ipv4.conf.{k}.rp_filter=1")]),
                        )?;
                    }
                }
            }
            other => bail!("unknown tune {other:?}"),
        }
        log(&format!("tune {tune} applied"));
    }
    Ok(())
}

/// What the node namespaces look like on the forwarding path, for the report.
fn node_state(t: &Topology) -> Value {
    let ns = t.cluster.nodes[0].ns.path();
    let read = |cmd: &mut Command| {
        must(cmd)
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|e| format!("? {e}"))
    };
    let sysctl = |k: &str| read(nsenter(&ns, "cat").arg(format!("/proc/sys/{k}")));
    let gro = |dev: &str| {
        read(nsenter(&ns, "sh").args([
            "-c",
            &format!("ethtool -k {dev} | grep -E '^generic-receive-offload' | cut -d: -f2"),
        ]))
    };
    let tables = read(nsenter(&ns, "sh").args(["-c", "nft list tables"]));
    json!({
        "node": t.cluster.nodes[0].name,
        "nft_tables": tables.lines().collect::<Vec<_>>(),
        "nf_conntrack_count": sysctl("net/netfilter/nf_conntrack_count"),
        "ip_forward": sysctl("net/ipv4/ip_forward"),
        "rp_filter_all": sysctl("net/ipv4/conf/all/rp_filter"),
        "rp_filter_eth0": sysctl("net/ipv4/conf/eth0/rp_filter"),
        "bridge_nf_call_iptables": sysctl("net/bridge/bridge-nf-call-iptables"),
        "eth0_gro": gro("eth0"),
        "eth0_qdisc": read(nsenter(&ns, "sh").args(["-c", "tc qdisc show dev eth0"])),
    })
}

// === measurement ===

#[derive(Clone, Debug, Default)]
struct Tcp {
    gbps: f64,
    /// CPU seconds (sender + receiver iperf3 processes) per Gbit transferred.
    cpu_s_per_gbit: Option<f64>,
    /// CPU seconds of the whole machine (/proc/stat, background included) per Gbit.
    machine_cpu_s_per_gbit: Option<f64>,
    retransmits: Option<u64>,
}

#[derive(Clone, Debug, Default)]
struct Lat {
    p50_us: f64,
    p99_us: f64,
    avg_us: Option<f64>,
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

fn iperf(p: &Pair, streams: u32, secs: u32) -> Result<Tcp> {
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

fn iperf_once(p: &Pair, streams: u32, secs: u32) -> Result<Tcp> {
    let mut s = on_cpu(&p.server, p.pin, 1, "iperf3");
    s.args(["-s", "-1", "-B", &p.server_ip, "-p", IPERF_PORT])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut server = Proc::spawn(s)?;
    wait_listening(&p.server, "-Hltn", &p.server_ip, IPERF_PORT)?;
    let before = proc_stat();
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
    let out = run_timeout(&mut c, Duration::from_secs(u64::from(secs) + 20))?;
    let after = proc_stat();
    let _ = wait_for("iperf3 server exit", Duration::from_secs(3), || {
        server.exited()
    });
    drop(server);
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: iperf3 output is not JSON: {text}", p.mode))?;
    if let Some(e) = v["error"].as_str() {
        bail!("{}: iperf3 -P {streams}: {e}", p.mode);
    }
    let end = &v["end"];
    let bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON without end.sum_received.bits_per_second")?;
    let secs_rx = end["sum_received"]["seconds"]
        .as_f64()
        .unwrap_or(f64::from(secs));
    let gbps = bps / 1e9;
    let cpu = &end["cpu_utilization_percent"];
    let cpu_s_per_gbit = match (cpu["host_total"].as_f64(), cpu["remote_total"].as_f64()) {
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
        retransmits: end["sum_sent"]["retransmits"].as_u64(),
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

fn sockperf(p: &Pair, secs: u32) -> Result<Lat> {
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
const BUCKETS: &[(&str, &[&str])] = &[
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
fn profile(p: &Pair, secs: u32) -> Result<Value> {
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
    let v: Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: perf + iperf3: {text} {}",
            p.mode,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let bytes = v["end"]["sum_received"]["bytes"]
        .as_f64()
        .context("iperf3 bytes")?;
    let gbps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9;
    let cpus = sh("nproc").parse::<usize>().unwrap_or(1);
    let comms: Vec<String> = std::iter::once("iperf3".to_owned())
        .chain((0..cpus).map(|i| format!("ksoftirqd/{i}")))
        .collect();
    let mut r = Command::new("perf");
    r.args(["report", "-i"]).arg(&data).args([
        "--comm",
        &comms.join(","),
        "--no-children",
        "-n",
        "--sort",
        "sym",
        "--stdio",
    ]);
    let report = must(&mut r)?;
    let gb = bytes / 1e9;
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
            top.push(json!({"symbol": sym, "cpu_ms_per_gb": round(n / gb, 1)}));
        }
    }
    Ok(json!({
        "gbps": round(gbps, 2),
        "cpu_ms_per_gb": round(total / gb, 1),
        "buckets": buckets.iter().map(|(k, v)| (k.to_string(), json!(round(v / gb, 1)))).collect::<serde_json::Map<_, _>>(),
        "top_symbols": top,
    }))
}

/// The profile as a Markdown table: buckets × modes, CPU ms per GB.
pub fn profile_table(report: &Value) -> String {
    let Some(prof) = report["profile"].as_object() else {
        return String::new();
    };
    let modes: Vec<&str> = report["modes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str())
        .filter(|id| prof.contains_key(*id))
        .collect();
    let mut s = format!(
        "| CPU ms per GB (perf, iperf3 + ksoftirqd, 1 stream) | {} |\n",
        modes.join(" | ")
    );
    s += &format!("|---|{}\n", "---|".repeat(modes.len()));
    let row = |name: &str, f: &dyn Fn(&Value) -> Option<f64>| {
        let cells: Vec<String> = modes.iter().map(|m| fmt_opt(f(&prof[*m]), 0)).collect();
        format!("| {name} | {} |\n", cells.join(" | "))
    };
    s += &row("Gbit/s during the profile", &|p| p["gbps"].as_f64());
    s += &row("**total**", &|p| p["cpu_ms_per_gb"].as_f64());
    let names: Vec<&str> = BUCKETS.iter().map(|(n, _)| *n).chain(["other"]).collect();
    for n in names {
        s += &row(n, &|p| Some(p["buckets"][n].as_f64().unwrap_or(0.0)));
    }
    s
}

// === statistics and report ===

/// Median, min, max and spread ((max - min) / median, %) of `v`.
pub fn stats(v: &[f64]) -> Value {
    if v.is_empty() {
        return Value::Null;
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
    json!({
        "median": round(median, 3),
        "min": round(min, 3),
        "max": round(max, 3),
        "spread_pct": if median > 0.0 { round((max - min) / median * 100.0, 1) } else { 0.0 },
        "runs": v.iter().map(|x| round(*x, 3)).collect::<Vec<_>>(),
    })
}

fn median_opt(v: &[Option<f64>]) -> Value {
    let xs: Vec<f64> = v.iter().flatten().copied().collect();
    if xs.is_empty() {
        Value::Null
    } else {
        stats(&xs)["median"].clone()
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

fn sh(cmd: &str) -> String {
    must(Command::new("sh").args(["-c", cmd]))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    json!({
        "kernel": sh("uname -r"),
        "cpu": cpu,
        "cpus": sh("nproc").parse::<u64>().unwrap_or(0),
        "memory": sh("free -h | awk '/^Mem:/ {print $2}'"),
        "os": sh(". /etc/os-release 2>/dev/null && echo \"$PRETTY_NAME\""),
        "virtualization": sh("systemd-detect-virt 2>/dev/null || true"),
        "iperf3": sh("iperf3 --version 2>&1 | head -1"),
        "sockperf": sh("sockperf --version 2>&1 | head -1"),
        "containernetworking_plugins": sh("dpkg-query -W -f='${Version}' containernetworking-plugins 2>/dev/null"),
        "git": sh("git rev-parse --short HEAD 2>/dev/null"),
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Runs the suite and writes `dataplane.json` and `dataplane.svg` into `opts.out`; returns
/// the report (the JSON) and prints progress and the table through `log`.
pub fn run(opts: &Options, log: &mut dyn FnMut(&str)) -> Result<Value> {
    crate::require_root();
    let t0 = Instant::now();
    let load_before = loadavg();
    let date = sh("date -u +%Y-%m-%dT%H:%M:%SZ");
    let topo = build(opts, log)?;
    let state = node_state(&topo);
    if opts.hold > 0 {
        log(&format!(
            "holding the topology for {} s: {}",
            opts.hold,
            all_namespaces(&topo)
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

    let mut tcp: BTreeMap<(&str, u32), Vec<Tcp>> = BTreeMap::new();
    let mut lat: BTreeMap<&str, Vec<Lat>> = BTreeMap::new();
    for &streams in &opts.streams {
        for round in 0..opts.runs {
            for p in &topo.pairs {
                let r = iperf(p, streams, opts.secs).map_err(|e| explain(&topo, e))?;
                log(&format!(
                    "tcp -P {streams} run {}/{} {:<14} {:>7.2} Gbit/s",
                    round + 1,
                    opts.runs,
                    p.mode,
                    r.gbps
                ));
                tcp.entry((p.mode, streams)).or_default().push(r);
            }
        }
    }
    for round in 0..opts.lat_runs {
        for p in &topo.pairs {
            let r = sockperf(p, opts.lat_secs).map_err(|e| explain(&topo, e))?;
            log(&format!(
                "rr run {}/{} {:<14} p50 {:>7.1} µs  p99 {:>7.1} µs",
                round + 1,
                opts.lat_runs,
                p.mode,
                r.p50_us,
                r.p99_us
            ));
            lat.entry(p.mode).or_default().push(r);
        }
    }
    let mut profiles = BTreeMap::new();
    if opts.perf {
        for p in &topo.pairs {
            let prof = profile(p, opts.secs).map_err(|e| explain(&topo, e))?;
            log(&format!(
                "perf {:<14} {:>6.0} CPU ms per GB (iperf3 + ksoftirqd, {:.1} Gbit/s)",
                p.mode,
                prof["cpu_ms_per_gb"].as_f64().unwrap_or(0.0),
                prof["gbps"].as_f64().unwrap_or(0.0)
            ));
            profiles.insert(p.mode, prof);
        }
    }
    let load_after = loadavg();

    let mut modes = Vec::new();
    for p in &topo.pairs {
        let (_, label, path) = MODES.iter().find(|(id, ..)| *id == p.mode).unwrap();
        let t = |s: u32| {
            let Some(runs) = tcp.get(&(p.mode, s)) else {
                return Value::Null;
            };
            json!({
                "gbps": stats(&runs.iter().map(|r| r.gbps).collect::<Vec<_>>()),
                "cpu_s_per_gbit": median_opt(&runs.iter().map(|r| r.cpu_s_per_gbit).collect::<Vec<_>>()),
                "machine_cpu_s_per_gbit": median_opt(&runs.iter().map(|r| r.machine_cpu_s_per_gbit).collect::<Vec<_>>()),
                "retransmits": runs.iter().map(|r| r.retransmits).collect::<Vec<_>>(),
            })
        };
        let l = &lat[p.mode];
        modes.push(json!({
            "id": p.mode,
            "label": label,
            "path": path,
            "mtu": p.mtu,
            "tcp_1": t(1),
            "tcp_4": t(4),
            "latency_us": {
                "p50": stats(&l.iter().map(|r| r.p50_us).collect::<Vec<_>>()),
                "p99": stats(&l.iter().map(|r| r.p99_us).collect::<Vec<_>>()),
                "avg": median_opt(&l.iter().map(|r| r.avg_us).collect::<Vec<_>>()),
            },
        }));
    }
    add_ratios(&mut modes);
    let targets = targets(&modes);
    let report = json!({
        "suite": "hostgw data plane",
        "smoke": opts.smoke,
        "date": date,
        "command": opts.command,
        "machine": machine(),
        "load_average": {"before": load_before, "after": load_after},
        "params": {
            "iperf3_seconds": opts.secs, "iperf3_runs": opts.runs, "streams": opts.streams,
            "latency": "sockperf ping-pong, UDP, 14-byte messages (sockperf's default), --full-rtt",
            "latency_seconds": opts.lat_secs, "latency_runs": opts.lat_runs,
            "pinned": topo_pin(opts),
            "tunes": opts.tune.iter().map(|t| json!({"id": t, "what": TUNES.iter().find(|(id, _)| id == t).map(|x| x.1)})).collect::<Vec<_>>(),
            "cpu": "cpu_s_per_gbit: CPU seconds of the iperf3 sender and receiver processes (iperf3's cpu_utilization_percent, which includes the softirq work run in their context) per Gbit transferred; machine_cpu_s_per_gbit: all busy CPU time of the machine from /proc/stat (background load included) per Gbit",
        },
        "node_state": state,
        "modes": modes,
        "targets": targets,
        "profile": if opts.perf { json!(profiles) } else { Value::Null },
        "elapsed_s": round(t0.elapsed().as_secs_f64(), 1),
    });
    drop(topo);

    std::fs::create_dir_all(&opts.out).with_context(|| format!("create {}", opts.out.display()))?;
    let json_path = opts.out.join("dataplane.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")?;
    let svg_path = opts.out.join("dataplane.svg");
    std::fs::write(&svg_path, svg(&report))?;
    log(&format!("\n{}", table(&report)));
    if opts.perf {
        log(&format!("\n{}", profile_table(&report)));
    }
    log(&format!(
        "wrote {} and {} ({:.0} s)",
        json_path.display(),
        svg_path.display(),
        t0.elapsed().as_secs_f64()
    ));
    Ok(report)
}

fn med(v: &Value, path: &[&str]) -> Option<f64> {
    let mut x = v;
    for k in path {
        x = &x[*k];
    }
    x.as_f64()
}

fn runs_of(m: &Value, path: &[&str]) -> Vec<f64> {
    let mut x = m;
    for k in path {
        x = &x[*k];
    }
    x["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .collect()
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
    if r.is_empty() {
        return None;
    }
    stats(&r)["median"].as_f64()
}

/// Recomputes the ratios and the target checks of a report from its runs (for `--render`
/// of a report written by an older version).
pub fn rederive(report: &mut Value) {
    if let Some(modes) = report["modes"].as_array_mut() {
        add_ratios(modes);
    }
    let t = targets(
        report["modes"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default(),
    );
    report["targets"] = t;
}

fn add_ratios(modes: &mut [Value]) {
    let native = modes.iter().find(|m| m["id"] == "native").cloned();
    let Some(native) = native else { return };
    for m in modes.iter_mut() {
        let ratio = |path: &[&str]| {
            paired_ratio(&runs_of(m, path), &runs_of(&native, path))
                .map(|x| json!(round(x, 3)))
                .unwrap_or(Value::Null)
        };
        let of_medians = |path: &[&str]| match (med(m, path), med(&native, path)) {
            (Some(x), Some(n)) if n > 0.0 => json!(round(x / n, 3)),
            _ => Value::Null,
        };
        let r = json!({
            "method": "median over rounds of this mode's run / native's run of the same round",
            "tcp_1": ratio(&["tcp_1", "gbps"]),
            "tcp_4": ratio(&["tcp_4", "gbps"]),
            "latency_p50": ratio(&["latency_us", "p50"]),
            "of_medians": {
                "tcp_1": of_medians(&["tcp_1", "gbps", "median"]),
                "tcp_4": of_medians(&["tcp_4", "gbps", "median"]),
                "latency_p50": of_medians(&["latency_us", "p50", "median"]),
            },
        });
        m["ratio_to_native"] = r;
    }
}

/// The issue's targets for each hostgw mode: single-stream TCP ≥ 0.95× native, p50 ≤ 1.15×
/// native, single-stream TCP ≥ 1.3× the overlay.
fn targets(modes: &[Value]) -> Value {
    let get = |id: &str| modes.iter().find(|m| m["id"] == id);
    let overlay = get("overlay-vxlan").map(|m| runs_of(m, &["tcp_1", "gbps"]));
    let mut out = Vec::new();
    for id in ["hostgw-ptp", "hostgw-bridge"] {
        let Some(m) = get(id) else { continue };
        let r1 = med(m, &["ratio_to_native", "tcp_1"]);
        let r50 = med(m, &["ratio_to_native", "latency_p50"]);
        let vs_overlay = overlay
            .as_ref()
            .and_then(|o| paired_ratio(&runs_of(m, &["tcp_1", "gbps"]), o))
            .map(|x| round(x, 3));
        let check = |name: &str, value: Option<f64>, goal: &str, met: Option<bool>| {
            json!({"mode": id, "target": name, "value": value, "goal": goal,
                   "met": met})
        };
        out.push(check(
            "single-stream TCP vs native",
            r1,
            ">= 0.95",
            r1.map(|r| r >= 0.95),
        ));
        out.push(check(
            "latency p50 vs native",
            r50,
            "<= 1.15",
            r50.map(|r| r <= 1.15),
        ));
        out.push(check(
            "single-stream TCP vs overlay",
            vs_overlay,
            ">= 1.3",
            vs_overlay.map(|r| r >= 1.3),
        ));
    }
    Value::Array(out)
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

/// The text table (Markdown, so that it pastes into BENCHMARKS.md as is).
pub fn table(report: &Value) -> String {
    let mut s = String::new();
    s += "| mode | TCP 1 stream Gbit/s (min–max) | × native¹ | TCP 4 streams Gbit/s (min–max) | × native¹ | RR p50 µs | RR p99 µs | p50 × native¹ | CPU s/Gbit (1 / 4 streams) |\n";
    s += "|---|---|---|---|---|---|---|---|---|\n";
    for m in report["modes"].as_array().into_iter().flatten() {
        let g = |k: &str, f: &str| med(m, &[k, "gbps", f]);
        let _ = writeln!(
            s,
            "| {} | {} ({}–{}) | {} | {} ({}–{}) | {} | {} | {} | {} | {} / {} |",
            m["id"].as_str().unwrap_or("?"),
            fmt_opt(g("tcp_1", "median"), 2),
            fmt_opt(g("tcp_1", "min"), 2),
            fmt_opt(g("tcp_1", "max"), 2),
            fmt_opt(med(m, &["ratio_to_native", "tcp_1"]), 2),
            fmt_opt(g("tcp_4", "median"), 2),
            fmt_opt(g("tcp_4", "min"), 2),
            fmt_opt(g("tcp_4", "max"), 2),
            fmt_opt(med(m, &["ratio_to_native", "tcp_4"]), 2),
            fmt_opt(med(m, &["latency_us", "p50", "median"]), 1),
            fmt_opt(med(m, &["latency_us", "p99", "median"]), 1),
            fmt_opt(med(m, &["ratio_to_native", "latency_p50"]), 2),
            fmt_opt(med(m, &["tcp_1", "cpu_s_per_gbit"]), 3),
            fmt_opt(med(m, &["tcp_4", "cpu_s_per_gbit"]), 3),
        );
    }
    s += "\n¹ median over rounds of (this mode's run ÷ native's run in the same round): runs are interleaved across modes, so each pair saw the same background load.\n";
    let targets = report["targets"].as_array().cloned().unwrap_or_default();
    if !targets.is_empty() {
        s += "\n| target | mode | value | goal | |\n|---|---|---|---|---|\n";
        for t in targets {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                t["target"].as_str().unwrap_or("?"),
                t["mode"].as_str().unwrap_or("?"),
                fmt_opt(t["value"].as_f64(), 2),
                t["goal"].as_str().unwrap_or("?"),
                match t["met"].as_bool() {
                    Some(true) => "MET",
                    Some(false) => "NOT MET",
                    None => "-",
                }
            );
        }
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Grouped bars with min–max whiskers: throughput (1 and 4 streams) on top, latency (p50,
/// p99) below; one group per mode, each labelled with its ratio to native.
pub fn svg(report: &Value) -> String {
    let modes = report["modes"].as_array().cloned().unwrap_or_default();
    let (w, h) = (1000.0_f64, 760.0_f64);
    let (left, right) = (70.0, 20.0);
    let plot_w = w - left - right;
    let n = modes.len().max(1) as f64;
    let group_w = plot_w / n;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let smoke = report["smoke"].as_bool() == Some(true);
    let title = if smoke {
        "hostgw data plane (SMOKE RUN: 1 s per mode, not a measurement)"
    } else {
        "hostgw data plane: pod to pod across two nodes vs native, overlay and reference"
    };
    let sub = format!(
        "{} · {} × {} · kernel {} · load average before/after {} / {} · iperf3 {} s × {} runs, sockperf {} s × {} runs",
        report["date"].as_str().unwrap_or(""),
        report["machine"]["cpus"],
        report["machine"]["cpu"].as_str().unwrap_or("?"),
        report["machine"]["kernel"].as_str().unwrap_or("?"),
        report["load_average"]["before"].as_str().unwrap_or("?"),
        report["load_average"]["after"].as_str().unwrap_or("?"),
        report["params"]["iperf3_seconds"],
        report["params"]["iperf3_runs"],
        report["params"]["latency_seconds"],
        report["params"]["latency_runs"],
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="17" font-weight="bold">{}</text>"#,
        w / 2.0,
        esc(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="42" text-anchor="middle" font-size="11" fill="#444">{}</text>"##,
        w / 2.0,
        esc(&sub)
    );

    struct Series<'a> {
        name: &'a str,
        path: [&'a str; 2],
        color: &'a str,
    }
    let mut panel = |top: f64,
                     height: f64,
                     ptitle: &str,
                     ylabel: &str,
                     series: &[Series],
                     ratio: &[&str]| {
        let vmax = modes
            .iter()
            .flat_map(|m| {
                series.iter().map(move |se| {
                    let x = &m[se.path[0]][se.path[1]];
                    x["max"]
                        .as_f64()
                        .unwrap_or(0.0)
                        .max(x["median"].as_f64().unwrap_or(0.0))
                })
            })
            .fold(0.0_f64, f64::max);
        let vmax = nice_ceiling(vmax);
        let y = |v: f64| top + height - v / vmax * height;
        // Axes, grid and ticks.
        for k in 0..=5 {
            let v = vmax * f64::from(k) / 5.0;
            let yy = y(v);
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                w - right,
                left - 6.0,
                yy + 4.0,
                trim_num(v)
            );
        }
        let _ = writeln!(
            s,
            r#"<line x1="{left}" y1="{top}" x2="{left}" y2="{:.1}" stroke="black"/><line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
            top + height,
            top + height,
            w - right,
            top + height
        );
        let _ = writeln!(
            s,
            r#"<text x="22" y="{:.1}" text-anchor="middle" transform="rotate(-90 22 {:.1})">{}</text>"#,
            top + height / 2.0,
            top + height / 2.0,
            esc(ylabel)
        );
        let _ = writeln!(
            s,
            r#"<text x="{left}" y="{:.1}" font-size="13" font-weight="bold">{}</text>"#,
            top - 10.0,
            esc(ptitle)
        );
        // Legend, right-aligned above the plot.
        let legend_w: f64 = series
            .iter()
            .map(|se| 30.0 + 7.0 * se.name.chars().count() as f64)
            .sum();
        let mut lx = w - right - legend_w;
        for se in series {
            let _ = writeln!(
                s,
                r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                top - 21.0,
                se.color,
                lx + 16.0,
                top - 11.0,
                esc(se.name)
            );
            lx += 30.0 + 7.0 * se.name.chars().count() as f64;
        }
        let bar_w = (group_w * 0.7) / series.len() as f64;
        for (i, m) in modes.iter().enumerate() {
            let gx = left + group_w * i as f64 + group_w * 0.15;
            for (k, se) in series.iter().enumerate() {
                let x = &m[se.path[0]][se.path[1]];
                let Some(v) = x["median"].as_f64() else {
                    continue;
                };
                let bx = gx + bar_w * k as f64;
                let _ = writeln!(
                    s,
                    r#"<rect x="{bx:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: median {v}</title></rect>"#,
                    y(v),
                    bar_w - 2.0,
                    (top + height - y(v)).max(0.0),
                    se.color,
                    esc(m["id"].as_str().unwrap_or("")),
                    esc(se.name)
                );
                if let (Some(lo), Some(hi)) = (x["min"].as_f64(), x["max"].as_f64()) {
                    let cx = bx + (bar_w - 2.0) / 2.0;
                    let _ = writeln!(
                        s,
                        r#"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="black"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
                        y(lo),
                        y(hi),
                        cx - 4.0,
                        y(lo),
                        cx + 4.0,
                        y(lo),
                        cx - 4.0,
                        y(hi),
                        cx + 4.0,
                        y(hi)
                    );
                }
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                    bx + (bar_w - 2.0) / 2.0,
                    y(x["max"].as_f64().unwrap_or(v).max(v)) - 4.0,
                    trim_num(v)
                );
            }
            let cx = left + group_w * (i as f64 + 0.5);
            let _ = writeln!(
                s,
                r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-weight="bold">{}</text>"#,
                top + height + 16.0,
                esc(m["label"].as_str().unwrap_or("?"))
            );
            let r: Vec<String> = ratio
                .iter()
                .filter_map(|k| {
                    m["ratio_to_native"][*k]
                        .as_f64()
                        .map(|x| format!("{x:.2}×"))
                })
                .collect();
            if !r.is_empty() {
                let _ = writeln!(
                    s,
                    r##"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" fill="#555">{} native</text>"##,
                    top + height + 31.0,
                    esc(&r.join(" / "))
                );
            }
        }
    };
    panel(
        90.0,
        250.0,
        "TCP throughput (iperf3): bar = median, whisker = min–max of the runs",
        "Gbit/s",
        &[
            Series {
                name: "1 stream",
                path: ["tcp_1", "gbps"],
                color: "#4e79a7",
            },
            Series {
                name: "4 streams",
                path: ["tcp_4", "gbps"],
                color: "#f28e2b",
            },
        ],
        &["tcp_1", "tcp_4"],
    );
    panel(
        455.0,
        230.0,
        "UDP request/response round trip (sockperf ping-pong): median over runs of each run's p50 / p99",
        "µs",
        &[
            Series {
                name: "p50",
                path: ["latency_us", "p50"],
                color: "#59a14f",
            },
            Series {
                name: "p99",
                path: ["latency_us", "p99"],
                color: "#e15759",
            },
        ],
        &["latency_p50"],
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">× native under each mode: throughput 1 / 4 streams (top), latency p50 (bottom). Two nodes in network namespaces on one switch bridge, veth links.</text>"##,
        w / 2.0,
        h - 10.0
    );
    s += "</svg>\n";
    s
}

fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn trim_num(v: f64) -> String {
    if v == v.round() || v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
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

    #[test]
    fn stats_are_median_min_max() {
        let s = stats(&[3.0, 1.0, 2.0]);
        assert_eq!(s["median"], 2.0);
        assert_eq!(s["min"], 1.0);
        assert_eq!(s["max"], 3.0);
        assert_eq!(s["spread_pct"], 100.0);
        assert_eq!(stats(&[1.0, 3.0])["median"], 2.0);
    }

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(27.0), 50.0);
        assert_eq!(nice_ceiling(19.0), 20.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
    }
}
