//! GC and STATUS (CNI 1.1.0) of the real binary, and address exhaustion
//! (cni-notes §4 cases 19, 25, 26, 39, 58).

use anyhow::Result;
use hostgw_harness::{
    Netns,
    pod::{NETWORK, Node, err_code, host_veth_name, ok_empty, with},
    require_root,
};
use serde_json::{Value, json};

fn att(id: &str) -> Value {
    json!({"containerID": id, "ifname": "eth0"})
}

fn gc_keeps_only_valid(mode: &str) -> Result<()> {
    let n = Node::new("gc")?;
    n.write_subnet_file("198.18.3.0/24", Some("fd18:18:0:3::/64"), None)?;
    let conf = n.conf(mode, "1.1.0");
    let pods: Vec<Netns> = (0..4).map(|_| Netns::new("pod")).collect::<Result<_>>()?;
    let mut results = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        results.push(n.add_ok(&conf, &format!("g{i}"), p)?);
    }
    // Another network's pod on the same node, which this network's GC must not touch.
    let mut other = with(&conf, "name", json!("othernet"));
    other["subnet"] = json!("198.18.4.0/24");
    other["bridge"] = json!("cni1");
    let op = Netns::new("pod")?;
    n.add_ok(&other, "g0", &op)?;
    // A legacy id-only file of a gone container, and one of a valid one.
    std::fs::write(n.net_dir(NETWORK).join("198.18.3.200"), "gonectr")?;
    std::fs::write(n.net_dir(NETWORK).join("198.18.3.201"), "g0")?;
    // g3's reservation is already gone (an ADD killed after DEL released it, say): only
    // its host veth is left.
    for (ip, _) in n
        .reservations(NETWORK)?
        .into_iter()
        .filter(|(_, c)| c == "g3\r\neth0")
    {
        std::fs::remove_file(n.net_dir(NETWORK).join(ip))?;
    }
    // A GC with a missing key is refused and changes nothing.
    let before = n.reservations(NETWORK)?;
    err_code(&n.invoke(&hostgw_harness::pod::verb_call("GC"), &conf)?, 7)?;
    assert_eq!(n.reservations(NETWORK)?, before);
    assert_eq!(n.host_veths()?.len(), 5);

    // Keep g0 and g1 (with a stray space, as the id is trimmed).
    ok_empty(&n.gc(
        &conf,
        json!([att("g0"), {"containerID": " g1 ", "ifname": "eth0"}]),
    )?)?;
    let left = n.reservations(NETWORK)?;
    let holders: Vec<&str> = left.values().map(String::as_str).collect();
    assert_eq!(
        left.len(),
        5,
        "g0, g1 (two families each) and g0's legacy file: {left:?}"
    );
    assert!(
        holders
            .iter()
            .all(|h| ["g0\r\neth0", "g1\r\neth0", "g0"].contains(h)),
        "{left:?}"
    );
    let mut veths = n.host_veths()?;
    veths.sort();
    let mut want = vec![
        host_veth_name(NETWORK, "g0", "eth0"),
        host_veth_name(NETWORK, "g1", "eth0"),
        host_veth_name("othernet", "g0", "eth0"),
    ];
    want.sort();
    assert_eq!(veths, want);
    // Routes to the collected pods are gone; the kept pods still pass CHECK and work.
    let routes = n.pod_host_routes()?;
    for r in &results[2..] {
        let ip = r["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap();
        assert!(
            !routes.iter().any(|x| x.starts_with(&format!("{ip} "))),
            "{routes:?}"
        );
    }
    ok_empty(&n.check(&conf, "g0", &pods[0], &results[0])?)?;
    ok_empty(&n.check(&conf, "g1", &pods[1], &results[1])?)?;
    pods[0].sh("ping -c1 -W2 198.18.3.1 >/dev/null")?;
    assert!(n.net_dir(NETWORK).join("lock").exists());
    assert!(n.net_dir(NETWORK).join("last_reserved_ip.0").exists());

    // null and [] both mean "nothing is valid".
    ok_empty(&n.gc(&conf, Value::Null)?)?;
    assert!(n.reservations(NETWORK)?.is_empty());
    assert_eq!(n.host_veths()?, [host_veth_name("othernet", "g0", "eth0")]);
    ok_empty(&n.gc(&conf, json!([]))?)?;
    assert_eq!(
        n.reservations("othernet")?.len(),
        1,
        "another network's GC leaked over"
    );
    ok_empty(&n.gc(&other, json!([]))?)?;
    n.assert_clean(NETWORK)?;
    n.assert_clean("othernet")
}

#[test]
fn cni_gc_ptp() -> Result<()> {
    require_root();
    gc_keeps_only_valid("ptp")
}

#[test]
fn cni_gc_bridge() -> Result<()> {
    require_root();
    gc_keeps_only_valid("bridge")
}

/// GC and STATUS exist from 1.1.0 on; GC needs CNI_PATH.
#[test]
fn cni_gc_status_versions_and_env() -> Result<()> {
    require_root();
    let n = Node::new("gcv")?;
    n.write_subnet_file("198.18.3.0/24", None, None)?;
    for v in ["0.3.1", "0.4.0", "1.0.0"] {
        let conf = n.conf("ptp", v);
        let e = err_code(&n.gc(&conf, json!([]))?, 1)?;
        assert!(e["msg"].as_str().unwrap().contains("GC"), "{e}");
        err_code(&n.status(&conf)?, 1)?;
    }
    let conf = n.conf("ptp", "1.1.0");
    let call = hostgw_harness::cni::Call {
        command: "GC",
        ..Default::default()
    };
    let e = err_code(
        &n.invoke(&call, &with(&conf, "cni.dev/valid-attachments", json!([])))?,
        4,
    )?;
    assert!(e["msg"].as_str().unwrap().contains("CNI_PATH"), "{e}");
    // The legacy key name libcni also sends is read too.
    let pod = Netns::new("pod")?;
    n.add_ok(&conf, "keep", &pod)?;
    ok_empty(&n.invoke(
        &hostgw_harness::pod::verb_call("GC"),
        &with(&conf, "cni.dev/attachments", json!([att("keep")])),
    )?)?;
    assert_eq!(n.reservations(NETWORK)?.len(), 1);
    Ok(())
}

/// STATUS: ready before any ADD; 50 without a subnet file; 50 once the subnet is full,
/// ready again after a DEL. ADD past the end fails and reserves nothing.
#[test]
fn cni_status_and_exhaustion() -> Result<()> {
    require_root();
    let n = Node::new("st")?;
    let conf = n.conf("ptp", "1.1.0");
    let e = err_code(&n.status(&conf)?, 50)?;
    assert!(e["msg"].as_str().unwrap().contains("subnet"), "{e}");
    n.write_subnet_file("198.18.3.0/24", None, None)?;
    ok_empty(&n.status(&conf)?)?;

    // A static /29: .2-.6 usable.
    let small = with(&conf, "subnet", json!("198.18.6.0/29"));
    ok_empty(&n.status(&small)?)?;
    let pods: Vec<Netns> = (0..6).map(|_| Netns::new("pod")).collect::<Result<_>>()?;
    let mut got = Vec::new();
    for (i, p) in pods.iter().take(5).enumerate() {
        let r = n.add_ok(&small, &format!("s{i}"), p)?;
        got.push(r["ips"][0]["address"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        got,
        [
            "198.18.6.2/29",
            "198.18.6.3/29",
            "198.18.6.4/29",
            "198.18.6.5/29",
            "198.18.6.6/29"
        ]
    );
    let e = err_code(&n.status(&small)?, 50)?;
    assert!(
        e["msg"]
            .as_str()
            .unwrap()
            .contains("no IP addresses available"),
        "{e}"
    );
    let reply = n.add(&small, "s5", &pods[5])?;
    assert!(!reply.ok());
    let e = reply.json()?;
    assert!(
        e["msg"]
            .as_str()
            .unwrap()
            .contains("no IP addresses available"),
        "{e}"
    );
    assert_eq!(n.reservations(NETWORK)?.len(), 5);
    assert!(!pods[5].links()?.contains(&"eth0".to_owned()));
    assert!(
        !n.host_veths()?
            .contains(&host_veth_name(NETWORK, "s5", "eth0"))
    );

    ok_empty(&n.del(&small, "s1", None)?)?;
    ok_empty(&n.status(&small)?)?;
    // Round-robin wraps to the one free address.
    let r = n.add_ok(&small, "s5", &pods[5])?;
    assert_eq!(r["ips"][0]["address"], "198.18.6.3/29");
    // STATUS reads the subnet file on every call: gone again, not ready again.
    std::fs::remove_file(&n.subnet_file)?;
    err_code(&n.status(&conf)?, 50)?;
    Ok(())
}
