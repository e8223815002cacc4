//! ADD → CHECK → DEL for every supported CNI version in both modes, with the exact result
//! shape of each version (cni-notes §4 cases 9, 10, 36, 52, 56).

use anyhow::Result;
use hostgw_harness::{
    Netns,
    pod::{NETWORK, Node, err_code, host_veth_name, ns_path, ok_empty, ok_json, with},
    require_root,
};
use serde_json::json;

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn every_version(mode: &str) -> Result<()> {
    let n = Node::new("ver")?;
    n.write_subnet_file("198.18.3.0/24", Some("fd18:18:0:3::/64"), Some(1400))?;
    let pod_index = if mode == "bridge" { 2 } else { 1 };
    for (i, v) in VERSIONS.iter().enumerate() {
        let conf = n.conf(mode, v);
        let id = format!("v{i}");
        let pod = Netns::new("pod")?;
        let reply = n.add(&conf, &id, &pod)?;
        let r = ok_json(&reply)?;
        assert_eq!(
            reply.stdout.trim().lines().count(),
            1,
            "one JSON document on stdout"
        );
        assert_eq!(r["cniVersion"], *v);
        let keys: Vec<&String> = r.as_object().unwrap().keys().collect();
        assert!(
            keys.iter().all(|k| ["cniVersion", "interfaces", "ips", "routes", "dns"].contains(&k.as_str())),
            "{v}: unexpected top-level keys {keys:?}"
        );
        assert!(r.get("ip4").is_none() && r.get("ip6").is_none());

        let ifs = r["interfaces"].as_array().unwrap();
        assert_eq!(ifs.len(), pod_index + 1, "{v}: {r}");
        assert_eq!(ifs[pod_index]["name"], "eth0");
        assert_eq!(ifs[pod_index]["sandbox"], ns_path(&pod));
        assert_eq!(
            ifs[pod_index - 1]["name"],
            host_veth_name(NETWORK, &id, "eth0").as_str()
        );
        for (j, iface) in ifs.iter().enumerate() {
            assert_eq!(
                iface["mac"].as_str().map(str::len),
                Some(17),
                "{v}: {iface}"
            );
            let has_mtu = iface.get("mtu").is_some();
            if *v == "1.1.0" && j >= pod_index - 1 {
                assert_eq!(
                    iface["mtu"], 1400,
                    "{v}: veth ends report their MTU: {iface}"
                );
            } else if *v != "1.1.0" {
                assert!(!has_mtu, "{v}: mtu is a 1.1.0 field: {iface}");
            }
            if j != pod_index {
                assert!(
                    iface.get("sandbox").is_none(),
                    "{v}: host interface with sandbox: {iface}"
                );
            }
        }

        let ips = r["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 2, "{v}: {r}");
        for (ip, fam) in ips.iter().zip(["4", "6"]) {
            assert_eq!(ip["interface"], pod_index, "{v}: {ip}");
            if v.starts_with("0.") {
                assert_eq!(
                    ip["version"], fam,
                    "{v}: ips[].version is required before 1.0.0"
                );
            } else {
                assert!(
                    ip.get("version").is_none(),
                    "{v}: ips[].version is gone in 1.x: {ip}"
                );
            }
        }
        assert_eq!(ips[0]["gateway"], "198.18.3.1");
        assert_eq!(ips[1]["gateway"], "fd18:18:0:3::1");
        assert_eq!(
            r["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": "198.18.3.1"}, {"dst": "::/0", "gw": "fd18:18:0:3::1"}]),
            "{v}"
        );

        // CHECK from 0.4.0 on, with the ADD result as prevResult; refused before.
        let check = n.check(&conf, &id, &pod, &r)?;
        if v.starts_with("0.3") {
            let e = err_code(&check, 1)?;
            assert_eq!(e["msg"], "config version does not allow CHECK");
        } else {
            ok_empty(&check)?;
        }
        // DEL: runtimes pass prevResult from 0.4.0 on.
        let del_conf = if v.starts_with("0.3") {
            conf.clone()
        } else {
            with(&conf, "prevResult", r.clone())
        };
        ok_empty(&n.del(&del_conf, &id, Some(&ns_path(&pod)))?)?;
        assert!(!pod.links()?.contains(&"eth0".to_owned()), "{v}");
        n.assert_clean(NETWORK)?;
        ok_empty(&n.del(&del_conf, &id, Some(&ns_path(&pod)))?)?;
    }
    Ok(())
}

#[test]
fn cni_every_version_ptp() -> Result<()> {
    require_root();
    every_version("ptp")
}

#[test]
fn cni_every_version_bridge() -> Result<()> {
    require_root();
    every_version("bridge")
}

/// A prevResult in an older version than the config (libcni converts, but a chained
/// plugin may not) is still read on CHECK and DEL.
#[test]
fn cni_prev_result_of_another_version() -> Result<()> {
    require_root();
    let n = Node::new("verx")?;
    n.write_subnet_file("198.18.3.0/24", None, None)?;
    let pod = Netns::new("pod")?;
    let old = n.add_ok(&n.conf("ptp", "0.4.0"), "x1", &pod)?;
    assert_eq!(old["ips"][0]["version"], "4");
    let conf = n.conf("ptp", "1.1.0");
    ok_empty(&n.check(&conf, "x1", &pod, &old)?)?;
    ok_empty(&n.del(&with(&conf, "prevResult", old), "x1", None)?)?;
    n.assert_clean(NETWORK)
}
