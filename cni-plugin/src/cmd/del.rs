use super::{Attach, LOCK_TIMEOUT, join_errors, open_store};
use crate::{config::NetConf, datapath::Datapath, error::Error};

/// DEL: best effort and idempotent. It needs neither the pod's namespace nor prevResult:
/// the reservation is found by attachment and the host veth by its derived name, so an
/// empty or vanished `CNI_NETNS`, a failed ADD, or a second DEL all end with nothing left.
///
/// It first waits for an ADD of the same container that is still running (the container
/// lock): a runtime that DELs while its ADD is in flight then finds, and undoes, all of
/// it, instead of freeing an address the ADD goes on to give a live pod.
pub fn del(conf: &NetConf, req: &Attach, dp: &dyn Datapath) -> Result<(), Error> {
    let mut errors = Vec::new();
    let store = open_store(conf).map_err(|e| errors.push(e)).ok();
    let container = match &store {
        Some(s) => match s.lock_container(&req.container_id, LOCK_TIMEOUT) {
            Ok(lock) => Some(lock),
            // Going on without the lock would reopen the race it closes: answer 11.
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) => {
                errors.push(e.into());
                None
            }
        },
        None => None,
    };
    if let Some(s) = &store {
        let released = s
            .lock(LOCK_TIMEOUT)
            .and_then(|mut locked| locked.release(&req.attachment()));
        if let Err(e) = released {
            errors.push(e.into());
        }
    }
    if let Err(e) = dp.teardown(&req.host_veth(conf), &req.alias(conf)) {
        errors.push(e);
    }
    if let Some(lock) = container
        && errors.is_empty()
        && let Err(e) = lock.remove()
    {
        errors.push(e.into());
    }
    join_errors(errors)
}
