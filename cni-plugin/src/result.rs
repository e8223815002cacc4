//! The ADD result, read from any supported version and written in the one asked for.
//!
//! Derived serde types: one shape of `ips[]` per result version (0.3.x/0.4.0 spell the
//! family out, 1.x do not); every object keeps the keys it does not know in a flattened
//! map, so a prevResult from another plugin passes through unchanged.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{error::Error, version::Version};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
    /// Top-level keys of a prevResult that we do not know, kept as given.
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(
        default,
        skip_serializing_if = "is_empty",
        deserialize_with = "non_empty"
    )]
    pub mac: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "is_empty",
        deserialize_with = "non_empty"
    )]
    pub sandbox: Option<String>,
    /// 1.1.0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// 1.1.0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// 1.1.0 only.
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// The rest are 1.1.0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// libcni's `types.DNS`; also the config's `dns` key, so a wrong type there is refused
/// rather than echoed in a form libcni cannot parse. Unknown keys pass through, as
/// libcni ignores them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `ips[]` of 0.3.0, 0.3.1 and 0.4.0: the family is spelled out ("4" or "6").
#[derive(Serialize, Deserialize)]
struct Ip040 {
    version: String,
    #[serde(flatten)]
    ip: IpConfig,
}

/// The whole result as written for one version; `I` is that version's `ips[]` entry.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a, I> {
    cni_version: String,
    interfaces: Vec<Interface>,
    ips: Vec<I>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    routes: Vec<Route>,
    dns: &'a Dns,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// What a prevResult is read as: its version decides the shape of `ips[]`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "I: Deserialize<'de>"))]
struct WireIn<I> {
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<I>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Dns,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

fn is_empty(s: &Option<String>) -> bool {
    s.as_deref().is_none_or(str::is_empty)
}

/// `"mac": ""` (an interface without one) reads as absent.
fn non_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
}

// === impl CniResult ===

impl CniResult {
    /// Reads a result of any supported shape (prevResult from a runtime or an earlier plugin).
    pub fn from_json(v: &Value) -> Result<CniResult, Error> {
        let bad = |e: serde_json::Error| Error::Decode(format!("prevResult: {e}"));
        let mut extra = v
            .as_object()
            .cloned()
            .ok_or_else(|| Error::Decode("prevResult: not an object".into()))?;
        let version = extra.remove("cniVersion");
        let old = match &version {
            Some(Value::String(s)) => Version::parse(s).is_ok_and(Version::ips_carry_version),
            _ => false,
        };
        let rest = Value::Object(extra);
        let mut r = if old {
            let w: WireIn<Ip040> = serde_json::from_value(rest).map_err(bad)?;
            let mut ips = Vec::with_capacity(w.ips.len());
            for i in w.ips {
                let fam = if i.ip.address.is_ipv4() { "4" } else { "6" };
                if i.version != fam {
                    return Err(Error::Decode(format!(
                        "prevResult: ips[] entry {} has version {:?}",
                        i.ip.address, i.version
                    )));
                }
                ips.push(i.ip);
            }
            CniResult {
                interfaces: w.interfaces,
                ips,
                routes: w.routes,
                dns: w.dns,
                extra: w.extra,
            }
        } else {
            let w: WireIn<IpConfig> = serde_json::from_value(rest).map_err(bad)?;
            CniResult {
                interfaces: w.interfaces,
                ips: w.ips,
                routes: w.routes,
                dns: w.dns,
                extra: w.extra,
            }
        };
        // A 1.x entry carrying 0.x's `version` is not passed on in the wrong shape.
        r.ips
            .iter_mut()
            .for_each(|ip| drop(ip.extra.remove("version")));
        Ok(r)
    }

    /// Writes the result in the exact shape of `version`.
    pub fn to_json(&self, version: Version) -> Value {
        let is_1_1 = version >= Version::V1_1_0;
        let interfaces = self
            .interfaces
            .iter()
            .map(|i| i.for_version(is_1_1))
            .collect();
        let routes = self.routes.iter().map(|r| r.for_version(is_1_1)).collect();
        let mut extra = self.extra.clone();
        extra.remove("cniVersion");
        let written = if version.ips_carry_version() {
            let ips = self
                .ips
                .iter()
                .map(|ip| Ip040 {
                    version: if ip.address.is_ipv4() { "4" } else { "6" }.into(),
                    ip: ip.clone(),
                })
                .collect();
            serde_json::to_value(Wire {
                cni_version: version.to_string(),
                interfaces,
                ips,
                routes,
                dns: &self.dns,
                extra,
            })
        } else {
            serde_json::to_value(Wire {
                cni_version: version.to_string(),
                interfaces,
                ips: self.ips.clone(),
                routes,
                dns: &self.dns,
                extra,
            })
        };
        written.expect("a result of plain strings and numbers always serialises")
    }
}

impl Interface {
    fn for_version(&self, is_1_1: bool) -> Interface {
        let mut i = self.clone();
        if !is_1_1 {
            (i.mtu, i.socket_path, i.pci_id) = (None, None, None);
        }
        i
    }
}

impl Route {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Route {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
            extra: Map::new(),
        }
    }

    fn for_version(&self, is_1_1: bool) -> Route {
        let mut r = self.clone();
        if !is_1_1 {
            (r.mtu, r.advmss, r.priority, r.table, r.scope) = (None, None, None, None, None);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "hgw0".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:00:00:00:00:02".into()),
                    sandbox: Some("/run/netns/p".into()),
                    mtu: Some(1400),
                    ..Default::default()
                },
            ],
            ips: vec![IpConfig {
                address: "198.18.3.2/24".parse().unwrap(),
                gateway: Some("198.18.3.1".parse().unwrap()),
                interface: Some(1),
                extra: Map::new(),
            }],
            routes: vec![Route {
                mtu: Some(1400),
                ..Route::new(
                    "0.0.0.0/0".parse().unwrap(),
                    Some("198.18.3.1".parse().unwrap()),
                )
            }],
            ..Default::default()
        }
    }

    #[test]
    fn shape_per_version() {
        let r = sample();
        let v04 = r.to_json(Version::parse("0.4.0").unwrap());
        assert_eq!(v04["cniVersion"], "0.4.0");
        assert_eq!(v04["ips"][0]["version"], "4");
        assert!(
            v04["interfaces"][1].get("mtu").is_none(),
            "1.1-only field leaked into 0.4.0"
        );
        assert!(v04["routes"][0].get("mtu").is_none());
        let v10 = r.to_json(Version::V1_0_0);
        assert!(v10["ips"][0].get("version").is_none());
        assert!(v10["interfaces"][1].get("mtu").is_none());
        let v11 = r.to_json(Version::V1_1_0);
        assert_eq!(v11["interfaces"][1]["mtu"], 1400);
        assert_eq!(v11["routes"][0]["mtu"], 1400);
        assert_eq!(v11["ips"][0]["interface"], 1);
        assert_eq!(v11["ips"][0]["address"], "198.18.3.2/24");
        assert_eq!(v11["interfaces"][1]["sandbox"], "/run/netns/p");
        assert!(v11["interfaces"][0].get("sandbox").is_none());
        assert_eq!(v11["dns"], json!({}));
    }

    #[test]
    fn round_trips_through_every_version() {
        let r = sample();
        let back = CniResult::from_json(&r.to_json(Version::V1_1_0)).unwrap();
        assert_eq!(back, r);
        let old = CniResult::from_json(&r.to_json(Version::parse("0.3.1").unwrap())).unwrap();
        assert_eq!(old.ips, r.ips);
    }

    #[test]
    fn unknown_keys_pass_through_and_old_shape_is_not_leaked() {
        let prev = json!({"cniVersion":"0.4.0","foo":{"x":1},
            "interfaces":[{"name":"a","mac":"","vendor":"x"}],
            "ips":[{"version":"4","address":"198.18.3.2/24","label":"y"}],
            "routes":[{"dst":"198.18.0.0/16","weird":true}],
            "dns":{"nameservers":["198.18.0.10"],"x-vendor":1}});
        let r = CniResult::from_json(&prev).unwrap();
        assert_eq!(r.interfaces[0].mac, None);
        let out = r.to_json(Version::V1_0_0);
        assert_eq!(out["foo"], json!({"x":1}));
        assert_eq!(out["interfaces"][0], json!({"name":"a","vendor":"x"}));
        assert_eq!(
            out["ips"][0],
            json!({"address":"198.18.3.2/24","label":"y"})
        );
        assert_eq!(out["routes"][0]["weird"], true);
        assert_eq!(
            out["dns"],
            json!({"nameservers":["198.18.0.10"],"x-vendor":1})
        );
        let again = r.to_json(Version::parse("0.3.0").unwrap());
        assert_eq!(again["ips"][0]["version"], "4");
        // A 1.x prevResult whose entry still says "version" is written back without it.
        let mixed = json!({"cniVersion":"1.0.0","ips":[{"version":"4","address":"198.18.3.2/24"}]});
        let out = CniResult::from_json(&mixed)
            .unwrap()
            .to_json(Version::V1_0_0);
        assert!(out["ips"][0].get("version").is_none(), "{out}");
    }

    #[test]
    fn bad_prev_result_is_a_decode_error() {
        for bad in [
            json!(3),
            json!({"ips":[{"address":"nope"}]}),
            json!({"interfaces":[{}]}),
            json!({"interfaces":"eth0"}),
            json!({"routes":[{"dst":"198.18.0.0/33"}]}),
            json!({"routes":[{"gw":"198.18.0.1"}]}),
            json!({"dns":{"nameservers":"198.18.0.10"}}),
            json!({"cniVersion":"0.4.0","ips":[{"version":"6","address":"198.18.3.2/24"}]}),
            json!({"cniVersion":"0.4.0","ips":[{"address":"198.18.3.2/24"}]}),
        ] {
            assert_eq!(CniResult::from_json(&bad).unwrap_err().code(), 6, "{bad}");
        }
    }
}
