use super::{LOCK_TIMEOUT, open_store};
use crate::{config::NetConf, error::Error};

/// STATUS: ready for ADD only when the node holds a subnet, the IPAM store takes a write
/// (a full or read-only dataDir fails every ADD) and every pool has a free address.
/// Anything else is code 50, which containerd turns into NetworkReady=false.
pub fn status(conf: &NetConf) -> Result<(), Error> {
    let not_ready = |e: Error| Error::NotAvailable(format!("hostgw is not ready: {e}"));
    let pools = conf
        .node_subnets()
        .and_then(|s| s.pools())
        .map_err(not_ready)?;
    let store = open_store(conf).map_err(not_ready)?;
    store.check_writable().map_err(|e| not_ready(e.into()))?;
    // A lock held too long is "try again" (11), as for every verb, not "not ready".
    let locked = store.lock(LOCK_TIMEOUT).map_err(|e| {
        if e.is_transient() {
            Error::from(e)
        } else {
            not_ready(e.into())
        }
    })?;
    for pool in &pools {
        if !locked.has_free(pool).map_err(|e| not_ready(e.into()))? {
            return Err(Error::NotAvailable(format!(
                "no IP addresses available in range set: {}",
                pool.range_string()
            )));
        }
    }
    Ok(())
}
