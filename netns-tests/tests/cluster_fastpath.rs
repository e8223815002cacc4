//! The daemon's eBPF datapath (issue 13) end to end: it attaches on start and on every new
//! pod, a DEL takes the tcx link with the veth, `status` shows each pod veth, `release`
//! detaches everything, BIG TCP lands on both veth ends, and a kernel or process that can't
//! keeps plain routes, saying why in status, metrics and once in the log.

use std::time::Duration;

use anyhow::{Context, Result};
use hostgw_harness::{
    cluster::{Pod, add_pod, all_reach, del_pod, echo_servers, status_json, tcp_server},
    require_root,
    routed::{CONFIG_V6, Cluster, Datapath, Spec, metric},
    wait_for,
};
use serde_json::Value;

fn ebpf_cluster(nodes: usize, big_tcp: bool) -> Result<Cluster> {
    let spec = Spec {
        nodes,
        config: CONFIG_V6,
        ..Spec::default()
    };
    Cluster::converged_on(spec, Datapath::Ebpf { big_tcp })
}

/// The pinned link files under the node's bpffs (its private mount namespace).
fn pins(c: &Cluster, i: usize) -> Result<Vec<String>> {
    let out = c.nodes[i]
        .cmd("sh")
        .args(["-c", "ls /sys/fs/bpf/hostgw/links 2>/dev/null || true"])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

fn host_veth(c: &Cluster, pod: &Pod) -> Result<(String, u64)> {
    let links = c.nodes[pod.node].ns.ip_json(&["link", "show"])?;
    let pod_links = pod.ns.ip_json(&["link", "show", "eth0"])?;
    let peer = pod_links[0]["link_index"]
        .as_u64()
        .context("pod eth0's peer index")?;
    links
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["ifindex"].as_u64() == Some(peer))
        .and_then(|l| Some((l["ifname"].as_str()?.to_owned(), peer)))
        .context("the pod's host veth")
}

/// `status --json`'s datapath pods: veth name -> fast path attached.
fn status_pods(c: &Cluster, i: usize) -> Result<Vec<(String, bool)>> {
    let st = status_json(c, i)?;
    Ok(st["datapath"]["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["veth"].as_str().unwrap_or_default().to_owned(),
                p["fast_path"] == Value::Bool(true),
            )
        })
        .collect())
}

fn servers(pods: &[Pod]) -> Result<Vec<hostgw_harness::Proc>> {
    pods.iter().map(|p| tcp_server(p, 8080)).collect()
}

#[test]
fn cluster_fastpath_attaches_on_start_and_new_pods_del_and_release_detach() -> Result<()> {
    require_root();
    // A pod made while the daemons ran plain routes: attached when they start on ebpf.
    let mut c = Cluster::converged(Spec {
        nodes: 2,
        config: CONFIG_V6,
        ..Spec::default()
    })?;
    let early = add_pod(&c, 0, "early")?;
    for n in &mut c.nodes {
        n.daemon.as_mut().unwrap().stop(Duration::from_secs(5));
    }
    c.set_datapath(Datapath::Ebpf { big_tcp: false });
    c.start_all()?;
    c.wait_converged(Duration::from_secs(20))?;
    let pods = [early, add_pod(&c, 1, "pod-b")?, add_pod(&c, 0, "late")?];
    let _servers = servers(&pods)?;
    // The traffic below must meet attached pods: a pod the keeper has not reached yet (a
    // loaded machine) sends it all through the stack, and nothing would count.
    for (i, want) in [(0, 2), (1, 1)] {
        wait_for(
            &format!("node {i}'s pods attached"),
            Duration::from_secs(15),
            || {
                let p = status_pods(&c, i).ok()?;
                (p.len() == want && p.iter().all(|(_, on)| *on)).then_some(())
            },
        )
        .with_context(|| c.logs())?;
    }
    all_reach(&pods, Some(8080))?;
    for i in 0..2 {
        let n = c.wait_fast_pathed(i, 0.0)?;
        eprintln!("node {i}: {n} packets fast-pathed");
    }
    let st = status_json(&c, 0)?;
    assert_eq!(st["datapath"]["mode"], "ebpf", "{st}");
    assert!(
        st["datapath"]["note"]
            .as_str()
            .unwrap_or_default()
            .contains("do not see"),
        "{st}"
    );
    let text = c.cli(0, "status", &[])?;
    assert!(
        text.contains("pod veths (2, 2 with the fast path)"),
        "{text}"
    );
    let (late_veth, late_ifindex) = host_veth(&c, &pods[2])?;
    wait_for("both node-0 pods attached", Duration::from_secs(10), || {
        let p = status_pods(&c, 0).ok()?;
        (p.len() == 2 && p.iter().all(|(_, on)| *on)).then_some(())
    })?;
    // uplink + 2 pods on node 0.
    assert_eq!(pins(&c, 0)?.len(), 3, "{:?}", pins(&c, 0)?);

    // DEL removes the veth, and the kernel the tcx link with it; the daemon drops the pin.
    del_pod(&c, &pods[2])?;
    wait_for(
        "the DELeted pod's pin gone",
        Duration::from_secs(10),
        || (!pins(&c, 0).ok()?.contains(&late_ifindex.to_string())).then_some(()),
    )
    .with_context(|| c.logs())?;
    let left = status_pods(&c, 0)?;
    assert!(left.iter().all(|(v, _)| *v != late_veth), "{left:?}");
    assert_eq!(left.len(), 1);

    // release detaches everything and says so.
    c.nodes[0]
        .daemon
        .as_mut()
        .unwrap()
        .stop(Duration::from_secs(5));
    let out = c.cli(0, "release", &[])?;
    assert!(out.contains("detached the fast path from 2 links"), "{out}");
    assert!(pins(&c, 0)?.is_empty());
    Ok(())
}

#[test]
fn cluster_fastpath_big_tcp_is_on_both_veth_ends_and_the_uplink() -> Result<()> {
    require_root();
    let c = ebpf_cluster(2, true)?;
    let pods = [add_pod(&c, 0, "pod-a")?, add_pod(&c, 1, "pod-b")?];
    all_reach(&pods, None)?;
    let (veth, _) = host_veth(&c, &pods[0])?;
    let gso = |v: Value| v[0]["gso_max_size"].as_u64().unwrap_or(0);
    wait_for(
        "BIG TCP on both ends and the uplink",
        Duration::from_secs(10),
        || {
            let host = gso(c.nodes[0].ns.ip_json(&["-d", "link", "show", &veth]).ok()?);
            let pod = gso(pods[0].ns.ip_json(&["-d", "link", "show", "eth0"]).ok()?);
            let up = gso(c.nodes[0]
                .ns
                .ip_json(&["-d", "link", "show", "eth0"])
                .ok()?);
            (host == 185_000 && pod == 185_000 && up == 185_000).then_some(())
        },
    )
    .with_context(|| c.logs())?;
    // MTU rules unchanged: the pod's MTU is still the uplink's.
    let mtu = |v: Value| v[0]["mtu"].as_u64().unwrap_or(0);
    assert_eq!(
        mtu(pods[0].ns.ip_json(&["link", "show", "eth0"])?),
        mtu(c.nodes[0].ns.ip_json(&["link", "show", "eth0"])?)
    );
    assert!(c.log(0).contains("BIG TCP on"), "{}", c.log(0));
    Ok(())
}

#[test]
fn cluster_fastpath_a_kernel_or_process_that_cant_keeps_routes_and_says_why() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec {
        nodes: 2,
        ..Spec::default()
    })?;
    c.set_datapath(Datapath::Ebpf { big_tcp: false });
    // Not bpffs: the probe fails on the pin directory (as on a node without /sys/fs/bpf).
    let not_bpffs = c.dir.path().join("not-bpffs");
    for n in &mut c.nodes {
        n.extra_args = vec!["--bpf-pin-dir".into(), not_bpffs.display().to_string()];
    }
    c.start_all()?;
    c.wait_converged(Duration::from_secs(20))?;
    let pods = [add_pod(&c, 0, "pod-a")?, add_pod(&c, 1, "pod-b")?];
    let _servers = servers(&pods)?;
    all_reach(&pods, Some(8080))?;
    let m = c.metrics(0)?;
    assert_eq!(
        metric(&m, "hostgw_datapath", &["mode=\"routes\""]),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "hostgw_datapath", &["mode=\"ebpf\""]),
        0.0,
        "{m}"
    );
    let text = c.cli(0, "status", &[])?;
    assert!(
        text.contains("datapath: routes (asked: ebpf) (!)") && text.contains("Bpffs"),
        "{text}"
    );
    let log = c.log(0);
    assert_eq!(
        log.matches("keeping plain routes").count(),
        1,
        "logged once:\n{log}"
    );
    Ok(())
}

/// Packets node `i`'s programs handed to the stack because conntrack holds their flow as NATed.
fn ct_nat(c: &Cluster, i: usize) -> Result<f64> {
    Ok(metric(
        &c.metrics(i)?,
        "hostgw_ebpf_packets_total",
        &["reason=\"ct_nat\""],
    ))
}

/// A ClusterIP as kube-proxy's nftables mode writes it (DNAT in a dstnat prerouting chain),
/// on the client's node, to a pod on the other node. The backend's replies are fast-pathed by
/// node 1 and must reach the stack on node 0 to be un-DNATed: with the NAT check gone the
/// client's connected socket would see replies from the pod's address, not the VIP's.
#[test]
fn cluster_fastpath_clusterip_dnat_to_a_pod_on_another_node_tcp_and_udp() -> Result<()> {
    require_root();
    let c = ebpf_cluster(2, false)?;
    let pods = [add_pod(&c, 0, "client")?, add_pod(&c, 1, "web")?];
    all_reach(&pods, None)?;
    let (client, web) = (&pods[0], &pods[1]);
    let _servers = echo_servers(web, 8080, 8081)?;
    // 198.18.0.0/24 is never leased (SubnetMin is the network's second subnet).
    const VIP: &str = "198.18.0.10";
    hostgw_harness::cluster::cluster_ip(
        &c,
        0,
        VIP,
        &web.ip,
        &[("tcp", 80, 8080), ("udp", 81, 8081)],
    )?;
    let (nat0, fast1) = (ct_nat(&c, 0)?, c.fast_pathed(1)?);
    hostgw_harness::cluster::echo_rounds(&client.ns, VIP, (80, 81), 3)?;
    wait_for(
        "node 0 handing NATed replies to the stack",
        Duration::from_secs(10),
        || (ct_nat(&c, 0).ok()? >= nat0 + 6.0).then_some(()),
    )
    .with_context(|| c.logs())?;
    c.wait_fast_pathed(1, fast1)?;
    Ok(())
}
