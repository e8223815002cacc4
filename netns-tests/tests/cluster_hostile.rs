//! Hostile leases written straight into etcd while pods talk: none becomes a route, every
//! node reports each one in `status` and its metrics, no existing route moves, the pods'
//! traffic (also to the subnet a hostile lease overlaps) loses nothing, and once the
//! leases are gone so are the reports.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Result;
use hostgw_harness::{
    cluster::{
        PingRun, RouteMonitor, all_reach, free_subnet, has_route, owned_changes, rejected,
        status_json, talking_pods,
    },
    require_root,
    routed::{Cluster, Datapath, Spec, lease_json, metric, subnet_key},
    wait_for,
};

const PORT: u16 = 7000;

/// The hostile leases written, and the good one written after them.
struct Hostile {
    overlap: String,
    own_hop: String,
    loopback: String,
    garbage: String,
    /// (subnet, value) of every hostile lease.
    leases: Vec<(String, String)>,
    good: String,
}

fn name(s: &str) -> String {
    s.replace('/', "-")
}

/// Writes the hostile leases and then a good one; returns once every node routes the good
/// one, and so has seen the rest (one watch, in revision order).
fn write_hostile(c: &Cluster) -> Result<Hostile> {
    let sub1 = c.subnet(1).unwrap();
    let free: Vec<String> = {
        let mut v = Vec::new();
        let mut from = 200;
        for _ in 0..4 {
            let s = free_subnet(c, from);
            from = s.split('.').nth(2).unwrap().parse::<u8>().unwrap() + 1;
            v.push(s);
        }
        v
    };
    let overlap = sub1.replace(".0/24", ".0/25");
    let (own_hop, loopback, routed_hop, garbage) = (&free[0], &free[1], &free[2], &free[3]);
    let leases: Vec<(String, String)> = vec![
        (
            "198.17.9.0/24".into(),
            lease_json("198.19.0.52", "h-outside"),
        ),
        (overlap.clone(), lease_json("198.19.0.51", "h-overlap")),
        (own_hop.clone(), lease_json(&c.nodes[0].ip, "h-own-hop")),
        (loopback.clone(), lease_json("127.0.0.1", "h-loopback")),
        (routed_hop.clone(), lease_json("198.19.5.7", "h-routed")),
        (garbage.clone(), "{garbage".into()),
    ];
    for (s, v) in &leases {
        c.etcd.put(&subnet_key(s), v)?;
    }
    let good = free_subnet(c, 240);
    c.etcd
        .put(&subnet_key(&good), &lease_json("198.19.0.60", "h-good"))?;
    wait_for(
        "the good lease routed everywhere",
        Duration::from_secs(2),
        || {
            (0..3)
                .all(|i| has_route(c, i, &good, Some("198.19.0.60")))
                .then_some(())
        },
    )?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(Hostile {
        overlap,
        own_hop: own_hop.clone(),
        loopback: loopback.clone(),
        garbage: garbage.clone(),
        leases,
        good,
    })
}

/// Routes: the nodes' and the good one; node 0's address as next hop is node 0's own
/// problem only (for nodes 1 and 2 it is a peer address like any other).
fn assert_only_legitimate_routes(
    c: &Cluster,
    before: &[Vec<(String, String)>],
    h: &Hostile,
) -> Result<()> {
    for (i, b) in before.iter().enumerate() {
        let mut want = b.clone();
        want.push((h.good.clone(), "198.19.0.60".into()));
        if i != 0 {
            want.push((h.own_hop.clone(), c.nodes[0].ip.clone()));
        }
        want.sort();
        let mut got = c.routes(i)?;
        got.sort();
        assert_eq!(got, want, "node {i}: only legitimate routes\n{}", c.log(i));
    }
    Ok(())
}

/// Reported on node `i`, each for what it is from that node: in `status` and in metrics.
fn assert_reported(c: &Cluster, i: usize, h: &Hostile) -> Result<()> {
    let st = status_json(c, i)?;
    let mut want: BTreeMap<String, String> = [
        ("198.17.9.0-24".to_owned(), "outside-network"),
        (
            name(&h.overlap),
            if i == 1 { "own-subnet" } else { "overlap" },
        ),
        (name(&h.loopback), "bad-next-hop"),
        (name(&h.garbage), "malformed"),
    ]
    .into_iter()
    .map(|(k, r)| (k, r.to_owned()))
    .collect();
    if i == 0 {
        want.insert(name(&h.own_hop), "bad-next-hop".into());
    }
    assert_eq!(rejected(&st), want, "node {i} status: {st:#}");
    let unreachable: Vec<_> = st["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "unreachable")
        .collect();
    assert_eq!(unreachable.len(), 1, "node {i}: {st:#}");
    assert_eq!(unreachable[0]["node"], "h-routed");
    assert_eq!(unreachable[0]["gateway"], "198.19.0.2");
    assert!(
        st["drift"]["missing"].as_array().unwrap().is_empty()
            && st["drift"]["extra"].as_array().unwrap().is_empty(),
        "node {i}: {st:#}"
    );
    let m = c.metrics(i)?;
    for (reason, n) in [
        ("outside-network", 1.0),
        ("overlap", if i == 1 { 0.0 } else { 1.0 }),
        ("own-subnet", if i == 1 { 1.0 } else { 0.0 }),
        ("bad-next-hop", if i == 0 { 2.0 } else { 1.0 }),
        ("malformed", 1.0),
    ] {
        assert_eq!(
            metric(
                &m,
                "hostgw_leases_rejected",
                &[&format!("reason=\"{reason}\"")]
            ),
            n,
            "node {i} {reason}"
        );
    }
    assert_eq!(metric(&m, "hostgw_peers_unreachable", &[]), 1.0, "node {i}");
    Ok(())
}

/// Gone from etcd: gone from the reports; and no existing route moved meanwhile.
fn assert_cleared(
    c: &Cluster,
    h: &Hostile,
    monitors: Vec<RouteMonitor>,
    before: &[Vec<(String, String)>],
) -> Result<()> {
    for (s, _) in &h.leases {
        c.etcd.del(&subnet_key(s))?;
    }
    c.etcd.del(&subnet_key(&h.good))?;
    wait_for("reports cleared", Duration::from_secs(3), || {
        (0..3)
            .all(|i| {
                let Ok(m) = c.metrics(i) else { return false };
                metric(&m, "hostgw_leases_rejected", &[]) == 0.0
                    && metric(&m, "hostgw_peers_unreachable", &[]) == 0.0
            })
            .then_some(())
    })?;
    for (i, m) in monitors.into_iter().enumerate() {
        let text = m.stop();
        let dsts: Vec<String> = before[i].iter().map(|(d, _)| d.clone()).collect();
        let moved: Vec<String> = owned_changes(&text, &dsts)
            .into_iter()
            .filter(|l| !l.contains(&h.good) && !l.contains(h.own_hop.as_str()))
            .collect();
        assert!(
            moved.is_empty(),
            "node {i}: existing routes changed or a hostile route appeared:\n{}",
            moved.join("\n")
        );
        assert!(rejected(&status_json(c, i)?).is_empty());
        assert_eq!(c.routes(i)?, before[i], "node {i}");
    }
    Ok(())
}

#[test]
fn cluster_hostile_leases_route_nothing_and_are_reported_everywhere() -> Result<()> {
    require_root();
    hostile_leases(Datapath::from_env()?)
}

/// The same on the eBPF datapath: a hostile lease that routes nothing fast-paths nothing.
#[test]
fn cluster_fastpath_hostile_leases_route_nothing_and_are_reported_everywhere() -> Result<()> {
    require_root();
    hostile_leases(Datapath::Ebpf { big_tcp: false })
}

fn hostile_leases(dp: Datapath) -> Result<()> {
    let c = Cluster::converged_on(Spec::default(), dp)?;
    let (pods, _servers) = talking_pods(&c, PORT)?;
    // 198.19.5.0/24 lies behind a router (the etcd host) on every node.
    for n in &c.nodes {
        n.ns.ip(&["route", "add", "198.19.5.0/24", "via", "198.19.0.2"])?;
    }
    let before = c.all_routes()?;
    let monitors = RouteMonitor::start_all(&c)?;
    // pod-a → pod-b, whose subnet a hostile lease overlaps.
    let run = PingRun::start(
        &pods[0].ns,
        &pods[1].ip,
        300,
        Duration::from_millis(10),
        c.dir.path(),
    )?;
    let h = write_hostile(&c)?;
    assert_only_legitimate_routes(&c, &before, &h)?;
    for i in 0..3 {
        assert_reported(&c, i, &h)?;
    }
    let s = run.finish(Duration::from_secs(20))?;
    assert_eq!(s.lost(), 0, "pod traffic disturbed:\n{}", s.text);
    all_reach(&pods, Some(PORT))?;
    if dp != Datapath::Routes {
        c.wait_fast_pathed(0, 250.0)?;
    }
    assert_cleared(&c, &h, monitors, &before)
}
