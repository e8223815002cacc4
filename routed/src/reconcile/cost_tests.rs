//! Figures, not assertions: what one lease event costs a node in memory work, by N.
//! `cargo test -p hostgw-routed --lib per_event_cost -- --ignored --nocapture`
//! (debug build: compare the figures across N, not with a release daemon).

use std::{collections::BTreeMap, time::Instant};

use tokio::sync::watch;

use super::*;
use crate::{
    etcd::{
        codec::{Decoded, Lease, LeaseValue},
        watch::{LeaseSet, Leases},
    },
    kernel::{LocalView, fake::FakeRoutes},
};

fn lease(i: u32) -> (String, Decoded) {
    let subnet: ipnetwork::IpNetwork = format!("198.18.{}.{}/29", i / 32, (i % 32) * 8)
        .parse()
        .unwrap();
    let name = crate::etcd::codec::key_name(&subnet);
    let ip = format!("198.19.{}.{}", i / 250, i % 250 + 2);
    let l = Lease {
        subnet,
        value: LeaseValue {
            public_ip: Some(ip.parse().unwrap()),
            public_ipv6: None,
            backend_type: "host-gw".into(),
            node_name: format!("node-{i}"),
            ipv6_subnet: None,
            mtu: None,
        },
        created: i64::from(i) + 1,
    };
    (name, Ok(l))
}

fn cluster(n: u32) -> Leases {
    (0..n).map(lease).collect::<BTreeMap<_, _>>()
}

#[tokio::test]
#[ignore = "prints figures; run by hand"]
async fn per_event_cost() {
    for n in [100u32, 300, 1000] {
        let all = cluster(n);
        let table = FakeRoutes::default();
        *table.view.borrow_mut() = LocalView {
            addrs: ["198.19.0.2".parse().unwrap()].into(),
            connected: vec!["198.19.0.0/16".parse().unwrap()],
            ..LocalView::default()
        };
        let (own_name, own_lease) = lease(0);
        let own = OwnLease {
            name: own_name,
            subnet: own_lease.unwrap().subnet,
            ipv6_subnet: None,
            lease_id: 1,
        };
        let (_own_tx, own_rx) = watch::channel(own);
        let (tx, rx) = watch::channel(Some(LeaseSet::new(all.clone())));
        let mut rec = super::tests::test_reconciler(
            table,
            NetConfig::parse(br#"{"Network":"198.18.0.0/16"}"#).unwrap(),
            rx,
            own_rx,
            None,
        );
        assert_eq!(rec.pass_with(true).await, 0);
        let rounds = 200u32;
        let t = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(all.clone());
        }
        let clone = t.elapsed() / rounds;
        let t = Instant::now();
        for k in 0..rounds {
            // One join, then its release: one lease event each, as the watcher publishes.
            let (name, l) = lease(n + k);
            tx.send_modify(|s| s.as_mut().unwrap().set(&name, Some(l)));
            rec.pass_with(false).await;
            tx.send_modify(|s| s.as_mut().unwrap().set(&name, None));
            rec.pass_with(false).await;
        }
        let pass = t.elapsed() / (2 * rounds);
        println!(
            "N = {n:>5}: a copy of the lease map {clone:>10.1?}, one lease-event pass {pass:>10.1?}"
        );
    }
}

#[test]
#[ignore = "prints figures; run by hand"]
fn sizes() {
    use std::mem::size_of;
    println!(
        "Decoded {} Lease {} LeaseValue {} Peer {} HostRoute {} IpNetwork {} Rejected {}",
        size_of::<Decoded>(),
        size_of::<Lease>(),
        size_of::<LeaseValue>(),
        size_of::<validate::Peer>(),
        size_of::<HostRoute>(),
        size_of::<ipnetwork::IpNetwork>(),
        size_of::<validate::Rejected>(),
    );
}
