use super::{LOCK_TIMEOUT, open_store};
use crate::{config::NetConf, error::Error};

/// STATUS: ready for ADD only when the node holds a subnet and every pool has a free
/// address. Anything else is code 50, which containerd turns into NetworkReady=false.
pub fn status(conf: &NetConf) -> Result<(), Error> {
    let not_ready = |e: Error| Error::NotAvailable(format!("hostgw is not ready: {e}"));
    let pools = conf
        .node_subnets()
        .and_then(|s| s.pools())
        .map_err(not_ready)?;
    let store = open_store(conf)?;
    let locked = store.lock(LOCK_TIMEOUT)?;
    for pool in &pools {
        if !locked.has_free(pool)? {
            return Err(Error::NotAvailable(format!(
                "no IP addresses available in range set: {}",
                pool.range_string()
            )));
        }
    }
    Ok(())
}
