//! Dumps of the kernel's routes and addresses, shared by the route table and identity
//! detection.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::{
    Handle,
    packet_route::{
        AddressFamily,
        address::{AddressAttribute, AddressScope},
        route::{RouteHeader, RouteMessage, RouteProtocol},
    },
};

use super::KernelError;

/// The main table's routes of one family, filtered by the kernel (our sockets have strict
/// checking on) to `proto`; `RouteProtocol::Unspec` means every protocol.
pub async fn routes(
    h: &Handle,
    family: AddressFamily,
    proto: RouteProtocol,
) -> Result<Vec<RouteMessage>, KernelError> {
    routes_in(h, family, proto, RouteHeader::RT_TABLE_MAIN).await
}

/// As [`routes`], for another table (the local table, to see what is not ours there).
pub async fn routes_in(
    h: &Handle,
    family: AddressFamily,
    proto: RouteProtocol,
    table: u8,
) -> Result<Vec<RouteMessage>, KernelError> {
    hostgw_common::route::dump_table(h, family, proto, table)
        .await
        .map_err(|source| KernelError::Netlink {
            op: "dump routes".into(),
            source,
        })
}

/// (link index, address, scope) for every address on the node.
pub async fn addresses(h: &Handle) -> Result<Vec<(u32, IpAddr, AddressScope)>, KernelError> {
    let msgs: Vec<_> = h
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|source| KernelError::Netlink {
            op: "dump addresses".into(),
            source,
        })?;
    let mut out = Vec::new();
    for m in msgs {
        for a in &m.attributes {
            // IFA_LOCAL is the address itself on point-to-point links (IFA_ADDRESS the peer).
            if let AddressAttribute::Address(ip) | AddressAttribute::Local(ip) = a {
                out.push((m.header.index, *ip, m.header.scope));
            }
        }
    }
    Ok(out)
}
