//! Migrating a flannel dual-stack host-gw cluster node by node: two hostgw nodes next to a
//! node that still runs flannel. The flannel node's lease is written exactly as flannel's
//! `createSubnet` writes it (`etcdctl lease grant 86400` — flannel's 24 h subnet TTL — and
//! `put --lease`, key `<v4>-<len>&<v6>-<len>`, value `json.Marshal(LeaseAttrs)`); its pods
//! are namespaces behind it, and it holds the routes flannel host-gw installs from our
//! keys, read with flannel's `ParseSubnetKey` rule. Pods reach each other both ways over
//! IPv4 and IPv6.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hostgw_harness::{
    Netns,
    cluster::{Pod, add_pod, ping, status_json, subnet6},
    require_root,
    routed::{CONFIG_V6, Cluster, PREFIX, Spec},
    veth, wait_for,
};
use serde_json::Value;

const FLANNEL_V4: &str = "198.18.200.0/24";
const FLANNEL_V6: &str = "fd18:18:0:c8::/64";

/// flannel's `MakeSubnetKey` for a dual-stack lease: `198.18.200.0-24&fd18:18:0:c8::-64`.
fn flannel_key() -> String {
    format!(
        "{PREFIX}/subnets/{}&{}",
        FLANNEL_V4.replace('/', "-"),
        FLANNEL_V6.replace('/', "-")
    )
}

/// flannel's `ParseSubnetKey` on a key's last segment: `(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$`.
/// Returns (IPv4 subnet, IPv6 subnet if the key names one); `None` where flannel skips it.
fn flannel_parse(name: &str) -> Option<(String, Option<String>)> {
    let (v4, v6) = match name.split_once('&') {
        Some((a, b)) => (a, Some(b)),
        None => (name, None),
    };
    let (ip, len) = v4.rsplit_once('-')?;
    ip.parse::<std::net::Ipv4Addr>().ok()?;
    len.parse::<u8>().ok()?;
    let v6 = match v6 {
        None => None,
        Some(v6) => {
            let (ip, len) = v6.rsplit_once('-')?;
            let ok = ip
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c) || c == ':')
                && ip.parse::<std::net::Ipv6Addr>().is_ok()
                && len.parse::<u8>().is_ok();
            if !ok {
                return None;
            }
            Some(format!("{ip}/{len}"))
        }
    };
    Some((format!("{ip}/{len}"), v6))
}

/// The flannel node: node namespace `i` of the cluster (no hostgw daemon), forwarding, one
/// pod behind a veth as flannel's bridge would hold it (.1 / ::1 on the node's side).
fn flannel_node(c: &Cluster, i: usize) -> Result<Netns> {
    let node = &c.nodes[i].ns;
    node.sysctl("net.ipv4.ip_forward", "1")?;
    node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    let pod = Netns::new("fpod")?;
    pod.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
    veth(node, "vethf0", &pod, "eth0")?;
    node.ip(&["addr", "add", "198.18.200.1/24", "dev", "vethf0"])?;
    node.ip(&[
        "addr",
        "add",
        "fd18:18:0:c8::1/64",
        "dev",
        "vethf0",
        "nodad",
    ])?;
    pod.ip(&["addr", "add", "198.18.200.2/24", "dev", "eth0"])?;
    pod.ip(&["addr", "add", "fd18:18:0:c8::2/64", "dev", "eth0", "nodad"])?;
    pod.ip(&["route", "add", "default", "via", "198.18.200.1"])?;
    pod.ip(&["-6", "route", "add", "default", "via", "fd18:18:0:c8::1"])?;
    Ok(pod)
}

/// What flannel host-gw installs on the flannel node for every other lease it can parse:
/// `<subnet> via <PublicIP> dev eth0`, and `<IPv6 subnet> via <PublicIPv6> dev eth0` when
/// the key names one. Returns the number of routes.
fn flannel_routes(c: &Cluster, flannel: usize) -> Result<usize> {
    let mut n = 0;
    for (key, value) in c.etcd.get_prefix(&format!("{PREFIX}/subnets/"))? {
        let name = key.rsplit('/').next().unwrap_or_default();
        let Some((v4, v6)) = flannel_parse(name) else {
            bail!("flannel would skip our key {key}");
        };
        if key == flannel_key() {
            continue;
        }
        let v: Value = serde_json::from_str(&value)?;
        let ns = &c.nodes[flannel].ns;
        let ip = v["PublicIP"].as_str().context("PublicIP")?;
        ns.ip(&["route", "replace", &v4, "via", ip, "dev", "eth0"])?;
        n += 1;
        if let Some(v6) = v6 {
            let ip6 = v["PublicIPv6"].as_str().context("PublicIPv6")?;
            ns.ip(&["-6", "route", "replace", &v6, "via", ip6, "dev", "eth0"])?;
            n += 1;
        }
    }
    Ok(n)
}

#[test]
fn routed_flannel_mixed_dual_stack_cluster_pods_reach_each_other_both_ways() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec {
        config: CONFIG_V6,
        ..Spec::default()
    })?;
    let lease = c.etcd.put_leased(
        &flannel_key(),
        r#"{"PublicIP":"198.19.0.12","PublicIPv6":"fd19:19::c","BackendType":"host-gw"}"#,
        86400,
    )?;
    let ttl = c.etcd.ctl(&["lease", "timetolive", &lease])?;
    ensure!(ttl.contains("remaining"), "{ttl}");
    c.start(0)?;
    c.start(1)?;
    c.wait_converged(Duration::from_secs(20))?;
    // Both hostgw nodes route to the flannel node's two subnets.
    for i in 0..2 {
        wait_for(
            "routes to the flannel node",
            Duration::from_secs(10),
            || {
                let r = c.routes(i).ok()?;
                let has = |d: &str, g: &str| r.iter().any(|(a, b)| a == d && b == g);
                (has(FLANNEL_V4, "198.19.0.12") && has(FLANNEL_V6, "fd19:19::c")).then_some(())
            },
        )
        .with_context(|| c.logs())?;
        let s = status_json(&c, i)?;
        ensure!(
            s["rejected"].as_array().is_some_and(|r| r.is_empty()),
            "{s}"
        );
    }
    // Our dual-stack keys are in flannel's form, so flannel sees both of our subnets.
    for i in 0..2 {
        let (v4, v6) = (c.subnet(i).unwrap(), subnet6(&c, i).context("IPv6 subnet")?);
        let key = format!(
            "{PREFIX}/subnets/{}&{}",
            v4.replace('/', "-"),
            v6.replace('/', "-")
        );
        let keys = c.etcd.get_prefix(&key)?;
        ensure!(keys.len() == 1 && keys[0].0 == key, "{key}: {keys:?}");
    }
    let fpod = flannel_node(&c, 2)?;
    ensure!(flannel_routes(&c, 2)? == 4, "flannel routes");
    let pods: Vec<Pod> = vec![add_pod(&c, 0, "hg-a")?, add_pod(&c, 1, "hg-b")?];
    for p in &pods {
        for ip in p.addrs() {
            ping(&fpod, ip).with_context(|| format!("flannel pod -> {} ({ip})", p.name))?;
        }
        for ip in ["198.18.200.2", "fd18:18:0:c8::2"] {
            ping(&p.ns, ip).with_context(|| format!("{} -> flannel pod ({ip})", p.name))?;
        }
    }
    ping(&pods[0].ns, &pods[1].ip)?;
    ping(&pods[0].ns, pods[1].ip6.as_deref().context("IPv6")?)?;
    drop(fpod);
    Ok(())
}
