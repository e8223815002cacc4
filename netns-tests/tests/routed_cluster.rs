//! hostgw-routed on three node namespaces sharing one L2 segment, with a real etcd.

use std::{collections::BTreeSet, time::Duration};

use anyhow::{Context, Result};
use hostgw_harness::{
    cluster::{RouteMonitor, has_route},
    require_root,
    routed::{CONFIG_LOW_POOL, Cluster, Spec, lease_json, metric, subnet_key},
    wait_for,
};

/// Nodes pick subnets below 198.18.200.0: the tests' own leases and routes above it.
const LOW_POOL: Spec = Spec {
    nodes: 3,
    tls: false,
    config: CONFIG_LOW_POOL,
};

#[test]
fn routed_three_nodes_converge_with_distinct_subnets() -> Result<()> {
    require_root();
    let c = Cluster::converged(Spec::default())?;
    let subnets: BTreeSet<String> = (0..3).map(|i| c.subnet(i).unwrap()).collect();
    assert_eq!(subnets.len(), 3, "distinct subnets: {subnets:?}");
    for i in 0..3 {
        let file = std::fs::read_to_string(&c.nodes[i].subnet_file)?;
        assert!(
            file.contains(r#""network":"198.18.0.0/16""#) && file.contains(r#""mtu":1500"#),
            "{file}"
        );
        assert_eq!(c.routes(i)?.len(), 2, "node {i}: {:?}", c.routes(i)?);
    }
    // Forwarding on, no nft table without --ip-masq, ready.
    let fwd = c.nodes[0].ns.sh("cat /proc/sys/net/ipv4/ip_forward")?;
    assert_eq!(fwd.trim(), "1");
    assert!(our_table(&c).is_err(), "a table without masquerade");
    wait_for("readyz 200", Duration::from_secs(5), || {
        (c.readyz(0).ok()? == "200").then_some(())
    })?;
    let m = c.metrics(0)?;
    assert_eq!(metric(&m, "hostgw_routes_installed", &[]), 2.0, "{m}");
    assert_eq!(metric(&m, "hostgw_peers", &[]), 2.0);
    // Pods' traffic path: node 0 reaches node 1's subnet via node 1.
    let sub1 = c.subnet(1).unwrap();
    let dst = sub1.replace(".0/24", ".1");
    let get = c.nodes[0].ns.ip(&["route", "get", &dst])?;
    assert!(get.contains(&format!("via {}", c.nodes[1].ip)), "{get}");
    Ok(())
}

#[test]
fn routed_deleted_route_is_back_within_a_second() -> Result<()> {
    require_root();
    let c = Cluster::converged(Spec::default())?;
    let sub1 = c.subnet(1).unwrap();
    c.nodes[0].ns.ip(&["route", "del", &sub1])?;
    wait_for("route restored", Duration::from_secs(1), || {
        has_route(&c, 0, &sub1, Some(&c.nodes[1].ip)).then_some(())
    })?;
    // Replaced by someone else's route (another protocol): that route is not ours, so it
    // is never replaced back (issue 12, item 1); once it is gone, ours comes back.
    c.nodes[0].ns.ip(&[
        "route",
        "replace",
        &sub1,
        "via",
        &c.nodes[2].ip,
        "proto",
        "static",
    ])?;
    std::thread::sleep(Duration::from_millis(500));
    let theirs = c.nodes[0].ns.ip(&["route", "show", "exact", &sub1])?;
    assert!(
        theirs.contains("proto static") && theirs.contains(&c.nodes[2].ip),
        "{theirs}"
    );
    c.nodes[0]
        .ns
        .ip(&["route", "del", &sub1, "proto", "static"])?;
    wait_for("route re-owned", Duration::from_secs(1), || {
        has_route(&c, 0, &sub1, Some(&c.nodes[1].ip)).then_some(())
    })?;
    wait_for("repair counted", Duration::from_secs(2), || {
        (metric(&c.metrics(0).ok()?, "hostgw_routes_repaired_total", &[]) >= 1.0).then_some(())
    })?;
    Ok(())
}

#[test]
fn routed_stale_owned_route_is_pruned_at_start() -> Result<()> {
    require_root();
    let mut c = Cluster::new(LOW_POOL)?;
    // Left behind by a node that vanished while this daemon was down; plus a route that
    // is not ours (another protocol), which must stay.
    c.nodes[0].ns.ip(&[
        "route",
        "add",
        "198.18.254.0/24",
        "via",
        "198.19.0.99",
        "proto",
        "75",
    ])?;
    c.nodes[0].ns.ip(&[
        "route",
        "add",
        "198.18.253.0/24",
        "via",
        "198.19.0.99",
        "proto",
        "static",
    ])?;
    c.start_all()?;
    c.wait_converged(Duration::from_secs(20))?;
    wait_for("stale route pruned", Duration::from_secs(2), || {
        (!c.routes(0)
            .ok()?
            .iter()
            .any(|(d, _)| d == "198.18.254.0/24"))
        .then_some(())
    })?;
    let all = c.nodes[0].ns.ip(&["route", "show"])?;
    assert!(all.contains("198.18.253.0/24"), "foreign route kept: {all}");
    Ok(())
}

#[test]
fn routed_restart_adopts_without_flapping() -> Result<()> {
    require_root();
    let mut c = Cluster::converged(Spec::default())?;
    let before: Vec<_> = (0..3).map(|i| c.subnet(i).unwrap()).collect();
    let lease_before = c.etcd.get_prefix("/hostgw/network/subnets/")?;
    let mon = |i: usize| -> Result<(hostgw_harness::Proc, std::path::PathBuf)> {
        let path = c.dir.path().join(format!("monitor-{i}.txt"));
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["-n", c.nodes[i].ns.name(), "monitor", "route"])
            .stdout(std::fs::File::create(&path)?);
        Ok((hostgw_harness::Proc::spawn(cmd)?, path))
    };
    let (mut m0, p0) = mon(0)?;
    let (mut m1, p1) = mon(1)?;
    std::thread::sleep(Duration::from_millis(200));
    // A marker proving the monitors see changes at all.
    for i in [0, 1] {
        c.nodes[i].ns.ip(&[
            "route",
            "add",
            "198.19.77.0/24",
            "via",
            "198.19.0.2",
            "proto",
            "static",
        ])?;
    }
    // A crash, then a graceful stop: neither withdraws anything.
    c.nodes[0].daemon.as_mut().unwrap().kill();
    c.start(0)?;
    std::thread::sleep(Duration::from_millis(1500));
    c.nodes[0]
        .daemon
        .as_mut()
        .unwrap()
        .stop(Duration::from_secs(5));
    assert_eq!(c.routes(0)?.len(), 2, "routes stay after SIGTERM");
    c.start(0)?;
    c.wait_converged(Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(1000));
    m0.stop(Duration::from_secs(1));
    m1.stop(Duration::from_secs(1));
    for p in [p0, p1] {
        let text = std::fs::read_to_string(&p)?;
        assert!(
            text.contains("198.19.77.0/24"),
            "monitor saw nothing:\n{text}"
        );
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("Deleted") && l.contains("proto 75")),
            "flap in {}:\n{text}",
            p.display()
        );
        assert!(
            !text.contains("proto 75"),
            "any change to owned routes during restart:\n{text}"
        );
    }
    let after: Vec<_> = (0..3).map(|i| c.subnet(i).unwrap()).collect();
    assert_eq!(before, after);
    assert_eq!(
        lease_before,
        c.etcd.get_prefix("/hostgw/network/subnets/")?,
        "lease keys untouched"
    );
    assert!(
        c.log(0).contains("adopted our existing lease"),
        "{}",
        c.log(0)
    );
    Ok(())
}

/// A graceful stop writes the lease cache; the restart reads the config key and resumes its
/// watch after the cache's revision (no list), gets what changed while it was down (a node
/// joined, one left), and changes no other route. A cache older than etcd's compaction is
/// refused by the watch and the daemon lists once.
#[test]
fn routed_a_restart_resumes_from_the_lease_cache() -> Result<()> {
    require_root();
    let mut c = Cluster::converged(LOW_POOL)?;
    let (x, y) = ("198.18.250.0/24", "198.18.251.0/24");
    c.etcd
        .put(&subnet_key(y), &lease_json("198.19.0.99", "gone"))?;
    wait_for("route to y", Duration::from_secs(5), || {
        has_route(&c, 0, y, None).then_some(())
    })?;
    let cache = c.nodes[0].subnet_file.with_file_name("leases.json");
    c.nodes[0]
        .daemon
        .as_mut()
        .unwrap()
        .stop(Duration::from_secs(5));
    let text = std::fs::read_to_string(&cache).context("cache written at the stop")?;
    assert!(text.contains("198.18.251.0-24"), "{text}");
    let status = c.cli(0, "status", &[])?;
    assert!(
        status.contains("leases at revision") && status.contains("the next start resumes from it"),
        "{status}"
    );
    c.etcd
        .put(&subnet_key(x), &lease_json("198.19.0.98", "joined"))?;
    c.etcd.del(&subnet_key(y))?;
    let mon = RouteMonitor::start(&c.nodes[0].ns, c.dir.path())?;
    let lists = c.log(0).matches("listed leases").count();
    c.start(0)?;
    wait_for("x routed, y gone", Duration::from_secs(10), || {
        let n = c.routes(0).ok()?.len();
        (has_route(&c, 0, x, None) && !has_route(&c, 0, y, None) && n == 3).then_some(())
    })
    .with_context(|| c.log(0))?;
    std::thread::sleep(Duration::from_millis(500));
    let seen = mon.stop();
    let log = c.log(0);
    assert!(log.contains("resuming from the lease cache"), "{log}");
    assert_eq!(
        log.matches("listed leases").count(),
        lists,
        "no list: {log}"
    );
    let changed: Vec<&str> = seen.lines().filter(|l| l.contains("proto 75")).collect();
    assert_eq!(changed.len(), 2, "x added, y deleted, nothing else: {seen}");
    assert!(changed.iter().any(|l| l.starts_with(x)), "{seen}");
    assert!(
        changed
            .iter()
            .any(|l| l.starts_with(&format!("Deleted {y}"))),
        "{seen}"
    );

    // Stopped again; while it is down etcd compacts past the cache's revision. (The put
    // after the delete: etcd 3.4 before 3.4.34 drops a delete at exactly the compaction
    // revision from a watch started there, etcd-io/etcd#18089.)
    c.nodes[0]
        .daemon
        .as_mut()
        .unwrap()
        .stop(Duration::from_secs(5));
    let z = "198.18.252.0/24";
    c.etcd.del(&subnet_key(x))?;
    c.etcd
        .put(&subnet_key(z), &lease_json("198.19.0.97", "later"))?;
    c.etcd.compact_now()?;
    c.start(0)?;
    wait_for("x gone, z routed", Duration::from_secs(10), || {
        (!has_route(&c, 0, x, None) && has_route(&c, 0, z, None)).then_some(())
    })
    .with_context(|| c.log(0))?;
    let log = c.log(0);
    assert!(
        log.contains("watch revision compacted; listing again"),
        "{log}"
    );
    assert_eq!(
        log.matches("listed leases").count(),
        lists + 1,
        "one list: {log}"
    );
    Ok(())
}

/// A crash leaves a cache older than the kernel (a lease came after its last write): the
/// restart holds the cached set back until the watch has replayed what came since, so the
/// route the kernel already has is never taken back, not even for a moment.
#[test]
fn routed_a_crash_restart_from_an_older_cache_takes_back_no_route() -> Result<()> {
    require_root();
    let mut c = Cluster::converged(LOW_POOL)?;
    c.nodes[0]
        .daemon
        .as_mut()
        .unwrap()
        .stop(Duration::from_secs(5));
    c.start(0)?; // resumes from the cache the stop wrote
    c.wait_converged(Duration::from_secs(10))?;
    let x = "198.18.250.0/24";
    c.etcd
        .put(&subnet_key(x), &lease_json("198.19.0.98", "joined"))?;
    wait_for("route to x", Duration::from_secs(5), || {
        has_route(&c, 0, x, None).then_some(())
    })?;
    let cache = c.nodes[0].subnet_file.with_file_name("leases.json");
    assert!(
        !std::fs::read_to_string(&cache)?.contains("198.18.250.0-24"),
        "the cache is rewritten only 60 s after a change"
    );
    c.nodes[0].daemon.as_mut().unwrap().kill();
    let mon = RouteMonitor::start(&c.nodes[0].ns, c.dir.path())?;
    let starts = c.log(0).matches(": started ").count();
    c.start(0)?;
    wait_for("started", Duration::from_secs(10), || {
        (c.log(0).matches(": started ").count() > starts).then_some(())
    })
    .with_context(|| c.log(0))?;
    std::thread::sleep(Duration::from_millis(2000));
    let seen = mon.stop();
    assert!(
        !seen.contains("proto 75"),
        "a route changed: {seen}\n{}",
        c.log(0)
    );
    assert!(c.log(0).contains("routing by it"), "{}", c.log(0));
    assert!(has_route(&c, 0, x, None));
    Ok(())
}

/// etcd's progress notifications move a quiet daemon's cache forward: after writes outside
/// the prefix and a compaction past the daemon's last event, its restart still resumes.
#[test]
fn routed_a_quiet_cache_follows_progress_past_a_compaction() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec::default())?;
    for n in &mut c.nodes {
        n.extra_args = vec!["--lease-cache-secs".into(), "5".into()];
    }
    c.start_all()?;
    c.wait_converged(Duration::from_secs(20))?;
    let rev = || -> Result<i64> {
        let text = std::fs::read_to_string(c.nodes[0].subnet_file.with_file_name("leases.json"))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        v["revision"].as_i64().context("revision")
    };
    // The first write comes 5 s (`--lease-cache-secs`) after the start's list.
    let first = wait_for("first cache write", Duration::from_secs(15), || rev().ok())?;
    for i in 0..3 {
        c.etcd.put("/elsewhere/tick", &i.to_string())?;
    }
    let now = c.etcd.revision()?;
    wait_for("cache at etcd's revision", Duration::from_secs(15), || {
        (rev().ok()? >= now).then_some(())
    })
    .with_context(|| format!("cache still at {first}, etcd at {now}"))?;
    c.etcd.compact_now()?;
    c.nodes[0]
        .daemon
        .as_mut()
        .unwrap()
        .stop(Duration::from_secs(5));
    let lists = c.log(0).matches("listed leases").count();
    c.start(0)?;
    wait_for("resumed", Duration::from_secs(10), || {
        c.log(0).contains("routing by it").then_some(())
    })
    .with_context(|| c.log(0))?;
    let log = c.log(0);
    assert!(!log.contains("compacted"), "{log}");
    assert_eq!(log.matches("listed leases").count(), lists, "{log}");
    Ok(())
}

#[test]
fn routed_release_removes_the_route_everywhere_within_a_second() -> Result<()> {
    require_root();
    let mut c = Cluster::converged(Spec::default())?;
    let sub2 = c.subnet(2).unwrap();
    c.nodes[2]
        .daemon
        .as_mut()
        .unwrap()
        .stop(Duration::from_secs(5));
    let out = c.cli(2, "release", &[])?;
    assert!(out.contains("released"), "{out}");
    for i in [0, 1] {
        wait_for("peer route gone", Duration::from_secs(1), || {
            (!c.routes(i).ok()?.iter().any(|(d, _)| *d == sub2)).then_some(())
        })?;
    }
    assert!(
        c.routes(2)?.is_empty(),
        "released node's own routes removed"
    );
    assert!(!c.nodes[2].subnet_file.exists());
    assert!(
        c.nodes[2].ns.sh("nft list table inet hostgw").is_err(),
        "nft table removed"
    );
    assert!(
        c.etcd
            .get_prefix(&hostgw_harness::routed::subnet_key(&sub2))?
            .is_empty()
    );
    Ok(())
}

/// Without `--public-ip` or `--iface` the daemon takes the address of the link that holds
/// the default route, whoever installed it (here `proto dhcp`, as on most hosts).
#[test]
fn routed_public_ip_defaults_to_the_default_route_link() -> Result<()> {
    require_root();
    let c = Cluster::new(Spec {
        nodes: 1,
        ..Spec::default()
    })?;
    let n = &c.nodes[0];
    n.ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "198.19.0.1",
        "dev",
        "eth0",
        "proto",
        "dhcp",
    ])?;
    let file = n.subnet_file.display().to_string();
    let args = [
        "run",
        "--etcd-endpoints",
        &c.etcd.endpoint,
        "--node-name",
        "dhcp-node",
        "--subnet-file",
        &file,
    ];
    let _daemon = n.ns.spawn(hostgw_harness::bin("hostgw-routed"), &args)?;
    wait_for("the subnet file", Duration::from_secs(20), || c.subnet(0))?;
    let leases = c.etcd.get_prefix("/hostgw/network/subnets/")?;
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert!(
        leases[0].1.contains(&format!(r#""PublicIP":"{}""#, n.ip))
            && leases[0].1.contains("dhcp-node"),
        "{leases:?}"
    );
    Ok(())
}

/// `nft list table inet hostgw` in node 0 of `c`: the table as listed, or why not (absent).
fn our_table(c: &Cluster) -> Result<String> {
    c.nodes[0].ns.sh("nft list table inet hostgw")
}

/// A firewall reload that flushes the ruleset takes our table with it: the daemon puts it
/// back on its next resync (here every second) without a restart.
#[test]
fn routed_nft_table_removed_by_hand_is_put_back() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec {
        nodes: 1,
        ..Spec::default()
    })?;
    c.nodes[0].extra_args = vec!["--resync-secs".into(), "1".into(), "--ip-masq".into()];
    c.start(0)?;
    wait_for("the table installed", Duration::from_secs(20), || {
        our_table(&c).ok()
    })?;
    c.nodes[0].ns.sh("nft flush ruleset")?;
    assert!(our_table(&c).is_err(), "the flush removed it");
    // Back whole: its masquerade rule in it (a listing read while the repair runs may show
    // the table before its chain: seen once as an empty table under load).
    wait_for("the table back", Duration::from_secs(5), || {
        our_table(&c)
            .ok()?
            .contains("ip saddr 198.18.0.0/16 masquerade")
            .then_some(())
    })
    .with_context(|| format!("{:?}\n{}", our_table(&c), c.logs()))?;
    Ok(())
}

/// An earlier version left `inet hostgw` with a forward chain of accepts, which changed no
/// verdict; without `--ip-masq` the daemon deletes it at start and keeps none.
#[test]
fn routed_an_old_forward_only_table_is_deleted_without_masquerade() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec {
        nodes: 1,
        ..Spec::default()
    })?;
    let old = "table inet hostgw {\n chain forward {\n  type filter hook forward priority filter; policy accept;\n  ip saddr 198.18.0.0/16 accept\n  ip daddr 198.18.0.0/16 accept\n }\n}\n";
    c.nodes[0].ns.sh(&format!("printf '{old}' | nft -f -"))?;
    assert!(
        our_table(&c).is_ok(),
        "the old table stands before the start"
    );
    c.start(0)?;
    c.wait_converged(Duration::from_secs(20))?;
    wait_for("the old table gone", Duration::from_secs(5), || {
        our_table(&c).is_err().then_some(())
    })
    .with_context(|| c.logs())?;
    // The daemon logs the deletion after it is done (routed/src/cmd/run.rs), so the line
    // may trail the table's going by a moment on a loaded machine.
    wait_for("the deletion logged", Duration::from_secs(5), || {
        c.logs()
            .contains("nftables table inet hostgw deleted")
            .then_some(())
    })
    .with_context(|| c.logs())?;
    Ok(())
}

/// Pods coming and going on a node (their veths, gateway addresses and /32 routes) cannot
/// change how peers are reached, so they must not cost a reconcile pass each: on a node
/// with thousands of peers that would be a full kernel dump per pod.
#[test]
fn routed_pod_churn_does_not_wake_the_reconciler() -> Result<()> {
    use hostgw_harness::{Netns, bin, cni};
    require_root();
    let c = Cluster::converged(Spec {
        nodes: 2,
        ..Spec::default()
    })?;
    let reconciles = |c: &Cluster| {
        metric(
            &c.metrics(0).unwrap_or_default(),
            "hostgw_reconcile_total",
            &[],
        )
    };
    // Let the start-up passes settle.
    std::thread::sleep(Duration::from_millis(300));
    let before = reconciles(&c);
    let dir = tempfile::tempdir()?;
    let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "podnet", "type": "hostgw",
        "subnetFile": c.nodes[0].subnet_file, "dataDir": dir.path()})
    .to_string();
    let pods: Vec<Netns> = (0..5).map(|_| Netns::new("pod")).collect::<Result<_>>()?;
    for verb in ["ADD", "DEL"] {
        for (i, pod) in pods.iter().enumerate() {
            let (id, path) = (format!("churn{i}"), pod.path().display().to_string());
            let reply = cni::invoke(
                &bin("hostgw"),
                &c.nodes[0].ns,
                &cni::Call::attach(verb, &id, &path),
                &conf,
            )?;
            assert!(reply.ok(), "{verb} {id}: {}", reply.stdout);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = reconciles(&c);
    assert_eq!(
        after,
        before,
        "5 pod ADDs and DELs woke the reconciler {} times",
        after - before
    );
    Ok(())
}
