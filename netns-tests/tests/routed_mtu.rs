//! Per-peer MTU: each lease carries its node's link MTU, and the route to a peer whose MTU
//! differs carries `mtu min(own, peer)`. Node 0 is a jumbo-frame node (9000), node 1 is at
//! 1500, the switch port of node 1 at 1500 too: a larger frame to it is dropped unseen.

use std::time::Duration;

use anyhow::{Context, Result};
use hostgw_harness::{
    Netns, Proc,
    cluster::{Pod, add_pod, ping, status_json},
    require_root,
    routed::{Cluster, Datapath, Spec, metric, subnet_key},
    run_timeout, wait_for,
};

/// `ping -M do -s 8000 -c 1` from `from` to `to`: its output.
fn big_ping(from: &Netns, to: &str) -> Result<String> {
    let o = run_timeout(
        from.cmd("ping")
            .args(["-n", "-M", "do", "-s", "8000", "-c", "1", "-W", "2", to]),
        Duration::from_secs(5),
    )?;
    Ok(String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
}

/// Counts what one connection on :5001 sends until it half-closes, and answers the count.
const SERVER: &str = "import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 5001))
s.listen()
c, _ = s.accept()
n = 0
while True:
    b = c.recv(65536)
    if not b:
        break
    n += len(b)
c.sendall(str(n).encode())
c.close()
";

/// 100 writes of 8,000 bytes, then a half-close; prints the server's count. 10 s bound.
const CLIENT: &str = "import socket, sys
c = socket.create_connection((sys.argv[1], 5001), timeout=10)
d = b'x' * 8000
for _ in range(100):
    c.sendall(d)
c.shutdown(socket.SHUT_WR)
print(c.recv(64).decode())
";

/// 100 writes of 8,000 bytes over TCP from `from` to a server in `server` at `to`: the
/// bytes the server received (an error if the transfer stalled).
fn tcp_transfer(from: &Netns, server: &Netns, to: &str) -> Result<u64> {
    let mut srv = server.cmd("python3");
    srv.args(["-c", SERVER])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _srv = Proc::spawn(srv)?;
    wait_for("server listening", Duration::from_secs(5), || {
        server.sh("ss -Hltn").ok()?.contains(":5001 ").then_some(())
    })?;
    let o = run_timeout(
        from.cmd("python3").args(["-c", CLIENT, to]),
        Duration::from_secs(15),
    )?;
    let out = String::from_utf8_lossy(&o.stdout);
    out.trim().parse().with_context(|| {
        format!(
            "transfer failed: {out} {}",
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

#[test]
fn routed_jumbo_node_and_1500_node_talk_through_the_route_mtu() -> Result<()> {
    require_root();
    jumbo_and_1500(Datapath::from_env()?)
}

/// The fast path checks each packet (each segment of a GSO one) against the route's mtu:
/// a DF packet too big for the peer goes to the stack, which answers frag-needed, instead
/// of being redirected into a black hole.
#[test]
fn routed_fastpath_jumbo_node_and_1500_node_talk_through_the_route_mtu() -> Result<()> {
    require_root();
    jumbo_and_1500(Datapath::Ebpf { big_tcp: false })
}

fn jumbo_and_1500(dp: Datapath) -> Result<()> {
    let mut c = Cluster::new(Spec {
        nodes: 2,
        ..Spec::default()
    })?;
    c.set_datapath(dp);
    c.nodes[0].ns.ip(&["link", "set", "eth0", "mtu", "9000"])?;
    c.sw.ip(&["link", "set", "p0", "mtu", "9000"])?;
    c.start_all()?;
    c.wait_converged(Duration::from_secs(20))?;
    let sub1 = c.wait_subnet(1)?;
    let sub0 = c.wait_subnet(0)?;
    // The leases carry each node's MTU.
    let lease0 = c
        .etcd
        .ctl(&["get", "--print-value-only", &subnet_key(&sub0)])?;
    assert!(lease0.contains(r#""MTU":9000"#), "{lease0}");
    let lease1 = c
        .etcd
        .ctl(&["get", "--print-value-only", &subnet_key(&sub1)])?;
    assert!(lease1.contains(r#""MTU":1500"#), "{lease1}");
    // Node 0's route to node 1 carries 1500; node 1's route to node 0 carries its own 1500.
    let route = wait_for("mtu on the route", Duration::from_secs(5), || {
        let r = c.nodes[0].ns.ip(&["route", "show", "exact", &sub1]).ok()?;
        r.contains("mtu lock 1500").then_some(r)
    })
    .with_context(|| c.logs())?;
    assert!(route.contains(&format!("via {}", c.nodes[1].ip)), "{route}");
    let back = c.nodes[1].ns.ip(&["route", "show", "exact", &sub0])?;
    assert!(back.contains("mtu lock 1500"), "{back}");
    let st = status_json(&c, 0)?;
    let peer = &st["peers"][0];
    assert_eq!(peer["mtu_mismatch"]["own"], 9000, "{st}");
    assert_eq!(peer["mtu_mismatch"]["peer"], 1500, "{st}");
    let text = c.cli(0, "status", &[])?;
    assert!(text.contains("mtu 1500 (peer 1500, ours 9000)"), "{text}");

    let a = add_pod(&c, 0, "a0")?;
    let b = add_pod(&c, 1, "b0")?;
    let a_mtu = a.ns.ip_json(&["link", "show", "eth0"])?[0]["mtu"].clone();
    assert_eq!(a_mtu, 9000, "pod on the jumbo node");
    ping(&a.ns, &b.ip)?;
    let got = tcp_transfer(&a.ns, &b.ns, &b.ip)?;
    assert_eq!(got, 800_000, "8,000-byte writes pod A -> pod B");
    // A DF packet too big for node 1 is refused by node 0 with "frag needed, mtu 1500":
    // the sender learns the path MTU instead of losing the packet.
    let out = big_ping(&a.ns, &b.ip)?;
    assert!(
        out.contains("mtu = 1500") || out.contains("mtu=1500"),
        "{out}"
    );
    if matches!(dp, Datapath::Ebpf { .. }) {
        // The transfer went the fast path; the too-big packet went to the stack.
        c.wait_fast_pathed(0, 0.0)?;
        let m = c.metrics(0)?;
        let big = metric(&m, "hostgw_ebpf_packets_total", &["reason=\"frag_needed\""]);
        assert!(big >= 1.0, "frag_needed counted: {m}");
    }
    black_hole_without_the_mtu(&mut c, &b, &sub1)
}

/// Without the route's mtu (daemon stopped, mtu taken off by hand) the same packet leaves
/// node 0 at 8,028 bytes and is dropped at node 1's 1500 switch port: no answer, no error.
/// Back with the daemon, the mtu is back.
fn black_hole_without_the_mtu(c: &mut Cluster, pod_b: &Pod, sub1: &str) -> Result<()> {
    let b = pod_b.ip.as_str();
    c.nodes[0]
        .daemon
        .take()
        .unwrap()
        .stop(Duration::from_secs(5));
    let via = c.nodes[1].ip.clone();
    c.nodes[0]
        .ns
        .ip(&["route", "replace", sub1, "via", &via, "proto", "75"])?;
    // A fresh pod: the first one has learned the path MTU, which would hide the black hole.
    let a = add_pod(c, 0, "a1")?;
    ping(&a.ns, b)?;
    let out = run_timeout(
        a.ns.cmd("ping").args([
            "-n", "-M", "do", "-s", "8000", "-c", "2", "-W", "1", "-i", "0.5", b,
        ]),
        Duration::from_secs(6),
    )?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("100% packet loss") && !text.contains("mtu"),
        "expected a silent black hole without the route mtu:\n{text}"
    );
    // TCP alone survives even so: pod B's SYN advertises MSS 1460, so no segment is larger
    // than node 1 takes. What black-holes is what no receiver's MSS bounds (the DF packet
    // above: ICMP, UDP with DF, tunnels), and that is what the route mtu repairs.
    assert_eq!(tcp_transfer(&a.ns, &pod_b.ns, b)?, 800_000);
    c.start(0)?;
    wait_for("mtu repaired", Duration::from_secs(10), || {
        let r = c.nodes[0].ns.ip(&["route", "show", "exact", sub1]).ok()?;
        r.contains("mtu lock 1500").then_some(())
    })
    .with_context(|| c.logs())
}
