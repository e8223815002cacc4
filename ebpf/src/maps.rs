//! The shapes of the programs' maps, mirrored from bpf/fastpath.h. Pure: encoding and decoding
//! only, so it is unit-tested without a kernel; a test checks the reason list against the header.

use std::{fmt, net::Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};

/// What a program did with a packet, and why: the index of the per-CPU `counters` array.
/// The order is `enum hgw_reason` in bpf/fastpath.h.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    FwdPeer,
    FwdRedirect,
    NotIp,
    NotHost,
    Malformed,
    L4,
    Fragment,
    IpOptions,
    Ttl,
    IcmpOther,
    Outside,
    CtNat,
    CtError,
    NotForwarded,
    FibDrop,
    NoNeigh,
    FragNeeded,
    FibOther,
    EgressOther,
    BadSource,
}

impl Reason {
    pub const ALL: [Reason; 20] = [
        Reason::FwdPeer,
        Reason::FwdRedirect,
        Reason::NotIp,
        Reason::NotHost,
        Reason::Malformed,
        Reason::L4,
        Reason::Fragment,
        Reason::IpOptions,
        Reason::Ttl,
        Reason::IcmpOther,
        Reason::Outside,
        Reason::CtNat,
        Reason::CtError,
        Reason::NotForwarded,
        Reason::FibDrop,
        Reason::NoNeigh,
        Reason::FragNeeded,
        Reason::FibOther,
        Reason::EgressOther,
        Reason::BadSource,
    ];

    pub fn index(self) -> u32 {
        self as u32
    }

    /// True for the two outcomes that skip the stack.
    pub fn is_fast(self) -> bool {
        matches!(self, Reason::FwdPeer | Reason::FwdRedirect)
    }

    /// A metric label value: `hostgw_ebpf_packets_total{reason="ct_nat"}`.
    pub fn label(self) -> &'static str {
        match self {
            Reason::FwdPeer => "fwd_peer",
            Reason::FwdRedirect => "fwd_redirect",
            Reason::NotIp => "not_ip",
            Reason::NotHost => "not_host",
            Reason::Malformed => "malformed",
            Reason::L4 => "l4",
            Reason::Fragment => "fragment",
            Reason::IpOptions => "ip_options",
            Reason::Ttl => "ttl",
            Reason::IcmpOther => "icmp_other",
            Reason::Outside => "outside",
            Reason::CtNat => "ct_nat",
            Reason::CtError => "ct_error",
            Reason::NotForwarded => "not_fwded",
            Reason::FibDrop => "fib_drop",
            Reason::NoNeigh => "no_neigh",
            Reason::FragNeeded => "frag_needed",
            Reason::FibOther => "fib_other",
            Reason::EgressOther => "egress_other",
            Reason::BadSource => "bad_source",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Which program an interface carries; the value of the `fast_ifaces` map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfaceKind {
    Uplink = 1,
    Pod = 2,
}

impl IfaceKind {
    pub fn encode(self) -> [u8; 4] {
        (self as u32).to_ne_bytes()
    }

    pub fn decode(value: &[u8]) -> Option<IfaceKind> {
        match u32::from_ne_bytes(value.try_into().ok()?) {
            1 => Some(IfaceKind::Uplink),
            2 => Some(IfaceKind::Pod),
            _ => None,
        }
    }
}

/// The cluster networks (design.md's `Network` / `IPv6Network`): only destinations inside them
/// are fast-pathed. A family left out is never fast-pathed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClusterNetworks {
    pub v4: Option<Ipv4Network>,
    pub v6: Option<Ipv6Network>,
}

const HAVE_V4: u32 = 1;
const HAVE_V6: u32 = 2;

impl ClusterNetworks {
    /// `struct hgw_config`: addresses and masks in network byte order, then the flags.
    pub fn encode(&self) -> [u8; 44] {
        let mut b = [0u8; 44];
        let mut flags = 0;
        if let Some(n) = self.v4 {
            b[0..4].copy_from_slice(&n.network().octets());
            b[4..8].copy_from_slice(&n.mask().octets());
            flags |= HAVE_V4;
        }
        if let Some(n) = self.v6 {
            b[8..24].copy_from_slice(&n.network().octets());
            b[24..40].copy_from_slice(&v6_mask(n.prefix()).octets());
            flags |= HAVE_V6;
        }
        b[40..44].copy_from_slice(&flags.to_ne_bytes());
        b
    }
}

fn v6_mask(prefix: u8) -> Ipv6Addr {
    let bits = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    Ipv6Addr::from(bits)
}

/// Packets and bytes for one reason, summed over the CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

impl Count {
    /// Sums `struct hgw_counter` values, one per possible CPU.
    pub fn sum_per_cpu(values: &[Vec<u8>]) -> Count {
        values.iter().fold(Count::default(), |acc, v| {
            let word = |i: usize| {
                v.get(i * 8..i * 8 + 8)
                    .and_then(|s| s.try_into().ok())
                    .map_or(0, u64::from_ne_bytes)
            };
            Count {
                packets: acc.packets + word(0),
                bytes: acc.bytes + word(1),
            }
        })
    }
}

/// A snapshot of every counter, in `Reason::ALL` order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Counters(pub Vec<(Reason, Count)>);

impl Counters {
    pub fn get(&self, r: Reason) -> Count {
        self.0
            .iter()
            .find(|(k, _)| *k == r)
            .map_or(Count::default(), |(_, c)| *c)
    }

    /// Packets that skipped the stack.
    pub fn fast_packets(&self) -> u64 {
        self.0
            .iter()
            .filter(|(r, _)| r.is_fast())
            .map(|(_, c)| c.packets)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Rust list must be the C enum, in order: a mismatch would mislabel every counter.
    #[test]
    fn reasons_match_the_header() {
        let header = include_str!("../bpf/fastpath.h");
        let start = header.find("enum hgw_reason {").unwrap();
        let body = &header[start..header[start..].find("};").unwrap() + start];
        let names: Vec<&str> = body
            .lines()
            .filter_map(|l| l.trim().strip_prefix("HGW_"))
            .map(|l| l.split([',', ' ', '=']).next().unwrap())
            .collect();
        assert_eq!(names.last(), Some(&"REASONS"));
        assert_eq!(names.len() - 1, Reason::ALL.len());
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index() as usize, i);
            let c = names[i].to_ascii_lowercase().replace("pass_", "");
            assert_eq!(c, r.label(), "reason {i}");
        }
    }

    #[test]
    fn config_encodes_network_byte_order_and_flags() {
        let n = ClusterNetworks {
            v4: Some("198.18.0.0/17".parse().unwrap()),
            v6: Some("fd18:18::/48".parse().unwrap()),
        };
        let b = n.encode();
        assert_eq!(&b[0..8], &[198, 18, 0, 0, 255, 255, 128, 0]);
        assert_eq!(&b[8..12], &[0xfd, 0x18, 0, 0x18]);
        assert_eq!(&b[24..32], &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]);
        assert_eq!(u32::from_ne_bytes(b[40..44].try_into().unwrap()), 3);
        let none = ClusterNetworks::default().encode();
        assert_eq!(none, [0u8; 44]);
    }

    #[test]
    fn v6_mask_edges() {
        assert_eq!(v6_mask(0), Ipv6Addr::UNSPECIFIED);
        assert_eq!(v6_mask(128), Ipv6Addr::from(u128::MAX));
        assert_eq!(
            v6_mask(64),
            "ffff:ffff:ffff:ffff::".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn per_cpu_values_are_summed() {
        let v = |p: u64, b: u64| [p.to_ne_bytes(), b.to_ne_bytes()].concat();
        let c = Count::sum_per_cpu(&[v(1, 100), v(2, 50), vec![]]);
        assert_eq!(
            c,
            Count {
                packets: 3,
                bytes: 150
            }
        );
    }

    #[test]
    fn iface_kind_round_trips_and_rejects_junk() {
        for k in [IfaceKind::Uplink, IfaceKind::Pod] {
            assert_eq!(IfaceKind::decode(&k.encode()), Some(k));
        }
        assert_eq!(IfaceKind::decode(&7u32.to_ne_bytes()), None);
        assert_eq!(IfaceKind::decode(&[1, 0]), None);
    }
}
