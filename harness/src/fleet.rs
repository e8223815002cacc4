//! A fleet: up to a few thousand `hostgw-routed` nodes on one L2 segment against one etcd
//! (one member or three), built in bulk for `bench-scale`. Where [`crate::routed::Cluster`]
//! spends a dozen commands per node on a /24, a fleet uses 198.19.0.0/16 and `ip -batch`:
//! one batch in the switch for every port, one per node namespace, one per etcd member.
//!
//! Per-node cost is kept small: no IPv6 (no link-local addresses, DAD or MLD floods
//! through a thousand ports), and static neighbour entries between nodes and etcd, since
//! the kernel's ARP table is shared by every namespace and its `gc_thresh3` (1024 by
//! default) counts dynamic entries of all of them: a thousand nodes each talking to etcd
//! would overflow it, but permanent entries are exempt from that count (Linux ≥ 5.0).
//! A Linux bridge holds at most 1024 ports (`BR_MAX_PORTS`), so nodes are spread over
//! bridges of [`PORTS_PER_BRIDGE`] joined by veth pairs into one segment.

use std::{
    fmt::Write as _,
    fs::File,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{Netns, Proc, bin, etcd::EtcdCluster, must, node::Node, run_timeout};

pub const PORTS_PER_BRIDGE: usize = 1000;
/// Keys and config as in the daemon's defaults.
pub const PREFIX: &str = "/hostgw/network";

pub struct FleetSpec<'a> {
    pub nodes: usize,
    pub etcd_members: usize,
    pub config: &'a str,
}

pub struct Fleet {
    /// Declared first: daemons and node namespaces go before etcd and the switch.
    pub nodes: Vec<Node>,
    pub etcd: EtcdCluster,
    pub etcd_ns: Vec<Netns>,
    pub sw: Netns,
    bridges: usize,
    pub dir: tempfile::TempDir,
}

/// Node `i`'s address on the segment: 198.19.1.1 on, 250 per /24.
pub fn node_ip(i: usize) -> String {
    format!("198.19.{}.{}", 1 + i / 250, 1 + i % 250)
}

fn node_mac(i: usize) -> String {
    format!("02:19:00:00:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff)
}

pub fn etcd_ip(m: usize) -> String {
    format!("198.19.0.{}", 2 + m)
}

fn etcd_mac(m: usize) -> String {
    format!("02:19:ff:00:00:{m:02x}")
}

/// `ip -n NS -batch FILE` with the lines in `text`, which must succeed.
fn batch(ns: &Netns, dir: &Path, text: &str) -> Result<()> {
    let path = dir.join(format!("{}.batch", ns.name()));
    std::fs::write(&path, text)?;
    let out = run_timeout(
        Command::new("ip")
            .args(["-n", ns.name(), "-batch"])
            .arg(&path),
        Duration::from_secs(300),
    )?;
    if !out.status.success() {
        bail!(
            "ip -n {} -batch: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A namespace without IPv6 on any link it will get.
fn quiet_netns(tag: &str) -> Result<Netns> {
    let ns = Netns::new(tag)?;
    must(ns.cmd("sysctl").args([
        "-qw",
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
    ]))?;
    Ok(ns)
}

/// Runs `f` over `0..n` on `workers` threads; the first error wins.
pub fn par<T: Send>(
    n: usize,
    workers: usize,
    f: impl Fn(usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let chunks: Vec<Vec<usize>> = (0..workers.max(1))
        .map(|w| (w..n).step_by(workers.max(1)).collect())
        .collect();
    let mut out: Vec<(usize, T)> = std::thread::scope(|s| {
        let hs: Vec<_> = chunks
            .iter()
            .map(|c| {
                s.spawn(|| {
                    c.iter()
                        .map(|&i| f(i).map(|v| (i, v)))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("worker panicked"))?)
            .collect::<Result<Vec<Vec<_>>>>()
    })?
    .into_iter()
    .flatten()
    .collect();
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, v)| v).collect())
}

impl Fleet {
    pub fn new(spec: FleetSpec) -> Result<Fleet> {
        let dir = tempfile::Builder::new().prefix("hgwt-fleet").tempdir()?;
        let sw = quiet_netns("sw")?;
        let mut etcd_ns = Vec::new();
        let mut sw_batch = "link add br0 address 02:19:fe:00:00:00 type bridge mcast_snooping 0\nlink set br0 up\n".to_owned();
        for m in 0..spec.etcd_members {
            let ns = quiet_netns("et")?;
            let _ = writeln!(
                sw_batch,
                "link add e{m} type veth peer name eth0 address {} netns {}\nlink set e{m} master br0\nlink set e{m} up",
                etcd_mac(m),
                ns.name()
            );
            etcd_ns.push(ns);
        }
        batch(&sw, dir.path(), &sw_batch)?;
        for (m, ns) in etcd_ns.iter().enumerate() {
            batch(
                ns,
                dir.path(),
                &format!("link set eth0 up\naddr add {}/16 dev eth0\n", etcd_ip(m)),
            )?;
        }
        let ips: Vec<String> = (0..spec.etcd_members).map(etcd_ip).collect();
        let members: Vec<(&Netns, &str)> =
            etcd_ns.iter().zip(ips.iter().map(String::as_str)).collect();
        let etcd = EtcdCluster::start(&members)?;
        etcd.members[0].put(&format!("{PREFIX}/config"), spec.config)?;
        let mut f = Fleet {
            nodes: vec![],
            etcd,
            etcd_ns,
            sw,
            bridges: 1,
            dir,
        };
        f.add_nodes(spec.nodes)?;
        Ok(f)
    }

    /// Adds `count` node namespaces to the segment (not started), in bulk.
    pub fn add_nodes(&mut self, count: usize) -> Result<()> {
        let first = self.nodes.len();
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
        let spaces = par(count, workers, |_| quiet_netns("n"))?;
        let mut sw_batch = String::new();
        for (k, ns) in spaces.iter().enumerate() {
            let i = first + k;
            let br = self.ensure_bridge(i / PORTS_PER_BRIDGE, &mut sw_batch);
            let _ = writeln!(
                sw_batch,
                "link add p{i} type veth peer name eth0 address {} netns {}\nlink set p{i} master {br}\nlink set p{i} up",
                node_mac(i),
                ns.name()
            );
        }
        batch(&self.sw, self.dir.path(), &sw_batch)?;
        let members = self.etcd_ns.len();
        let dir = self.dir.path();
        par(count, workers, |k| {
            let mut b = format!(
                "link set eth0 up\naddr add {}/16 dev eth0\n",
                node_ip(first + k)
            );
            for m in 0..members {
                let _ = writeln!(
                    b,
                    "neigh replace {} lladdr {} dev eth0 nud permanent",
                    etcd_ip(m),
                    etcd_mac(m)
                );
            }
            batch(&spaces[k], dir, &b)
        })?;
        let mut neigh = String::new();
        for i in first..first + count {
            let _ = writeln!(
                neigh,
                "neigh replace {} lladdr {} dev eth0 nud permanent",
                node_ip(i),
                node_mac(i)
            );
        }
        for ns in &self.etcd_ns {
            batch(ns, dir, &neigh)?;
        }
        for (k, ns) in spaces.into_iter().enumerate() {
            let i = first + k;
            self.nodes.push(Node::in_cluster(
                ns,
                format!("node-{i}"),
                node_ip(i),
                String::new(),
            )?);
        }
        Ok(())
    }

    /// The name of bridge `b`, adding it (joined to br0 by a veth pair) to `sw_batch` the
    /// first time.
    fn ensure_bridge(&mut self, b: usize, sw_batch: &mut String) -> String {
        while self.bridges <= b {
            let n = self.bridges;
            let _ = writeln!(
                sw_batch,
                "link add br{n} address 02:19:fe:00:00:{n:02x} type bridge mcast_snooping 0\nlink set br{n} up\nlink add j{n}a type veth peer name j{n}b\nlink set j{n}a master br0\nlink set j{n}b master br{n}\nlink set j{n}a up\nlink set j{n}b up"
            );
            self.bridges += 1;
        }
        format!("br{b}")
    }

    /// The flags of `run`, `status` and `release` for node `i`.
    pub fn common_args(&self, i: usize) -> Vec<String> {
        let n = &self.nodes[i];
        vec![
            "--etcd-endpoints".into(),
            self.etcd.endpoints.clone(),
            "--node-name".into(),
            n.name.clone(),
            "--public-ip".into(),
            n.ip.clone(),
            "--subnet-file".into(),
            n.subnet_file.display().to_string(),
        ]
    }

    /// Starts node `i`'s daemon (`RUST_LOG=info`: a line per route change, with its time).
    pub fn start(&mut self, i: usize) -> Result<()> {
        let mut args = vec!["run".to_owned()];
        args.extend(self.common_args(i));
        let n = &mut self.nodes[i];
        args.extend(n.extra_args.iter().cloned());
        let log = File::options().create(true).append(true).open(&n.log)?;
        let mut cmd = Command::new(bin("hostgw-routed"));
        cmd.args(&args)
            .stdout(Stdio::null())
            .stderr(log)
            .env("RUST_LOG", "info");
        n.daemon = Some(spawn_in(&n.ns, cmd)?);
        Ok(())
    }

    /// Runs `hostgw-routed <sub>` for node `i`; must succeed.
    pub fn cli(&self, i: usize, sub: &str) -> Result<String> {
        let mut cmd = self.nodes[i].ns.cmd(bin("hostgw-routed"));
        cmd.arg(sub)
            .args(self.common_args(i))
            .env("RUST_LOG", "warn");
        must(&mut cmd)
    }

    /// Owned IPv4 routes in node `i`, as `ip route` prints them.
    pub fn route_lines(&self, i: usize) -> Result<Vec<String>> {
        let out = Command::new("ip")
            .args([
                "-4",
                "-n",
                self.nodes[i].ns.name(),
                "route",
                "show",
                "proto",
                "75",
            ])
            .output()
            .context("ip route show")?;
        // Routes to peers only: the node's own `unreachable <subnet>` is ours too.
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with("unreachable"))
            .map(str::to_owned)
            .collect())
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// The PIDs of the running daemons (0 for nodes not started).
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .map(|n| n.daemon.as_ref().map_or(0, Proc::pid))
            .collect()
    }

    /// SIGTERM to every daemon at once, then reaps them: a thousand sequential stops would
    /// take a thousand grace periods.
    pub fn stop_all(&mut self) {
        for n in &self.nodes {
            if let Some(p) = &n.daemon {
                p.signal(nix::sys::signal::Signal::SIGTERM);
            }
        }
        for n in &mut self.nodes {
            if let Some(mut p) = n.daemon.take() {
                p.stop(Duration::from_secs(5));
            }
        }
    }
}

/// Spawns `cmd` inside `ns` from a thread that entered it (a network namespace is per
/// thread, and a child takes its parent thread's): one exec per daemon, where `nsenter`
/// took two, and a thousand spawns compete with the daemons already running.
fn spawn_in(ns: &Netns, cmd: Command) -> Result<Proc> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let fd =
                File::open(ns.path()).with_context(|| format!("open {}", ns.path().display()))?;
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("enter {}", ns.name()))?;
            spawn_unblocked(cmd)
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("spawn thread panicked")))
    })
}

/// Spawns with SIGINT and SIGTERM unblocked in the spawning thread: a child inherits that
/// thread's signal mask (also through `std::process::Command`), and `bench-scale` blocks
/// both in every thread for its `sigwait` (see its `cleanup`). A daemon started with
/// SIGTERM blocked never saw its stop, and each one waited out `Proc::stop`'s grace: 200 s
/// of teardown at N = 100. A signal in the few microseconds of the window ends the process
/// the default way, without the sweep.
fn spawn_unblocked(cmd: std::process::Command) -> Result<Proc> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    let old = set.thread_swap_mask(SigmaskHow::SIG_UNBLOCK)?;
    let p = Proc::spawn(cmd);
    old.thread_set_mask()?;
    p
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop_all();
        // Each namespace's Drop is two `ip` runs: in parallel, a thousand go in seconds.
        let nodes: Vec<std::sync::Mutex<Option<Node>>> = std::mem::take(&mut self.nodes)
            .into_iter()
            .map(|n| std::sync::Mutex::new(Some(n)))
            .collect();
        let _ = par(nodes.len(), 4, |i| {
            drop(nodes[i].lock().map(|mut n| n.take()));
            Ok(())
        });
    }
}
