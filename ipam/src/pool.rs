//! A pool is one subnet to allocate from (host-local's "range set" with a single range,
//! rangeStart/rangeEnd at their defaults). Addresses are handled as `u128` so IPv4 and
//! IPv6 share one arithmetic.

use std::net::IpAddr;

use hostgw_common::ip::{self, bits};
use ipnetwork::IpNetwork;

use crate::{Error, error::Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pool {
    pub subnet: IpNetwork,
    pub gateway: IpAddr,
}

// === impl Pool ===

impl Pool {
    /// Validates the subnet and gateway; the default gateway is network + 1, which the
    /// allocator skips, so the first address handed out is network + 2.
    pub fn new(subnet: IpNetwork, gateway: Option<IpAddr>) -> Result<Pool> {
        let gateway =
            gateway.unwrap_or_else(|| from_bits(bits(subnet.network()).wrapping_add(1), subnet));
        let pool = Pool { subnet, gateway };
        pool.validate()?;
        Ok(pool)
    }

    /// The checks of [`Pool::new`]; the fields are public, so the store re-runs them
    /// before it trusts a pool.
    pub fn validate(&self) -> Result<()> {
        let subnet = self.subnet;
        if subnet.ip() != subnet.network() {
            return Err(Error::HostBitsSet {
                prefix: subnet.prefix(),
                network: subnet.network(),
            });
        }
        let max_bits = if subnet.is_ipv4() { 32 } else { 128 };
        // host-local: `ones > bits-2`; a /31 or /127 would leave nothing once the
        // network address (and for v4 the broadcast) is excluded.
        if subnet.prefix() > max_bits - 2 {
            return Err(Error::TooSmall(subnet));
        }
        if !self.in_range(self.gateway) {
            return Err(Error::InvalidGateway {
                gateway: self.gateway,
                subnet,
            });
        }
        Ok(())
    }

    /// First address of the range: network + 1 (the gateway included, as in host-local).
    pub fn first(&self) -> IpAddr {
        from_bits(self.first_bits(), self.subnet)
    }

    /// Last address of the range: broadcast - 1 for IPv4, the very last address for IPv6.
    pub fn last(&self) -> IpAddr {
        from_bits(self.last_bits(), self.subnet)
    }

    /// Whether the allocator may hand out `ip`: inside first..=last and not the gateway.
    pub fn contains_usable(&self, ip: IpAddr) -> bool {
        self.in_range(ip) && ip != self.gateway
    }

    /// `first-last`, the form host-local puts in its exhaustion error.
    pub fn range_string(&self) -> String {
        format!("{}-{}", self.first(), self.last())
    }

    /// How many addresses the allocator may hand out (the range minus the gateway).
    pub fn usable_count(&self) -> u128 {
        let range = self.last_bits().saturating_sub(self.first_bits()) + 1;
        range - u128::from(self.in_range(self.gateway))
    }

    /// Every usable address once, starting after `last_reserved` when that is still in
    /// the range (round-robin: a crash-looping pod must not get its old IP straight
    /// back), else from the first address.
    pub(crate) fn candidates(&self, last_reserved: Option<IpAddr>) -> impl Iterator<Item = IpAddr> {
        let (first, last) = (self.first_bits(), self.last_bits());
        let start = match last_reserved {
            Some(ip) if self.in_range(ip) && bits(ip) < last => bits(ip) + 1,
            _ => first,
        };
        let subnet = self.subnet;
        let gateway = self.gateway;
        (start..=last)
            .chain(first..start)
            .map(move |b| from_bits(b, subnet))
            .filter(move |ip| *ip != gateway)
    }

    /// Whether two pools share any address (they must not: a requested IP has to
    /// name exactly one pool).
    pub(crate) fn overlaps(&self, other: &Pool) -> bool {
        ip::overlaps(&self.subnet, &other.subnet)
    }

    fn in_range(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.subnet.is_ipv4()
            && (self.first_bits()..=self.last_bits()).contains(&bits(ip))
    }

    // Wrapping arithmetic: an unvalidated pool (public fields) must give wrong answers,
    // never a panic; every operation that allocates validates first.
    fn first_bits(&self) -> u128 {
        bits(self.subnet.network()).wrapping_add(1)
    }

    fn last_bits(&self) -> u128 {
        let broadcast = bits(self.subnet.broadcast());
        if self.subnet.is_ipv4() {
            broadcast.wrapping_sub(1)
        } else {
            broadcast
        }
    }
}

/// The address `b` in the family of `like` (truncated to 32 bits for IPv4).
fn from_bits(b: u128, like: IpNetwork) -> IpAddr {
    ip::from_bits(like.is_ipv6(), b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().expect("test network")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test ip")
    }

    #[test]
    fn defaults_v4() {
        let p = Pool::new(net("198.18.3.0/24"), None).unwrap();
        assert_eq!(p.gateway, ip("198.18.3.1"));
        assert_eq!(p.range_string(), "198.18.3.1-198.18.3.254");
        assert_eq!(p.usable_count(), 253);
        assert!(!p.contains_usable(ip("198.18.3.1")));
        assert!(p.contains_usable(ip("198.18.3.2")));
        assert!(p.contains_usable(ip("198.18.3.254")));
        assert!(!p.contains_usable(ip("198.18.3.255")));
        assert!(!p.contains_usable(ip("198.18.3.0")));
        assert!(!p.contains_usable(ip("fd18::2")));
    }

    #[test]
    fn defaults_v6_include_last_address() {
        let p = Pool::new(net("fd18:18:0:3::/120"), None).unwrap();
        assert_eq!(p.gateway, ip("fd18:18:0:3::1"));
        assert_eq!(p.range_string(), "fd18:18:0:3::1-fd18:18:0:3::ff");
        assert!(p.contains_usable(ip("fd18:18:0:3::ff")));
        assert_eq!(p.usable_count(), 254);
    }

    #[test]
    fn host_bits_error_names_network() {
        let err = Pool::new(net("198.18.3.7/24"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Network has host bits set. For a subnet mask of length 24 the network address is 198.18.3.0"
        );
        assert!(err.is_config());
    }

    #[test]
    fn too_small() {
        for s in ["198.18.0.0/31", "198.18.0.0/32", "fd18::/127", "fd18::/128"] {
            let err = Pool::new(net(s), None).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("Network {s} too small to allocate from")
            );
        }
        assert!(Pool::new(net("198.18.0.0/30"), None).is_ok());
        assert!(Pool::new(net("fd18::/126"), None).is_ok());
    }

    #[test]
    fn gateway_must_be_usable() {
        let n = net("198.18.3.0/24");
        for g in ["198.18.3.0", "198.18.3.255", "198.18.4.1", "fd18::1"] {
            let err = Pool::new(n, Some(ip(g))).unwrap_err();
            assert!(matches!(err, Error::InvalidGateway { .. }), "{g}: {err}");
        }
        let p = Pool::new(n, Some(ip("198.18.3.254"))).unwrap();
        assert!(p.contains_usable(ip("198.18.3.1")));
        assert!(!p.contains_usable(ip("198.18.3.254")));
    }

    #[test]
    fn candidates_resume_wrap_and_skip_gateway() {
        let p = Pool::new(net("198.18.3.0/29"), None).unwrap();
        let all: Vec<String> = p.candidates(None).map(|i| i.to_string()).collect();
        assert_eq!(
            all,
            [
                "198.18.3.2",
                "198.18.3.3",
                "198.18.3.4",
                "198.18.3.5",
                "198.18.3.6"
            ]
        );
        let from4: Vec<String> = p
            .candidates(Some(ip("198.18.3.4")))
            .map(|i| i.to_string())
            .collect();
        assert_eq!(
            from4,
            [
                "198.18.3.5",
                "198.18.3.6",
                "198.18.3.2",
                "198.18.3.3",
                "198.18.3.4"
            ]
        );
        // last in range: wrap to the start; outside the range: ignored.
        assert_eq!(
            p.candidates(Some(ip("198.18.3.6"))).next(),
            Some(ip("198.18.3.2"))
        );
        assert_eq!(
            p.candidates(Some(ip("198.18.9.9"))).next(),
            Some(ip("198.18.3.2"))
        );
        assert_eq!(
            p.candidates(Some(ip("fd18::3"))).next(),
            Some(ip("198.18.3.2"))
        );
    }

    #[test]
    fn huge_v6_pool_is_lazy() {
        let p = Pool::new(net("::/0"), Some(ip("::1"))).unwrap();
        assert_eq!(p.usable_count(), u128::MAX - 1);
        assert_eq!(
            p.candidates(Some(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")))
                .next(),
            Some(ip("::2"))
        );
    }

    #[test]
    fn overlap() {
        let a = Pool::new(net("198.18.0.0/16"), None).unwrap();
        let b = Pool::new(net("198.18.3.0/24"), None).unwrap();
        let c = Pool::new(net("198.19.0.0/24"), None).unwrap();
        let d = Pool::new(net("fd18::/64"), None).unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c) && !a.overlaps(&d));
    }
}
