//! The subcommands: `run` (the daemon), `status` and `release` (one-shot).

pub mod release;
pub mod rules;
pub mod run;
pub mod status;

use hostgw_common::SubnetFile;
use ipnetwork::IpNetwork;

use crate::{
    cli::Common,
    error::Error,
    kernel::{identity, routes::NetlinkRoutes},
    me::Me,
};

/// Who this node is: name from the command line, public IPs from the flags or the kernel,
/// last subnets from the subnet file. Also returns the uplink's MTU. The table learns the
/// uplink: the device of routes via a link-local next hop.
pub(crate) async fn me(table: &NetlinkRoutes, c: &Common) -> Result<(Me, u32), Error> {
    let up = identity::detect(table.handle(), c).await?;
    table.set_uplink(up.index);
    let me = Me {
        node: c.node_name.clone(),
        public_ip: up.public_ip,
        public_ipv6: up.public_ipv6,
        last: last_subnets(&c.subnet_file),
        mtu: Some(up.mtu),
    };
    Ok((me, up.mtu))
}

/// The subnets of a previous subnet file, to prefer them after a restart; any error (no
/// file, garbage) just means no preference.
fn last_subnets(path: &std::path::Path) -> Option<(IpNetwork, Option<IpNetwork>)> {
    let f = SubnetFile::read(path).ok()?;
    match (f.subnet, f.ipv6_subnet) {
        (Some(v4), v6) => Some((v4.into(), v6.map(IpNetwork::V6))),
        // An IPv6-only node: its one subnet is IPv6.
        (None, Some(v6)) => Some((v6.into(), None)),
        (None, None) => None,
    }
}
