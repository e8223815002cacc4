//! Who this node is on the node network: its public IP(s) and the MTU of that link.

use std::net::IpAddr;

use futures::TryStreamExt;
use hostgw_common::route;
use rtnetlink::{Handle, packet_route::address::AddressScope};

use crate::{cli::Common, kernel::KernelError};

/// The node's link to its peers, as the kernel shows it; [`crate::me::Me`] is built from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    pub public_ip: IpAddr,
    pub public_ipv6: Option<IpAddr>,
    pub mtu: u32,
}

async fn link_index(h: &Handle, name: &str) -> Result<u32, KernelError> {
    let mut s = h.link().get().match_name(name.to_owned()).execute();
    match s.try_next().await {
        Ok(Some(l)) => Ok(l.header.index),
        _ => Err(KernelError::Other(format!("interface {name} not found"))),
    }
}

async fn mtu(h: &Handle, index: u32) -> Result<u32, KernelError> {
    route::link_mtu(h, index)
        .await
        .map_err(|source| KernelError::Netlink {
            op: format!("get link {index}"),
            source,
        })?
        .ok_or_else(|| KernelError::Other(format!("link {index} not found")))
}

/// The link of the IPv4 default route, whatever its protocol: a default route installed by
/// DHCP (proto dhcp) or by hand (proto boot) must be seen, not only `proto static` ones.
async fn default_link(h: &Handle) -> Result<u32, KernelError> {
    route::default_route_oif(h)
        .await
        .map_err(|source| KernelError::Netlink {
            op: "dump routes".into(),
            source,
        })?
        .ok_or_else(|| KernelError::Other("no default route: give --public-ip or --iface".into()))
}

pub async fn detect(h: &Handle, c: &Common) -> Result<Uplink, KernelError> {
    let addrs = super::dump::addresses(h).await?;
    let (index, public_ip) = match (c.public_ip, &c.iface) {
        (Some(ip), _) => {
            let idx = addrs.iter().find(|(_, a, _)| *a == ip).map(|(i, _, _)| *i);
            (
                idx.ok_or_else(|| {
                    KernelError::Other(format!("public IP {ip} is not an address of this node"))
                })?,
                ip,
            )
        }
        (None, iface) => {
            let idx = match iface {
                Some(name) => link_index(h, name).await?,
                None => default_link(h).await?,
            };
            let ip = addrs
                .iter()
                .find(|(i, a, s)| *i == idx && a.is_ipv4() && *s == AddressScope::Universe)
                .map(|(_, a, _)| *a)
                .ok_or_else(|| KernelError::Other(format!("link {idx} has no IPv4 address")))?;
            (idx, ip)
        }
    };
    let public_ipv6 = c.public_ipv6.or_else(|| {
        addrs
            .iter()
            .find(|(i, a, s)| *i == index && a.is_ipv6() && *s == AddressScope::Universe)
            .map(|(_, a, _)| *a)
    });
    Ok(Uplink {
        public_ip,
        public_ipv6,
        mtu: mtu(h, index).await?,
    })
}
