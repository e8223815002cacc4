//! The network configuration on stdin, parsed once into validated types.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use hostgw_common::{SubnetFile, subnet_file::SubnetFileError};
use hostgw_ipam::{Attachment, Pool};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::Deserialize;
use serde_json::Value;

use crate::{error::Error, version::Version};

pub const DEFAULT_SUBNET_FILE: &str = hostgw_common::subnet_file::DEFAULT_PATH;
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
pub const DEFAULT_BRIDGE: &str = "cni0";

/// The keys we read; every other key passes through untouched (the spec requires that).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    mode: Option<String>,
    subnet_file: Option<PathBuf>,
    subnet: Option<Ipv4Network>,
    ipv6_subnet: Option<Ipv6Network>,
    mtu: Option<u32>,
    data_dir: Option<PathBuf>,
    bridge: Option<String>,
    log_file: Option<PathBuf>,
    dns: Option<Value>,
    prev_result: Option<Value>,
    #[serde(default)]
    runtime_config: RuntimeConfig,
    #[serde(default)]
    args: Args,
}

#[derive(Deserialize, Default)]
struct RuntimeConfig {
    #[serde(default)]
    ips: Vec<String>,
    mac: Option<String>,
}

#[derive(Deserialize, Default)]
struct Args {
    #[serde(default)]
    cni: CniArgs,
}

#[derive(Deserialize, Default)]
struct CniArgs {
    #[serde(default)]
    ips: Vec<String>,
    mac: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Per-pod point-to-point: gateway /32 on each host veth, a /32 host route per pod.
    Ptp,
    /// flannel style: host veths on a bridge that holds the gateway.
    Bridge(String),
}

/// A validated network configuration.
#[derive(Clone, Debug)]
pub struct NetConf {
    pub version: Version,
    pub name: String,
    pub mode: Mode,
    pub subnet_file: PathBuf,
    pub subnet: Option<Ipv4Network>,
    pub ipv6_subnet: Option<Ipv6Network>,
    pub mtu: Option<u32>,
    pub data_dir: PathBuf,
    pub log_file: Option<PathBuf>,
    pub dns: Option<Value>,
    pub prev_result: Option<Value>,
    /// Addresses asked for by `runtimeConfig.ips` and `args.cni.ips` (prefixes dropped).
    pub requested_ips: Vec<IpAddr>,
    /// `runtimeConfig.mac` wins over `args.cni.mac`; `CNI_ARGS MAC=` is the fallback.
    pub mac: Option<String>,
    raw: Value,
}

impl NetConf {
    /// `value` is the whole stdin object; `name` and `cniVersion` were checked by the dispatcher.
    pub fn parse(value: &Value, name: &str, version: Version) -> Result<NetConf, Error> {
        let raw: RawConf = serde_json::from_value(value.clone())
            .map_err(|e| Error::Config(format!("invalid network config: {e}")))?;
        let mode = match raw.mode.as_deref() {
            None | Some("ptp") => Mode::Ptp,
            Some("bridge") => {
                let br = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.into());
                validate_ifname(&br).map_err(|e| Error::Config(format!("bridge: {e}")))?;
                Mode::Bridge(br)
            }
            Some(m) => {
                return Err(Error::Config(format!(
                    "mode {m:?} is not \"ptp\" or \"bridge\""
                )));
            }
        };
        if let Some(mtu) = raw.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(Error::Config(format!("mtu {mtu} is outside 68..65535")));
        }
        let requested_ips = raw
            .runtime_config
            .ips
            .iter()
            .chain(&raw.args.cni.ips)
            .map(|s| parse_ip_maybe_prefix(s))
            .collect::<Result<Vec<_>, _>>()?;
        let mac = raw.runtime_config.mac.or(raw.args.cni.mac);
        if let Some(m) = &mac {
            parse_mac(m)?;
        }
        Ok(NetConf {
            version,
            name: name.to_owned(),
            mode,
            subnet_file: raw
                .subnet_file
                .unwrap_or_else(|| DEFAULT_SUBNET_FILE.into()),
            subnet: raw.subnet,
            ipv6_subnet: raw.ipv6_subnet,
            mtu: raw.mtu,
            data_dir: raw.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            log_file: raw.log_file,
            dns: raw.dns,
            prev_result: raw.prev_result.filter(|v| !v.is_null()),
            requested_ips,
            mac,
            raw: value.clone(),
        })
    }

    /// The raw stdin object, for keys only one verb reads (GC's valid attachments).
    pub fn raw(&self) -> &Value {
        &self.raw
    }

    /// The node's subnets: the static `subnet`/`ipv6Subnet` if set, else the daemon's file.
    pub fn node_subnets(&self) -> Result<NodeSubnets, Error> {
        if let Some(v4) = self.subnet {
            return Ok(NodeSubnets {
                v4: Some(v4),
                v6: self.ipv6_subnet,
                mtu: None,
            });
        }
        let file = load_subnet_file(&self.subnet_file)?;
        if file.subnet.is_none() && file.ipv6_subnet.is_none() {
            return Err(Error::Decode(format!(
                "subnet file {} names no subnet",
                self.subnet_file.display()
            )));
        }
        Ok(NodeSubnets {
            v4: file.subnet,
            v6: self.ipv6_subnet.or(file.ipv6_subnet),
            mtu: file.mtu,
        })
    }
}

/// What the node may hand out, and the MTU the daemon measured on its uplink.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSubnets {
    pub v4: Option<Ipv4Network>,
    pub v6: Option<Ipv6Network>,
    pub mtu: Option<u32>,
}

impl NodeSubnets {
    /// One IPAM pool per family, IPv4 first; the gateway is the subnet's first address.
    pub fn pools(&self) -> Result<Vec<Pool>, Error> {
        let nets = self
            .v4
            .map(IpNetwork::V4)
            .into_iter()
            .chain(self.v6.map(IpNetwork::V6));
        let pools: Vec<Pool> = nets.map(|n| Pool::new(n, None)).collect::<Result<_, _>>()?;
        if pools.is_empty() {
            return Err(Error::Config("no subnet to allocate from".into()));
        }
        Ok(pools)
    }
}

/// The daemon's subnet file. A missing file means the daemon has not leased a subnet yet:
/// try again later (11); one that cannot be read is I/O (5), one that makes no sense decode (6).
fn load_subnet_file(path: &Path) -> Result<SubnetFile, Error> {
    SubnetFile::read(path).map_err(|e| match e {
        SubnetFileError::Missing(_) => {
            Error::TryAgain(format!("{e} yet: is hostgw-routed running on this node?"))
        }
        SubnetFileError::Io { source, .. } => {
            Error::io(format!("read subnet file {}", path.display()))(source)
        }
        SubnetFileError::Decode { .. } => Error::Decode(e.to_string()),
    })
}

/// CNI_ARGS: `K=V;K=V`. We read IP and MAC; the K8S_* labels runtimes send are known;
/// any other key is an error unless `IgnoreUnknown` is set, as in the Go library.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CniArgsEnv {
    pub ips: Vec<IpAddr>,
    pub mac: Option<String>,
}

impl CniArgsEnv {
    pub fn parse(s: &str) -> Result<CniArgsEnv, Error> {
        let invalid = |msg: String| Error::InvalidEnv {
            msg: "invalid CNI_ARGS".into(),
            details: msg,
        };
        let mut out = CniArgsEnv::default();
        let pairs: Vec<&str> = s.split(';').filter(|p| !p.is_empty()).collect();
        let mut unknown = Vec::new();
        let mut ignore_unknown = false;
        for pair in pairs {
            let (k, v) = match pair.split_once('=') {
                Some((k, v)) if !v.contains('=') => (k, v),
                _ => return Err(invalid(format!("ARGS: invalid pair {pair:?}"))),
            };
            match k {
                "IP" => {
                    for ip in v.split(',').filter(|x| !x.is_empty()) {
                        out.ips
                            .push(parse_ip_maybe_prefix(ip).map_err(|e| invalid(e.to_string()))?);
                    }
                }
                "MAC" => {
                    parse_mac(v).map_err(|e| invalid(e.to_string()))?;
                    out.mac = Some(v.to_owned());
                }
                "IgnoreUnknown" => {
                    ignore_unknown = matches!(v.to_ascii_lowercase().as_str(), "1" | "true")
                }
                k if k.starts_with("K8S_POD_") => {}
                k => unknown.push(k.to_owned()),
            }
        }
        if !unknown.is_empty() && !ignore_unknown {
            return Err(invalid(format!("ARGS: unknown args {unknown:?}")));
        }
        Ok(out)
    }
}

/// `198.18.3.7` or `198.18.3.7/24`: the prefix, if any, is ignored (as host-local does).
fn parse_ip_maybe_prefix(s: &str) -> Result<IpAddr, Error> {
    let ip = s.split('/').next().unwrap_or(s);
    ip.parse()
        .map_err(|_| Error::Config(format!("requested IP {s:?} is not an IP address")))
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], Error> {
    let bad = || Error::Config(format!("invalid MAC address {s:?}"));
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 == 1 {
        return Err(Error::Config(format!(
            "MAC address {s} is a multicast address"
        )));
    }
    Ok(mac)
}

/// Linux interface name rules, as the Go library checks them.
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("interface name is empty".into());
    }
    if name.len() > 15 {
        return Err(format!(
            "interface name is too long: {name:?} (max 15 bytes)"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("interface name {name:?} is not allowed"));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(format!(
            "interface name {name:?} contains '/', ':' or white space"
        ));
    }
    Ok(())
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`: container IDs and network names.
pub fn valid_id(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The `cni.dev/valid-attachments` list of a GC request. A missing key is refused rather than
/// read as "nothing is valid": releasing every address on a runtime bug would be destructive.
pub fn valid_attachments(raw: &Value) -> Result<Vec<Attachment>, Error> {
    let list = match raw
        .get("cni.dev/valid-attachments")
        .or_else(|| raw.get("cni.dev/attachments"))
    {
        None => {
            return Err(Error::Config(
                "GC request has no cni.dev/valid-attachments".into(),
            ));
        }
        Some(Value::Null) => return Ok(vec![]),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(Error::Config(
                "cni.dev/valid-attachments is not a list".into(),
            ));
        }
    };
    list.iter()
        .map(|a| {
            let get = |k: &str| {
                a.get(k)
                    .and_then(Value::as_str)
                    .map(|s| s.trim().to_owned())
            };
            match (get("containerID"), get("ifname")) {
                (Some(container_id), Some(ifname)) => Ok(Attachment {
                    container_id,
                    ifname,
                }),
                _ => Err(Error::Config(format!("invalid attachment {a}"))),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<NetConf, Error> {
        NetConf::parse(&v, "podnet", Version::V1_0_0)
    }

    #[test]
    fn defaults() {
        let c = parse(json!({"name":"podnet","type":"hostgw","somethingElse":{"x":1}})).unwrap();
        assert_eq!(c.mode, Mode::Ptp);
        assert_eq!(c.subnet_file, Path::new(DEFAULT_SUBNET_FILE));
        assert_eq!(c.data_dir, Path::new(DEFAULT_DATA_DIR));
        assert!(c.subnet.is_none() && c.mtu.is_none());
    }

    #[test]
    fn bridge_mode_and_bad_values_are_config_errors() {
        let c = parse(json!({"mode":"bridge"})).unwrap();
        assert_eq!(c.mode, Mode::Bridge("cni0".into()));
        for bad in [
            json!({"mode":"overlay"}),
            json!({"mtu":20}),
            json!({"mtu":"big"}),
            json!({"subnet":"198.18.3.0/33"}),
            json!({"subnet":"fd18::/64"}),
            json!({"mode":"bridge","bridge":"a-bridge-name-too-long"}),
            json!({"runtimeConfig":{"ips":["nope"]}}),
            json!({"runtimeConfig":{"mac":"01:00:00:00:00:01"}}),
        ] {
            assert_eq!(parse(bad.clone()).unwrap_err().code(), 7, "{bad}");
        }
    }

    #[test]
    fn requested_ips_and_mac_sources() {
        let c = parse(json!({
            "runtimeConfig":{"ips":["198.18.3.9/24"],"mac":"02:00:00:00:00:09"},
            "args":{"cni":{"ips":["fd18:18:0:3::9"],"mac":"02:00:00:00:00:01"}}
        }))
        .unwrap();
        assert_eq!(
            c.requested_ips,
            vec![
                "198.18.3.9".parse::<IpAddr>().unwrap(),
                "fd18:18:0:3::9".parse().unwrap()
            ]
        );
        assert_eq!(c.mac.as_deref(), Some("02:00:00:00:00:09"));
    }

    #[test]
    fn static_subnet_overrides_the_file() {
        let c = parse(json!({"subnet":"198.18.3.0/24","subnetFile":"/nonexistent"})).unwrap();
        let s = c.node_subnets().unwrap();
        assert_eq!(s.v4.unwrap().to_string(), "198.18.3.0/24");
        assert_eq!(s.pools().unwrap().len(), 1);
    }

    #[test]
    fn subnet_file_missing_is_try_again_and_garbage_is_decode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.json");
        let c = parse(json!({"subnetFile": path})).unwrap();
        assert_eq!(c.node_subnets().unwrap_err().code(), 11);
        std::fs::write(&path, "{not json").unwrap();
        assert_eq!(c.node_subnets().unwrap_err().code(), 6);
        std::fs::write(
            &path,
            r#"{"network":"198.18.0.0/16","subnet":"198.18.3.0/24","ipv6Network":null,"ipv6Subnet":"fd18:18:0:3::/64","mtu":1450}"#,
        )
        .unwrap();
        let s = c.node_subnets().unwrap();
        assert_eq!(s.mtu, Some(1450));
        assert_eq!(s.pools().unwrap().len(), 2);
    }

    #[test]
    fn cni_args() {
        let a =
            CniArgsEnv::parse("IgnoreUnknown=1;K8S_POD_NAME=x;IP=198.18.3.5/24;FOO=bar").unwrap();
        assert_eq!(a.ips, vec!["198.18.3.5".parse::<IpAddr>().unwrap()]);
        assert_eq!(CniArgsEnv::parse("FOO=bar").unwrap_err().code(), 4);
        assert_eq!(CniArgsEnv::parse("IP").unwrap_err().code(), 4);
        assert_eq!(CniArgsEnv::parse("IP=a=b").unwrap_err().code(), 4);
        assert_eq!(CniArgsEnv::parse("").unwrap(), CniArgsEnv::default());
    }

    #[test]
    fn ifname_and_id_rules() {
        assert!(validate_ifname("eth0").is_ok());
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "0123456789abcdef"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
        assert!(valid_id("abc-1.2_3") && !valid_id("-abc") && !valid_id("") && !valid_id("a b"));
    }

    #[test]
    fn gc_attachments_null_empty_missing() {
        assert!(
            valid_attachments(&json!({"cni.dev/valid-attachments": null}))
                .unwrap()
                .is_empty()
        );
        assert!(
            valid_attachments(&json!({"cni.dev/valid-attachments": []}))
                .unwrap()
                .is_empty()
        );
        assert_eq!(valid_attachments(&json!({})).unwrap_err().code(), 7);
        let v = valid_attachments(
            &json!({"cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}),
        );
        assert_eq!(
            v.unwrap(),
            vec![Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }]
        );
    }
}
