//! Claiming this node's subnet: adopt the key we can prove is ours, or claim a free subnet
//! with a create-only-if-absent transaction. Every write is guarded, so we never overwrite
//! a key another node owns.

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use tracing::{info, warn};

use super::{
    Entry, EtcdError, Keys, Snapshot,
    codec::{self as lease, Lease, LeaseValue},
    store::{Event, Store, WatchMsg, WatchStream},
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
    /// Every subnet of the pool is leased, as of etcd revision `.1`.
    #[error("no free subnet left in {0}")]
    Exhausted(IpNetwork, i64),
}

/// Claims until it succeeds: etcd errors are retried with backoff (the caller bounds
/// this with shutdown); lost races are retried at once with another subnet.
#[cfg(test)]
pub async fn acquire<S: Store>(store: &S, c: &Claim<'_>) -> Result<OwnLease, ClaimError> {
    acquire_from(store, c, None).await.map(|(own, _)| own)
}

/// [`acquire`], deciding first on `first` (the start's one read) when given; returns the
/// snapshot the winning try decided on, which the watcher then follows from. A lost create
/// race is retried on the same snapshot with the lost subnet marked taken (the guarded
/// create keeps it correct, and the watch from the snapshot's revision still misses
/// nothing), up to [`RETRIES_ON_ONE_READ`] times; an error or a lost adoption reads again.
/// So a start costs etcd one range read, whatever the races.
pub async fn acquire_from<S: Store>(
    store: &S,
    c: &Claim<'_>,
    mut snap: Option<Snapshot>,
) -> Result<(OwnLease, Snapshot), ClaimError> {
    let mut backoff = Backoff::etcd();
    let mut lost = Vec::new();
    loop {
        let read = match snap.take() {
            Some(s) => Ok(s),
            None => {
                lost.clear();
                Snapshot::take(store, c.keys).await
            }
        };
        let tried = match read {
            Ok(read) => try_claim(store, c, &read, &lost).await.map(|t| (t, read)),
            Err(e) => Err(e.into()),
        };
        match tried {
            Ok((Tried::Won(own), read)) => return Ok((own, read)),
            Ok((Tried::LostCreate(subnet), read)) if lost.len() < RETRIES_ON_ONE_READ => {
                info!(%subnet, "lost the race for a subnet, choosing another");
                lost.push(subnet);
                snap = Some(read);
            }
            Ok(_) => info!("lost the race for a subnet, reading again"),
            Err(e @ ClaimError::Exhausted(..)) => return Err(e),
            Err(e) => {
                warn!(error = %e, "claiming a subnet failed, retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// As [`acquire_from`], but a full pool is waited out, never returned: `exhausted(true)` is
/// called, and the next try comes as soon as a key under `subnets/` is deleted (released,
/// or its lease expired: watched from the revision of the list that found the pool full,
/// so a release in between is not missed) or after the backoff (200 ms doubling to 30 s),
/// whichever is first. `exhausted(false)` once a subnet is ours.
pub async fn acquire_waiting<S: Store>(
    store: &S,
    c: &Claim<'_>,
    mut first: Option<Snapshot>,
    exhausted: impl Fn(bool),
) -> Result<(OwnLease, Snapshot), ClaimError> {
    let mut backoff = Backoff::etcd();
    let mut said = false;
    loop {
        match acquire_from(store, c, first.take()).await {
            Ok(won) => {
                exhausted(false);
                return Ok(won);
            }
            Err(ClaimError::Exhausted(n, rev)) => {
                if !said {
                    warn!(network = %n, "no free subnet left; waiting for one to be released");
                    said = true;
                }
                exhausted(true);
                released(store, c.keys, rev, backoff.next_delay()).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Returns once a subnet key is deleted after revision `rev` (0: from now), or after
/// `limit`. A watch that fails or is compacted just leaves the wait to `limit`.
async fn released<S: Store>(store: &S, keys: &Keys, rev: i64, limit: std::time::Duration) {
    let deleted = async {
        let from = if rev > 0 { rev + 1 } else { 0 };
        if let Ok(mut w) = store.watch(&keys.subnets(), from).await {
            loop {
                match w.next().await {
                    Ok(Some(WatchMsg::Events { events, .. })) => {
                        if events.iter().any(|e| matches!(e, Event::Delete { .. })) {
                            return;
                        }
                    }
                    Ok(Some(WatchMsg::Progress(_))) => {}
                    _ => break,
                }
            }
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = deleted => {}
        _ = tokio::time::sleep(limit) => {}
    }
}

/// Lost creates retried on one read before reading again (a read that stale has likely
/// missed more claims than the ones we ran into).
pub const RETRIES_ON_ONE_READ: usize = 3;

/// What one try came to.
enum Tried {
    Won(OwnLease),
    /// Someone created this subnet's key first.
    LostCreate(IpNetwork),
    /// Our key changed between the read and the guarded write.
    LostAdopt,
}

fn value(c: &Claim, ipv6_subnet: Option<IpNetwork>) -> LeaseValue {
    value_of(c.me, ipv6_subnet)
}

/// The value this node writes under its key. `me` holds only the cluster's families
/// ([`Me::for_config`]): an IPv6-only node (no IPv4 next hop) names its IPv6 one.
pub fn value_of(me: &Me, ipv6_subnet: Option<IpNetwork>) -> LeaseValue {
    let v6_only = me.public_ip.is_none();
    LeaseValue {
        public_ip: me.public_ip,
        public_ipv6: if v6_only {
            me.public_ipv6
        } else {
            ipv6_subnet.and(me.public_ipv6)
        },
        backend_type: "host-gw".into(),
        node_name: me.node.clone(),
        ipv6_subnet,
        mtu: me.mtu,
    }
}

fn find_own<'a>(
    entries: &'a BTreeMap<String, Entry>,
    c: &Claim,
) -> Option<(&'a String, &'a Entry, &'a Lease)> {
    own_entry(
        entries,
        c.me,
        Some(&c.cfg.primary().network),
        c.prefer.map(|(p, _)| p),
    )
}

/// Whether a key is provably this node's: its node name and public IP both match ours, or
/// the subnet we know we held (`prefer`: the subnet file, or the lease just lost) is this
/// key's and its name is ours (or empty: a key written by flannel).
pub fn is_own(l: &Lease, me: &Me, prefer: Option<IpNetwork>) -> bool {
    let name = &l.value.node_name;
    (*name == me.node && same_address(l, me))
        || (prefer == Some(l.subnet) && (*name == me.node || name.is_empty()))
}

/// The lease names our public IP: its IPv4 one, or on an IPv6-only lease its IPv6 one.
pub fn same_address(l: &Lease, me: &Me) -> bool {
    match l.value.public_ip {
        Some(ip) => me.public_ip == Some(ip),
        None => l.value.public_ipv6.is_some() && l.value.public_ipv6 == me.public_ipv6,
    }
}

/// A key that carries our node name but that we cannot prove is ours (another node started
/// with our name, or we lost our subnet file and our address): reported, never taken.
pub fn is_conflict(l: &Lease, me: &Me, prefer: Option<IpNetwork>) -> bool {
    l.value.node_name == me.node && !is_own(l, me, prefer)
}

/// Our key by [`is_own`], preferring `prefer`. Only keys inside `network` count (the daemon
/// knows it; status and release may not). The daemon, `status` and `release` all use this
/// one rule.
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
        .filter(|(_, _, l)| in_net(l) && is_own(l, me, prefer))
        .collect();
    let preferred = prefer.and_then(|p| mine.iter().find(|(_, _, l)| l.subnet == p).copied());
    preferred.or_else(|| mine.first().copied())
}

fn report_conflicts(entries: &BTreeMap<String, Entry>, c: &Claim) {
    let prefer = c.prefer.map(|(p, _)| p);
    for (k, e) in entries {
        if let Ok(l) = &e.decoded
            && is_conflict(l, c.me, prefer)
        {
            warn!(key = %k, public_ip = ?l.value.public_ip, public_ipv6 = ?l.value.public_ipv6, "a key carries our node name but not our public IP, and our subnet file does not name it: not adopted (another node with the same name?)");
        }
    }
}

async fn try_claim<S: Store>(
    store: &S,
    c: &Claim<'_>,
    snap: &Snapshot,
    lost: &[IpNetwork],
) -> Result<Tried, ClaimError> {
    let entries = &snap.entries;
    let exhausted = |n| ClaimError::Exhausted(n, snap.header.revision);
    if let Some((name, entry, lease)) = find_own(entries, c) {
        let own = adopt(store, c, entries, name, entry, lease).await?;
        return Ok(own.map_or(Tried::LostAdopt, Tried::Won));
    }
    if lost.is_empty() {
        report_conflicts(entries, c);
    }
    let pool = c.cfg.primary();
    let taken: Vec<IpNetwork> = taken(entries)
        .into_iter()
        .chain(lost.iter().copied())
        .collect();
    let subnet = subnet::choose(
        pool,
        &Taken::new(pool, &taken),
        c.prefer.map(|p| p.0),
        &mut rand::rng(),
    )
    .ok_or_else(|| exhausted(pool.network))?;
    let v6 = choose_v6(c, entries).map_err(|e| match e {
        ClaimError::Exhausted(n, _) => exhausted(n),
        e => e,
    })?;
    // Dual-stack in flannel's key form, so flannel's daemons route to both our subnets.
    let name = lease::key_name_of(&subnet, v6.as_ref());
    let key = c.keys.subnet(&name);
    let id = store.grant(c.ttl).await?;
    if written(
        store,
        store
            .create_unless(
                &key,
                &same_subnet(c.keys, &subnet),
                lease::encode(&value(c, v6)),
                id,
            )
            .await,
        id,
    )
    .await?
    {
        info!(%subnet, ipv6_subnet = ?v6, lease = id, "claimed a new subnet");
        return Ok(Tried::Won(OwnLease {
            name,
            subnet,
            ipv6_subnet: v6,
            lease_id: id,
        }));
    }
    Ok(Tried::LostCreate(subnet))
}

/// The key ranges that name `subnet` as a key's first part: `<subnet>` itself and every
/// `<subnet>&<v6>` (flannel's dual-stack form). Two nodes that chose one IPv4 subnet with
/// different IPv6 ones would otherwise both win their create; with these guards the second
/// loses the race. (`'` is the character after `&`.)
fn same_subnet(keys: &Keys, subnet: &IpNetwork) -> Vec<(String, String)> {
    let base = keys.subnet(&lease::key_name(subnet));
    vec![
        (base.clone(), format!("{base}\0")),
        (format!("{base}&"), format!("{base}'")),
    ]
}

/// Every subnet a key holds, of both families: a decoded lease's subnets, or what the key
/// of an undecodable value names (its subnets are not free either).
fn taken(entries: &BTreeMap<String, Entry>) -> Vec<IpNetwork> {
    entries
        .iter()
        .flat_map(|(k, e)| match &e.decoded {
            Ok(l) => vec![Some(l.subnet), l.value.ipv6_subnet],
            Err(_) => lease::parse_key(k).map_or(vec![], |(a, b)| vec![Some(a), b]),
        })
        .flatten()
        .collect()
}

/// The IPv6 subnet of a dual-stack node (none in a single-stack cluster, or on a node
/// without an IPv6 address).
fn choose_v6(
    c: &Claim,
    entries: &BTreeMap<String, Entry>,
) -> Result<Option<IpNetwork>, ClaimError> {
    let (Some(pool), Some(_)) = (c.cfg.secondary(), c.me.public_ipv6) else {
        return Ok(None);
    };
    let taken = taken(entries);
    let prefer = c.prefer.and_then(|p| p.1);
    subnet::choose(pool, &Taken::new(pool, &taken), prefer, &mut rand::rng())
        .map(Some)
        // Revision 0: not known here (the caller that listed knows it).
        .ok_or(ClaimError::Exhausted(pool.network, 0))
}

/// Keeps our key untouched when its lease is alive and its value current (a restart then
/// writes nothing, so no peer sees an event); otherwise rewrites it, guarded by the
/// revision we read, bound to a fresh lease.
async fn adopt<S: Store>(
    store: &S,
    c: &Claim<'_>,
    entries: &BTreeMap<String, Entry>,
    name: &str,
    entry: &Entry,
    lease: &Lease,
) -> Result<Option<OwnLease>, ClaimError> {
    let v6 = match (lease.value.ipv6_subnet, c.cfg.secondary(), c.me.public_ipv6) {
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
    if entry.lease_id != 0 && want == lease.value && store.keep_alive(entry.lease_id).await? {
        info!(subnet = %lease.subnet, lease = entry.lease_id, "adopted our existing lease");
        return Ok(Some(own(entry.lease_id)));
    }
    let key = c.keys.subnet(name);
    let id = store.grant(c.ttl).await?;
    let put = store.put_if(&key, lease::encode(&want), id, entry.mod_revision);
    if written(store, put.await, id).await? {
        info!(subnet = %lease.subnet, lease = id, "renewed our existing subnet under a new lease");
        return Ok(Some(own(id)));
    }
    Ok(None)
}

/// The outcome of a guarded write with the fresh lease `id`; an unused lease is revoked.
async fn written<S: Store>(
    store: &S,
    put: Result<bool, EtcdError>,
    id: i64,
) -> Result<bool, EtcdError> {
    if !matches!(put, Ok(true)) {
        let _ = store.revoke(id).await;
    }
    put
}

#[cfg(test)]
#[path = "claim_pool_tests.rs"]
mod pool_tests;
