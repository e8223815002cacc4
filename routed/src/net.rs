//! Small address arithmetic on `IpNetwork`: canonical form, ranges, overlap.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// The first and last address of a network as integers, with its family (`true` = v6).
pub fn range(net: &IpNetwork) -> (bool, u128, u128) {
    match net {
        IpNetwork::V4(n) => {
            let start = u32::from(n.network()) as u128;
            let size = 1u128 << (32 - n.prefix());
            (false, start, start + size - 1)
        }
        IpNetwork::V6(n) => {
            let start = u128::from(n.network());
            let host_bits = 128 - n.prefix() as u32;
            let end = if host_bits == 128 {
                u128::MAX
            } else {
                start | ((1u128 << host_bits) - 1)
            };
            (true, start, end)
        }
    }
}

/// Whether the address part has no host bits set (`198.18.3.0/24`, not `198.18.3.7/24`).
pub fn is_canonical(net: &IpNetwork) -> bool {
    net.ip() == net.network()
}

pub fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    let (fa, sa, ea) = range(a);
    let (fb, sb, eb) = range(b);
    fa == fb && sa <= eb && sb <= ea
}

/// `inner` lies entirely within `outer`.
pub fn within(inner: &IpNetwork, outer: &IpNetwork) -> bool {
    let (fi, si, ei) = range(inner);
    let (fo, so, eo) = range(outer);
    fi == fo && si >= so && ei <= eo
}

/// The network of the given family starting at integer address `start`.
pub fn from_start(v6: bool, start: u128, prefix: u8) -> Option<IpNetwork> {
    let ip = if v6 {
        IpAddr::V6(Ipv6Addr::from(start))
    } else {
        IpAddr::V4(Ipv4Addr::from(u32::try_from(start).ok()?))
    };
    IpNetwork::new(ip, prefix).ok()
}

/// Whether an address can never be a next hop on a link.
pub fn is_unusable_next_hop(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast()
        }
        IpAddr::V6(a) => a.is_unspecified() || a.is_loopback() || a.is_multicast(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn overlap_and_within() {
        assert!(overlaps(&n("198.18.0.0/16"), &n("198.18.3.0/24")));
        assert!(!overlaps(&n("198.18.2.0/24"), &n("198.18.3.0/24")));
        assert!(!overlaps(&n("198.18.0.0/16"), &n("fd18:18::/48")));
        assert!(within(&n("198.18.3.0/24"), &n("198.18.0.0/16")));
        assert!(!within(&n("198.17.3.0/24"), &n("198.18.0.0/16")));
        assert!(within(&n("fd18:18:0:3::/64"), &n("fd18:18::/48")));
        assert!(overlaps(&n("::/0"), &n("fd18:18::/48")));
    }

    #[test]
    fn canonical() {
        assert!(is_canonical(&n("198.18.3.0/24")));
        assert!(!is_canonical(&n("198.18.3.1/24")));
    }

    #[test]
    fn next_hops() {
        for bad in [
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "ff02::1",
        ] {
            assert!(is_unusable_next_hop(&bad.parse().unwrap()), "{bad}");
        }
        assert!(!is_unusable_next_hop(&"198.19.0.11".parse().unwrap()));
    }
}
