//! The whole system: three nodes running `hostgw-routed` against a real etcd, two pods per
//! node wired by the `hostgw` plugin with the shipped conflist; every pod reaches every
//! other pod over ICMP and TCP, on the same node and across nodes, IPv4 and dual-stack,
//! and cross-node traffic takes the host-gw path (two routed hops, no overlay).

use std::time::Duration;

use anyhow::{Context, Result};
use hostgw_harness::{
    cluster::{Pod, add_pod, all_reach, del_pod, tcp_server},
    must, require_root,
    routed::{CONFIG, CONFIG_V6, Cluster, Spec},
};

const PORT: u16 = 7000;

/// The TTL of one echo reply from `to` as `from` sees it.
fn reply_ttl(from: &Pod, to: &str) -> Result<u32> {
    let out = must(from.ns.cmd("ping").args(["-c", "1", "-W", "2", to]))?;
    let ttl = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ttl="))
        .with_context(|| format!("no ttl in {out}"))?;
    Ok(ttl.parse()?)
}

fn reach(config: &str) -> Result<()> {
    let dual = config == CONFIG_V6;
    let mut c = Cluster::new(Spec {
        nodes: 3,
        tls: false,
        config,
    })?;
    c.start_all()?;
    c.wait_converged(Duration::from_secs(20))?;
    let mut pods = Vec::new();
    for node in 0..3 {
        for k in 0..2 {
            pods.push(add_pod(&c, node, &format!("pod-{node}-{k}"))?);
        }
    }
    for p in &pods {
        assert_eq!(p.ip6.is_some(), dual, "{}: {:?}", p.name, p.addrs());
    }
    let servers: Vec<_> = pods
        .iter()
        .map(|p| tcp_server(p, PORT))
        .collect::<Result<_>>()?;
    let checked = all_reach(&pods, Some(PORT)).with_context(|| c.logs())?;
    assert_eq!(checked, 30 * if dual { 2 } else { 1 });

    // Same node: pod → node → pod (TTL 64 - 1). Across nodes: pod → node → node → pod,
    // routed on both nodes with no encapsulation (TTL 64 - 2).
    for (a, b, hops) in [
        (&pods[0], &pods[1], 1),
        (&pods[0], &pods[2], 2),
        (&pods[5], &pods[1], 2),
    ] {
        for ip in b.addrs() {
            if ip.contains(':') && a.ip6.is_none() {
                continue;
            }
            assert_eq!(
                reply_ttl(a, ip)?,
                64 - hops,
                "{} -> {} ({ip}): hops",
                a.name,
                b.name
            );
        }
    }
    // The cross-node path goes through the peer node's address, as the daemon routes it.
    let get = c.nodes[0].ns.ip(&["route", "get", &pods[4].ip])?;
    assert!(get.contains(&format!("via {}", c.nodes[2].ip)), "{get}");
    if dual {
        let get = c.nodes[0]
            .ns
            .ip(&["-6", "route", "get", pods[4].ip6.as_ref().unwrap()])?;
        assert!(get.contains(&format!("via {}", c.nodes[2].ip6)), "{get}");
    }
    drop(servers);
    for p in &pods {
        del_pod(&c, p)?;
    }
    Ok(())
}

#[test]
fn cluster_pods_reach_each_other_ipv4() -> Result<()> {
    require_root();
    reach(CONFIG)
}

#[test]
fn cluster_pods_reach_each_other_dual_stack() -> Result<()> {
    require_root();
    reach(CONFIG_V6)
}
