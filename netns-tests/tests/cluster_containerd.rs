//! A pod started by a real runtime: Debian's containerd + runc inside node 0's namespace,
//! a busybox-static image built here with umoci, `ctr run --cni` with the plugin and the
//! shipped conflist installed by `manifests/install-cni.sh`. The pod gets its address from
//! our plugin (from the subnet node 0's daemon leased, in the node's one IPAM store, next
//! to a pod wired directly), reaches pods on the other nodes and is reached by them, and
//! after the runtime tears it down nothing of it is left.

use std::time::Duration;

use anyhow::{Context, Result};
use hostgw_harness::{
    cluster::{
        CniHost, CtrPod, Pod, add_pod, busybox_image, ping, ping_once, reservations, status_json,
    },
    containerd::Containerd,
    pod::{NETWORK, host_veth_name},
    require_root,
    routed::{Cluster, Spec},
};

/// `a.b.c.d` inside `a.b.c.0/24`.
fn in_subnet(ip: &str, subnet: &str) -> bool {
    let net = subnet.trim_end_matches(".0/24");
    ip.rsplit_once('.').is_some_and(|(p, _)| p == net)
}

/// Our plugin gave the container an address of node 0's leased subnet, reserved under the
/// runtime's container ID, behind a host veth of ours (`veth`) with a /32 route; it reaches
/// its neighbour on node 0 and has its default route.
fn assert_wired_by_us(c: &Cluster, pod: &CtrPod, veth: &str, neighbour: &Pod) -> Result<()> {
    let sub0 = c.subnet(0).unwrap();
    assert!(
        in_subnet(&pod.ip, &sub0),
        "{} not in node 0's {sub0}",
        pod.ip
    );
    let res = reservations(c, 0)?;
    assert_eq!(
        res.get(&pod.ip).map(String::as_str),
        Some(pod.cni_id.as_str()),
        "{res:?}"
    );
    let links = c.nodes[0].ns.links()?;
    assert!(links.iter().any(|l| l == veth), "{veth} in {links:?}");
    let route = c.nodes[0].ns.ip(&["route", "show", &pod.ip])?;
    assert!(route.contains(veth), "host route to the pod: {route:?}");
    assert_ne!(
        pod.ip, neighbour.ip,
        "one store per node: distinct addresses"
    );
    pod.ping(&neighbour.ip)
        .context("container -> its neighbour on node 0")?;
    let default = pod.exec("route", &["ip", "route", "show", "default"])?;
    assert!(
        default.contains("eth0"),
        "default route in the pod: {default:?}"
    );
    Ok(())
}

#[test]
fn cluster_heavy_containerd_pod_gets_our_address_reaches_pods_and_leaves_nothing() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec::default())?;
    c.start_all()?;
    c.wait_converged(Duration::from_secs(20))?;
    // A neighbour on node 0 wired by the plugin directly, sharing the node's IPAM store
    // with the runtime's pod; and pods on the other nodes.
    let neighbour = add_pod(&c, 0, "pod-a")?;
    let pods = [add_pod(&c, 1, "pod-b")?, add_pod(&c, 2, "pod-c")?];

    let image_dir = tempfile::tempdir()?;
    let tar = busybox_image(image_dir.path())?;
    let cni = CniHost::new()?;
    let ctd = Containerd::start(&c.nodes[0].ns)?;
    cni.install(&ctd, &c, 0)?;
    let names = ctd.import(&tar)?;
    assert!(
        names
            .iter()
            .any(|n| n == hostgw_harness::cluster::BUSYBOX_IMAGE),
        "{names:?}"
    );

    let links_before = c.nodes[0].ns.links()?;
    let routes_before = c.nodes[0].ns.ip(&["route", "show"])?;
    std::thread::scope(|s| -> Result<()> {
        let pod = CtrPod::start(s, &ctd, "web")?;
        let veth = host_veth_name(NETWORK, &pod.cni_id, "eth0");
        eprintln!(
            "containerd pod {} ({}): {} on {veth}",
            pod.id, pod.cni_id, pod.ip
        );
        assert_wired_by_us(&c, &pod, &veth, &neighbour)?;
        // Across nodes, both ways, and from node 0's daemon's point of view nothing changed.
        for p in &pods {
            pod.ping(&p.ip)
                .with_context(|| format!("container -> {}\n{}", p.name, c.logs()))?;
            ping(&p.ns, &pod.ip).with_context(|| format!("{} -> container", p.name))?;
        }
        let st = status_json(&c, 0)?;
        assert!(
            st["drift"]["missing"].as_array().unwrap().is_empty()
                && st["drift"]["extra"].as_array().unwrap().is_empty(),
            "{st:#}"
        );

        // The runtime tears it down: ctr calls DEL, deletes the task and the container.
        let ip = pod.ip.clone();
        let cni_id = pod.cni_id.clone();
        pod.stop()?;
        let res = reservations(&c, 0)?;
        assert!(
            !res.contains_key(&ip) && !res.values().any(|v| *v == cni_id),
            "reservation left: {res:?}"
        );
        assert_eq!(c.nodes[0].ns.links()?, links_before, "links left");
        assert_eq!(
            c.nodes[0].ns.ip(&["route", "show"])?,
            routes_before,
            "routes left"
        );
        let addrs = c.nodes[0].ns.ip(&["addr", "show"])?;
        assert!(!addrs.contains(&veth), "{addrs}");
        for p in &pods {
            assert!(!ping_once(&p.ns, &ip), "{ip} still answers {}", p.name);
        }
        assert!(ctd.task_status("web").is_none(), "task left");
        assert!(
            !ctd.ctr(&["containers", "ls", "-q"])?.contains("web"),
            "container left"
        );
        Ok(())
    })?;
    // The other pods are untouched.
    ping(&pods[0].ns, &pods[1].ip)?;
    ping(&pods[0].ns, &neighbour.ip)?;
    assert_eq!(
        reservations(&c, 0)?.get(&neighbour.ip).map(String::as_str),
        Some("pod-a")
    );
    Ok(())
}
