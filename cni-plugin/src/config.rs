//! The network configuration on stdin, parsed once into validated types.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use hostgw_common::{SubnetFile, subnet_file::SubnetFileError};
use hostgw_ipam::{Attachment, Pool};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{
    error::Error,
    result::Dns,
    validate::{validate_mtu, validate_pool, validate_subnet_file},
    version::Version,
};

pub const DEFAULT_SUBNET_FILE: &str = hostgw_common::subnet_file::DEFAULT_PATH;
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
pub const DEFAULT_BRIDGE: &str = "cni0";

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
    /// `"bigTcp": true`: GSO/GRO 185000 on both ends of the pod's veth (issue 13).
    pub big_tcp: bool,
    pub data_dir: PathBuf,
    pub log_file: Option<PathBuf>,
    pub dns: Option<Dns>,
    pub prev_result: Option<Value>,
    /// Addresses asked for by `runtimeConfig.ips` and `args.cni.ips` (prefixes dropped),
    /// each with the key it came from, for error messages.
    pub requested_ips: Vec<(IpAddr, &'static str)>,
    /// `runtimeConfig.mac` wins over `args.cni.mac`; `CNI_ARGS MAC=` is the fallback.
    pub mac: Option<[u8; 6]>,
    raw: Value,
}

impl NetConf {
    /// `value` is the whole stdin object; `name` and `cniVersion` were checked by the
    /// dispatcher. Every key we read is type-checked on its own, so an error names it.
    pub fn parse(value: &Value, name: &str, version: Version) -> Result<NetConf, Error> {
        let mode = match key::<String>(value, &["mode"])?.as_deref() {
            None | Some("ptp") => Mode::Ptp,
            Some("bridge") => {
                let br =
                    key::<String>(value, &["bridge"])?.unwrap_or_else(|| DEFAULT_BRIDGE.into());
                validate_ifname(&br).map_err(|e| Error::Config(format!("bridge: {e}")))?;
                Mode::Bridge(br)
            }
            Some(m) => {
                return Err(Error::Config(format!(
                    "mode {m:?} is not \"ptp\" or \"bridge\""
                )));
            }
        };
        let mtu = key::<u32>(value, &["mtu"])?;
        if let Some(mtu) = mtu {
            validate_mtu(mtu, "mtu")?;
        }
        let big_tcp = key::<bool>(value, &["bigTcp"])?.unwrap_or(false);
        // Read only by chained plugins, but a wrong type is still a broken config.
        key::<bool>(value, &["ipMasq"])?;
        let subnet = key::<Ipv4Network>(value, &["subnet"])?;
        let ipv6_subnet = key::<Ipv6Network>(value, &["ipv6Subnet"])?;
        if let Some(s) = subnet {
            validate_pool("subnet", IpNetwork::V4(s))?;
        }
        if let Some(s) = ipv6_subnet {
            validate_pool("ipv6Subnet", IpNetwork::V6(s))?;
        }
        let mut requested_ips = Vec::new();
        for (path, label) in [
            (&["runtimeConfig", "ips"][..], "runtimeConfig.ips"),
            (&["args", "cni", "ips"][..], "args.cni.ips"),
        ] {
            for s in key::<Vec<String>>(value, path)?.unwrap_or_default() {
                let ip = parse_ip_maybe_prefix(&s)
                    .map_err(|e| Error::Config(format!("{label}: {e}")))?;
                requested_ips.push((ip, label));
            }
        }
        let mac = match key::<String>(value, &["runtimeConfig", "mac"])? {
            Some(m) => Some(m),
            None => key::<String>(value, &["args", "cni", "mac"])?,
        };
        Ok(NetConf {
            version,
            name: name.to_owned(),
            mode,
            subnet_file: absolute_path(value, "subnetFile")?
                .unwrap_or_else(|| DEFAULT_SUBNET_FILE.into()),
            subnet,
            ipv6_subnet,
            mtu,
            big_tcp,
            data_dir: absolute_path(value, "dataDir")?.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            log_file: absolute_path(value, "logFile")?,
            dns: key::<Dns>(value, &["dns"])?,
            prev_result: value.get("prevResult").filter(|v| !v.is_null()).cloned(),
            requested_ips,
            mac: mac
                .map(|m| {
                    parse_mac(&m).map_err(|e| Error::Config(format!("runtimeConfig.mac: {e}")))
                })
                .transpose()?,
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
        validate_subnet_file(&file, &self.subnet_file)?;
        Ok(NodeSubnets {
            v4: file.subnet,
            v6: self.ipv6_subnet.or(file.ipv6_subnet),
            mtu: file.mtu,
        })
    }
}

/// `key` at `path` in the stdin object, type-checked on its own so that the error names
/// the key and the value. Absent or `null` is `None`; a non-object on the way is an error.
fn key<T: DeserializeOwned>(value: &Value, path: &[&str]) -> Result<Option<T>, Error> {
    let mut v = value;
    for (i, k) in path.iter().enumerate() {
        match v {
            Value::Object(m) => match m.get(*k) {
                None | Some(Value::Null) => return Ok(None),
                Some(next) => v = next,
            },
            other => {
                return Err(Error::Config(format!(
                    "{} must be an object, not {other}",
                    path[..i].join(".")
                )));
            }
        }
    }
    serde_json::from_value(v.clone())
        .map(Some)
        .map_err(|e| Error::Config(format!("invalid {} {v}: {e}", path.join("."))))
}

/// A path key that must be absolute: a relative one would land below whatever working
/// directory the runtime happened to start the plugin in.
fn absolute_path(value: &Value, name: &str) -> Result<Option<PathBuf>, Error> {
    match key::<PathBuf>(value, &[name])? {
        Some(p) if !p.is_absolute() => Err(Error::Config(format!(
            "{name} {p:?} is not an absolute path"
        ))),
        other => Ok(other),
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
    pub mac: Option<[u8; 6]>,
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
                        let ip =
                            parse_ip_maybe_prefix(ip).map_err(|e| invalid(format!("IP: {e}")))?;
                        out.ips.push(ip);
                    }
                }
                "MAC" => out.mac = Some(parse_mac(v).map_err(|e| invalid(e.to_string()))?),
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

/// `198.18.3.7` or `198.18.3.7/24`: the prefix, if any, must be valid for the family
/// and is then ignored (as host-local does).
fn parse_ip_maybe_prefix(s: &str) -> Result<IpAddr, Error> {
    let parsed = match s.split_once('/') {
        Some(_) => s.parse::<IpNetwork>().ok().map(|n| n.ip()),
        None => s.parse::<IpAddr>().ok(),
    };
    parsed.ok_or_else(|| {
        Error::Config(format!(
            "requested IP {s:?} is not an IP address or IP/prefix"
        ))
    })
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
        assert!(!c.big_tcp);
        assert!(parse(json!({"bigTcp": true})).unwrap().big_tcp);
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
                ("198.18.3.9".parse::<IpAddr>().unwrap(), "runtimeConfig.ips"),
                ("fd18:18:0:3::9".parse().unwrap(), "args.cni.ips")
            ]
        );
        assert_eq!(
            c.mac,
            Some([2, 0, 0, 0, 0, 9]),
            "parsed once, at config time"
        );
    }

    /// Issue 12 item 11: every nonsense value is a code-7 error naming the key and value.
    fn assert_refused(cases: &[(&str, &str, &str)]) {
        for (bad, key, value) in cases {
            let e = parse(serde_json::from_str(bad).unwrap()).unwrap_err();
            let msg = e.to_string();
            assert_eq!(e.code(), 7, "{bad}: {msg}");
            assert!(msg.contains(key) && msg.contains(value), "{bad}: {msg}");
        }
    }

    #[test]
    fn nonsense_ipv4_subnets_are_refused_naming_key_and_value() {
        assert_refused(&[
            (r#"{"subnet":"0.0.0.0/0"}"#, "subnet", "0.0.0.0/0"),
            (r#"{"subnet":"198.0.0.0/7"}"#, "subnet", "198.0.0.0/7"),
            (r#"{"subnet":"198.18.3.0/31"}"#, "subnet", "198.18.3.0/31"),
            (r#"{"subnet":"198.18.3.1/32"}"#, "subnet", "198.18.3.1/32"),
            (r#"{"subnet":"198.18.3.7/24"}"#, "subnet", "198.18.3.7/24"),
            (r#"{"subnet":"127.0.0.0/24"}"#, "subnet", "127.0.0.0/24"),
            (r#"{"subnet":"224.1.0.0/16"}"#, "subnet", "224.1.0.0/16"),
            (r#"{"subnet":"169.254.3.0/24"}"#, "subnet", "169.254.3.0/24"),
            (r#"{"subnet":"0.1.2.0/24"}"#, "subnet", "0.1.2.0/24"),
            (
                r#"{"subnet":"255.255.255.0/24"}"#,
                "subnet",
                "255.255.255.0/24",
            ),
            (r#"{"subnet":7}"#, "subnet", "7"),
        ]);
    }

    #[test]
    fn nonsense_ipv6_subnets_are_refused_naming_key_and_value() {
        assert_refused(&[
            (r#"{"ipv6Subnet":"::/0"}"#, "ipv6Subnet", "::/0"),
            (r#"{"ipv6Subnet":"fd18::/127"}"#, "ipv6Subnet", "fd18::/127"),
            (r#"{"ipv6Subnet":"fd18::/128"}"#, "ipv6Subnet", "fd18::/128"),
            (r#"{"ipv6Subnet":"fe80::/64"}"#, "ipv6Subnet", "fe80::/64"),
            (r#"{"ipv6Subnet":"ff02::/64"}"#, "ipv6Subnet", "ff02::/64"),
            (
                r#"{"ipv6Subnet":"::ffff:198.18.0.0/112"}"#,
                "ipv6Subnet",
                "::ffff:198.18.0.0/112",
            ),
        ]);
    }

    #[test]
    fn nonsense_requested_addresses_are_refused_naming_key_and_value() {
        assert_refused(&[
            (
                r#"{"runtimeConfig":{"ips":["198.18.3.7/33"]}}"#,
                "runtimeConfig.ips",
                "198.18.3.7/33",
            ),
            (
                r#"{"runtimeConfig":{"ips":["198.18.3.7/"]}}"#,
                "runtimeConfig.ips",
                "198.18.3.7/",
            ),
            (
                r#"{"runtimeConfig":{"ips":["fd18::7/129"]}}"#,
                "runtimeConfig.ips",
                "fd18::7/129",
            ),
            (r#"{"args":{"cni":{"ips":["x"]}}}"#, "args.cni.ips", "x"),
            (
                r#"{"runtimeConfig":{"ips":"198.18.3.7"}}"#,
                "runtimeConfig.ips",
                "198.18.3.7",
            ),
            (r#"{"runtimeConfig":[1]}"#, "runtimeConfig", "[1]"),
            (r#"{"runtimeConfig":{"mac":7}}"#, "runtimeConfig.mac", "7"),
            (
                r#"{"runtimeConfig":{"mac":"02:00:00:00:00"}}"#,
                "runtimeConfig.mac",
                "02:00:00:00:00",
            ),
        ]);
    }

    #[test]
    fn nonsense_values_of_other_keys_are_refused_naming_key_and_value() {
        assert_refused(&[
            (r#"{"dns":"198.18.0.10"}"#, "dns", "198.18.0.10"),
            (
                r#"{"dns":{"nameservers":"198.18.0.10"}}"#,
                "dns",
                "198.18.0.10",
            ),
            (
                r#"{"dns":{"nameservers":["not-an-ip"]}}"#,
                "dns",
                "not-an-ip",
            ),
            (r#"{"dns":{"domain":["a"]}}"#, "dns", "a"),
            (r#"{"dns":{"search":"a"}}"#, "dns", "search"),
            (r#"{"dns":{"options":[1]}}"#, "dns", "options"),
            (r#"{"mtu":"1500"}"#, "mtu", "1500"),
            (r#"{"mtu":-1}"#, "mtu", "-1"),
            (r#"{"mtu":1500.5}"#, "mtu", "1500.5"),
            (r#"{"mtu":67}"#, "mtu", "67"),
            (r#"{"mtu":65536}"#, "mtu", "65536"),
            (r#"{"ipMasq":{"on":true}}"#, "ipMasq", "on"),
            (r#"{"ipMasq":"true"}"#, "ipMasq", "true"),
            (r#"{"bigTcp":"yes"}"#, "bigTcp", "yes"),
            (r#"{"mode":["ptp"]}"#, "mode", "ptp"),
            (r#"{"mode":"bridge","bridge":5}"#, "bridge", "5"),
            (r#"{"dataDir":""}"#, "dataDir", "\"\""),
            (r#"{"dataDir":"var/lib/cni"}"#, "dataDir", "var/lib/cni"),
            (r#"{"dataDir":"./x"}"#, "dataDir", "./x"),
            (r#"{"dataDir":5}"#, "dataDir", "5"),
            (
                r#"{"subnetFile":"subnet.json"}"#,
                "subnetFile",
                "subnet.json",
            ),
            (r#"{"logFile":"hostgw.log"}"#, "logFile", "hostgw.log"),
        ]);
    }

    #[test]
    fn sensible_edges_are_accepted() {
        assert!(parse(json!({"subnet":"198.18.3.0/30","ipv6Subnet":"fd18:18:0:3::/126"})).is_ok());
        assert!(parse(json!({"subnet":"10.0.0.0/8","mtu":null,"dns":null})).is_ok());
    }

    #[test]
    fn subnet_file_values_that_make_no_sense_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.json");
        let c = parse(json!({"subnetFile": path})).unwrap();
        for (file, what) in [
            (json!({"subnet":"0.0.0.0/0"}), "0.0.0.0/0"),
            (json!({"subnet":"198.18.3.0/32"}), "198.18.3.0/32"),
            (
                json!({"network":"198.18.0.0/16","subnet":"198.19.3.0/24"}),
                "not inside network",
            ),
            (
                json!({"subnet":"198.18.3.0/24","ipv6Subnet":"fd18::/128"}),
                "fd18::/128",
            ),
            (
                json!({"subnet":"198.18.3.0/24","ipv6Network":"fd18:18::/48","ipv6Subnet":"fd19::/64"}),
                "not inside",
            ),
            (json!({"subnet":"198.18.3.0/24","mtu":0}), "mtu 0"),
            (json!({"subnet":"198.18.3.0/24","mtu":70000}), "mtu 70000"),
        ] {
            std::fs::write(&path, file.to_string()).unwrap();
            let e = c.node_subnets().unwrap_err();
            assert_eq!(e.code(), 7, "{file}: {e}");
            assert!(
                e.to_string().contains(what) && e.to_string().contains("subnet file"),
                "{e}"
            );
        }
    }

    #[test]
    fn subnet_file_that_is_no_regular_file_is_an_io_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        for path in [fifo, dir.path().to_path_buf()] {
            let c = parse(json!({"subnetFile": path})).unwrap();
            let e = c.node_subnets().unwrap_err();
            assert_eq!(e.code(), 5, "{e}");
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        }
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b' '; 100_000]).unwrap();
        let c = parse(json!({"subnetFile": big})).unwrap();
        assert_eq!(c.node_subnets().unwrap_err().code(), 5);
    }

    /// The subnet file of an IPv6-only node (as `hostgw-routed` writes it): one IPv6 pool.
    #[test]
    fn an_ipv6_only_subnet_file_gives_one_ipv6_pool() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.json");
        std::fs::write(
            &path,
            r#"{"network":null,"subnet":null,"ipv6Network":"fd18:18::/48","ipv6Subnet":"fd18:18:0:3::/64","mtu":1500}"#,
        )
        .unwrap();
        let s = parse(json!({"subnetFile": path}))
            .unwrap()
            .node_subnets()
            .unwrap();
        assert_eq!(
            (s.v4, s.v6.unwrap().to_string()),
            (None, "fd18:18:0:3::/64".into())
        );
        let pools = s.pools().unwrap();
        assert_eq!(pools.len(), 1);
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
        let e = CniArgsEnv::parse("IP=198.18.3.5/33").unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(e.details().unwrap().contains("198.18.3.5/33"), "{e:?}");
        assert_eq!(
            CniArgsEnv::parse("MAC=02:00:00:00:00:07").unwrap().mac,
            Some([2, 0, 0, 0, 0, 7])
        );
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
