//! The kernel, as routed sees it: owned routes, local addresses, connected prefixes and
//! next-hop lookups, behind one trait so the reconciler can run against a fake.

use std::{
    collections::{BTreeSet, HashSet},
    fmt,
    future::Future,
    net::IpAddr,
};

use ipnetwork::IpNetwork;

use serde::Serialize;

pub mod batch;
pub(crate) mod dump;
pub mod events;
#[cfg(test)]
pub mod fake;
pub mod identity;
pub mod message;
pub mod nft;
pub mod routes;

/// Route protocol number that marks routes as ours (`/etc/iproute2/rt_protos.d/hostgw.conf`:
/// `75 hostgw`). Every owned route carries it; nothing else is ever touched.
pub const PROTO: u8 = 75;

/// One owned route: `<dst> via <via>` in the main table, protocol [`PROTO`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct HostRoute {
    pub dst: IpNetwork,
    pub via: IpAddr,
}

impl fmt::Display for HostRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} via {}", self.dst, self.via)
    }
}

/// Per-route outcome of a batch of replaces.
pub type Results = Vec<(HostRoute, Result<(), KernelError>)>;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        source: rtnetlink::Error,
    },
    #[error("{op}: errno {errno}")]
    Errno { op: String, errno: i32 },
    #[error("open netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
    /// A route that cannot even be put into a message (bad prefix or next hop).
    #[error("{0}")]
    Route(String),
}

impl KernelError {
    /// The kernel refused this one route for what it says (a next hop it won't use, a
    /// destination another route holds), as opposed to a failure of this node (socket,
    /// memory, permission). Only the latter is about this node's readiness.
    pub fn is_route_specific(&self) -> bool {
        // EEXIST, EINVAL, ENETUNREACH, EHOSTUNREACH, ERANGE, ENODEV, EAFNOSUPPORT, EADDRNOTAVAIL.
        const ROUTE: [i32; 8] = [17, 22, 101, 113, 34, 19, 97, 99];
        match self {
            KernelError::Netlink {
                source: rtnetlink::Error::NetlinkError(e),
                ..
            } => ROUTE.contains(&e.raw_code().abs()),
            KernelError::Errno { errno, .. } => ROUTE.contains(&errno.abs()),
            KernelError::Route(_) => true,
            _ => false,
        }
    }
}

/// What reachability needs to know about this node, from one address and route dump.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalView {
    pub addrs: HashSet<IpAddr>,
    /// Prefixes of routes without a gateway in the main table (connected subnets), not ours.
    pub connected: Vec<IpNetwork>,
    /// Destinations held by routes that are not ours: main-table routes of any other
    /// protocol and type (kernel, boot, static, dhcp, ra; unicast, blackhole, ...), and
    /// every entry of the local table (local, broadcast, anycast). Never replaced or deleted.
    pub foreign: BTreeSet<IpNetwork>,
    /// Local-table destinations (this node's addresses, broadcast addresses, `local` routes):
    /// a lease overlapping one would steer traffic meant for this node.
    pub local: Vec<IpNetwork>,
}

/// How a next hop is reached, from a route lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextHop {
    /// On a link of ours: usable as a host-gw next hop.
    OnLink,
    /// Only through a router (the lookup shows this gateway), or not at all.
    ViaGateway(Option<IpAddr>),
}

#[allow(async_fn_in_trait)]
pub trait RouteTable {
    /// Our routes (protocol [`PROTO`], main table).
    fn list_owned(&self) -> impl Future<Output = Result<BTreeSet<HostRoute>, KernelError>>;
    /// Overwrites our route for `r.dst` (a changed next hop, swapped in one step).
    fn replace(&self, r: &HostRoute) -> impl Future<Output = Result<(), KernelError>>;
    /// Installs a route for a destination we hold no route for, with `NLM_F_EXCL`: if any
    /// route (of any protocol) appeared there meanwhile, the kernel answers `EEXIST` and
    /// that route stays as it is. Never takes a route over.
    fn create(&self, r: &HostRoute) -> impl Future<Output = Result<(), KernelError>>;
    /// Deletes our route; a route already gone is success.
    fn delete(&self, r: &HostRoute) -> impl Future<Output = Result<(), KernelError>>;
    /// Replaces many routes; implementations may batch. Default: one `replace` each,
    /// many in flight.
    async fn replace_all(&self, routes: &[HostRoute]) -> Results {
        use futures::{StreamExt, stream};
        stream::iter(routes)
            .map(move |r| async move { (*r, self.replace(r).await) })
            .buffer_unordered(128)
            .collect::<Vec<_>>()
            .await
    }
    /// Deletes many of our routes; implementations may batch.
    async fn delete_all(&self, routes: &[HostRoute]) -> Results {
        use futures::{StreamExt, stream};
        stream::iter(routes)
            .map(move |r| async move { (*r, self.delete(r).await) })
            .buffer_unordered(128)
            .collect::<Vec<_>>()
            .await
    }
    /// Creates many routes (see [`RouteTable::create`]); implementations may batch.
    async fn create_all(&self, routes: &[HostRoute]) -> Results {
        use futures::{StreamExt, stream};
        stream::iter(routes)
            .map(move |r| async move { (*r, self.create(r).await) })
            .buffer_unordered(128)
            .collect::<Vec<_>>()
            .await
    }
    fn local_view(&self) -> impl Future<Output = Result<LocalView, KernelError>>;
    /// `ip route get <ip>`.
    fn lookup(&self, ip: IpAddr) -> impl Future<Output = Result<NextHop, KernelError>>;
}

impl LocalView {
    /// A peer inside a directly connected prefix needs no lookup.
    pub fn is_connected(&self, ip: &IpAddr) -> bool {
        self.connected.iter().any(|n| n.contains(*ip))
    }

    /// `ip` is the network or broadcast address of a connected IPv4 prefix: the kernel
    /// refuses it as a gateway, and it is no node.
    pub fn is_subnet_broadcast(&self, ip: &IpAddr) -> bool {
        self.connected.iter().any(|n| match (n, ip) {
            (IpNetwork::V4(n), IpAddr::V4(a)) => {
                n.prefix() < 31 && n.contains(*a) && (*a == n.network() || *a == n.broadcast())
            }
            _ => false,
        })
    }
}

/// Sorts next hops into those known on-link from the connected prefixes and those that
/// need a kernel lookup. With thousands of peers on one segment the second list is empty,
/// so convergence costs no per-peer round trip.
pub fn needs_lookup<'a>(
    view: &LocalView,
    hops: impl IntoIterator<Item = &'a IpAddr>,
) -> Vec<IpAddr> {
    let set: BTreeSet<IpAddr> = hops
        .into_iter()
        .filter(|ip| !view.is_connected(ip))
        .copied()
        .collect();
    set.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connected_peers_skip_the_lookup() {
        let view = LocalView {
            connected: vec![
                "198.19.0.0/24".parse().unwrap(),
                "fd19:19::/64".parse().unwrap(),
            ],
            ..LocalView::default()
        };
        let hops: Vec<IpAddr> = ["198.19.0.2", "198.19.1.2", "fd19:19::2", "198.19.1.2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            needs_lookup(&view, &hops),
            vec!["198.19.1.2".parse::<IpAddr>().unwrap()]
        );
    }
}
