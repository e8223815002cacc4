//! Leases that must never become routes: reported in status, metrics and logs instead.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Result;
use hostgw_harness::{
    require_root,
    routed::{Cluster, PREFIX, Spec, lease_json, metric, subnet_key},
    wait_for,
};
use serde_json::Value;

/// Subnets 198.18.<n>.0/24 no node holds, `count` of them.
fn free_subnets(c: &Cluster, count: usize) -> Vec<u8> {
    let used: Vec<String> = (0..c.nodes.len()).filter_map(|i| c.subnet(i)).collect();
    (200..=254u8)
        .filter(|n| !used.contains(&format!("198.18.{n}.0/24")))
        .take(count)
        .collect()
}

/// The free subnets the leases use: (good, overlap parent, garbage, own hop, routed hop).
type Picks = (u8, u8, u8, u8, u8);

/// Writes one good lease and every kind of bad one.
fn write_leases(c: &Cluster) -> Result<Picks> {
    let f = free_subnets(c, 5);
    let (good, overlap_parent, garbage, own_hop, routed_hop) = (f[0], f[0], f[2], f[3], f[4]);
    // A router between node 0 and 198.19.5.0/24: a peer there is not on-link.
    c.nodes[0]
        .ns
        .ip(&["route", "add", "198.19.5.0/24", "via", "198.19.0.2"])?;
    let put = |k: &str, v: &str| c.etcd.put(k, v);
    put(
        &subnet_key(&format!("198.18.{good}.0/24")),
        &lease_json("198.19.0.50", "fake-good"),
    )?;
    put(
        &subnet_key(&format!("198.18.{overlap_parent}.128/25")),
        &lease_json("198.19.0.51", "fake-overlap"),
    )?;
    put(
        &subnet_key("198.17.9.0/24"),
        &lease_json("198.19.0.52", "fake-outside"),
    )?;
    put(&subnet_key(&format!("198.18.{garbage}.0/24")), "{garbage")?;
    put(
        &subnet_key(&format!("198.18.{own_hop}.0/24")),
        &lease_json(&c.nodes[0].ip, "fake-own-hop"),
    )?;
    put(
        &subnet_key(&format!("198.18.{routed_hop}.0/24")),
        &lease_json("198.19.5.7", "fake-routed"),
    )?;
    put(
        &format!("{PREFIX}/subnets/not-a-subnet"),
        &lease_json("198.19.0.53", "fake-key"),
    )?;
    put(
        &subnet_key("198.18.9.0/24").replace("9.0-24", "9.0-33"),
        &lease_json("198.19.0.54", "x"),
    )?;
    Ok((good, overlap_parent, garbage, own_hop, routed_hop))
}

/// `status --json` of node 0 names every rejected lease with its reason, and the one
/// unreachable peer with the router in front of it.
fn assert_status(c: &Cluster, (_, overlap_parent, garbage, own_hop, _): Picks) -> Result<()> {
    let status: Value = serde_json::from_str(&c.cli(0, "status", &["--json"])?)?;
    let rejected: BTreeMap<String, String> = status["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_owned(),
                r["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expect = [
        (format!("198.18.{overlap_parent}.128-25"), "overlap"),
        ("198.17.9.0-24".to_owned(), "outside-network"),
        (format!("198.18.{garbage}.0-24"), "malformed"),
        (format!("198.18.{own_hop}.0-24"), "bad-next-hop"),
        ("not-a-subnet".to_owned(), "malformed"),
        ("198.18.9.0-33".to_owned(), "malformed"),
    ];
    for (k, reason) in &expect {
        assert_eq!(
            rejected.get(k).map(String::as_str),
            Some(*reason),
            "{k} in {rejected:?}"
        );
    }
    let unreachable: Vec<&Value> = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "unreachable")
        .collect();
    assert_eq!(unreachable.len(), 1, "{status:#}");
    assert_eq!(unreachable[0]["node"], "fake-routed");
    assert_eq!(unreachable[0]["gateway"], "198.19.0.2");
    assert!(
        status["drift"]["missing"].as_array().unwrap().is_empty(),
        "{status:#}"
    );

    Ok(())
}

/// The metrics and the log of node 0 count the same.
fn assert_metrics_and_log(c: &Cluster) -> Result<()> {
    let m = c.metrics(0)?;
    assert_eq!(
        metric(&m, "hostgw_leases_rejected", &["reason=\"malformed\""]),
        3.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "hostgw_leases_rejected", &["reason=\"overlap\""]),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "hostgw_leases_rejected",
            &["reason=\"outside-network\""]
        ),
        1.0
    );
    assert_eq!(
        metric(&m, "hostgw_leases_rejected", &["reason=\"bad-next-hop\""]),
        1.0
    );
    assert_eq!(metric(&m, "hostgw_peers_unreachable", &[]), 1.0);
    let log = c.log(0);
    assert_eq!(
        log.matches("peer not on-link").count(),
        1,
        "reported once:\n{log}"
    );
    assert!(log.contains("lease rejected"), "{log}");

    Ok(())
}

#[test]
fn routed_hostile_leases_are_rejected_and_reported() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec::default())?;
    c.start_all()?;
    c.wait_converged(Duration::from_secs(20))?;
    let picks = write_leases(&c)?;
    let good = picks.0;
    let good_dst = format!("198.18.{good}.0/24");
    wait_for("good fake peer installed", Duration::from_secs(2), || {
        c.routes(0)
            .ok()?
            .iter()
            .any(|(d, g)| *d == good_dst && g == "198.19.0.50")
            .then_some(())
    })?;
    std::thread::sleep(Duration::from_millis(300));
    let routes = c.routes(0)?;
    assert_eq!(
        routes.len(),
        3,
        "only the 2 nodes and the good fake peer: {routes:?}"
    );

    assert_status(&c, picks)?;
    assert_metrics_and_log(&c)?;
    let text = c.cli(0, "status", &[])?;
    assert!(
        text.contains("unreachable (behind router 198.19.0.2)"),
        "{text}"
    );
    assert!(text.contains("rejected leases (6)"), "{text}");
    assert!(text.contains("drift: none"), "{text}");
    Ok(())
}
