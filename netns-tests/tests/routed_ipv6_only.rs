//! An IPv6-only cluster end to end: a network config with only `IPv6Network`, nodes whose
//! only addresses and default route are IPv6 (no `--public-ip`: the daemon finds its uplink
//! from the IPv6 default route), real etcd reached over IPv6, real daemons, the real plugin.
//! Leases, subnet files, routes, the nft table and pod-to-pod traffic are all IPv6 only.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hostgw_harness::{
    cluster::{Pod, add_pod, all_reach, ping},
    must, require_root,
    routed::{Cluster, PREFIX},
};
use serde_json::Value;

fn json(text: &str) -> Result<Value> {
    serde_json::from_str(text).with_context(|| format!("not JSON: {text}"))
}

/// Only IPv6 fields in the subnet file; only `<v6>-64` keys with `PublicIPv6` in etcd.
fn check_files_and_leases(c: &Cluster, subnets: &[String]) -> Result<()> {
    for (i, node) in c.nodes.iter().enumerate() {
        let f = json(&std::fs::read_to_string(&node.subnet_file)?)?;
        ensure!(f["network"].is_null() && f["subnet"].is_null(), "{f}");
        ensure!(f["ipv6Network"] == "fd18:18::/48", "{f}");
        ensure!(f["ipv6Subnet"] == subnets[i].as_str(), "{f}");
        ensure!(f["mtu"].as_u64().is_some(), "{f}");
    }
    let leases = c.etcd.get_prefix(&format!("{PREFIX}/subnets/"))?;
    ensure!(leases.len() == c.nodes.len(), "{leases:?}");
    for (i, node) in c.nodes.iter().enumerate() {
        let key = format!("{PREFIX}/subnets/{}", subnets[i].replace('/', "-"));
        let (_, v) = leases
            .iter()
            .find(|(k, _)| *k == key)
            .with_context(|| format!("no key {key} in {leases:?}"))?;
        let v = json(v)?;
        ensure!(v["PublicIPv6"] == node.ip6.as_str(), "{v}");
        ensure!(
            v.get("PublicIP").is_none() && v.get("IPv6Subnet").is_none(),
            "{v}"
        );
        ensure!(v["NodeName"] == node.name.as_str(), "{v}");
    }
    Ok(())
}

/// `ip6` rules only: masquerade of IPv6 pod traffic leaving the network.
fn check_nft(c: &Cluster, i: usize) -> Result<()> {
    let table = must(
        c.nodes[i]
            .ns
            .cmd("nft")
            .args(["list", "table", "inet", "hostgw"]),
    )?;
    for rule in [
        "ip6 saddr fd18:18::/48 ip6 daddr fd18:18::/48 return",
        "ip6 saddr fd18:18::/48 ip6 daddr @nodes6 return",
        "ip6 saddr fd18:18::/48 masquerade",
    ] {
        ensure!(table.contains(rule), "no {rule:?} in {table}");
    }
    ensure!(
        !table.contains("ip saddr") && !table.contains("ip daddr"),
        "{table}"
    );
    Ok(())
}

#[test]
fn routed_ipv6_only_cluster_leases_routes_and_pods_across_and_on_one_node() -> Result<()> {
    require_root();
    let mut c = Cluster::ipv6_only(2)?;
    for n in &mut c.nodes {
        n.extra_args.push("--ip-masq".into());
    }
    c.start_all()?;
    let subnets = c.wait_converged6(Duration::from_secs(20))?;
    check_files_and_leases(&c, &subnets)?;
    for i in 0..2 {
        check_nft(&c, i)?;
    }
    let pods: Vec<Pod> = [(0, "v6-a"), (0, "v6-b"), (1, "v6-c")]
        .into_iter()
        .map(|(node, name)| add_pod(&c, node, name))
        .collect::<Result<_>>()?;
    for p in &pods {
        let ip6 = p.ip6.as_deref().context("an IPv6 address")?;
        ensure!(p.ip.is_empty(), "{} got IPv4 {}", p.name, p.ip);
        // Every subnet is a /64: the pod's address shares its first four segments.
        let subnet = &subnets[p.node];
        let net: std::net::Ipv6Addr = subnet.trim_end_matches("/64").parse()?;
        let addr: std::net::Ipv6Addr = ip6.parse()?;
        ensure!(
            addr.segments()[..4] == net.segments()[..4],
            "{ip6} outside {subnet}"
        );
    }
    // Across nodes (a ↔ c, b ↔ c) and on one node (a ↔ b), ICMPv6 both ways.
    let pairs = all_reach(&pods, None)?;
    ensure!(pairs == 6, "checked {pairs} pairs");
    // The etcd namespace has no route back to the pod network: a pod reaches it only
    // because its node masquerades IPv6 traffic leaving the network.
    let back = c
        .etcd_ns
        .ip(&["-6", "route", "get", "fd18:18:0:1::1"])
        .unwrap_or_default();
    ensure!(back.contains("via fd19:19::1"), "etcd namespace: {back}");
    ping(&pods[2].ns, "fd19:19::2").context("pod → etcd namespace, masqueraded")?;
    // `status` works on an IPv6-only host too and finds this node's lease.
    let status = c.cli(0, "status", &[])?;
    ensure!(
        status.contains(&format!("subnet {} via {}", subnets[0], c.nodes[0].ip6)),
        "{status}"
    );
    // A restart adopts the IPv6-only key (same key, same value); `release` gives it back
    // and the peer drops its route.
    let leases_before = c.etcd.get_prefix(&format!("{PREFIX}/subnets/"))?;
    c.nodes[0]
        .daemon
        .as_mut()
        .unwrap()
        .stop(Duration::from_secs(5));
    c.start(0)?;
    ensure!(c.wait_converged6(Duration::from_secs(20))? == subnets);
    ensure!(c.etcd.get_prefix(&format!("{PREFIX}/subnets/"))? == leases_before);
    c.nodes[1]
        .daemon
        .as_mut()
        .unwrap()
        .stop(Duration::from_secs(5));
    let out = c.cli(1, "release", &[])?;
    ensure!(out.contains("released"), "{out}");
    hostgw_harness::wait_for(
        "node 0 drops node 1's route",
        Duration::from_secs(2),
        || (!c.routes(0).ok()?.iter().any(|(d, _)| *d == subnets[1])).then_some(()),
    )?;
    ensure!(c.routes(1)?.is_empty() && !c.nodes[1].subnet_file.exists());
    Ok(())
}
