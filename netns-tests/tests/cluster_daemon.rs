//! The route daemon under faults, seen from the pods: a SIGKILL and restart that changes
//! no route and loses no packet, a route deleted by hand that is back within a second, and
//! a route of a node removed while the daemon was down that is pruned at its start.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hostgw_harness::{
    cluster::{
        PingRun, RouteMonitor, add_pod, all_reach, del_pod, has_route, owned_changes, ping,
        subnet6, time_until,
    },
    require_root,
    routed::{CONFIG_V6, Cluster, Datapath, Spec, metric},
    wait_for,
};

fn dual_cluster(dp: Datapath) -> Result<Cluster> {
    let spec = Spec {
        config: CONFIG_V6,
        ..Spec::default()
    };
    Cluster::converged_on(spec, dp)
}

/// Waits until node `i`'s current daemon answers /readyz with 200.
fn wait_ready(c: &Cluster, i: usize) -> Result<()> {
    wait_for("readyz 200", Duration::from_secs(10), || {
        (c.readyz(i).ok()? == "200").then_some(())
    })
    .with_context(|| c.logs())
}

/// Every owned route destination of every node, for the monitors' filters.
fn owned_dsts(c: &Cluster) -> Result<Vec<String>> {
    let mut d: Vec<String> = c
        .all_routes()?
        .into_iter()
        .flatten()
        .map(|(dst, _)| dst)
        .collect();
    d.sort();
    d.dedup();
    Ok(d)
}

#[test]
fn cluster_daemon_sigkill_and_restart_changes_no_route_and_loses_no_packet() -> Result<()> {
    require_root();
    sigkill_and_restart(Datapath::from_env()?)
}

/// The same on the eBPF datapath: the pinned tcx links keep forwarding while no daemon runs,
/// and the new daemon's load replaces their programs in place (the upgrade path).
#[test]
fn cluster_fastpath_daemon_sigkill_and_restart_changes_no_route_and_loses_no_packet() -> Result<()>
{
    require_root();
    sigkill_and_restart(Datapath::Ebpf { big_tcp: false })
}

fn sigkill_and_restart(dp: Datapath) -> Result<()> {
    let mut c = dual_cluster(dp)?;
    let pods = [add_pod(&c, 0, "pod-a")?, add_pod(&c, 1, "pod-b")?];
    all_reach(&pods, None)?;
    let ebpf = dp != Datapath::Routes;
    let fast_before = if ebpf {
        c.wait_fast_pathed(1, 0.0)?
    } else {
        0.0
    };
    let dsts: Vec<String> = owned_dsts(&c)?
        .into_iter()
        .chain(pods.iter().flat_map(|p| p.addrs()).map(|a| format!("{a} ")))
        .collect();
    let routes_before = c.all_routes()?;
    let keys_before = c.etcd.get_prefix("/hostgw/network/subnets/")?;
    let monitors = RouteMonitor::start_all(&c)?;

    // pod-a (node 0) → pod-b (node 1) every 10 ms for 4 s, both families; node 1's daemon
    // owns the return route of this traffic, and its host routes to pod-b are the plugin's.
    let interval = Duration::from_millis(10);
    let runs = [
        PingRun::start(&pods[0].ns, &pods[1].ip, 400, interval, c.dir.path())?,
        PingRun::start(
            &pods[0].ns,
            pods[1].ip6.as_ref().unwrap(),
            400,
            interval,
            c.dir.path(),
        )?,
    ];
    std::thread::sleep(Duration::from_millis(500));
    let reconciles_before = metric(&c.metrics(1)?, "hostgw_reconcile_total", &[]);
    c.nodes[1].daemon.as_mut().unwrap().kill();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    c.start(1)?;
    wait_ready(&c, 1)?;
    let ready_after = t.elapsed();
    // The new process has done its first full pass (it counts from zero again).
    wait_for(
        "first reconcile of the new daemon",
        Duration::from_secs(5),
        || (metric(&c.metrics(1).ok()?, "hostgw_reconcile_total", &[]) >= 1.0).then_some(()),
    )?;
    let stats: Vec<_> = runs
        .into_iter()
        .map(|r| r.finish(Duration::from_secs(20)))
        .collect::<Result<_>>()?;
    let changes: Vec<(usize, Vec<String>)> = monitors
        .into_iter()
        .map(RouteMonitor::stop)
        .enumerate()
        .map(|(i, text)| (i, owned_changes(&text, &dsts)))
        .collect();
    eprintln!(
        "restart ready after {ready_after:?} (reconciles before the kill: {reconciles_before}); \
         ping v4 {}/{} v6 {}/{}",
        stats[0].received, stats[0].sent, stats[1].received, stats[1].sent
    );
    for (i, ch) in &changes {
        assert!(
            ch.is_empty(),
            "node {i}: routes changed during the daemon's crash and restart:\n{}\n{}",
            ch.join("\n"),
            c.logs()
        );
    }
    for (s, fam) in stats.iter().zip(["IPv4", "IPv6"]) {
        assert!(
            s.sent >= 390,
            "{fam} ping sent only {}:\n{}",
            s.sent,
            s.text
        );
        assert_eq!(
            s.lost(),
            0,
            "{fam} packets lost across the restart:\n{}",
            s.text
        );
    }
    for (i, before) in routes_before.iter().enumerate() {
        assert_eq!(&c.routes(i)?, before, "node {i}");
    }
    assert_eq!(
        c.etcd.get_prefix("/hostgw/network/subnets/")?,
        keys_before,
        "lease keys untouched"
    );
    assert!(
        c.log(1).contains("adopted our existing lease"),
        "{}",
        c.log(1)
    );
    if ebpf {
        fast_path_survived(&c, fast_before)?;
    }
    Ok(())
}

/// The restarted daemon adopted node 1's uplink and pod-b's veth (its load replaced their
/// programs), and the ping kept being fast-pathed (the counters live in pinned maps).
fn fast_path_survived(c: &Cluster, before: f64) -> Result<()> {
    let log = c.log(1);
    assert!(
        log.contains("pinned links adopted replaced=2 pruned=0"),
        "{log}"
    );
    let after = c.wait_fast_pathed(1, before + 700.0)?;
    eprintln!("node 1 fast-pathed {before} packets before the kill, {after} at the end");
    Ok(())
}

#[test]
fn cluster_route_deleted_by_hand_is_back_within_a_second() -> Result<()> {
    require_root();
    route_deleted_by_hand(Datapath::from_env()?)
}

/// The same on the eBPF datapath: the programs ask the FIB for every packet, so the repaired
/// route is the fast path's again at once.
#[test]
fn cluster_fastpath_route_deleted_by_hand_is_back_within_a_second() -> Result<()> {
    require_root();
    route_deleted_by_hand(Datapath::Ebpf { big_tcp: false })
}

fn route_deleted_by_hand(dp: Datapath) -> Result<()> {
    let c = dual_cluster(dp)?;
    let pods = [add_pod(&c, 0, "pod-a")?, add_pod(&c, 1, "pod-b")?];
    all_reach(&pods, None)?;
    let fast_before = match dp {
        Datapath::Routes => None,
        Datapath::Ebpf { .. } => Some(c.wait_fast_pathed(0, 0.0)?),
    };
    let sub1 = c.subnet(1).unwrap();
    let sub1_6 = subnet6(&c, 1).context("IPv6 subnet of node 1")?;
    for (dst, via, to) in [
        (&sub1, &c.nodes[1].ip, &pods[1].ip),
        (&sub1_6, &c.nodes[1].ip6, pods[1].ip6.as_ref().unwrap()),
    ] {
        let run = PingRun::start(
            &pods[0].ns,
            to,
            150,
            Duration::from_millis(10),
            c.dir.path(),
        )?;
        std::thread::sleep(Duration::from_millis(300));
        c.nodes[0].ns.ip(&["route", "del", dst])?;
        let back = time_until(
            &format!("route to {dst} back"),
            Duration::from_secs(5),
            || has_route(&c, 0, dst, Some(via)),
        )
        .with_context(|| c.logs())?;
        let s = run.finish(Duration::from_secs(20))?;
        eprintln!(
            "{dst}: back after {back:?}; ping {}/{} while it was gone",
            s.received, s.sent
        );
        assert!(
            back <= Duration::from_secs(1),
            "route to {dst} back after {back:?} (> 1 s)\n{}",
            c.logs()
        );
        // Whatever was lost fits in the gap (10 ms a packet); the pods talk again.
        assert!(
            Duration::from_millis(10) * s.lost() <= Duration::from_secs(1),
            "{}",
            s.text
        );
        ping(&pods[0].ns, to)?;
    }
    wait_for("repairs counted", Duration::from_secs(2), || {
        (metric(&c.metrics(0).ok()?, "hostgw_routes_repaired_total", &[]) >= 2.0).then_some(())
    })?;
    if let Some(before) = fast_before {
        // 300 pings went out on node 0's fast path, less what the gaps cost.
        c.wait_fast_pathed(0, before + 200.0)?;
    }
    Ok(())
}

#[test]
fn cluster_route_of_a_node_removed_while_down_is_pruned_at_start() -> Result<()> {
    require_root();
    let mut c = dual_cluster(Datapath::from_env()?)?;
    let pods = [add_pod(&c, 0, "pod-a")?, add_pod(&c, 1, "pod-b")?];
    let gone = add_pod(&c, 2, "pod-c")?;
    all_reach(&pods, None)?;
    let sub2 = c.subnet(2).unwrap();
    let sub2_6 = subnet6(&c, 2).unwrap();

    // Node 0's daemon is down (SIGTERM leaves its routes) while node 2 is drained and
    // removed from the cluster.
    c.nodes[0]
        .daemon
        .as_mut()
        .unwrap()
        .stop(Duration::from_secs(5));
    del_pod(&c, &gone)?;
    c.nodes[2]
        .daemon
        .as_mut()
        .unwrap()
        .stop(Duration::from_secs(5));
    c.cli(2, "release", &[])?;
    wait_for("node 1 dropped node 2", Duration::from_secs(2), || {
        (!has_route(&c, 1, &sub2, None)).then_some(())
    })?;
    assert!(
        has_route(&c, 0, &sub2, None) && has_route(&c, 0, &sub2_6, None),
        "the stale routes are there while node 0's daemon is down: {:?}",
        c.routes(0)?
    );
    let keep: Vec<String> = c
        .routes(0)?
        .into_iter()
        .map(|(d, _)| d)
        .filter(|d| *d != sub2 && *d != sub2_6)
        .collect();
    let monitor = RouteMonitor::start(&c.nodes[0].ns, c.dir.path())?;
    let run = PingRun::start(
        &pods[0].ns,
        &pods[1].ip,
        150,
        Duration::from_millis(10),
        c.dir.path(),
    )?;
    std::thread::sleep(Duration::from_millis(200));
    c.start(0)?;
    let pruned = time_until("stale routes pruned", Duration::from_secs(10), || {
        !has_route(&c, 0, &sub2, None) && !has_route(&c, 0, &sub2_6, None)
    })
    .with_context(|| c.logs())?;
    let s = run.finish(Duration::from_secs(20))?;
    let text = monitor.stop();
    eprintln!(
        "pruned {pruned:?} after the daemon's start; ping {}/{}",
        s.received, s.sent
    );
    assert!(
        pruned <= Duration::from_secs(1),
        "stale routes pruned {pruned:?} after start (> 1 s)\n{}",
        c.log(0)
    );
    let changes = owned_changes(&text, &keep);
    let expected: Vec<&String> = changes
        .iter()
        .filter(|l| {
            l.starts_with("Deleted")
                && (l.starts_with(&format!("Deleted {sub2}"))
                    || l.starts_with(&format!("Deleted {sub2_6}")))
        })
        .collect();
    assert_eq!(
        expected.len(),
        2,
        "exactly the two stale routes deleted, nothing else touched:\n{text}"
    );
    assert_eq!(changes.len(), 2, "other owned routes touched:\n{text}");
    assert_eq!(
        s.lost(),
        0,
        "pods of the remaining nodes lost packets:\n{}",
        s.text
    );
    let log = c.log(0);
    assert!(
        log.contains("route removed") && log.contains(&sub2),
        "pruning logged:\n{log}"
    );
    all_reach(&pods, None).map(drop)
}
