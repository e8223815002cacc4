//! Root tests of the fast path on two namespaced nodes (see common/mod.rs for the topology).
//! Each asserts on the programs' own counters, so a test passes only if the packets really
//! took the path it claims.

mod common;

use anyhow::Result;
use common::*;
use hostgw_ebpf::{
    Attached, BIG_TCP_SIZE, FastPath, IfaceKind, Options, Reason, probe, set_gso_gro_max,
};

/// Fast-pathed packets: the sum of both redirect kinds.
fn fast(fp: &FastPath) -> u64 {
    fp.counters().unwrap().fast_packets()
}

fn count(fp: &FastPath, r: Reason) -> u64 {
    fp.counters().unwrap().get(r).packets
}

#[test]
fn pod_to_pod_across_nodes_is_fast_pathed_ipv4_and_ipv6() -> Result<()> {
    on_cluster(|c, bpffs| {
        let (fa, fb) = c.fast_paths(bpffs)?;
        reach(&c.a.pod, &c.b.pod_ip6())?;
        let (a0, b0) = (fa.counters()?, fb.counters()?);
        ping(&c.a.pod, &c.b.pod_ip4(), 20)?;
        ping(&c.a.pod, &c.b.pod_ip6(), 20)?;
        let (a1, b1) = (fa.counters()?, fb.counters()?);
        // Each echo request leaves node a by redirect and enters pod b by peer redirect; each
        // reply the other way round.
        for (before, after) in [(&a0, &a1), (&b0, &b1)] {
            for r in [Reason::FwdRedirect, Reason::FwdPeer] {
                let grew = after.get(r).packets - before.get(r).packets;
                assert!(
                    grew >= 40,
                    "{r} grew by {grew}, want >= 40 (40 pings, v4 + v6)"
                );
            }
        }
        c.assert_tcp_fast_pathed(&fa)?;
        // Per-interface status: all four links attached and running this load's program.
        for (fp, node) in [(&fa, &c.a), (&fb, &c.b)] {
            let st = fp.status()?;
            assert_eq!(st.len(), 2, "{st:?}");
            assert!(st.iter().all(|s| s.attached && s.current), "{st:?}");
            let kinds: Vec<_> = st.iter().map(|s| (s.ifindex, s.kind)).collect();
            assert!(kinds.contains(&(node.ifindex(UPLINK), Some(IfaceKind::Uplink))));
            assert!(kinds.contains(&(node.ifindex(POD_VETH), Some(IfaceKind::Pod))));
        }
        Ok(())
    })
}

#[test]
fn pod_to_pod_on_one_node_goes_peer_to_peer() -> Result<()> {
    require_root();
    let c = cluster()?;
    let second = c.a.extra_pod("hv1", 3)?;
    with_bpffs(|bpffs| -> Result<()> {
        let fa = c.a.fast_path(bpffs)?;
        let hv1 = c.a.ifindex("hv1");
        in_netns(&c.a.ns, || fa.attach_pod(hv1))?;
        // The first packets resolve the neighbours through the stack.
        reach(&c.a.pod, "198.18.1.3")?;
        reach(&second, &c.a.pod_ip6())?;
        let (peer0, redirect0) = (count(&fa, Reason::FwdPeer), count(&fa, Reason::FwdRedirect));
        ping(&c.a.pod, "198.18.1.3", 10)?;
        ping(&second, &c.a.pod_ip6(), 10)?;
        // Both directions, both families: from one pod's veth straight into the other pod.
        let peer = count(&fa, Reason::FwdPeer) - peer0;
        assert!(peer >= 40, "peer redirects grew by {peer}, want >= 40");
        assert_eq!(
            count(&fa, Reason::FwdRedirect),
            redirect0,
            "same-node traffic left by the uplink"
        );
        Ok(())
    })
}

#[test]
fn withdrawn_route_stops_the_fast_path_at_once_and_a_repair_restores_it() -> Result<()> {
    on_cluster(|c, bpffs| {
        let (fa, _fb) = c.fast_paths(bpffs)?;
        let (redirect0, nofwd0) = (
            count(&fa, Reason::FwdRedirect),
            count(&fa, Reason::NotForwarded),
        );
        c.a.ns.ip(&["route", "del", "198.18.2.0/24"])?;
        // No route in node a's FIB: the program must not forward from a stale view.
        let ok = pings_answered(&c.a.pod, &c.b.pod_ip4(), 3, None)?;
        assert!(!ok, "ping went through with the route withdrawn");
        assert_eq!(
            count(&fa, Reason::FwdRedirect),
            redirect0,
            "fast-pathed without a route"
        );
        let nofwd = count(&fa, Reason::NotForwarded) - nofwd0;
        assert!(
            nofwd >= 3,
            "the FIB miss went to the stack {nofwd} times, want >= 3"
        );
        c.a.ns
            .ip(&["route", "add", "198.18.2.0/24", "via", &c.b.node_ip4()])?;
        ping(&c.a.pod, &c.b.pod_ip4(), 5)?;
        let grew = count(&fa, Reason::FwdRedirect) - redirect0;
        assert!(
            grew >= 5,
            "after the route came back only {grew} packets were fast-pathed"
        );
        Ok(())
    })
}

#[test]
fn destination_outside_the_cluster_network_goes_to_the_stack() -> Result<()> {
    on_cluster(|c, bpffs| {
        let fa = c.a.fast_path(bpffs)?;
        let _fb = c.b.fast_path(bpffs)?;
        let (outside0, redirect0) = (count(&fa, Reason::Outside), count(&fa, Reason::FwdRedirect));
        // Node b's uplink address is outside 198.18.0.0/17: the stack forwards it.
        reach(&c.a.pod, &c.b.node_ip6())?;
        ping(&c.a.pod, &c.b.node_ip4(), 5)?;
        ping(&c.a.pod, &c.b.node_ip6(), 5)?;
        let outside = count(&fa, Reason::Outside) - outside0;
        assert!(outside >= 10, "outside counted {outside}, want >= 10");
        assert_eq!(count(&fa, Reason::FwdRedirect), redirect0);
        Ok(())
    })
}

#[test]
fn spoofed_pod_source_is_not_fast_pathed() -> Result<()> {
    on_cluster(|c, bpffs| {
        // An address node a routes elsewhere (nowhere): strict rp_filter would drop it.
        c.a.pod
            .ip(&["addr", "add", "198.18.1.99/32", "dev", "eth0"])?;
        let (fa, _fb) = c.fast_paths(bpffs)?;
        let (bad0, redirect0) = (
            count(&fa, Reason::BadSource),
            count(&fa, Reason::FwdRedirect),
        );
        // The replies have no way back; only the counters matter.
        pings_answered(&c.a.pod, &c.b.pod_ip4(), 5, Some("198.18.1.99"))?;
        let bad = count(&fa, Reason::BadSource) - bad0;
        assert!(bad >= 5, "bad_source grew by {bad}, want >= 5");
        assert_eq!(
            count(&fa, Reason::FwdRedirect),
            redirect0,
            "a spoofed source was fast-pathed"
        );
        ping(&c.a.pod, &c.b.pod_ip4(), 5)?;
        assert!(count(&fa, Reason::FwdRedirect) >= redirect0 + 5);
        Ok(())
    })
}

#[test]
fn clusterip_dnat_on_the_node_keeps_working_tcp_and_udp() -> Result<()> {
    on_cluster(|c, bpffs| {
        // As kube-proxy's nftables mode does it: DNAT in a dstnat prerouting chain, to a pod
        // on the other node.
        load_nft(
            &c.a.ns,
            &dnat_table("hgwt-svc", VIP, (80, 81), &c.b.pod_ip4()),
        )?;
        let (fa, fb) = c.fast_paths(bpffs)?;
        let (nat0, fastb0) = (count(&fa, Reason::CtNat), fast(&fb));
        let _echo = echo_servers(&c.b.pod)?;
        // Connected sockets: a reply whose source was not un-DNATed back to the VIP is not
        // taken.
        assert_eq!(echo(&c.a.pod, "tcp", VIP, 80, "hgw-tcp")?, "hgw-tcp");
        assert_eq!(echo(&c.a.pod, "udp", VIP, 81, "hgw-udp")?, "hgw-udp");
        // The replies left node b by the fast path and reached node a, where conntrack holds
        // the flow as DNATed: they went to the stack, which un-DNATed them.
        let nat = count(&fa, Reason::CtNat) - nat0;
        assert!(
            nat >= 3,
            "ct_nat counted {nat} on node a, want >= 3 (SYN-ACK, data, UDP)"
        );
        assert!(fast(&fb) > fastb0, "node b fast-pathed nothing");
        Ok(())
    })
}

#[test]
fn hostport_dnat_on_the_backend_node_keeps_working_tcp_and_udp() -> Result<()> {
    on_cluster(|c, bpffs| {
        // What portmap does for a hostPort, in nftables: DNAT of the node's own address and
        // port to the pod, on the pod's node (not the portmap plugin itself).
        let rules = dnat_table(
            "hgwt-hostport",
            &c.b.node_ip4(),
            (30080, 30081),
            &c.b.pod_ip4(),
        );
        load_nft(&c.b.ns, &rules)?;
        let (_fa, fb) = c.fast_paths(bpffs)?;
        let nat0 = count(&fb, Reason::CtNat);
        let _echo = echo_servers(&c.b.pod)?;
        // The client side of a hostPort: node b's address, TCP 30080 and UDP 30081.
        for (proto, port, want) in [
            ("tcp", 30080, "hgw-hostport-tcp"),
            ("udp", 30081, "hgw-hostport-udp"),
        ] {
            let got = echo(&c.a.pod, proto, &c.b.node_ip4(), port, want)?;
            assert_eq!(got, want, "{proto}");
        }
        // The pod's replies are in the cluster network, but conntrack on node b holds them as
        // DNATed: node b's pod program handed them to the stack, which restored the source.
        let nat = count(&fb, Reason::CtNat) - nat0;
        assert!(nat >= 3, "ct_nat counted {nat} on node b, want >= 3");
        Ok(())
    })
}

#[test]
fn restart_keeps_the_links_and_a_new_load_replaces_the_programs_atomically() -> Result<()> {
    on_cluster(|c, bpffs| {
        let (first, _fb) = c.fast_paths(bpffs)?;
        let old: Vec<u32> = first.status()?.iter().map(|s| s.prog_id).collect();
        let before = fast(&first);
        drop(first); // the daemon exits; the pinned links stay
        ping(&c.a.pod, &c.b.pod_ip4(), 10)?;
        let second = FastPath::load(&c.a.options(bpffs))?;
        // The maps are the pinned ones: the old programs kept counting while no loader ran.
        assert!(
            fast(&second) >= before + 10,
            "no fast path while the loader was gone"
        );
        let st = second.status()?;
        assert!(st.iter().all(|s| s.attached && !s.current), "{st:?}");
        let adopted = in_netns(&c.a.ns, || second.adopt())?;
        assert_eq!(adopted.replaced.len(), 2, "{adopted:?}");
        assert!(adopted.pruned.is_empty());
        let st = second.status()?;
        assert!(st.iter().all(|s| s.attached && s.current), "{st:?}");
        assert!(
            st.iter().all(|s| !old.contains(&s.prog_id)),
            "old programs still attached"
        );
        // Attaching again is idempotent: the same link, the program replaced.
        let again = in_netns(&c.a.ns, || second.attach_pod(c.a.ifindex(POD_VETH)))?;
        assert_eq!(again, Attached::Replaced);
        let mid = fast(&second);
        ping(&c.a.pod, &c.b.pod_ip4(), 5)?;
        assert!(fast(&second) >= mid + 5);
        // release: everything detached, no pin left, traffic back on plain routes.
        assert_eq!(in_netns(&c.a.ns, || second.detach_all())?, 2);
        assert!(second.status()?.is_empty());
        assert_eq!(std::fs::read_dir(bpffs.join("node1/links"))?.count(), 0);
        let end = fast(&second);
        ping(&c.a.pod, &c.b.pod_ip4(), 5)?;
        assert_eq!(fast(&second), end, "counted after detach_all");
        Ok(())
    })
}

#[test]
fn a_restart_and_upgrade_under_a_ping_flood_lose_no_packet() -> Result<()> {
    on_cluster(|c, bpffs| {
        let (first, _fb) = c.fast_paths(bpffs)?;
        // 1500 echoes 2 ms apart (3 s); meanwhile the loader exits, a new one loads and swaps
        // every link's program.
        let mut flood =
            c.a.pod
                .cmd("ping")
                .args(["-q", "-c", "1500", "-i", "0.002", "-W", "2", &c.b.pod_ip4()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()?;
        std::thread::sleep(std::time::Duration::from_millis(500));
        drop(first);
        let second = FastPath::load(&c.a.options(bpffs))?;
        let adopted = in_netns(&c.a.ns, || second.adopt())?;
        assert_eq!(adopted.replaced.len(), 2, "{adopted:?}");
        assert!(
            flood.try_wait()?.is_none(),
            "the flood ended before the swap: test proves nothing"
        );
        let before = fast(&second);
        let out = flood.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("1500 packets transmitted, 1500 received"),
            "packets lost across the restart: {text}"
        );
        assert!(
            fast(&second) > before,
            "the new programs fast-pathed nothing"
        );
        Ok(())
    })
}

#[test]
fn detach_is_idempotent_and_a_deleted_veth_is_pruned() -> Result<()> {
    on_cluster(|c, bpffs| {
        let fa = c.a.fast_path(bpffs)?;
        let pod = c.a.ifindex(POD_VETH);
        assert!(in_netns(&c.a.ns, || fa.detach(pod))?);
        assert!(
            !in_netns(&c.a.ns, || fa.detach(pod))?,
            "a second detach found something"
        );
        assert_eq!(fa.status()?.len(), 1);
        // A pod deleted behind our back: its link is detached by the kernel, then pruned.
        in_netns(&c.a.ns, || fa.attach_pod(pod))?;
        c.a.ns.ip(&["link", "del", POD_VETH])?;
        let st = fa.status()?;
        let gone = st.iter().find(|s| s.ifindex == pod).expect("pinned link");
        assert!(!gone.attached, "{st:?}");
        let adopted = in_netns(&c.a.ns, || fa.adopt())?;
        assert_eq!(adopted.pruned, vec![pod]);
        assert_eq!(fa.status()?.len(), 1);
        Ok(())
    })
}

#[test]
fn bad_input_is_refused_and_changes_nothing() -> Result<()> {
    on_cluster(|c, bpffs| {
        let fa = FastPath::load(&c.a.options(bpffs))?;
        let err = in_netns(&c.a.ns, || fa.attach_pod(0)).unwrap_err();
        assert_eq!(err.to_string(), "invalid ifindex 0: must be > 0");
        let err = in_netns(&c.a.ns, || fa.attach_pod(999_999)).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("attach tcx ingress on ifindex 999999"),
            "{msg}"
        );
        assert!(fa.status()?.is_empty(), "a failed attach left a pin");
        // Outside bpffs, load refuses before anything is created.
        let plain = tempfile::tempdir()?;
        let err = FastPath::load(&Options {
            pin_dir: plain.path().join("x"),
            networks: networks(),
        })
        .err()
        .expect("load outside bpffs");
        assert!(err.to_string().contains("is not on a bpffs mount"), "{err}");
        assert!(!plain.path().join("x").exists());
        Ok(())
    })
}

#[test]
fn probe_finds_everything_on_this_kernel_and_names_a_missing_bpffs() {
    require_root();
    with_bpffs(|bpffs| {
        let p = probe(bpffs);
        assert!(p.ready(), "{p}");
        let plain = tempfile::tempdir().unwrap();
        let p = probe(plain.path());
        let failed = p.first_failure().expect("a failure");
        assert_eq!(failed.feature, hostgw_ebpf::Feature::Bpffs);
        assert!(
            failed.result.as_ref().unwrap_err().contains("not on bpffs"),
            "{p}"
        );
    });
}

/// `gso_max_size` as `ip -d -j link` reports it.
fn gso_max_size(ns: &Netns, dev: &str) -> Result<u64> {
    let out = ns.ip(&["-d", "-j", "link", "show", "dev", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v[0]["gso_max_size"].as_u64().unwrap_or(0))
}

#[test]
fn big_tcp_is_set_on_both_veth_ends_and_fast_path_traffic_flows() -> Result<()> {
    on_cluster(|c, bpffs| {
        for node in [&c.a, &c.b] {
            for (ns, dev) in [(&node.ns, POD_VETH), (&node.pod, "eth0")] {
                in_netns(ns, || -> Result<()> {
                    Ok(set_gso_gro_max(
                        nix::net::if_::if_nametoindex(dev)?,
                        BIG_TCP_SIZE,
                    )?)
                })?;
                assert_eq!(gso_max_size(ns, dev)?, u64::from(BIG_TCP_SIZE));
            }
        }
        let err = in_netns(&c.a.ns, || set_gso_gro_max(999_999, BIG_TCP_SIZE)).unwrap_err();
        assert!(err.to_string().contains("No such device"), "{err}");
        let (fa, _fb) = c.fast_paths(bpffs)?;
        c.assert_tcp_fast_pathed(&fa)
    })
}
