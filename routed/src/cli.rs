//! Command line: `run`, `status`, `release`, sharing one set of connection and identity
//! flags (each also readable from a `HOSTGW_*` environment variable, for a DaemonSet).

use std::{net::IpAddr, net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

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
    /// etcd client URLs, comma-separated.
    #[arg(
        long,
        env = "HOSTGW_ETCD_ENDPOINTS",
        value_delimiter = ',',
        required = true
    )]
    pub etcd_endpoints: Vec<String>,
    #[arg(long, env = "HOSTGW_NODE_NAME")]
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
    #[arg(long, env = "HOSTGW_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    #[arg(long, env = "HOSTGW_ETCD_CERTFILE", requires = "etcd_keyfile")]
    pub etcd_certfile: Option<PathBuf>,
    #[arg(long, env = "HOSTGW_ETCD_KEYFILE", requires = "etcd_certfile")]
    pub etcd_keyfile: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: Common,
    /// Serve /metrics, /healthz and /readyz here, e.g. 127.0.0.1:9475.
    #[arg(long, env = "HOSTGW_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Masquerade pod traffic that leaves the cluster network.
    #[arg(long, env = "HOSTGW_IP_MASQ")]
    pub ip_masq: bool,
    /// etcd lease TTL in seconds; a node silent for this long loses its subnet everywhere.
    #[arg(long, env = "HOSTGW_LEASE_TTL", default_value_t = 3600, value_parser = clap::value_parser!(i64).range(10..))]
    pub lease_ttl: i64,
    /// Backstop resync of the kernel against the last known leases, in seconds.
    #[arg(long, env = "HOSTGW_RESYNC_SECS", default_value_t = 300)]
    pub resync_secs: u64,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub common: Common,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}
