//! Route messages: building ours, reading anyone's. Shared by the rtnetlink table, the
//! batch path and identity detection, so none of them imports another.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use rtnetlink::{
    RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        route::{
            RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
            RouteType,
        },
    },
};

use super::{HostRoute, KernelError, PROTO};

fn bad(r: &HostRoute, e: impl std::fmt::Display) -> KernelError {
    KernelError::Route(format!("route {r}: {e}"))
}

/// `<dst> via <via>`, main table, our protocol.
pub fn message(r: &HostRoute) -> Result<RouteMessage, KernelError> {
    Ok(RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.dst.network(), r.dst.prefix())
        .map_err(|e| bad(r, e))?
        .gateway(r.via)
        .map_err(|e| bad(r, e))?
        .table_id(RouteHeader::RT_TABLE_MAIN.into())
        .protocol(RouteProtocol::Other(PROTO))
        .scope(RouteScope::Universe)
        .kind(RouteType::Unicast)
        .build())
}

fn addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Destination and gateway of a route message (a default route has no Destination).
pub fn parse(m: &RouteMessage) -> (Option<IpNetwork>, Option<IpAddr>) {
    let mut dst = None;
    let mut gw = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = addr(d),
            RouteAttribute::Gateway(g) => gw = addr(g),
            _ => {}
        }
    }
    let dst = match (dst, m.header.address_family) {
        (Some(ip), _) => IpNetwork::new(ip, m.header.destination_prefix_length).ok(),
        (None, AddressFamily::Inet) => IpNetwork::new(IpAddr::V4(0.into()), 0).ok(),
        (None, AddressFamily::Inet6) => IpNetwork::new(IpAddr::V6(0.into()), 0).ok(),
        _ => None,
    };
    (dst, gw)
}
