//! From the lease map and the kernel's view of this node to the routes we want, with the
//! state of every peer. Shared by the reconciler and `hostgw-routed status`.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use serde::Serialize;

use super::{
    plan::HostRoute,
    validate::{self, Rejected},
};
use crate::{
    config::NetConfig,
    etcd::watch::Leases,
    kernel::{self, KernelError, LocalView, NextHop, RouteTable},
    me::OwnLease,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerView {
    pub key: String,
    pub node: String,
    pub routes: Vec<HostRoute>,
    /// Set when a next hop is reached only through a router: the peer is not installed.
    pub unreachable_via: Option<Option<IpAddr>>,
    /// The peer's link MTU when it differs from ours (its routes carry the smaller one).
    pub mtu_mismatch: Option<MtuMismatch>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MtuMismatch {
    pub own: u32,
    pub peer: u32,
}

/// This node as compute sees it: the lease it holds (`None` for `status` on a node
/// without one) and its uplink's MTU (`None`: unknown, no route carries an mtu).
#[derive(Debug, Clone, Copy, Default)]
pub struct Here<'a> {
    pub own: Option<&'a OwnLease>,
    pub mtu: Option<u32>,
}

/// `mtu min(own, peer)` on the route to a peer whose link MTU differs from ours: a
/// jumbo-frame node then sends a 1500 node packets it can take (or an ICMP "fragmentation
/// needed" to the sender), instead of frames the peer's NIC drops unseen.
pub(crate) fn mtu_mismatch(own: Option<u32>, peer: Option<u32>) -> Option<MtuMismatch> {
    match (own, peer) {
        (Some(own), Some(peer)) if own != peer => Some(MtuMismatch { own, peer }),
        _ => None,
    }
}

/// `unreachable <own subnet>` for each subnet this node holds: a packet for a free address
/// of it is answered with ICMP unreachable here instead of leaving by the default route
/// (flannel#2245). The per-pod /32 routes are more specific, and a bridge's connected route
/// for the subnet has a lower metric: both win over it.
pub fn own_unreachable(own: Option<&OwnLease>) -> Vec<HostRoute> {
    own.map(OwnLease::subnets)
        .unwrap_or_default()
        .into_iter()
        .map(HostRoute::unreachable)
        .collect()
}

#[derive(Debug, Clone, Default)]
pub struct Computed {
    pub desired: BTreeSet<HostRoute>,
    pub peers: Vec<PeerView>,
    pub rejected: Vec<Rejected>,
}

pub async fn compute<R: RouteTable>(
    table: &R,
    cfg: &NetConfig,
    here: Here<'_>,
    leases: &Leases,
) -> Result<Computed, KernelError> {
    let view = table.local_view().await?;
    Ok(compute_in(table, cfg, here, leases, &view).await)
}

/// [`compute`] against a view of this node already read.
pub async fn compute_in<R: RouteTable>(
    table: &R,
    cfg: &NetConfig,
    here: Here<'_>,
    leases: &Leases,
    view: &LocalView,
) -> Computed {
    let v = validate::validate(leases, cfg, here.own, view);
    // Only peers outside every connected prefix cost a lookup (none on a flat segment).
    let hops = kernel::needs_lookup(
        view,
        v.peers.iter().flat_map(|p| p.routes.iter().map(|r| &r.via)),
    );
    let mut behind_router: HashMap<IpAddr, Option<IpAddr>> = HashMap::new();
    for ip in hops {
        // One failed lookup makes one peer unreachable, never the whole pass a failure:
        // what a lease names must not decide this node's readiness.
        match table.lookup(ip).await {
            Ok(NextHop::ViaGateway(gw)) => {
                behind_router.insert(ip, gw);
            }
            Ok(NextHop::OnLink) => {}
            Err(e) => {
                tracing::debug!(%ip, error = %e, "next-hop lookup failed");
                behind_router.insert(ip, None);
            }
        }
    }
    let mut out = Computed {
        rejected: v.rejected,
        desired: own_unreachable(here.own).into_iter().collect(),
        ..Computed::default()
    };
    for p in v.peers {
        let unreachable_via = p
            .routes
            .iter()
            .find_map(|r| behind_router.get(&r.via).copied());
        let mtu_mismatch = mtu_mismatch(here.mtu, p.mtu);
        let mtu = mtu_mismatch.map(|m| m.own.min(m.peer));
        let routes: Vec<HostRoute> = p.routes.iter().map(|r| r.with_mtu(mtu)).collect();
        if unreachable_via.is_none() {
            out.desired.extend(routes.iter().copied());
        }
        out.peers.push(PeerView {
            key: p.key,
            node: p.node,
            routes,
            unreachable_via,
            mtu_mismatch,
        });
    }
    out
}
