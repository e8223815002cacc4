//! Masquerade users can live with (`--ip-masq`): a server in another namespace reports the
//! source address it sees, for each case and both families. Pod to pod on another node and
//! pod to any node of the cluster keep the pod's address; pod to an outside server shows
//! the node's; a `--no-masquerade-cidr` destination sees the pod again. The node sets
//! follow the leases as nodes come and go.

use std::{process::Stdio, time::Duration};

use anyhow::{Context, Result};
use hostgw_harness::{
    Netns, Proc,
    cluster::{add_pod, tcp_get},
    require_root,
    routed::{CONFIG_V6, Cluster, Spec},
    wait_for,
};

const PORT: u16 = 7000;

/// Answers every connection on :7000 (both families) with the peer's address.
const WHO: &str = "import socket
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('::', 7000))
s.listen()
while True:
    c, a = s.accept()
    ip = a[0][7:] if a[0].startswith('::ffff:') else a[0]
    c.sendall(ip.encode() + b'\\n')
    c.close()
";

fn who_server(ns: &Netns) -> Result<Proc> {
    let mut cmd = ns.cmd("python3");
    cmd.args(["-c", WHO])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let p = Proc::spawn(cmd)?;
    wait_for("address server", Duration::from_secs(5), || {
        ns.sh("ss -Hltn").ok()?.contains(":7000 ").then_some(())
    })?;
    Ok(p)
}

/// The source address the server at `to` saw for a connection from `from`.
fn seen(from: &Netns, to: &str) -> Result<String> {
    let mut last = String::new();
    wait_for(
        &format!("answer from {to}"),
        Duration::from_secs(5),
        || match tcp_get(from, to, PORT) {
            Ok(s) if !s.is_empty() => Some(s),
            Ok(_) => None,
            Err(e) => {
                last = e.to_string();
                None
            }
        },
    )
    .with_context(|| last.clone())
}

/// An outside host on the segment at `.host` (not a node: no lease).
fn outside(c: &Cluster, port: &str, host: u32) -> Result<Netns> {
    let ns = Netns::new("out")?;
    c.attach_to_segment(&ns, port, host)?;
    Ok(ns)
}

fn node_set(c: &Cluster, i: usize, set: &str) -> String {
    c.nodes[i]
        .ns
        .sh(&format!("nft list set inet hostgw {set}"))
        .unwrap_or_default()
}

#[test]
fn routed_masquerade_spares_pods_nodes_and_exceptions_both_families() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec {
        nodes: 2,
        config: CONFIG_V6,
        ..Spec::default()
    })?;
    for i in 0..2 {
        c.nodes[i].extra_args = [
            "--ip-masq",
            "--no-masquerade-cidr",
            "198.19.0.201/32",
            "--no-masquerade-cidr",
            "fd19:19::c9/128",
        ]
        .map(String::from)
        .to_vec();
    }
    c.nodes[0].extra_args.push("--ip-masq-random-fully".into());
    c.start_all()?;
    c.wait_converged(Duration::from_secs(20))?;
    let (a, b) = (add_pod(&c, 0, "a0")?, add_pod(&c, 1, "b0")?);
    let (a4, a6) = (a.ip.clone(), a.ip6.clone().context("dual-stack pod")?);
    let b6 = b.ip6.clone().context("dual-stack pod")?;
    let far = outside(&c, "pfar", 200)?;
    let exc = outside(&c, "pexc", 201)?;
    // The exception server sees pod addresses, so it needs the way back to them.
    exc.ip(&["route", "add", "198.18.0.0/16", "via", &c.nodes[0].ip])?;
    exc.ip(&["-6", "route", "add", "fd18:18::/48", "via", &c.nodes[0].ip6])?;
    let _servers = [
        who_server(&b.ns)?,
        who_server(&c.nodes[1].ns)?,
        who_server(&far)?,
        who_server(&exc)?,
    ];
    let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
    let cases = [
        ("pod -> pod on another node", b.ip.as_str(), a4.as_str()),
        ("pod -> pod on another node, IPv6", b6.as_str(), a6.as_str()),
        ("pod -> node B", n1.ip.as_str(), a4.as_str()),
        ("pod -> node B, IPv6", n1.ip6.as_str(), a6.as_str()),
        ("pod -> outside server", "198.19.0.200", n0.ip.as_str()),
        (
            "pod -> outside server, IPv6",
            "fd19:19::c8",
            n0.ip6.as_str(),
        ),
        ("pod -> exception CIDR", "198.19.0.201", a4.as_str()),
        ("pod -> exception CIDR, IPv6", "fd19:19::c9", a6.as_str()),
    ];
    for (what, to, want) in cases {
        assert_eq!(seen(&a.ns, to)?, want, "{what}");
    }
    let table = n0.ns.sh("nft list table inet hostgw")?;
    assert!(table.contains("masquerade random,fully-random"), "{table}");
    let plain = n1.ns.sh("nft list table inet hostgw")?;
    assert!(
        !plain.contains("fully-random") && plain.contains("masquerade"),
        "{plain}"
    );
    node_sets_follow_the_leases(&mut c)
}

/// A node joins: every node's set gains its address; it leaves: they lose it again. The
/// table itself is never remade (its hash comment stays).
fn node_sets_follow_the_leases(c: &mut Cluster) -> Result<()> {
    let before = c.nodes[0]
        .ns
        .sh("nft list table inet hostgw | grep comment")?;
    assert!(node_set(c, 0, "nodes4").contains(&c.nodes[1].ip));
    assert!(node_set(c, 0, "nodes6").contains(&c.nodes[1].ip6));
    let i = c.add_node()?;
    c.nodes[i].extra_args = vec!["--ip-masq".into()];
    c.start(i)?;
    let ip = c.nodes[i].ip.clone();
    wait_for("new node in the set", Duration::from_secs(5), || {
        node_set(c, 0, "nodes4").contains(&ip).then_some(())
    })
    .with_context(|| c.logs())?;
    let ip0 = c.nodes[0].ip.clone();
    wait_for("the new node's own set", Duration::from_secs(5), || {
        node_set(c, i, "nodes4").contains(&ip0).then_some(())
    })?;
    c.nodes[i]
        .daemon
        .take()
        .unwrap()
        .stop(Duration::from_secs(5));
    c.cli(i, "release", &[])?;
    wait_for("left node out of the set", Duration::from_secs(5), || {
        (!node_set(c, 0, "nodes4").contains(&ip)).then_some(())
    })?;
    let after = c.nodes[0]
        .ns
        .sh("nft list table inet hostgw | grep comment")?;
    assert_eq!(before, after);
    // Each change wrote only what changed (the node's two addresses), not both sets whole.
    let log = c.log(0);
    let updates: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("exempt from masquerade updated"))
        .collect();
    assert!(
        updates.iter().any(|l| l.contains("added=2 removed=0")),
        "{log}"
    );
    assert!(
        updates.iter().any(|l| l.contains("added=0 removed=2")),
        "{log}"
    );
    Ok(())
}
