//! Netlink helpers both binaries need: reading a route message's attributes, dumping the
//! main table, and the MTU of the link that holds the default route.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        link::LinkAttribute,
        route::{
            RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
            RouteType,
        },
    },
};

fn addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The destination; a default route carries no Destination attribute, only length 0.
pub fn dst(m: &RouteMessage) -> Option<IpNetwork> {
    let len = m.header.destination_prefix_length;
    let ip = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => addr(d),
        _ => None,
    });
    match (ip, m.header.address_family) {
        (Some(ip), _) => IpNetwork::new(ip, len).ok(),
        (None, AddressFamily::Inet) if len == 0 => IpNetwork::new(IpAddr::V4(0.into()), 0).ok(),
        (None, AddressFamily::Inet6) if len == 0 => IpNetwork::new(IpAddr::V6(0.into()), 0).ok(),
        _ => None,
    }
}

pub fn gateway(m: &RouteMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(g) => addr(g),
        _ => None,
    })
}

pub fn oif(m: &RouteMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

/// The main table's routes of one family, of protocol `proto` (`Unspec`: every protocol).
pub async fn dump_main(
    h: &Handle,
    family: AddressFamily,
    proto: RouteProtocol,
) -> Result<Vec<RouteMessage>, rtnetlink::Error> {
    dump_table(h, family, proto, RouteHeader::RT_TABLE_MAIN).await
}

/// The routes of one family in `table`, of protocol `proto` (`Unspec`: every protocol).
/// On a socket with strict checking the kernel filters; on one without, it returns every
/// table and protocol, so the same filter is applied here too. The type is left
/// unspecified so that the dump is not narrowed by the builder's defaults.
pub async fn dump_table(
    h: &Handle,
    family: AddressFamily,
    proto: RouteProtocol,
    table: u8,
) -> Result<Vec<RouteMessage>, rtnetlink::Error> {
    let mut msg = RouteMessageBuilder::<IpAddr>::new().build();
    msg.header.address_family = family;
    msg.header.protocol = proto;
    msg.header.scope = RouteScope::Universe;
    msg.header.kind = RouteType::Unspec;
    msg.header.table = table;
    let mut routes: Vec<RouteMessage> = h.route().get(msg).execute().try_collect().await?;
    routes.retain(|r| {
        r.header.table == table && (proto == RouteProtocol::Unspec || r.header.protocol == proto)
    });
    Ok(routes)
}

/// The link of a route, or of the first hop of a multipath route (which has no Oif).
pub fn first_oif(m: &RouteMessage) -> Option<u32> {
    oif(m).or_else(|| {
        m.attributes.iter().find_map(|a| match a {
            RouteAttribute::MultiPath(hops) => hops.first().map(|h| h.interface_index),
            _ => None,
        })
    })
}

/// The link of the default route, whatever its protocol (DHCP, boot, static): IPv4's,
/// else IPv6's (an IPv6-only host); for a multipath default route, its first hop's.
pub async fn default_route_oif(h: &Handle) -> Result<Option<u32>, rtnetlink::Error> {
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let routes = dump_main(h, family, RouteProtocol::Unspec).await?;
        let found = routes
            .iter()
            .filter(|r| r.header.destination_prefix_length == 0)
            .find_map(first_oif);
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// The link the kernel would send a packet for `ip` out of (`ip route get`); `None`
/// when it has no route there.
pub async fn oif_towards(h: &Handle, ip: IpAddr) -> Result<Option<u32>, rtnetlink::Error> {
    let len = if ip.is_ipv4() { 32 } else { 128 };
    let mut msg = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(ip, len)
        .map_err(|e| rtnetlink::Error::InvalidNla(e.to_string()))?
        .build();
    msg.header.table = 0;
    msg.header.protocol = RouteProtocol::Unspec;
    msg.header.scope = RouteScope::Universe;
    msg.header.kind = RouteType::Unspec;
    match h.route().get(msg).execute().try_next().await {
        Ok(r) => Ok(r.as_ref().and_then(first_oif)),
        // ENETUNREACH / EHOSTUNREACH: no route at all.
        Err(rtnetlink::Error::NetlinkError(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The MTU of link `index`; `None` if there is no such link.
pub async fn link_mtu(h: &Handle, index: u32) -> Result<Option<u32>, rtnetlink::Error> {
    let link = match h.link().get().match_index(index).execute().try_next().await {
        Ok(l) => l,
        // ENODEV: the link went away between the route dump and this lookup.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => None,
        Err(e) => return Err(e),
    };
    Ok(link.and_then(|l| {
        l.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
    }))
}

/// The MTU of the link that holds the IPv4 default route; `None` without one.
pub async fn default_route_mtu(h: &Handle) -> Result<Option<u32>, rtnetlink::Error> {
    match default_route_oif(h).await? {
        Some(index) => link_mtu(h, index).await,
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn attributes_of_a_route_message() {
        let mut m = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::new(198, 18, 3, 0), 24)
            .gateway(Ipv4Addr::new(198, 19, 0, 11))
            .output_interface(7)
            .build();
        assert_eq!(dst(&m), Some("198.18.3.0/24".parse().unwrap()));
        assert_eq!(gateway(&m), Some("198.19.0.11".parse().unwrap()));
        assert_eq!(oif(&m), Some(7));
        m.attributes
            .retain(|a| !matches!(a, RouteAttribute::Destination(_)));
        m.header.destination_prefix_length = 0;
        assert_eq!(dst(&m), Some("0.0.0.0/0".parse().unwrap()));
        m.header.destination_prefix_length = 8;
        assert_eq!(dst(&m), None, "a prefix without an address is not a route");
        m.attributes
            .retain(|a| !matches!(a, RouteAttribute::Oif(_)));
        assert_eq!(first_oif(&m), None);
        let hop = |i| {
            let mut h = rtnetlink::packet_route::route::RouteNextHop::default();
            h.interface_index = i;
            h
        };
        m.attributes
            .push(RouteAttribute::MultiPath(vec![hop(4), hop(5)]));
        assert_eq!(first_oif(&m), Some(4), "a multipath route's first hop");
    }
}
