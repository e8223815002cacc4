//! `bench-scale` at N = 5 with short phases, so the command cannot rot: every phase runs
//! against real daemons and a real etcd, and the figures that are targets of issue 11 are
//! checked (at this size: one list per node at start, nothing read in steady state, one
//! re-list per daemon after a compaction, no route changed by an etcd restart, a full
//! restart of every daemon that lists nothing with the lease cache).

use std::time::Duration;

use hostgw_bench::scale::{Options, run};
use hostgw_harness::require_root;

#[test]
fn bench_scale_heavy_smoke() {
    require_root();
    let r = run(&Options {
        nodes: 5,
        etcd_members: 1,
        steady: Duration::from_secs(10),
        churn: std::env::var("SCALE_SMOKE_CHURN").map_or(2, |v| v.parse().unwrap()),
        event_gap: Duration::from_millis(500),
        restarts: true,
        outages: true,
        out: None,
    })
    .expect("bench-scale at N = 5");
    assert_eq!(r.cold.stuck, 0, "{r:#?}");
    assert_eq!(r.cold.restarted, 0, "{r:#?}");
    assert_eq!(r.floor.routes, 20);
    assert!(r.cold.converged_secs > 0.0, "{r:#?}");
    let races = r.cold.lost_races as f64;
    assert!(
        r.cold.etcd.get("Range") <= 5.0 + races,
        "one list per node plus lost races: {r:#?}"
    );
    assert_eq!(r.steady.etcd_per_minute.get("Range"), 0.0, "{r:#?}");
    assert!(r.traffic.starts_with("3/3"), "{}", r.traffic);
    let churn = r.churn.as_ref().expect("churn figures");
    assert_eq!((churn.events, churn.missed), (4, 0), "{churn:#?}");
    // A full restart with the lease cache lists nothing and reads one key per node; without
    // it every node lists. Neither changes a route.
    let [with, without] = &r.restarts[..] else {
        panic!("two restart phases: {:#?}", r.restarts)
    };
    assert!(with.cache && !without.cache);
    assert_eq!((with.resumed, with.listed), (5, 0), "{with:#?}");
    assert_eq!(
        with.etcd.get("Range"),
        5.0,
        "one read of the config key each: {with:#?}"
    );
    assert_eq!((without.resumed, without.listed), (0, 5), "{without:#?}");
    assert_eq!(without.etcd.get("Range"), 5.0, "{without:#?}");
    assert_eq!((with.routes_changed, without.routes_changed), (0, 0));
    let outage = r.outage.as_ref().expect("outage figures");
    assert_eq!(outage.routes_changed, 0, "{outage:#?}");
    let relist = r.relist.as_ref().expect("compaction figures");
    assert_eq!(relist.max_lists_per_node, 1, "{relist:#?}");
    assert_eq!(relist.compacted_watches, 5, "{relist:#?}");
}
