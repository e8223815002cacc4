//! CHECK of the real binary: passes right after ADD, and fails for each thing ADD made
//! that goes missing (cni-notes §4 cases 24, 36, 48, 52).

use anyhow::Result;
use hostgw_harness::{
    Netns,
    pod::{NETWORK, Node, err_code, host_veth_name, ok_empty, with},
    require_root,
};
use serde_json::Value;

/// What to break: (node, pod, host veth name, ADD result).
type Damage<'a> = (
    &'a str,
    Box<dyn Fn(&Node, &Netns, &str, &Value) -> Result<()> + 'a>,
);

/// `ips[i].address` of a result (`198.18.3.5/24`).
fn addr(r: &Value, i: usize) -> String {
    r["ips"][i]["address"].as_str().unwrap().to_owned()
}

/// The same address as a host route destination (`198.18.3.5/32`, `fd18:…::5/128`).
fn host_dst(r: &Value, i: usize) -> String {
    let a = addr(r, i);
    let ip = a.split('/').next().unwrap();
    if ip.contains(':') {
        format!("{ip}/128")
    } else {
        format!("{ip}/32")
    }
}

fn ip(ns: &Netns, args: &[&str]) -> Result<()> {
    ns.ip(args).map(drop)
}

/// For each damage: a fresh pod, CHECK passes, damage, CHECK fails with a message, DEL
/// still cleans up.
fn check_detects(mode: &str, dual: bool, damages: Vec<Damage>) -> Result<()> {
    let n = Node::new("chk")?;
    n.write_subnet_file("198.18.3.0/24", dual.then_some("fd18:18:0:3::/64"), None)?;
    let conf = n.conf(mode, "1.0.0");
    for (i, (what, damage)) in damages.iter().enumerate() {
        let id = format!("k{i}");
        let pod = Netns::new("pod")?;
        let r = n.add_ok(&conf, &id, &pod)?;
        ok_empty(&n.check(&conf, &id, &pod, &r)?)?;
        // Twice: CHECK changes nothing.
        ok_empty(&n.check(&conf, &id, &pod, &r)?)?;
        let hv = host_veth_name(NETWORK, &id, "eth0");
        damage(&n, &pod, &hv, &r)?;
        let reply = n.check(&conf, &id, &pod, &r)?;
        assert!(!reply.ok(), "{mode}: CHECK passed after: {what}");
        let e = reply.json()?;
        assert!(
            e["code"].as_u64().is_some() && e["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{e}"
        );
        ok_empty(&n.del(&conf, &id, None)?)?;
    }
    // Renamed host veths are not ours any more by name; remove what DEL could not find.
    for l in n.ns.links()? {
        if l.starts_with("moved") {
            n.ns.ip(&["link", "del", &l])?;
        }
    }
    n.assert_clean(NETWORK)
}

fn common<'a>() -> Vec<Damage<'a>> {
    vec![
        (
            "pod eth0 deleted",
            Box::new(|_, pod, _, _| ip(pod, &["link", "del", "eth0"])),
        ),
        (
            "host veth renamed away",
            Box::new(|n, _, hv, _| {
                ip(&n.ns, &["link", "set", hv, "down"])?;
                ip(
                    &n.ns,
                    &["link", "set", hv, "name", &format!("moved{}", &hv[3..11])],
                )
            }),
        ),
        (
            "v4 address removed",
            Box::new(|_, pod, _, r| ip(pod, &["addr", "del", &addr(r, 0), "dev", "eth0"])),
        ),
        (
            "v4 default route removed",
            Box::new(|_, pod, _, _| ip(pod, &["route", "del", "default"])),
        ),
        (
            "reservation file removed",
            Box::new(|n, _, _, _| {
                let files = n.reservations(NETWORK)?;
                for f in files.keys() {
                    std::fs::remove_file(n.net_dir(NETWORK).join(f))?;
                }
                Ok(())
            }),
        ),
        (
            "pod MAC changed",
            Box::new(|_, pod, _, _| {
                ip(
                    pod,
                    &["link", "set", "eth0", "address", "02:00:00:18:99:99"],
                )
            }),
        ),
    ]
}

#[test]
fn cni_check_detects_damage_ptp() -> Result<()> {
    require_root();
    let mut d = common();
    d.push((
        "host /32 route removed",
        Box::new(|n, _, hv, r| ip(&n.ns, &["route", "del", &host_dst(r, 0), "dev", hv])),
    ));
    d.push((
        "gateway removed from host veth",
        Box::new(|n, _, hv, _| ip(&n.ns, &["addr", "del", "198.18.3.1/32", "dev", hv])),
    ));
    check_detects("ptp", false, d)
}

#[test]
fn cni_check_detects_damage_bridge() -> Result<()> {
    require_root();
    let mut d = common();
    d.push((
        "host veth taken off the bridge",
        Box::new(|n, _, hv, _| ip(&n.ns, &["link", "set", hv, "nomaster"])),
    ));
    check_detects("bridge", false, d)
}

#[test]
fn cni_check_detects_damage_dual_stack() -> Result<()> {
    require_root();
    let v6: Vec<Damage> = vec![
        (
            "v6 address removed",
            Box::new(|_, pod, _, r| ip(pod, &["addr", "del", &addr(r, 1), "dev", "eth0"])),
        ),
        (
            "v6 default route removed",
            Box::new(|_, pod, _, _| ip(pod, &["-6", "route", "del", "default"])),
        ),
        (
            "v6 reservation removed",
            Box::new(|n, _, _, r| {
                Ok(std::fs::remove_file(
                    n.net_dir(NETWORK)
                        .join(addr(r, 1).split('/').next().unwrap()),
                )?)
            }),
        ),
    ];
    let mut ptp = v6;
    ptp.push((
        "host /128 route removed",
        Box::new(|n, _, hv, r| ip(&n.ns, &["-6", "route", "del", &host_dst(r, 1), "dev", hv])),
    ));
    check_detects("ptp", true, ptp)?;
    let bridge: Vec<Damage> = vec![(
        "v6 address removed",
        Box::new(|_, pod, _, r| ip(pod, &["addr", "del", &addr(r, 1), "dev", "eth0"])),
    )];
    check_detects("bridge", true, bridge)
}

/// CHECK needs prevResult (7), a version that has CHECK (1), and a prevResult that names
/// this pod; a later plugin's extra routes do not upset it.
#[test]
fn cni_check_protocol() -> Result<()> {
    require_root();
    let n = Node::new("chkp")?;
    n.write_subnet_file("198.18.3.0/24", None, None)?;
    let conf = n.conf("ptp", "1.0.0");
    let pod = Netns::new("pod")?;
    let other = Netns::new("pod")?;
    let r = n.add_ok(&conf, "c1", &pod)?;
    let path = hostgw_harness::pod::ns_path(&pod);
    let call = hostgw_harness::cni::Call::attach("CHECK", "c1", &path);
    err_code(&n.invoke(&call, &conf)?, 7)?;
    for v in ["0.3.0", "0.3.1"] {
        let old = with(
            &with(&conf, "cniVersion", v.into()),
            "prevResult",
            r.clone(),
        );
        let e = err_code(&n.invoke(&call, &old)?, 1)?;
        assert_eq!(e["msg"], "config version does not allow CHECK");
    }
    // The same result checked against another pod's namespace fails.
    assert!(!n.check(&conf, "c1", &other, &r)?.ok());
    // Another attachment's id with this pod's result: no reservation of its own.
    assert!(!n.check(&conf, "c2", &pod, &r)?.ok());
    // A chained plugin added a route: CHECK still passes.
    pod.ip(&["route", "add", "198.18.200.0/24", "via", "198.18.3.1"])?;
    ok_empty(&n.check(&conf, "c1", &pod, &r)?)?;
    // A prevResult with extra routes that do exist is fine; with one that does not, fails.
    let mut more: Value = r.clone();
    more["routes"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"dst": "198.18.200.0/24", "gw": "198.18.3.1"}));
    ok_empty(&n.check(&conf, "c1", &pod, &more)?)?;
    more["routes"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"dst": "198.18.201.0/24", "gw": "198.18.3.1"}));
    assert!(!n.check(&conf, "c1", &pod, &more)?.ok());
    ok_empty(&n.del(&conf, "c1", None)?)?;
    n.assert_clean(NETWORK)
}
