//! Route messages: building ours, reading anyone's. Shared by the rtnetlink table, the
//! batch path and identity detection, so none of them imports another.

use std::net::IpAddr;

use hostgw_common::route;
use ipnetwork::IpNetwork;
use rtnetlink::{
    RouteMessageBuilder,
    packet_route::route::{
        RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol, RouteScope,
        RouteType,
    },
};

use super::{HostRoute, KernelError, Kind, PROTO, UNREACHABLE_METRIC};

fn bad(r: &HostRoute, e: impl std::fmt::Display) -> KernelError {
    KernelError::Route(format!("route {r}: {e}"))
}

/// `<dst> via <via>` (or `unreachable <dst> metric UNREACHABLE_METRIC`), with its mtu,
/// main table, our protocol. A link-local IPv6 next hop goes out of `uplink` (its link
/// index; 0 = not known): the kernel refuses such a gateway without a device (`EINVAL`,
/// "Nexthop has invalid gateway"), and our peers are on the uplink's link.
pub fn message(r: &HostRoute, uplink: u32) -> Result<RouteMessage, KernelError> {
    let b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.dst.network(), r.dst.prefix())
        .map_err(|e| bad(r, e))?
        .table_id(RouteHeader::RT_TABLE_MAIN.into())
        .protocol(RouteProtocol::Other(PROTO))
        .scope(RouteScope::Universe);
    let mut m = match r.kind {
        Kind::Via => {
            let b = b
                .gateway(r.via)
                .map_err(|e| bad(r, e))?
                .kind(RouteType::Unicast);
            if crate::net::is_link_local(&r.via) && uplink != 0 {
                b.output_interface(uplink).build()
            } else {
                b.build()
            }
        }
        Kind::Unreachable => b
            .kind(RouteType::Unreachable)
            .priority(UNREACHABLE_METRIC)
            .build(),
    };
    if let Some(mtu) = r.mtu {
        m.attributes.push(RouteAttribute::Metrics(vec![
            RouteMetric::Lock(MTU_LOCKED),
            RouteMetric::Mtu(mtu),
        ]));
    }
    Ok(m)
}

/// `RTAX_LOCK`'s bit for `RTAX_MTU` (2): `mtu lock N` in `ip route`. Forwarding honours a
/// route's mtu either way, but the kernel's BPF FIB lookup (the fast path's MTU check) does
/// for IPv4 only when it is locked; and a locked mtu is what a per-peer limit is: no PMTU
/// message should raise or lower it.
const MTU_LOCKED: u32 = 1 << 2;

/// Destination and gateway of a route message (a default route has no Destination).
pub fn parse(m: &RouteMessage) -> (Option<IpNetwork>, Option<IpAddr>) {
    (route::dst(m), route::gateway(m))
}

/// `RTAX_MTU` of a route, if set. An mtu without the lock (an older hostgw's, or one set by
/// hand) reads as 0, which no route we want carries: the planner replaces it.
pub fn mtu(m: &RouteMessage) -> Option<u32> {
    let metrics = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Metrics(ms) => Some(ms),
        _ => None,
    })?;
    let mtu = metrics.iter().find_map(|x| match x {
        RouteMetric::Mtu(v) => Some(*v),
        _ => None,
    })?;
    let locked = metrics
        .iter()
        .any(|x| matches!(x, RouteMetric::Lock(l) if l & MTU_LOCKED != 0));
    Some(if locked { mtu } else { 0 })
}

/// One of our routes as listed. An owned unicast route without a gateway can't be wanted:
/// it is listed with the unspecified next hop, so the planner removes it.
pub fn owned(m: &RouteMessage) -> Option<HostRoute> {
    let (dst, gw) = parse(m);
    let dst = dst?;
    let base = if m.header.kind == RouteType::Unreachable {
        HostRoute::unreachable(dst)
    } else {
        let any = HostRoute::unreachable(dst).via;
        HostRoute::via(dst, gw.unwrap_or(any))
    };
    Some(base.with_mtu(mtu(m)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oif(m: &RouteMessage) -> Option<u32> {
        m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        })
    }

    #[test]
    fn only_a_link_local_next_hop_gets_the_uplink_as_device() {
        let r = |dst: &str, via: &str| HostRoute::via(dst.parse().unwrap(), via.parse().unwrap());
        let ll = r("fd18:18:0:5::/64", "fe80::5");
        assert_eq!(oif(&message(&ll, 7).unwrap()), Some(7));
        assert_eq!(oif(&message(&ll, 0).unwrap()), None);
        for global in [
            r("fd18:18:0:5::/64", "fd19:19::5"),
            r("198.18.5.0/24", "198.19.0.5"),
        ] {
            assert_eq!(oif(&message(&global, 7).unwrap()), None, "{global}");
        }
        assert_eq!(
            oif(&message(
                &HostRoute::unreachable("fd18:18:0:5::/64".parse().unwrap()),
                7
            )
            .unwrap()),
            None
        );
    }

    #[test]
    fn messages_parse_back_to_the_route() {
        let dst = "198.18.3.0/24".parse().unwrap();
        for r in [
            HostRoute::via(dst, "198.19.0.2".parse().unwrap()),
            HostRoute::via(dst, "198.19.0.2".parse().unwrap()).with_mtu(Some(1500)),
            HostRoute::unreachable(dst),
            HostRoute::unreachable("fd18:18:0:3::/64".parse().unwrap()),
        ] {
            let m = message(&r, 0).unwrap();
            assert_eq!(owned(&m), Some(r), "{r}");
        }
        // An unlocked mtu is not ours to keep: it never equals a wanted route.
        let mut m = message(
            &HostRoute::via(dst, "198.19.0.2".parse().unwrap()).with_mtu(Some(1500)),
            0,
        )
        .unwrap();
        for a in &mut m.attributes {
            if let RouteAttribute::Metrics(ms) = a {
                ms.retain(|x| !matches!(x, RouteMetric::Lock(_)));
            }
        }
        assert_eq!(mtu(&m), Some(0));
        let m = message(&HostRoute::unreachable(dst), 0).unwrap();
        assert_eq!(m.header.kind, RouteType::Unreachable);
        assert!(
            m.attributes
                .contains(&RouteAttribute::Priority(UNREACHABLE_METRIC))
        );
        assert_eq!(route::gateway(&m), None);
    }
}
