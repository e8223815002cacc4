//! The ADD result, read from any supported version and written in the one asked for.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::{Map, Value, json};

use crate::{error::Error, version::Version};

/// Route fields that only 1.1.0 knows; dropped when answering an older version.
const ROUTE_1_1_FIELDS: [&str; 5] = ["mtu", "advmss", "priority", "table", "scope"];
/// Interface fields that only 1.1.0 knows.
const IFACE_1_1_FIELDS: [&str; 3] = ["mtu", "socketPath", "pciID"];

#[derive(Clone, Debug, Default, PartialEq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    pub sandbox: Option<String>,
    /// Everything else the interface carried (`mtu`, `socketPath`, `pciID`), kept as given.
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct IpConfig {
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    pub extra: Map<String, Value>,
}

impl CniResult {
    /// Reads a result of any supported shape (prevResult from a runtime or an earlier plugin).
    pub fn from_json(v: &Value) -> Result<CniResult, Error> {
        let bad = |what: &str| Error::Decode(format!("prevResult: {what}"));
        let obj = v.as_object().ok_or_else(|| bad("not an object"))?;
        let mut r = CniResult {
            dns: obj.get("dns").cloned(),
            ..Default::default()
        };
        for i in obj
            .get("interfaces")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let mut extra = i.as_object().cloned().ok_or_else(|| bad("interface"))?;
            let name = extra
                .remove("name")
                .and_then(|n| n.as_str().map(str::to_owned));
            let str_field = |m: &mut Map<String, Value>, k| {
                m.remove(k)
                    .and_then(|x| x.as_str().map(str::to_owned))
                    .filter(|s| !s.is_empty())
            };
            let mac = str_field(&mut extra, "mac");
            let sandbox = str_field(&mut extra, "sandbox");
            r.interfaces.push(Interface {
                name: name.ok_or_else(|| bad("interface name"))?,
                mac,
                sandbox,
                extra,
            });
        }
        for ip in obj
            .get("ips")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let address = ip["address"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| bad("ips[].address"))?;
            let gateway = match ip.get("gateway").and_then(Value::as_str) {
                Some(g) => Some(g.parse().map_err(|_| bad("ips[].gateway"))?),
                None => None,
            };
            let interface = ip
                .get("interface")
                .and_then(Value::as_u64)
                .map(|i| i as usize);
            r.ips.push(IpConfig {
                address,
                gateway,
                interface,
            });
        }
        for rt in obj
            .get("routes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let mut extra = rt.as_object().cloned().ok_or_else(|| bad("route"))?;
            let dst = extra
                .remove("dst")
                .and_then(|d| d.as_str().and_then(|d| d.parse().ok()));
            let gw = match extra.remove("gw") {
                Some(Value::String(g)) => Some(g.parse().map_err(|_| bad("routes[].gw"))?),
                _ => None,
            };
            r.routes.push(Route {
                dst: dst.ok_or_else(|| bad("routes[].dst"))?,
                gw,
                extra,
            });
        }
        Ok(r)
    }

    /// Writes the result in the exact shape of `version`.
    pub fn to_json(&self, version: Version) -> Value {
        let is_1_1 = version >= Version::V1_1_0;
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut m = i.extra.clone();
                if !is_1_1 {
                    IFACE_1_1_FIELDS.iter().for_each(|k| drop(m.remove(*k)));
                }
                m.insert("name".into(), i.name.clone().into());
                if let Some(mac) = &i.mac {
                    m.insert("mac".into(), mac.clone().into());
                }
                if let Some(sb) = &i.sandbox {
                    m.insert("sandbox".into(), sb.clone().into());
                }
                Value::Object(m)
            })
            .collect();
        let ips: Vec<Value> = self.ips.iter().map(|ip| ip_json(ip, version)).collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut m = r.extra.clone();
                if !is_1_1 {
                    ROUTE_1_1_FIELDS.iter().for_each(|k| drop(m.remove(*k)));
                }
                m.insert("dst".into(), r.dst.to_string().into());
                if let Some(gw) = r.gw {
                    m.insert("gw".into(), gw.to_string().into());
                }
                Value::Object(m)
            })
            .collect();
        let mut out =
            json!({ "cniVersion": version.to_string(), "interfaces": interfaces, "ips": ips });
        if !routes.is_empty() {
            out["routes"] = routes.into();
        }
        out["dns"] = self.dns.clone().unwrap_or_else(|| json!({}));
        out
    }
}

fn ip_json(ip: &IpConfig, version: Version) -> Value {
    let mut m = Map::new();
    if version.ips_carry_version() {
        let fam = if ip.address.is_ipv4() { "4" } else { "6" };
        m.insert("version".into(), fam.into());
    }
    if let Some(i) = ip.interface {
        m.insert("interface".into(), i.into());
    }
    m.insert("address".into(), ip.address.to_string().into());
    if let Some(gw) = ip.gateway {
        m.insert("gateway".into(), gw.to_string().into());
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        let mut extra = Map::new();
        extra.insert("mtu".into(), 1400.into());
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
                    extra: extra.clone(),
                },
            ],
            ips: vec![IpConfig {
                address: "198.18.3.2/24".parse().unwrap(),
                gateway: Some("198.18.3.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("198.18.3.1".parse().unwrap()),
                extra,
            }],
            dns: None,
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
    }

    #[test]
    fn round_trips_through_every_version() {
        let r = sample();
        let back = CniResult::from_json(&r.to_json(Version::V1_1_0)).unwrap();
        assert_eq!(back.ips, r.ips);
        assert_eq!(back.interfaces, r.interfaces);
        let old = CniResult::from_json(&r.to_json(Version::parse("0.3.1").unwrap())).unwrap();
        assert_eq!(old.ips, r.ips);
    }

    #[test]
    fn bad_prev_result_is_a_decode_error() {
        for bad in [
            json!(3),
            json!({"ips":[{"address":"nope"}]}),
            json!({"interfaces":[{}]}),
        ] {
            assert_eq!(CniResult::from_json(&bad).unwrap_err().code(), 6, "{bad}");
        }
    }
}
