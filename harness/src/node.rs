//! The one node type: a namespace standing in for a Kubernetes node, with a private folder
//! for the plugin's data dir, the subnet file and the daemon's log; in a cluster
//! ([`crate::routed::Cluster`]) also its uplink addresses and its `hostgw-routed`. The CNI
//! fixtures (run the plugin in it, read what it holds) are in [`crate::pod`].

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result};
use tempfile::TempDir;

use crate::{Netns, Proc, bin, must, wait_for};

pub struct Node {
    /// Declared before `ns`: the daemon ends before its namespace goes.
    pub daemon: Option<Proc>,
    /// A process holding a mount namespace of its own with a private bpffs on /sys/fs/bpf,
    /// for a daemon on the eBPF datapath: its pins outlive a daemon restart (as on a node)
    /// and go with this process, never touching the host's bpffs.
    pub bpffs: Option<Proc>,
    pub ns: Netns,
    /// `node-<i>` in a cluster; the namespace's name otherwise.
    pub name: String,
    /// Its address on the cluster's segment (198.19.0.x); empty on no segment.
    pub ip: String,
    /// Its IPv6 address on the segment (fd19:19::x); empty on no segment.
    pub ip6: String,
    /// The subnet file its daemon writes and the plugin reads.
    pub subnet_file: PathBuf,
    /// Its daemon's stderr.
    pub log: PathBuf,
    /// More flags for its daemon's `run`.
    pub extra_args: Vec<String>,
    /// The plugin binary (`hostgw`).
    pub plugin: PathBuf,
    /// Its private folder: `data/` (the plugin's `dataDir`), the subnet file, the log.
    pub tmp: TempDir,
}

impl Node {
    /// A node on no segment, for the plugin alone: `dataDir` `<tmp>/data`, `subnetFile`
    /// `<tmp>/subnet.json`.
    pub fn new(tag: &str) -> Result<Node> {
        let ns = Netns::new(tag)?;
        let tmp = tempfile::tempdir()?;
        Ok(Node {
            daemon: None,
            bpffs: None,
            name: ns.name().to_owned(),
            ns,
            ip: String::new(),
            ip6: String::new(),
            subnet_file: tmp.path().join("subnet.json"),
            log: tmp.path().join("routed.log"),
            extra_args: vec![],
            plugin: bin("hostgw"),
            tmp,
        })
    }

    /// `ns` as node `name` of a cluster, at `ip` and `ip6` on its segment. The subnet file
    /// is alone in `<tmp>/run/` (made by the daemon), the folder a runtime's mount
    /// namespace binds to /run/hostgw.
    pub fn in_cluster(ns: Netns, name: String, ip: String, ip6: String) -> Result<Node> {
        let tmp = tempfile::Builder::new().prefix("hgwt-node").tempdir()?;
        Ok(Node {
            daemon: None,
            bpffs: None,
            ns,
            name,
            ip,
            ip6,
            subnet_file: tmp.path().join("run/subnet.json"),
            log: tmp.path().join("routed.log"),
            extra_args: vec![],
            plugin: bin("hostgw"),
            tmp,
        })
    }

    /// Starts the bpffs holder once (inside the node's netns, so the namespace's Drop and
    /// cleanup.sh end it with everything else) and waits for its mount.
    pub fn ensure_bpffs(&mut self) -> Result<()> {
        if self.bpffs.is_some() {
            return Ok(());
        }
        let mut c = self.ns.cmd("unshare");
        c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("mount -t bpf hgwt-bpffs /sys/fs/bpf && exec sleep 2147483647");
        let p = Proc::spawn(c)?;
        let mnt = format!("--mount=/proc/{}/ns/mnt", p.pid());
        self.bpffs = Some(p);
        wait_for("the node's private bpffs", Duration::from_secs(10), || {
            let out = must(Command::new("nsenter").args([
                mnt.as_str(),
                "stat",
                "-f",
                "-c",
                "%T",
                "/sys/fs/bpf",
            ]))
            .ok()?;
            (out.trim() == "bpf_fs").then_some(())
        })
        .context("mount bpffs in the node's mount namespace")
    }

    /// A command in this node: its netns, and its bpffs holder's mount namespace if it has one.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.bpffs {
            None => self.ns.cmd(program),
            Some(h) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--mount=/proc/{}/ns/mnt", h.pid()))
                    .arg(format!("--net={}", self.ns.path().display()))
                    .arg("--")
                    .arg(program);
                c
            }
        }
    }

    /// The plugin's `dataDir` on this node: one IPAM store per node.
    pub fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    /// `<dataDir>/<network>`, where the reservations live.
    pub fn net_dir(&self, network: &str) -> PathBuf {
        self.data_dir().join(network)
    }
}
