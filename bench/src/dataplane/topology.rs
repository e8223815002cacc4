//! The suite's topology: a two-node `hostgw-routed` cluster and, in its nodes, one client
//! and one server namespace per mode (see the table in the module above), wired by the
//! plugin of each mode exactly as a runtime calls it.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use hostgw_harness::{
    Netns, Proc, bin,
    cni::{Call, invoke},
    must,
    routed::{Cluster, Datapath, Spec, metric},
    wait_for,
};
use serde_json::{Value, json};

use super::{CONFIG, MODES, Options, SOCKPERF_PORT, VXLAN_MTU, report::NodeState, report::sh};

/// One measured pair: a client namespace and a server address in another namespace.
pub(super) struct Pair {
    /// Client on CPU 0 and server on CPU 1.
    pub(super) pin: bool,
    pub(super) mode: &'static str,
    pub(super) client: PathBuf,
    pub(super) server: PathBuf,
    pub(super) server_ip: String,
    pub(super) mtu: u32,
}

/// Everything of one run. Fields drop in order: servers end before their namespaces go,
/// pods before the nodes that hold their host ends.
pub(super) struct Topology {
    servers: Vec<Proc>,
    pub(super) pods: Vec<Netns>,
    pub(super) cluster: Cluster,
    _tmp: tempfile::TempDir,
    pub(super) pairs: Vec<Pair>,
}

fn nsenter(ns: &Path, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", ns.display()))
        .arg("--")
        .arg(program);
    c
}

/// `program` in namespace `ns`, on CPU `cpu` when the pair is pinned.
pub(super) fn on_cpu(ns: &Path, pin: bool, cpu: u32, program: &str) -> Command {
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

/// Locally administered MAC of node `i`'s VXLAN device.
fn vtep_mac(i: usize) -> String {
    format!("0a:58:c6:12:d2:{:02x}", 0x10 + i)
}

/// A plugin that wires pods: its binary and the `CNI_PATH` it runs with.
struct Plugin<'a> {
    bin: &'a Path,
    cni_path: &'a str,
}

/// The topology while it is assembled, mode by mode.
struct Builder<'a> {
    opts: &'a Options,
    cluster: Cluster,
    tmp: tempfile::TempDir,
    ours: PathBuf,
    pin: bool,
    pods: Vec<Netns>,
    pairs: Vec<Pair>,
}

impl Builder<'_> {
    fn node_ip(&self, i: usize) -> String {
        self.cluster.nodes[i].ip.clone()
    }

    /// A new pod namespace on node `node`, wired by ADD of `plugin` with `conf`; returns
    /// its path and IPv4 address.
    fn add_pod(
        &mut self,
        plugin: &Plugin,
        tag: &str,
        node: usize,
        conf: &Value,
    ) -> Result<(PathBuf, String)> {
        let pod = Netns::new(tag)?;
        let path = pod.path().display().to_string();
        let id = pod.name().to_owned();
        let call = Call {
            path: Some(plugin.cni_path),
            ..Call::attach("ADD", &id, &path)
        };
        let reply = invoke(
            plugin.bin,
            &self.cluster.nodes[node].ns,
            &call,
            &conf.to_string(),
        )?;
        if !reply.ok() {
            bail!(
                "ADD of {} by {} failed ({:?}): {} {}",
                pod.name(),
                plugin.bin.display(),
                reply.code,
                reply.stdout,
                reply.stderr
            );
        }
        let ip = result_ip(&reply.json()?)?;
        let path = pod.path();
        self.pods.push(pod);
        Ok((path, ip))
    }

    /// A pod of our plugin on node `node`.
    fn add_ours(&mut self, node: usize, conf: &Value) -> Result<(PathBuf, String)> {
        let ours = self.ours.clone();
        let plugin = Plugin {
            bin: &ours,
            cni_path: "/opt/cni/bin",
        };
        self.add_pod(&plugin, "dp", node, conf)
    }

    fn pair(&mut self, mode: &'static str, client: PathBuf, server: (PathBuf, String), mtu: u32) {
        self.pairs.push(Pair {
            pin: self.pin,
            mode,
            client,
            server: server.0,
            server_ip: server.1,
            mtu,
        });
    }

    /// hostgw: both modes from the daemon's subnet file and one IPAM store per node, so
    /// ptp and bridge pods of one node draw distinct addresses from the same leased subnet.
    fn hostgw(&mut self) -> Result<()> {
        for (mode, plugin_mode) in [("hostgw-ptp", "ptp"), ("hostgw-bridge", "bridge")] {
            let same_node = mode == "hostgw-ptp" && self.opts.wants("same-node");
            if !(self.opts.wants(mode) || same_node) {
                continue;
            }
            let conf = |b: &Self, i: usize| {
                json!({"cniVersion": "1.0.0", "name": "podnet", "type": "hostgw", "mode": plugin_mode,
                       "subnetFile": b.cluster.nodes[i].subnet_file,
                       "dataDir": b.tmp.path().join(format!("ipam-{i}")), "bridge": "cni0"})
            };
            let (client, _) = self.add_ours(0, &conf(self, 0))?;
            let server = self.add_ours(1, &conf(self, 1))?;
            if same_node {
                let (c2, _) = self.add_ours(1, &conf(self, 1))?;
                self.pair("same-node", c2, server.clone(), 1500);
            }
            if self.opts.wants(mode) {
                self.pair(mode, client, server, 1500);
            }
        }
        Ok(())
    }

    /// The fast-path modes: a node pair of their own per mode (so the uplink programs never
    /// see native's traffic), daemons on `--datapath ebpf`; BIG TCP on the pods' veths (the
    /// plugin), the uplinks (the daemon) and the uplinks' switch ports (the wire).
    fn ebpf(&mut self) -> Result<()> {
        for (mode, big_tcp) in [("hostgw-ptp-ebpf", false), ("hostgw-ptp-ebpf-bigtcp", true)] {
            if !self.opts.wants(mode) {
                continue;
            }
            let (a, b) = (self.cluster.add_node()?, self.cluster.add_node()?);
            self.cluster.set_datapath(Datapath::Ebpf { big_tcp });
            for i in [a, b] {
                self.cluster.start(i)?;
                if big_tcp {
                    big_tcp_on(&self.cluster.sw.path(), &format!("p{i}"))?;
                }
            }
            self.cluster.wait_converged(Duration::from_secs(20))?;
            let conf = |b: &Self, i: usize| {
                json!({"cniVersion": "1.0.0", "name": "podnet", "type": "hostgw", "mode": "ptp",
                       "subnetFile": b.cluster.nodes[i].subnet_file, "bigTcp": big_tcp,
                       "dataDir": b.tmp.path().join(format!("ipam-{i}"))})
            };
            let (client, _) = self.add_ours(a, &conf(self, a))?;
            let server = self.add_ours(b, &conf(self, b))?;
            for i in [a, b] {
                wait_for(
                    &format!("the fast path on node {i}'s pod veth"),
                    Duration::from_secs(15),
                    || {
                        let m = self.cluster.metrics(i).ok()?;
                        (metric(&m, "hostgw_ebpf_pods_attached", &[]) >= 1.0).then_some(())
                    },
                )
                .with_context(|| self.cluster.logs())?;
            }
            self.pair(mode, client, server, 1500);
        }
        self.cluster.set_datapath(Datapath::Routes);
        Ok(())
    }

    /// Native between two more nodes with BIG TCP on their uplinks and switch ports, for
    /// the BIG TCP mode's fair comparison (no daemon: node to node needs none).
    fn native_big_tcp(&mut self) -> Result<()> {
        if !self.opts.wants("native-bigtcp") {
            return Ok(());
        }
        let (a, b) = (self.cluster.add_node()?, self.cluster.add_node()?);
        for i in [a, b] {
            big_tcp_on(&self.cluster.nodes[i].ns.path(), "eth0")?;
            big_tcp_on(&self.cluster.sw.path(), &format!("p{i}"))?;
        }
        let server = (self.cluster.nodes[b].ns.path(), self.node_ip(b));
        self.pair(
            "native-bigtcp",
            self.cluster.nodes[a].ns.path(),
            server,
            1500,
        );
        Ok(())
    }

    /// Node `i`'s half of flannel's vxlan backend by hand: vxlan0 with 198.18.21i.0/32,
    /// the peer's subnet routed via its VTEP address (onlink), with a permanent neighbour
    /// entry (VTEP MAC) and an FDB entry (node IP).
    fn vxlan_node(&self, i: usize) -> Result<()> {
        let j = 1 - i;
        let ns = &self.cluster.nodes[i].ns;
        let (local, peer_ip) = (self.node_ip(i), self.node_ip(j));
        let (mac, peer_mac) = (vtep_mac(i), vtep_mac(j));
        let peer_vtep = format!("198.18.21{j}.0");
        // Every word is an address, a number or a keyword: none holds a space.
        let words = |line: String| {
            line.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        for line in [
            format!(
                "link add vxlan0 type vxlan id 42 local {local} dev eth0 dstport 4789 nolearning"
            ),
            format!("link set vxlan0 mtu {VXLAN_MTU} address {mac} up"),
            format!("addr add 198.18.21{i}.0/32 dev vxlan0"),
            format!("route add {peer_vtep}/24 via {peer_vtep} dev vxlan0 onlink"),
            format!("neigh replace {peer_vtep} lladdr {peer_mac} dev vxlan0 nud permanent"),
        ] {
            let args = words(line);
            ns.ip(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        let fdb = format!("fdb append {peer_mac} dev vxlan0 dst {peer_ip} self permanent");
        must(ns.cmd("bridge").args(words(fdb)))?;
        Ok(())
    }

    /// overlay: pods on vxbr0 in 198.18.21i.0/24 of node i, over the VXLAN devices.
    fn overlay(&mut self) -> Result<()> {
        if !self.opts.wants("overlay-vxlan") {
            return Ok(());
        }
        for i in 0..2 {
            self.vxlan_node(i)?;
        }
        let conf = |b: &Self, i: usize| {
            json!({"cniVersion": "1.0.0", "name": "overlay", "type": "hostgw", "mode": "bridge",
                   "bridge": "vxbr0", "subnet": format!("198.18.21{i}.0/24"), "mtu": VXLAN_MTU,
                   "dataDir": b.tmp.path().join(format!("ovl-{i}"))})
        };
        let (client, _) = self.add_ours(0, &conf(self, 0))?;
        let server = self.add_ours(1, &conf(self, 1))?;
        self.pair("overlay-vxlan", client, server, VXLAN_MTU);
        Ok(())
    }

    /// reference: containernetworking-plugins bridge + host-local, flannel host-gw routes
    /// by hand.
    fn reference(&mut self) -> Result<()> {
        if !self.opts.wants("reference") {
            return Ok(());
        }
        let bridge = PathBuf::from("/usr/lib/cni/bridge");
        for p in [&bridge, &PathBuf::from("/usr/lib/cni/host-local")] {
            if !p.is_file() {
                bail!(
                    "{} is missing (Debian package containernetworking-plugins; scripts/setup.sh installs it)",
                    p.display()
                );
            }
        }
        let conf = |b: &Self, i: usize| {
            json!({"cniVersion": "1.0.0", "name": "refnet", "type": "bridge", "bridge": "refbr0",
                   "isGateway": true, "ipMasq": false, "mtu": 1500,
                   "ipam": {"type": "host-local", "subnet": format!("198.18.22{i}.0/24"),
                            "routes": [{"dst": "0.0.0.0/0"}],
                            "dataDir": b.tmp.path().join(format!("ref-{i}"))}})
        };
        let plugin = Plugin {
            bin: &bridge,
            cni_path: "/usr/lib/cni",
        };
        let (client, _) = self.add_pod(&plugin, "dr", 0, &conf(self, 0))?;
        let server = self.add_pod(&plugin, "dr", 1, &conf(self, 1))?;
        for i in 0..2 {
            let j = 1 - i;
            let via = self.node_ip(j);
            self.cluster.nodes[i].ns.ip(&[
                "route",
                "add",
                &format!("198.18.22{j}.0/24"),
                "via",
                &via,
            ])?;
        }
        self.pair("reference", client, server, 1500);
        Ok(())
    }
}

/// BIG TCP on `dev` in namespace `ns`: the IPv4 sizes need netlink, from a thread that
/// enters the namespace and dies with it.
fn big_tcp_on(ns: &Path, dev: &str) -> Result<()> {
    let file = std::fs::File::open(ns).with_context(|| format!("open {}", ns.display()))?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let ifindex = nix::net::if_::if_nametoindex(dev)?;
            hostgw_ebpf::set_gso_gro_max(ifindex, hostgw_ebpf::BIG_TCP_SIZE)?;
            Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("BIG TCP thread panicked"))?
    })
    .with_context(|| format!("BIG TCP on {dev} in {}", ns.display()))
}

/// The two-node cluster with routes from `hostgw-routed`.
fn start_cluster(log: &mut dyn FnMut(&str)) -> Result<Cluster> {
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
    Ok(cluster)
}

/// Every pair passes a ping before anything is timed (also warms neighbour caches), and
/// gets a sockperf server for the whole run.
fn ready_pairs(topo: &mut Topology) -> Result<()> {
    for p in &topo.pairs {
        let mut c = nsenter(&p.client, "ping");
        c.args(["-c", "3", "-i", "0.2", "-W", "2", &p.server_ip]);
        must(&mut c).with_context(|| format!("{}: ping {} failed", p.mode, p.server_ip))?;
    }
    for p in &topo.pairs {
        let mut c = on_cpu(&p.server, p.pin, 1, "sockperf");
        c.args(["server", "-i", &p.server_ip, "-p", SOCKPERF_PORT])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        topo.servers.push(Proc::spawn(c)?);
        wait_listening(&p.server, "-Hlun", &p.server_ip, SOCKPERF_PORT)?;
    }
    Ok(())
}

pub(super) fn build(opts: &Options, log: &mut dyn FnMut(&str)) -> Result<Topology> {
    let cluster = start_cluster(log)?;
    let pin = opts.pin && sh("nproc").parse::<u32>().unwrap_or(1) >= 2;
    let mut b = Builder {
        opts,
        cluster,
        tmp: tempfile::tempdir()?,
        ours: bin("hostgw"),
        pin,
        pods: vec![],
        pairs: vec![],
    };
    // native: node to node, over the nodes' own uplinks.
    let native_server = (b.cluster.nodes[1].ns.path(), b.node_ip(1));
    b.pair("native", b.cluster.nodes[0].ns.path(), native_server, 1500);
    b.hostgw()?;
    b.ebpf()?;
    b.native_big_tcp()?;
    b.overlay()?;
    b.reference()?;
    b.pairs
        .sort_by_key(|p| MODES.iter().position(|(id, ..)| *id == p.mode));
    let mut topo = Topology {
        servers: vec![],
        pods: b.pods,
        cluster: b.cluster,
        _tmp: b.tmp,
        pairs: b.pairs,
    };
    apply_tunes(&topo, &opts.tune, log)?;
    ready_pairs(&mut topo)?;
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
pub(super) fn explain(t: &Topology, e: anyhow::Error) -> anyhow::Error {
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

pub(super) fn topo_pin(opts: &Options) -> String {
    if opts.pin && sh("nproc").parse::<u32>().unwrap_or(1) >= 2 {
        "client (iperf3 -c, sockperf ping-pong) on CPU 0, server on CPU 1 (taskset)".into()
    } else {
        "no".into()
    }
}

pub(super) fn wait_listening(ns: &Path, flags: &str, ip: &str, port: &str) -> Result<()> {
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
pub(super) fn all_namespaces(t: &Topology) -> Vec<(String, PathBuf)> {
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
pub(super) fn node_state(t: &Topology) -> NodeState {
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
    NodeState {
        node: t.cluster.nodes[0].name.clone(),
        nft_tables: tables.lines().map(str::to_owned).collect(),
        nf_conntrack_count: sysctl("net/netfilter/nf_conntrack_count"),
        ip_forward: sysctl("net/ipv4/ip_forward"),
        rp_filter_all: sysctl("net/ipv4/conf/all/rp_filter"),
        rp_filter_eth0: sysctl("net/ipv4/conf/eth0/rp_filter"),
        bridge_nf_call_iptables: sysctl("net/bridge/bridge-nf-call-iptables"),
        eth0_gro: gro("eth0"),
        eth0_qdisc: read(nsenter(&ns, "sh").args(["-c", "tc qdisc show dev eth0"])),
    }
}
