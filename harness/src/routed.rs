//! A hostgw cluster in namespaces for the route-daemon tests and benchmarks: one switch
//! namespace with a bridge, an etcd namespace and N node namespaces on that segment
//! (198.19.0.0/24, fd19:19::/64), each able to run `hostgw-routed`.

use std::{fs::File, process::Stdio, time::Duration};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{
    Netns, Proc, bin,
    etcd::{Certs, Etcd},
    must, veth, wait_for,
};

pub const PREFIX: &str = "/hostgw/network";
pub const ETCD_IP: &str = "198.19.0.2";
pub const CONFIG: &str =
    r#"{"Network":"198.18.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}"#;
/// [`CONFIG`] with the nodes' pool ending at 198.18.199.0/24: a test's own leases and
/// routes in 198.18.200.0-198.18.255.255 never meet a subnet a node picked at random.
pub const CONFIG_LOW_POOL: &str = r#"{"Network":"198.18.0.0/16","SubnetLen":24,"SubnetMax":"198.18.199.0","Backend":{"Type":"host-gw"}}"#;
pub const CONFIG_V6: &str = r#"{"Network":"198.18.0.0/16","SubnetLen":24,"IPv6Network":"fd18:18::/48","IPv6SubnetLen":64,"Backend":{"Type":"host-gw"}}"#;
/// An IPv6-only network: no `Network` at all.
pub const CONFIG_V6_ONLY: &str =
    r#"{"IPv6Network":"fd18:18::/48","IPv6SubnetLen":64,"Backend":{"Type":"host-gw"}}"#;
/// etcd's address in an IPv6-only cluster ([`Cluster::ipv6_only`]).
pub const ETCD_IP6: &str = "fd19:19::2";

pub use crate::node::Node;

/// The datapath of the cluster's daemons. [`Cluster::new`] takes it from
/// `HOSTGW_TEST_DATAPATH` (`routes`, the default; `ebpf`; `ebpf-bigtcp`), so a whole suite can
/// run on the fast path; the fast-path scenarios set it with [`Cluster::set_datapath`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datapath {
    Routes,
    Ebpf { big_tcp: bool },
}

impl Datapath {
    pub fn from_env() -> Result<Datapath> {
        match std::env::var("HOSTGW_TEST_DATAPATH").as_deref() {
            Err(_) | Ok("") | Ok("routes") => Ok(Datapath::Routes),
            Ok("ebpf") => Ok(Datapath::Ebpf { big_tcp: false }),
            Ok("ebpf-bigtcp") => Ok(Datapath::Ebpf { big_tcp: true }),
            Ok(other) => anyhow::bail!(
                "HOSTGW_TEST_DATAPATH={other:?}: expected routes, ebpf or ebpf-bigtcp"
            ),
        }
    }

    /// The daemon's flags for it.
    pub fn args(self) -> Vec<String> {
        match self {
            Datapath::Routes => vec![],
            Datapath::Ebpf { big_tcp } => {
                let mut a = vec!["--datapath".to_owned(), "ebpf".to_owned()];
                if big_tcp {
                    a.push("--big-tcp".to_owned());
                }
                a
            }
        }
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub datapath: Datapath,
    pub etcd: Etcd,
    pub etcd_ns: Netns,
    pub sw: Netns,
    pub certs: Option<Certs>,
    pub dir: tempfile::TempDir,
}

pub struct Spec<'a> {
    pub nodes: usize,
    pub tls: bool,
    pub config: &'a str,
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Spec {
            nodes: 3,
            tls: false,
            config: CONFIG,
        }
    }
}

/// Puts `ns` on the switch as `198.19.0.<host>/24` and `fd19:19::<host>/64`.
fn attach(sw: &Netns, ns: &Netns, port: &str, host: u32) -> Result<()> {
    // Without DAD the uplink's link-local address is usable at once: the kernel sends no
    // neighbour solicitation from a tentative one, so IPv6 between freshly made nodes
    // would otherwise stall for the first 1-2 s. Real nodes are long past DAD.
    ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
    veth(ns, "eth0", sw, port)?;
    sw.ip(&["link", "set", port, "master", "br0"])?;
    ns.ip(&["addr", "add", &format!("198.19.0.{host}/24"), "dev", "eth0"])?;
    ns.ip(&[
        "addr",
        "add",
        &format!("fd19:19::{host:x}/64"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    Ok(())
}

impl Cluster {
    pub fn new(spec: Spec) -> Result<Cluster> {
        let sw = Netns::new("sw")?;
        sw.ip(&["link", "add", "br0", "type", "bridge"])?;
        sw.ip(&["link", "set", "br0", "up"])?;
        let etcd_ns = Netns::new("et")?;
        attach(&sw, &etcd_ns, "pe", 2)?;
        let certs = if spec.tls {
            Some(Certs::generate(ETCD_IP)?)
        } else {
            None
        };
        let etcd = match &certs {
            Some(c) => Etcd::start_tls(&etcd_ns, ETCD_IP, c)?,
            None => Etcd::start(&etcd_ns, ETCD_IP)?,
        };
        etcd.put(&format!("{PREFIX}/config"), spec.config)?;
        let dir = tempfile::tempdir()?;
        let mut c = Cluster {
            nodes: vec![],
            datapath: Datapath::from_env()?,
            etcd,
            etcd_ns,
            sw,
            certs,
            dir,
        };
        for _ in 0..spec.nodes {
            c.add_node()?;
        }
        Ok(c)
    }

    /// A cluster of `spec` whose daemons all run and route to every peer (waited for up to
    /// 20 s), on the datapath `HOSTGW_TEST_DATAPATH` names.
    pub fn converged(spec: Spec) -> Result<Cluster> {
        let mut c = Cluster::new(spec)?;
        c.start_all()?;
        c.wait_converged(Duration::from_secs(20))?;
        Ok(c)
    }

    /// The same with every daemon on `datapath`.
    pub fn converged_on(spec: Spec, datapath: Datapath) -> Result<Cluster> {
        let mut c = Cluster::new(spec)?;
        c.set_datapath(datapath);
        c.start_all()?;
        c.wait_converged(Duration::from_secs(20))?;
        Ok(c)
    }

    /// A new node namespace on the segment (not started).
    pub fn add_node(&mut self) -> Result<usize> {
        let i = self.nodes.len();
        let host = 10 + i as u32;
        let ns = Netns::new("n")?;
        attach(&self.sw, &ns, &format!("p{i}"), host)?;
        self.nodes.push(Node::in_cluster(
            ns,
            format!("node-{i}"),
            format!("198.19.0.{host}"),
            format!("fd19:19::{host:x}"),
        )?);
        Ok(i)
    }

    /// The connection and identity flags of node `i` (shared by run, status, release).
    pub fn common_args(&self, i: usize) -> Vec<String> {
        let n = &self.nodes[i];
        let mut a: Vec<String> = [
            "--etcd-endpoints",
            &self.etcd.endpoint,
            "--node-name",
            &n.name,
            "--subnet-file",
            &n.subnet_file.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // An IPv6-only node ([`Cluster::ipv6_only`]) names none: its daemon finds its
        // uplink and address from its IPv6 default route, as on a real IPv6-only host.
        if !n.ip.is_empty() {
            a.extend(["--public-ip".to_owned(), n.ip.clone()]);
        }
        a.extend(self.etcd.client_flags());
        a
    }

    /// The datapath of every daemon started from now on.
    pub fn set_datapath(&mut self, d: Datapath) {
        self.datapath = d;
    }

    pub fn start(&mut self, i: usize) -> Result<()> {
        let mut args = vec!["run".to_owned()];
        args.extend(self.common_args(i));
        args.extend(["--metrics-addr".to_owned(), "127.0.0.1:9475".to_owned()]);
        args.extend(self.datapath.args());
        let ebpf = self.datapath != Datapath::Routes;
        let n = &mut self.nodes[i];
        if ebpf {
            n.ensure_bpffs()?;
        }
        args.extend(n.extra_args.iter().cloned());
        let log = File::options().create(true).append(true).open(&n.log)?;
        let mut cmd = n.cmd(bin("hostgw-routed"));
        cmd.args(&args)
            .stdout(Stdio::null())
            .stderr(log)
            .env("RUST_LOG", "info");
        n.daemon = Some(Proc::spawn(cmd)?);
        Ok(())
    }

    pub fn start_all(&mut self) -> Result<()> {
        (0..self.nodes.len()).try_for_each(|i| self.start(i))
    }

    /// Runs `hostgw-routed <sub> <common args> EXTRA` in node `i`; must succeed.
    pub fn cli(&self, i: usize, sub: &str, extra: &[&str]) -> Result<String> {
        let mut cmd = self.nodes[i].cmd(bin("hostgw-routed"));
        cmd.arg(sub)
            .args(self.common_args(i))
            .args(extra)
            .env("RUST_LOG", "warn");
        must(&mut cmd)
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// Every daemon's log, for failure messages.
    pub fn logs(&self) -> String {
        (0..self.nodes.len())
            .map(|i| format!("--- {} ---\n{}", self.nodes[i].name, self.log(i)))
            .collect()
    }

    /// The subnet from node `i`'s subnet file, once written.
    pub fn subnet(&self, i: usize) -> Option<String> {
        let text = std::fs::read_to_string(&self.nodes[i].subnet_file).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        v["subnet"].as_str().map(str::to_owned)
    }

    pub fn wait_subnet(&self, i: usize) -> Result<String> {
        wait_for(
            &format!("subnet file of node {i}"),
            Duration::from_secs(20),
            || self.subnet(i),
        )
        .with_context(|| self.logs())
    }

    /// Owned routes (protocol 75) in node `i`: (dst, gateway).
    pub fn routes(&self, i: usize) -> Result<Vec<(String, String)>> {
        routes_in(&self.nodes[i].ns)
    }

    /// Every node's owned routes, in node order: the "before" of a scenario that must change
    /// none.
    pub fn all_routes(&self) -> Result<Vec<Vec<(String, String)>>> {
        (0..self.nodes.len()).map(|i| self.routes(i)).collect()
    }

    /// Waits until every started node has a route to every other started node's subnet.
    pub fn wait_converged(&self, limit: Duration) -> Result<()> {
        let started: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].daemon.is_some())
            .collect();
        let subnets: Vec<(usize, String)> = started
            .iter()
            .map(|&i| self.wait_subnet(i).map(|s| (i, s)))
            .collect::<Result<_>>()?;
        wait_for("routes to every peer", limit, || {
            started
                .iter()
                .all(|&i| {
                    let routes = self.routes(i).unwrap_or_default();
                    subnets.iter().filter(|(j, _)| *j != i).all(|(j, s)| {
                        routes
                            .iter()
                            .any(|(d, g)| d == s && *g == self.nodes[*j].ip)
                    })
                })
                .then_some(())
        })
        .with_context(|| self.logs())
    }

    /// node `i`'s own metrics page.
    pub fn metrics(&self, i: usize) -> Result<String> {
        let mut c = self.nodes[i].ns.cmd("curl");
        c.args(["-sf", "--max-time", "5", "http://127.0.0.1:9475/metrics"]);
        must(&mut c)
    }

    /// Packets node `i`'s fast path forwarded past the stack (both programs), from /metrics.
    pub fn fast_pathed(&self, i: usize) -> Result<f64> {
        let m = self.metrics(i)?;
        Ok(
            metric(&m, "hostgw_ebpf_packets_total", &["reason=\"fwd_peer\""])
                + metric(
                    &m,
                    "hostgw_ebpf_packets_total",
                    &["reason=\"fwd_redirect\""],
                ),
        )
    }

    /// Waits until node `i` runs the eBPF datapath and has fast-pathed more than `above`
    /// packets (the counters reach /metrics within 5 s): proof that traffic took the fast path.
    pub fn wait_fast_pathed(&self, i: usize, above: f64) -> Result<f64> {
        wait_for(
            &format!("node {i} fast-pathing more than {above} packets"),
            Duration::from_secs(15),
            || {
                let m = self.metrics(i).ok()?;
                let on = metric(&m, "hostgw_datapath", &["mode=\"ebpf\""]) == 1.0;
                let n = self.fast_pathed(i).ok()?;
                (on && n > above).then_some(n)
            },
        )
        .with_context(|| self.logs())
    }

    /// HTTP status of `/readyz` on node `i`.
    pub fn readyz(&self, i: usize) -> Result<String> {
        let mut c = self.nodes[i].ns.cmd("curl");
        c.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            "http://127.0.0.1:9475/readyz",
        ]);
        must(&mut c)
    }
}

/// Our routes (protocol 75) of both families in a namespace, as `ip -j` lists them, with
/// the family flag each came from; `extra` narrows the listing (e.g. `type unreachable`).
fn owned_json(ns: &Netns, extra: &[&str]) -> Result<Vec<(&'static str, Value)>> {
    let mut out = vec![];
    for fam in ["-4", "-6"] {
        let args = [&[fam, "route", "show", "proto", "75"], extra].concat();
        let v = ns.ip_json(&args)?;
        out.extend(v.as_array().into_iter().flatten().map(|r| (fam, r.clone())));
    }
    Ok(out)
}

/// Owned routes (protocol 75, both families) in a namespace: (dst, gateway).
pub fn routes_in(ns: &Netns) -> Result<Vec<(String, String)>> {
    let mut out = vec![];
    for (fam, r) in owned_json(ns, &[])? {
        // The node's own `unreachable <subnet>` is no route to a peer: see `unreachable_in`.
        if r["type"].as_str() == Some("unreachable") {
            continue;
        }
        let dst = r["dst"].as_str().unwrap_or_default();
        let dst = if dst.contains('/') {
            dst.to_owned()
        } else {
            format!("{dst}/{}", if fam == "-4" { 32 } else { 128 })
        };
        out.push((dst, r["gateway"].as_str().unwrap_or_default().to_owned()));
    }
    Ok(out)
}

/// The destinations of the owned `unreachable` routes (the node's own subnets) in a
/// namespace, both families, with their metric.
pub fn unreachable_in(ns: &Netns) -> Result<Vec<(String, u64)>> {
    Ok(owned_json(ns, &["type", "unreachable"])?
        .into_iter()
        .map(|(_, r)| {
            let dst = r["dst"].as_str().unwrap_or_default().to_owned();
            (dst, r["metric"].as_u64().unwrap_or(0))
        })
        .collect())
}

/// A lease value as another node would write it.
pub fn lease_json(public_ip: &str, node: &str) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"host-gw","NodeName":"{node}"}}"#
    )
}

/// The key of a subnet such as `198.18.7.0/24`.
pub fn subnet_key(subnet: &str) -> String {
    format!("{PREFIX}/subnets/{}", subnet.replace('/', "-"))
}

/// Sum of a metric's samples in Prometheus text whose labels contain all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    crate::etcd::metric_sum(text, name, labels)
}

impl Cluster {
    /// Puts another namespace on the segment (port `port` of br0) as `198.19.0.<host>/24`
    /// and `fd19:19::<host>/64`: more etcd members, say.
    pub fn attach_to_segment(&self, ns: &Netns, port: &str, host: u32) -> Result<()> {
        attach(&self.sw, ns, port, host)
    }
}

/// Puts `ns` on the switch with only `fd19:19::<host>/64` (no IPv4 address but loopback's)
/// and only an IPv6 default route (to fd19:19::1, which nobody holds: no traffic
/// of the tests leaves the segment).
fn attach6(sw: &Netns, ns: &Netns, port: &str, host: u32) -> Result<()> {
    ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
    veth(ns, "eth0", sw, port)?;
    sw.ip(&["link", "set", port, "master", "br0"])?;
    let addr = format!("fd19:19::{host:x}/64");
    ns.ip(&["addr", "add", &addr, "dev", "eth0", "nodad"])?;
    ns.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        "fd19:19::1",
        "dev",
        "eth0",
    ])?;
    Ok(())
}

impl Cluster {
    /// An IPv6-only cluster of `nodes` nodes (not started): config [`CONFIG_V6_ONLY`],
    /// etcd at `[fd19:19::2]`, nodes with IPv6 addresses and an IPv6 default route only.
    pub fn ipv6_only(nodes: usize) -> Result<Cluster> {
        let sw = Netns::new("sw")?;
        sw.ip(&["link", "add", "br0", "type", "bridge"])?;
        sw.ip(&["link", "set", "br0", "up"])?;
        let etcd_ns = Netns::new("et")?;
        attach6(&sw, &etcd_ns, "pe", 2)?;
        let etcd = Etcd::start(&etcd_ns, &format!("[{ETCD_IP6}]"))?;
        etcd.put(&format!("{PREFIX}/config"), CONFIG_V6_ONLY)?;
        let mut c = Cluster {
            nodes: vec![],
            etcd,
            etcd_ns,
            sw,
            certs: None,
            dir: tempfile::tempdir()?,
            datapath: Datapath::from_env()?,
        };
        for i in 0..nodes {
            let host = 10 + i as u32;
            let ns = Netns::new("n")?;
            attach6(&c.sw, &ns, &format!("p{i}"), host)?;
            let ip6 = format!("fd19:19::{host:x}");
            let node = Node::in_cluster(ns, format!("node-{i}"), String::new(), ip6)?;
            c.nodes.push(node);
        }
        Ok(c)
    }
}

impl Cluster {
    /// Waits until every started node of an IPv6-only cluster has its IPv6 subnet and a
    /// route to every other started node's, via that node's IPv6 address. Returns each
    /// node's IPv6 subnet (empty for a node not started).
    pub fn wait_converged6(&self, limit: Duration) -> Result<Vec<String>> {
        let started: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].daemon.is_some())
            .collect();
        let mut subnets = vec![String::new(); self.nodes.len()];
        for &i in &started {
            subnets[i] = wait_for("IPv6 subnet file", limit, || {
                crate::cluster::subnet6(self, i)
            })
            .with_context(|| self.logs())?;
        }
        wait_for("IPv6 routes to every peer", limit, || {
            started
                .iter()
                .all(|&i| {
                    let routes = self.routes(i).unwrap_or_default();
                    started.iter().filter(|j| **j != i).all(|&j| {
                        routes
                            .iter()
                            .any(|(d, g)| *d == subnets[j] && *g == self.nodes[j].ip6)
                    })
                })
                .then_some(())
        })
        .with_context(|| self.logs())?;
        Ok(subnets)
    }
}
