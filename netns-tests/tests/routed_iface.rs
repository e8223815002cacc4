//! Choosing the uplink as flannel users do: `--iface` (repeatable, names or addresses, the
//! first that exists wins), `--iface-regex`, `--iface-can-reach`, `--public-ip` with
//! `--iface`, and a multipath default route, each on a node namespace with several links;
//! the address the daemon chose is the `PublicIP` of its lease in etcd.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use hostgw_harness::{
    Proc, bin, require_root,
    routed::{Cluster, PREFIX, Spec},
    run_timeout, wait_for,
};

/// Node `i` gets two more links besides `eth0` (198.19.0.1i on the switch): `eth1` with
/// 198.19.1.1i and 198.19.1.2i, and `wlan0` with 198.19.2.1i.
fn more_links(c: &Cluster, i: usize) -> Result<()> {
    let ns = &c.nodes[i].ns;
    for (link, addrs) in [
        (
            "eth1",
            vec![
                format!("198.19.1.{}", 10 + i),
                format!("198.19.1.{}", 20 + i),
            ],
        ),
        ("wlan0", vec![format!("198.19.2.{}", 10 + i)]),
    ] {
        // A veth pair inside the node (this kernel has no dummy driver); both ends up, so
        // the link has carrier and its connected route.
        let peer = format!("{link}p");
        ns.ip(&["link", "add", link, "type", "veth", "peer", "name", &peer])?;
        for a in addrs {
            ns.ip(&["addr", "add", &format!("{a}/24"), "dev", link])?;
        }
        ns.ip(&["link", "set", &peer, "up"])?;
        ns.ip(&["link", "set", link, "up"])?;
    }
    Ok(())
}

/// The daemon's arguments without any identity flag: those are the test's.
fn base_args(c: &Cluster, i: usize, name: &str) -> Vec<String> {
    let n = &c.nodes[i];
    let mut a: Vec<String> = [
        "run",
        "--etcd-endpoints",
        &c.etcd.endpoint,
        "--node-name",
        name,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(["--subnet-file".into(), n.subnet_file.display().to_string()]);
    a
}

/// Starts the daemon on node `i` as `name` with `flags`; returns it and its lease's PublicIP.
fn public_ip_with(c: &Cluster, i: usize, name: &str, flags: &[&str]) -> Result<(Proc, String)> {
    let mut args = base_args(c, i, name);
    args.extend(flags.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = c.nodes[i].ns.spawn(bin("hostgw-routed"), &args)?;
    let lease = wait_for(&format!("{name}'s lease"), Duration::from_secs(20), || {
        let leases = c.etcd.get_prefix(&format!("{PREFIX}/subnets/")).ok()?;
        leases
            .into_iter()
            .map(|(_, v)| v)
            .find(|v| v.contains(&format!(r#""NodeName":"{name}""#)))
    })?;
    let v: serde_json::Value = serde_json::from_str(&lease)?;
    let ip = v["PublicIP"].as_str().context("PublicIP")?.to_owned();
    Ok((daemon, ip))
}

#[test]
fn routed_iface_flags_choose_the_uplink_like_flannels() -> Result<()> {
    require_root();
    let c = Cluster::new(Spec {
        nodes: 4,
        ..Spec::default()
    })?;
    for i in 0..4 {
        more_links(&c, i)?;
    }
    let cases: [(&str, &[&str], &str); 4] = [
        (
            "by-name",
            &["--iface", "eth9", "--iface", "eth1"],
            "198.19.1.10",
        ),
        ("by-regex", &["--iface-regex", "^wl"], "198.19.2.11"),
        (
            "can-reach",
            &["--iface-can-reach", "198.19.2.99"],
            "198.19.2.12",
        ),
        (
            "ip-on-iface",
            &["--iface", "eth1", "--public-ip", "198.19.1.23"],
            "198.19.1.23",
        ),
    ];
    let mut daemons = Vec::new();
    for (i, (name, flags, want)) in cases.iter().enumerate() {
        let (d, ip) = public_ip_with(&c, i, name, flags)?;
        assert_eq!(ip, *want, "{name} {flags:?}");
        daemons.push(d);
    }
    Ok(())
}

#[test]
fn routed_iface_by_address_and_multipath_default_route() -> Result<()> {
    require_root();
    let c = Cluster::new(Spec {
        nodes: 2,
        ..Spec::default()
    })?;
    more_links(&c, 0)?;
    more_links(&c, 1)?;
    let (_a, ip) = public_ip_with(&c, 0, "by-address", &["--iface", "198.19.2.10"])?;
    assert_eq!(ip, "198.19.2.10");
    // ECMP default route: no RTA_OIF, only nexthops; the first hop's link is the uplink.
    c.nodes[1].ns.ip(&[
        "route",
        "add",
        "default",
        "nexthop",
        "via",
        "198.19.0.1",
        "dev",
        "eth0",
        "nexthop",
        "via",
        "198.19.1.1",
        "dev",
        "eth1",
    ])?;
    let (_b, ip) = public_ip_with(&c, 1, "multipath", &[])?;
    assert_eq!(ip, c.nodes[1].ip);
    Ok(())
}

#[test]
fn routed_iface_that_does_not_exist_fails_at_once_saying_which() -> Result<()> {
    require_root();
    let c = Cluster::new(Spec {
        nodes: 1,
        ..Spec::default()
    })?;
    let mut args = base_args(&c, 0, "nowhere");
    args.extend(["--iface".into(), "eth8,eth9".into()]);
    let mut cmd = c.nodes[0].ns.cmd(bin("hostgw-routed"));
    cmd.args(&args);
    let out = run_timeout(&mut cmd, Duration::from_secs(20))?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        bail!("started without an uplink: {err}");
    }
    assert!(err.contains("none of --iface eth8, eth9 exists"), "{err}");
    assert!(c.etcd.get_prefix(&format!("{PREFIX}/subnets/"))?.is_empty());
    Ok(())
}
