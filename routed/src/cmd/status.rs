//! `hostgw-routed status`: this node's lease, every peer with its route state, drift and
//! rejected leases — computed the way the daemon computes it, from one etcd list and the
//! kernel of the namespace it runs in.

use std::{collections::BTreeMap, fmt::Write, net::IpAddr};

use ipnetwork::IpNetwork;
use serde::Serialize;

use crate::{
    cli::{Common, StatusArgs},
    config::NetConfig,
    error::Error,
    etcd::{self, Entry, EtcdError, Keys, claim, store::Store, subnet},
    kernel::{RouteTable, routes::NetlinkRoutes},
    me::{Me, OwnLease},
    reconcile::{
        compute,
        plan::{self, HostRoute},
        validate::Rejected,
    },
    text,
};

#[derive(Debug, Serialize)]
pub struct Status {
    pub node: String,
    pub config: ConfigView,
    pub lease: Option<OwnView>,
    /// Set when this node holds no lease and no subnet of the pool is free: the daemon
    /// waits for one to be released (`hostgw_subnet_pool_exhausted` 1, not ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_exhausted: Option<String>,
    pub peers: Vec<PeerStatus>,
    pub drift: Drift,
    pub rejected: Vec<Rejected>,
    pub datapath: DatapathView,
    /// The lease cache the next start would resume from, and whether it could.
    pub lease_cache: String,
}

/// The datapath the daemon runs (from its state file) and, with the fast path, each pod's host
/// veth and whether the program is attached there (read from the pins and the kernel).
#[derive(Debug, Default, Serialize)]
pub struct DatapathView {
    /// ebpf | routes | unknown (no state file: the daemon has not started)
    pub mode: String,
    pub requested: String,
    pub reason: String,
    pub big_tcp: bool,
    pub note: Option<&'static str>,
    pub pods: Vec<PodPath>,
}

#[derive(Debug, Serialize)]
pub struct PodPath {
    pub veth: String,
    pub ifindex: u32,
    pub fast_path: bool,
    /// A qdisc on the host veth (bandwidth shaping, tc filters): the pod is left to the stack.
    pub qdisc: Option<String>,
}

const FILTER_NOTE: &str = "nftables forward rules (a NetworkPolicy enforcer's, a host firewall's) do not see \
     fast-pathed pod-to-pod packets; input to the node, NATed flows and traffic leaving the \
     cluster networks still pass through them";

async fn datapath_view(table: &NetlinkRoutes, c: &Common) -> DatapathView {
    use crate::datapath::{Datapath, State, links, state_path};
    let Some(st) = State::read(&state_path(&c.subnet_file)) else {
        return DatapathView {
            mode: "unknown".into(),
            reason: "no datapath state next to the subnet file (daemon not started?)".into(),
            ..DatapathView::default()
        };
    };
    let mut v = DatapathView {
        mode: st.mode.as_str().into(),
        requested: st.requested.as_str().into(),
        reason: st.reason.clone(),
        big_tcp: st.big_tcp,
        note: (st.mode == Datapath::Ebpf).then_some(FILTER_NOTE),
        pods: vec![],
    };
    let pinned = match st.mode {
        Datapath::Ebpf => hostgw_ebpf::pinned_links(&st.pin_dir).unwrap_or_else(|e| {
            v.reason += &format!(" (reading the pins failed: {e})");
            vec![]
        }),
        Datapath::Routes => vec![],
    };
    let all = links::list(table.handle()).await.unwrap_or_default();
    v.pods = all
        .into_iter()
        .filter(|l| l.is_routed_pod())
        .map(|l| PodPath {
            fast_path: pinned.iter().any(|p| p.ifindex == l.ifindex && p.attached),
            veth: l.name,
            ifindex: l.ifindex,
            qdisc: l.qdisc,
        })
        .collect();
    v
}

/// The network config in etcd against the one the daemon runs with (from its subnet file:
/// the daemon never applies a config changed at runtime).
#[derive(Debug, Serialize)]
pub struct ConfigView {
    /// same | changed | deleted | invalid | unknown (no subnet file to compare with)
    pub state: &'static str,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct OwnView {
    pub key: String,
    pub subnet: IpNetwork,
    pub ipv6_subnet: Option<IpNetwork>,
    pub public_ip: Option<IpAddr>,
    pub public_ipv6: Option<IpAddr>,
    pub lease_id: i64,
}

#[derive(Debug, Serialize)]
pub struct PeerStatus {
    pub key: String,
    pub node: String,
    pub dst: IpNetwork,
    pub via: IpAddr,
    /// installed | missing | unreachable
    pub state: &'static str,
    pub gateway: Option<IpAddr>,
    /// The peer's link MTU and ours when they differ; the route then carries the smaller.
    pub mtu_mismatch: Option<compute::MtuMismatch>,
}

#[derive(Debug, Default, Serialize)]
pub struct Drift {
    /// Wanted but absent or with another next hop.
    pub missing: Vec<HostRoute>,
    /// Owned routes nobody leases.
    pub extra: Vec<HostRoute>,
}

/// Our key, by the daemon's own rule (`etcd::claim::own_entry`), preferring the subnet
/// our subnet file names.
pub fn own_key<'a>(
    entries: &'a BTreeMap<String, Entry>,
    me: &Me,
) -> Option<(&'a String, &'a Entry)> {
    claim::own_entry(entries, me, None, me.last.map(|(s, _)| s)).map(|(k, e, _)| (k, e))
}

/// The config to compute with (etcd's if valid, else the running one) and how they compare.
async fn config<S: Store>(
    store: &S,
    keys: &Keys,
    c: &Common,
) -> Result<(NetConfig, ConfigView), Error> {
    let running = hostgw_common::SubnetFile::read(&c.subnet_file)
        .ok()
        .and_then(|f| running_config(&f));
    let show = NetConfig::describe;
    let view = |state, detail: String| ConfigView { state, detail };
    match (etcd::read_config(store, keys).await, running) {
        (Ok(cfg), None) => {
            let v = view(
                "unknown",
                format!("{} (no subnet file to compare with)", show(&cfg)),
            );
            Ok((cfg, v))
        }
        (Ok(cfg), Some(run)) => {
            // Only the families the subnet file names: a dual-stack cluster's node without
            // an IPv6 address runs IPv4 only.
            let same = run.pools().all(|p| {
                cfg.pool(p.v6())
                    .is_some_and(|q| q.network == p.network && q.subnet_len == p.subnet_len)
            });
            let v = match same {
                true => view("same", show(&cfg)),
                false => view(
                    "changed",
                    format!(
                        "etcd has {}; the daemon runs with {}: restart the daemons to apply it",
                        show(&cfg),
                        show(&run)
                    ),
                ),
            };
            Ok((cfg, v))
        }
        (Err(EtcdError::NoConfig(k)), Some(run)) => {
            let v = view(
                "deleted",
                format!("{k} is gone; the daemon runs with {}", show(&run)),
            );
            Ok((run, v))
        }
        (Err(EtcdError::Config(e)), Some(run)) => {
            let v = view(
                "invalid",
                format!("{e}; the daemon runs with {}", show(&run)),
            );
            Ok((run, v))
        }
        (Err(e), _) => Err(e.into()),
    }
}

/// The config the daemon runs with, as far as its subnet file tells (networks and lengths).
fn running_config(f: &hostgw_common::SubnetFile) -> Option<NetConfig> {
    let mut fields = vec![];
    if let (Some(n), Some(s)) = (f.network, f.subnet) {
        fields.push(format!(r#""Network":"{n}","SubnetLen":{}"#, s.prefix()));
    }
    if let (Some(n), Some(s)) = (f.ipv6_network, f.ipv6_subnet) {
        fields.push(format!(
            r#""IPv6Network":"{n}","IPv6SubnetLen":{}"#,
            s.prefix()
        ));
    }
    NetConfig::parse(format!("{{{}}}", fields.join(",")).as_bytes()).ok()
}

pub async fn status(args: &StatusArgs) -> Result<String, Error> {
    let c = &args.common;
    let table = NetlinkRoutes::connect()?;
    let (me, _) = super::me(&table, c).await?;
    let keys = Keys::new(&c.etcd_prefix);
    let store = etcd::connect_reachable(c).await?;
    let (cfg, config) = config(&store, &keys, c).await?;
    let (header, entries) = etcd::list(&store, &keys).await?;
    let own = own_key(&entries, &me).and_then(|(k, e)| {
        let l = e.decoded.as_ref().ok()?;
        Some(OwnView {
            key: k.clone(),
            subnet: l.subnet,
            ipv6_subnet: l.value.ipv6_subnet,
            public_ip: l.value.public_ip,
            public_ipv6: l.value.public_ipv6,
            lease_id: e.lease_id,
        })
    });
    let pool_exhausted = match own {
        Some(_) => None,
        None => exhausted(&cfg, &entries),
    };
    let leases = entries.into_iter().map(|(k, e)| (k, e.decoded)).collect();
    let held = own.as_ref().map(|o| OwnLease {
        name: o.key.clone(),
        subnet: o.subnet,
        ipv6_subnet: o.ipv6_subnet,
        lease_id: o.lease_id,
    });
    let here = compute::Here {
        own: held.as_ref(),
        mtu: me.mtu,
    };
    let computed = compute::compute(&table, &cfg, here, &leases).await?;
    let actual = table.list_owned().await?;
    let p = plan::plan(&computed.desired, &actual);
    let peers = computed
        .peers
        .iter()
        .flat_map(|peer| {
            peer.routes.iter().map(|r| PeerStatus {
                key: peer.key.clone(),
                node: peer.node.clone(),
                dst: r.dst,
                via: r.via,
                state: match (&peer.unreachable_via, actual.contains(r)) {
                    (Some(_), _) => "unreachable",
                    (None, true) => "installed",
                    (None, false) => "missing",
                },
                gateway: peer.unreachable_via.flatten(),
                mtu_mismatch: peer.mtu_mismatch,
            })
        })
        .collect();
    let status = Status {
        node: c.node_name.clone(),
        config,
        lease: own,
        pool_exhausted,
        peers,
        drift: Drift {
            missing: p.writes().copied().collect(),
            extra: p.remove,
        },
        rejected: computed.rejected,
        datapath: datapath_view(&table, c).await,
        lease_cache: cache_view(c, &keys, &header),
    };
    Ok(if args.json {
        text::escape_json(&serde_json::to_string_pretty(&status).unwrap_or_default()) + "\n"
    } else {
        render(&status)
    })
}

/// "all N subnets of <network> are leased" when no subnet is free for this node.
fn exhausted(cfg: &NetConfig, entries: &BTreeMap<String, Entry>) -> Option<String> {
    let taken: Vec<IpNetwork> = entries
        .keys()
        .filter_map(|k| etcd::codec::parse_key(k).ok())
        .flat_map(|(a, b)| std::iter::once(a).chain(b))
        .collect();
    // The pool a node's key is claimed from (IPv4, or IPv6 in an IPv6-only cluster).
    let pool = cfg.primary();
    let free = subnet::choose(
        pool,
        &subnet::Taken::new(pool, &taken),
        None,
        &mut rand::rng(),
    );
    free.is_none().then(|| {
        let n = taken.iter().filter(|t| subnet::in_pool(pool, t)).count();
        format!("all {n} subnets of {} are leased", pool.network)
    })
}

/// Text for a terminal: every string that came from etcd (node names, keys, details that
/// quote keys) goes through [`text::escape`], so no record can forge a line or send an
/// escape sequence. Addresses and prefixes are parsed values and print as themselves.
/// Whether the next start could resume from the lease cache, read as the daemon reads it.
fn cache_view(c: &Common, keys: &Keys, now: &etcd::store::Header) -> String {
    let cache = etcd::cache::LeaseCache {
        path: c.lease_cache_path(),
        prefix: keys.prefix.clone(),
        node: c.node_name.clone(),
        every: etcd::cache::WRITE_EVERY,
    };
    let path = cache.path.display().to_string();
    let age = std::fs::metadata(&cache.path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map_or(String::new(), |d| {
            format!(", written {} s ago", d.as_secs())
        });
    match cache.read() {
        Ok(None) => format!("none at {path}: the next start lists every lease"),
        Err(why) => format!("{why}: the next start lists every lease"),
        Ok(Some(l)) => {
            let (rev, n) = (l.revision(), l.leases());
            match l.check(now) {
                Ok(()) => format!(
                    "{path}: {n} leases at revision {rev} (etcd at {}){age}; the next start resumes from it (lists once if etcd compacted past it)",
                    now.revision
                ),
                Err(why) => format!("{path}: {why}; the next start lists every lease"),
            }
        }
    }
}

pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let loud = if s.config.state == "same" { "" } else { " (!)" };
    let detail = text::escape(&s.config.detail);
    let _ = writeln!(o, "config: {}{loud}: {detail}", s.config.state);
    match &s.lease {
        Some(l) => {
            let v6 = l.ipv6_subnet.map(|n| format!(" + {n}")).unwrap_or_default();
            // IPv4's next hop, or IPv6's on an IPv6-only node.
            let via = l.public_ip.or(l.public_ipv6).map(|ip| ip.to_string());
            let _ = writeln!(
                o,
                "node {}: subnet {}{v6} via {} (etcd lease {:x})",
                text::escape(&s.node),
                l.subnet,
                via.unwrap_or_default(),
                l.lease_id
            );
        }
        None => {
            let why = match &s.pool_exhausted {
                Some(d) => format!(": subnet pool exhausted ({d}); waiting for a release"),
                None => String::new(),
            };
            let _ = writeln!(o, "node {}: NO LEASE in etcd{why}", text::escape(&s.node));
        }
    }
    // One row per route: a dual-stack peer has two.
    let nodes: std::collections::BTreeSet<&str> = s.peers.iter().map(|p| p.key.as_str()).collect();
    let _ = writeln!(o, "\npeers ({}, {} routes):", nodes.len(), s.peers.len());
    for p in &s.peers {
        let gw = p
            .gateway
            .map(|g| format!(" (behind router {g})"))
            .unwrap_or_default();
        let mtu = p
            .mtu_mismatch
            .map(|m| {
                let lower = m.own.min(m.peer);
                format!(" mtu {lower} (peer {}, ours {})", m.peer, m.own)
            })
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "  {:<16} {:<22} via {:<16} {}{gw}{mtu}",
            text::escape(&p.node),
            p.dst.to_string(),
            p.via.to_string(),
            p.state
        );
    }
    let _ = write!(o, "\ndrift: ");
    if s.drift.missing.is_empty() && s.drift.extra.is_empty() {
        let _ = writeln!(o, "none");
    } else {
        let _ = writeln!(
            o,
            "{} missing, {} extra",
            s.drift.missing.len(),
            s.drift.extra.len()
        );
        for r in &s.drift.missing {
            let _ = writeln!(o, "  missing  {r}");
        }
        for r in &s.drift.extra {
            let _ = writeln!(o, "  extra    {r}");
        }
    }
    let _ = writeln!(o, "\nrejected leases ({}):", s.rejected.len());
    for r in &s.rejected {
        let _ = writeln!(
            o,
            "  {:<22} {:<16} {}",
            text::escape(&r.key),
            r.reason.as_str(),
            text::escape(&r.detail)
        );
    }
    render_datapath(&mut o, &s.datapath);
    let _ = writeln!(o, "\nlease cache: {}", text::escape(&s.lease_cache));
    o
}

fn render_datapath(o: &mut String, d: &DatapathView) {
    let asked = match d.requested.is_empty() {
        true => String::new(),
        false => format!(" (asked: {})", d.requested),
    };
    let big = if d.big_tcp { ", BIG TCP" } else { "" };
    let loud = if d.mode != d.requested { " (!)" } else { "" };
    let reason = text::escape(&d.reason);
    let _ = writeln!(o, "\ndatapath: {}{asked}{big}{loud}: {reason}", d.mode);
    if let Some(n) = d.note {
        let _ = writeln!(o, "  note: {n}");
    }
    if d.mode != "ebpf" {
        return;
    }
    let on = d.pods.iter().filter(|p| p.fast_path).count();
    let _ = writeln!(
        o,
        "  pod veths ({}, {on} with the fast path):",
        d.pods.len()
    );
    for p in &d.pods {
        let state = match (p.fast_path, &p.qdisc) {
            (true, _) => "attached".to_owned(),
            (false, Some(q)) => format!(
                "not attached: qdisc {} on the veth, the stack carries it",
                text::escape(q)
            ),
            (false, None) => "NOT attached".to_owned(),
        };
        let _ = writeln!(
            o,
            "    {:<16} ifindex {:<6} {state}",
            text::escape(&p.veth),
            p.ifindex
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::validate::Reason;

    #[test]
    fn text_from_etcd_cannot_forge_lines_or_drive_the_terminal() {
        let evil = "n\n  node-9           198.18.9.0/24          via 198.19.0.9       installed\x1b[2J\u{9b}31m";
        let s = Status {
            node: "node-0".into(),
            config: ConfigView {
                state: "invalid",
                detail: evil.into(),
            },
            lease: None,
            pool_exhausted: None,
            peers: vec![PeerStatus {
                key: evil.into(),
                node: evil.into(),
                dst: "198.18.5.0/24".parse().unwrap(),
                via: "198.19.0.5".parse().unwrap(),
                state: "installed",
                gateway: None,
                mtu_mismatch: None,
            }],
            drift: Drift::default(),
            rejected: vec![Rejected {
                key: evil.into(),
                reason: Reason::Overlap,
                detail: format!("overlaps the older lease {evil}"),
            }],
            datapath: DatapathView::default(),
            // The cache line quotes a file and its parse error: escaped like the rest.
            lease_cache: evil.into(),
        };
        let out = render(&s);
        assert_eq!(out.lines().count(), 14, "{out}");
        assert!(!out.contains("\n  node-9"), "{out}");
        assert!(out.chars().all(|c| c == '\n' || !c.is_control()), "{out:?}");
        let json = text::escape_json(&serde_json::to_string_pretty(&s).unwrap());
        assert!(json.chars().all(|c| c == '\n' || !c.is_control()), "{json}");
    }

    #[test]
    fn datapath_section_shows_each_pod_veth_and_the_filter_note() {
        let mut o = String::new();
        render_datapath(
            &mut o,
            &DatapathView {
                mode: "ebpf".into(),
                requested: "ebpf".into(),
                reason: "probe passed".into(),
                big_tcp: true,
                note: Some(FILTER_NOTE),
                pods: vec![
                    PodPath {
                        veth: "hgw5f27bec41cf4".into(),
                        ifindex: 7,
                        fast_path: true,
                        qdisc: None,
                    },
                    PodPath {
                        veth: "hgw000000000009".into(),
                        ifindex: 9,
                        fast_path: false,
                        qdisc: None,
                    },
                    PodPath {
                        veth: "hgw00000000000a".into(),
                        ifindex: 10,
                        fast_path: false,
                        qdisc: Some("ingress".into()),
                    },
                ],
            },
        );
        assert!(
            o.contains("datapath: ebpf (asked: ebpf), BIG TCP: probe passed"),
            "{o}"
        );
        assert!(o.contains("do not see"), "{o}");
        assert!(o.contains("pod veths (3, 1 with the fast path)"), "{o}");
        assert!(
            o.contains("hgw000000000009  ifindex 9      NOT attached"),
            "{o}"
        );
        assert!(
            o.contains(
                "ifindex 10     not attached: qdisc ingress on the veth, the stack carries it"
            ),
            "{o}"
        );
        let mut o = String::new();
        render_datapath(
            &mut o,
            &DatapathView {
                mode: "routes".into(),
                requested: "ebpf".into(),
                reason: "Tcx: old kernel".into(),
                ..DatapathView::default()
            },
        );
        assert_eq!(o, "\ndatapath: routes (asked: ebpf) (!): Tcx: old kernel\n");
    }
}
