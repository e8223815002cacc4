//! Who this node is, and what it holds: the one answer to "which key is mine?" (the claim,
//! the watch, `status`, `release`) and "which subnets are mine?" (validation).

use std::net::IpAddr;

use ipnetwork::IpNetwork;

/// This node's identity in etcd terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    pub node: String,
    /// The IPv4 next hop peers use (none on an IPv6-only node).
    pub public_ip: Option<IpAddr>,
    /// The IPv6 next hop (dual-stack or IPv6-only).
    pub public_ipv6: Option<IpAddr>,
    /// The subnets the subnet file names: what this node held before this process started.
    pub last: Option<(IpNetwork, Option<IpNetwork>)>,
    /// The uplink's MTU, written into our lease (`"MTU"`) so peers can lower their route's.
    pub mtu: Option<u32>,
}

impl Me {
    /// This node's next hop for the family of `subnet`.
    pub fn public_ip_for(&self, subnet: &IpNetwork) -> Option<IpAddr> {
        if subnet.is_ipv4() {
            self.public_ip
        } else {
            self.public_ipv6
        }
    }

    /// Only the families the cluster routes: an IPv6-only cluster writes no `PublicIP`, an
    /// IPv4-only one no `PublicIPv6`, whatever else the uplink holds.
    pub fn for_config(mut self, cfg: &crate::config::NetConfig) -> Me {
        if cfg.v4.is_none() {
            self.public_ip = None;
        }
        if cfg.v6.is_none() {
            self.public_ipv6 = None;
        }
        self
    }
}

/// This node's lease as held in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnLease {
    pub name: String,
    pub subnet: IpNetwork,
    pub ipv6_subnet: Option<IpNetwork>,
    pub lease_id: i64,
}

impl OwnLease {
    pub fn subnets(&self) -> Vec<IpNetwork> {
        std::iter::once(self.subnet)
            .chain(self.ipv6_subnet)
            .collect()
    }
}
