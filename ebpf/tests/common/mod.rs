//! The fast path's own scenario on hostgw-harness' namespaces: two "node" namespaces on a veth
//! wire, one "pod" namespace per node wired exactly as hostgw's ptp mode does it (not by the
//! plugin: these tests load the programs themselves), and a private bpffs.
//!
//! Nothing touches the root namespace: links are created inside the namespaces
//! ([`veth`]); every namespace is a harness [`Netns`], named under `HOSTGW_TEST_PREFIX` and
//! deleted on Drop after its processes are ended by PID; the bpffs is mounted in a mount
//! namespace of the scenario's own thread, so every pin disappears with that thread, even
//! when a test panics.
#![allow(dead_code)]

use std::{fs::File, path::Path, process::Stdio, thread, time::Duration};

use anyhow::{Context, Result};
use hostgw_ebpf::{ClusterNetworks, FastPath, Options, Reason};
pub use hostgw_harness::{
    Netns, Proc, cluster::ping_once, must, require_root, run_timeout, veth, wait_for,
};
use nix::{
    mount::{MsFlags, mount},
    sched::{CloneFlags, setns, unshare},
};

// === namespaces ===

/// Runs `f` on a thread inside `ns` (setns is per thread; the thread ends afterwards).
pub fn in_netns<R: Send>(ns: &Netns, f: impl FnOnce() -> R + Send) -> R {
    let path = ns.path();
    thread::scope(|s| {
        s.spawn(|| {
            let fd = File::open(&path).expect("open the netns");
            setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns into the netns");
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Runs the scenario `f` on a thread with its own mount namespace and a fresh bpffs at the
/// path it is given; the mount, and with it every pin, is gone when the thread ends.
pub fn with_bpffs<R: Send>(f: impl FnOnce(&Path) -> R + Send) -> R {
    thread::scope(|s| {
        s.spawn(|| {
            unshare(CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS).expect("unshare mount ns");
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .expect("make / private in the test's mount ns");
            let dir = tempfile::tempdir().expect("tempdir");
            mount(
                Some("bpf"),
                dir.path(),
                Some("bpf"),
                MsFlags::empty(),
                None::<&str>,
            )
            .expect("mount bpffs");
            f(dir.path())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A server in `ns` (ended on Drop) whose output goes nowhere: iperf3 reports every second.
pub fn spawn_quiet(ns: &Netns, program: &str, args: &[&str]) -> Result<Proc> {
    let mut c = ns.cmd(program);
    c.args(args).stdout(Stdio::null()).stderr(Stdio::null());
    Proc::spawn(c)
}

/// Waits until something listens on `port` (TCP or UDP) in `ns`.
pub fn wait_listen(ns: &Netns, port: u16) -> Result<()> {
    let filter = format!("sport = :{port}");
    wait_for(
        &format!("something listening on port {port} in {}", ns.name()),
        Duration::from_secs(10),
        || {
            let out = must(ns.cmd("ss").args(["-Hlntu", &filter])).ok()?;
            (!out.trim().is_empty()).then_some(())
        },
    )
}

// === topology ===

/// The cluster networks of the tests: the pods' /24s are inside, the "ClusterIP"
/// 198.18.200.10 and the node links are outside.
pub fn networks() -> ClusterNetworks {
    ClusterNetworks {
        v4: Some("198.18.0.0/17".parse().unwrap()),
        v6: Some("fd18:18::/48".parse().unwrap()),
    }
}

pub const UPLINK: &str = "up0";
pub const POD_VETH: &str = "hv0";
pub const VIP: &str = "198.18.200.10";

/// One node namespace with one pod, hostgw ptp style.
pub struct Node {
    pub n: u8,
    pub pod: Netns,
    pub ns: Netns,
}

impl Node {
    pub fn pod_ip4(&self) -> String {
        format!("198.18.{}.2", self.n)
    }
    pub fn pod_ip6(&self) -> String {
        format!("fd18:18:0:{}::2", self.n)
    }
    pub fn node_ip4(&self) -> String {
        format!("198.19.0.{}", self.n)
    }
    pub fn node_ip6(&self) -> String {
        format!("fd19:19::{}", self.n)
    }
    pub fn ifindex(&self, name: &str) -> u32 {
        in_netns(&self.ns, || {
            nix::net::if_::if_nametoindex(name).expect("ifindex")
        })
    }

    /// The loader's options for this node: pins under `bpffs/node<n>`.
    pub fn options(&self, bpffs: &Path) -> Options {
        Options {
            pin_dir: bpffs.join(format!("node{}", self.n)),
            networks: networks(),
        }
    }

    /// Loads the programs with pins under `bpffs/node<n>` and attaches uplink and pod veth.
    pub fn fast_path(&self, bpffs: &Path) -> Result<FastPath> {
        let fp = FastPath::load(&self.options(bpffs))?;
        self.attach(&fp)?;
        Ok(fp)
    }

    pub fn attach(&self, fp: &FastPath) -> Result<()> {
        let (up, pod) = (self.ifindex(UPLINK), self.ifindex(POD_VETH));
        in_netns(&self.ns, || -> Result<()> {
            fp.attach_uplink(up)?;
            fp.attach_pod(pod)?;
            Ok(())
        })
    }
}

pub struct Cluster {
    pub a: Node,
    pub b: Node,
}

impl Cluster {
    /// Both nodes' fast paths, loaded and attached, and pod a reaching pod b over IPv4: the
    /// first packets resolve the neighbours through the stack, so counting starts after them.
    pub fn fast_paths(&self, bpffs: &Path) -> Result<(FastPath, FastPath)> {
        let (fa, fb) = (self.a.fast_path(bpffs)?, self.b.fast_path(bpffs)?);
        reach(&self.a.pod, &self.b.pod_ip4())?;
        Ok((fa, fb))
    }

    /// A TCP transfer, iperf3 from pod a to pod b, 20 MB: every byte the server received
    /// must have crossed node a's pod program (`fa`) as a redirect. Bytes, not packets: with
    /// GSO one skb carries up to 64 KB (BIG TCP: 185 KB).
    pub fn assert_tcp_fast_pathed(&self, fa: &FastPath) -> Result<()> {
        let _server = spawn_quiet(&self.b.pod, "iperf3", &["-s", "-1", "-p", "5201"])?;
        wait_listen(&self.b.pod, 5201)?;
        let before = fa.counters()?.get(Reason::FwdRedirect).bytes;
        let received = iperf_received(&self.a.pod, &self.b.pod_ip4(), "20M")?;
        assert!(received > 1_000_000, "iperf3 moved only {received} bytes");
        let grew = fa.counters()?.get(Reason::FwdRedirect).bytes - before;
        assert!(
            grew >= received,
            "the server received {received} bytes, node a fast-pathed {grew}: {:?}",
            fa.counters()?
        );
        Ok(())
    }
}

/// The frame of a scenario: root, a fresh two-node cluster, and `f` run on it with a private
/// bpffs (see [`with_bpffs`]). The namespaces go when `f` returns or panics.
pub fn on_cluster(f: impl FnOnce(&Cluster, &Path) -> Result<()> + Send) -> Result<()> {
    require_root();
    let c = cluster()?;
    with_bpffs(|bpffs| f(&c, bpffs))
}

/// Node a (1) and node b (2) on one wire, a pod on each, host-gw routes both ways.
pub fn cluster() -> Result<Cluster> {
    let a = node(1)?;
    let b = node(2)?;
    veth(&a.ns, UPLINK, &b.ns, UPLINK)?;
    for (me, peer) in [(&a, &b), (&b, &a)] {
        me.ns.ip(&[
            "addr",
            "add",
            &format!("{}/24", me.node_ip4()),
            "dev",
            UPLINK,
        ])?;
        me.ns.ip(&[
            "addr",
            "add",
            &format!("{}/64", me.node_ip6()),
            "dev",
            UPLINK,
            "nodad",
        ])?;
        let subnet4 = format!("198.18.{}.0/24", peer.n);
        let subnet6 = format!("fd18:18:0:{}::/64", peer.n);
        me.ns
            .ip(&["route", "add", &subnet4, "via", &peer.node_ip4()])?;
        me.ns
            .ip(&["-6", "route", "add", &subnet6, "via", &peer.node_ip6()])?;
    }
    Ok(Cluster { a, b })
}

/// A node namespace with forwarding on and one pod.
fn node(n: u8) -> Result<Node> {
    let ns = Netns::new(&format!("n{n}"))?;
    let pod = Netns::new(&format!("p{n}"))?;
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    let node = Node { n, pod, ns };
    wire_pod(&node, &node.pod, POD_VETH, 2)?;
    Ok(node)
}

impl Node {
    /// Another pod on this node, `198.18.<n>.<host>` behind the host veth `veth`.
    pub fn extra_pod(&self, veth: &str, host: u8) -> Result<Netns> {
        let pod = Netns::new(&format!("p{}h{host}", self.n))?;
        wire_pod(self, &pod, veth, host)?;
        Ok(pod)
    }
}

/// hostgw's ptp wiring: the gateway as /32 on the host veth, a /32 (/128) host route per
/// pod, the pod's default route via the gateway.
fn wire_pod(node: &Node, pod: &Netns, dev: &str, host: u8) -> Result<()> {
    let n = node.n;
    veth(&node.ns, dev, pod, "eth0")?;
    let (gw4, gw6) = (format!("198.18.{n}.1"), format!("fd18:18:0:{n}::1"));
    let (ip4, ip6) = (
        format!("198.18.{n}.{host}"),
        format!("fd18:18:0:{n}::{host:x}"),
    );
    let h = &node.ns;
    h.ip(&["addr", "add", &format!("{gw4}/32"), "dev", dev])?;
    h.ip(&["addr", "add", &format!("{gw6}/128"), "dev", dev, "nodad"])?;
    h.ip(&[
        "route",
        "add",
        &format!("{ip4}/32"),
        "dev",
        dev,
        "scope",
        "link",
    ])?;
    h.ip(&["-6", "route", "add", &format!("{ip6}/128"), "dev", dev])?;
    pod.ip(&["addr", "add", &format!("{ip4}/32"), "dev", "eth0"])?;
    pod.ip(&["addr", "add", &format!("{ip6}/128"), "dev", "eth0", "nodad"])?;
    pod.ip(&["route", "add", &gw4, "dev", "eth0", "scope", "link"])?;
    pod.ip(&["route", "add", "default", "via", &gw4, "dev", "eth0"])?;
    pod.ip(&["-6", "route", "add", &gw6, "dev", "eth0"])?;
    pod.ip(&["-6", "route", "add", "default", "via", &gw6, "dev", "eth0"])?;
    Ok(())
}

/// `ping -c N` that must succeed.
pub fn ping(from: &Netns, to: &str, count: u32) -> Result<()> {
    let count = count.to_string();
    must(
        from.cmd("ping")
            .args(["-q", "-c", &count, "-i", "0.05", "-W", "2", to]),
    )
    .map(drop)
}

/// `ping -q -c N` (1 s wait, from `src` if given) that may fail: whether it succeeded.
pub fn pings_answered(from: &Netns, to: &str, count: u32, src: Option<&str>) -> Result<bool> {
    let count = count.to_string();
    let mut cmd = from.cmd("ping");
    cmd.args(["-q", "-c", &count, "-i", "0.05", "-W", "1"]);
    if let Some(src) = src {
        cmd.args(["-I", src]);
    }
    Ok(run_timeout(cmd.arg(to), Duration::from_secs(60))?
        .status
        .success())
}

/// Pings until one answer comes back, for at most 10 s: the first packets wait for neighbour
/// resolution (and IPv6's for the links' DAD), so a warm-up must not count them.
pub fn reach(from: &Netns, to: &str) -> Result<()> {
    wait_for(
        &format!("{} to reach {to}", from.name()),
        Duration::from_secs(10),
        || ping_once(from, to).then_some(()),
    )
}

/// An iperf3 TCP transfer of `bytes` (e.g. "20M") to a server on `to`:5201; returns the bytes
/// the server received (what was sent but still buffered when the test ended never crossed).
pub fn iperf_received(from: &Netns, to: &str, bytes: &str) -> Result<u64> {
    let out = must(
        from.cmd("iperf3")
            .args(["-c", to, "-p", "5201", "-n", bytes, "-J"]),
    )?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v["end"]["sum_received"]["bytes"]
        .as_u64()
        .context("iperf3 -J: no end.sum_received.bytes")
}

// === NAT scenarios ===

/// An nftables table `table` with a DNAT at prerouting dstnat, as kube-proxy's nftables mode
/// (a ClusterIP) and portmap (a hostPort) write it: `to` TCP `ports.0` and UDP `ports.1` go
/// to `backend` TCP 8080 and UDP 8081, where [`echo_servers`] listen.
pub fn dnat_table(table: &str, to: &str, (tcp, udp): (u16, u16), backend: &str) -> String {
    format!(
        "table ip {table} {{\n  chain nat-prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
         ip daddr {to} tcp dport {tcp} dnat to {backend}:8080\n    ip daddr {to} udp dport {udp} dnat to {backend}:8081\n  }}\n}}\n"
    )
}

/// Loads nftables `rules` in `ns`.
pub fn load_nft(ns: &Netns, rules: &str) -> Result<()> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), rules)?;
    must(ns.cmd("nft").arg("-f").arg(file.path())).map(drop)
}

const TCP_ECHO: &str = "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
s.bind(('0.0.0.0',8080))\ns.listen()\ns.settimeout(30)\nc,_=s.accept()\nc.settimeout(10)\nc.sendall(c.recv(100))\nc.close()";
const UDP_ECHO: &str = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',8081))\n\
s.settimeout(30)\nd,a=s.recvfrom(100)\ns.sendto(d,a)";

/// One-shot echo servers in `pod`, TCP 8080 and UDP 8081 (IPv4), listening when this returns.
pub fn echo_servers(pod: &Netns) -> Result<[Proc; 2]> {
    let servers = [
        spawn_quiet(pod, "python3", &["-c", TCP_ECHO])?,
        spawn_quiet(pod, "python3", &["-c", UDP_ECHO])?,
    ];
    wait_listen(pod, 8080)?;
    wait_listen(pod, 8081)?;
    Ok(servers)
}

/// Sends `msg` from `from` to `to`:`port` over `proto` ("tcp" or "udp") with a connected
/// socket, so a reply from any other address (one not un-DNATed) is not taken; returns the
/// answer.
pub fn echo(from: &Netns, proto: &str, to: &str, port: u16, msg: &str) -> Result<String> {
    let kind = if proto == "tcp" {
        "SOCK_STREAM"
    } else {
        "SOCK_DGRAM"
    };
    let src = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.{kind})\ns.settimeout(5)\n\
         s.connect(('{to}',{port}))\ns.send(b'{msg}')\nprint(s.recv(100).decode())"
    );
    Ok(must(from.cmd("python3").args(["-c", &src]))?
        .trim()
        .to_owned())
}
