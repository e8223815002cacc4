//! A peer whose lease names a link-local `PublicIPv6` (fe80::/10), on the same link as our
//! uplink: the daemon installs `<IPv6 subnet> via fe80::… dev eth0` (the kernel refuses
//! such a gateway without a device), and pods reach each other over it both ways.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hostgw_harness::{
    Netns,
    cluster::{add_pod, ping, status_json},
    require_root,
    routed::{CONFIG_V6, Cluster, PREFIX, Spec},
    veth, wait_for,
};

/// Node 1 is the peer (no daemon): a link-local address of its own on the shared link,
/// forwarding, and one pod behind it (198.18.201.2, fd18:18:0:c9::2).
fn peer_with_pod(c: &Cluster) -> Result<Netns> {
    let peer = &c.nodes[1].ns;
    peer.ip(&["addr", "add", "fe80::b/64", "dev", "eth0", "nodad"])?;
    peer.sysctl("net.ipv4.ip_forward", "1")?;
    peer.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    let pod = Netns::new("llpod")?;
    pod.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
    veth(peer, "vethl0", &pod, "eth0")?;
    peer.ip(&[
        "addr",
        "add",
        "fd18:18:0:c9::1/64",
        "dev",
        "vethl0",
        "nodad",
    ])?;
    pod.ip(&["addr", "add", "fd18:18:0:c9::2/64", "dev", "eth0", "nodad"])?;
    pod.ip(&["-6", "route", "add", "default", "via", "fd18:18:0:c9::1"])?;
    peer.ip(&["addr", "add", "198.18.201.1/24", "dev", "vethl0"])?;
    pod.ip(&["addr", "add", "198.18.201.2/24", "dev", "eth0"])?;
    pod.ip(&["route", "add", "default", "via", "198.18.201.1"])?;
    Ok(pod)
}

#[test]
fn routed_link_local_next_hop_gets_the_uplink_as_device_and_carries_traffic() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec {
        nodes: 2,
        config: CONFIG_V6,
        ..Spec::default()
    })?;
    let pod = peer_with_pod(&c)?;
    let key = format!("{PREFIX}/subnets/198.18.201.0-24&fd18:18:0:c9::-64");
    c.etcd.put_leased(
        &key,
        r#"{"PublicIP":"198.19.0.11","PublicIPv6":"fe80::b","BackendType":"host-gw","NodeName":"ll-peer"}"#,
        3600,
    )?;
    c.start(0)?;
    let route = wait_for("the link-local route", Duration::from_secs(20), || {
        let out = c.nodes[0]
            .ns
            .ip(&["-6", "route", "show", "fd18:18:0:c9::/64", "proto", "75"])
            .ok()?;
        (!out.trim().is_empty()).then_some(out)
    })
    .with_context(|| c.logs())?;
    ensure!(route.contains("via fe80::b dev eth0"), "{route}");
    let s = status_json(&c, 0)?;
    ensure!(
        s["rejected"].as_array().is_some_and(|r| r.is_empty()),
        "{s}"
    );
    let hg = add_pod(&c, 0, "hg-ll")?;
    let hg6 = hg.ip6.clone().context("IPv6")?;
    let subnet6 = hostgw_harness::cluster::subnet6(&c, 0).context("IPv6 subnet")?;
    // The peer routes back to node 0's subnets as its own daemon would (global next hop).
    let peer = &c.nodes[1].ns;
    peer.ip(&["-6", "route", "add", &subnet6, "via", &c.nodes[0].ip6])?;
    let subnet = c.subnet(0).context("IPv4 subnet")?;
    peer.ip(&["route", "add", &subnet, "via", &c.nodes[0].ip])?;
    ping(&hg.ns, "fd18:18:0:c9::2").context("hostgw pod -> peer pod over fe80::b")?;
    ping(&pod, &hg6).context("peer pod -> hostgw pod")?;
    ping(&hg.ns, "198.18.201.2").context("IPv4 as well")?;
    Ok(())
}
