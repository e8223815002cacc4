//! Subnet pool exhaustion with a real etcd: a /22 of /24 subnets holds four nodes; the
//! fifth waits (not an exit), says so in metrics, readiness and status, and takes the
//! subnet another node releases as soon as it is released.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hostgw_harness::{
    require_root,
    routed::{Cluster, Spec, metric},
    wait_for,
};

/// Four /24 subnets: flannel's default SubnetMin skips the first, so it is given.
const SMALL: &str = r#"{"Network":"198.18.0.0/22","SubnetLen":24,"SubnetMin":"198.18.0.0","Backend":{"Type":"host-gw"}}"#;

#[test]
fn routed_fifth_node_of_a_full_pool_waits_and_takes_a_released_subnet() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec {
        nodes: 5,
        config: SMALL,
        ..Spec::default()
    })?;
    for i in 0..4 {
        c.start(i)?;
    }
    c.wait_converged(Duration::from_secs(20))?;
    c.start(4)?;
    let m = wait_for("fifth node exhausted", Duration::from_secs(10), || {
        let m = c.metrics(4).ok()?;
        (metric(&m, "hostgw_subnet_pool_exhausted", &[]) == 1.0).then_some(m)
    })
    .with_context(|| c.log(4))?;
    assert_eq!(metric(&m, "hostgw_subnet_pool_exhausted", &[]), 1.0);
    assert_eq!(c.readyz(4)?, "503");
    assert!(
        c.nodes[4].daemon.as_mut().unwrap().exited().is_none(),
        "kept running"
    );
    assert!(c.subnet(4).is_none());
    let st = c.cli(4, "status", &[])?;
    assert!(
        st.contains(
            "NO LEASE in etcd: subnet pool exhausted (all 4 subnets of 198.18.0.0/22 are leased)"
        ),
        "{st}"
    );
    assert!(c.log(4).contains("no free subnet left"), "{}", c.log(4));
    for i in 0..4 {
        assert_eq!(
            metric(&c.metrics(i)?, "hostgw_subnet_pool_exhausted", &[]),
            0.0
        );
    }
    // Wait a little, so the fifth node's backoff has grown past what the test measures.
    std::thread::sleep(Duration::from_secs(6));
    let freed = c.subnet(2).unwrap();
    c.nodes[2]
        .daemon
        .take()
        .unwrap()
        .stop(Duration::from_secs(5));
    let t = Instant::now();
    c.cli(2, "release", &[])?;
    let got = wait_for("fifth node's subnet", Duration::from_secs(10), || {
        c.subnet(4)
    })?;
    let took = t.elapsed();
    assert_eq!(got, freed);
    eprintln!("release to claim by the waiting node: {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "watch-driven, not backoff: {took:?}"
    );
    c.wait_converged(Duration::from_secs(20))?;
    wait_for("fifth node ready", Duration::from_secs(10), || {
        (c.readyz(4).ok()? == "200").then_some(())
    })?;
    assert_eq!(
        metric(&c.metrics(4)?, "hostgw_subnet_pool_exhausted", &[]),
        0.0
    );
    Ok(())
}
