//! What the reconciler wants, kept between passes and updated per changed lease: a lease
//! event costs a node work in the changed leases, not in N (at N = 1,000 the pass over all
//! leases was most of a node's per-event work; see BENCHMARKS.md, "1,000 nodes").
//!
//! It gives exactly what [`compute::compute_in`] gives for the same leases (a property test
//! checks this over random event sequences): each lease is checked on its own
//! ([`validate::check_lease`]), and only overlaps look at more than one lease. A change
//! whose old or new subnets overlap another candidate's resolves the overlaps of all
//! leases again ([`validate::resolve`], in memory, no re-check); any other change settles
//! its own lease only. A new view of the kernel, a new lease of ours or a replaced lease
//! set start a new state.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use ipnetwork::IpNetwork;

#[cfg(test)]
use super::{
    compute::{Computed, PeerView},
    validate::Rejected,
};
use super::{
    compute::{MtuMismatch, mtu_mismatch, own_unreachable},
    plan::HostRoute,
    validate::{self, Reason, Scope},
};
#[cfg(test)]
use crate::etcd::watch::Leases;
use crate::{
    config::NetConfig,
    etcd::codec::Decoded,
    kernel::{self, LocalView, NextHop},
    me::OwnLease,
    net,
};

#[derive(Debug)]
pub struct State {
    own: OwnLease,
    entries: BTreeMap<String, Entry>,
    /// The destinations of every lease that passed its own check, counted: what tells an
    /// overlap.
    dsts: BTreeMap<(bool, u128, u128), u32>,
    /// The same count by family (IPv6 second) and prefix length: the supernets an overlap
    /// check looks up are only those of lengths some destination has (in a cluster of one
    /// `SubnetLen`, none), not every length shorter than its own.
    lens: Box<[[u32; 129]; 2]>,
    /// Lookups done for next hops outside every connected prefix: `None` on-link,
    /// `Some(gateway)` only through a router (`Some(None)`: the lookup failed).
    hops: HashMap<IpAddr, Option<Option<IpAddr>>>,
    /// Our own unreachable routes and the routes of every reachable accepted peer.
    pub desired: BTreeSet<HostRoute>,
    /// Keys rejected or unreachable: what is reported, without a walk over all leases.
    problems: BTreeSet<String>,
    peers: usize,
}

#[derive(Debug)]
struct Entry {
    check: Result<Cand, (Reason, String)>,
    outcome: Outcome,
}

/// What the state keeps of a lease that passed its own check: its key and node name are
/// the lease set's (one copy of each string per lease, at 1,000 leases that is memory).
#[derive(Debug)]
struct Cand {
    created: i64,
    /// Without mtu.
    routes: Vec<HostRoute>,
    mtu: Option<u32>,
}

#[derive(Debug)]
enum Outcome {
    /// Its own check failed (see `check`).
    Invalid,
    /// Passed its own check, but overlaps an older lease.
    Overlap(String),
    Peer(Routes),
}

#[derive(Debug)]
struct Routes {
    /// The mtu its routes carry.
    mtu: Option<u32>,
    unreachable_via: Option<Option<IpAddr>>,
    #[cfg_attr(not(test), allow(dead_code))]
    mtu_mismatch: Option<MtuMismatch>,
}

impl Routes {
    fn of<'a>(&self, c: &'a Cand) -> impl Iterator<Item = HostRoute> + 'a {
        let mtu = self.mtu;
        c.routes.iter().map(move |r| r.with_mtu(mtu))
    }
}

/// The leases a [`State::check`] changed, for [`State::settle`].
#[derive(Debug, Default)]
pub struct Pending {
    /// Each changed key with what it was before (its outcome still in the totals).
    keys: Vec<(String, Option<Entry>)>,
    /// Resolve the overlaps of every lease again.
    all: bool,
}

/// The destinations whose desired routes may have changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Touched {
    All,
    Dsts(BTreeSet<IpNetwork>),
}

impl State {
    pub fn new(own: &OwnLease) -> Self {
        State {
            own: own.clone(),
            entries: BTreeMap::new(),
            dsts: BTreeMap::new(),
            lens: Box::new([[0; 129]; 2]),
            hops: HashMap::new(),
            desired: own_unreachable(Some(own)).into_iter().collect(),
            problems: BTreeSet::new(),
            peers: 0,
        }
    }

    pub fn own(&self) -> &OwnLease {
        &self.own
    }

    /// Checks the changed leases (`None`: deleted) on their own. Synchronous: it runs
    /// under the lease set's borrow. `rebuild`: the state is new, every lease is changed.
    pub fn check<'a>(
        &mut self,
        cfg: &NetConfig,
        view: &LocalView,
        changed: impl IntoIterator<Item = (&'a str, Option<&'a Decoded>)>,
        rebuild: bool,
    ) -> Pending {
        let scope = Scope::new(cfg, Some(&self.own), view);
        let mut p = Pending {
            all: rebuild,
            ..Pending::default()
        };
        let mut old_dsts = Vec::new();
        let mut new_dsts = Vec::new();
        for (key, decoded) in changed {
            if key == self.own.name {
                continue;
            }
            let old = self.entries.remove(key);
            if let Some(Entry { check: Ok(c), .. }) = &old {
                for r in &c.routes {
                    self.count(&r.dst, false);
                    old_dsts.push(r.dst);
                }
            }
            if let Some(d) = decoded {
                let check = validate::check_lease(key, d, &scope).map(|(created, p)| Cand {
                    created,
                    routes: p.routes,
                    mtu: p.mtu,
                });
                if let Ok(c) = &check {
                    new_dsts.extend(c.routes.iter().map(|r| r.dst));
                }
                let outcome = Outcome::Invalid;
                self.entries
                    .insert(key.to_owned(), Entry { check, outcome });
            }
            p.keys.push((key.to_owned(), old));
        }
        if p.all {
            self.dsts.clear();
            *self.lens = [[0; 129]; 2];
            let cands = self.entries.values().filter_map(|e| e.check.as_ref().ok());
            let dsts: Vec<_> = cands.flat_map(|c| c.routes.iter().map(|r| r.dst)).collect();
            for d in &dsts {
                self.count(d, true);
            }
            return p;
        }
        // A destination given up that overlapped another lease's may set that one free; a
        // new one that overlaps another may refuse it or be refused: resolve them all.
        p.all = old_dsts.iter().any(|d| self.overlapping(d) > 0);
        for d in &new_dsts {
            self.count(d, true);
        }
        p.all |= new_dsts.iter().any(|d| self.overlapping(d) > 1);
        p
    }

    /// Next hops the pending leases route through that need a lookup not done yet.
    pub fn lookups(&self, view: &LocalView, p: &Pending) -> Vec<IpAddr> {
        let cands: Vec<&Cand> = match p.all {
            true => self.candidates().map(|(_, c)| c).collect(),
            false => p
                .keys
                .iter()
                .filter_map(|(k, _)| self.entries.get(k)?.check.as_ref().ok())
                .collect(),
        };
        let vias = cands
            .into_iter()
            .flat_map(|c| c.routes.iter().map(|r| &r.via));
        kernel::needs_lookup(view, vias)
            .into_iter()
            .filter(|ip| !self.hops.contains_key(ip))
            .collect()
    }

    /// The answer of one lookup (`Err`: it failed; the peer is then unreachable).
    pub fn learn(&mut self, ip: IpAddr, hop: Result<NextHop, ()>) {
        let v = match hop {
            Ok(NextHop::OnLink) => None,
            Ok(NextHop::ViaGateway(gw)) => Some(gw),
            Err(()) => Some(None),
        };
        self.hops.insert(ip, v);
    }

    /// Decides the pending leases' outcomes and desired routes.
    pub fn settle(&mut self, mtu: Option<u32>, p: Pending) -> Touched {
        if p.all {
            self.settle_all(mtu);
            return Touched::All;
        }
        let mut touched = BTreeSet::new();
        for (key, old) in p.keys {
            self.problems.remove(&key);
            if let Some(Entry {
                outcome: Outcome::Peer(r),
                check: Ok(c),
            }) = old
            {
                self.peers -= 1;
                touched.extend(c.routes.iter().map(|r| r.dst));
                if r.unreachable_via.is_none() {
                    for x in r.of(&c) {
                        self.desired.remove(&x);
                    }
                }
            }
            let Some(e) = self.entries.get_mut(&key) else {
                continue;
            };
            e.outcome = match &e.check {
                Ok(c) => Outcome::Peer(routes(c, &self.hops, mtu)),
                Err(_) => Outcome::Invalid,
            };
            note(
                &key,
                e,
                &mut self.desired,
                &mut self.problems,
                &mut self.peers,
            );
            if let (Outcome::Peer(_), Ok(c)) = (&e.outcome, &e.check) {
                touched.extend(c.routes.iter().map(|r| r.dst));
            }
        }
        Touched::Dsts(touched)
    }

    fn settle_all(&mut self, mtu: Option<u32>) {
        let overlaps: Vec<Option<String>> = {
            let cands = self.candidates();
            validate::resolve(cands.map(|(k, c)| (c.created, k, &c.routes[..])).collect())
        };
        let mut overlaps = overlaps.into_iter();
        self.desired = own_unreachable(Some(&self.own)).into_iter().collect();
        self.problems.clear();
        self.peers = 0;
        // `candidates` walks the entries in this same order.
        for (key, e) in &mut self.entries {
            e.outcome = match &e.check {
                Ok(c) => match overlaps.next().flatten() {
                    Some(detail) => Outcome::Overlap(detail),
                    None => Outcome::Peer(routes(c, &self.hops, mtu)),
                },
                Err(_) => Outcome::Invalid,
            };
            note(
                key,
                e,
                &mut self.desired,
                &mut self.problems,
                &mut self.peers,
            );
        }
    }

    fn candidates(&self) -> impl Iterator<Item = (&str, &Cand)> {
        self.entries
            .iter()
            .filter_map(|(k, e)| e.check.as_ref().ok().map(|c| (k.as_str(), c)))
    }

    fn count(&mut self, d: &IpNetwork, add: bool) {
        let k = net::range(d);
        let len = &mut self.lens[usize::from(d.is_ipv6())][usize::from(d.prefix())];
        match add {
            true => {
                *self.dsts.entry(k).or_default() += 1;
                *len += 1;
            }
            false => {
                if let Some(n) = self.dsts.get_mut(&k) {
                    *n -= 1;
                    *len -= 1;
                    if *n == 0 {
                        self.dsts.remove(&k);
                    }
                }
            }
        }
    }

    /// How many counted destinations share an address with `d` (destinations are
    /// prefixes: one overlaps `d` if it lies within `d` or is one of `d`'s supernets).
    fn overlapping(&self, d: &IpNetwork) -> u32 {
        let (v6, start, end) = net::range(d);
        let within: u32 = self
            .dsts
            .range((v6, start, 0)..=(v6, end, u128::MAX))
            .map(|(_, n)| *n)
            .sum();
        let lens = &self.lens[usize::from(d.is_ipv6())];
        let supernets: u32 = (0..d.prefix())
            .filter(|len| lens[usize::from(*len)] > 0)
            .filter_map(|len| IpNetwork::new(d.ip(), len).ok())
            .filter_map(|s| {
                let (v6, s_start, s_end) = net::range(&s);
                (s_start < start).then(|| self.dsts.get(&(v6, s_start, s_end)))?
            })
            .sum();
        within + supernets
    }

    /// The key of the accepted lease that routes `r` (a refused route is reported as its
    /// lease's rejection). A walk over all leases, only for routes the kernel refused.
    pub fn key_of(&self, r: &HostRoute) -> Option<&str> {
        self.entries
            .iter()
            .find_map(|(k, e)| match (&e.outcome, &e.check) {
                (Outcome::Peer(x), Ok(c)) if x.of(c).any(|y| y == *r) => Some(k.as_str()),
                _ => None,
            })
    }

    pub fn peers(&self) -> usize {
        self.peers
    }

    /// Unreachable peers and rejected leases, by key.
    pub fn problems(&self) -> impl Iterator<Item = Problem<'_>> {
        self.problems.iter().filter_map(|k| {
            let e = self.entries.get(k)?;
            Some(match (&e.outcome, &e.check) {
                (Outcome::Peer(r), Ok(_)) => Problem::Unreachable {
                    key: k,
                    via: r.unreachable_via.flatten(),
                },
                (Outcome::Overlap(d), _) => Problem::Rejected {
                    key: k,
                    reason: Reason::Overlap,
                    detail: d,
                },
                (_, Err((reason, detail))) => Problem::Rejected {
                    key: k,
                    reason: *reason,
                    detail,
                },
                (Outcome::Invalid, Ok(_)) => return None,
            })
        })
    }

    /// The state as [`compute::compute_in`] says it (peers and rejections by key) for the
    /// lease set it was settled on.
    #[cfg(test)]
    pub fn computed(&self, leases: &Leases) -> Computed {
        let mut c = Computed {
            desired: self.desired.clone(),
            ..Computed::default()
        };
        for (key, e) in &self.entries {
            match (&e.outcome, &e.check) {
                (Outcome::Peer(r), Ok(x)) => c.peers.push(PeerView {
                    key: key.clone(),
                    node: leases[key]
                        .as_ref()
                        .map(|l| l.value.node_name.clone())
                        .unwrap_or_default(),
                    routes: r.of(x).collect(),
                    unreachable_via: r.unreachable_via,
                    mtu_mismatch: r.mtu_mismatch,
                }),
                (Outcome::Overlap(d), _) => c.rejected.push(Rejected {
                    key: key.clone(),
                    reason: Reason::Overlap,
                    detail: d.clone(),
                }),
                (_, Err((reason, detail))) => c.rejected.push(Rejected {
                    key: key.clone(),
                    reason: *reason,
                    detail: detail.clone(),
                }),
                (Outcome::Invalid, Ok(_)) => {}
            }
        }
        c
    }
}

/// A lease that is not a clean peer, as the reconciler reports it.
pub enum Problem<'a> {
    Unreachable {
        key: &'a str,
        via: Option<IpAddr>,
    },
    Rejected {
        key: &'a str,
        reason: Reason,
        detail: &'a str,
    },
}

/// Adds one settled lease to the totals.
fn note(
    key: &str,
    e: &Entry,
    desired: &mut BTreeSet<HostRoute>,
    problems: &mut BTreeSet<String>,
    peers: &mut usize,
) {
    match (&e.outcome, &e.check) {
        (Outcome::Peer(r), Ok(c)) => {
            *peers += 1;
            match r.unreachable_via {
                None => desired.extend(r.of(c)),
                Some(_) => {
                    problems.insert(key.to_owned());
                }
            }
        }
        (Outcome::Invalid | Outcome::Overlap(_), _) | (Outcome::Peer(_), Err(_)) => {
            problems.insert(key.to_owned());
        }
    }
}

/// A peer's routes as `compute_in` makes them: the smaller mtu when the peer's link MTU
/// differs from ours, unreachable when a next hop is reached only through a router.
fn routes(c: &Cand, hops: &HashMap<IpAddr, Option<Option<IpAddr>>>, mtu: Option<u32>) -> Routes {
    let unreachable_via = c
        .routes
        .iter()
        .find_map(|r| hops.get(&r.via).copied().flatten());
    let mtu_mismatch = mtu_mismatch(mtu, c.mtu);
    Routes {
        mtu: mtu_mismatch.map(|m| m.own.min(m.peer)),
        unreachable_via,
        mtu_mismatch,
    }
}
