//! `<prefix>/subnets/<a.b.c.d>-<len>`: one key per node, attached to one etcd lease.
//!
//! Dual-stack nodes carry their IPv6 subnet in the same value (`"IPv6Subnet"`), not under a
//! separate `v6-subnets/` key as flannel does: one key and one etcd lease per node keeps the
//! node's two subnets appearing and disappearing together.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Deserializer, Serialize};

/// The value stored under a subnet key (flannel's field names; unknown fields ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LeaseValue {
    #[serde(rename = "PublicIP")]
    pub public_ip: IpAddr,
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

/// A decoded lease: the key's subnet plus its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
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
    let subnet = parse_key_name(name)?;
    let value: LeaseValue =
        serde_json::from_slice(value).map_err(|e| format!("value is not a lease: {e}"))?;
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
        assert_eq!(l.value.public_ip.to_string(), "198.19.0.11");
        assert_eq!(l.value.node_name, "node-a");
        assert_eq!(l.created, 7);
    }

    #[test]
    fn round_trip_dual_stack() {
        let v = LeaseValue {
            public_ip: "198.19.0.11".parse().unwrap(),
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
            assert!(decode("198.18.3.0-24", bad, 1).is_err());
        }
    }
}
