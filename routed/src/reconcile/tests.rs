use std::{collections::BTreeMap, sync::Arc};

use tokio::sync::watch;

use super::*;
use crate::{
    etcd::{
        codec::{Decoded, Lease, LeaseValue},
        watch::Leases,
    },
    kernel::{LocalView, NextHop, fake::FakeRoutes},
};

fn r(dst: &str, via: &str) -> HostRoute {
    HostRoute {
        dst: dst.parse().unwrap(),
        via: via.parse().unwrap(),
    }
}

fn lease(subnet: &str, ip: &str, created: i64) -> Decoded {
    Ok(Lease {
        subnet: subnet.parse().unwrap(),
        value: LeaseValue {
            public_ip: ip.parse().unwrap(),
            public_ipv6: None,
            backend_type: "host-gw".into(),
            node_name: format!("n{created}"),
            ipv6_subnet: None,
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

struct Rig {
    rec: Reconciler<FakeRoutes>,
    leases: watch::Sender<Option<Arc<Leases>>>,
    _own: watch::Sender<OwnLease>,
}

fn rig(initial: Option<Leases>) -> Rig {
    let table = FakeRoutes::default();
    *table.view.borrow_mut() = LocalView {
        addrs: ["198.19.0.1".parse().unwrap()].into(),
        connected: vec!["198.19.0.0/24".parse().unwrap()],
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
    let (tx, rx) = watch::channel(initial.map(Arc::new));
    let rec = Reconciler::new(ReconcilerConfig {
        table,
        cfg,
        metrics: Metrics::new(),
        ready: Arc::new(Ready::default()),
        leases: rx,
        own: own_rx,
        kick: Arc::new(Notify::new()),
        resync: Duration::from_secs(300),
    });
    Rig {
        rec,
        leases: tx,
        _own: own_tx,
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
            "replace 198.18.2.0/24 via 198.19.0.2",
            "replace 198.18.3.0/24 via 198.19.0.3",
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
    g.leases.send_replace(Some(Arc::new(l)));
    g.rec.pass().await;
    let routes: Vec<_> = g
        .rec
        .table
        .routes
        .borrow()
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(routes, ["198.18.2.0/24 via 198.19.0.2"]);
}
