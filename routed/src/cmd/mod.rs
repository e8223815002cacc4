//! The subcommands: `run` (the daemon), `status` and `release` (one-shot).

pub mod release;
pub mod run;
pub mod status;

use crate::{
    cli::Common,
    error::Error,
    kernel::{identity, routes::NetlinkRoutes},
    me::Me,
    subnet_file,
};

/// Who this node is: name from the command line, public IPs from the flags or the kernel,
/// last subnets from the subnet file. Also returns the uplink's MTU.
pub(crate) async fn me(table: &NetlinkRoutes, c: &Common) -> Result<(Me, u32), Error> {
    let up = identity::detect(table.handle(), c).await?;
    let me = Me {
        node: c.node_name.clone(),
        public_ip: up.public_ip,
        public_ipv6: up.public_ipv6,
        last: subnet_file::read(&c.subnet_file).map(|f| (f.subnet, f.ipv6_subnet)),
    };
    Ok((me, up.mtu))
}
