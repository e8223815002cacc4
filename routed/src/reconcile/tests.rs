use std::{collections::BTreeMap, sync::Arc};

use tokio::sync::watch;

use super::*;
use crate::{
    etcd::{
        codec::{Decoded, Lease, LeaseValue},
        watch::{LeaseSet, Leases},
    },
    kernel::{LocalView, NextHop, fake::FakeRoutes},
};

fn r(dst: &str, via: &str) -> HostRoute {
    HostRoute::via(dst.parse().unwrap(), via.parse().unwrap())
}

fn lease(subnet: &str, ip: &str, created: i64) -> Decoded {
    Ok(Lease {
        subnet: subnet.parse().unwrap(),
        value: LeaseValue {
            public_ip: Some(ip.parse().unwrap()),
            public_ipv6: None,
            backend_type: "host-gw".into(),
            node_name: format!("n{created}"),
            ipv6_subnet: None,
            mtu: None,
        },
        created,
    })
}

fn leases() -> Leases {
    BTreeMap::from([
        (
            "198.18.1.0-24".to_owned(),
            lease("198.18.1.0/24", "198.19.0.1", 1),
        ),
        (
            "198.18.2.0-24".to_owned(),
            lease("198.18.2.0/24", "198.19.0.2", 2),
        ),
        (
            "198.18.3.0-24".to_owned(),
            lease("198.18.3.0/24", "198.19.0.3", 3),
        ),
        (
            "198.18.4.0-24".to_owned(),
            lease("198.18.4.0/24", "198.19.9.4", 4),
        ),
    ])
}

/// A reconciler over the fake table, with the settings every unit test shares (no
/// netlink events, a resync far away).
pub(super) fn test_reconciler(
    table: FakeRoutes,
    cfg: NetConfig,
    leases: LeasesRx,
    own: watch::Receiver<OwnLease>,
    mtu: Option<u32>,
) -> Reconciler<FakeRoutes> {
    Reconciler::new(ReconcilerConfig {
        table,
        cfg,
        metrics: Metrics::new(),
        ready: Arc::new(Ready::default()),
        leases,
        own,
        kick: Arc::new(Notify::new()),
        stale: Default::default(),
        deletes: Default::default(),
        resync: Duration::from_secs(300),
        mtu,
    })
}

struct Rig {
    rec: Reconciler<FakeRoutes>,
    leases: watch::Sender<Option<LeaseSet>>,
    own: watch::Sender<OwnLease>,
}

fn rig(initial: Option<Leases>) -> Rig {
    let table = FakeRoutes::default();
    *table.view.borrow_mut() = LocalView {
        addrs: ["198.19.0.1".parse().unwrap()].into(),
        connected: vec!["198.19.0.0/24".parse().unwrap()],
        ..LocalView::default()
    };
    table.hops.borrow_mut().insert(
        "198.19.9.4".parse().unwrap(),
        NextHop::ViaGateway(Some("198.19.0.254".parse().unwrap())),
    );
    let cfg = NetConfig::parse(br#"{"Network":"198.18.0.0/16"}"#).unwrap();
    let own = OwnLease {
        name: "198.18.1.0-24".into(),
        subnet: "198.18.1.0/24".parse().unwrap(),
        ipv6_subnet: None,
        lease_id: 1,
    };
    let (own_tx, own_rx) = watch::channel(own);
    let (tx, rx) = watch::channel(initial.map(LeaseSet::new));
    let rec = test_reconciler(table, cfg, rx, own_rx, None);
    Rig {
        rec,
        leases: tx,
        own: own_tx,
    }
}

#[tokio::test]
async fn nothing_happens_before_the_first_list() {
    let mut g = rig(None);
    g.rec
        .table
        .routes
        .borrow_mut()
        .insert(r("198.18.9.0/24", "198.19.0.9"));
    assert_eq!(g.rec.pass().await, 0);
    assert!(
        g.rec.table.calls().is_empty(),
        "an unknown lease set must not prune: {:?}",
        g.rec.table.calls()
    );
}

#[tokio::test]
async fn installs_peers_prunes_stale_and_skips_routed_peers() {
    let mut g = rig(Some(leases()));
    g.rec
        .table
        .routes
        .borrow_mut()
        .insert(r("198.18.9.0/24", "198.19.0.9"));
    assert_eq!(g.rec.pass().await, 0);
    let calls = g.rec.table.calls();
    let muts: Vec<_> = calls
        .iter()
        .filter(|c| !c.starts_with("list"))
        .cloned()
        .collect();
    assert_eq!(
        muts,
        [
            "lookup 198.19.9.4",
            "delete 198.18.9.0/24 via 198.19.0.9",
            "create unreachable 198.18.1.0/24",
            "create 198.18.2.0/24 via 198.19.0.2",
            "create 198.18.3.0/24 via 198.19.0.3",
        ]
    );
    assert_eq!(g.rec.metrics.routes_installed.get(), 2);
    assert_eq!(g.rec.metrics.peers_unreachable.get(), 1);
    assert!(g.rec.ready.routes_in_sync.load(Ordering::Relaxed));
}

#[tokio::test]
async fn adopting_existing_routes_touches_nothing() {
    let mut g = rig(Some(leases()));
    g.rec.table.routes.borrow_mut().extend([
        r("198.18.2.0/24", "198.19.0.2"),
        r("198.18.3.0/24", "198.19.0.3"),
    ]);
    g.rec.pass().await;
    assert!(
        !g.rec
            .table
            .calls()
            .iter()
            .any(|c| c.starts_with("replace") || c.starts_with("delete"))
    );
}

#[tokio::test]
async fn a_removed_route_is_repaired_and_counted() {
    let mut g = rig(Some(leases()));
    g.rec.pass().await;
    g.rec
        .table
        .routes
        .borrow_mut()
        .remove(&r("198.18.2.0/24", "198.19.0.2"));
    g.rec.pass().await;
    assert_eq!(g.rec.metrics.routes_repaired.get(), 1);
    assert!(
        g.rec
            .table
            .routes
            .borrow()
            .contains(&r("198.18.2.0/24", "198.19.0.2"))
    );
}

#[tokio::test]
async fn failed_routes_are_collected_not_fatal() {
    let mut g = rig(Some(leases()));
    g.rec
        .table
        .failing
        .borrow_mut()
        .insert("198.18.2.0/24".parse().unwrap());
    assert_eq!(g.rec.pass().await, 1);
    assert!(
        g.rec
            .table
            .routes
            .borrow()
            .contains(&r("198.18.3.0/24", "198.19.0.3"))
    );
    assert!(!g.rec.ready.routes_in_sync.load(Ordering::Relaxed));
}

#[tokio::test]
async fn a_deleted_lease_removes_its_route() {
    let mut g = rig(Some(leases()));
    g.rec.pass().await;
    let mut l = leases();
    l.remove("198.18.3.0-24");
    g.leases.send_replace(Some(LeaseSet::new(l)));
    g.rec.pass().await;
    let routes: Vec<_> = g
        .rec
        .table
        .routes
        .borrow()
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(
        routes,
        ["unreachable 198.18.1.0/24", "198.18.2.0/24 via 198.19.0.2"]
    );
}

fn table(g: &Rig) -> Vec<String> {
    let routes = g.rec.table.routes.borrow();
    routes.iter().map(|r| r.to_string()).collect()
}

#[tokio::test]
async fn own_subnet_is_unreachable_repaired_and_follows_the_lease() {
    let mut g = rig(Some(leases()));
    assert_eq!(g.rec.pass().await, 0);
    let own = HostRoute::unreachable("198.18.1.0/24".parse().unwrap());
    assert!(g.rec.table.routes.borrow().contains(&own));
    assert_eq!(g.rec.metrics.routes_installed.get(), 2, "peers only");
    // Drift: deleted behind our back, put back on the next pass.
    g.rec.table.routes.borrow_mut().remove(&own);
    assert_eq!(g.rec.pass().await, 0);
    assert!(g.rec.table.routes.borrow().contains(&own));
    assert_eq!(g.rec.metrics.routes_repaired.get(), 1);
    // A new lease (dual-stack, another subnet): the old one goes, the new ones come.
    let mut l = leases();
    l.remove("198.18.1.0-24");
    g.leases.send_replace(Some(LeaseSet::new(l)));
    g.own.send_replace(OwnLease {
        name: "198.18.5.0-24".into(),
        subnet: "198.18.5.0/24".parse().unwrap(),
        ipv6_subnet: Some("fd18:18:0:5::/64".parse().unwrap()),
        lease_id: 2,
    });
    assert_eq!(g.rec.pass().await, 0);
    let t = table(&g);
    assert!(t.contains(&"unreachable 198.18.5.0/24".to_owned()), "{t:?}");
    assert!(
        t.contains(&"unreachable fd18:18:0:5::/64".to_owned()),
        "{t:?}"
    );
    assert!(!t.iter().any(|r| r.contains("198.18.1.0")), "{t:?}");
}

#[tokio::test]
async fn a_peer_subnet_that_becomes_ours_swaps_route_for_unreachable() {
    let mut g = rig(Some(leases()));
    assert_eq!(g.rec.pass().await, 0);
    // 198.18.2.0/24 is released by its node and claimed by us in one go.
    let mut l = leases();
    l.remove("198.18.1.0-24");
    l.remove("198.18.2.0-24");
    g.leases.send_replace(Some(LeaseSet::new(l)));
    g.own.send_replace(OwnLease {
        name: "198.18.2.0-24".into(),
        subnet: "198.18.2.0/24".parse().unwrap(),
        ipv6_subnet: None,
        lease_id: 2,
    });
    assert_eq!(g.rec.pass().await, 0);
    let t = table(&g);
    assert_eq!(
        t,
        ["unreachable 198.18.2.0/24", "198.18.3.0/24 via 198.19.0.3"]
    );
}

#[tokio::test]
async fn routes_to_a_peer_with_another_mtu_carry_the_smaller() {
    let mut g = rig(None);
    g.rec.mtu = Some(9000);
    let mut l = leases();
    for (k, mtu) in [("198.18.2.0-24", Some(1500)), ("198.18.3.0-24", Some(9000))] {
        if let Some(Ok(x)) = l.get_mut(k) {
            x.value.mtu = mtu;
        }
    }
    g.leases.send_replace(Some(LeaseSet::new(l.clone())));
    assert_eq!(g.rec.pass().await, 0);
    let t = table(&g);
    assert!(
        t.contains(&"198.18.2.0/24 via 198.19.0.2 mtu 1500".to_owned()),
        "{t:?}"
    );
    assert!(
        t.contains(&"198.18.3.0/24 via 198.19.0.3".to_owned()),
        "same MTU: none"
    );
    // The mtu is part of the route: one that lost it is replaced.
    let with = r("198.18.2.0/24", "198.19.0.2").with_mtu(Some(1500));
    {
        let mut routes = g.rec.table.routes.borrow_mut();
        routes.remove(&with);
        routes.insert(r("198.18.2.0/24", "198.19.0.2"));
    }
    assert_eq!(g.rec.pass().await, 0);
    assert!(g.rec.table.routes.borrow().contains(&with));
    assert!(
        g.rec
            .table
            .calls()
            .contains(&"replace 198.18.2.0/24 via 198.19.0.2 mtu 1500".to_owned())
    );
    // The peer's MTU rises to ours: the mtu goes.
    if let Some(Ok(x)) = l.get_mut("198.18.2.0-24") {
        x.value.mtu = Some(9000);
    }
    g.leases.send_replace(Some(LeaseSet::new(l)));
    assert_eq!(g.rec.pass().await, 0);
    assert!(table(&g).contains(&"198.18.2.0/24 via 198.19.0.2".to_owned()));
}

fn rejected(g: &Rig, reason: &str) -> i64 {
    g.rec
        .metrics
        .leases_rejected
        .get_or_create(&ReasonLabel {
            reason: reason.into(),
        })
        .get()
}

#[tokio::test]
async fn a_foreign_route_is_never_taken_over_nor_deleted() {
    let mut g = rig(Some(leases()));
    // Someone else's route (proto static, say) for the subnet a peer leases.
    g.rec
        .table
        .view
        .borrow_mut()
        .foreign
        .insert("198.18.2.0/24".parse().unwrap());
    assert_eq!(g.rec.pass().await, 0);
    let writes: Vec<_> = g
        .rec
        .table
        .calls()
        .into_iter()
        .filter(|c| c.contains("198.18.2.0/24"))
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
    assert_eq!(rejected(&g, "foreign-route"), 1);
    assert!(g.rec.ready.routes_in_sync.load(Ordering::Relaxed));
    // The lease goes away: still nothing is done to that destination.
    let mut l = leases();
    l.remove("198.18.2.0-24");
    g.leases.send_replace(Some(LeaseSet::new(l)));
    g.rec.pass().await;
    assert!(
        !g.rec
            .table
            .calls()
            .iter()
            .any(|c| c.contains("198.18.2.0/24"))
    );
    assert_eq!(rejected(&g, "foreign-route"), 0);
}

#[tokio::test]
async fn a_foreign_route_appearing_before_the_write_is_left_alone() {
    // The race the validation cannot see: the route appears after the kernel was read.
    // The create is exclusive, so the kernel refuses it and the foreign route stays.
    let g = rig(Some(leases()));
    g.rec
        .table
        .view
        .borrow_mut()
        .foreign
        .insert("198.18.3.0/24".parse().unwrap());
    let plan = plan::Plan {
        add: vec![r("198.18.3.0/24", "198.19.0.3")],
        ..plan::Plan::default()
    };
    let applied = apply::apply(&g.rec.table, &plan).await;
    assert_eq!(applied.errors.len(), 1);
    assert!(applied.errors[0].1.is_route_specific());
    assert!(g.rec.table.routes.borrow().is_empty());
}

#[tokio::test]
async fn a_route_the_kernel_refuses_is_a_rejected_lease_not_unreadiness() {
    let mut g = rig(Some(leases()));
    g.rec.table.failing_errno.set(Some(22)); // EINVAL: the kernel won't take this route
    g.rec
        .table
        .failing
        .borrow_mut()
        .insert("198.18.2.0/24".parse().unwrap());
    assert_eq!(g.rec.pass().await, 0, "no retry loop for a lease's fault");
    assert!(g.rec.ready.routes_in_sync.load(Ordering::Relaxed));
    assert_eq!(rejected(&g, "kernel-refused"), 1);
    assert_eq!(g.rec.metrics.routes_installed.get(), 1);
}

#[tokio::test]
async fn rejected_leases_never_change_readiness() {
    let mut g = rig(Some(leases()));
    assert_eq!(g.rec.pass().await, 0);
    let mut l = leases();
    let mut bad = lease("198.18.7.0/24", "198.19.0.7", 7).unwrap();
    bad.value.ipv6_subnet = Some("fd18:18:0:7::/64".parse().unwrap());
    bad.value.public_ipv6 = Some("fe80::1".parse().unwrap());
    l.insert("198.18.7.0-24".into(), Ok(bad));
    l.insert(
        "198.18.8.0-24".into(),
        lease("198.18.8.0/24", "198.18.2.9", 8),
    );
    l.insert(
        "198.18.9.0-024".into(),
        lease("198.18.9.0/24", "198.19.0.9", 9),
    );
    g.leases.send_replace(Some(LeaseSet::new(l)));
    assert_eq!(g.rec.pass().await, 0);
    assert!(g.rec.ready.routes_in_sync.load(Ordering::Relaxed));
    assert_eq!(rejected(&g, "bad-next-hop"), 1);
    assert_eq!(rejected(&g, "malformed"), 1);
}

// === per lease event: no kernel dump once in sync (issue 11) ===

fn lists(g: &Rig) -> usize {
    g.rec.table.calls().iter().filter(|c| *c == "list").count()
}

#[tokio::test]
async fn a_lease_event_in_sync_reads_no_kernel_dump() {
    let mut g = rig(Some(leases()));
    assert_eq!(g.rec.pass_with(true).await, 0);
    assert_eq!(lists(&g), 1);
    let first = g.rec.table.calls().len();
    let mut l = leases();
    l.remove("198.18.3.0-24");
    l.insert(
        "198.18.4.0-24".into(),
        lease("198.18.4.0/24", "198.19.0.4", 9),
    );
    g.leases.send_replace(Some(LeaseSet::new(l)));
    assert_eq!(g.rec.pass_with(false).await, 0);
    assert_eq!(
        lists(&g),
        1,
        "planned against what it applied: {:?}",
        g.rec.table.calls()
    );
    let routes: Vec<String> = g
        .rec
        .table
        .routes
        .borrow()
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(
        routes,
        [
            "unreachable 198.18.1.0/24",
            "198.18.2.0/24 via 198.19.0.2",
            "198.18.4.0/24 via 198.19.0.4"
        ]
    );
    let tail: Vec<String> = g.rec.table.calls().into_iter().skip(first).collect();
    assert_eq!(
        tail.iter()
            .filter(|c| !c.starts_with("lookup"))
            .collect::<Vec<_>>(),
        [
            "delete 198.18.3.0/24 via 198.19.0.3",
            "create 198.18.4.0/24 via 198.19.0.4"
        ],
        "the one change and nothing else"
    );
}

#[tokio::test]
async fn drift_is_still_repaired_by_a_pass_that_reads_the_kernel() {
    let mut g = rig(Some(leases()));
    g.rec.pass_with(true).await;
    g.rec
        .table
        .routes
        .borrow_mut()
        .remove(&r("198.18.2.0/24", "198.19.0.2"));
    // A lease event plans from memory: it cannot see the drift (a netlink event would
    // have asked for a kernel read)...
    g.rec.pass_with(false).await;
    assert_eq!(g.rec.metrics.routes_repaired.get(), 0);
    // ...which the netlink event, or the resync tick, does.
    g.rec.pass_with(true).await;
    assert_eq!(g.rec.metrics.routes_repaired.get(), 1);
    assert!(
        g.rec
            .table
            .routes
            .borrow()
            .contains(&r("198.18.2.0/24", "198.19.0.2"))
    );
}

#[tokio::test]
async fn after_a_failed_pass_a_lease_event_reads_the_kernel_again() {
    let mut g = rig(Some(leases()));
    g.rec
        .table
        .failing
        .borrow_mut()
        .insert("198.18.2.0/24".parse().unwrap());
    assert_eq!(g.rec.pass_with(true).await, 1);
    g.rec.table.failing.borrow_mut().clear();
    g.leases.send_replace(Some(LeaseSet::new(leases())));
    assert_eq!(g.rec.pass_with(false).await, 0);
    assert_eq!(
        lists(&g),
        2,
        "not in sync: the kernel is read: {:?}",
        g.rec.table.calls()
    );
    assert!(
        g.rec
            .table
            .routes
            .borrow()
            .contains(&r("198.18.2.0/24", "198.19.0.2"))
    );
}

/// A kernel change too small to wake a pass (a local-table entry, a pod's plumbing) still
/// makes the next lease-event pass read the kernel: it must not validate leases against a
/// view from before that change.
#[tokio::test]
async fn a_kernel_change_that_woke_nothing_makes_the_next_lease_pass_read_the_kernel() {
    let mut g = rig(Some(leases()));
    assert_eq!(g.rec.pass_with(true).await, 0);
    assert_eq!(lists(&g), 1);
    g.rec.stale.store(true, std::sync::atomic::Ordering::SeqCst);
    g.leases.send_replace(Some(LeaseSet::new(leases())));
    assert_eq!(g.rec.pass_with(false).await, 0);
    assert_eq!(lists(&g), 2, "{:?}", g.rec.table.calls());
    // And once read, the flag is spent: the next lease event plans in memory again.
    g.leases.send_replace(Some(LeaseSet::new(leases())));
    assert_eq!(g.rec.pass_with(false).await, 0);
    assert_eq!(lists(&g), 2, "{:?}", g.rec.table.calls());
}

/// A route the reconciler deletes is noted first: its `DelRoute` event is then its own
/// doing and wakes nothing (see `kernel::events::OwnDeletes`), once.
#[tokio::test]
async fn the_routes_it_deletes_are_noted_for_the_event_listener() {
    use rtnetlink::packet_route::{
        AddressFamily, RouteNetlinkMessage,
        route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol},
    };
    let mut g = rig(Some(leases()));
    g.rec
        .table
        .routes
        .borrow_mut()
        .insert(r("198.18.9.0/24", "198.19.0.9"));
    assert_eq!(g.rec.pass().await, 0);
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Other(crate::kernel::PROTO);
    m.header.destination_prefix_length = 24;
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(
            "198.18.9.0".parse().unwrap(),
        )));
    let del = RouteNetlinkMessage::DelRoute(m);
    assert!(
        g.rec.deletes.seen(&del),
        "the stale route's deletion was noted"
    );
    assert!(!g.rec.deletes.seen(&del), "once");
}
