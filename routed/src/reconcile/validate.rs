//! Don't trust the datastore: turn the leases seen in etcd into peers whose routes are safe
//! to install, and a list of rejected leases with the reason. Pure; O(n log n).

use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
};

use ipnetwork::IpNetwork;
use serde::Serialize;

use super::plan::HostRoute;
use crate::{
    config::NetConfig,
    etcd::codec::{Decoded, Lease},
    me::OwnLease,
    net,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Malformed,
    OutsideNetwork,
    Overlap,
    OwnSubnet,
    BadNextHop,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::Malformed,
        Reason::OutsideNetwork,
        Reason::Overlap,
        Reason::OwnSubnet,
        Reason::BadNextHop,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::OutsideNetwork => "outside-network",
            Reason::Overlap => "overlap",
            Reason::OwnSubnet => "own-subnet",
            Reason::BadNextHop => "bad-next-hop",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejected {
    pub key: String,
    pub reason: Reason,
    pub detail: String,
}

/// A peer node whose lease passed validation; `routes` holds one route per family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Peer {
    pub key: String,
    pub node: String,
    pub routes: Vec<HostRoute>,
}

/// What a lease is checked against: the config, this node's subnets and addresses.
struct Scope<'a> {
    cfg: &'a NetConfig,
    subnets: Vec<IpNetwork>,
    addrs: &'a HashSet<IpAddr>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Validated {
    pub peers: Vec<Peer>,
    pub rejected: Vec<Rejected>,
}

/// `own` is the lease this node holds (`None` when it holds none, e.g. in `status`);
/// `addrs` are this node's addresses (never a peer's next hop).
pub fn validate(
    leases: &BTreeMap<String, Decoded>,
    cfg: &NetConfig,
    own: Option<&OwnLease>,
    addrs: &HashSet<IpAddr>,
) -> Validated {
    let scope = Scope {
        cfg,
        subnets: own.map(OwnLease::subnets).unwrap_or_default(),
        addrs,
    };
    let own_key = own.map(|o| &o.name);
    let own = &scope;
    let mut out = Validated::default();
    let mut candidates = Vec::new();
    for (key, decoded) in leases {
        if Some(key) == own_key {
            continue;
        }
        match decoded
            .as_ref()
            .map_err(|e| (Reason::Malformed, e.clone()))
            .and_then(|l| check(key, l, own))
        {
            Ok(c) => candidates.push(c),
            Err((reason, detail)) => out.rejected.push(Rejected {
                key: key.clone(),
                reason,
                detail,
            }),
        }
    }
    // Older leases first: of two overlapping leases the one created first keeps its route.
    candidates.sort_by_key(|(created, p): &(i64, Peer)| (*created, p.key.clone()));
    let mut taken = Intervals::default();
    for (_, peer) in candidates {
        match peer.routes.iter().find_map(|r| taken.clash(&r.dst)) {
            Some(other) => out.rejected.push(Rejected {
                key: peer.key.clone(),
                reason: Reason::Overlap,
                detail: format!("overlaps the older lease {other}"),
            }),
            None => {
                for r in &peer.routes {
                    taken.insert(&r.dst, &peer.key);
                }
                out.peers.push(peer);
            }
        }
    }
    out.peers.sort_by(|a, b| a.key.cmp(&b.key));
    out.rejected.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

type Check = Result<(i64, Peer), (Reason, String)>;

fn check(key: &str, l: &Lease, own: &Scope) -> Check {
    let mut routes = vec![route(
        l.subnet,
        l.value.public_ip,
        Some(&own.cfg.v4.network),
        own,
    )?];
    if let (Some(pool), Some(v6)) = (&own.cfg.v6, l.value.ipv6_subnet) {
        let via = l
            .value
            .public_ipv6
            .ok_or((Reason::BadNextHop, "IPv6Subnet without PublicIPv6".into()))?;
        routes.push(route(v6, via, Some(&pool.network), own)?);
    }
    let peer = Peer {
        key: key.to_owned(),
        node: l.value.node_name.clone(),
        routes,
    };
    Ok((l.created, peer))
}

fn route(
    dst: IpNetwork,
    via: IpAddr,
    network: Option<&IpNetwork>,
    own: &Scope,
) -> Result<HostRoute, (Reason, String)> {
    match network {
        Some(n) if net::within(&dst, n) && dst.prefix() > n.prefix() => {}
        _ => {
            return Err((
                Reason::OutsideNetwork,
                format!("{dst} is not a subnet of the cluster network"),
            ));
        }
    }
    if let Some(mine) = own.subnets.iter().find(|s| net::overlaps(s, &dst)) {
        return Err((
            Reason::OwnSubnet,
            format!("{dst} overlaps this node's subnet {mine}"),
        ));
    }
    if net::is_unusable_next_hop(&via) || via.is_ipv4() != dst.is_ipv4() {
        return Err((
            Reason::BadNextHop,
            format!("next hop {via} is not a usable unicast address for {dst}"),
        ));
    }
    if own.addrs.contains(&via) {
        return Err((
            Reason::BadNextHop,
            format!("next hop {via} is an address of this node"),
        ));
    }
    Ok(HostRoute { dst, via })
}

/// Disjoint intervals keyed by (family, start) → (end, owner).
#[derive(Default)]
struct Intervals(BTreeMap<(bool, u128), (u128, String)>);

impl Intervals {
    fn clash(&self, n: &IpNetwork) -> Option<String> {
        let (v6, start, end) = net::range(n);
        // The closest interval starting at or before our end is the only candidate,
        // because stored intervals are disjoint.
        let (&(f, s), (e, owner)) = self.0.range(..=(v6, end)).next_back()?;
        (f == v6 && s <= end && *e >= start).then(|| owner.clone())
    }

    fn insert(&mut self, n: &IpNetwork, owner: &str) {
        let (v6, start, end) = net::range(n);
        self.0.insert((v6, start), (end, owner.to_owned()));
    }
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
