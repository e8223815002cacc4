//! hostgw-routed on three node namespaces sharing one L2 segment, with a real etcd.

use std::{collections::BTreeSet, time::Duration};

use anyhow::Result;
use hostgw_netns_tests::{
    require_root,
    routed::{Cluster, Spec, metric},
    wait_for,
};

#[test]
fn routed_three_nodes_converge_with_distinct_subnets() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec::default())?;
    c.start_all()?;
    c.wait_converged(Duration::from_secs(20))?;
    let subnets: BTreeSet<String> = (0..3).map(|i| c.subnet(i).unwrap()).collect();
    assert_eq!(subnets.len(), 3, "distinct subnets: {subnets:?}");
    for i in 0..3 {
        let file = std::fs::read_to_string(&c.nodes[i].subnet_file)?;
        assert!(file.contains(r#""network":"198.18.0.0/16""#) && file.contains(r#""mtu":1500"#), "{file}");
        assert_eq!(c.routes(i)?.len(), 2, "node {i}: {:?}", c.routes(i)?);
    }
    // Forwarding on, our nft table installed, ready.
    let fwd = c.nodes[0].ns.sh("cat /proc/sys/net/ipv4/ip_forward")?;
    assert_eq!(fwd.trim(), "1");
    let nft = c.nodes[0].ns.sh("nft list table inet hostgw")?;
    assert!(nft.contains("ip saddr 198.18.0.0/16 accept"), "{nft}");
    wait_for("readyz 200", Duration::from_secs(5), || (c.readyz(0).ok()? == "200").then_some(()))?;
    let m = c.metrics(0)?;
    assert_eq!(metric(&m, "hostgw_routes_installed", &[]), 2.0, "{m}");
    assert_eq!(metric(&m, "hostgw_peers", &[]), 2.0);
    // Pods' traffic path: node 0 reaches node 1's subnet via node 1.
    let sub1 = c.subnet(1).unwrap();
    let dst = sub1.replace(".0/24", ".1");
    let get = c.nodes[0].ns.ip(&["route", "get", &dst])?;
    assert!(get.contains(&format!("via {}", c.nodes[1].ip)), "{get}");
    Ok(())
}
