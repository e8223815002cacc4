//! `hostgw-routed release`: give this node's subnet back. Deletes our key (guarded, so only
//! the key we just read as ours), revokes its lease, and removes the subnet file, our nft
//! table and this node's owned routes. Peers drop their route on the delete event.

use tracing::info;

use super::status;
use crate::{
    cli::Common,
    error::Error,
    etcd::{self, Keys, store::Store},
    kernel::{RouteTable, nft, routes::NetlinkRoutes},
};

pub async fn release(c: &Common) -> Result<String, Error> {
    let table = NetlinkRoutes::connect()?;
    let (me, _) = super::me(&table, c).await?;
    let keys = Keys::new(&c.etcd_prefix);
    let store = etcd::connect_reachable(c).await?;
    let (_, entries) = etcd::list(&store, &keys).await?;
    let mut report = String::new();
    match status::own_key(&entries, &me) {
        Some((name, entry)) => {
            let key = keys.subnet(name);
            if !store.delete_if(&key, entry.mod_revision).await? {
                return Err(Error::Other(format!(
                    "{key} changed while releasing; not deleted, try again"
                )));
            }
            if entry.lease_id != 0 {
                let _ = store.revoke(entry.lease_id).await;
            }
            info!(key = %key, "released");
            report += &format!("released {name}\n");
        }
        None => report += &format!("no lease for node {} in etcd\n", c.node_name),
    }
    hostgw_common::SubnetFile::remove(&c.subnet_file)
        .map_err(|e| Error::Io(format!("remove {}", c.subnet_file.display()), e))?;
    // A released node's cache names a key it no longer holds.
    let cache = c.lease_cache_path();
    hostgw_common::fs::remove_if_present(&cache)
        .map_err(|e| Error::Io(format!("remove {}", cache.display()), e))?;
    nft::remove().await?;
    let routes = table.list_owned().await?;
    for r in &routes {
        table.delete(r).await?;
    }
    report += &format!(
        "removed subnet file, lease cache, nft table inet {} and {} owned routes\n",
        nft::TABLE,
        routes.len()
    );
    // The fast path goes with the node: each tcx link is held by its pin alone.
    let links = crate::datapath::unpin_all(&c.bpf_pin_dir)
        .map_err(|e| Error::Io(format!("remove pins under {}", c.bpf_pin_dir.display()), e))?;
    let _ = std::fs::remove_file(crate::datapath::state_path(&c.subnet_file));
    report += &format!("detached the fast path from {links} links\n");
    Ok(report)
}
