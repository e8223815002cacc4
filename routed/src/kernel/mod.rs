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

/// Metric of our `unreachable <own subnet>` route. Far above any metric the kernel or an
/// operator uses (0 for IPv4 connected routes, 256 for IPv6 ones, 1024 for RA/DHCP,
/// ~100-600 for NetworkManager), so a bridge's connected route for the same subnet
/// (`cni0`, bridge mode) always wins and is never refused with `EEXIST` because of ours.
pub const UNREACHABLE_METRIC: u32 = 1_000_000;

/// What an owned route does with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `<dst> via <via>`: to a peer.
    #[default]
    Via,
    /// `unreachable <dst> metric` [`UNREACHABLE_METRIC`]: this node's own subnet, so a
    /// packet for a free address gets ICMP unreachable instead of the default route
    /// (flannel#2245). `via` is the unspecified address.
    Unreachable,
}

/// One owned route in the main table, protocol [`PROTO`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct HostRoute {
    pub dst: IpNetwork,
    pub via: IpAddr,
    /// `RTAX_MTU` of the route (`ip route ... mtu N`): set when a peer's link MTU is below
    /// ours. Part of the route: a route whose mtu drifted is replaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    pub kind: Kind,
}

impl HostRoute {
    /// `<dst> via <via>`, no mtu.
    pub fn via(dst: IpNetwork, via: IpAddr) -> HostRoute {
        HostRoute {
            dst,
            via,
            mtu: None,
            kind: Kind::Via,
        }
    }

    /// `unreachable <dst>`.
    pub fn unreachable(dst: IpNetwork) -> HostRoute {
        let via = if dst.is_ipv4() {
            IpAddr::V4(0.into())
        } else {
            IpAddr::V6(0.into())
        };
        HostRoute {
            dst,
            via,
            mtu: None,
            kind: Kind::Unreachable,
        }
    }

    /// Where the route sits in the kernel's table: its destination and its kind (which
    /// fixes its metric). `NLM_F_REPLACE` only swaps a route in the same slot: at another
    /// metric it would add a second route and leave the old one (a peer's subnet this
    /// node now holds as its own, `unreachable`, is a delete and a create).
    pub fn slot(&self) -> (IpNetwork, Kind) {
        (self.dst, self.kind)
    }

    pub fn with_mtu(self, mtu: Option<u32>) -> HostRoute {
        HostRoute { mtu, ..self }
    }
}

impl fmt::Display for HostRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Via => write!(f, "{} via {}", self.dst, self.via)?,
            Kind::Unreachable => write!(f, "unreachable {}", self.dst)?,
        }
        match self.mtu {
            Some(m) => write!(f, " mtu {m}"),
            None => Ok(()),
        }
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
    /// The uplink holds an IPv6 link-local address: a peer's link-local next hop can be
    /// reached through it (`via fe80::… dev <uplink>`). False while the uplink is unknown.
    pub uplink_link_local: bool,
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
