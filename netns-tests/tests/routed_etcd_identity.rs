//! hostgw-routed against a real etcd that loses its data, keys rewritten or deleted behind
//! the daemons' backs, two nodes with one name, and a network config edited at runtime
//! (issue 12, items 2, 3 and 6).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hostgw_harness::{
    etcd::Etcd,
    require_root,
    routed::{CONFIG, Cluster, ETCD_IP, PREFIX, Spec, lease_json, metric, subnet_key},
    wait_for,
};

fn value_of(c: &Cluster, key: &str) -> Option<String> {
    c.etcd
        .get_prefix(key)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// Samples every node's routes for `d`; fails on the first change.
fn routes_stay(c: &Cluster, d: Duration, what: &str) -> Result<()> {
    let before: Vec<_> = (0..c.nodes.len())
        .map(|i| c.routes(i))
        .collect::<Result<_>>()?;
    let t = Instant::now();
    while t.elapsed() < d {
        for (i, b) in before.iter().enumerate() {
            let now = c.routes(i)?;
            anyhow::ensure!(
                &now == b,
                "{what}: node {i} routes changed: {b:?} -> {now:?}\n{}",
                c.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn routed_etcd_replaced_by_an_empty_one_reclaims_keys_without_a_flap() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec::default())?;
    c.start_all()?;
    c.wait_converged(Duration::from_secs(20))?;
    let subnets: Vec<String> = (0..3).map(|i| c.subnet(i).unwrap()).collect();
    // Data loss: etcd comes back empty (new data dir), at revision 1.
    c.etcd.kill();
    let fresh = Etcd::start(&c.etcd_ns, ETCD_IP)?;
    fresh.put(&format!("{PREFIX}/config"), CONFIG)?;
    c.etcd = fresh;
    routes_stay(&c, Duration::from_secs(6), "after etcd lost its data")?;
    for (i, s) in subnets.iter().enumerate() {
        let v = wait_for(
            &format!("node {i} key re-created"),
            Duration::from_secs(10),
            || value_of(&c, &subnet_key(s)),
        )
        .with_context(|| c.logs())?;
        assert!(v.contains(&c.nodes[i].ip), "same subnet, same node: {v}");
    }
    for i in 0..3 {
        let m = c.metrics(i)?;
        assert!(
            metric(&m, "hostgw_etcd_restores_total", &[]) >= 1.0,
            "node {i}: {m}"
        );
        assert!(
            c.log(i).contains("etcd was restored or replaced"),
            "{}",
            c.log(i)
        );
    }
    // Still a working cluster afterwards: a new peer is seen by everyone.
    c.etcd.put(
        &subnet_key("198.18.250.0/24"),
        &lease_json("198.19.0.70", "late"),
    )?;
    wait_for("new peer after the restore", Duration::from_secs(5), || {
        (0..3)
            .all(|i| {
                c.routes(i)
                    .unwrap_or_default()
                    .iter()
                    .any(|(d, _)| d == "198.18.250.0/24")
            })
            .then_some(())
    })
    .with_context(|| c.logs())?;
    Ok(())
}

#[test]
fn routed_own_key_deleted_or_hijacked_is_restored_within_seconds() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec::default())?;
    c.start_all()?;
    c.wait_converged(Duration::from_secs(20))?;
    let key = subnet_key(&c.subnet(0).unwrap());
    let mine =
        |c: &Cluster| value_of(c, &key).filter(|v| v.contains(&format!("\"{}\"", c.nodes[0].ip)));
    c.etcd.del(&key)?;
    wait_for("deleted key re-created", Duration::from_secs(5), || {
        mine(&c)
    })
    .with_context(|| c.logs())?;
    c.etcd.put(&key, &lease_json("198.19.0.66", "node-0"))?;
    wait_for("hijacked key restored", Duration::from_secs(5), || mine(&c))
        .with_context(|| c.logs())?;
    // Peers route node 0's subnet to node 0 again.
    let subnet = c.subnet(0).unwrap();
    wait_for("peers back on node 0", Duration::from_secs(5), || {
        (1..3)
            .all(|i| {
                c.routes(i)
                    .unwrap_or_default()
                    .iter()
                    .any(|(d, g)| *d == subnet && *g == c.nodes[0].ip)
            })
            .then_some(())
    })?;
    let m = c.metrics(0)?;
    assert_eq!(
        metric(&m, "hostgw_own_key_restores_total", &["cause=\"deleted\""]),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "hostgw_own_key_restores_total",
            &["cause=\"overwritten\""]
        ),
        1.0,
        "{m}"
    );
    Ok(())
}

#[test]
fn routed_two_nodes_with_one_name_never_share_a_key() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec {
        nodes: 2,
        ..Spec::default()
    })?;
    c.nodes[1].name = c.nodes[0].name.clone();
    c.start(0)?;
    let first = c.wait_subnet(0)?;
    c.start(1)?;
    let second = c.wait_subnet(1)?;
    assert_ne!(first, second, "{}", c.logs());
    c.wait_converged(Duration::from_secs(20))?;
    let v = value_of(&c, &subnet_key(&first)).context("first key")?;
    assert!(
        v.contains(&c.nodes[0].ip),
        "the first node's key untouched: {v}"
    );
    wait_for("conflict reported", Duration::from_secs(5), || {
        let m = c.metrics(1).ok()?;
        (metric(&m, "hostgw_node_name_conflicts", &[]) == 1.0).then_some(())
    })
    .with_context(|| c.logs())?;
    Ok(())
}

#[test]
fn routed_network_config_changed_at_runtime_is_reported_not_applied() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec::default())?;
    c.start_all()?;
    c.wait_converged(Duration::from_secs(20))?;
    let config = format!("{PREFIX}/config");
    let mismatch = |c: &Cluster, want: f64| {
        wait_for(
            &format!("config mismatch = {want}"),
            Duration::from_secs(5),
            || {
                (0..3)
                    .all(|i| {
                        c.metrics(i)
                            .is_ok_and(|m| metric(&m, "hostgw_config_mismatch", &[]) == want)
                    })
                    .then_some(())
            },
        )
        .with_context(|| c.logs())
    };
    c.etcd
        .put(&config, r#"{"Network":"198.18.0.0/15","SubnetLen":25}"#)?;
    mismatch(&c, 1.0)?;
    let text = c.cli(0, "status", &[])?;
    assert!(text.starts_with("config: changed (!)"), "{text}");
    routes_stay(&c, Duration::from_secs(2), "config changed")?;
    for bad in ["garbage", ""] {
        if bad.is_empty() {
            c.etcd.del(&config)?;
        } else {
            c.etcd.put(&config, bad)?;
        }
        std::thread::sleep(Duration::from_millis(500));
        mismatch(&c, 1.0)?;
    }
    assert!(c.cli(0, "status", &[])?.starts_with("config: deleted (!)"));
    c.etcd.put(&config, CONFIG)?;
    mismatch(&c, 0.0)?;
    assert!(
        c.log(0).contains("the network config in etcd changed"),
        "{}",
        c.log(0)
    );
    Ok(())
}
