//! The subcommands: `run` (the daemon), `status` and `release` (one-shot).

pub mod release;
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
/// last subnets from the subnet file. Also returns the uplink's MTU.
pub(crate) async fn me(table: &NetlinkRoutes, c: &Common) -> Result<(Me, u32), Error> {
    let up = identity::detect(table.handle(), c).await?;
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
    Some((f.subnet?.into(), f.ipv6_subnet.map(IpNetwork::V6)))
}
