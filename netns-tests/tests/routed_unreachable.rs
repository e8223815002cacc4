//! The node's own subnet is `unreachable` (protocol 75, metric 1000000): a packet for a free
//! address of it is answered with ICMP unreachable by the node instead of leaving by its
//! default route (flannel#2245), in ptp mode and next to a bridge's connected route.

use std::{process::Stdio, time::Duration};

use anyhow::{Context, Result};
use hostgw_harness::{
    Netns, Proc,
    cluster::{Pod, add_pod, add_pod_with, ping, pod_conf, subnet6},
    require_root,
    routed::{CONFIG_V6, Cluster, Spec, unreachable_in},
    run_timeout, wait_for,
};
use serde_json::json;

const GW: &str = "198.19.0.254";

/// `ip -o link` MAC of `dev` in `ns`.
fn mac(ns: &Netns, dev: &str) -> Result<String> {
    let v = ns.ip_json(&["link", "show", dev])?;
    v[0]["address"]
        .as_str()
        .map(str::to_owned)
        .context("no MAC")
}

/// A fake default gateway on the segment, and node `i`'s default route through it.
fn fake_gateway(c: &Cluster, i: usize) -> Result<Netns> {
    let gw = Netns::new("gw")?;
    c.attach_to_segment(&gw, "pgw", 254)?;
    c.nodes[i].ns.ip(&["route", "add", "default", "via", GW])?;
    Ok(gw)
}

/// Captures ICMP that node `i` sends to the gateway's MAC, on its uplink.
fn capture(c: &Cluster, i: usize, gw_mac: &str, out: &std::path::Path) -> Result<Proc> {
    let mut cmd = c.nodes[i].ns.cmd("tcpdump");
    cmd.args([
        "-n",
        "-l",
        "-i",
        "eth0",
        "-U",
        &format!("ether dst {gw_mac} and icmp"),
    ])
    .stdout(std::fs::File::create(out)?)
    .stderr(Stdio::null());
    let p = Proc::spawn(cmd)?;
    // tcpdump needs a moment to attach its filter; nothing is sent before it does.
    std::thread::sleep(Duration::from_millis(700));
    Ok(p)
}

/// `ping -c 1 -W 4` output (whatever its exit code): 4 s, since on a bridge the node
/// answers host unreachable only once its ARP for the address failed (3 tries, 1 s apart).
fn ping_text(from: &Netns, to: &str) -> Result<String> {
    let o = run_timeout(
        from.cmd("ping").args(["-n", "-c", "1", "-W", "4", to]),
        Duration::from_secs(8),
    )?;
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// A free address of node `i`'s subnet: .200 (pods are given low addresses).
fn free_addr(c: &Cluster, i: usize) -> Result<String> {
    let s = c.wait_subnet(i)?;
    Ok(s.replace(".0/24", ".200"))
}

fn check_no_leak(c: &Cluster, remote: &Pod, local: &Pod) -> Result<()> {
    let free = free_addr(c, 0)?;
    let gw = fake_gateway(c, 0)?;
    let gw_mac = mac(&gw, "eth0")?;
    let dump = c.dir.path().join("uplink.txt");
    let mut tcpdump = capture(c, 0, &gw_mac, &dump)?;
    let text = ping_text(&remote.ns, &free)?;
    // Control: the capture does see what node 0 sends its default gateway.
    let _ = run_timeout(
        local
            .ns
            .cmd("ping")
            .args(["-n", "-c", "1", "-W", "1", "198.19.9.9"]),
        Duration::from_secs(3),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    tcpdump.stop(Duration::from_secs(2));
    let seen = std::fs::read_to_string(&dump)?;
    let node0 = &c.nodes[0].ip;
    assert!(
        text.contains(&format!("From {node0}")) && text.contains("Unreachable"),
        "ICMP unreachable from node 0 expected:\n{text}"
    );
    assert!(
        seen.contains("198.19.9.9"),
        "the capture saw nothing at all, so it proves nothing:\n{seen}"
    );
    assert!(
        !seen.contains(&free),
        "a packet for {free} left towards the default gateway:\n{seen}"
    );
    // Pods of node 0 are still reached from the other node.
    ping(&remote.ns, &local.ip)
}

#[test]
fn routed_own_subnet_is_unreachable_not_leaked_ptp() -> Result<()> {
    require_root();
    let mut c = Cluster::converged(Spec {
        nodes: 2,
        config: CONFIG_V6,
        ..Spec::default()
    })?;
    let sub0 = c.wait_subnet(0)?;
    let sub0_v6 = subnet6(&c, 0).context("dual-stack lease")?;
    let want = vec![(sub0.clone(), 1_000_000), (sub0_v6.clone(), 1_000_000)];
    let got = wait_for("unreachable own subnet", Duration::from_secs(5), || {
        unreachable_in(&c.nodes[0].ns).ok().filter(|u| *u == want)
    })
    .with_context(|| c.logs())?;
    assert_eq!(got, want);
    let local = add_pod(&c, 0, "a0")?;
    let remote = add_pod(&c, 1, "b0")?;
    check_no_leak(&c, &remote, &local)?;
    // IPv6: the node answers for a free address of its IPv6 subnet too.
    let free6 = sub0_v6.replace("::/64", "::c8");
    let text = ping_text(&remote.ns, &free6)?;
    assert!(
        text.contains(&format!("From {}", c.nodes[0].ip6)) && text.contains("nreachable"),
        "ICMPv6 unreachable from node 0 expected:\n{text}"
    );
    ping(&remote.ns, local.ip6.as_deref().context("dual-stack pod")?)?;
    // Drift repair: deleted behind the daemon's back, back at once.
    c.nodes[0].ns.ip(&[
        "route",
        "del",
        "unreachable",
        &sub0,
        "proto",
        "75",
        "metric",
        "1000000",
    ])?;
    wait_for("unreachable repaired", Duration::from_secs(2), || {
        (unreachable_in(&c.nodes[0].ns).ok()? == want).then_some(())
    })?;
    // Release: gone with the lease.
    c.nodes[0]
        .daemon
        .take()
        .unwrap()
        .stop(Duration::from_secs(5));
    c.cli(0, "release", &[])?;
    assert_eq!(unreachable_in(&c.nodes[0].ns)?, vec![]);
    Ok(())
}

/// ADD in bridge mode on node `node` (a `cni0` bridge holding the subnet's gateway).
fn add_bridge_pod(c: &Cluster, node: usize, name: &str) -> Result<Pod> {
    let mut conf = pod_conf(c, node);
    conf["mode"] = json!("bridge");
    add_pod_with(c, node, name, &conf)
}

#[test]
fn routed_own_subnet_unreachable_coexists_with_a_bridge() -> Result<()> {
    require_root();
    let c = Cluster::converged(Spec {
        nodes: 2,
        ..Spec::default()
    })?;
    let sub0 = c.wait_subnet(0)?;
    let local = add_bridge_pod(&c, 0, "a0")?;
    let other = add_bridge_pod(&c, 0, "a1")?;
    let remote = add_pod(&c, 1, "b0")?;
    // The bridge's connected route (metric 0) and ours (metric 1000000) are both there; the
    // connected one is what the kernel uses.
    let both = c.nodes[0].ns.ip(&["route", "show", "exact", &sub0])?;
    assert!(
        both.contains("dev cni0") && both.contains("unreachable") && both.contains("proto 75"),
        "{both}"
    );
    let get = c.nodes[0].ns.ip(&["route", "get", &local.ip])?;
    assert!(get.contains("dev cni0"), "{get}");
    ping(&local.ns, &other.ip)?;
    ping(&remote.ns, &local.ip)?;
    // A free address of a bridge subnet is the bridge's to answer (ARP fails there, so the
    // node says host unreachable) and still never leaves by the default route.
    check_no_leak(&c, &remote, &local)?;
    // The daemon keeps both as they are: a pass changes neither.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.nodes[0].ns.ip(&["route", "show", "exact", &sub0])?, both);
    Ok(())
}
