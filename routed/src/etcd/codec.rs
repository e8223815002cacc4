//! `<prefix>/subnets/<name>`: one key per node, attached to one etcd lease. The name is
//! the node's subnet, `<a.b.c.d>-<len>`; a dual-stack node's is flannel's
//! `<a.b.c.d>-<len>&<v6>-<len>` (flannel's `MakeSubnetKey`), so flannel's own daemons see
//! both families of a hostgw node during a migration; an IPv6-only node's is `<v6>-<len>`
//! (flannel's etcd mode has no IPv6-only lease; its key regex skips such a key).
//!
//! Read: all three, and the earlier hostgw dual-stack form (`<a.b.c.d>-<len>` with the IPv6
//! subnet in the value's `"IPv6Subnet"`). A decoded [`Lease`] looks the same whichever form
//! it came in.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Deserializer, Serialize};

/// The value stored under a subnet key (flannel's field names; unknown fields ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LeaseValue {
    /// The IPv4 next hop; none on an IPv6-only node.
    #[serde(rename = "PublicIP", default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<IpAddr>,
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<IpAddr>,
    #[serde(default = "host_gw")]
    pub backend_type: String,
    #[serde(default)]
    pub node_name: String,
    #[serde(
        rename = "IPv6Subnet",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv6_subnet: Option<IpNetwork>,
    /// The node's link MTU (an extra field: flannel ignores it, and writes none). Absent:
    /// unknown, and the route to that node carries no mtu.
    #[serde(
        rename = "MTU",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "mtu_field"
    )]
    pub mtu: Option<u32>,
}

/// A link MTU the kernel accepts on a route: IPv4's minimum (RFC 791) up to the largest
/// IP packet.
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=65535;

/// An MTU outside [`MTU_RANGE`] (or not an integer) makes the lease malformed, with a
/// reason that names it rather than serde's bare "expected u32".
fn mtu_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let Some(v) = Option::<serde_json::Value>::deserialize(d)? else {
        return Ok(None);
    };
    v.as_u64()
        .and_then(|m| u32::try_from(m).ok())
        .filter(|m| MTU_RANGE.contains(m))
        .map(Some)
        .ok_or_else(|| {
            let (lo, hi) = (MTU_RANGE.start(), MTU_RANGE.end());
            serde::de::Error::custom(format!("MTU {v} is not a link MTU ({lo}..={hi})"))
        })
}

fn host_gw() -> String {
    "host-gw".into()
}

/// A decoded lease: the key's subnet plus its value (whose `ipv6_subnet` also holds the
/// IPv6 subnet a flannel dual-stack key names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The key's (first) subnet: IPv4, or IPv6 on an IPv6-only node.
    pub subnet: IpNetwork,
    pub value: LeaseValue,
    /// etcd create revision: the older of two overlapping leases wins.
    pub created: i64,
}

/// What the watcher keeps per key: a decoded lease, or why it could not be decoded.
pub type Decoded = Result<Lease, String>;

/// `198.18.3.0/24` ↔ `198.18.3.0-24` (flannel's key form; `:` stays as is for IPv6).
pub fn key_name(subnet: &IpNetwork) -> String {
    format!("{}-{}", subnet.ip(), subnet.prefix())
}

/// The key a node holding `subnet` (and, dual-stack, `ipv6_subnet`) claims: flannel's
/// `<v4>-<len>&<v6>-<len>` when it holds both.
pub fn key_name_of(subnet: &IpNetwork, ipv6_subnet: Option<&IpNetwork>) -> String {
    match ipv6_subnet {
        Some(v6) if subnet.is_ipv4() => format!("{}&{}", key_name(subnet), key_name(v6)),
        _ => key_name(subnet),
    }
}

/// A key's subnets: `<ip>-<len>`, or flannel's dual-stack `<v4>-<len>&<v6>-<len>`.
pub fn parse_key(name: &str) -> Result<(IpNetwork, Option<IpNetwork>), String> {
    let Some((v4, v6)) = name.split_once('&') else {
        return Ok((parse_key_name(name)?, None));
    };
    let (v4, v6) = (parse_key_name(v4)?, parse_key_name(v6)?);
    if !v4.is_ipv4() || !v6.is_ipv6() {
        return Err(format!("key {name:?} is not <ipv4>-<len>&<ipv6>-<len>"));
    }
    Ok((v4, Some(v6)))
}

/// Whether `name` is the one canonical spelling of the lease's key: `<subnet>-<len>`, or
/// flannel's dual-stack form of its two subnets.
pub fn is_canonical_key(name: &str, l: &Lease) -> bool {
    name == key_name(&l.subnet) || name == key_name_of(&l.subnet, l.value.ipv6_subnet.as_ref())
}

pub fn parse_key_name(name: &str) -> Result<IpNetwork, String> {
    let (ip, len) = name
        .rsplit_once('-')
        .ok_or_else(|| format!("key {name:?} is not <ip>-<len>"))?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("key {name:?}: bad address"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| format!("key {name:?}: bad prefix length"))?;
    let net = IpNetwork::new(ip, len).map_err(|e| format!("key {name:?}: {e}"))?;
    if !crate::net::is_canonical(&net) {
        return Err(format!("key {name:?}: host bits set"));
    }
    Ok(net)
}

/// Decodes one key (the part after `<prefix>/subnets/`) and its value.
pub fn decode(name: &str, value: &[u8], created: i64) -> Decoded {
    let value: LeaseValue =
        serde_json::from_slice(value).map_err(|e| format!("value is not a lease: {e}"))?;
    check(name, value, created)
}

/// The checks of [`decode`] on a value already parsed (the lease cache holds values as
/// they were decoded, and checks them again).
pub fn check(name: &str, mut value: LeaseValue, created: i64) -> Decoded {
    let (subnet, key_v6) = parse_key(name)?;
    if value.public_ip.is_none() && value.public_ipv6.is_none() {
        return Err("value is not a lease: neither PublicIP nor PublicIPv6".into());
    }
    match (key_v6, value.ipv6_subnet) {
        (Some(k), Some(v)) if k != v => {
            return Err(format!(
                "the key names IPv6 subnet {k} but the value's IPv6Subnet is {v}"
            ));
        }
        (Some(k), _) => value.ipv6_subnet = Some(k),
        (None, Some(v)) if subnet.is_ipv6() => {
            return Err(format!(
                "an IPv6 key with an IPv6Subnet ({v}): one IPv6 subnet per node"
            ));
        }
        _ => {}
    }
    Ok(Lease {
        subnet,
        value,
        created,
    })
}

pub fn encode(value: &LeaseValue) -> Vec<u8> {
    // A struct of strings and addresses always serialises.
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flannel_value_decodes() {
        let v = br#"{"PublicIP":"198.19.0.11","PublicIPv6":null,"BackendType":"host-gw","BackendData":null,"NodeName":"node-a"}"#;
        let l = decode("198.18.3.0-24", v, 7).unwrap();
        assert_eq!(l.subnet.to_string(), "198.18.3.0/24");
        assert_eq!(l.value.public_ip.unwrap().to_string(), "198.19.0.11");
        assert_eq!(l.value.node_name, "node-a");
        assert_eq!(l.created, 7);
    }

    #[test]
    fn round_trip_dual_stack() {
        let v = LeaseValue {
            public_ip: Some("198.19.0.11".parse().unwrap()),
            public_ipv6: Some("fd19:19::11".parse().unwrap()),
            backend_type: "host-gw".into(),
            node_name: "node-a".into(),
            ipv6_subnet: Some("fd18:18:0:3::/64".parse().unwrap()),
            mtu: Some(9000),
        };
        let text = String::from_utf8(encode(&v)).unwrap();
        assert!(
            text.contains(r#""IPv6Subnet":"fd18:18:0:3::/64""#),
            "{text}"
        );
        assert!(text.contains(r#""PublicIP":"198.19.0.11""#), "{text}");
        assert!(text.contains(r#""MTU":9000"#), "{text}");
        assert_eq!(
            decode("198.18.3.0-24", text.as_bytes(), 1).unwrap().value,
            v
        );
    }

    /// Byte for byte what flannel's `createSubnet` writes for a dual-stack host-gw node:
    /// `json.Marshal(LeaseAttrs)` (no NodeName, BackendData omitted) under `MakeSubnetKey`.
    #[test]
    fn flannel_dual_stack_key_decodes() {
        let v = br#"{"PublicIP":"198.19.0.21","PublicIPv6":"fd19:19::21","BackendType":"host-gw"}"#;
        let name = "198.18.7.0-24&fd18:18:0:7::-64";
        let l = decode(name, v, 3).unwrap();
        assert_eq!(l.subnet.to_string(), "198.18.7.0/24");
        assert_eq!(l.value.ipv6_subnet.unwrap().to_string(), "fd18:18:0:7::/64");
        assert_eq!(l.value.public_ipv6.unwrap().to_string(), "fd19:19::21");
        assert!(l.value.node_name.is_empty());
        assert!(is_canonical_key(name, &l));
        assert_eq!(key_name_of(&l.subnet, l.value.ipv6_subnet.as_ref()), name);
        // The earlier hostgw form of the same lease decodes to the same lease.
        let old = br#"{"PublicIP":"198.19.0.21","PublicIPv6":"fd19:19::21","BackendType":"host-gw","IPv6Subnet":"fd18:18:0:7::/64"}"#;
        let o = decode("198.18.7.0-24", old, 3).unwrap();
        assert_eq!(o, l);
        assert!(is_canonical_key("198.18.7.0-24", &o));
        // The value may repeat the key's IPv6 subnet, never contradict it.
        let same = br#"{"PublicIP":"198.19.0.21","PublicIPv6":"fd19:19::21","IPv6Subnet":"fd18:18:0:7::/64"}"#;
        assert_eq!(decode(name, same, 3).unwrap(), l);
        let other = br#"{"PublicIP":"198.19.0.21","PublicIPv6":"fd19:19::21","IPv6Subnet":"fd18:18:0:8::/64"}"#;
        assert!(
            decode(name, other, 3)
                .unwrap_err()
                .contains("fd18:18:0:8::/64")
        );
        for bad in [
            "198.18.7.0-24&",
            "198.18.7.0-24&fd18:18:0:7::",
            "198.18.7.0-24&198.18.8.0-24",
            "fd18:18:0:7::-64&198.18.7.0-24",
            "198.18.7.0-24&fd18:18:0:7::1-64",
            "198.18.7.0-24&fd18:18:0:7::-64&fd18:18:0:8::-64",
        ] {
            assert!(decode(bad, v, 3).is_err(), "{bad}");
        }
        // Non-canonical IPv6 spelling in a flannel key: decodes, but is not canonical.
        let l = decode("198.18.7.0-24&FD18:18:0:7:0::-64", v, 3).unwrap();
        assert!(!is_canonical_key("198.18.7.0-24&FD18:18:0:7:0::-64", &l));
    }

    #[test]
    fn ipv6_only_lease() {
        let v = br#"{"PublicIPv6":"fd19:19::11","BackendType":"host-gw","NodeName":"node-a"}"#;
        let l = decode("fd18:18:0:3::-64", v, 1).unwrap();
        assert_eq!(l.subnet.to_string(), "fd18:18:0:3::/64");
        assert_eq!(l.value.public_ip, None);
        let text = String::from_utf8(encode(&l.value)).unwrap();
        assert!(!text.contains("PublicIP\""), "{text}");
        assert!(text.contains(r#""PublicIPv6":"fd19:19::11""#), "{text}");
        // One IPv6 subnet per node, and some next hop.
        let two = br#"{"PublicIPv6":"fd19:19::11","IPv6Subnet":"fd18:18:0:4::/64"}"#;
        assert!(decode("fd18:18:0:3::-64", two, 1).is_err());
        let none = br#"{"PublicIP":null,"PublicIPv6":null,"BackendType":"host-gw"}"#;
        assert!(decode("fd18:18:0:3::-64", none, 1).is_err());
    }

    #[test]
    fn mtu_present_absent_and_bad() {
        let with = |m: &str| format!(r#"{{"PublicIP":"198.19.0.11","NodeName":"a"{m}}}"#);
        let mtu = |m: &str| decode("198.18.3.0-24", with(m).as_bytes(), 1).map(|l| l.value.mtu);
        assert_eq!(mtu(r#","MTU":1500"#), Ok(Some(1500)));
        assert_eq!(mtu(r#","MTU":9000"#), Ok(Some(9000)));
        assert_eq!(mtu(""), Ok(None), "absent: unknown");
        assert_eq!(mtu(r#","MTU":null"#), Ok(None));
        for bad in [
            "0",
            "67",
            "65536",
            "-1",
            "1500.5",
            r#""1500""#,
            "4294967296",
        ] {
            let e = mtu(&format!(r#","MTU":{bad}"#)).unwrap_err();
            assert!(e.contains("MTU"), "{bad}: {e}");
        }
        // Written only when known, so a lease without it stays what flannel writes.
        let v = decode("198.18.3.0-24", with("").as_bytes(), 1)
            .unwrap()
            .value;
        assert!(!String::from_utf8(encode(&v)).unwrap().contains("MTU"));
    }

    #[test]
    fn keys() {
        let n: IpNetwork = "198.18.3.0/24".parse().unwrap();
        assert_eq!(key_name(&n), "198.18.3.0-24");
        assert_eq!(parse_key_name("198.18.3.0-24").unwrap(), n);
        for bad in [
            "198.18.3.0",
            "198.18.3.1-24",
            "x-24",
            "198.18.3.0-33",
            "198.18.3.0-",
        ] {
            assert!(parse_key_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn garbage_values_are_errors() {
        for bad in [
            &b"{garbage"[..],
            b"[]",
            b"{}",
            br#"{"PublicIP":"not-an-ip"}"#,
            b"",
        ] {
            assert!(decode("198.18.3.0-24", bad, 1).is_err(), "{bad:?}");
        }
    }
}
