//! `<prefix>/config`: the cluster network, in flannel's field names so an existing
//! flannel network config can be reused. Parsed once into a validated [`NetConfig`].

use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::net;

/// The JSON as stored; unknown fields (flannel has several) are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    network: Option<IpNetwork>,
    subnet_len: Option<u8>,
    subnet_min: Option<IpNetwork>,
    subnet_max: Option<IpNetwork>,
    #[serde(rename = "IPv6Network")]
    ipv6_network: Option<IpNetwork>,
    #[serde(rename = "IPv6SubnetLen")]
    ipv6_subnet_len: Option<u8>,
    #[serde(rename = "IPv6SubnetMin")]
    ipv6_subnet_min: Option<IpNetwork>,
    #[serde(rename = "IPv6SubnetMax")]
    ipv6_subnet_max: Option<IpNetwork>,
    backend: Option<RawBackend>,
}

#[derive(Debug, Deserialize)]
struct RawBackend {
    #[serde(rename = "Type")]
    kind: Option<String>,
}

/// One address family's pool: subnets of `subnet_len` between `min` and `max` (inclusive,
/// as start addresses) inside `network`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub network: IpNetwork,
    pub subnet_len: u8,
    pub min: u128,
    pub max: u128,
}

/// At least one family: `Network` (IPv4), `IPv6Network`, or both (dual-stack).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub v4: Option<Pool>,
    pub v6: Option<Pool>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("network config is not valid JSON: {0}")]
    Json(String),
    #[error("network config has neither Network nor IPv6Network")]
    NoNetwork,
    #[error("network config: {0}")]
    Invalid(String),
    #[error("network config: backend type {0:?} is not supported (only \"host-gw\")")]
    Backend(String),
}

impl NetConfig {
    pub fn parse(bytes: &[u8]) -> Result<NetConfig, ConfigError> {
        let raw: RawConfig =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::Json(e.to_string()))?;
        if let Some(kind) = raw.backend.and_then(|b| b.kind)
            && kind != "host-gw"
        {
            return Err(ConfigError::Backend(kind));
        }
        let v4 = match raw.network {
            Some(n) if n.is_ipv4() => {
                Some(pool(n, raw.subnet_len, 24, raw.subnet_min, raw.subnet_max)?)
            }
            Some(n) => return Err(ConfigError::Invalid(format!("Network {n} is not IPv4"))),
            None => None,
        };
        let v6 = match raw.ipv6_network {
            Some(n) if n.is_ipv6() => Some(pool(
                n,
                raw.ipv6_subnet_len,
                64,
                raw.ipv6_subnet_min,
                raw.ipv6_subnet_max,
            )?),
            Some(n) => return Err(ConfigError::Invalid(format!("IPv6Network {n} is not IPv6"))),
            None => None,
        };
        if v4.is_none() && v6.is_none() {
            return Err(ConfigError::NoNetwork);
        }
        Ok(NetConfig { v4, v6 })
    }

    /// The pool whose subnet names a node's key: IPv4's, or IPv6's in an IPv6-only cluster.
    pub fn primary(&self) -> &Pool {
        match (&self.v4, &self.v6) {
            (Some(p), _) | (None, Some(p)) => p,
            // `parse` never builds a config without a pool.
            (None, None) => unreachable!("a NetConfig has at least one pool"),
        }
    }

    /// The pool of the second family of a dual-stack cluster (none in a single-stack one).
    pub fn secondary(&self) -> Option<&Pool> {
        self.v4.as_ref().and(self.v6.as_ref())
    }

    /// Every pool, IPv4 first.
    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.v4.iter().chain(self.v6.iter())
    }

    /// The pool of one family.
    pub fn pool(&self, v6: bool) -> Option<&Pool> {
        if v6 {
            self.v6.as_ref()
        } else {
            self.v4.as_ref()
        }
    }

    /// `Network 198.18.0.0/16 SubnetLen 24`, `IPv6Network fd18:18::/48 IPv6SubnetLen 64`,
    /// or both: how `status` and the logs name a config.
    pub fn describe(&self) -> String {
        let v4 = self
            .v4
            .iter()
            .map(|p| format!("Network {} SubnetLen {}", p.network, p.subnet_len));
        let v6 = self
            .v6
            .iter()
            .map(|p| format!("IPv6Network {} IPv6SubnetLen {}", p.network, p.subnet_len));
        v4.chain(v6).collect::<Vec<_>>().join(" ")
    }
}

/// Flannel's defaults: SubnetLen 24 (v4) / 64 (v6), SubnetMin the second subnet (the first
/// holds the network address), SubnetMax the last one.
fn pool(
    network: IpNetwork,
    len: Option<u8>,
    default_len: u8,
    min: Option<IpNetwork>,
    max: Option<IpNetwork>,
) -> Result<Pool, ConfigError> {
    let bad = |m: String| ConfigError::Invalid(m);
    if !net::is_canonical(&network) {
        return Err(bad(format!("{network} has host bits set")));
    }
    let bits = if network.is_ipv4() { 32 } else { 128 };
    let subnet_len = len.unwrap_or(default_len.max(network.prefix()));
    if subnet_len < network.prefix() || subnet_len > bits {
        return Err(bad(format!(
            "subnet length {subnet_len} does not fit in {network}"
        )));
    }
    let (_, start, end) = net::range(&network);
    let step = step(bits, subnet_len);
    let last = end - (step - 1);
    let default_min = if last > start { start + step } else { start };
    let min = bound(min, &network, default_min, "SubnetMin")?;
    let max = bound(max, &network, last, "SubnetMax")?;
    if min > max || min % step != start % step || max % step != start % step {
        return Err(bad(format!(
            "SubnetMin/SubnetMax do not delimit /{subnet_len} subnets"
        )));
    }
    Ok(Pool {
        network,
        subnet_len,
        min,
        max,
    })
}

fn bound(
    given: Option<IpNetwork>,
    network: &IpNetwork,
    default: u128,
    what: &str,
) -> Result<u128, ConfigError> {
    match given {
        None => Ok(default),
        Some(n) if network.contains(n.ip()) => Ok(net::range(&n).1.max(addr(n.ip()))),
        Some(n) => Err(ConfigError::Invalid(format!(
            "{what} {n} is outside {network}"
        ))),
    }
}

use hostgw_common::ip::bits as addr;

/// Number of addresses in one subnet of length `len` (saturating at 2^127 for /0 v6).
pub fn step(bits: u8, len: u8) -> u128 {
    let host = (bits - len) as u32;
    if host >= 128 {
        1u128 << 127
    } else {
        1u128 << host
    }
}

impl Pool {
    pub fn v6(&self) -> bool {
        self.network.is_ipv6()
    }

    pub fn step(&self) -> u128 {
        step(if self.v6() { 128 } else { 32 }, self.subnet_len)
    }

    /// How many subnets lie between min and max inclusive.
    pub fn count(&self) -> u128 {
        (self.max - self.min) / self.step() + 1
    }

    pub fn nth(&self, i: u128) -> Option<IpNetwork> {
        net::from_start(self.v6(), self.min + i * self.step(), self.subnet_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flannel_config_with_defaults() {
        let c = NetConfig::parse(
            br#"{"Network":"198.18.0.0/16","Backend":{"Type":"host-gw"},"EnableIPv4":true}"#,
        )
        .unwrap();
        let v4 = c.v4.as_ref().unwrap();
        assert_eq!(v4.subnet_len, 24);
        assert_eq!(v4.nth(0).unwrap().to_string(), "198.18.1.0/24");
        assert_eq!(v4.count(), 255);
        assert!(c.v6.is_none());
    }

    #[test]
    fn min_max_and_v6() {
        let c = NetConfig::parse(
            br#"{"Network":"198.18.0.0/16","SubnetLen":26,"SubnetMin":"198.18.4.0","SubnetMax":"198.18.4.192",
                "IPv6Network":"fd18:18::/48","IPv6SubnetLen":64}"#,
        );
        // SubnetMin given as a bare address is not a network: ipnetwork reads it as /32.
        let c = c.unwrap();
        let v4 = c.v4.as_ref().unwrap();
        assert_eq!(v4.count(), 4);
        assert_eq!(v4.nth(3).unwrap().to_string(), "198.18.4.192/26");
        let v6 = c.v6.unwrap();
        assert_eq!(v6.nth(0).unwrap().to_string(), "fd18:18:0:1::/64");
        assert_eq!(v6.count(), 65535);
    }

    #[test]
    fn ipv6_only() {
        let c = NetConfig::parse(
            br#"{"IPv6Network":"fd18:18::/48","IPv6SubnetLen":64,"Backend":{"Type":"host-gw"}}"#,
        )
        .unwrap();
        assert!(c.v4.is_none() && c.secondary().is_none());
        assert!(c.primary().v6());
        assert_eq!(c.primary().nth(0).unwrap().to_string(), "fd18:18:0:1::/64");
        assert_eq!(c.describe(), "IPv6Network fd18:18::/48 IPv6SubnetLen 64");
        let dual = NetConfig::parse(br#"{"Network":"198.18.0.0/16","IPv6Network":"fd18:18::/48"}"#)
            .unwrap();
        assert!(!dual.primary().v6() && dual.secondary().unwrap().v6());
    }

    #[test]
    fn errors_are_clear() {
        assert!(matches!(
            NetConfig::parse(b"{not json"),
            Err(ConfigError::Json(_))
        ));
        assert_eq!(NetConfig::parse(b"{}"), Err(ConfigError::NoNetwork));
        assert_eq!(
            NetConfig::parse(br#"{"Network":"198.18.0.0/16","Backend":{"Type":"vxlan"}}"#),
            Err(ConfigError::Backend("vxlan".into()))
        );
        for bad in [
            r#"{"Network":"198.18.0.0/16","SubnetLen":8}"#,
            r#"{"Network":"198.18.0.1/16"}"#,
            r#"{"Network":"198.18.0.0/16","SubnetMin":"198.20.0.0/24"}"#,
            r#"{"Network":"198.18.0.0/16","SubnetMin":"198.18.9.0/24","SubnetMax":"198.18.2.0/24"}"#,
            r#"{"Network":"fd18::/48"}"#,
            r#"{"IPv6Network":"198.18.0.0/16"}"#,
            r#"{"IPv6Network":"fd18:18::/48","IPv6SubnetLen":129}"#,
        ] {
            assert!(
                matches!(
                    NetConfig::parse(bad.as_bytes()),
                    Err(ConfigError::Invalid(_))
                ),
                "{bad}"
            );
        }
    }
}
