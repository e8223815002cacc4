//! Whole-system fixtures for the cluster tests and the demo: pods wired by the real `hostgw`
//! plugin on the nodes of a routed [`Cluster`] (with the conflist the DaemonSet ships),
//! traffic between them (ICMP, TCP, a continuous ping whose losses are counted), and
//! `ip monitor route` recorders that prove what did *not* change.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{
    Netns, Proc, bin,
    cni::{Call, Reply, invoke},
    manifests::shipped_plugin_conf,
    must,
    routed::Cluster,
    run_timeout, wait_for,
};

/// A pod: a namespace whose `eth0` the plugin made, on node `node`.
pub struct Pod {
    pub name: String,
    pub node: usize,
    pub ip: String,
    pub ip6: Option<String>,
    pub ns: Netns,
}

impl Pod {
    /// Its addresses: IPv4 (none in an IPv6-only cluster), then IPv6 when it has one.
    pub fn addrs(&self) -> Vec<&str> {
        std::iter::once(self.ip.as_str())
            .filter(|ip| !ip.is_empty())
            .chain(self.ip6.as_deref())
            .collect()
    }
}

/// The IPAM store of node `node` (its `dataDir`).
pub fn ipam_dir(c: &Cluster, node: usize) -> PathBuf {
    c.nodes[node].data_dir()
}

/// The plugin config a runtime on node `node` hands the plugin: the shipped conflist's
/// entry, with `subnetFile` and `dataDir` pointed at the node's own files.
pub fn pod_conf(c: &Cluster, node: usize) -> Value {
    let mut keys = vec![
        ("subnetFile", json!(c.nodes[node].subnet_file)),
        ("dataDir", json!(ipam_dir(c, node))),
    ];
    // BIG TCP on the pod veths is the plugin's (the daemon sets the uplink's).
    if c.datapath == (crate::routed::Datapath::Ebpf { big_tcp: true }) {
        keys.push(("bigTcp", json!(true)));
    }
    shipped_plugin_conf(&keys)
}

/// Runs the plugin on node `node` as a runtime does.
pub fn plugin(c: &Cluster, node: usize, call: &Call, conf: &Value) -> Result<Reply> {
    invoke(&bin("hostgw"), &c.nodes[node].ns, call, &conf.to_string())
}

/// The addresses (without prefix) of an ADD result: (IPv4, IPv6).
pub fn result_addrs(result: &Value) -> Result<(String, Option<String>)> {
    let mut v4 = None;
    let mut v6 = None;
    for ip in result["ips"].as_array().into_iter().flatten() {
        let a = ip["address"].as_str().context("address in result")?;
        let a = a.split('/').next().unwrap_or(a).to_owned();
        if a.contains(':') {
            v6.get_or_insert(a);
        } else {
            v4.get_or_insert(a);
        }
    }
    // An IPv6-only pod has an empty IPv4 address.
    let v4 = v4.or_else(|| v6.as_ref().map(|_| String::new()));
    Ok((v4.with_context(|| format!("no address in {result}"))?, v6))
}

/// A new pod on node `node`, wired by ADD (container ID = `name`).
pub fn add_pod(c: &Cluster, node: usize, name: &str) -> Result<Pod> {
    add_pod_with(c, node, name, &pod_conf(c, node))
}

/// The same with the plugin config `conf` (e.g. [`pod_conf`] in another mode).
pub fn add_pod_with(c: &Cluster, node: usize, name: &str, conf: &Value) -> Result<Pod> {
    let ns = Netns::new("pod")?;
    let path = ns.path().display().to_string();
    let reply = plugin(c, node, &Call::attach("ADD", name, &path), conf)?;
    if !reply.ok() {
        bail!(
            "ADD {name} on {} failed ({:?}): {} {}",
            c.nodes[node].name,
            reply.code,
            reply.stdout,
            reply.stderr
        );
    }
    let (ip, ip6) = result_addrs(&reply.json()?)?;
    Ok(Pod {
        name: name.to_owned(),
        node,
        ip,
        ip6,
        ns,
    })
}

/// DEL of a pod, as the runtime does when it goes; must succeed.
pub fn del_pod(c: &Cluster, pod: &Pod) -> Result<()> {
    let path = pod.ns.path().display().to_string();
    let reply = plugin(
        c,
        pod.node,
        &Call::attach("DEL", &pod.name, &path),
        &pod_conf(c, pod.node),
    )?;
    if !reply.ok() {
        bail!("DEL {} failed: {} {}", pod.name, reply.stdout, reply.stderr);
    }
    Ok(())
}

/// One ping of one second: did it come back?
pub fn ping_once(from: &Netns, to: &str) -> bool {
    run_timeout(
        from.cmd("ping").args(["-c", "1", "-W", "1", to]),
        Duration::from_secs(5),
    )
    .is_ok_and(|o| o.status.success())
}

/// Pings until one answer, for at most 5 s (the first packet may wait for neighbour
/// resolution).
pub fn ping(from: &Netns, to: &str) -> Result<()> {
    wait_for(
        &format!("{} to reach {to}", from.name()),
        Duration::from_secs(5),
        || ping_once(from, to).then_some(()),
    )
}

/// A TCP server in `pod` on `port` answering every connection with the pod's name
/// (busybox `nc`, listening on both families). Ends with the pod.
pub fn tcp_server(pod: &Pod, port: u16) -> Result<Proc> {
    let mut cmd = pod.ns.cmd("busybox");
    cmd.args([
        "nc",
        "-ll",
        "-p",
        &port.to_string(),
        "-e",
        "echo",
        &pod.name,
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let p = Proc::spawn(cmd)?;
    wait_for(
        &format!("{} listening on {port}", pod.name),
        Duration::from_secs(5),
        || {
            let out = pod.ns.sh("ss -Hltn").ok()?;
            out.contains(&format!(":{port} ")).then_some(())
        },
    )?;
    Ok(p)
}

/// A ClusterIP as kube-proxy's nftables mode writes it: DNAT at prerouting dstnat, in a
/// table of its own (`hgwt-svc`) on node `node`, from `vip` to `backend`. `ports`:
/// (protocol, service port, backend port).
pub fn cluster_ip(
    c: &Cluster,
    node: usize,
    vip: &str,
    backend: &str,
    ports: &[(&str, u16, u16)],
) -> Result<()> {
    let mut rules = String::from(
        "table ip hgwt-svc {\n chain nat-prerouting {\n  type nat hook prerouting priority dstnat; policy accept;\n",
    );
    for (proto, port, to) in ports {
        rules += &format!("  ip daddr {vip} {proto} dport {port} dnat to {backend}:{to}\n");
    }
    rules += " }\n}\n";
    let file = c.dir.path().join("svc.nft");
    std::fs::write(&file, rules)?;
    must(c.nodes[node].ns.cmd("nft").arg("-f").arg(&file))?;
    Ok(())
}

/// `rounds` TCP and UDP exchanges with the [`echo_servers`] behind `ip` (`tcp`, `udp`): each
/// must come back whole.
pub fn echo_rounds(from: &Netns, ip: &str, (tcp, udp): (u16, u16), rounds: usize) -> Result<()> {
    for round in 0..rounds {
        for (proto, port) in [("tcp", tcp), ("udp", udp)] {
            let msg = format!("svc-{proto}");
            let got = echo(from, proto, ip, port, &msg)?;
            if got != msg {
                bail!("round {round}: {proto} to {ip}:{port} answered {got:?}, not {msg:?}");
            }
        }
    }
    Ok(())
}

/// Echo servers in `pod` (python3, serving until the pod goes): TCP on `tcp`, UDP on `udp`,
/// both families. For NAT paths, where the reply's addresses are what is tested.
pub fn echo_servers(pod: &Pod, tcp: u16, udp: u16) -> Result<[Proc; 2]> {
    let tcp_src = format!(
        "import socket\ns=socket.create_server(('::',{tcp}),family=socket.AF_INET6,dualstack_ipv6=True)\n\
         while True:\n c,_=s.accept()\n c.settimeout(5)\n try: c.sendall(c.recv(100))\n except OSError: pass\n c.close()"
    );
    let udp_src = format!(
        "import socket\ns=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,0)\ns.bind(('::',{udp}))\n\
         while True:\n d,a=s.recvfrom(100)\n s.sendto(d,a)"
    );
    let spawn = |src: String| {
        let mut c = pod.ns.cmd("python3");
        c.args(["-c", &src]).stdout(Stdio::null());
        Proc::spawn(c)
    };
    let servers = [spawn(tcp_src)?, spawn(udp_src)?];
    wait_for(
        &format!("{} echoing on {tcp}/tcp and {udp}/udp", pod.name),
        Duration::from_secs(10),
        || {
            let out = pod.ns.sh("ss -Hlntu").ok()?;
            (out.contains(&format!(":{tcp} ")) && out.contains(&format!(":{udp} "))).then_some(())
        },
    )?;
    Ok(servers)
}

/// Sends `msg` to `ip:port` over `proto` ("tcp" or "udp") from `from` with a connected
/// socket (a reply from any other address is not taken) and returns the answer.
pub fn echo(from: &Netns, proto: &str, ip: &str, port: u16, msg: &str) -> Result<String> {
    let kind = if proto == "tcp" {
        "SOCK_STREAM"
    } else {
        "SOCK_DGRAM"
    };
    let fam = if ip.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    let src = format!(
        "import socket\ns=socket.socket(socket.{fam},socket.{kind})\ns.settimeout(3)\n\
         s.connect(('{ip}',{port}))\ns.send(b'{msg}')\nprint(s.recv(100).decode())"
    );
    let out = must(from.cmd("python3").args(["-c", &src]))
        .with_context(|| format!("{proto} echo to {ip}:{port}"))?;
    Ok(out.trim().to_owned())
}

/// Connects to `ip:port` from `from` and returns what the server said.
pub fn tcp_get(from: &Netns, ip: &str, port: u16) -> Result<String> {
    let out = must(
        from.cmd("busybox")
            .args(["nc", "-w", "2", ip, &port.to_string()]),
    )?;
    Ok(out.trim().to_owned())
}

/// A TCP exchange with the server of `to` on `port` that must answer `to`'s name (retried
/// for at most 5 s, like `ping`).
pub fn tcp(from: &Netns, ip: &str, port: u16, expect: &str) -> Result<()> {
    let mut last = String::new();
    wait_for(
        &format!("TCP from {} to {ip}:{port}", from.name()),
        Duration::from_secs(5),
        || match tcp_get(from, ip, port) {
            Ok(s) if s == expect => Some(()),
            Ok(s) => {
                last = format!("answer {s:?}, expected {expect:?}");
                None
            }
            Err(e) => {
                last = e.to_string();
                None
            }
        },
    )
    .with_context(|| last.clone())
}

/// "pod-a", "pod-b" and "pod-c" on nodes 0, 1 and 2, each with a [`tcp_server`] on `port`,
/// all reaching each other: the traffic a fault scenario must not disturb.
pub fn talking_pods(c: &Cluster, port: u16) -> Result<([Pod; 3], Vec<Proc>)> {
    let pods = [
        add_pod(c, 0, "pod-a")?,
        add_pod(c, 1, "pod-b")?,
        add_pod(c, 2, "pod-c")?,
    ];
    let servers = pods
        .iter()
        .map(|p| tcp_server(p, port))
        .collect::<Result<_>>()?;
    all_reach(&pods, Some(port))?;
    Ok((pods, servers))
}

/// Every pod reaches every other pod (ICMP on each family both have, and TCP to the
/// server on `port` if `tcp_port` is set). Returns the number of (pair, family) checked.
pub fn all_reach(pods: &[Pod], tcp_port: Option<u16>) -> Result<usize> {
    let mut n = 0;
    for a in pods {
        for b in pods.iter().filter(|b| b.name != a.name) {
            let fams = [
                Some((&b.ip, !a.ip.is_empty())).filter(|(ip, _)| !ip.is_empty()),
                b.ip6.as_ref().map(|i| (i, a.ip6.is_some())),
            ];
            for (ip, both) in fams.into_iter().flatten() {
                if !both {
                    continue;
                }
                ping(&a.ns, ip).with_context(|| format!("ping {} -> {} ({ip})", a.name, b.name))?;
                if let Some(port) = tcp_port {
                    tcp(&a.ns, ip, port, &b.name)
                        .with_context(|| format!("TCP {} -> {} ({ip})", a.name, b.name))?;
                }
                n += 1;
            }
        }
    }
    Ok(n)
}

/// What a finished `ping` run counted.
#[derive(Debug)]
pub struct PingStats {
    pub sent: u32,
    pub received: u32,
    pub text: String,
}

impl PingStats {
    pub fn lost(&self) -> u32 {
        self.sent.saturating_sub(self.received)
    }
}

/// A continuous ping running in the background (`ping -i INTERVAL -c COUNT`), its output
/// in a file.
pub struct PingRun {
    proc: Proc,
    out: PathBuf,
}

impl PingRun {
    pub fn start(
        from: &Netns,
        to: &str,
        count: u32,
        interval: Duration,
        dir: &Path,
    ) -> Result<PingRun> {
        let out = dir.join(format!("ping-{}-{to}.txt", from.name()));
        let mut cmd = from.cmd("ping");
        cmd.args([
            "-n",
            "-i",
            &format!("{:.3}", interval.as_secs_f64()),
            "-c",
            &count.to_string(),
            "-W",
            "1",
            to,
        ])
        .stdout(std::fs::File::create(&out)?)
        .stderr(Stdio::null());
        Ok(PingRun {
            proc: Proc::spawn(cmd)?,
            out,
        })
    }

    /// Waits (at most `limit`) for the run to end and parses its summary.
    pub fn finish(mut self, limit: Duration) -> Result<PingStats> {
        wait_for("ping run to end", limit, || self.proc.exited())?;
        let text = std::fs::read_to_string(&self.out)?;
        let line = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .with_context(|| format!("no ping summary in:\n{text}"))?;
        let num = |word: &str| -> Option<u32> {
            let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
            let i = words.iter().position(|w| *w == word)?;
            words.get(i.checked_sub(1)?)?.parse().ok()
        };
        Ok(PingStats {
            sent: num("packets").context("transmitted count")?,
            received: num("received").context("received count")?,
            text,
        })
    }
}

/// `ip -n NS monitor route` recording to a file, proven live before `start` returns (a
/// marker blackhole route is added and seen, then removed).
pub struct RouteMonitor {
    proc: Proc,
    path: PathBuf,
}

/// A marker address per monitor, in the node-link range and never a real node.
fn marker() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 250 + 1;
    format!("198.19.250.{n}/32")
}

impl RouteMonitor {
    pub fn start(ns: &Netns, dir: &Path) -> Result<RouteMonitor> {
        let path = dir.join(format!("monitor-{}.txt", ns.name()));
        let mut cmd = Command::new("ip");
        cmd.args(["-n", ns.name(), "monitor", "route"])
            .stdout(std::fs::File::create(&path)?)
            .stderr(Stdio::null());
        let m = RouteMonitor {
            proc: Proc::spawn(cmd)?,
            path,
        };
        let mark = marker();
        let dst = mark.trim_end_matches("/32").to_owned();
        let limit = Duration::from_secs(5);
        let t = Instant::now();
        // The monitor may not be subscribed yet: add the marker until it is seen.
        loop {
            ns.ip(&["route", "replace", "blackhole", &mark, "proto", "static"])?;
            std::thread::sleep(Duration::from_millis(50));
            if m.text().contains(&dst) {
                break;
            }
            ns.ip(&["route", "del", &mark])?;
            if t.elapsed() > limit {
                bail!("ip monitor in {} saw nothing within {limit:?}", ns.name());
            }
        }
        ns.ip(&["route", "del", &mark])?;
        Ok(m)
    }

    /// One monitor per node of `c`, in node order.
    pub fn start_all(c: &Cluster) -> Result<Vec<RouteMonitor>> {
        c.nodes
            .iter()
            .map(|n| RouteMonitor::start(&n.ns, c.dir.path()))
            .collect()
    }

    /// What it printed so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }

    /// Ends it; returns what it printed after the marker (only the changes under test).
    pub fn stop(mut self) -> String {
        std::thread::sleep(Duration::from_millis(100));
        self.proc.stop(Duration::from_secs(1));
        let text = self.text();
        let lines: Vec<&str> = text.lines().collect();
        let after = lines
            .iter()
            .rposition(|l| l.contains("198.19.250."))
            .map_or(0, |i| i + 1);
        lines[after..].join("\n")
    }
}

/// Lines of a route monitor's output that touch an owned route (`proto 75`) or one of
/// `dsts` (route destinations as `ip` prints them).
pub fn owned_changes(text: &str, dsts: &[String]) -> Vec<String> {
    text.lines()
        .filter(|l| l.contains("proto 75") || dsts.iter().any(|d| l.contains(d.as_str())))
        .map(str::to_owned)
        .collect()
}

/// Polls `f` every few milliseconds until it holds; returns how long that took, or fails
/// after `limit` with `what`.
pub fn time_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Result<Duration> {
    let t = Instant::now();
    loop {
        if f() {
            return Ok(t.elapsed());
        }
        if t.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether node `i` has an owned route to `dst`, via `via` if given.
pub fn has_route(c: &Cluster, i: usize, dst: &str, via: Option<&str>) -> bool {
    c.routes(i).is_ok_and(|r| {
        r.iter()
            .any(|(d, g)| d == dst && via.is_none_or(|v| v == g))
    })
}

/// (key name, reason) of every rejected lease in a `status --json`.
pub fn rejected(status: &Value) -> BTreeMap<String, String> {
    status["rejected"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["key"].as_str().unwrap_or("?").to_owned(),
                r["reason"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

/// `hostgw-routed status --json` of node `i`.
pub fn status_json(c: &Cluster, i: usize) -> Result<Value> {
    let text = c.cli(i, "status", &["--json"])?;
    serde_json::from_str(&text).with_context(|| format!("status --json: {text}"))
}

/// The IPv6 subnet in node `i`'s subnet file (dual-stack).
pub fn subnet6(c: &Cluster, i: usize) -> Option<String> {
    let text = std::fs::read_to_string(&c.nodes[i].subnet_file).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v["ipv6Subnet"].as_str().map(str::to_owned)
}

/// A pod subnet `198.18.<n>.0/24` (n from `from` up) that no node of `c` holds.
pub fn free_subnet(c: &Cluster, from: u8) -> String {
    let used: Vec<String> = (0..c.nodes.len()).filter_map(|i| c.subnet(i)).collect();
    (from..=254)
        .map(|n| format!("198.18.{n}.0/24"))
        .find(|s| !used.contains(s))
        .expect("a free subnet")
}

/// Polls until every node in `nodes` satisfies `f`; returns, for each node, how long after
/// `t0` it first did. Fails after `limit` with the daemons' logs.
pub fn first_times(
    c: &Cluster,
    nodes: &[usize],
    t0: Instant,
    limit: Duration,
    mut f: impl FnMut(usize) -> bool,
) -> Result<Vec<Duration>> {
    let mut seen: Vec<Option<Duration>> = vec![None; nodes.len()];
    while seen.iter().any(Option::is_none) {
        for (k, &i) in nodes.iter().enumerate() {
            if seen[k].is_none() && f(i) {
                seen[k] = Some(t0.elapsed());
            }
        }
        if t0.elapsed() > limit {
            bail!(
                "not every node of {nodes:?} within {limit:?} (first seen: {seen:?})\n{}",
                c.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(seen.into_iter().flatten().collect())
}

// === pods through a real runtime ===

/// Name `ctr images import` gives the image of [`busybox_image`].
pub const BUSYBOX_IMAGE: &str = "localhost/hgwt-busybox:1";

const BUSYBOX_SCRIPT: &str = r#"
set -eu
out=$1
bb=$(command -v busybox)
if ldd "$bb" >/dev/null 2>&1; then echo "busybox is dynamically linked; install busybox-static" >&2; exit 1; fi
r=$out/rootfs
mkdir -p "$r/bin" "$r/etc" "$r/proc" "$r/sys" "$r/dev" "$r/tmp" "$r/run"
install -m 0755 "$bb" "$r/bin/busybox"
for a in $("$bb" --list); do [ "$a" = busybox ] || ln -sf busybox "$r/bin/$a"; done
printf 'root:x:0:0:root:/:/bin/sh\n' >"$r/etc/passwd"
printf 'root:x:0:\n' >"$r/etc/group"
l=$out/layout
umoci init --layout "$l"
umoci new --image "$l:1"
umoci insert --image "$l:1" "$r" / >/dev/null
umoci config --image "$l:1" --os linux --architecture amd64 \
  --config.cmd /bin/sh --config.env PATH=/bin --config.workingdir /
umoci gc --layout "$l"
sed -i 's|"org.opencontainers.image.ref.name":"1"|&,"io.containerd.image.name":"localhost/hgwt-busybox:1"|' "$l/index.json"
grep -q io.containerd.image.name "$l/index.json"
tar -C "$l" -cf "$out/busybox.tar" .
"#;

/// Builds a small OCI image of this machine's busybox-static with umoci (nothing is
/// downloaded) into `dir`; returns the tarball for `ctr images import`, which names it
/// [`BUSYBOX_IMAGE`].
pub fn busybox_image(dir: &Path) -> Result<PathBuf> {
    must(
        Command::new("bash")
            .args(["-c", BUSYBOX_SCRIPT, "busybox-image"])
            .arg(dir),
    )?;
    Ok(dir.join("busybox.tar"))
}

const CNI_HOST_SCRIPT: &str = r#"
set -eu
r=$1 subnet_dir=$2 data_dir=$3 plugin=$4 conflist=$5 install=$6
for d in /etc /opt /var/lib; do
  mkdir -p "$r/upper$d" "$r/work$d"
  mount -t overlay hgwt-cni -o "lowerdir=$d,upperdir=$r/upper$d,workdir=$r/work$d" "$d"
done
mkdir -p /run/hostgw /var/lib/cni/networks
mount --bind "$subnet_dir" /run/hostgw
mount --bind "$data_dir" /var/lib/cni/networks
HOST_ROOT=/ SRC_PLUGIN="$plugin" SRC_CONFLIST="$conflist" SRC_CHAINED_DIR=/usr/lib/cni sh "$install"
"#;

/// The node's CNI files as the runtime of containerd's mount namespace sees them: `/etc`,
/// `/opt` and `/var/lib` overlaid there with writable layers in `dir` (the host's never
/// change), the plugin and the shipped conflist installed by `manifests/install-cni.sh` as
/// the DaemonSet's init container installs them (`/opt/cni/bin/hostgw`, the chained
/// `portmap` and `bandwidth` from Debian's /usr/lib/cni, `/etc/cni/net.d/10-hostgw.conflist`), `/run/hostgw` bound to the node daemon's
/// subnet-file directory, and `/var/lib/cni/networks` bound to the node's IPAM store
/// ([`ipam_dir`]): one store per node, shared with the pods [`add_pod`] wires there (two
/// stores on one node would hand out the same address twice). Declare it before the
/// `Containerd` so it outlives it.
pub struct CniHost {
    pub dir: tempfile::TempDir,
}

impl CniHost {
    pub fn new() -> Result<CniHost> {
        Ok(CniHost {
            dir: tempfile::Builder::new().prefix("hgwt-cnihost").tempdir()?,
        })
    }

    /// Sets the files up in the mount namespace of `ctd` for node `node` of `c`.
    pub fn install(
        &self,
        ctd: &crate::containerd::Containerd,
        c: &Cluster,
        node: usize,
    ) -> Result<()> {
        let subnet_dir = c.nodes[node]
            .subnet_file
            .parent()
            .context("subnet file directory")?;
        let data_dir = ipam_dir(c, node);
        std::fs::create_dir_all(&data_dir)?;
        let m = crate::manifests::dir();
        must(
            Command::new("nsenter")
                .arg(format!("--mount=/proc/{}/ns/mnt", ctd.pid()))
                .args(["--", "sh", "-c", CNI_HOST_SCRIPT, "cni-host"])
                .arg(self.dir.path())
                .arg(subnet_dir)
                .arg(&data_dir)
                .arg(bin("hostgw"))
                .arg(m.join("10-hostgw.conflist"))
                .arg(m.join("install-cni.sh")),
        )?;
        Ok(())
    }
}

/// Reservations of node `node` (address → container ID), from its IPAM store.
pub fn reservations(
    c: &Cluster,
    node: usize,
) -> Result<std::collections::BTreeMap<String, String>> {
    let dir = ipam_dir(c, node).join(crate::pod::NETWORK);
    // A reservation holds `<containerID>\r\n<ifname>`: the first line is the container.
    Ok(crate::pod::reservation_files(&dir)?
        .into_iter()
        .map(|(ip, text)| {
            let id = text.lines().next().unwrap_or("").trim().to_owned();
            (ip, id)
        })
        .collect())
}

/// A container started by `ctr run --cni --rm` (not detached, so that ctr itself calls the
/// plugin's DEL when the task ends, as it does) on a thread of `scope`. `stop` is the
/// runtime's teardown; dropped without it (a failed assertion), the task is SIGKILLed so
/// that the scope can end.
pub struct CtrPod<'s> {
    pub id: String,
    /// The container ID the plugin sees (`<containerd namespace>-<id>`).
    pub cni_id: String,
    pub ip: String,
    ctd: &'s crate::containerd::Containerd,
    handle: Option<std::thread::ScopedJoinHandle<'s, Result<(std::process::ExitStatus, String)>>>,
}

impl<'s> CtrPod<'s> {
    /// Runs a busybox container `id` with the plugin's network and waits until it has an
    /// IPv4 address on `eth0`.
    pub fn start<'e>(
        scope: &'s std::thread::Scope<'s, 'e>,
        ctd: &'s crate::containerd::Containerd,
        id: &str,
    ) -> Result<CtrPod<'s>> {
        let opts = crate::containerd::RunOpts {
            args: [
                "sh",
                "-c",
                "trap 'exit 0' TERM; while :; do sleep 0.2; done",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            extra: vec!["--cni".into()],
            ..Default::default()
        };
        let owned = id.to_owned();
        let handle = scope
            .spawn(move || ctd.run_once(BUSYBOX_IMAGE, &owned, &opts, Duration::from_secs(300)));
        let mut pod = CtrPod {
            id: id.to_owned(),
            cni_id: format!("{}-{id}", crate::containerd::NAMESPACE),
            ip: String::new(),
            ctd,
            handle: Some(handle),
        };
        let ip = wait_for(
            &format!("container {id} running with an address"),
            Duration::from_secs(60),
            || {
                if pod.handle.as_ref().is_none_or(|h| h.is_finished()) {
                    return Some(None);
                }
                if ctd.task_status(id).as_deref() != Some("RUNNING") {
                    return None;
                }
                let out = pod
                    .exec("addr", &["ip", "-o", "-4", "addr", "show", "eth0"])
                    .ok()?;
                let a = out.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
                Some(Some(a.split('/').next()?.to_owned()))
            },
        )?;
        let Some(ip) = ip else {
            let h = pod.handle.take().expect("handle");
            let out = h
                .join()
                .map_err(|_| anyhow::anyhow!("ctr thread panicked"))??;
            bail!(
                "ctr run --cni {id} ended at once ({}):\n{}\n{}",
                out.0,
                out.1,
                ctd.log()
            );
        };
        pod.ip = ip;
        Ok(pod)
    }

    /// Runs `args` inside the container (`ctr task exec`); returns stdout.
    pub fn exec(&self, exec_id: &str, args: &[&str]) -> Result<String> {
        let mut a = vec!["task", "exec", "--exec-id", exec_id, &self.id];
        a.extend_from_slice(args);
        self.ctd.ctr(&a)
    }

    /// Pings `to` from inside the container until one answer (at most 5 s).
    pub fn ping(&self, to: &str) -> Result<()> {
        let mut n = 0;
        wait_for(
            &format!("container {} to reach {to}", self.id),
            Duration::from_secs(5),
            || {
                n += 1;
                self.exec(&format!("ping{n}"), &["ping", "-c", "1", "-W", "1", to])
                    .ok()
                    .map(drop)
            },
        )
    }

    /// The runtime's teardown: the task is stopped (SIGTERM), and `ctr run` calls the
    /// plugin's DEL, deletes the task and removes the container. Returns ctr's output.
    pub fn stop(mut self) -> Result<String> {
        self.ctd
            .ctr(&["task", "kill", "--signal", "SIGTERM", &self.id])?;
        let h = self.handle.take().expect("handle");
        let (st, out) = h
            .join()
            .map_err(|_| anyhow::anyhow!("ctr thread panicked"))??;
        if !st.success() {
            bail!("ctr run {} ended with {st}:\n{out}", self.id);
        }
        Ok(out)
    }
}

impl Drop for CtrPod<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = self
                .ctd
                .ctr(&["task", "kill", "--signal", "SIGKILL", &self.id]);
            let _ = h.join();
        }
    }
}
