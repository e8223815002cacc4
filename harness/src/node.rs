//! The one node type: a namespace standing in for a Kubernetes node, with a private folder
//! for the plugin's data dir, the subnet file and the daemon's log; in a cluster
//! ([`crate::routed::Cluster`]) also its uplink addresses and its `hostgw-routed`. The CNI
//! fixtures (run the plugin in it, read what it holds) are in [`crate::pod`].

use std::path::PathBuf;

use anyhow::Result;
use tempfile::TempDir;

use crate::{Netns, Proc, bin};

pub struct Node {
    /// Declared before `ns`: the daemon ends before its namespace goes.
    pub daemon: Option<Proc>,
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

    /// The plugin's `dataDir` on this node: one IPAM store per node.
    pub fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    /// `<dataDir>/<network>`, where the reservations live.
    pub fn net_dir(&self, network: &str) -> PathBuf {
        self.data_dir().join(network)
    }
}
