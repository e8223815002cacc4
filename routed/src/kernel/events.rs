//! Netlink route, address and link events: anything that could have changed our routes or
//! the reachability of a peer kicks the reconciler. Our own route additions are ignored,
//! so applying a plan does not wake us again.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ipnetwork::IpNetwork;

use futures::StreamExt;
use rtnetlink::{
    MulticastGroup,
    packet_core::NetlinkPayload,
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        address::{AddressAttribute, AddressScope},
        link::LinkAttribute,
        route::{
            RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        },
    },
};
use tokio::sync::Notify;
use tracing::warn;

use tokio_util::sync::CancellationToken;

use crate::kernel::PROTO;

const GROUPS: [MulticastGroup; 5] = [
    MulticastGroup::Link,
    MulticastGroup::Ipv4Route,
    MulticastGroup::Ipv6Route,
    MulticastGroup::Ipv4Ifaddr,
    MulticastGroup::Ipv6Ifaddr,
];

/// Host veths of the `hostgw` plugin: `hgw` + 12 hex digits. Pods come and go all day;
/// their links, gateway addresses and /32 routes never change how peers are reached.
use hostgw_common::veth::HOST_VETH_PREFIX as POD_LINK_PREFIX;

/// Whether a kernel event could change our routes or a peer's reachability. Our own route
/// additions are ignored (applying a plan must not wake us again), and so is the plumbing
/// of a pod: otherwise every pod ADD or DEL on a node with 5,000 peers would cost a full
/// reconcile pass. The slow resync still covers anything filtered out here.
pub fn relevant(m: &RouteNetlinkMessage) -> bool {
    match m {
        RouteNetlinkMessage::NewRoute(r) => {
            r.header.protocol != RouteProtocol::Other(PROTO) && !pod_plumbing_route(r)
        }
        RouteNetlinkMessage::DelRoute(r) => {
            r.header.protocol == RouteProtocol::Other(PROTO) || !pod_plumbing_route(r)
        }
        RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l) => !l
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::IfName(n) if n.starts_with(POD_LINK_PREFIX))),
        RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => {
            let pod_label = a
                .attributes
                .iter()
                .any(|x| matches!(x, AddressAttribute::Label(n) if n.starts_with(POD_LINK_PREFIX)));
            !pod_label && a.header.scope != AddressScope::Link
        }
        _ => false,
    }
}

/// A route we added (protocol 75): applying a plan changes nothing we don't know.
fn ours_added(m: &RouteNetlinkMessage) -> bool {
    matches!(m, RouteNetlinkMessage::NewRoute(r) if r.header.protocol == RouteProtocol::Other(PROTO))
}

/// Destinations of owned routes the reconciler is deleting itself: their `DelRoute` is its
/// own doing, like its additions, and neither wakes a pass nor makes its view stale.
/// Otherwise a node leaving the cluster cost every other node a full pass with two kernel
/// dumps of N routes (the route each one deleted for it came back as an event).
#[derive(Debug, Default)]
pub struct OwnDeletes(Mutex<HashMap<IpNetwork, u32>>);

impl OwnDeletes {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<IpNetwork, u32>) -> T) -> T {
        let mut g = match self.0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut g)
    }

    /// Before deleting routes to `dsts`.
    pub fn expect(&self, dsts: impl IntoIterator<Item = IpNetwork>) {
        self.with(|m| {
            for d in dsts {
                *m.entry(d).or_default() += 1;
            }
        });
    }

    /// A delete that failed sends no event: expect none for it.
    pub fn unexpect(&self, dst: &IpNetwork) {
        self.with(|m| {
            if let Some(n) = m.get_mut(dst) {
                *n -= 1;
                if *n == 0 {
                    m.remove(dst);
                }
            }
        });
    }

    /// Forgets what is still expected (a pass that reads the kernel sees for itself): an
    /// event lost with an overflowing socket leaves nothing that would hide a later one.
    pub fn clear(&self) {
        self.with(HashMap::clear);
    }

    /// Whether `m` is the deletion of an owned route we expected (and consumes it).
    pub fn seen(&self, m: &RouteNetlinkMessage) -> bool {
        let RouteNetlinkMessage::DelRoute(r) = m else {
            return false;
        };
        if r.header.protocol != RouteProtocol::Other(PROTO)
            || r.header.table != RouteHeader::RT_TABLE_MAIN
        {
            return false;
        }
        let Some(dst) = destination(r) else {
            return false;
        };
        self.with(|m| match m.get_mut(&dst) {
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    m.remove(&dst);
                }
                true
            }
            None => false,
        })
    }
}

fn destination(r: &RouteMessage) -> Option<IpNetwork> {
    let len = r.header.destination_prefix_length;
    let ip = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    });
    let ip = match (ip, r.header.address_family) {
        (Some(ip), _) => ip,
        (None, AddressFamily::Inet) => IpAddr::V4(0.into()),
        (None, AddressFamily::Inet6) => IpAddr::V6(0.into()),
        (None, _) => return None,
    };
    IpNetwork::new(ip, len).ok()
}

/// Routes no peer is reached by: the local table's entries for addresses, IPv6 link-local
/// and multicast prefixes, and host routes (/32, /128) that point straight at a link (the
/// plugin's route to each pod).
fn pod_plumbing_route(r: &RouteMessage) -> bool {
    let h = &r.header;
    if h.table != RouteHeader::RT_TABLE_MAIN {
        return true;
    }
    let full = match h.address_family {
        AddressFamily::Inet => 32,
        AddressFamily::Inet6 => 128,
        _ => return false,
    };
    let link_local_or_multicast = r.attributes.iter().any(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet6(d)) => {
            d.is_unicast_link_local() || d.is_multicast()
        }
        _ => false,
    });
    let has_gateway = r
        .attributes
        .iter()
        .any(|a| matches!(a, RouteAttribute::Gateway(_)));
    link_local_or_multicast
        || (h.destination_prefix_length == full && h.scope == RouteScope::Link && !has_gateway)
}

/// Listens until shutdown; a broken socket (e.g. ENOBUFS after a burst) is reopened, with
/// a kick, since events may have been lost.
/// Every message but our own additions and expected deletions also sets `stale` (see
/// `ReconcilerConfig::stale`).
pub async fn listen(
    kick: Arc<Notify>,
    stale: Arc<AtomicBool>,
    deletes: Arc<OwnDeletes>,
    shutdown: CancellationToken,
) {
    loop {
        match rtnetlink::new_multicast_connection(&GROUPS) {
            Ok((conn, _handle, mut msgs)) => {
                let task = tokio::spawn(conn);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            task.abort();
                            return;
                        }
                        m = msgs.next() => match m {
                            Some((msg, _)) => {
                                if let NetlinkPayload::InnerMessage(inner) = &msg.payload {
                                    if ours_added(inner) || deletes.seen(inner) {
                                        continue;
                                    }
                                    stale.store(true, Ordering::SeqCst);
                                    if relevant(inner) {
                                        kick.notify_one();
                                    }
                                }
                            }
                            None => break,
                        }
                    }
                }
                task.abort();
                stale.store(true, Ordering::SeqCst);
                kick.notify_one();
                warn!("netlink event socket closed; reopening");
            }
            Err(e) => warn!(error = %e, "cannot open netlink event socket; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use rtnetlink::packet_route::{
        address::AddressMessage,
        link::LinkMessage,
        route::{RouteMessage, RouteType},
    };

    use super::*;

    fn route(family: AddressFamily, dst: RouteAddress, len: u8, scope: RouteScope) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.address_family = family;
        r.header.table = RouteHeader::RT_TABLE_MAIN;
        r.header.protocol = RouteProtocol::Static;
        r.header.kind = RouteType::Unicast;
        r.header.scope = scope;
        r.header.destination_prefix_length = len;
        r.attributes.push(RouteAttribute::Destination(dst));
        r
    }

    #[test]
    fn an_owned_route_we_delete_ourselves_is_ignored_once() {
        let mut r = route(
            AddressFamily::Inet,
            RouteAddress::Inet(Ipv4Addr::new(198, 18, 3, 0)),
            24,
            RouteScope::Universe,
        );
        r.header.protocol = RouteProtocol::Other(PROTO);
        let del = RouteNetlinkMessage::DelRoute(r.clone());
        let d = OwnDeletes::default();
        assert!(!d.seen(&del), "not expected: someone else deleted it");
        d.expect(["198.18.3.0/24".parse().unwrap()]);
        assert!(!d.seen(&RouteNetlinkMessage::NewRoute(r.clone())));
        let mut other = r.clone();
        other.header.destination_prefix_length = 25;
        assert!(!d.seen(&RouteNetlinkMessage::DelRoute(other)));
        assert!(d.seen(&del), "our own delete");
        assert!(!d.seen(&del), "only once: the next one is someone else's");
        d.expect(["198.18.3.0/24".parse().unwrap()]);
        d.unexpect(&"198.18.3.0/24".parse().unwrap());
        assert!(!d.seen(&del), "a failed delete expects no event");
        let mut foreign = r;
        foreign.header.protocol = RouteProtocol::Static;
        d.expect(["198.18.3.0/24".parse().unwrap()]);
        assert!(!d.seen(&RouteNetlinkMessage::DelRoute(foreign)));
    }

    #[test]
    fn pod_plumbing_is_ignored() {
        let pod_route = route(
            AddressFamily::Inet,
            RouteAddress::Inet(Ipv4Addr::new(198, 18, 3, 2)),
            32,
            RouteScope::Link,
        );
        assert!(!relevant(&RouteNetlinkMessage::NewRoute(pod_route.clone())));
        assert!(!relevant(&RouteNetlinkMessage::DelRoute(pod_route)));
        let ll = route(
            AddressFamily::Inet6,
            RouteAddress::Inet6("fe80::".parse().unwrap()),
            64,
            RouteScope::Universe,
        );
        assert!(!relevant(&RouteNetlinkMessage::NewRoute(ll)));
        let mut local = route(
            AddressFamily::Inet,
            RouteAddress::Inet(Ipv4Addr::new(198, 18, 3, 1)),
            32,
            RouteScope::Host,
        );
        local.header.table = 255;
        assert!(!relevant(&RouteNetlinkMessage::NewRoute(local)));
        let mut link = LinkMessage::default();
        link.attributes
            .push(LinkAttribute::IfName("hgw5f27bec41cf4".into()));
        assert!(!relevant(&RouteNetlinkMessage::NewLink(link.clone())));
        assert!(!relevant(&RouteNetlinkMessage::DelLink(link)));
        let mut addr = AddressMessage::default();
        addr.attributes
            .push(AddressAttribute::Label("hgw5f27bec41cf4".into()));
        assert!(!relevant(&RouteNetlinkMessage::NewAddress(addr)));
        let mut ll_addr = AddressMessage::default();
        ll_addr.header.scope = AddressScope::Link;
        assert!(!relevant(&RouteNetlinkMessage::NewAddress(ll_addr)));
    }

    #[test]
    fn what_can_change_peers_is_kept() {
        // Someone deletes one of our routes: drift, repaired at once.
        let mut ours = route(
            AddressFamily::Inet,
            RouteAddress::Inet(Ipv4Addr::new(198, 18, 9, 0)),
            24,
            RouteScope::Universe,
        );
        ours.header.protocol = RouteProtocol::Other(PROTO);
        assert!(relevant(&RouteNetlinkMessage::DelRoute(ours.clone())));
        assert!(
            !relevant(&RouteNetlinkMessage::NewRoute(ours)),
            "our own additions"
        );
        // The uplink's connected route, a default route, a host route via a router.
        let connected = route(
            AddressFamily::Inet,
            RouteAddress::Inet(Ipv4Addr::new(198, 19, 0, 0)),
            24,
            RouteScope::Link,
        );
        assert!(relevant(&RouteNetlinkMessage::NewRoute(connected.clone())));
        assert!(relevant(&RouteNetlinkMessage::DelRoute(connected)));
        let default = route(
            AddressFamily::Inet6,
            RouteAddress::Inet6(Ipv6Addr::UNSPECIFIED),
            0,
            RouteScope::Universe,
        );
        assert!(relevant(&RouteNetlinkMessage::NewRoute(default)));
        let mut via = route(
            AddressFamily::Inet,
            RouteAddress::Inet(Ipv4Addr::new(198, 19, 0, 50)),
            32,
            RouteScope::Universe,
        );
        via.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(
                198, 19, 0, 1,
            ))));
        assert!(relevant(&RouteNetlinkMessage::NewRoute(via)));
        // The uplink's link and its global address.
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::IfName("eth0".into()));
        assert!(relevant(&RouteNetlinkMessage::NewLink(link)));
        let mut addr = AddressMessage::default();
        addr.attributes.push(AddressAttribute::Label("eth0".into()));
        assert!(relevant(&RouteNetlinkMessage::DelAddress(addr)));
    }
}
