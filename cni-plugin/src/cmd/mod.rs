//! The verbs, each a function of a validated request and the kernel behind `Datapath`.

mod add;
mod check;
mod del;
mod gc;
mod status;

use std::{path::PathBuf, time::Duration};

pub use add::add;
pub use check::check;
pub use del::del;
pub use gc::gc;
use hostgw_ipam::{Attachment, Store};
pub use status::status;

use crate::{
    config::{CniArgsEnv, NetConf},
    datapath::{alias, host_veth_name},
    error::Error,
};

/// How long a call waits for the IPAM lock before answering "try again later" (11).
/// Each holder keeps it for well under a millisecond, so this only trips when something
/// is badly wrong, and the runtime's own deadline (minutes) is never reached.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// The parameters of ADD, DEL and CHECK, after the dispatcher validated them.
#[derive(Clone, Debug)]
pub struct Attach {
    pub container_id: String,
    /// Empty `CNI_NETNS` (allowed on DEL) is `None`.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: CniArgsEnv,
}

impl Attach {
    pub fn attachment(&self) -> Attachment {
        Attachment {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }

    pub fn host_veth(&self, conf: &NetConf) -> String {
        host_veth_name(&conf.name, &self.container_id, &self.ifname)
    }

    pub fn alias(&self, conf: &NetConf) -> String {
        alias(&conf.name, &self.container_id, &self.ifname)
    }
}

fn open_store(conf: &NetConf) -> Result<Store, Error> {
    Ok(Store::open(&conf.data_dir, &conf.name)?)
}

/// Several failures of a best-effort verb, reported together.
fn join_errors(mut errors: Vec<Error>) -> Result<(), Error> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(Error::List(errors)),
    }
}
