use std::collections::HashSet;

use super::{LOCK_TIMEOUT, join_errors, open_store};
use crate::{
    config::{NetConf, valid_attachments},
    datapath::{Datapath, alias, alias_prefix, host_veth_name},
    error::Error,
};

/// GC: release every reservation, and remove every host veth of this network, that no
/// valid attachment owns. Keeps going on failures and reports them all at the end.
pub fn gc(conf: &NetConf, dp: &dyn Datapath) -> Result<(), Error> {
    let valid = valid_attachments(conf.raw())?;
    let mut errors = Vec::new();
    let released = open_store(conf).and_then(|s| Ok(s.lock(LOCK_TIMEOUT)?.gc(&valid)?));
    match released {
        Ok(list) => {
            for (_, att) in list {
                if let Err(e) = dp.teardown(
                    &host_veth_name(&conf.name, &att.container_id, &att.ifname),
                    &alias(&conf.name, &att.container_id, &att.ifname),
                ) {
                    errors.push(e);
                }
            }
        }
        Err(e) => errors.push(e),
    }
    // Links whose reservation is already gone (an ADD killed after DEL released it, say).
    let keep: HashSet<String> = valid
        .iter()
        .map(|a| alias(&conf.name, &a.container_id, &a.ifname))
        .collect();
    match dp.host_veths(&alias_prefix(&conf.name)) {
        Ok(links) => {
            for (name, link_alias) in links.into_iter().filter(|(_, a)| !keep.contains(a)) {
                if let Err(e) = dp.teardown(&name, &link_alias) {
                    errors.push(e);
                }
            }
        }
        Err(e) => errors.push(e),
    }
    join_errors(errors)
}
