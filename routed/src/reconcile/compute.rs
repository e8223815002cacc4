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
}

#[derive(Debug, Clone, Default)]
pub struct Computed {
    pub desired: BTreeSet<HostRoute>,
    pub peers: Vec<PeerView>,
    pub rejected: Vec<Rejected>,
}

impl Computed {
    pub fn unreachable(&self) -> impl Iterator<Item = &PeerView> {
        self.peers.iter().filter(|p| p.unreachable_via.is_some())
    }
}

/// `own` is the lease this node holds (`None` for `status` on a node without one).
pub async fn compute<R: RouteTable>(
    table: &R,
    cfg: &NetConfig,
    own: Option<&OwnLease>,
    leases: &Leases,
) -> Result<Computed, KernelError> {
    let view = table.local_view().await?;
    Ok(compute_in(table, cfg, own, leases, &view).await)
}

/// [`compute`] against a view of this node already read.
pub async fn compute_in<R: RouteTable>(
    table: &R,
    cfg: &NetConfig,
    own: Option<&OwnLease>,
    leases: &Leases,
    view: &LocalView,
) -> Computed {
    let v = validate::validate(leases, cfg, own, view);
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
        ..Computed::default()
    };
    for p in v.peers {
        let unreachable_via = p
            .routes
            .iter()
            .find_map(|r| behind_router.get(&r.via).copied());
        if unreachable_via.is_none() {
            out.desired.extend(p.routes.iter().copied());
        }
        out.peers.push(PeerView {
            key: p.key,
            node: p.node,
            routes: p.routes,
            unreachable_via,
        });
    }
    out
}
