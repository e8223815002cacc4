//! ADD and DEL of the real `hostgw` binary in a node namespace: what the kernel holds
//! afterwards in both modes, where the MTU comes from, what a failed ADD leaves, and
//! that DEL is total (cni-notes §4 cases 10-16, 18, 27-29, 33, 34, 44-47, 49-51, 54, 55).

use std::time::Duration;

use anyhow::Result;
use hostgw_harness::{
    Netns,
    cni::Call,
    pod::{
        NETWORK, Node, addrs, err_code, global_addrs, host_veth_name, link, ns_path, ok_empty,
        ok_json, routes, sysctl, with,
    },
    require_root, veth, wait_for,
};
use serde_json::{Value, json};

fn node(tag: &str, mtu: Option<u32>) -> Result<Node> {
    let n = Node::new(tag)?;
    n.write_subnet_file("198.18.3.0/24", None, mtu)?;
    Ok(n)
}

fn mac_of(ns: &Netns, dev: &str) -> Result<String> {
    Ok(link(ns, dev)?["address"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

#[test]
fn cni_ptp_add_wires_pod_and_host() -> Result<()> {
    require_root();
    let n = node("ptp", Some(1450))?;
    let pod = Netns::new("pod")?;
    let conf = n.conf("ptp", "1.0.0");
    let reply = n.add(&conf, "c1", &pod)?;
    let r = ok_json(&reply)?;
    assert!(
        reply.stderr.is_empty(),
        "a successful ADD logs nothing: {}",
        reply.stderr
    );
    let hv = host_veth_name(NETWORK, "c1", "eth0");

    // The result: [host veth, eth0 in the sandbox]; the IP points at eth0.
    assert_eq!(r["cniVersion"], "1.0.0");
    let ifs = r["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 2, "{r}");
    assert_eq!(ifs[0]["name"], hv.as_str());
    assert!(ifs[0].get("sandbox").is_none(), "{r}");
    assert_eq!(ifs[1]["name"], "eth0");
    assert_eq!(ifs[1]["sandbox"], ns_path(&pod));
    assert_eq!(ifs[0]["mac"].as_str().unwrap(), mac_of(&n.ns, &hv)?);
    assert_eq!(ifs[1]["mac"].as_str().unwrap(), mac_of(&pod, "eth0")?);
    assert_eq!(ifs[1]["mac"].as_str().unwrap().len(), 17);
    assert!(ifs[1].get("mtu").is_none(), "mtu is a 1.1.0 field: {r}");
    assert_eq!(
        r["ips"],
        json!([{"address": "198.18.3.2/24", "gateway": "198.18.3.1", "interface": 1}])
    );
    assert_eq!(
        r["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "198.18.3.1"}])
    );
    assert_eq!(r["dns"], json!({}));

    // Host side: the gateway as /32 on the veth, a /32 route to the pod through it.
    let host = link(&n.ns, &hv)?;
    assert_eq!(host["ifalias"], "hostgw/podnet/c1/eth0");
    assert_eq!(host["mtu"], 1450);
    assert!(host["flags"].as_array().unwrap().contains(&json!("UP")));
    assert_eq!(global_addrs(&n.ns, &hv)?, ["198.18.3.1/32"]);
    assert_eq!(
        routes(&n.ns, "-4")?,
        [format!("198.18.3.2 dev {hv} scope link")]
    );
    assert_eq!(sysctl(&n.ns, "net/ipv4/ip_forward")?, "1");

    // Pod side: /24 without a prefix route, the gateway on-link, default via it.
    let eth0 = link(&pod, "eth0")?;
    assert_eq!(eth0["mtu"], 1450);
    assert_eq!(eth0["linkinfo"]["info_kind"], "veth");
    let a = addrs(&pod, "eth0")?;
    let v4: Vec<&Value> = a.iter().filter(|a| a["family"] == "inet").collect();
    assert_eq!(v4.len(), 1);
    assert_eq!(v4[0]["local"], "198.18.3.2");
    assert_eq!(v4[0]["prefixlen"], 24);
    assert_eq!(v4[0]["noprefixroute"], true);
    let mut pr = routes(&pod, "-4")?;
    pr.sort();
    assert_eq!(
        pr,
        [
            "198.18.3.1 dev eth0 scope link",
            "default via 198.18.3.1 dev eth0"
        ]
    );
    assert_eq!(sysctl(&pod, "net/ipv4/conf/eth0/arp_notify")?, "1");

    // IPAM: .2 first, host-local's file format and marker.
    let res = n.reservations(NETWORK)?;
    assert_eq!(res.len(), 1);
    assert_eq!(res["198.18.3.2"], "c1\r\neth0");
    let marker = std::fs::read_to_string(n.net_dir(NETWORK).join("last_reserved_ip.0"))?;
    assert_eq!(marker.trim(), "198.18.3.2");

    // The pod reaches its gateway.
    pod.sh("ping -c1 -W2 198.18.3.1 >/dev/null")?;

    ok_empty(&n.del(&conf, "c1", Some(&ns_path(&pod)))?)?;
    assert!(!pod.links()?.contains(&"eth0".to_owned()));
    n.assert_clean(NETWORK)
}

#[test]
fn cni_bridge_add_wires_pod_and_bridge() -> Result<()> {
    require_root();
    let n = node("br", None)?;
    let conf = with(&n.conf("bridge", "1.0.0"), "mtu", json!(1400));
    let p1 = Netns::new("pod")?;
    let p2 = Netns::new("pod")?;
    let r = n.add_ok(&conf, "c1", &p1)?;
    let hv = host_veth_name(NETWORK, "c1", "eth0");

    let ifs = r["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 3, "{r}");
    assert_eq!(ifs[0]["name"], "cni0");
    assert_eq!(ifs[1]["name"], hv.as_str());
    assert_eq!(ifs[2]["name"], "eth0");
    assert!(ifs[0].get("sandbox").is_none() && ifs[1].get("sandbox").is_none());
    assert_eq!(ifs[2]["sandbox"], ns_path(&p1));
    assert_eq!(ifs[1]["mac"].as_str().unwrap(), mac_of(&n.ns, &hv)?);
    assert_eq!(ifs[2]["mac"].as_str().unwrap(), mac_of(&p1, "eth0")?);
    assert_eq!(
        r["ips"],
        json!([{"address": "198.18.3.2/24", "gateway": "198.18.3.1", "interface": 2}])
    );
    assert_eq!(
        r["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "198.18.3.1"}])
    );

    // The node holds only lo, the bridge and the veth; the bridge holds the gateway /24.
    let mut links = n.ns.links()?;
    links.sort();
    assert_eq!(links, ["cni0".to_owned(), hv.clone(), "lo".to_owned()]);
    let br = link(&n.ns, "cni0")?;
    assert_eq!(br["linkinfo"]["info_kind"], "bridge");
    assert_eq!(br["mtu"], 1400, "a new bridge gets the MTU");
    assert_eq!(global_addrs(&n.ns, "cni0")?, ["198.18.3.1/24"]);
    let host = link(&n.ns, &hv)?;
    assert_eq!(host["master"], "cni0");
    assert_eq!(host["mtu"], 1400);
    assert_eq!(
        host["linkinfo"]["info_slave_data"]["hairpin"], true,
        "{host}"
    );
    assert_eq!(host["ifalias"], "hostgw/podnet/c1/eth0");
    assert_eq!(sysctl(&n.ns, "net/ipv4/ip_forward")?, "1");

    assert_eq!(global_addrs(&p1, "eth0")?, ["198.18.3.2/24"]);
    assert_eq!(link(&p1, "eth0")?["mtu"], 1400);
    assert!(routes(&p1, "-4")?.contains(&"default via 198.18.3.1 dev eth0".to_owned()));
    assert_eq!(sysctl(&p1, "net/ipv4/conf/eth0/arp_notify")?, "1");

    // A second pod reuses the bridge.
    let br_index = br["ifindex"].clone();
    let r2 = n.add_ok(&conf, "c2", &p2)?;
    assert_eq!(r2["ips"][0]["address"], "198.18.3.3/24");
    assert_eq!(link(&n.ns, "cni0")?["ifindex"], br_index);
    p1.sh("ping -c1 -W2 198.18.3.1 >/dev/null")?;

    ok_empty(&n.del(&conf, "c1", Some(&ns_path(&p1)))?)?;
    ok_empty(&n.del(&conf, "c2", Some(&ns_path(&p2)))?)?;
    // The bridge stays (other pods may come); nothing of the pods does.
    assert_eq!(link(&n.ns, "cni0")?["ifindex"], br_index);
    n.assert_clean(NETWORK)
}

/// cni-notes §28, §32: the result reports the bridge's real MAC, and that MAC (the pods'
/// gateway MAC) does not change as pods come and go. A bridge takes the lowest MAC of its
/// ports unless its own address was set, so every pod's neighbour entry for the gateway
/// would go stale whenever the lowest-MAC pod leaves.
#[test]
fn cni_bridge_mac_is_reported_and_stable() -> Result<()> {
    require_root();
    let n = node("brmac", None)?;
    let conf = n.conf("bridge", "1.0.0");
    let pods: Vec<Netns> = (0..6).map(|_| Netns::new("pod")).collect::<Result<_>>()?;
    // (step, MAC in the result, MAC in the kernel); all checked at the end, so a failure
    // shows the whole history.
    let mut steps = Vec::new();
    let mut before_first = None;
    for (i, p) in pods.iter().enumerate() {
        let r = n.add_ok(&conf, &format!("c{i}"), p)?;
        let real = mac_of(&n.ns, "cni0")?;
        before_first.get_or_insert_with(|| r["interfaces"][0]["mac"].as_str().unwrap().to_owned());
        steps.push((format!("ADD c{i}"), r["interfaces"][0]["mac"].clone(), real));
        assert_eq!(
            r["interfaces"][1]["mac"].as_str().unwrap(),
            mac_of(&n.ns, &host_veth_name(NETWORK, &format!("c{i}"), "eth0"))?
        );
    }
    for i in 0..6 {
        ok_empty(&n.del(&conf, &format!("c{i}"), None)?)?;
        steps.push((format!("DEL c{i}"), Value::Null, mac_of(&n.ns, "cni0")?));
    }
    let stale: Vec<_> = steps
        .iter()
        .filter(|(_, rep, real)| !rep.is_null() && rep != real)
        .collect();
    let mut kernel: Vec<&String> = steps.iter().map(|(_, _, real)| real).collect();
    kernel.dedup();
    assert!(
        stale.is_empty() && kernel.len() == 1,
        "the bridge (gateway) MAC must be reported as the kernel has it and stay put; \
         first result said {before_first:?}; stale results: {stale:?}; kernel MACs over time: {kernel:?}"
    );
    Ok(())
}

fn dual_stack(mode: &str) -> Result<()> {
    let n = Node::new("ds")?;
    n.write_subnet_file("198.18.3.0/24", Some("fd18:18:0:3::/64"), None)?;
    let conf = n.conf(mode, "1.1.0");
    let pod = Netns::new("pod")?;
    let r = n.add_ok(&conf, "c1", &pod)?;
    let hv = host_veth_name(NETWORK, "c1", "eth0");
    let idx = if mode == "bridge" { 2 } else { 1 };
    assert_eq!(
        r["ips"],
        json!([
            {"address": "198.18.3.2/24", "gateway": "198.18.3.1", "interface": idx},
            {"address": "fd18:18:0:3::2/64", "gateway": "fd18:18:0:3::1", "interface": idx},
        ])
    );
    assert_eq!(
        r["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "198.18.3.1"}, {"dst": "::/0", "gw": "fd18:18:0:3::1"}])
    );
    let mut pod_addrs = global_addrs(&pod, "eth0")?;
    pod_addrs.sort();
    assert_eq!(pod_addrs, ["198.18.3.2/24", "fd18:18:0:3::2/64"]);
    assert!(
        routes(&pod, "-6")?.contains(&"default via fd18:18:0:3::1 dev eth0".to_owned()),
        "{:?}",
        routes(&pod, "-6")
    );
    assert_eq!(sysctl(&pod, "net/ipv6/conf/eth0/accept_dad")?, "0");
    assert_eq!(sysctl(&n.ns, "net/ipv6/conf/all/forwarding")?, "1");
    assert_eq!(
        sysctl(&n.ns, &format!("net/ipv6/conf/{hv}/accept_dad"))?,
        "0"
    );
    // No address is left tentative on the pod (DAD is off).
    assert!(
        addrs(&pod, "eth0")?
            .iter()
            .all(|a| a.get("tentative").is_none())
    );
    if mode == "ptp" {
        let mut host = global_addrs(&n.ns, &hv)?;
        host.sort();
        assert_eq!(host, ["198.18.3.1/32", "fd18:18:0:3::1/128"]);
        assert!(
            routes(&pod, "-6")?.contains(&"fd18:18:0:3::1 dev eth0".to_owned()),
            "{:?}",
            routes(&pod, "-6")
        );
        assert!(
            n.pod_host_routes()?
                .contains(&format!("fd18:18:0:3::2 dev {hv}"))
        );
    } else {
        let mut br = global_addrs(&n.ns, "cni0")?;
        br.sort();
        assert_eq!(br, ["198.18.3.1/24", "fd18:18:0:3::1/64"]);
    }
    // One file per family, the v6 one named by the canonical address.
    let res = n.reservations(NETWORK)?;
    assert_eq!(
        res.keys().collect::<Vec<_>>(),
        ["198.18.3.2", "fd18:18:0:3::2"]
    );
    assert!(res.values().all(|c| c == "c1\r\neth0"));
    let marker = std::fs::read_to_string(n.net_dir(NETWORK).join("last_reserved_ip.1"))?;
    assert_eq!(marker.trim(), "fd18:18:0:3::2");
    pod.sh("ping -6 -c1 -W2 fd18:18:0:3::1 >/dev/null")?;

    let check = n.check(&conf, "c1", &pod, &r)?;
    ok_empty(&check)?;
    ok_empty(&n.del(&conf, "c1", Some(&ns_path(&pod)))?)?;
    n.assert_clean(NETWORK)
}

#[test]
fn cni_ptp_dual_stack() -> Result<()> {
    require_root();
    dual_stack("ptp")
}

#[test]
fn cni_bridge_dual_stack() -> Result<()> {
    require_root();
    dual_stack("bridge")
}

/// MTU: the config wins, then the subnet file, then the node's default-route link, then 1500.
#[test]
fn cni_mtu_sources() -> Result<()> {
    require_root();
    let n = node("mtu", None)?;
    let up = Netns::new("up")?;
    veth(&n.ns, "uplink0", &up, "eth0")?;
    n.ns.ip(&["link", "set", "uplink0", "mtu", "1380"])?;
    n.ns.ip(&["addr", "add", "198.19.0.2/24", "dev", "uplink0"])?;
    n.ns.ip(&["route", "add", "default", "via", "198.19.0.1"])?;
    let conf = n.conf("ptp", "1.1.0");
    let mtu_of = |id: &str, conf: &Value| -> Result<(u64, u64, Value)> {
        let pod = Netns::new("pod")?;
        let r = n.add_ok(conf, id, &pod)?;
        let pod_mtu = link(&pod, "eth0")?["mtu"].as_u64().unwrap();
        let host_mtu = link(&n.ns, &host_veth_name(NETWORK, id, "eth0"))?["mtu"]
            .as_u64()
            .unwrap();
        ok_empty(&n.del(conf, id, None)?)?;
        Ok((pod_mtu, host_mtu, r))
    };
    let (p, h, r) = mtu_of("m1", &conf)?;
    assert_eq!((p, h), (1380, 1380), "default-route link's MTU");
    // 1.1.0 reports the MTU of both veth ends.
    assert_eq!(r["interfaces"][0]["mtu"], 1380);
    assert_eq!(r["interfaces"][1]["mtu"], 1380);

    n.write_subnet_file("198.18.3.0/24", None, Some(1450))?;
    assert_eq!(
        mtu_of("m2", &conf)?.0,
        1450,
        "the subnet file beats the uplink"
    );
    let (p, h, _) = mtu_of("m3", &with(&conf, "mtu", json!(1300)))?;
    assert_eq!((p, h), (1300, 1300), "the config beats the subnet file");

    // No default route, no MTU anywhere: 1500.
    let bare = node("bare", None)?;
    let pod = Netns::new("pod")?;
    let r = bare.add_ok(&bare.conf("ptp", "1.1.0"), "m4", &pod)?;
    assert_eq!(r["interfaces"][1]["mtu"], 1500);
    assert_eq!(link(&pod, "eth0")?["mtu"], 1500);
    Ok(())
}

/// cni-notes §45: an ifname that exists in the pod is refused before anything is reserved.
#[test]
fn cni_add_refuses_existing_ifname_without_reserving() -> Result<()> {
    require_root();
    let n = node("exist", None)?;
    for mode in ["ptp", "bridge"] {
        let conf = n.conf(mode, "1.0.0");
        let pod = Netns::new("pod")?;
        pod.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
        ])?;
        let reply = n.add(&conf, "c1", &pod)?;
        assert!(
            !reply.ok(),
            "{mode}: ADD over an existing eth0 succeeded: {}",
            reply.stdout
        );
        let e = reply.json()?;
        assert!(e["msg"].as_str().unwrap().contains("eth0"), "{e}");
        n.assert_clean(NETWORK)?;
        // The pod's own eth0 is untouched, and the address is still the next one out.
        assert_eq!(link(&pod, "eth0")?["linkinfo"]["info_kind"], "veth");
        assert!(pod.links()?.contains(&"other0".to_owned()));
        let fresh = Netns::new("pod")?;
        let r = n.add_ok(&conf, "c2", &fresh)?;
        assert_eq!(r["ips"][0]["address"], "198.18.3.2/24", "{mode}");
        ok_empty(&n.del(&conf, "c2", Some(&ns_path(&fresh)))?)?;
        // Round-robin moves on; start the next mode from a fresh marker.
        std::fs::remove_file(n.net_dir(NETWORK).join("last_reserved_ip.0"))?;
    }
    Ok(())
}

/// cni-notes §34: a failure after the address was reserved gives it back, and removes
/// whatever the call made, but nothing it did not make.
#[test]
fn cni_add_failure_after_ipam_leaves_nothing() -> Result<()> {
    require_root();
    let n = node("fail", None)?;

    // Bridge mode with a `cni0` that is not a bridge.
    n.ns.ip(&[
        "link", "add", "cni0", "type", "veth", "peer", "name", "cni0peer",
    ])?;
    let pod = Netns::new("pod")?;
    let e = err_code(&n.add(&n.conf("bridge", "1.0.0"), "c1", &pod)?, 7)?;
    assert!(e["msg"].as_str().unwrap().contains("not a bridge"), "{e}");
    assert!(n.reservations(NETWORK)?.is_empty());
    assert!(n.host_veths()?.is_empty());
    assert!(!pod.links()?.contains(&"eth0".to_owned()));
    n.ns.ip(&["link", "del", "cni0"])?;

    // ptp where the host veth's name is held by a foreign link: another owner's alias.
    // (An unaliased veth of that name is taken for our own ADD killed before it set the
    // alias, and replaced.)
    let hv = host_veth_name(NETWORK, "c2", "eth0");
    n.ns.ip(&[
        "link", "add", &hv, "type", "veth", "peer", "name", "foreign0",
    ])?;
    n.ns.ip(&["link", "set", &hv, "alias", "someone-else"])?;
    let reply = n.add(&n.conf("ptp", "1.0.0"), "c2", &pod)?;
    assert!(
        !reply.ok(),
        "ADD succeeded over a foreign {hv}: {}",
        reply.stdout
    );
    assert!(
        n.reservations(NETWORK)?.is_empty(),
        "{:?}",
        n.reservations(NETWORK)
    );
    assert!(!pod.links()?.contains(&"eth0".to_owned()));
    assert!(
        n.ns.links()?.contains(&hv),
        "the failed ADD deleted {hv}, a link it did not create"
    );
    Ok(())
}

/// cni-notes §46, §47, §55, §29: DEL needs neither the netns nor prevResult, may come
/// twice, and still releases the address and removes the host veth and its route.
#[test]
fn cni_del_is_total() -> Result<()> {
    require_root();
    for mode in ["ptp", "bridge"] {
        let n = node("del", None)?;
        let conf = n.conf(mode, "1.0.0");
        let pods: Vec<Netns> = (0..4).map(|_| Netns::new("pod")).collect::<Result<_>>()?;
        let mut results = Vec::new();
        for (i, p) in pods.iter().enumerate() {
            results.push(n.add_ok(&conf, &format!("c{i}"), p)?);
        }
        assert_eq!(n.host_veths()?.len(), 4);
        // c0: CNI_NETNS empty (containerd once the sandbox is closed).
        ok_empty(&n.del(&conf, "c0", Some(""))?)?;
        // c1: CNI_NETNS unset.
        ok_empty(&n.del(&conf, "c1", None)?)?;
        // c2: the namespace is gone, its path with it.
        let gone = ns_path(&pods[2]);
        let mut pods = pods;
        drop(pods.remove(2));
        ok_empty(&n.del(&conf, "c2", Some(&gone))?)?;
        // c3: with prevResult, as a runtime does for >= 0.4.0.
        let p3 = ns_path(&pods[2]);
        ok_empty(&n.del(
            &with(&conf, "prevResult", results[3].clone()),
            "c3",
            Some(&p3),
        )?)?;
        assert!(!pods[2].links()?.contains(&"eth0".to_owned()), "{mode}");
        n.assert_clean(NETWORK)?;
        // Twice, and for a container never seen: success, nothing printed.
        for id in ["c0", "c1", "c2", "c3", "never-added"] {
            ok_empty(&n.del(&conf, id, Some(&p3))?)?;
            ok_empty(&n.del(&conf, id, None)?)?;
        }
        n.assert_clean(NETWORK)?;
    }
    Ok(())
}

/// cni-notes §14: DEL releases host-local's legacy id-only files of its container.
#[test]
fn cni_del_releases_legacy_files() -> Result<()> {
    require_root();
    let n = node("legacy", None)?;
    let conf = n.conf("ptp", "1.0.0");
    // A first call creates the network folder.
    ok_empty(&n.del(&conf, "nobody", None)?)?;
    std::fs::write(n.net_dir(NETWORK).join("198.18.3.9"), "oldctr")?;
    std::fs::write(n.net_dir(NETWORK).join("198.18.3.10"), "otherctr")?;
    ok_empty(&n.del(&conf, "oldctr", None)?)?;
    assert_eq!(
        n.reservations(NETWORK)?.keys().collect::<Vec<_>>(),
        ["198.18.3.10"]
    );
    Ok(())
}

/// cni-notes §13: a second ADD of the same (container, ifname) is refused, without
/// consuming an address; other containers go on getting the next one.
#[test]
fn cni_duplicate_attachment_is_refused() -> Result<()> {
    require_root();
    let n = node("dup", None)?;
    let conf = n.conf("ptp", "1.0.0");
    let (p1, p2, p3) = (Netns::new("pod")?, Netns::new("pod")?, Netns::new("pod")?);
    assert_eq!(
        n.add_ok(&conf, "c1", &p1)?["ips"][0]["address"],
        "198.18.3.2/24"
    );
    let e = n.add(&conf, "c1", &p2)?.json()?;
    assert!(
        e["msg"]
            .as_str()
            .unwrap_or("")
            .contains("duplicate allocation"),
        "{e}"
    );
    assert!(!p2.links()?.contains(&"eth0".to_owned()));
    assert_eq!(
        n.add_ok(&conf, "c2", &p2)?["ips"][0]["address"],
        "198.18.3.3/24"
    );
    assert!(!n.add(&conf, "c1", &p3)?.ok());
    assert_eq!(n.reservations(NETWORK)?.len(), 2);
    // c1's pod still works: the failed ADDs did not touch its veth.
    p1.sh("ping -c1 -W2 198.18.3.1 >/dev/null")?;
    ok_empty(&n.del(&conf, "c1", None)?)?;
    ok_empty(&n.del(&conf, "c2", None)?)?;
    n.assert_clean(NETWORK)
}

/// cni-notes §18: round-robin, the freed address is not handed out again at once.
#[test]
fn cni_addresses_go_round_robin() -> Result<()> {
    require_root();
    let n = node("rr", None)?;
    let conf = n.conf("ptp", "1.0.0");
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("pod")).collect::<Result<_>>()?;
    let ip = |r: Value| r["ips"][0]["address"].as_str().unwrap().to_owned();
    assert_eq!(ip(n.add_ok(&conf, "a", &pods[0])?), "198.18.3.2/24");
    assert_eq!(ip(n.add_ok(&conf, "b", &pods[1])?), "198.18.3.3/24");
    ok_empty(&n.del(&conf, "a", None)?)?;
    assert_eq!(ip(n.add_ok(&conf, "c", &pods[2])?), "198.18.3.4/24");
    Ok(())
}

/// cni-notes §16, §20: requested addresses from runtimeConfig.ips, args.cni.ips and
/// CNI_ARGS IP= are honoured; a taken, gateway or foreign one is refused without residue.
#[test]
fn cni_requested_ips() -> Result<()> {
    require_root();
    let n = Node::new("req")?;
    n.write_subnet_file("198.18.3.0/24", Some("fd18:18:0:3::/64"), None)?;
    let conf = n.conf("ptp", "1.0.0");
    let addr_list = |r: &Value| -> Vec<String> {
        r["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["address"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut pods = Vec::new();
    let mut add_with =
        |id: &str, conf: &Value, cni_args: Option<&str>| -> Result<hostgw_harness::cni::Reply> {
            let p = Netns::new("pod")?;
            let path = ns_path(&p);
            let call = Call {
                args: cni_args,
                ..Call::attach("ADD", id, &path)
            };
            let reply = n.invoke(&call, conf)?;
            pods.push(p);
            Ok(reply)
        };

    let r = ok_json(&add_with(
        "rc",
        &with(&conf, "runtimeConfig", json!({"ips": ["198.18.3.77/24"]})),
        None,
    )?)?;
    assert_eq!(addr_list(&r), ["198.18.3.77/24", "fd18:18:0:3::2/64"]);
    let r = ok_json(&add_with(
        "ar",
        &with(
            &conf,
            "args",
            json!({"cni": {"ips": ["198.18.3.78", "fd18:18:0:3::78"]}}),
        ),
        None,
    )?)?;
    assert_eq!(addr_list(&r), ["198.18.3.78/24", "fd18:18:0:3::78/64"]);
    let r = ok_json(&add_with(
        "env",
        &conf,
        Some("IgnoreUnknown=1;K8S_POD_NAME=x;IP=198.18.3.79"),
    )?)?;
    assert_eq!(addr_list(&r)[0], "198.18.3.79/24");
    let r = ok_json(&add_with("envp", &conf, Some("IP=198.18.3.80/24"))?)?;
    assert_eq!(addr_list(&r)[0], "198.18.3.80/24");
    let before = n.reservations(NETWORK)?;
    assert_eq!(before.len(), 8);
    assert_eq!(before["198.18.3.77"], "rc\r\neth0");

    for (id, req) in [
        ("taken", "198.18.3.77"),
        ("gw", "198.18.3.1"),
        ("foreign", "198.18.9.9"),
        ("bcast", "198.18.3.255"),
    ] {
        let reply = add_with(
            id,
            &with(&conf, "runtimeConfig", json!({"ips": [req]})),
            None,
        )?;
        assert!(!reply.ok(), "requested {req} was granted: {}", reply.stdout);
        assert!(reply.json()?["msg"].as_str().is_some(), "{reply:?}");
        assert_eq!(
            n.reservations(NETWORK)?,
            before,
            "requested {req} left a reservation"
        );
        assert!(
            !n.host_veths()?
                .contains(&host_veth_name(NETWORK, id, "eth0"))
        );
    }
    // An unknown CNI_ARGS key without IgnoreUnknown is an environment error.
    let e = err_code(&add_with("unk", &conf, Some("FOO=bar"))?, 4)?;
    assert!(e.to_string().contains("FOO"), "{e}");
    assert_eq!(n.reservations(NETWORK)?, before);
    Ok(())
}

/// cni-notes §33: the pod MAC from CNI_ARGS MAC=, overridden by args.cni.mac, overridden
/// by runtimeConfig.mac.
#[test]
fn cni_mac_sources() -> Result<()> {
    require_root();
    let n = node("mac", None)?;
    let conf = n.conf("ptp", "1.0.0");
    let env_mac = "02:00:00:18:00:01";
    let args_mac = "02:00:00:18:00:02";
    let rc_mac = "02:00:00:18:00:03";
    let cases = [
        ("m1", conf.clone(), env_mac),
        (
            "m2",
            with(&conf, "args", json!({"cni": {"mac": args_mac}})),
            args_mac,
        ),
        (
            "m3",
            with(
                &with(&conf, "args", json!({"cni": {"mac": args_mac}})),
                "runtimeConfig",
                json!({"mac": rc_mac}),
            ),
            rc_mac,
        ),
    ];
    let env_arg = format!("MAC={env_mac}");
    for (id, c, want) in cases {
        let pod = Netns::new("pod")?;
        let path = ns_path(&pod);
        let call = Call {
            args: Some(&env_arg),
            ..Call::attach("ADD", id, &path)
        };
        let r = ok_json(&n.invoke(&call, &c)?)?;
        assert_eq!(mac_of(&pod, "eth0")?, want, "{id}");
        assert_eq!(r["interfaces"][1]["mac"], want, "{id}");
        ok_empty(&n.check(&c, id, &pod, &r)?)?;
        ok_empty(&n.del(&c, id, None)?)?;
    }
    n.assert_clean(NETWORK)
}

/// cni-notes §49, §50, §54: a prevResult given to ADD is kept and appended to, indices
/// stay right; the config's dns is reported.
#[test]
fn cni_add_keeps_prev_result_and_reports_dns() -> Result<()> {
    require_root();
    let n = node("prev", None)?;
    let pod = Netns::new("pod")?;
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "lo", "sandbox": ns_path(&pod)}],
        "ips": [{"address": "127.0.0.1/8", "interface": 0}],
        "routes": [{"dst": "198.18.200.0/24"}],
        "dns": {"nameservers": ["198.18.0.53"]}
    });
    let dns = json!({"nameservers": ["198.18.0.10"], "search": ["svc.cluster.local"]});
    let conf = with(
        &with(&n.conf("ptp", "1.0.0"), "prevResult", prev),
        "dns",
        dns.clone(),
    );
    let r = n.add_ok(&conf, "c1", &pod)?;
    let ifs = r["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 3, "{r}");
    assert_eq!(ifs[0]["name"], "lo");
    assert_eq!(ifs[2]["name"], "eth0");
    let ips = r["ips"].as_array().unwrap();
    assert_eq!(ips.len(), 2, "{r}");
    assert_eq!(ips[0], json!({"address": "127.0.0.1/8", "interface": 0}));
    assert_eq!(ips[1]["interface"], 2, "our IP points at eth0: {r}");
    for ip in ips {
        assert!(ip["interface"].as_u64().unwrap() < ifs.len() as u64);
    }
    let routes = r["routes"].as_array().unwrap();
    assert_eq!(routes[0], json!({"dst": "198.18.200.0/24"}));
    assert_eq!(routes[1], json!({"dst": "0.0.0.0/0", "gw": "198.18.3.1"}));
    assert_eq!(r["dns"], dns, "the config's dns wins");

    // Without a config dns, an earlier plugin's dns is passed on.
    let plain = with(
        &n.conf("ptp", "1.0.0"),
        "prevResult",
        json!({"cniVersion": "1.0.0", "dns": {"domain": "x"}}),
    );
    let p2 = Netns::new("pod")?;
    assert_eq!(n.add_ok(&plain, "c2", &p2)?["dns"], json!({"domain": "x"}));
    Ok(())
}

/// cni-notes §12: one container on two networks (two ifnames): each DEL releases only its own.
#[test]
fn cni_one_container_two_networks() -> Result<()> {
    require_root();
    let n = node("twonet", None)?;
    let pod = Netns::new("pod")?;
    let a = n.conf("ptp", "1.0.0");
    let mut b = with(
        &with(&a, "name", json!("podnet2")),
        "subnet",
        json!("198.18.4.0/24"),
    );
    b["bridge"] = json!("cni1");
    let path = ns_path(&pod);
    ok_json(&n.invoke(&Call::attach("ADD", "c1", &path), &a)?)?;
    let call = Call {
        ifname: Some("net1"),
        ..Call::attach("ADD", "c1", &path)
    };
    let r = ok_json(&n.invoke(&call, &b)?)?;
    assert_eq!(r["ips"][0]["address"], "198.18.4.2/24");
    assert_eq!(n.reservations("podnet2")?["198.18.4.2"], "c1\r\nnet1");
    let del1 = Call {
        ifname: Some("net1"),
        ..Call::attach("DEL", "c1", &path)
    };
    ok_empty(&n.invoke(&del1, &b)?)?;
    assert!(n.reservations("podnet2")?.is_empty());
    assert_eq!(
        n.reservations(NETWORK)?.len(),
        1,
        "DEL of net1 released eth0's address"
    );
    assert!(pod.links()?.contains(&"eth0".to_owned()));
    ok_empty(&n.del(&a, "c1", Some(&path))?)?;
    n.assert_clean(NETWORK)
}

/// The subnet file: missing is "try again" (the daemon has no lease yet), garbage is a
/// decode error, a static `subnet` makes it unnecessary; a bad static subnet is config.
#[test]
fn cni_subnet_sources() -> Result<()> {
    require_root();
    let n = Node::new("sub")?;
    let pod = Netns::new("pod")?;
    let conf = n.conf("ptp", "1.0.0");
    err_code(&n.add(&conf, "c1", &pod)?, 11)?;
    std::fs::write(&n.subnet_file, "{not json")?;
    err_code(&n.add(&conf, "c1", &pod)?, 6)?;
    for bad in ["198.18.3.1/24", "198.18.3.0/31"] {
        err_code(&n.add(&with(&conf, "subnet", json!(bad)), "c1", &pod)?, 7)?;
    }
    assert!(n.reservations(NETWORK)?.is_empty() && n.host_veths()?.is_empty());
    assert!(!pod.links()?.contains(&"eth0".to_owned()));
    let r = n.add_ok(&with(&conf, "subnet", json!("198.18.7.0/24")), "c1", &pod)?;
    assert_eq!(r["ips"][0]["address"], "198.18.7.2/24");
    Ok(())
}

/// The pod end is created directly inside the pod (IFLA_NET_NS_FD), never born in the node
/// and moved: the node's link events during ADD name no `eth0`.
#[test]
fn cni_pod_end_is_born_in_the_pod() -> Result<()> {
    require_root();
    for mode in ["ptp", "bridge"] {
        let n = node("born", None)?;
        let events = n.tmp.path().join("events");
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["-n", n.ns.name(), "monitor", "link"])
            .stdout(std::fs::File::create(&events)?);
        let mut monitor = hostgw_harness::Proc::spawn(cmd)?;
        let seen = |what: &str| std::fs::read_to_string(&events).is_ok_and(|t| t.contains(what));
        // The monitor is listening once a change of lo shows up. Each try sets a new MTU:
        // setting the same one again is no change and emits no event.
        let mut mtu = 65000;
        wait_for("ip monitor to start", Duration::from_secs(5), || {
            mtu -= 1;
            n.ns.ip(&["link", "set", "lo", "mtu", &mtu.to_string()])
                .ok()?;
            seen("lo:").then_some(())
        })?;
        let pod = Netns::new("pod")?;
        n.add_ok(&n.conf(mode, "1.0.0"), "c1", &pod)?;
        let hv = host_veth_name(NETWORK, "c1", "eth0");
        wait_for("the host veth's events", Duration::from_secs(5), || {
            seen(&hv).then_some(())
        })?;
        monitor.stop(Duration::from_secs(2));
        let text = std::fs::read_to_string(&events)?;
        // `N: eth0@…: <…>` or `Deleted N: eth0@…` would be the pod end passing through.
        let in_node = text.lines().any(|l| {
            l.split(": ")
                .nth(1)
                .is_some_and(|name| name.starts_with("eth0"))
        });
        assert!(!in_node, "{mode}: eth0 appeared in the node:\n{text}");
        assert_eq!(link(&pod, "eth0")?["linkinfo"]["info_kind"], "veth");
    }
    Ok(())
}
