//! The rules task: with `--ip-masq`, the one owner of our nft table and of its node sets
//! (the addresses pod traffic is never masqueraded to).
//!
//! The node sets follow the leases key by key: a lease event looks at the changed keys
//! only ([`LeaseSet::changes_since`]) and writes only the addresses that joined or left
//! the sets, after a short wait that folds a burst of events (a cold start's thousand
//! joins) into one `nft` run. Before, every event scanned all leases and rewrote both sets
//! whole, one `nft` process per event on every node.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::NetConfig,
    etcd::watch::{Changes, Cursor, LeaseSet, LeasesRx},
    http::Ready,
    kernel::nft,
    me::Me,
    net,
};

/// How long a lease event waits for more before the node sets are written.
pub const FOLD: Duration = Duration::from_millis(200);

/// This node's own addresses: pod traffic to them is never masqueraded.
pub fn own_ips(me: &Me) -> BTreeSet<IpAddr> {
    me.public_ip.into_iter().chain(me.public_ipv6).collect()
}

/// What the rules task works from.
pub struct Rules {
    pub cfg: NetConfig,
    pub masq: nft::Masq,
    pub me: Me,
    pub leases: LeasesRx,
    pub every: Duration,
    pub ready: Arc<Ready>,
}

/// Every node's address in the cluster: ours, and the PublicIP/PublicIPv6 of each lease
/// that names a usable unicast address outside the pod networks (a lease can't exempt a
/// pod address, or an address no node has, from masquerade). Kept per key, with a count
/// per address (two keys may name one node).
#[derive(Debug, Default)]
pub struct NodeSet {
    own: BTreeSet<IpAddr>,
    pods: Vec<ipnetwork::IpNetwork>,
    by_key: BTreeMap<String, Vec<IpAddr>>,
    counts: BTreeMap<IpAddr, usize>,
    cursor: Option<Cursor>,
}

/// Addresses that joined and left the set in one [`NodeSet::follow`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub added: BTreeSet<IpAddr>,
    pub removed: BTreeSet<IpAddr>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

impl NodeSet {
    pub fn new(me: &Me, cfg: &NetConfig) -> NodeSet {
        NodeSet {
            own: own_ips(me),
            pods: cfg.pools().map(|p| p.network).collect(),
            ..NodeSet::default()
        }
    }

    /// The whole set: ours and every lease's.
    pub fn all(&self) -> BTreeSet<IpAddr> {
        self.own.iter().chain(self.counts.keys()).copied().collect()
    }

    fn ips(&self, set: &LeaseSet, key: &str) -> Vec<IpAddr> {
        let Some(Ok(l)) = set.get(key) else {
            return vec![];
        };
        let pods = |ip: &IpAddr| self.pods.iter().any(|p| p.contains(*ip));
        l.value
            .public_ip
            .into_iter()
            .chain(l.value.public_ipv6)
            .filter(|ip| !net::is_unusable_next_hop(ip) && !pods(ip))
            .collect()
    }

    /// Catches up with `set`: the changed keys only, or every key after a new epoch (a
    /// list, a restore) or when too far behind.
    pub fn follow(&mut self, set: &LeaseSet) -> Delta {
        let keys: BTreeSet<String> = match set.changes_since(self.cursor) {
            Changes::Keys(k) => k,
            Changes::All => self.by_key.keys().chain(set.keys()).cloned().collect(),
        };
        self.cursor = Some(set.cursor());
        let changed: Vec<(String, Vec<IpAddr>)> = keys
            .into_iter()
            .map(|k| {
                let ips = self.ips(set, &k);
                (k, ips)
            })
            .collect();
        // Whether each address a changed key held or holds now was in the set before.
        let mut was = BTreeMap::new();
        for (k, new) in &changed {
            for ip in self.by_key.get(k).into_iter().flatten().chain(new) {
                was.entry(*ip)
                    .or_insert_with(|| self.counts.contains_key(ip));
            }
        }
        for (k, ips) in changed {
            for ip in self.by_key.remove(&k).unwrap_or_default() {
                if let Some(c) = self.counts.get_mut(&ip) {
                    *c -= 1;
                    if *c == 0 {
                        self.counts.remove(&ip);
                    }
                }
            }
            for ip in &ips {
                *self.counts.entry(*ip).or_default() += 1;
            }
            if !ips.is_empty() {
                self.by_key.insert(k, ips);
            }
        }
        let mut d = Delta::default();
        for (ip, was) in was.into_iter().filter(|(ip, _)| !self.own.contains(ip)) {
            match (was, self.counts.contains_key(&ip)) {
                (false, true) => d.added.insert(ip),
                (true, false) => d.removed.insert(ip),
                _ => false,
            };
        }
        d
    }
}

/// The one owner of our nft table. Puts it back if a firewall reload or flush removed or
/// changed it (`ensure` compares a hash first, so the usual check is one `nft list`, every
/// resync, at most 60 s), and with masquerade keeps the node sets equal to the nodes the
/// leases name: per change the addresses that joined or left, in one transaction.
pub async fn keep(mut r: Rules, sd: CancellationToken) {
    // Without masquerade there is no table to keep (the start deleted an old one): no `nft`
    // run per resync on every node for nothing.
    if !r.masq.enabled {
        return sd.cancelled().await;
    }
    let mut nodes = NodeSet::new(&r.me, &r.cfg);
    // Set when a node-set update failed: the next check writes the sets whole again.
    let mut stale = false;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + r.every, r.every);
    loop {
        tokio::select! {
            _ = sd.cancelled() => return,
            _ = tick.tick() => {}
            Ok(()) = r.leases.changed() => {
                tokio::select! {
                    _ = sd.cancelled() => return,
                    _ = tokio::time::sleep(FOLD) => {}
                }
                let delta = match r.leases.borrow_and_update().as_ref() {
                    Some(set) => nodes.follow(set),
                    None => continue,
                };
                if delta.is_empty() && !stale {
                    continue;
                }
                stale = !if stale {
                    write_nodes(&nodes.all()).await
                } else {
                    change_nodes(&delta, nodes.all().len()).await
                };
                if !stale {
                    continue;
                }
            }
        }
        let all = nodes.all();
        let ok = match nft::ensure(&r.cfg, &r.masq, &all).await {
            Ok(nft::Change::Installed) => {
                warn!("nftables table inet hostgw was missing or changed; installed it again");
                stale = false;
                true
            }
            // With masquerade on, `ensure` installs; it removes only when masquerade is off.
            Ok(nft::Change::Removed) => true,
            Ok(nft::Change::None) if stale => {
                stale = !write_nodes(&all).await;
                !stale
            }
            Ok(nft::Change::None) => true,
            Err(e) => {
                warn!(error = %e, "checking the nftables table failed");
                false
            }
        };
        r.ready.rules.store(ok, Ordering::Relaxed);
    }
}

/// Both node sets written whole, in one transaction; whether it worked.
async fn write_nodes(nodes: &BTreeSet<IpAddr>) -> bool {
    match nft::set_nodes(nodes).await {
        Ok(()) => {
            info!(
                nodes = nodes.len(),
                "node addresses exempt from masquerade updated"
            );
            true
        }
        Err(e) => {
            warn!(error = %e, "updating the node address sets failed; retried on the next check");
            false
        }
    }
}

/// Only what changed, in one transaction; whether it worked (if not, the sets are
/// written whole on the next check).
async fn change_nodes(d: &Delta, total: usize) -> bool {
    match nft::change_nodes(&d.added, &d.removed).await {
        Ok(()) => {
            info!(
                added = d.added.len(),
                removed = d.removed.len(),
                nodes = total,
                "node addresses exempt from masquerade updated"
            );
            true
        }
        Err(e) => {
            warn!(error = %e, "updating the node address sets failed; retried on the next check");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::{codec, watch::Leases};

    fn lease(ip: &str, ip6: Option<&str>) -> codec::Decoded {
        let v6 = ip6.map_or("null".to_owned(), |a| format!("\"{a}\""));
        let v = format!(r#"{{"PublicIP":"{ip}","PublicIPv6":{v6},"NodeName":"n"}}"#);
        codec::decode("198.18.9.0-24", v.as_bytes(), 1)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(ips: &[&str]) -> BTreeSet<IpAddr> {
        ips.iter().map(|s| ip(s)).collect()
    }

    fn nodes() -> NodeSet {
        let me = Me {
            node: "a".into(),
            public_ip: Some(ip("198.19.0.1")),
            public_ipv6: None,
            last: None,
            mtu: None,
        };
        let cfg = NetConfig::parse(br#"{"Network":"198.18.0.0/16"}"#).unwrap();
        NodeSet::new(&me, &cfg)
    }

    /// Per change only the addresses that joined or left; an address two keys name leaves
    /// with the last; ours, pod addresses and unusable ones never enter or leave; a new
    /// epoch compares everything. The set equals a scan of all leases after every step.
    #[test]
    fn the_node_set_follows_changed_keys_only() {
        let mut n = nodes();
        let mut s = LeaseSet::new(Leases::new());
        s.set("k2", Some(lease("198.19.0.2", Some("fd19:19::2"))));
        s.set("k3", Some(lease("198.19.0.3", None)));
        let d = n.follow(&s);
        assert_eq!(d.added, set(&["198.19.0.2", "fd19:19::2", "198.19.0.3"]));
        assert!(d.removed.is_empty());
        // A second key naming node 3 (two keys, one node), then the first one goes.
        s.set("k3b", Some(lease("198.19.0.3", None)));
        assert!(n.follow(&s).is_empty(), "already there");
        s.set("k3", None);
        assert!(n.follow(&s).is_empty(), "still named by k3b");
        s.set("k3b", None);
        assert_eq!(n.follow(&s).removed, set(&["198.19.0.3"]));
        // A key that moves to another address: one in, one out.
        s.set("k2", Some(lease("198.19.0.22", None)));
        let d = n.follow(&s);
        assert_eq!(d.added, set(&["198.19.0.22"]));
        assert_eq!(d.removed, set(&["198.19.0.2", "fd19:19::2"]));
        // Our own address, a pod address, loopback and a malformed lease: never members.
        s.set("mine", Some(lease("198.19.0.1", None)));
        s.set("pod", Some(lease("198.18.3.3", None)));
        s.set("lo", Some(lease("127.0.0.1", None)));
        s.set("bad", Some(Err("malformed".into())));
        assert!(n.follow(&s).is_empty());
        s.set("mine", None);
        assert!(n.follow(&s).is_empty(), "ours stays");
        assert_eq!(n.all(), set(&["198.19.0.1", "198.19.0.22"]));
        // Another epoch (a list): compared whole.
        let mut fresh = Leases::new();
        fresh.insert("k4".into(), lease("198.19.0.4", None));
        fresh.insert("k2".into(), lease("198.19.0.22", None));
        let s = LeaseSet::new(fresh);
        let d = n.follow(&s);
        assert_eq!(d.added, set(&["198.19.0.4"]));
        assert!(d.removed.is_empty(), "{d:?}");
        assert_eq!(n.all(), set(&["198.19.0.1", "198.19.0.22", "198.19.0.4"]));
    }
}
