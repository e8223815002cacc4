//! The eBPF fast path in the daemon (issue 13): the daemon is its one owner. On start it probes
//! the kernel, loads the programs (adopting the pinned links of an earlier run, so traffic
//! never stops across a restart or an upgrade), attaches the uplink and every pod's host veth,
//! and follows link events for new pods; `release` unpins everything. When the kernel or the
//! process can't, it keeps plain routes and says why: once in the log, in `status` (through
//! the state file next to the subnet file) and in `hostgw_datapath{mode}`.

pub mod keeper;
pub mod links;
pub mod plan;

use std::{
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use hostgw_ebpf::{ClusterNetworks, FastPath, Options};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{cli::RunArgs, config::NetConfig, metrics::Metrics};

/// `--datapath`: plain host-gw routes, or the eBPF fast path beside them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Datapath {
    Routes,
    Ebpf,
}

impl Datapath {
    pub fn as_str(self) -> &'static str {
        match self {
            Datapath::Routes => "routes",
            Datapath::Ebpf => "ebpf",
        }
    }
}

/// What the daemon runs with, for `status` (a process of its own) to show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub requested: Datapath,
    pub mode: Datapath,
    /// Why this mode: the probe's first failure when ebpf was asked for and is not running.
    pub reason: String,
    pub pin_dir: PathBuf,
    pub big_tcp: bool,
}

/// `datapath.json` beside the subnet file (both are this node's runtime state in /run/hostgw).
pub fn state_path(subnet_file: &Path) -> PathBuf {
    subnet_file.with_file_name("datapath.json")
}

impl State {
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).map_err(io::Error::other)?,
        )?;
        fs::rename(&tmp, path)
    }

    pub fn read(path: &Path) -> Option<State> {
        let bytes = hostgw_common::fs::read_small_file(path, 64 * 1024, false).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

pub fn networks(cfg: &NetConfig) -> ClusterNetworks {
    let v4 = cfg.v4.as_ref().and_then(|p| match p.network {
        IpNetwork::V4(n) => Some(n),
        IpNetwork::V6(_) => None,
    });
    let v6 = cfg.v6.as_ref().and_then(|p| match p.network {
        IpNetwork::V6(n) => Some(n),
        IpNetwork::V4(_) => None,
    });
    ClusterNetworks { v4, v6 }
}

/// The daemon's datapath task: decide, say so (log, metric, state file), then keep the links.
pub async fn run(
    args: &RunArgs,
    cfg: &NetConfig,
    public_ip: Option<IpAddr>,
    metrics: Metrics,
    sd: CancellationToken,
) {
    let c = &args.common;
    let (fp, reason) = start(args.datapath, &c.bpf_pin_dir, cfg);
    let mode = if fp.is_some() {
        Datapath::Ebpf
    } else {
        Datapath::Routes
    };
    if mode != args.datapath {
        warn!(reason = %reason, "datapath ebpf asked for; keeping plain routes");
    } else {
        info!(datapath = mode.as_str(), reason = %reason, "datapath");
    }
    metrics.set_datapath(mode.as_str());
    let state = State {
        requested: args.datapath,
        mode,
        reason,
        pin_dir: c.bpf_pin_dir.clone(),
        big_tcp: args.big_tcp,
    };
    let path = state_path(&c.subnet_file);
    if let Err(e) = state.write(&path) {
        warn!(error = %e, path = %path.display(), "writing the datapath state failed");
    }
    if fp.is_none() && !args.big_tcp {
        return;
    }
    let (conn, handle, _) = match rtnetlink::new_connection() {
        Ok(c) => c,
        Err(e) => return warn!(error = %e, "netlink socket for the fast path"),
    };
    let Some(public_ip) = public_ip else {
        return warn!("no public address of this node: no uplink for the fast path");
    };
    let conn = tokio::spawn(conn);
    match links::uplink_of(&handle, public_ip).await {
        Ok(uplink) => {
            let k = keeper::Keeper::new(fp, keeper::NetlinkTuning, args.big_tcp, uplink, metrics);
            k.run(handle, sd).await;
        }
        Err(e) => warn!(error = %e, "no uplink for the fast path"),
    }
    conn.abort();
}

/// The fast path this daemon will run, or None and the reason it keeps plain routes.
pub fn start(requested: Datapath, pin_dir: &Path, cfg: &NetConfig) -> (Option<FastPath>, String) {
    if requested == Datapath::Routes {
        // Links pinned by an earlier ebpf run would keep forwarding: a pin is what holds a
        // tcx link, so unpinning detaches it.
        match unpin_all(pin_dir) {
            Ok(0) => {}
            Ok(n) => info!(
                links = n,
                "datapath routes: detached the fast path of an earlier run"
            ),
            Err(e) => warn!(error = %e, "datapath routes: could not remove earlier fast-path pins"),
        }
        return (None, "--datapath routes".into());
    }
    let probe = hostgw_ebpf::probe(pin_dir);
    if let Some(c) = probe.first_failure() {
        let why = format!(
            "{:?}: {}",
            c.feature,
            c.result.as_ref().err().map_or("", |s| s)
        );
        return (None, format!("the kernel or this process can't: {why}"));
    }
    let opts = Options {
        pin_dir: pin_dir.to_path_buf(),
        networks: networks(cfg),
    };
    let fp = match FastPath::load(&opts) {
        Ok(fp) => fp,
        Err(e) => return (None, format!("loading the programs failed: {e}")),
    };
    match fp.adopt() {
        Ok(a) => info!(
            replaced = a.replaced.len(),
            pruned = a.pruned.len(),
            "fast path loaded; pinned links adopted"
        ),
        Err(e) => return (None, format!("adopting the pinned links failed: {e}")),
    }
    (
        Some(fp),
        "probe passed (privilege, BTF, conntrack kfuncs, load, tcx, bpffs)".into(),
    )
}

/// Removes every link and map pin (`release`, or a switch back to routes); returns how many
/// links there were. Each tcx link goes with its last pin.
pub fn unpin_all(pin_dir: &Path) -> io::Result<usize> {
    let mut links = 0;
    for (sub, count) in [("links", true), ("maps", false)] {
        let dir = pin_dir.join(sub);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for e in entries {
            fs::remove_file(e?.path())?;
            links += usize::from(count);
        }
    }
    Ok(links)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(&dir.path().join("run/subnet.json"));
        assert_eq!(path, dir.path().join("run/datapath.json"));
        let s = State {
            requested: Datapath::Ebpf,
            mode: Datapath::Routes,
            reason: "Tcx: old kernel".into(),
            pin_dir: "/sys/fs/bpf/hostgw".into(),
            big_tcp: true,
        };
        s.write(&path).unwrap();
        assert_eq!(State::read(&path), Some(s));
        fs::write(&path, b"garbage").unwrap();
        assert_eq!(State::read(&path), None);
    }

    #[test]
    fn routes_mode_unpins_what_an_earlier_run_left() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["links/7", "links/9", "maps/counters"] {
            let p = dir.path().join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"").unwrap();
        }
        let cfg = NetConfig::parse(br#"{"Network":"198.18.0.0/16"}"#).unwrap();
        let (fp, why) = start(Datapath::Routes, dir.path(), &cfg);
        assert!(fp.is_none());
        assert_eq!(why, "--datapath routes");
        assert_eq!(fs::read_dir(dir.path().join("links")).unwrap().count(), 0);
        assert_eq!(unpin_all(dir.path()).unwrap(), 0);
    }

    #[test]
    fn networks_follow_the_config() {
        let cfg = NetConfig::parse(br#"{"Network":"198.18.0.0/16","IPv6Network":"fd18:18::/48"}"#)
            .unwrap();
        let n = networks(&cfg);
        assert_eq!(n.v4.unwrap().to_string(), "198.18.0.0/16");
        assert_eq!(n.v6.unwrap().to_string(), "fd18:18::/48");
    }
}
