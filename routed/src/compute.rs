//! From the lease map and the kernel's view of this node to the routes we want, with the
//! state of every peer. Shared by the reconciler and `hostgw-routed status`.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use ipnetwork::IpNetwork;
use serde::Serialize;

use crate::{
    config::NetConfig,
    kernel::{self, KernelError, NextHop, RouteTable},
    plan::HostRoute,
    source::watch::Leases,
    validate::{self, Own, Rejected},
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

/// This node, for validation: its key and subnets.
pub struct Me<'a> {
    pub cfg: &'a NetConfig,
    pub key: &'a str,
    pub subnets: Vec<IpNetwork>,
}

pub async fn compute<R: RouteTable>(
    table: &R,
    me: &Me<'_>,
    leases: &Leases,
) -> Result<Computed, KernelError> {
    let view = table.local_view().await?;
    let own = Own {
        cfg: me.cfg,
        key: me.key,
        subnets: me.subnets.clone(),
        addrs: &view.addrs,
    };
    let v = validate::validate(leases, &own);
    // Only peers outside every connected prefix cost a lookup (none on a flat segment).
    let hops = kernel::needs_lookup(
        &view,
        v.peers.iter().flat_map(|p| p.routes.iter().map(|r| &r.via)),
    );
    let mut behind_router: HashMap<IpAddr, Option<IpAddr>> = HashMap::new();
    for ip in hops {
        if let NextHop::ViaGateway(gw) = table.lookup(ip).await? {
            behind_router.insert(ip, gw);
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
    Ok(out)
}
