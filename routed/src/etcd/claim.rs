//! Claiming this node's subnet: adopt our existing key, or claim a free subnet with a
//! create-only-if-absent transaction. Every write is guarded, so we never overwrite a key
//! another node owns.

use std::collections::BTreeMap;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use ipnetwork::IpNetwork;
use tracing::{info, warn};

use super::{
    Entry, EtcdError, Keys,
    codec::{self as lease, Lease, LeaseValue},
    subnet::{self, Taken},
};
use crate::{
    backoff::Backoff,
    config::NetConfig,
    me::{Me, OwnLease},
};

pub struct Claim<'a> {
    pub keys: &'a Keys,
    pub cfg: &'a NetConfig,
    pub me: &'a Me,
    pub ttl: i64,
    /// Subnets to prefer (from the previous subnet file, or the lease just lost).
    pub prefer: Option<(IpNetwork, Option<IpNetwork>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("no free subnet left in {0}")]
    Exhausted(IpNetwork),
}

/// Claims until it succeeds: etcd errors are retried with backoff (the caller bounds
/// this with shutdown); lost races are retried at once with another subnet.
pub async fn acquire(client: &mut Client, c: &Claim<'_>) -> Result<OwnLease, ClaimError> {
    let mut backoff = Backoff::etcd();
    loop {
        match try_claim(client, c).await {
            Ok(Some(l)) => return Ok(l),
            Ok(None) => info!("lost the race for a subnet, choosing another"),
            Err(ClaimError::Exhausted(n)) => return Err(ClaimError::Exhausted(n)),
            Err(e) => {
                warn!(error = %e, "claiming a subnet failed, retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

fn value(c: &Claim, ipv6_subnet: Option<IpNetwork>) -> LeaseValue {
    LeaseValue {
        public_ip: c.me.public_ip,
        public_ipv6: ipv6_subnet.and(c.me.public_ipv6),
        backend_type: "host-gw".into(),
        node_name: c.me.node.clone(),
        ipv6_subnet,
    }
}

fn find_own<'a>(
    entries: &'a BTreeMap<String, Entry>,
    c: &Claim,
) -> Option<(&'a String, &'a Entry, &'a Lease)> {
    own_entry(
        entries,
        c.me,
        Some(&c.cfg.v4.network),
        c.prefer.map(|(p, _)| p),
    )
}

/// Our key: same node name (preferring `prefer`, the subnet we used last), else a
/// nameless key with our public IP (flannel identifies nodes by public IP). Only keys inside
/// `network` count (the daemon knows it; status and release may not). The daemon, `status`
/// and `release` all use this one rule.
pub fn own_entry<'a>(
    entries: &'a BTreeMap<String, Entry>,
    me: &Me,
    network: Option<&IpNetwork>,
    prefer: Option<IpNetwork>,
) -> Option<(&'a String, &'a Entry, &'a Lease)> {
    let ok = |(k, e): (&'a String, &'a Entry)| e.decoded.as_ref().ok().map(|l| (k, e, l));
    let in_net = |l: &Lease| network.is_none_or(|n| crate::net::within(&l.subnet, n));
    let mine: Vec<_> = entries
        .iter()
        .filter_map(ok)
        .filter(|(_, _, l)| l.value.node_name == me.node && in_net(l))
        .collect();
    let preferred = prefer.and_then(|p| mine.iter().find(|(_, _, l)| l.subnet == p).copied());
    preferred.or_else(|| mine.first().copied()).or_else(|| {
        entries.iter().filter_map(ok).find(|(_, _, l)| {
            l.value.node_name.is_empty() && l.value.public_ip == me.public_ip && in_net(l)
        })
    })
}

async fn try_claim(client: &mut Client, c: &Claim<'_>) -> Result<Option<OwnLease>, ClaimError> {
    let (_, entries) = super::list(client, c.keys).await?;
    if let Some((name, entry, lease)) = find_own(&entries, c) {
        return adopt(client, c, &entries, name, entry, lease).await;
    }
    let taken: Vec<IpNetwork> = entries
        .keys()
        .filter_map(|k| lease::parse_key_name(k).ok())
        .collect();
    let mut rng = rand::rng();
    let subnet = subnet::choose(
        &c.cfg.v4,
        &Taken::new(&c.cfg.v4, &taken),
        c.prefer.map(|p| p.0),
        &mut rng,
    )
    .ok_or(ClaimError::Exhausted(c.cfg.v4.network))?;
    let v6 = choose_v6(c, &entries)?;
    let name = lease::key_name(&subnet);
    let key = c.keys.subnet(&name);
    let id = grant(client, c.ttl).await?;
    let guard = Compare::version(key.clone(), CompareOp::Equal, 0);
    if put_if(client, guard, &key, &value(c, v6), id).await? {
        info!(%subnet, ipv6_subnet = ?v6, lease = id, "claimed a new subnet");
        return Ok(Some(OwnLease {
            name,
            subnet,
            ipv6_subnet: v6,
            lease_id: id,
        }));
    }
    Ok(None)
}

fn choose_v6(
    c: &Claim,
    entries: &BTreeMap<String, Entry>,
) -> Result<Option<IpNetwork>, ClaimError> {
    let (Some(pool), Some(_)) = (&c.cfg.v6, c.me.public_ipv6) else {
        return Ok(None);
    };
    let taken: Vec<IpNetwork> = entries
        .values()
        .filter_map(|e| e.decoded.as_ref().ok().and_then(|l| l.value.ipv6_subnet))
        .collect();
    let prefer = c.prefer.and_then(|p| p.1);
    subnet::choose(pool, &Taken::new(pool, &taken), prefer, &mut rand::rng())
        .map(Some)
        .ok_or(ClaimError::Exhausted(pool.network))
}

/// Keeps our key untouched when its lease is alive and its value current (a restart then
/// writes nothing, so no peer sees an event); otherwise rewrites it, guarded by the
/// revision we read, bound to a fresh lease.
async fn adopt(
    client: &mut Client,
    c: &Claim<'_>,
    entries: &BTreeMap<String, Entry>,
    name: &str,
    entry: &Entry,
    lease: &Lease,
) -> Result<Option<OwnLease>, ClaimError> {
    let v6 = match (lease.value.ipv6_subnet, &c.cfg.v6, c.me.public_ipv6) {
        (Some(s), Some(_), Some(_)) => Some(s),
        _ => choose_v6(c, entries)?,
    };
    let want = value(c, v6);
    let own = |lease_id| OwnLease {
        name: name.to_owned(),
        subnet: lease.subnet,
        ipv6_subnet: v6,
        lease_id,
    };
    if entry.lease_id != 0 && want == lease.value && alive(client, entry.lease_id).await? {
        info!(subnet = %lease.subnet, lease = entry.lease_id, "adopted our existing lease");
        return Ok(Some(own(entry.lease_id)));
    }
    let key = c.keys.subnet(name);
    let id = grant(client, c.ttl).await?;
    let guard = Compare::mod_revision(key.clone(), CompareOp::Equal, entry.mod_revision);
    if put_if(client, guard, &key, &want, id).await? {
        info!(subnet = %lease.subnet, lease = id, "renewed our existing subnet under a new lease");
        return Ok(Some(own(id)));
    }
    Ok(None)
}

pub async fn grant(client: &mut Client, ttl: i64) -> Result<i64, EtcdError> {
    Ok(super::timeout("grant lease", client.lease_grant(ttl, None))
        .await?
        .id())
}

/// Whether the etcd lease still exists; a keep-alive both checks and refreshes it.
pub async fn alive(client: &mut Client, id: i64) -> Result<bool, EtcdError> {
    match tokio::time::timeout(super::REQUEST_TIMEOUT, client.lease_keep_alive(id)).await {
        Ok(Ok(_)) => Ok(true),
        Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => Ok(false),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(EtcdError::Timeout("lease keep-alive")),
    }
}

/// Puts `value` under `key` bound to lease `id` if `guard` holds; revokes the unused lease
/// otherwise. Returns whether the put happened.
async fn put_if(
    client: &mut Client,
    guard: Compare,
    key: &str,
    value: &LeaseValue,
    id: i64,
) -> Result<bool, EtcdError> {
    let put = TxnOp::put(
        key,
        lease::encode(value),
        Some(PutOptions::new().with_lease(id)),
    );
    let txn = Txn::new().when([guard]).and_then([put]);
    let ok = super::timeout("claim transaction", client.txn(txn))
        .await?
        .succeeded();
    if !ok {
        let _ = super::timeout("revoke lease", client.lease_revoke(id)).await;
    }
    Ok(ok)
}
