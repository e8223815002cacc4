//! Route messages: building ours, reading anyone's. Shared by the rtnetlink table, the
//! batch path and identity detection, so none of them imports another.

use std::net::IpAddr;

use hostgw_common::route;
use ipnetwork::IpNetwork;
use rtnetlink::{
    RouteMessageBuilder,
    packet_route::route::{RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType},
};

use super::{HostRoute, KernelError, PROTO};

fn bad(r: &HostRoute, e: impl std::fmt::Display) -> KernelError {
    KernelError::Route(format!("route {r}: {e}"))
}

/// `<dst> via <via>`, main table, our protocol. A link-local IPv6 next hop goes out of
/// `uplink` (its link index; 0 = not known): the kernel refuses such a gateway without a
/// device (`EINVAL`, "Nexthop has invalid gateway"), and our peers are on the uplink's link.
pub fn message(r: &HostRoute, uplink: u32) -> Result<RouteMessage, KernelError> {
    let b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.dst.network(), r.dst.prefix())
        .map_err(|e| bad(r, e))?
        .gateway(r.via)
        .map_err(|e| bad(r, e))?
        .table_id(RouteHeader::RT_TABLE_MAIN.into())
        .protocol(RouteProtocol::Other(PROTO))
        .scope(RouteScope::Universe)
        .kind(RouteType::Unicast);
    let link_local = crate::net::is_link_local(&r.via);
    Ok(if link_local && uplink != 0 {
        b.output_interface(uplink).build()
    } else {
        b.build()
    })
}

/// Destination and gateway of a route message (a default route has no Destination).
pub fn parse(m: &RouteMessage) -> (Option<IpNetwork>, Option<IpAddr>) {
    (route::dst(m), route::gateway(m))
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::route::RouteAttribute;

    use super::*;

    fn oif(m: &RouteMessage) -> Option<u32> {
        m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        })
    }

    #[test]
    fn only_a_link_local_next_hop_gets_the_uplink_as_device() {
        let r = |dst: &str, via: &str| HostRoute {
            dst: dst.parse().unwrap(),
            via: via.parse().unwrap(),
        };
        let ll = r("fd18:18:0:5::/64", "fe80::5");
        assert_eq!(oif(&message(&ll, 7).unwrap()), Some(7));
        assert_eq!(oif(&message(&ll, 0).unwrap()), None);
        for global in [
            r("fd18:18:0:5::/64", "fd19:19::5"),
            r("198.18.5.0/24", "198.19.0.5"),
        ] {
            assert_eq!(oif(&message(&global, 7).unwrap()), None, "{global}");
        }
    }
}
