//! Command line: `run`, `status`, `release`, sharing one set of connection and identity
//! flags (each also readable from a `HOSTGW_*` environment variable, for a DaemonSet).

use std::{net::IpAddr, net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};
use ipnetwork::IpNetwork;

#[derive(Debug, Parser)]
#[command(
    name = "hostgw-routed",
    version,
    about = "hostgw route daemon: one kernel route per peer node"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Lease this node's subnet and keep every peer's route in the kernel.
    Run(RunArgs),
    /// Print this node's lease, every peer with its route state, drift and rejected leases.
    Status(StatusArgs),
    /// Give this node's subnet back, and remove its routes, rules and subnet file.
    Release(Common),
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// etcd client URLs, comma-separated: `http://HOST:PORT` or `https://HOST:PORT`.
    #[arg(
        long,
        env = "HOSTGW_ETCD_ENDPOINTS",
        value_delimiter = ',',
        required = true,
        value_parser = parse_endpoint
    )]
    pub etcd_endpoints: Vec<String>,
    /// This node's name (a DNS-1123 subdomain, as Kubernetes node names are).
    #[arg(long, env = "HOSTGW_NODE_NAME", value_parser = crate::text::parse_node_name)]
    pub node_name: String,
    /// This node's address on the node network (the next hop peers use); with an interface
    /// flag, it must be an address of that interface.
    #[arg(long, env = "HOSTGW_PUBLIC_IP")]
    pub public_ip: Option<IpAddr>,
    /// The uplink, by name or address; repeatable (or comma-separated): the first that
    /// exists wins (default: the default route's link).
    #[arg(long, env = "HOSTGW_IFACE", value_delimiter = ',')]
    pub iface: Vec<String>,
    /// The uplink is the first link whose name or address matches; repeatable, tried in
    /// order (not split on commas: a regex may hold one). Ignored when --iface is given.
    #[arg(long, env = "HOSTGW_IFACE_REGEX")]
    pub iface_regex: Vec<String>,
    /// The uplink is the link the kernel would use to reach this address.
    #[arg(long, env = "HOSTGW_IFACE_CAN_REACH")]
    pub iface_can_reach: Option<IpAddr>,
    /// IPv6 next hop for dual-stack (default: a global address of the public interface).
    #[arg(long, env = "HOSTGW_PUBLIC_IPV6")]
    pub public_ipv6: Option<IpAddr>,
    #[arg(long, env = "HOSTGW_ETCD_PREFIX", default_value = "/hostgw/network")]
    pub etcd_prefix: String,
    #[arg(
        long,
        env = "HOSTGW_SUBNET_FILE",
        default_value = "/run/hostgw/subnet.json"
    )]
    pub subnet_file: PathBuf,
    /// The lease set as of one etcd revision, from which a restart resumes its watch
    /// instead of listing every lease (default: `leases.json` beside the subnet file).
    #[arg(long, env = "HOSTGW_LEASE_CACHE")]
    pub lease_cache: Option<PathBuf>,
    #[arg(long, env = "HOSTGW_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    #[arg(long, env = "HOSTGW_ETCD_CERTFILE", requires = "etcd_keyfile")]
    pub etcd_certfile: Option<PathBuf>,
    #[arg(long, env = "HOSTGW_ETCD_KEYFILE", requires = "etcd_certfile")]
    pub etcd_keyfile: Option<PathBuf>,
    /// Where the eBPF fast path pins its links and maps (a directory on bpffs).
    #[arg(long, env = "HOSTGW_BPF_PIN_DIR", default_value = hostgw_ebpf::DEFAULT_PIN_DIR)]
    pub bpf_pin_dir: PathBuf,
}

impl Common {
    /// `--lease-cache`, or `leases.json` beside the subnet file.
    pub fn lease_cache_path(&self) -> PathBuf {
        self.lease_cache
            .clone()
            .unwrap_or_else(|| crate::etcd::cache::path_for(&self.subnet_file))
    }
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: Common,
    /// Serve /metrics, /healthz and /readyz here, e.g. 127.0.0.1:9475.
    #[arg(long, env = "HOSTGW_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Masquerade pod traffic that leaves the cluster: never pod to pod, never pod to a
    /// node of the cluster (ours or a peer's PublicIP), never to a --no-masquerade-cidr.
    #[arg(long, env = "HOSTGW_IP_MASQ")]
    pub ip_masq: bool,
    /// With --ip-masq: `masquerade random,fully-random` (random source ports).
    #[arg(long, env = "HOSTGW_IP_MASQ_RANDOM_FULLY", requires = "ip_masq")]
    pub ip_masq_random_fully: bool,
    /// With --ip-masq: a destination CIDR pod traffic is never masqueraded to (repeatable;
    /// the variable takes a comma-separated list).
    #[arg(
        long = "no-masquerade-cidr",
        env = "HOSTGW_NO_MASQUERADE_CIDRS",
        value_delimiter = ',',
        value_parser = parse_cidr,
        requires = "ip_masq"
    )]
    pub no_masquerade_cidrs: Vec<IpNetwork>,
    /// etcd lease TTL in seconds; a node silent for this long loses its subnet everywhere.
    #[arg(long, env = "HOSTGW_LEASE_TTL", default_value_t = 3600, value_parser = clap::value_parser!(i64).range(10..))]
    pub lease_ttl: i64,
    /// Backstop resync of the kernel against the last known leases, in seconds.
    #[arg(long, env = "HOSTGW_RESYNC_SECS", default_value_t = 300)]
    pub resync_secs: u64,
    /// `ebpf`: the fast path beside the routes (when the kernel can; else routes, saying why).
    #[arg(long, env = "HOSTGW_DATAPATH", value_enum, default_value_t = crate::datapath::Datapath::Routes)]
    pub datapath: crate::datapath::Datapath,
    /// BIG TCP (GSO/GRO 185000) on both ends of every pod veth and on the uplink.
    #[arg(long, env = "HOSTGW_BIG_TCP")]
    pub big_tcp: bool,
    /// Keep no lease cache: every start lists every lease (an existing cache is removed).
    #[arg(long, env = "HOSTGW_NO_LEASE_CACHE")]
    pub no_lease_cache: bool,
    /// Least seconds between two writes of the lease cache while leases change (a stop
    /// always writes).
    #[arg(long, env = "HOSTGW_LEASE_CACHE_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_cache_secs: u64,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub common: Common,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// A CIDR in its one spelling: `10.0.0.0/8`, `fd00:1::/64`; host bits set is a mistake
/// (`10.0.0.1/8`), said so rather than silently widened.
pub fn parse_cidr(s: &str) -> Result<IpNetwork, String> {
    let s = s.trim();
    let bad = |why: String| format!("CIDR {}: {why}", crate::text::escape(s));
    if !s.contains('/') {
        return Err(bad("needs a prefix length (address/len)".into()));
    }
    let n: IpNetwork = s.parse().map_err(|e| bad(format!("{e}")))?;
    if !crate::net::is_canonical(&n) {
        let want = IpNetwork::new(n.network(), n.prefix()).map_or(String::new(), |c| c.to_string());
        return Err(bad(format!("host bits set (did you mean {want}?)")));
    }
    Ok(n)
}

/// An etcd endpoint as a URL the client can dial: `http://` or `https://`, a host (IPv4,
/// `[IPv6]` or a DNS name) and an optional port, nothing else. Checked when the command
/// line is read, so a typo fails at once instead of being retried as "etcd unreachable".
pub fn parse_endpoint(s: &str) -> Result<String, String> {
    let s = s.trim();
    let bad = |why: &str| Err(format!("etcd endpoint {}: {why}", crate::text::escape(s)));
    let Some(rest) = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
    else {
        return bad("must start with http:// or https://");
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return bad("must be scheme://host[:port] with no path, query or user");
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.starts_with('[') || h.ends_with(']') => (h, Some(p)),
        _ => (authority, None),
    };
    if let Some(p) = port
        && !matches!(p.parse::<u16>(), Ok(1..))
    {
        return bad("port must be a number from 1 to 65535");
    }
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            host.parse::<std::net::Ipv4Addr>().is_ok()
                || (!host.is_empty()
                    && host.len() <= 253
                    && host.split('.').all(|l| {
                        !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    }))
        }
    };
    if !host_ok {
        return bad("host must be an IPv4 address, [IPv6 address] or DNS name");
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked_when_read() {
        for good in [
            "http://198.19.0.2:2379",
            "https://etcd-0.etcd.kube-system.svc:2379",
            "http://[fd19:19::2]:2379/",
            " http://localhost ",
        ] {
            assert!(parse_endpoint(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "198.19.0.2:2379",
            "http://",
            "http://198.19.0.2:99999",
            "http://198.19.0.2:0",
            "http://198.19.0.2:x",
            "http://etcd:2379/v3",
            "http://user@etcd:2379",
            "http://et cd:2379",
            "http://[fd19::2:2379",
            "http://fd19::2:2379",
            "ftp://etcd:2379",
            "http://etcd\x1b[2J:2379",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_node_names_and_endpoints_stop_at_the_command_line() {
        let parse = |name: &str, ep: &str| {
            Cli::try_parse_from([
                "hostgw-routed",
                "run",
                "--etcd-endpoints",
                ep,
                "--node-name",
                name,
            ])
        };
        assert!(parse("node-0", "http://127.0.0.1:2379").is_ok());
        for name in ["", "a\nb", "\x1b[31mred", "x-", "UPPER"] {
            let e = parse(name, "http://127.0.0.1:2379").unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{name:?}"
            );
            assert!(!e.to_string().contains('\x1b'), "{e}");
        }
        let e = parse("node-0", "http://127.0.0.1:2379,http//oops").unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
    }

    /// `run` with an endpoint, a node name and `extra`, parsed.
    fn run(extra: &[&str]) -> Result<Cli, clap::Error> {
        let base = [
            "hostgw-routed",
            "run",
            "--etcd-endpoints",
            "http://127.0.0.1:2379",
            "--node-name",
            "n0",
        ];
        Cli::try_parse_from(base.iter().chain(extra))
    }

    /// The lease cache's flags: the default path beside the subnet file, an interval out
    /// of 1..=3600 s or not a number refused at the command line.
    #[test]
    fn lease_cache_flags_are_checked_when_read() {
        let Cmd::Run(r) = run(&["--subnet-file", "/x/subnet.json"]).unwrap().cmd else {
            panic!()
        };
        assert_eq!(r.common.lease_cache_path(), PathBuf::from("/x/leases.json"));
        assert_eq!((r.lease_cache_secs, r.no_lease_cache), (60, false));
        for bad in ["0", "3601", "-5", "ten", ""] {
            let flag = format!("--lease-cache-secs={bad}");
            let e = run(&[flag.as_str()]).unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn masquerade_exceptions_are_checked_when_read() {
        let ok = run(&[
            "--ip-masq",
            "--ip-masq-random-fully",
            "--no-masquerade-cidr",
            "10.0.0.0/8",
            "--no-masquerade-cidr",
            "fd00:1::/64,172.16.0.0/12",
        ])
        .unwrap();
        let Cmd::Run(r) = ok.cmd else { panic!() };
        let got: Vec<String> = r
            .no_masquerade_cidrs
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(got, ["10.0.0.0/8", "fd00:1::/64", "172.16.0.0/12"]);
        assert!(r.ip_masq_random_fully);
        for bad in ["10.0.0.1/8", "10.0.0.0/33", "garbage", "10.0.0.0", ""] {
            let e = run(&["--ip-masq", "--no-masquerade-cidr", bad]).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{bad:?}");
            assert!(e.to_string().contains("CIDR"), "{e}");
        }
        assert!(
            run(&["--ip-masq", "--no-masquerade-cidr", "10.0.0.1/8"])
                .unwrap_err()
                .to_string()
                .contains("did you mean 10.0.0.0/8")
        );
        // Without --ip-masq the options mean nothing: said so, not ignored.
        let e = run(&["--no-masquerade-cidr", "10.0.0.0/8"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(run(&["--ip-masq-random-fully"]).is_err());
    }
}
