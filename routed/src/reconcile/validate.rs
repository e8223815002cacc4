//! Don't trust the datastore: turn the leases seen in etcd into peers whose routes are safe
//! to install, and a list of rejected leases with the reason. Pure; O(n log n).

use std::{collections::BTreeMap, net::IpAddr};

use ipnetwork::IpNetwork;
use serde::Serialize;

use super::plan::HostRoute;
use crate::{
    config::NetConfig,
    etcd::codec::{Decoded, Lease, is_canonical_key, key_name},
    kernel::LocalView,
    me::OwnLease,
    net, text,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Bad key (also a non-canonical one such as `198.18.3.0-024`), bad JSON, bad IPv6Subnet.
    Malformed,
    OutsideNetwork,
    Overlap,
    OwnSubnet,
    /// Not a unicast node address outside every pod network.
    BadNextHop,
    /// A `BackendType` other than `host-gw`.
    Backend,
    /// A `NodeName` that is not a DNS-1123 subdomain (control characters, say).
    BadNodeName,
    /// Overlaps a connected prefix or a local-table entry of this node (its own LAN).
    Connected,
    /// A route of another protocol (kernel, boot, static, dhcp, ra, ...) holds the subnet.
    ForeignRoute,
    /// The kernel refused the route itself (found when applying, not here).
    KernelRefused,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::Malformed,
        Reason::OutsideNetwork,
        Reason::Overlap,
        Reason::OwnSubnet,
        Reason::BadNextHop,
        Reason::Backend,
        Reason::BadNodeName,
        Reason::Connected,
        Reason::ForeignRoute,
        Reason::KernelRefused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::OutsideNetwork => "outside-network",
            Reason::Overlap => "overlap",
            Reason::OwnSubnet => "own-subnet",
            Reason::BadNextHop => "bad-next-hop",
            Reason::Backend => "backend",
            Reason::BadNodeName => "bad-node-name",
            Reason::Connected => "connected",
            Reason::ForeignRoute => "foreign-route",
            Reason::KernelRefused => "kernel-refused",
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
    /// The link MTU its lease names (`None`: unknown).
    pub mtu: Option<u32>,
}

/// What a lease is checked against: the config, this node's subnets, addresses and routes.
pub struct Scope<'a> {
    cfg: &'a NetConfig,
    subnets: Vec<IpNetwork>,
    view: &'a LocalView,
}

impl<'a> Scope<'a> {
    /// `own` is the lease this node holds (`None` when it holds none, e.g. in `status`).
    pub fn new(cfg: &'a NetConfig, own: Option<&OwnLease>, view: &'a LocalView) -> Self {
        Scope {
            cfg,
            subnets: own.map(OwnLease::subnets).unwrap_or_default(),
            view,
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Validated {
    pub peers: Vec<Peer>,
    pub rejected: Vec<Rejected>,
}

/// `own` is the lease this node holds (`None` when it holds none, e.g. in `status`);
/// `view` is this node's addresses (never a peer's next hop) and routes (never taken over).
pub fn validate(
    leases: &BTreeMap<String, Decoded>,
    cfg: &NetConfig,
    own: Option<&OwnLease>,
    view: &LocalView,
) -> Validated {
    let scope = Scope::new(cfg, own, view);
    let own_key = own.map(|o| &o.name);
    let mut out = Validated::default();
    let mut candidates = Vec::new();
    for (key, decoded) in leases {
        if Some(key) == own_key {
            continue;
        }
        match check_lease(key, decoded, &scope) {
            Ok(c) => candidates.push(c),
            Err((reason, detail)) => out.rejected.push(Rejected {
                key: key.clone(),
                reason,
                detail,
            }),
        }
    }
    let refs = candidates
        .iter()
        .map(|(c, p)| (*c, p.key.as_str(), &p.routes[..]));
    let outcome = resolve(refs.collect());
    for ((_, peer), overlap) in candidates.into_iter().zip(outcome) {
        match overlap {
            Some(detail) => out.rejected.push(Rejected {
                key: peer.key,
                reason: Reason::Overlap,
                detail,
            }),
            None => out.peers.push(peer),
        }
    }
    out.peers.sort_by(|a, b| a.key.cmp(&b.key));
    out.rejected.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// A candidate for [`resolve`]: its creation revision, key and routes.
pub type Candidate<'a> = (i64, &'a str, &'a [HostRoute]);

/// Of overlapping candidates the one created first keeps its routes (then the smaller
/// key): for each candidate, in the order given, `None` (accepted) or its overlap
/// rejection's detail. The only step of validation that looks at more than one lease.
pub fn resolve(candidates: Vec<Candidate>) -> Vec<Option<String>> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&candidates[a], &candidates[b]);
        (x.0, x.1).cmp(&(y.0, y.1))
    });
    let mut taken = Intervals::default();
    let mut out = vec![None; candidates.len()];
    for i in order {
        let (_, key, routes) = candidates[i];
        match routes.iter().find_map(|r| taken.clash(&r.dst)) {
            Some(other) => out[i] = Some(format!("overlaps the older lease {other}")),
            None => {
                for r in routes {
                    taken.insert(&r.dst, key);
                }
            }
        }
    }
    out
}

/// One lease on its own, as [`validate`] checks it before overlaps: its creation revision
/// and the peer it makes, or why it is rejected.
pub fn check_lease(key: &str, decoded: &Decoded, scope: &Scope) -> Check {
    decoded
        .as_ref()
        .map_err(|e| (Reason::Malformed, e.clone()))
        .and_then(|l| check(key, l, scope))
}

pub type Check = Result<(i64, Peer), (Reason, String)>;

fn check(key: &str, l: &Lease, own: &Scope) -> Check {
    check_record(key, l)?;
    // The key's subnet: IPv4, or IPv6 on an IPv6-only node (whose next hop is PublicIPv6).
    let v6_key = l.subnet.is_ipv6();
    let (via, field) = if v6_key {
        (l.value.public_ipv6, "PublicIPv6")
    } else {
        (l.value.public_ip, "PublicIP")
    };
    let network = own.cfg.pool(v6_key).map(|p| &p.network);
    let via = via.ok_or((Reason::BadNextHop, format!("{} without {field}", l.subnet)))?;
    let mut routes = vec![route(l.subnet, via, network, own)?];
    if let Some(v6) = l.value.ipv6_subnet
        && !net::is_canonical(&v6)
    {
        return Err((
            Reason::Malformed,
            format!("IPv6Subnet {v6} has host bits set"),
        ));
    }
    if let (false, Some(pool), Some(v6)) = (v6_key, &own.cfg.v6, l.value.ipv6_subnet) {
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
        mtu: l.value.mtu,
    };
    Ok((l.created, peer))
}

/// What the record says beyond its addresses: the key in its one canonical spelling, the
/// backend, the node name (empty is allowed: flannel's own leases carry none).
fn check_record(key: &str, l: &Lease) -> Result<(), (Reason, String)> {
    let canonical = key_name(&l.subnet);
    if !is_canonical_key(key, l) {
        return Err((
            Reason::Malformed,
            format!("key is not canonical (the subnet's key is {canonical})"),
        ));
    }
    if l.value.backend_type != "host-gw" {
        return Err((
            Reason::Backend,
            format!(
                "BackendType \"{}\" is not host-gw",
                text::escape(&l.value.backend_type)
            ),
        ));
    }
    if !l.value.node_name.is_empty()
        && let Err(e) = text::check_node_name(&l.value.node_name)
    {
        return Err((Reason::BadNodeName, e.to_string()));
    }
    Ok(())
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
    not_taken(dst, own.view)?;
    next_hop(dst, via, own)?;
    Ok(HostRoute::via(dst, via))
}

/// A next hop must be a unicast node address of the right family, outside every pod
/// network (a pod, even one on this node, must never receive a whole subnet's traffic),
/// not this node and not a connected subnet's network or broadcast address. Whether it
/// is on our L2 segment is decided later, from the kernel (`unreachable`).
fn next_hop(dst: IpNetwork, via: IpAddr, own: &Scope) -> Result<(), (Reason, String)> {
    let bad = |why: String| Err((Reason::BadNextHop, format!("next hop {via} {why}")));
    if net::is_unusable_next_hop(&via) || reserved(&via) || via.is_ipv4() != dst.is_ipv4() {
        return bad(format!("is not a usable unicast address for {dst}"));
    }
    if net::is_link_local(&via) && !own.view.uplink_link_local {
        return bad(
            "is link-local, and this node's uplink has no IPv6 link-local address: a link-local \
             next hop is used only through the uplink, on the link both nodes share"
                .into(),
        );
    }
    if let Some(p) = own.cfg.pools().map(|p| p.network).find(|n| n.contains(via)) {
        return bad(format!("is a pod address (inside the cluster network {p})"));
    }
    if own.view.addrs.contains(&via) {
        return bad("is an address of this node".into());
    }
    if own.view.is_subnet_broadcast(&via) {
        return bad("is the network or broadcast address of a connected subnet".into());
    }
    Ok(())
}

/// Addresses no node on a LAN has, beyond [`net::is_unusable_next_hop`]: IPv4 "this
/// network" (0/8), reserved (240/4) and link-local (169.254/16); IPv6 site-local (fec0::/10),
/// IPv4-mapped (::ffff:0:0/96) and -compatible (::/96), and the discard prefix (100::/64).
/// IPv6 link-local is [`net::is_link_local`].
fn reserved(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            o[0] == 0 || o[0] >= 240 || (o[0] == 169 && o[1] == 254)
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            (s[0] & 0xffc0) == 0xfec0
                || a.to_ipv4_mapped().is_some()
                || s[..6].iter().all(|x| *x == 0)
                || s[..4] == [0x100, 0, 0, 0]
        }
    }
}

/// Routes that are not ours are never replaced: a subnet overlapping this node's own
/// links or local addresses, or held exactly by a route of another protocol, is refused.
fn not_taken(dst: IpNetwork, view: &LocalView) -> Result<(), (Reason, String)> {
    let on_link = view.connected.iter().chain(&view.local);
    if let Some(c) = on_link.into_iter().find(|c| net::overlaps(c, &dst)) {
        return Err((
            Reason::Connected,
            format!("{dst} overlaps {c}, connected or local on this node"),
        ));
    }
    if let Some(a) = view.addrs.iter().find(|a| dst.contains(**a)) {
        return Err((
            Reason::Connected,
            format!("{dst} contains {a}, an address of this node"),
        ));
    }
    if view.foreign.contains(&dst) {
        return Err((
            Reason::ForeignRoute,
            format!("a route of another protocol holds {dst} on this node"),
        ));
    }
    Ok(())
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
