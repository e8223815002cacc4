//! Pods on one node reach each other and the node through what ADD made, in both modes,
//! IPv4 and dual-stack, and keep doing so when a neighbour pod is deleted.

use std::time::Duration;

use anyhow::Result;
use hostgw_harness::{
    Netns,
    pod::{NETWORK, Node, ok_empty},
    require_root, wait_for,
};
use serde_json::Value;

fn ip_of(r: &Value, i: usize) -> String {
    r["ips"][i]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned()
}

/// One ping, retried for a bounded time (the first packet may wait for neighbour
/// resolution).
fn ping(from: &Netns, to: &str) -> Result<()> {
    let cmd = format!("ping -c1 -W1 {to} >/dev/null 2>&1");
    wait_for(
        &format!("{} to reach {to}", from.name()),
        Duration::from_secs(5),
        || from.sh(&cmd).ok().map(drop),
    )
}

fn reach(mode: &str, dual: bool) -> Result<()> {
    let n = Node::new("reach")?;
    n.write_subnet_file("198.18.3.0/24", dual.then_some("fd18:18:0:3::/64"), None)?;
    let conf = n.conf(mode, "1.0.0");
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("pod")).collect::<Result<_>>()?;
    let mut results = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        results.push(n.add_ok(&conf, &format!("r{i}"), p)?);
    }
    let families = if dual { 2 } else { 1 };
    for f in 0..families {
        let gw = results[0]["ips"][f]["gateway"].as_str().unwrap().to_owned();
        for (i, p) in pods.iter().enumerate() {
            ping(p, &gw)?;
            for (j, r) in results.iter().enumerate() {
                if i != j {
                    ping(p, &ip_of(r, f))?;
                }
            }
        }
        // The node reaches the pods too (it routes for them).
        for r in &results {
            ping(&n.ns, &ip_of(r, f))?;
        }
    }
    // A neighbour leaving (its veth and, in ptp, its copy of the gateway address) does
    // not cut the others off.
    ok_empty(&n.del(&conf, "r1", None)?)?;
    for f in 0..families {
        let gw = results[0]["ips"][f]["gateway"].as_str().unwrap().to_owned();
        ping(&pods[0], &gw)?;
        ping(&pods[0], &ip_of(&results[2], f))?;
        ping(&pods[2], &ip_of(&results[0], f))?;
    }
    for i in [0, 2] {
        ok_empty(&n.del(&conf, &format!("r{i}"), None)?)?;
    }
    n.assert_clean(NETWORK)
}

#[test]
fn cni_pods_reach_each_other_ptp_v4() -> Result<()> {
    require_root();
    reach("ptp", false)
}

#[test]
fn cni_pods_reach_each_other_ptp_dual_stack() -> Result<()> {
    require_root();
    reach("ptp", true)
}

#[test]
fn cni_pods_reach_each_other_bridge_v4() -> Result<()> {
    require_root();
    reach("bridge", false)
}

#[test]
fn cni_pods_reach_each_other_bridge_dual_stack() -> Result<()> {
    require_root();
    reach("bridge", true)
}
