//! Address arithmetic on `IpNetwork`, one family-aware copy for the IPAM pools, the
//! daemon's subnet pool and its lease validation. Overlap and containment come from
//! ipnetwork's per-family methods; this adds only what the enum lacks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// An address as an integer (IPv4 in the low 32 bits).
pub fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address `b` in the family given by `v6` (truncated to 32 bits for IPv4).
pub fn from_bits(v6: bool, b: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(b))
    } else {
        IpAddr::V4(Ipv4Addr::from(b as u32))
    }
}

/// The first and last address of a network as integers, with its family (`true` = v6).
pub fn range(net: &IpNetwork) -> (bool, u128, u128) {
    (net.is_ipv6(), bits(net.network()), bits(net.broadcast()))
}

/// The network of the given family starting at integer address `start`; `None` when
/// `start` does not fit the family or `prefix` is too long for it.
pub fn from_start(v6: bool, start: u128, prefix: u8) -> Option<IpNetwork> {
    if !v6 && start > u128::from(u32::MAX) {
        return None;
    }
    IpNetwork::new(from_bits(v6, start), prefix).ok()
}

/// Whether the address part has no host bits set (`198.18.3.0/24`, not `198.18.3.7/24`).
pub fn is_canonical(net: &IpNetwork) -> bool {
    net.ip() == net.network()
}

/// The two networks share an address (never across families).
pub fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    match (a, b) {
        (IpNetwork::V4(a), IpNetwork::V4(b)) => a.overlaps(*b),
        (IpNetwork::V6(a), IpNetwork::V6(b)) => a.overlaps(*b),
        _ => false,
    }
}

/// `inner` lies entirely within `outer` (equal counts).
pub fn within(inner: &IpNetwork, outer: &IpNetwork) -> bool {
    match (inner, outer) {
        (IpNetwork::V4(i), IpNetwork::V4(o)) => i.is_subnet_of(*o),
        (IpNetwork::V6(i), IpNetwork::V6(o)) => i.is_subnet_of(*o),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_and_round_trips() {
        assert_eq!(
            range(&n("198.18.3.0/24")),
            (false, 0xc612_0300, 0xc612_03ff)
        );
        assert_eq!(range(&n("::/0")), (true, 0, u128::MAX));
        assert_eq!(range(&n("0.0.0.0/0")), (false, 0, u128::from(u32::MAX)));
        assert_eq!(from_start(false, 0xc612_0300, 24), Some(n("198.18.3.0/24")));
        assert_eq!(from_start(false, 1 << 32, 24), None);
        assert_eq!(from_start(false, 0, 33), None);
        let ip: IpAddr = "fd18:18::7".parse().unwrap();
        assert_eq!(from_bits(true, bits(ip)), ip);
    }

    #[test]
    fn overlap_and_containment() {
        assert!(overlaps(&n("198.18.0.0/16"), &n("198.18.3.0/24")));
        assert!(overlaps(&n("198.18.3.0/24"), &n("198.18.0.0/16")));
        assert!(!overlaps(&n("198.18.3.0/24"), &n("198.18.4.0/24")));
        assert!(!overlaps(&n("0.0.0.0/0"), &n("::/0")));
        assert!(within(&n("198.18.3.0/24"), &n("198.18.0.0/16")));
        assert!(within(&n("198.18.3.0/24"), &n("198.18.3.0/24")));
        assert!(!within(&n("198.18.0.0/16"), &n("198.18.3.0/24")));
        assert!(!within(&n("fd18:18::/64"), &n("198.18.0.0/16")));
        assert!(within(&n("fd18:18:0:3::/64"), &n("fd18:18::/48")));
        assert!(overlaps(&n("::/0"), &n("fd18:18::/48")));
        assert!(!overlaps(&n("198.18.0.0/16"), &n("fd18:18::/48")));
        assert!(is_canonical(&n("198.18.3.0/24")) && !is_canonical(&n("198.18.3.7/24")));
    }
}
