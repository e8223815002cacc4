//! The cluster with pods while etcd misbehaves: a 60 s outage (routes stay, pods keep
//! talking, the daemons resume and route a new lease within a second), a compaction past
//! the daemons' watch revision (one re-list each, no hot loop), and a 3-member etcd whose
//! leader is killed (no route changes, a lease written after the election routed within
//! 2 s).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hostgw_harness::{
    Netns,
    cluster::{
        PingRun, Pod, RouteMonitor, add_pod, all_reach, first_times, free_subnet, has_route,
        owned_changes, ping, talking_pods,
    },
    etcd::EtcdCluster,
    require_root,
    routed::{CONFIG, Cluster, Datapath, PREFIX, Spec, lease_json, metric, subnet_key},
    wait_for,
};

const PORT: u16 = 7000;

fn cluster() -> Result<Cluster> {
    cluster_on(Datapath::from_env()?)
}

fn cluster_on(dp: Datapath) -> Result<Cluster> {
    Cluster::converged_on(Spec::default(), dp)
}

/// The owned route changes a monitor saw, but those of `dst` (the lease the scenario wrote).
fn owned_changes_but(text: &str, dst: &str) -> Vec<String> {
    owned_changes(text, &[])
        .into_iter()
        .filter(|l| !l.starts_with(dst))
        .collect()
}

fn watch_restarts(c: &Cluster, i: usize) -> Result<f64> {
    Ok(metric(
        &c.metrics(i)?,
        "hostgw_etcd_watch_restarts_total",
        &[],
    ))
}

/// Grants an etcd lease (as a node's daemon would hold one) and returns its ID.
fn grant(ctl: impl FnOnce(&[&str]) -> Result<String>) -> Result<String> {
    let out = ctl(&["lease", "grant", "3600"])?;
    Ok(out
        .split_whitespace()
        .nth(1)
        .context("lease grant output")?
        .to_owned())
}

/// Kills etcd and, every 5 s for 60 s, checks that no route changed, no daemon died and
/// the pods still talk. Returns when etcd went down.
fn outage_of_60s(
    c: &mut Cluster,
    pods: &[Pod],
    before: &[Vec<(String, String)>],
) -> Result<Instant> {
    c.etcd.kill();
    let down = Instant::now();
    let mut samples = 0;
    while down.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(
            Duration::from_secs(5).min(Duration::from_secs(60).saturating_sub(down.elapsed())),
        );
        for (i, b) in before.iter().enumerate() {
            assert_eq!(
                &c.routes(i)?,
                b,
                "node {i}: routes changed {:?} into the outage\n{}",
                down.elapsed(),
                c.logs()
            );
            assert!(
                c.nodes[i].daemon.as_mut().unwrap().exited().is_none(),
                "daemon {i} died during the outage\n{}",
                c.logs()
            );
        }
        all_reach(pods, Some(PORT))
            .with_context(|| format!("{:?} into the outage", down.elapsed()))?;
        samples += 1;
    }
    assert!(samples >= 10, "sampled {samples} times");
    Ok(down)
}

/// etcd returns on its data; a node's lease is written just after. Returns its subnet and
/// how long after the write each node routed it.
fn lease_after_return(c: &mut Cluster, down: Instant) -> Result<(String, Vec<Duration>)> {
    c.etcd.restart()?;
    let outage = down.elapsed();
    let lease = grant(|a| c.etcd.ctl(a))?;
    let dst = free_subnet(c, 200);
    let t0 = Instant::now();
    c.etcd.ctl(&[
        "put",
        "--lease",
        &lease,
        &subnet_key(&dst),
        &lease_json("198.19.0.70", "late-node"),
    ])?;
    let routed = first_times(c, &[0, 1, 2], t0, Duration::from_secs(60), |i| {
        has_route(c, i, &dst, Some("198.19.0.70"))
    })?;
    eprintln!("etcd down {outage:?}; the lease written after it returned routed after {routed:?}");
    Ok((dst, routed))
}

#[test]
fn cluster_heavy_etcd_down_60s_keeps_routes_and_pods_talking_then_resumes() -> Result<()> {
    require_root();
    etcd_down_60s(Datapath::from_env()?)
}

/// The same on the eBPF datapath: etcd is no part of the fast path, which keeps forwarding.
#[test]
fn cluster_heavy_fastpath_etcd_down_60s_keeps_routes_and_pods_talking_then_resumes() -> Result<()> {
    require_root();
    etcd_down_60s(Datapath::Ebpf { big_tcp: false })
}

fn etcd_down_60s(dp: Datapath) -> Result<()> {
    let mut c = cluster_on(dp)?;
    let (pods, _servers) = talking_pods(&c, PORT)?;
    let before = c.all_routes()?;
    let restarts_before: Vec<f64> = (0..3)
        .map(|i| watch_restarts(&c, i))
        .collect::<Result<_>>()?;
    let monitors = RouteMonitor::start_all(&c)?;
    // pod-a → pod-c every 200 ms over the whole outage and the return.
    let run = PingRun::start(
        &pods[0].ns,
        &pods[2].ip,
        330,
        Duration::from_millis(200),
        c.dir.path(),
    )?;

    let down = outage_of_60s(&mut c, &pods, &before)?;
    let (dst, routed) = lease_after_return(&mut c, down)?;
    // Everything else is checked before the verdict, so one run reports all that is wrong.
    let mut failures = Vec::new();
    for (i, at) in routed.iter().enumerate() {
        if *at > Duration::from_secs(1) {
            failures.push(format!(
                "node {i} routed a lease written after etcd returned {at:?} after the write (> 1 s)"
            ));
        }
    }
    for (i, before) in restarts_before.iter().enumerate() {
        if watch_restarts(&c, i)? <= *before {
            failures.push(format!("node {i}: no watch restart counted"));
        }
        if c.readyz(i)? != "200" {
            failures.push(format!("node {i} not ready after the outage"));
        }
    }
    let s = run.finish(Duration::from_secs(60))?;
    if s.lost() != 0 {
        failures.push(format!("pod packets lost during the outage:\n{}", s.text));
    }
    for (i, m) in monitors.into_iter().enumerate() {
        let changes = owned_changes_but(&m.stop(), &dst);
        if !changes.is_empty() {
            failures.push(format!(
                "node {i}: owned routes changed during the outage:\n{}",
                changes.join("\n")
            ));
        }
    }
    all_reach(&pods, Some(PORT))?;
    assert!(failures.is_empty(), "{}\n{}", failures.join("\n"), c.logs());
    if dp != Datapath::Routes {
        // 330 pings pod-a -> pod-c, fast-pathed out of node 0.
        c.wait_fast_pathed(0, 300.0)?;
    }
    Ok(())
}

#[test]
fn cluster_compaction_past_the_watch_relists_once_without_hot_loop() -> Result<()> {
    require_root();
    let c = cluster()?;
    let pods = [add_pod(&c, 0, "pod-a")?, add_pod(&c, 1, "pod-b")?];
    all_reach(&pods, None)?;
    let lists = |c: &Cluster, i: usize| c.log(i).matches("listed leases").count();
    let lists_before: Vec<usize> = (0..3).map(|i| lists(&c, i)).collect();
    let restarts_before: Vec<f64> = (0..3)
        .map(|i| watch_restarts(&c, i))
        .collect::<Result<_>>()?;
    let ranges_before = c.etcd.range_requests()?;

    // The daemons stall (SIGSTOP) while a key under the watched prefix changes 600 times
    // with 16 KiB values (10 MB of events: more than the HTTP/2 windows and etcd's queue
    // hold for a watcher that does not read, so etcd marks it as fallen behind), is
    // deleted, and the history is compacted past every revision they saw.
    for n in &c.nodes {
        n.daemon
            .as_ref()
            .unwrap()
            .signal(nix::sys::signal::Signal::SIGSTOP);
    }
    let stopped = Instant::now();
    let churn = format!("{PREFIX}/subnets/198.18.0.0-24x");
    let junk = format!("{{garbage {}", "x".repeat(16 * 1024));
    let rev0 = c.etcd.revision()?;
    let res = c.etcd.put_repeatedly(&churn, &junk, 600).and_then(|()| {
        c.etcd.del(&churn)?;
        c.etcd.compact_now()
    });
    for n in &c.nodes {
        n.daemon
            .as_ref()
            .unwrap()
            .signal(nix::sys::signal::Signal::SIGCONT);
    }
    res?;
    let rev1 = c.etcd.revision()?;
    eprintln!(
        "daemons stopped {:?}; revisions {rev0}..{rev1} compacted",
        stopped.elapsed()
    );
    assert!(rev1 - rev0 >= 600, "puts landed: {rev0}..{rev1}");

    wait_for("every daemon re-listed", Duration::from_secs(30), || {
        (0..3)
            .all(|i| c.log(i).contains("watch revision compacted; listing again"))
            .then_some(())
    })
    .with_context(|| c.logs())?;
    c.wait_converged(Duration::from_secs(5))?;
    std::thread::sleep(Duration::from_millis(500));
    let ranges_after = c.etcd.range_requests()?;
    let restarts_after: Vec<f64> = (0..3)
        .map(|i| watch_restarts(&c, i))
        .collect::<Result<_>>()?;
    // Quiet for 5 s: an idle cluster makes no range request and restarts no watch.
    std::thread::sleep(Duration::from_secs(5));
    let ranges_quiet = c.etcd.range_requests()?;
    for i in 0..3 {
        assert_eq!(
            lists(&c, i) - lists_before[i],
            1,
            "node {i} listed exactly once more\n{}",
            c.log(i)
        );
        assert_eq!(
            c.log(i).matches("watch revision compacted").count(),
            1,
            "node {i}\n{}",
            c.log(i)
        );
        let r = watch_restarts(&c, i)?;
        assert!(
            r > restarts_before[i] && r == restarts_after[i],
            "node {i}: watch restarts {} -> {} -> {r}",
            restarts_before[i],
            restarts_after[i]
        );
        assert_eq!(c.routes(i)?.len(), 2, "node {i}: {:?}", c.routes(i)?);
        let m = c.metrics(i)?;
        assert_eq!(
            metric(&m, "hostgw_leases_rejected", &["reason=\"malformed\""]),
            0.0,
            "node {i}: the deleted junk is forgotten"
        );
    }
    eprintln!(
        "range requests: {ranges_before} before, {ranges_after} after, {ranges_quiet} 5 s later"
    );
    assert_eq!(
        ranges_after - ranges_before,
        3,
        "one list per daemon (etcd's Range count)"
    );
    assert_eq!(ranges_quiet, ranges_after, "no range request while idle");
    all_reach(&pods, None)?;
    Ok(())
}

/// Three etcd members on the segment, in namespaces of their own, replace the cluster's
/// single-member etcd: the daemons (and the harness's etcdctl) get all three endpoints.
fn three_members(c: &mut Cluster) -> Result<(Vec<Netns>, Vec<String>, EtcdCluster)> {
    let member_ns: Vec<Netns> = (0..3).map(|_| Netns::new("em")).collect::<Result<_>>()?;
    let ips: Vec<String> = (0..3).map(|i| format!("198.19.0.{}", 3 + i)).collect();
    for (i, ns) in member_ns.iter().enumerate() {
        c.attach_to_segment(ns, &format!("q{i}"), 3 + i as u32)?;
    }
    let mut ec = EtcdCluster::start(
        &member_ns
            .iter()
            .zip(&ips)
            .map(|(n, ip)| (n, ip.as_str()))
            .collect::<Vec<_>>(),
    )?;
    c.etcd.kill();
    c.etcd.endpoint = ec.endpoints.clone();
    ec.ctl(&["put", &format!("{PREFIX}/config"), CONFIG])?;
    Ok((member_ns, ips, ec))
}

/// Kills the leader; once another is elected, writes a lease, which every node must route
/// within 2 s. Returns the killed member and the lease's subnet.
fn kill_leader_then_lease(c: &Cluster, ec: &mut EtcdCluster) -> Result<(usize, String)> {
    let leader = wait_for("a leader", Duration::from_secs(10), || ec.leader())?;
    std::thread::sleep(Duration::from_millis(300));
    ec.kill(leader);
    let killed = Instant::now();
    let new_leader = wait_for("a new leader", Duration::from_secs(20), || {
        ec.leader().filter(|&l| l != leader)
    })?;
    let elected = killed.elapsed();
    let lease = grant(|a| ec.ctl(a))?;
    let dst = free_subnet(c, 200);
    let t0 = Instant::now();
    ec.ctl(&[
        "put",
        "--lease",
        &lease,
        &subnet_key(&dst),
        &lease_json("198.19.0.71", "after-election"),
    ])?;
    let routed = first_times(c, &[0, 1, 2], t0, Duration::from_secs(30), |i| {
        has_route(c, i, &dst, Some("198.19.0.71"))
    })?;
    eprintln!(
        "leader m{leader} killed; m{new_leader} elected after {elected:?}; lease routed after {routed:?}"
    );
    for (i, at) in routed.iter().enumerate() {
        assert!(
            *at <= Duration::from_secs(2),
            "node {i} routed the lease written after the election {at:?} after the write (> 2 s)\n{}",
            c.logs()
        );
    }
    Ok((leader, dst))
}

/// With one member down, as operators live with until it is replaced: `status` answers on
/// every node (3 times each, so a dead endpoint picked at random is not missed), and a
/// daemon restarted now (a rolling update, say) comes back and adopts its lease. Returns
/// what failed.
fn with_a_member_down(c: &mut Cluster) -> Result<Vec<String>> {
    let mut failures = Vec::new();
    for i in 0..3 {
        for _ in 0..3 {
            match c.cli(i, "status", &[]) {
                Ok(text)
                    if text.contains("peers (3, 3 routes)") && text.contains("drift: none") => {}
                Ok(text) => failures.push(format!("status on node {i}: {text}")),
                Err(e) => failures.push(format!("status on node {i}: {e:#}")),
            }
        }
    }
    c.nodes[2]
        .daemon
        .as_mut()
        .unwrap()
        .stop(Duration::from_secs(5));
    c.start(2)?;
    let back = wait_for("restarted daemon ready", Duration::from_secs(15), || {
        if c.readyz(2).ok()? == "200" {
            return Some(Ok(()));
        }
        c.nodes[2].daemon.as_mut()?.exited().map(Err)
    });
    match back {
        Ok(Ok(())) => {}
        Ok(Err(st)) => failures.push(format!("daemon restarted with a member down exited: {st}")),
        Err(e) => failures.push(format!("daemon restarted with a member down: {e}")),
    }
    Ok(failures)
}

#[test]
fn cluster_three_member_etcd_leader_killed_changes_no_route() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec::default())?;
    let (_member_ns, ips, mut ec) = three_members(&mut c)?;
    c.start_all()?;
    c.wait_converged(Duration::from_secs(20))?;
    let pods = [add_pod(&c, 0, "pod-a")?, add_pod(&c, 1, "pod-b")?];
    all_reach(&pods, None)?;
    let before = c.all_routes()?;
    let monitors = RouteMonitor::start_all(&c)?;
    let run = PingRun::start(
        &pods[0].ns,
        &pods[1].ip,
        500,
        Duration::from_millis(10),
        c.dir.path(),
    )?;
    let (leader, dst) = kill_leader_then_lease(&c, &mut ec)?;
    let failures = with_a_member_down(&mut c)?;
    let s = run.finish(Duration::from_secs(20))?;
    assert_eq!(s.lost(), 0, "pod packets lost:\n{}", s.text);
    for (i, m) in monitors.into_iter().enumerate() {
        let changes = owned_changes_but(&m.stop(), &dst);
        assert!(
            changes.is_empty(),
            "node {i}: owned routes changed when the leader died:\n{}",
            changes.join("\n")
        );
        let mut now = c.routes(i)?;
        now.retain(|(d, _)| *d != dst);
        assert_eq!(now, before[i], "node {i}");
    }
    assert!(
        failures.is_empty(),
        "with member m{leader} ({}) down:\n{}\n{}",
        ips[leader],
        failures.join("\n"),
        c.log(2)
    );
    ping(&pods[1].ns, &pods[0].ip)?;
    Ok(())
}
