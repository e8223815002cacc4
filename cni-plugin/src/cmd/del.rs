use super::{Attach, LOCK_TIMEOUT, join_errors, open_store};
use crate::{config::NetConf, datapath::Datapath, error::Error};

/// DEL: best effort and idempotent. It needs neither the pod's namespace nor prevResult:
/// the reservation is found by attachment and the host veth by its derived name, so an
/// empty or vanished `CNI_NETNS`, a failed ADD, or a second DEL all end with nothing left.
pub fn del(conf: &NetConf, req: &Attach, dp: &dyn Datapath) -> Result<(), Error> {
    let mut errors = Vec::new();
    let released =
        open_store(conf).and_then(|s| Ok(s.lock(LOCK_TIMEOUT)?.release(&req.attachment())?));
    if let Err(e) = released {
        errors.push(e);
    }
    if let Err(e) = dp.teardown(&req.host_veth(conf), &req.alias(conf)) {
        errors.push(e);
    }
    join_errors(errors)
}
