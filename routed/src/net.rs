//! Small address arithmetic on `IpNetwork`: canonical form, ranges, overlap.

use std::net::IpAddr;

pub use hostgw_common::ip::{from_start, is_canonical, overlaps, range, within};

/// Whether an address can never be a next hop on a link.
pub fn is_unusable_next_hop(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast()
        }
        IpAddr::V6(a) => a.is_unspecified() || a.is_loopback() || a.is_multicast(),
    }
}

/// IPv6 link-local (fe80::/10): meaningless without an interface (the kernel refuses such a
/// gateway without `RTA_OIF`). Usable only on our uplink's own link: the route to it is
/// installed `dev <uplink>` (see `kernel::message`), which only a peer on that link answers.
pub fn is_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80)
}

#[cfg(test)]
mod tests {
    use super::*;

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
