//! The pure half of reconcile: the difference between the routes we want and the routes
//! the kernel holds with our protocol.
//!
//! Only our own routes are ever named in a plan: `remove` and `replace` come from the
//! kernel's protocol-75 routes, and `add` is created with `NLM_F_EXCL`, so the kernel
//! refuses it if any other route holds the destination. Desired routes never name a
//! destination a foreign route holds (validation rejects such leases as `foreign-route`).

use std::collections::BTreeSet;

use ipnetwork::IpNetwork;

pub use crate::kernel::HostRoute;
use crate::kernel::Kind;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Owned routes whose destination nobody wants any more: deleted first.
    pub remove: Vec<HostRoute>,
    /// Wanted routes for destinations where we hold no route: created exclusively.
    pub add: Vec<HostRoute>,
    /// Wanted routes for destinations where we hold a route with another next hop:
    /// replaced, so the next hop is swapped in one step without a window with no route.
    pub replace: Vec<HostRoute>,
}

impl Plan {
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty() && self.replace.is_empty()
    }

    /// Every route the plan writes (status shows these as missing).
    pub fn writes(&self) -> impl Iterator<Item = &HostRoute> {
        self.add.iter().chain(&self.replace)
    }
}

/// A replace only swaps a route in the same slot ([`HostRoute::slot`]); a route of another
/// kind at the same destination is a delete and a create.
pub fn plan(desired: &BTreeSet<HostRoute>, actual: &BTreeSet<HostRoute>) -> Plan {
    let wanted: BTreeSet<(IpNetwork, Kind)> = desired.iter().map(HostRoute::slot).collect();
    let held: BTreeSet<(IpNetwork, Kind)> = actual.iter().map(HostRoute::slot).collect();
    let remove = actual
        .iter()
        .filter(|r| !wanted.contains(&r.slot()))
        .copied()
        .collect();
    let (replace, add) = desired
        .difference(actual)
        .copied()
        .partition(|r| held.contains(&r.slot()));
    Plan {
        remove,
        add,
        replace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::{collections::BTreeMap, net::IpAddr};

    fn r(dst: &str, via: &str) -> HostRoute {
        HostRoute::via(dst.parse().unwrap(), via.parse().unwrap())
    }

    fn set(v: &[HostRoute]) -> BTreeSet<HostRoute> {
        v.iter().copied().collect()
    }

    #[test]
    fn empty_cases() {
        assert!(plan(&set(&[]), &set(&[])).is_empty());
        let a = r("198.18.2.0/24", "198.19.0.2");
        assert!(plan(&set(&[a]), &set(&[a])).is_empty());
    }

    #[test]
    fn missing_is_added_and_stale_is_removed() {
        let a = r("198.18.2.0/24", "198.19.0.2");
        let b = r("198.18.3.0/24", "198.19.0.3");
        let p = plan(&set(&[a]), &set(&[b]));
        assert_eq!(
            p,
            Plan {
                remove: vec![b],
                add: vec![a],
                replace: vec![],
            }
        );
    }

    #[test]
    fn changed_next_hop_is_replaced_not_removed() {
        let old = r("198.18.2.0/24", "198.19.0.2");
        let new = r("198.18.2.0/24", "198.19.0.7");
        let p = plan(&set(&[new]), &set(&[old]));
        assert_eq!(
            p,
            Plan {
                remove: vec![],
                add: vec![],
                replace: vec![new],
            }
        );
    }

    #[test]
    fn duplicate_owned_routes_for_one_destination() {
        // Two owned routes with the same destination can't both exist in one table with
        // the same metric, but a dump may still show a stale one: keep the wanted one.
        let good = r("198.18.2.0/24", "198.19.0.2");
        let stale = r("198.18.2.0/24", "198.19.0.9");
        let p = plan(&set(&[good]), &set(&[good, stale]));
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn v4_and_v6_together_and_everything_removed() {
        let a = r("198.18.2.0/24", "198.19.0.2");
        let b = r("fd18:18:0:2::/64", "fd19:19::2");
        let p = plan(&set(&[a, b]), &set(&[]));
        assert_eq!(p.add, vec![a, b]);
        let p = plan(&set(&[]), &set(&[a, b]));
        assert_eq!(p.remove, vec![a, b]);
        assert!(p.add.is_empty());
    }

    #[test]
    fn a_changed_mtu_is_replaced() {
        let old = r("198.18.2.0/24", "198.19.0.2");
        let new = old.with_mtu(Some(1500));
        let p = plan(&set(&[new]), &set(&[old]));
        assert_eq!((p.replace, p.add, p.remove), (vec![new], vec![], vec![]));
        let p = plan(&set(&[old]), &set(&[new]));
        assert_eq!(p.replace, vec![old], "an mtu no longer wanted is dropped");
    }

    #[test]
    fn a_peer_subnet_taken_as_our_own_is_deleted_then_created() {
        let peer = r("198.18.2.0/24", "198.19.0.2");
        let own = HostRoute::unreachable(peer.dst);
        let p = plan(&set(&[own]), &set(&[peer]));
        assert_eq!((p.remove, p.add), (vec![peer], vec![own]));
        assert!(p.replace.is_empty());
        // And an owned gateway-less unicast route (listed with the unspecified next hop)
        // is not our unreachable route.
        let odd = HostRoute::via(peer.dst, own.via);
        let p = plan(&set(&[own]), &set(&[odd, own]));
        assert_eq!((p.remove, p.add), (vec![odd], vec![]));
    }

    #[test]
    fn every_combination_of_three_routes() {
        // Exhaustive over subsets of a small universe with conflicting next hops.
        let u = [
            r("198.18.2.0/24", "198.19.0.2"),
            r("198.18.2.0/24", "198.19.0.3"),
            r("198.18.4.0/24", "198.19.0.4"),
        ];
        for dm in 0..8u8 {
            for am in 0..8u8 {
                let pick = |m: u8| {
                    set(&u
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| m & (1 << i) != 0)
                        .map(|(_, r)| *r)
                        .collect::<Vec<_>>())
                };
                let (mut desired, actual) = (pick(dm), pick(am));
                if desired.iter().filter(|r| r.dst == u[0].dst).count() > 1 {
                    desired.remove(&u[1]); // desired never holds two next hops for one dst
                }
                let p = plan(&desired, &actual);
                // Applying the plan yields exactly the desired set for the wanted dsts.
                let mut after: BTreeMap<IpNetwork, BTreeSet<IpAddr>> = BTreeMap::new();
                for x in &actual {
                    after.entry(x.dst).or_default().insert(x.via);
                }
                for x in &p.remove {
                    after.remove(&x.dst);
                }
                for x in &p.add {
                    assert!(
                        !after.contains_key(&x.dst),
                        "create only where we hold nothing"
                    );
                    after.insert(x.dst, [x.via].into());
                }
                for x in &p.replace {
                    assert!(after.contains_key(&x.dst), "replace only our own route");
                    after.insert(x.dst, [x.via].into());
                }
                for d in &desired {
                    assert!(after[&d.dst].contains(&d.via));
                }
                assert!(after.keys().all(|k| desired.iter().any(|d| d.dst == *k)));
                assert!(
                    p.writes().all(|a| !actual.contains(a)),
                    "no churn for present routes"
                );
                assert!(
                    p.remove
                        .iter()
                        .all(|x| !desired.iter().any(|d| d.dst == x.dst)),
                    "never delete a wanted dst"
                );
            }
        }
    }
}
