//! An incremental pass gives exactly what a full computation gives: over random sequences
//! of lease events (overlapping subnets, ties in age, invalid and unreachable leases, our
//! own key, MTUs, deletes), the state settled event by event equals `compute_in` over the
//! same leases, and the routes a reconciler leaves in the kernel after lease-event passes
//! equal the routes a full computation wants.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tokio::sync::watch;

use super::{compute, *};
use crate::etcd::{
    codec::{Decoded, Lease, LeaseValue, key_name},
    watch::{LeaseSet, Leases},
};
use crate::kernel::{LocalView, NextHop, fake::FakeRoutes};

/// Subnets that overlap each other in every way (equal, inside, around), one that is ours.
const SUBNETS: [&str; 8] = [
    "198.18.1.0/24",
    "198.18.1.0/25",
    "198.18.1.128/25",
    "198.18.0.0/23",
    "198.18.2.0/24",
    "198.18.3.0/24",
    "198.18.9.0/24",
    "198.18.9.128/25",
];
/// Next hops: on-link, behind a router, this node itself (rejected), a pod address.
const VIAS: [&str; 5] = [
    "198.19.0.2",
    "198.19.0.3",
    "198.19.9.4",
    "198.19.0.1",
    "198.18.200.1",
];

fn own() -> OwnLease {
    OwnLease {
        name: "198.18.9.0-24".into(),
        subnet: "198.18.9.0/24".parse().unwrap(),
        ipv6_subnet: None,
        lease_id: 1,
    }
}

fn cfg() -> NetConfig {
    NetConfig::parse(br#"{"Network":"198.18.0.0/16"}"#).unwrap()
}

fn view() -> LocalView {
    LocalView {
        addrs: ["198.19.0.1".parse().unwrap()].into(),
        connected: vec!["198.19.0.0/24".parse().unwrap()],
        ..LocalView::default()
    }
}

fn table() -> FakeRoutes {
    let t = FakeRoutes::default();
    *t.view.borrow_mut() = view();
    t.hops.borrow_mut().insert(
        "198.19.9.4".parse().unwrap(),
        NextHop::ViaGateway(Some("198.19.0.254".parse().unwrap())),
    );
    t
}

#[derive(Debug, Clone)]
enum Ev {
    Put {
        subnet: usize,
        via: usize,
        created: i64,
        mtu: bool,
        malformed: bool,
    },
    Delete(usize),
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        3 => (0..SUBNETS.len(), 0..VIAS.len(), 1..4i64, any::<bool>(), prop::bool::weighted(0.1))
            .prop_map(|(subnet, via, created, mtu, malformed)| Ev::Put { subnet, via, created, mtu, malformed }),
        1 => (0..SUBNETS.len()).prop_map(Ev::Delete),
    ]
}

fn key(subnet: usize) -> String {
    key_name(&SUBNETS[subnet].parse().unwrap())
}

fn value(subnet: usize, via: usize, created: i64, mtu: bool, malformed: bool) -> Decoded {
    if malformed {
        return Err("bad JSON".into());
    }
    Ok(Lease {
        subnet: SUBNETS[subnet].parse().unwrap(),
        value: LeaseValue {
            public_ip: Some(VIAS[via].parse().unwrap()),
            public_ipv6: None,
            backend_type: "host-gw".into(),
            node_name: format!("n{via}"),
            ipv6_subnet: None,
            mtu: mtu.then_some(1400),
        },
        created,
    })
}

fn change(e: &Ev) -> (String, Option<Decoded>) {
    match *e {
        Ev::Put {
            subnet,
            via,
            created,
            mtu,
            malformed,
        } => (
            key(subnet),
            Some(value(subnet, via, created, mtu, malformed)),
        ),
        Ev::Delete(subnet) => (key(subnet), None),
    }
}

fn full(leases: &Leases) -> compute::Computed {
    futures::executor::block_on(full_in(leases))
}

async fn full_in(leases: &Leases) -> compute::Computed {
    let t = table();
    let own = own();
    let here = compute::Here {
        own: Some(&own),
        mtu: Some(1500),
    };
    compute::compute_in(&t, &cfg(), here, leases, &view()).await
}

/// Settles `changed` in `s` as the reconciler does, the lookups answered by the fake table.
fn step<'a>(
    s: &mut State,
    changed: impl IntoIterator<Item = (&'a str, Option<&'a Decoded>)>,
    rebuild: bool,
) {
    let t = table();
    let p = s.check(&cfg(), &view(), changed, rebuild);
    for ip in s.lookups(&view(), &p) {
        let hop = futures::executor::block_on(t.lookup(ip)).map_err(|_| ());
        s.learn(ip, hop);
    }
    s.settle(Some(1500), p);
}

fn same(a: &compute::Computed, b: &compute::Computed) -> Result<(), TestCaseError> {
    prop_assert_eq!(&a.desired, &b.desired);
    prop_assert_eq!(&a.peers, &b.peers);
    prop_assert_eq!(&a.rejected, &b.rejected);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn settling_event_by_event_equals_the_full_computation(
        start in prop::collection::vec(ev(), 0..8),
        events in prop::collection::vec(ev(), 1..30),
    ) {
        let mut leases = Leases::new();
        for e in &start {
            let (k, v) = change(e);
            match v {
                Some(v) => leases.insert(k, v),
                None => leases.remove(&k),
            };
        }
        let mut s = State::new(&own());
        step(&mut s, leases.iter().map(|(k, d)| (k.as_str(), Some(d))), true);
        same(&s.computed(&leases), &full(&leases))?;
        for e in &events {
            let (k, v) = change(e);
            match v {
                Some(v) => leases.insert(k.clone(), v),
                None => leases.remove(&k),
            };
            step(&mut s, [(k.as_str(), leases.get(&k))], false);
            same(&s.computed(&leases), &full(&leases))?;
            // And the totals the metrics come from.
            let f = full(&leases);
            prop_assert_eq!(s.peers(), f.peers.len());
            let problems = s.problems().count();
            let unreachable = f.peers.iter().filter(|p| p.unreachable_via.is_some()).count();
            prop_assert_eq!(problems, f.rejected.len() + unreachable);
        }
    }

    #[test]
    fn routes_after_lease_event_passes_equal_the_full_computation(
        events in prop::collection::vec(ev(), 1..25),
    ) {
        futures::executor::block_on(async {
            let (_own_tx, own_rx) = watch::channel(own());
            let (tx, rx) = watch::channel(Some(LeaseSet::new(BTreeMap::new())));
            let mut rec = super::tests::test_reconciler(table(), cfg(), rx, own_rx, Some(1500));
            rec.pass_with(true).await;
            let mut leases = Leases::new();
            for e in &events {
                let (k, v) = change(e);
                match &v {
                    Some(v) => leases.insert(k.clone(), v.clone()),
                    None => leases.remove(&k),
                };
                tx.send_modify(|s| s.as_mut().unwrap().set(&k, v));
                prop_assert_eq!(rec.pass_with(false).await, 0);
                let want = full_in(&leases).await;
                prop_assert_eq!(&*rec.table.routes.borrow(), &want.desired);
                prop_assert_eq!(&rec.installed, &want.desired);
                let lists = rec.table.calls().iter().filter(|c| c.starts_with("list")).count();
                prop_assert_eq!(lists, 1, "lease events read no kernel dump");
                let peers = want.peers.iter().filter(|p| p.unreachable_via.is_none());
                let via = peers.map(|p| p.routes.len()).sum::<usize>();
                prop_assert_eq!(rec.metrics.routes_installed.get(), via as i64);
            }
            Ok(())
        })?;
    }
}

#[test]
fn a_reader_far_behind_or_of_another_epoch_reads_everything() {
    let mut set = LeaseSet::new(Leases::new());
    let c0 = set.cursor();
    set.set("a", None);
    set.set("b", None);
    assert_eq!(
        set.changes_since(Some(c0)),
        crate::etcd::watch::Changes::Keys(["a".to_owned(), "b".to_owned()].into())
    );
    assert_eq!(
        set.changes_since(Some(set.cursor())),
        crate::etcd::watch::Changes::Keys(Default::default())
    );
    for i in 0..1000 {
        set.set(&format!("k{i}"), None);
    }
    assert_eq!(
        set.changes_since(Some(c0)),
        crate::etcd::watch::Changes::All
    );
    let other = LeaseSet::new(Leases::new());
    assert_eq!(
        other.changes_since(Some(set.cursor())),
        crate::etcd::watch::Changes::All
    );
    assert_eq!(set.changes_since(None), crate::etcd::watch::Changes::All);
}
