//! The shipped conflist as a runtime runs it: `hostgw`, then the reference `portmap` and
//! `bandwidth` plugins (Debian's, from /usr/lib/cni), driven through libcni by the
//! `cni-client` in netns-tests/cni-client with real capability arguments, on the nodes of
//! a routed cluster. A hostPort answers on the node's IP from a pod and from a node
//! elsewhere and goes away on DEL; an egress limit holds under iperf3; and the result our
//! plugin hands on carries what those plugins read (interfaces with sandbox, IPs with an
//! interface index).

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use hostgw_harness::{
    Netns, Proc,
    cluster::{
        Pod, echo, echo_servers, ipam_dir, result_addrs, status_json, tcp, tcp_get, tcp_server,
    },
    manifests::shipped_conflist,
    must, require_root,
    routed::{Cluster, Datapath, Spec, metric},
    run_timeout,
};
use serde_json::{Value, json};

const HOST_PORT: u16 = 8080;
const POD_PORT: u16 = 80;

/// `cni-client`, built once per test process with Debian's Go and libcni (GOPATH mode,
/// offline), into cargo's scratch directory.
fn cni_client() -> Result<PathBuf> {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    if let Some(p) = BUILT.get() {
        return Ok(p.clone());
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cni-client");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("cni-client/main.go");
    let o = run_timeout(
        Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(&src)
            .env("GO111MODULE", "off")
            .env("GOPATH", "/usr/share/gocode")
            .env(
                "GOCACHE",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-cache"),
            )
            .env("GOFLAGS", ""),
        Duration::from_secs(300),
    )
    .context("go build cni-client (golang-go, golang-github-appc-cni-dev: scripts/setup.sh)")?;
    if !o.status.success() {
        bail!(
            "go build cni-client: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(BUILT.get_or_init(|| out).clone())
}

/// A runtime on node `node`: the shipped conflist with the node's subnet file and IPAM
/// store, our plugin and the reference plugins on its CNI_PATH, libcni's cache in the
/// cluster's temporary directory.
struct Runtime<'c> {
    c: &'c Cluster,
    node: usize,
    conflist: PathBuf,
    cache: PathBuf,
}

impl<'c> Runtime<'c> {
    fn new(c: &'c Cluster, node: usize) -> Result<Runtime<'c>> {
        let mut list = shipped_conflist();
        list["plugins"][0]["subnetFile"] = json!(c.nodes[node].subnet_file);
        list["plugins"][0]["dataDir"] = json!(ipam_dir(c, node));
        let conflist = c.dir.path().join(format!("node-{node}.conflist"));
        std::fs::write(&conflist, list.to_string())?;
        let cache = c.dir.path().join(format!("node-{node}-cni-cache"));
        std::fs::create_dir_all(&cache)?;
        Ok(Runtime {
            c,
            node,
            conflist,
            cache,
        })
    }

    fn call(&self, op: &str, id: &str, netns: &Path, caps: &Value) -> Result<String> {
        let plugin_dir = hostgw_harness::bin("hostgw")
            .parent()
            .context("plugin directory")?
            .to_path_buf();
        let mut cmd = self.c.nodes[self.node].ns.cmd(cni_client()?);
        cmd.arg(op)
            .arg(&self.conflist)
            .arg(id)
            .arg(netns)
            .arg("eth0")
            .arg(caps.to_string())
            .env("CNI_PATH", format!("{}:/usr/lib/cni", plugin_dir.display()))
            .env("CNI_CACHE_DIR", &self.cache);
        must(&mut cmd).with_context(|| format!("cni-client {op} {id} on node {}", self.node))
    }

    /// ADD of a new pod through the whole chain; returns it and the chain's result.
    fn add(&self, id: &str, caps: &Value) -> Result<(Pod, Value)> {
        let ns = Netns::new("pod")?;
        let result: Value = serde_json::from_str(&self.call("add", id, &ns.path(), caps)?)?;
        let (ip, ip6) = result_addrs(&result)?;
        let pod = Pod {
            name: id.to_owned(),
            node: self.node,
            ip,
            ip6,
            ns,
        };
        Ok((pod, result))
    }

    fn del(&self, pod: &Pod, caps: &Value) -> Result<()> {
        self.call("del", &pod.name, &pod.ns.path(), caps)
            .map(|_| ())
    }
}

fn cluster() -> Result<Cluster> {
    cluster_on(Datapath::from_env()?)
}

fn cluster_on(dp: Datapath) -> Result<Cluster> {
    let mut c = Cluster::new(Spec {
        nodes: 2,
        ..Spec::default()
    })?;
    c.set_datapath(dp);
    c.start_all()?;
    c.wait_converged(Duration::from_secs(20))?;
    Ok(c)
}

/// What portmap and bandwidth read from prevResult: the pod's interface with its sandbox,
/// the host veth without one, and every IP pointing at the sandboxed interface.
fn assert_result_serves_the_chain(result: &Value, netns: &Path) {
    let ifaces = result["interfaces"].as_array().expect("interfaces");
    let pod_if = ifaces
        .iter()
        .position(|i| i["sandbox"] == json!(netns.display().to_string()))
        .unwrap_or_else(|| panic!("no interface with sandbox {}: {result}", netns.display()));
    assert_eq!(ifaces[pod_if]["name"], "eth0", "{result}");
    assert!(
        ifaces
            .iter()
            .any(|i| i.get("sandbox").is_none_or(|s| s.as_str() == Some(""))
                && i["name"].as_str().is_some_and(|n| n.starts_with("hgw"))),
        "the host veth is listed without a sandbox: {result}"
    );
    for ip in result["ips"].as_array().expect("ips") {
        assert_eq!(ip["interface"], json!(pod_if), "{result}");
    }
}

#[test]
fn cluster_chained_hostport_answers_on_the_node_ip_from_a_pod_and_a_node_and_del_removes_it()
-> Result<()> {
    require_root();
    let c = cluster()?;
    let (a, b) = (Runtime::new(&c, 0)?, Runtime::new(&c, 1)?);
    let caps = json!({"portMappings": [
        {"hostPort": HOST_PORT, "containerPort": POD_PORT, "protocol": "tcp"}
    ]});
    let (web, result) = a.add("web", &caps)?;
    assert_result_serves_the_chain(&result, &web.ns.path());
    let _server: Proc = tcp_server(&web, POD_PORT)?;
    let (client, _) = b.add("client", &json!({}))?;
    let node_a = c.nodes[0].ip.clone();

    tcp(&client.ns, &node_a, HOST_PORT, "web").context("pod on node B -> node A:8080")?;
    tcp(&c.nodes[1].ns, &node_a, HOST_PORT, "web").context("node B -> node A:8080")?;
    let rules = must(c.nodes[0].ns.cmd("iptables-save").args(["-t", "nat"]))?;
    assert!(rules.contains(&format!("--dport {HOST_PORT}")), "{rules}");

    a.del(&web, &caps)?;
    let rules = must(c.nodes[0].ns.cmd("iptables-save").args(["-t", "nat"]))?;
    assert!(
        !rules.contains(&format!("--dport {HOST_PORT}")),
        "DEL left the mapping: {rules}"
    );
    let after = tcp_get(&c.nodes[1].ns, &node_a, HOST_PORT);
    assert!(
        !matches!(&after, Ok(s) if s == "web"),
        "node A:8080 still answers after DEL: {after:?}"
    );
    b.del(&client, &json!({}))?;
    Ok(())
}

/// A hostPort through the real portmap plugin, TCP and UDP, with the daemons' eBPF fast path
/// on: the web pod's replies are in the cluster network, but conntrack on its node holds them
/// as DNATed, so its pod program hands them to the stack, which restores the node's address.
#[test]
fn cluster_fastpath_chained_hostport_through_portmap_works_tcp_and_udp() -> Result<()> {
    require_root();
    let c = cluster_on(Datapath::Ebpf { big_tcp: false })?;
    let (a, b) = (Runtime::new(&c, 0)?, Runtime::new(&c, 1)?);
    let caps = json!({"portMappings": [
        {"hostPort": HOST_PORT, "containerPort": POD_PORT, "protocol": "tcp"},
        {"hostPort": HOST_PORT, "containerPort": POD_PORT, "protocol": "udp"}
    ]});
    let (web, _) = a.add("web", &caps)?;
    let _servers = echo_servers(&web, POD_PORT, POD_PORT)?;
    let (client, _) = b.add("client", &json!({}))?;
    let node_a = c.nodes[0].ip.clone();
    let ct_nat = || -> Result<f64> {
        Ok(metric(
            &c.metrics(0)?,
            "hostgw_ebpf_packets_total",
            &["reason=\"ct_nat\""],
        ))
    };
    let nat0 = ct_nat()?;
    for proto in ["tcp", "udp"] {
        for (from, who) in [(&client.ns, "pod on node B"), (&c.nodes[1].ns, "node B")] {
            let got = echo(from, proto, &node_a, HOST_PORT, "hostport")
                .with_context(|| format!("{proto} {who} -> node A:{HOST_PORT}"))?;
            assert_eq!(got, "hostport", "{proto} from {who}");
        }
    }
    hostgw_harness::wait_for(
        "NATed replies counted on node A",
        Duration::from_secs(10),
        || (ct_nat().ok()? >= nat0 + 4.0).then_some(()),
    )
    .with_context(|| c.logs())?;
    // Pod-to-pod traffic beside it is still fast-pathed.
    let _web_tcp = tcp_server(&client, 7001)?;
    tcp(&web.ns, &client.ip, 7001, "client")?;
    c.wait_fast_pathed(0, 0.0)?;
    a.del(&web, &caps)?;
    b.del(&client, &json!({}))?;
    Ok(())
}

/// An iperf3 server on `ip:port` in `pod`'s namespace, listening when this returns.
fn iperf_server(pod: &Pod, port: u16) -> Result<Proc> {
    let mut server = pod.ns.cmd("iperf3");
    server
        .args(["-s", "-B", &pod.ip, "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let proc = Proc::spawn(server)?;
    let listening = format!(":{port} ");
    hostgw_harness::wait_for("iperf3 listening", Duration::from_secs(5), || {
        let out = pod.ns.sh("ss -Hltn").ok()?;
        out.contains(&listening).then_some(())
    })?;
    Ok(proc)
}

/// Received bits per second of an iperf3 run of `secs` seconds from `from` to `server:port`
/// (the first second, TCP's slow start, omitted).
fn iperf_bps(from: &Netns, server: &str, port: u16, secs: u32) -> Result<f64> {
    let out = must(from.cmd("iperf3").args([
        "-c",
        server,
        "-p",
        &port.to_string(),
        "-t",
        &secs.to_string(),
        "-O",
        "1",
        "-J",
    ]))?;
    let v: Value = serde_json::from_str(&out)?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("no sum_received in {out}"))
}

#[test]
fn cluster_chained_bandwidth_limits_a_pods_egress_to_10_mbit() -> Result<()> {
    require_root();
    bandwidth_limits_a_pods_egress(&cluster()?)
}

/// With the fast path on, a tcx redirect on the host veth would pass by the bandwidth
/// plugin's ingress qdisc (and a peer redirect by its tbf root): the daemon leaves a pod
/// whose veth carries a qdisc to the stack, says so in `status`, and fast-paths the others.
#[test]
fn cluster_fastpath_chained_bandwidth_still_limits_and_the_shaped_pod_takes_the_stack() -> Result<()>
{
    require_root();
    bandwidth_limits_a_pods_egress(&cluster_on(Datapath::Ebpf { big_tcp: false })?)
}

/// On node 0 with the fast path: exactly the one shaped pod is left to the stack.
fn check_shaped_pod_left_to_the_stack(c: &Cluster) -> Result<()> {
    hostgw_harness::wait_for(
        "the shaped pod off the fast path, the other on it",
        Duration::from_secs(10),
        || {
            let st = status_json(c, 0).ok()?;
            let pods = st["datapath"]["pods"].as_array()?.clone();
            let shaped: Vec<_> = pods.iter().filter(|p| p["qdisc"] == "ingress").collect();
            let ok = pods.len() == 2
                && shaped.len() == 1
                && shaped[0]["fast_path"] == false
                && pods.iter().filter(|p| p["fast_path"] == true).count() == 1;
            ok.then_some(())
        },
    )
    .with_context(|| format!("{:#}\n{}", status_json(c, 0).unwrap_or_default(), c.logs()))
}

fn bandwidth_limits_a_pods_egress(c: &Cluster) -> Result<()> {
    let (a, b) = (Runtime::new(c, 0)?, Runtime::new(c, 1)?);
    // Rate and burst in bits, as the bandwidth plugin reads them. Kubernetes passes an
    // unlimited burst; a 1 Mbit bucket makes a short run measure the rate itself.
    let limit = json!({"bandwidth": {"egressRate": 10_000_000, "egressBurst": 1_000_000}});
    let (slow, result) = a.add("slow", &limit)?;
    assert_result_serves_the_chain(&result, &slow.ns.path());
    let (fast, _) = a.add("fast", &json!({}))?;
    let (sink, _) = b.add("sink", &json!({}))?;
    if matches!(c.datapath, Datapath::Ebpf { .. }) {
        check_shaped_pod_left_to_the_stack(c)?;
    }
    // One server per run: an iperf3 server still draining the shaped run's last
    // bytes refuses the next client ("the server is busy running a test").
    let _limited_server = iperf_server(&sink, 5201)?;
    let _free_server = iperf_server(&sink, 5202)?;

    let limited = iperf_bps(&slow.ns, &sink.ip, 5201, 4)?;
    let free = iperf_bps(&fast.ns, &sink.ip, 5202, 2)?;
    eprintln!(
        "egress 10 Mbit/s limit: {:.2} Mbit/s; the same path without a limit: {:.0} Mbit/s",
        limited / 1e6,
        free / 1e6
    );
    assert!(limited <= 12e6, "limited pod sent {limited} bit/s");
    assert!(limited >= 5e6, "limited pod is stalled: {limited} bit/s");
    assert!(
        free > 5.0 * limited,
        "the limit, not the path, is what holds"
    );

    let ifbs = || -> Result<usize> {
        let links = c.nodes[0].ns.ip_json(&["link", "show", "type", "ifb"])?;
        Ok(links.as_array().map_or(0, Vec::len))
    };
    assert_eq!(ifbs()?, 1, "bandwidth shapes egress on one ifb device");
    a.del(&slow, &limit)?;
    assert_eq!(ifbs()?, 0, "DEL removed the ifb device");
    a.del(&fast, &json!({}))?;
    b.del(&sink, &json!({}))?;
    Ok(())
}

/// Answers every connection on :80 with the peer's address (the source the pod sees).
const WHO: &str = "import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 80))
s.listen()
while True:
    c, a = s.accept()
    c.sendall(a[0].encode() + b'\\n')
    c.close()
";

/// Two nodes whose daemons masquerade (`--ip-masq`), converged.
fn masq_cluster() -> Result<Cluster> {
    let mut c = Cluster::new(Spec {
        nodes: 2,
        ..Spec::default()
    })?;
    for n in &mut c.nodes {
        n.extra_args = vec!["--ip-masq".into()];
    }
    c.start_all()?;
    c.wait_converged(Duration::from_secs(20))?;
    Ok(c)
}

/// [`WHO`] in `ns`, listening on port 80 before this returns.
fn who_server(ns: &Netns) -> Result<Proc> {
    let mut who = ns.cmd("python3");
    who.args(["-c", WHO])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let server = Proc::spawn(who)?;
    hostgw_harness::wait_for("web listening", Duration::from_secs(5), || {
        ns.sh("ss -Hltn").ok()?.contains(":80 ").then_some(())
    })?;
    Ok(server)
}

#[test]
fn cluster_chained_hostport_with_masquerade_on_still_answers() -> Result<()> {
    require_root();
    let c = masq_cluster()?;
    let (a, b) = (Runtime::new(&c, 0)?, Runtime::new(&c, 1)?);
    let caps = json!({"portMappings": [
        {"hostPort": HOST_PORT, "containerPort": POD_PORT, "protocol": "tcp"}
    ]});
    let (web, _) = a.add("web", &caps)?;
    let _server = who_server(&web.ns)?;
    let (client, _) = b.add("client", &json!({}))?;
    let (local, _) = a.add("local", &json!({}))?;
    let node_a = c.nodes[0].ip.clone();
    // From a pod elsewhere: DNAT on node A, and the pod's own address arrives (node A is a
    // node of the cluster, so node B does not masquerade towards it).
    let seen = |from: &Netns| -> Result<String> {
        let mut last = String::new();
        hostgw_harness::wait_for("hostPort answer", Duration::from_secs(5), || match tcp_get(
            from, &node_a, HOST_PORT,
        ) {
            Ok(s) if !s.is_empty() => Some(s),
            other => {
                last = format!("{other:?}");
                None
            }
        })
        .with_context(|| last.clone())
    };
    assert_eq!(seen(&client.ns)?, client.ip, "pod on node B -> node A:8080");
    // From node B itself, and from a pod on node A (hairpin, portmap's own SNAT).
    assert_eq!(
        seen(&c.nodes[1].ns)?,
        c.nodes[1].ip,
        "node B -> node A:8080"
    );
    assert!(!seen(&local.ns)?.is_empty(), "pod on node A -> node A:8080");
    let nat = c.nodes[0].ns.sh("nft list table inet hostgw")?;
    assert!(nat.contains("masquerade"), "{nat}");
    a.del(&web, &caps)?;
    a.del(&local, &json!({}))?;
    b.del(&client, &json!({}))?;
    Ok(())
}

/// A ClusterIP as kube-proxy's nftables mode writes it (DNAT at prerouting dstnat) on the
/// client's node, to a pod on the other node, with `--ip-masq` on both nodes: the Service
/// answers over TCP and UDP, and the backend sees the client pod's own address (the DNATed
/// destination is a pod, so our postrouting chain returns before masquerading).
#[test]
fn cluster_clusterip_dnat_with_masquerade_on_answers_and_keeps_the_pod_source() -> Result<()> {
    use hostgw_harness::cluster::{add_pod, all_reach};
    require_root();
    let c = masq_cluster()?;
    let pods = [add_pod(&c, 0, "client")?, add_pod(&c, 1, "web")?];
    all_reach(&pods, None)?;
    let (client, web) = (&pods[0], &pods[1]);
    let _echo = echo_servers(web, 8080, 8081)?;
    let _who = who_server(&web.ns)?;
    // 198.18.0.0/24 is never leased (SubnetMin is the network's second subnet).
    const VIP: &str = "198.18.0.10";
    let ports = [("tcp", 80, 8080), ("udp", 81, 8081), ("tcp", 82, 80)];
    hostgw_harness::cluster::cluster_ip(&c, 0, VIP, &web.ip, &ports)?;
    hostgw_harness::cluster::echo_rounds(&client.ns, VIP, (80, 81), 3)?;
    assert_eq!(
        tcp_get(&client.ns, VIP, 82)?,
        client.ip,
        "the backend must see the client pod, not node 0's address"
    );
    // The masquerade rule exists and is live: a pod reaching outside the cluster would be
    // masqueraded (checked in routed_masq); here it must not have matched the Service flow.
    let table = must(
        c.nodes[0]
            .ns
            .cmd("nft")
            .args(["list", "table", "inet", "hostgw"]),
    )?;
    assert!(table.contains("masquerade"), "{table}");
    Ok(())
}
