//! Who this node is, and what it holds: the one answer to "which key is mine?" (the claim,
//! the watch, `status`, `release`) and "which subnets are mine?" (validation).

use std::net::IpAddr;

use ipnetwork::IpNetwork;

/// This node's identity in etcd terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    pub node: String,
    /// The next hop peers use.
    pub public_ip: IpAddr,
    pub public_ipv6: Option<IpAddr>,
    /// The subnets the subnet file names: what this node held before this process started.
    pub last: Option<(IpNetwork, Option<IpNetwork>)>,
    /// The uplink's MTU, written into our lease (`"MTU"`) so peers can lower their route's.
    pub mtu: Option<u32>,
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
