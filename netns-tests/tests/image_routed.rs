//! The image is tested, not only written: `manifests/build-image.sh` assembles it from the
//! built binaries, containerd (inside a node namespace, in a private mount namespace) runs
//! its three containers the way the DaemonSet does — the install-cni and forwarding init
//! containers, then `hostgw-routed` with host networking and only NET_ADMIN + BPF + PERFMON — and
//! it must program routes exactly like the bare binary on the other node. Pods on both
//! nodes are then wired with the shipped conflist (`manifests/10-hostgw.conflist`, the one
//! the ConfigMap carries) and the plugin the image installed, and reach each other.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use hostgw_harness::{
    Netns, bin,
    cni::{Call, invoke},
    containerd::{Containerd, RunOpts},
    manifests::{self, Image, shipped_conflist, shipped_plugin_conf},
    must, require_root,
    routed::{Cluster, Spec, routes_in},
    wait_for,
};
use serde_json::{Value, json};

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn ro(p: impl Into<PathBuf>, dst: &str) -> (PathBuf, PathBuf, bool) {
    (p.into(), PathBuf::from(dst), true)
}

fn rw(p: impl Into<PathBuf>, dst: impl Into<PathBuf>) -> (PathBuf, PathBuf, bool) {
    (p.into(), dst.into(), false)
}

/// What the DaemonSet's containers get: no capability for install-cni, NET_ADMIN for the
/// forwarding init container (the kernel wants it for net sysctls), NET_ADMIN, BPF and
/// PERFMON for the daemon.
fn caps(add: &[&str]) -> RunOpts {
    RunOpts {
        cap_drop: s(&["ALL"]),
        cap_add: add.iter().map(|c| format!("CAP_{c}")).collect(),
        ..RunOpts::default()
    }
}

fn sysctl(ns: &Netns, path: &str) -> Result<String> {
    Ok(must(ns.cmd("cat").arg(path))?.trim().to_owned())
}

struct Pod {
    ns: Netns,
    ip: String,
}

/// A pod on `node`, wired by `plugin` with the shipped conflist (only the node-local paths
/// point into the test's tempdir).
fn add_pod(cluster: &Cluster, node: usize, plugin: &Path, id: &str) -> Result<Pod> {
    let conf = shipped_plugin_conf(&[
        ("subnetFile", json!(cluster.nodes[node].subnet_file)),
        (
            "dataDir",
            json!(cluster.dir.path().join(format!("ipam-{node}"))),
        ),
    ]);
    let ns = Netns::new("pod")?;
    let path = ns.path().display().to_string();
    let reply = invoke(
        plugin,
        &cluster.nodes[node].ns,
        &Call::attach("ADD", id, &path),
        &conf.to_string(),
    )?;
    ensure!(
        reply.ok(),
        "ADD {id} on node {node}: {} {}",
        reply.stdout,
        reply.stderr
    );
    let result = reply.json()?;
    let ip = result["ips"][0]["address"]
        .as_str()
        .context("no address in the result")?
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    Ok(Pod { ns, ip })
}

fn ping(from: &Pod, to: &Pod) -> Result<()> {
    must(from.ns.cmd("ping").args(["-c", "1", "-W", "2", &to.ip]))
        .with_context(|| format!("ping {} from {}", to.ip, from.ip))?;
    Ok(())
}

/// What the image's containers run against: containerd on node 1, the image, the
/// ConfigMap volume (the one conflist of manifests/).
struct Deploy<'a> {
    cluster: &'a Cluster,
    ctd: &'a Containerd,
    image: &'a Image,
    configmap: tempfile::TempDir,
}

impl Deploy<'_> {
    fn configmap() -> Result<tempfile::TempDir> {
        let configmap = tempfile::tempdir()?;
        for f in ["10-hostgw.conflist", "net-conf.json"] {
            std::fs::copy(manifests::dir().join(f), configmap.path().join(f))?;
        }
        Ok(configmap)
    }

    /// The directory of node 1's subnet file and the TLS certificates, as the daemon's
    /// container mounts them.
    fn daemon_dirs(&self) -> Result<(PathBuf, PathBuf)> {
        let subnet_dir = self.cluster.nodes[1]
            .subnet_file
            .parent()
            .context("subnet dir")?
            .to_path_buf();
        std::fs::create_dir_all(&subnet_dir)?;
        let certs = self.cluster.certs.as_ref().context("TLS certs")?;
        Ok((subnet_dir, certs.dir.path().to_path_buf()))
    }

    /// Init container 1: install-cni, against a host root of our own; returns that root
    /// and the plugin it installed.
    fn install_cni(&self) -> Result<(tempfile::TempDir, PathBuf)> {
        let host = tempfile::tempdir()?;
        let (bin_dir, conf_dir) = (
            host.path().join("opt/cni/bin"),
            host.path().join("etc/cni/net.d"),
        );
        std::fs::create_dir_all(&bin_dir)?;
        std::fs::create_dir_all(&conf_dir)?;
        let mut o = caps(&[]);
        o.args = s(&["/bin/sh", "/install-cni.sh"]);
        o.env = vec![("HOST_ROOT".into(), "/host".into())];
        o.mounts = vec![
            rw(&bin_dir, "/host/opt/cni/bin"),
            rw(&conf_dir, "/host/etc/cni/net.d"),
            ro(self.configmap.path(), "/etc/hostgw"),
        ];
        let (st, out) =
            self.ctd
                .run_once(&self.image.name, "install-cni", &o, Duration::from_secs(60))?;
        ensure!(st.success(), "install-cni failed: {out}");
        let plugin = bin_dir.join("hostgw");
        ensure!(
            std::fs::read(&plugin)? == std::fs::read(bin("hostgw"))?,
            "installed plugin differs from the built one"
        );
        ensure!(std::fs::metadata(&plugin)?.permissions().mode() & 0o777 == 0o755);
        let installed: Value = serde_json::from_str(&std::fs::read_to_string(
            conf_dir.join("10-hostgw.conflist"),
        )?)?;
        ensure!(
            installed == shipped_conflist(),
            "installed conflist: {installed}"
        );
        Ok((host, plugin))
    }

    /// Init container 2: forwarding, through the host's /proc/sys/net.
    fn forwarding(&self) -> Result<()> {
        let node1 = &self.cluster.nodes[1].ns;
        node1.sysctl("net.ipv4.ip_forward", "0")?;
        let mut o = caps(&["NET_ADMIN"]);
        o.host_net = true;
        o.args = s(&["/bin/sh", "/enable-forwarding.sh"]);
        o.mounts = vec![
            rw("/proc/sys/net", "/host/proc/sys/net"),
            ro(self.configmap.path(), "/etc/hostgw"),
        ];
        let (st, out) =
            self.ctd
                .run_once(&self.image.name, "forwarding", &o, Duration::from_secs(60))?;
        ensure!(st.success(), "forwarding failed: {out}");
        ensure!(sysctl(node1, "/proc/sys/net/ipv4/ip_forward")? == "1");
        Ok(())
    }

    /// The daemon: host network, NET_ADMIN + BPF + PERFMON, read-only /proc/sys.
    fn start_daemon(&self) -> Result<()> {
        let (subnet_dir, certs) = self.daemon_dirs()?;
        let mut o = caps(&["NET_ADMIN", "BPF", "PERFMON"]);
        o.host_net = true;
        o.args = s(&["/usr/local/bin/hostgw-routed", "run"]);
        o.args.extend(self.cluster.common_args(1));
        // --ip-masq: the image's nft then has a table to make (without it there is none).
        o.args
            .extend(s(&["--metrics-addr", "127.0.0.1:9475", "--ip-masq"]));
        o.env = vec![("RUST_LOG".into(), "info".into())];
        o.mounts = vec![
            rw(&subnet_dir, &subnet_dir),
            ro(&certs, &certs.display().to_string()),
        ];
        self.ctd.run_with(&self.image.name, "hostgw-routed", &o)?;
        Ok(())
    }

    fn diag(&self) -> String {
        format!(
            "--- image's hostgw-routed ---\n{}\n--- containerd ---\n{}\n{}",
            self.ctd.container_log("hostgw-routed"),
            self.ctd.log(),
            self.cluster.logs()
        )
    }

    /// Both nodes lease distinct subnets and route to each other; node 1 owns exactly its
    /// route to node 0 and turns ready. Returns (subnet 0, subnet 1).
    fn converged(&self) -> Result<(String, String)> {
        let cluster = self.cluster;
        let s0 = cluster.wait_subnet(0)?;
        let s1 = wait_for("node 1's subnet file", Duration::from_secs(30), || {
            cluster.subnet(1)
        })
        .with_context(|| self.diag())?;
        ensure!(s0 != s1, "both nodes leased {s0}");
        let (ip0, ip1) = (cluster.nodes[0].ip.clone(), cluster.nodes[1].ip.clone());
        wait_for(
            "each node's route to the other",
            Duration::from_secs(20),
            || {
                let r0 = cluster.routes(0).ok()?;
                let r1 = cluster.routes(1).ok()?;
                (r0.contains(&(s1.clone(), ip1.clone())) && r1.contains(&(s0.clone(), ip0.clone())))
                    .then_some(())
            },
        )
        .with_context(|| self.diag())?;
        ensure!(
            cluster.routes(1)? == vec![(s0.clone(), ip0.clone())],
            "node 1 owns exactly the route to node 0: {:?}",
            cluster.routes(1)?
        );
        wait_for(
            "/readyz 200 from the image",
            Duration::from_secs(20),
            || (cluster.readyz(1).ok()? == "200").then_some(()),
        )
        .with_context(|| self.diag())?;
        Ok((s0, s1))
    }

    /// The image's nft made the table; the daemon runs with exactly NET_ADMIN (12), PERFMON
    /// (38) and BPF (39), as the DaemonSet grants.
    fn runs_as_granted(&self) -> Result<()> {
        let node1 = &self.cluster.nodes[1].ns;
        let table = must(node1.cmd("nft").args(["list", "table", "inet", "hostgw"]))?;
        ensure!(
            table.contains("ip saddr 198.18.0.0/16 masquerade"),
            "nft table: {table}"
        );
        ensure!(self.ctd.task_status("hostgw-routed").as_deref() == Some("RUNNING"));
        let pid = self.ctd.task_pid("hostgw-routed").context("daemon's pid")?;
        let st = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let cap_eff = st
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .context("CapEff")?
            .trim()
            .to_owned();
        ensure!(
            u64::from_str_radix(&cap_eff, 16)? == (1 << 12) | (1 << 38) | (1 << 39),
            "the daemon's effective capabilities are {cap_eff}"
        );
        Ok(())
    }

    /// `status` from the image agrees: node 1 leased `s1`, its peer is installed via node 0.
    fn status_agrees(&self, s1: &str) -> Result<()> {
        let (subnet_dir, certs) = self.daemon_dirs()?;
        let ip0 = &self.cluster.nodes[0].ip;
        let mut o = caps(&["NET_ADMIN"]);
        o.host_net = true;
        o.args = s(&["/usr/local/bin/hostgw-routed", "status", "--json"]);
        o.args.extend(self.cluster.common_args(1));
        o.mounts = vec![
            ro(&subnet_dir, &subnet_dir.display().to_string()),
            ro(&certs, &certs.display().to_string()),
        ];
        let (st, out) =
            self.ctd
                .run_once(&self.image.name, "status", &o, Duration::from_secs(60))?;
        ensure!(st.success(), "status failed: {out}");
        let json_start = out.find('{').context("no JSON in status output")?;
        let status: Value = serde_json::from_str(&out[json_start..])?;
        ensure!(status["lease"]["subnet"] == json!(s1), "status: {status}");
        ensure!(
            status["peers"][0]["state"] == "installed" && status["peers"][0]["via"] == json!(ip0),
            "status: {status}"
        );
        Ok(())
    }
}

#[test]
fn image_heavy_programs_routes_like_the_bare_binary() -> Result<()> {
    require_root();
    let image = Image::build()?;
    // TLS etcd, as the DaemonSet's Secret mount expects.
    let mut cluster = Cluster::new(Spec {
        nodes: 2,
        tls: true,
        ..Spec::default()
    })?;
    cluster.start(0)?;
    let ctd = Containerd::start(&cluster.nodes[1].ns)?;
    let names = ctd.import(&image.tar())?;
    ensure!(
        names.contains(&image.name),
        "import named {names:?}, not {}",
        image.name
    );
    let d = Deploy {
        cluster: &cluster,
        ctd: &ctd,
        image: &image,
        configmap: Deploy::configmap()?,
    };
    let (_host, plugin) = d.install_cni()?;
    d.forwarding()?;
    d.start_daemon()?;

    // The one daemon behaviour this deployment relies on, named plainly when it is missing.
    std::thread::sleep(Duration::from_millis(500));
    let log = ctd.container_log("hostgw-routed");
    ensure!(
        !log.contains("enable forwarding: Read-only file system"),
        "hostgw-routed wrote net.ipv4.ip_forward although the forwarding init container had \
         set it: /proc/sys is read-only in an unprivileged container, so the daemon must leave \
         a forwarding sysctl that is already 1 alone (routed/src/nft.rs ensure_forwarding)\n{log}"
    );
    let (s0, s1) = d.converged()?;
    d.runs_as_granted()?;
    d.status_agrees(&s1)?;

    // Pods wired by the shipped conflist: the image-installed plugin on node 1, the built
    // one on node 0; they reach each other across the nodes.
    let p0 = add_pod(&cluster, 0, &bin("hostgw"), "pod-0")?;
    let p1 = add_pod(&cluster, 1, &plugin, "pod-1")?;
    ping(&p0, &p1)?;
    ping(&p1, &p0)?;

    // SIGTERM through containerd, as kubelet stops the pod: the routes stay (no flap).
    ctd.kill("hostgw-routed")?;
    let ip0 = cluster.nodes[0].ip.clone();
    ensure!(
        routes_in(&cluster.nodes[1].ns)? == vec![(s0.clone(), ip0.clone())],
        "node 1 lost its route when the container stopped"
    );
    ping(&p1, &p0)?;
    drop(d);
    drop(ctd);
    if let Some(left) = leftover_processes() {
        bail!("processes of containerd survived: {left}");
    }
    Ok(())
}

/// containerd, shims or runc still running anywhere (none of this test's may survive;
/// nothing else on a test machine runs them).
fn leftover_processes() -> Option<String> {
    let out = std::process::Command::new("ps")
        .args(["-eo", "pid,args"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let left: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("hgwt-containerd") && !l.contains("ps -eo"))
        .collect();
    (!left.is_empty()).then(|| left.join("\n"))
}
