//! Values that parse but make no sense: a pod subnet that is no node's, an MTU no veth
//! (or no IPv6 link) takes, a subnet file at odds with itself. Kept apart from the types
//! they check (the subnet file's type is hostgw-common's); each error names the key and the value.

use std::{net::IpAddr, path::Path};

use hostgw_common::SubnetFile;
use hostgw_ipam::Pool;
use ipnetwork::{IpNetwork, Ipv6Network};

use crate::error::Error;

/// The MTU range a veth takes; `source` names where the value came from.
pub fn validate_mtu(mtu: u32, source: &str) -> Result<(), Error> {
    if !(68..=65535).contains(&mtu) {
        return Err(Error::Config(format!(
            "{source} {mtu} is outside 68..65535"
        )));
    }
    Ok(())
}

/// IPv6 needs links of at least 1280 bytes (RFC 8200 §5); the kernel drops IPv6 from a
/// link with a smaller MTU, so such a pod would get an address it can never use.
pub fn validate_mtu_for_ipv6(mtu: u32, source: &str, v6: Option<Ipv6Network>) -> Result<(), Error> {
    match v6 {
        Some(net) if mtu < 1280 => Err(Error::Config(format!(
            "{source} {mtu} is below 1280, the minimum for IPv6, and the pool {net} is IPv6"
        ))),
        _ => Ok(()),
    }
}

/// A pod subnet that makes sense: a real unicast range, not so large that it is surely a
/// mistake (0.0.0.0/0 once handed out `198.18.3.3/0` with gateway 0.0.0.1), not so small
/// that nothing is left, without host bits. `name` is the key it came from.
pub fn validate_pool(name: &str, net: IpNetwork) -> Result<Pool, Error> {
    let bad = |why: &str| Err(Error::Config(format!("{name} {net}: {why}")));
    let (min, max) = if net.is_ipv4() { (8, 30) } else { (16, 126) };
    if net.prefix() < min {
        return bad(&format!(
            "a prefix shorter than /{min} is not a node's pod subnet"
        ));
    }
    if net.prefix() > max {
        return bad(&format!(
            "a prefix longer than /{max} leaves no address beside the gateway"
        ));
    }
    if net.ip() != net.network() {
        return bad(&format!(
            "host bits set; the network address is {}",
            net.network()
        ));
    }
    if [net.network(), net.broadcast()]
        .iter()
        .any(|ip| special(*ip))
    {
        return bad(
            "not a unicast range (unspecified, loopback, link-local, multicast or reserved)",
        );
    }
    Pool::new(net, None).map_err(|e| Error::Config(format!("{name} {net}: {e}")))
}

fn special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            a.is_unspecified()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_multicast()
                || a.octets()[0] == 0
                || a.octets()[0] >= 240
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || (s[0] & 0xffc0) == 0xfe80
                || a.to_ipv4_mapped().is_some()
        }
    }
}

/// What the daemon wrote must make sense too: each subnet a valid pool inside its network,
/// the MTU a veth's. Kept apart from the file's type so that the type can move.
pub fn validate_subnet_file(f: &SubnetFile, path: &Path) -> Result<(), Error> {
    let ctx = |e: Error| Error::Config(format!("subnet file {}: {e}", path.display()));
    if let Some(sub) = f.subnet {
        validate_pool("subnet", IpNetwork::V4(sub)).map_err(ctx)?;
        if let Some(n) = f.network
            && !(n.prefix() <= sub.prefix() && n.contains(sub.network()))
        {
            return Err(ctx(Error::Config(format!(
                "subnet {sub} is not inside network {n}"
            ))));
        }
    }
    if let Some(s) = f.ipv6_subnet {
        validate_pool("ipv6Subnet", IpNetwork::V6(s)).map_err(ctx)?;
        if let Some(n) = f.ipv6_network
            && !(n.prefix() <= s.prefix() && n.contains(s.network()))
        {
            return Err(ctx(Error::Config(format!(
                "ipv6Subnet {s} is not inside ipv6Network {n}"
            ))));
        }
    }
    if let Some(m) = f.mtu {
        validate_mtu(m, "mtu").map_err(ctx)?;
    }
    Ok(())
}
