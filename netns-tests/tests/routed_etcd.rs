//! hostgw-routed against etcd's failure modes and variants: TLS, outages, compaction,
//! expiring leases, bad configs, and dual-stack.

use std::time::Duration;

use anyhow::Result;
use hostgw_harness::{
    require_root,
    routed::{CONFIG_V6, Cluster, PREFIX, Spec, lease_json, metric, subnet_key},
    wait_for,
};

fn has_route(c: &Cluster, i: usize, dst: &str) -> bool {
    c.routes(i)
        .map(|r| r.iter().any(|(d, _)| d == dst))
        .unwrap_or(false)
}

#[test]
fn routed_tls_etcd_with_client_certificates() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec {
        tls: true,
        ..Spec::default()
    })?;
    assert!(c.etcd.endpoint.starts_with("https://"));
    c.start_all()?;
    c.wait_converged(Duration::from_secs(20))?;
    let text = c.cli(1, "status", &[])?;
    assert!(
        text.contains("peers (2, 2 routes)") && text.contains("drift: none"),
        "{text}"
    );
    Ok(())
}

#[test]
fn routed_expired_lease_of_a_dead_node_withdraws_its_route() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec::default())?;
    c.start_all()?;
    c.wait_converged(Duration::from_secs(20))?;
    // A "node" that never renews: its etcd lease runs out after 5 s (long enough that the
    // route is surely seen installed first, even on a loaded machine).
    c.etcd.put_leased(
        &subnet_key("198.18.240.0/24"),
        &lease_json("198.19.0.60", "dying"),
        5,
    )?;
    wait_for("dying peer installed", Duration::from_secs(4), || {
        has_route(&c, 0, "198.18.240.0/24").then_some(())
    })?;
    wait_for("dying peer withdrawn", Duration::from_secs(12), || {
        (0..3)
            .all(|i| !has_route(&c, i, "198.18.240.0/24"))
            .then_some(())
    })?;
    Ok(())
}

#[test]
fn routed_etcd_outage_keeps_routes_and_resumes() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec::default())?;
    c.start_all()?;
    c.wait_converged(Duration::from_secs(20))?;
    c.etcd.put(
        &subnet_key("198.18.241.0/24"),
        &lease_json("198.19.0.61", "will-vanish"),
    )?;
    wait_for("peer installed", Duration::from_secs(2), || {
        (0..3)
            .all(|i| has_route(&c, i, "198.18.241.0/24"))
            .then_some(())
    })?;
    let before: Vec<_> = (0..3).map(|i| c.routes(i).unwrap()).collect();
    c.etcd.kill();
    std::thread::sleep(Duration::from_secs(4));
    for (i, b) in before.iter().enumerate() {
        assert_eq!(&c.routes(i)?, b, "node {i}: routes kept while etcd is down");
        assert!(
            c.nodes[i].daemon.as_mut().unwrap().exited().is_none(),
            "daemon {i} alive"
        );
    }
    // Back, with history the daemons missed and then compacted away: they must re-list.
    c.etcd.restart()?;
    c.etcd.del(&subnet_key("198.18.241.0/24"))?;
    c.etcd.put(
        &subnet_key("198.18.242.0/24"),
        &lease_json("198.19.0.62", "new-while-away"),
    )?;
    c.etcd.compact_now()?;
    wait_for(
        "deletion and addition seen after the outage",
        Duration::from_secs(40),
        || {
            (0..3)
                .all(|i| {
                    !has_route(&c, i, "198.18.241.0/24") && has_route(&c, i, "198.18.242.0/24")
                })
                .then_some(())
        },
    )?;
    let restarts = metric(&c.metrics(0)?, "hostgw_etcd_watch_restarts_total", &[]);
    assert!(restarts >= 1.0, "watch restarts counted: {restarts}");
    let relisted = (0..3).any(|i| c.log(i).contains("compacted; listing again"));
    eprintln!("compaction path exercised: {relisted}");
    Ok(())
}

#[test]
fn routed_missing_or_invalid_config_is_a_clear_error() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec {
        nodes: 1,
        ..Spec::default()
    })?;
    let cases = [
        (None, "does not exist in etcd"),
        (
            Some(r#"{"Network":"198.18.0.0/16","Backend":{"Type":"vxlan"}}"#),
            "not supported",
        ),
        (Some("{garbage"), "not valid JSON"),
    ];
    for (cfg, want) in cases {
        match cfg {
            None => c.etcd.del(&format!("{PREFIX}/config"))?,
            Some(v) => c.etcd.put(&format!("{PREFIX}/config"), v)?,
        }
        std::fs::write(&c.nodes[0].log, "")?;
        c.start(0)?;
        let st = wait_for("daemon exits", Duration::from_secs(10), || {
            c.nodes[0].daemon.as_mut().unwrap().exited()
        })?;
        assert!(!st.success());
        assert!(c.log(0).contains(want), "{want}: {}", c.log(0));
    }
    Ok(())
}

#[test]
fn routed_dual_stack_routes_both_families() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec {
        config: CONFIG_V6,
        ..Spec::default()
    })?;
    c.start_all()?;
    c.wait_converged(Duration::from_secs(20))?;
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&c.nodes[1].subnet_file)?)?;
    let v6 = file["ipv6Subnet"]
        .as_str()
        .expect("ipv6Subnet in subnet file")
        .to_owned();
    assert_eq!(file["ipv6Network"], "fd18:18::/48");
    wait_for("v6 route on node 0", Duration::from_secs(3), || {
        c.routes(0)
            .ok()?
            .iter()
            .any(|(d, g)| *d == v6 && *g == c.nodes[1].ip6)
            .then_some(())
    })?;
    assert_eq!(c.routes(0)?.len(), 4, "{:?}", c.routes(0)?);
    // Without --ip-masq there is no table of ours: nothing in it would change a verdict.
    assert!(
        c.nodes[0].ns.sh("nft list table inet hostgw").is_err(),
        "a table without masquerade"
    );
    Ok(())
}
