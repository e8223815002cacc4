//! Nodes joining and leaving a running cluster with pods: every other node routes to a new
//! node within a second of its lease, and drops the route within a second of a release;
//! the pods of the new node talk to the others, and those of the remaining nodes keep
//! talking after it left.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use hostgw_harness::{
    Proc, bin,
    cluster::{add_pod, all_reach, del_pod, first_times, has_route, ping_once},
    require_root,
    routed::{Cluster, Spec, subnet_key},
};

#[test]
fn cluster_node_join_and_release_are_routed_within_a_second() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec::default())?;
    c.start(0)?;
    c.start(1)?;
    c.wait_converged(Duration::from_secs(20))?;
    let mut pods = vec![add_pod(&c, 0, "pod-a")?, add_pod(&c, 1, "pod-b")?];

    // Join: node 2's daemon starts; its lease exists once its subnet file is written (the
    // file is written after the etcd transaction that created the key).
    let t0 = Instant::now();
    c.start(2)?;
    let mut lease_at = None;
    let joined = first_times(&c, &[0, 1], t0, Duration::from_secs(20), |i| {
        if lease_at.is_none() && c.subnet(2).is_some() {
            lease_at = Some(t0.elapsed());
        }
        let Some(s) = c.subnet(2) else { return false };
        has_route(&c, i, &s, Some(&c.nodes[2].ip))
    })?;
    let lease_at = lease_at.context("lease of node 2 never seen")?;
    let sub2 = c.subnet(2).unwrap();
    eprintln!(
        "join: daemon started, lease after {lease_at:?}, routes on nodes 0 and 1 after {joined:?}"
    );
    for (i, at) in joined.iter().enumerate() {
        let after = at.saturating_sub(lease_at);
        assert!(
            after <= Duration::from_secs(1),
            "node {i} routed to the new node {after:?} after its lease (> 1 s)\n{}",
            c.logs()
        );
    }
    // The new node's pods talk to the others, both ways, as soon as the node has its
    // routes too.
    c.wait_converged(Duration::from_secs(5))?;
    pods.push(add_pod(&c, 2, "pod-c")?);
    all_reach(&pods, None).with_context(|| c.logs())?;

    // Release: the runtime has drained node 2, its daemon is stopped, the operator runs
    // `hostgw-routed release`. Timed from the start of that command.
    del_pod(&c, &pods[2])?;
    let gone_pod = pods.pop().unwrap();
    c.nodes[2]
        .daemon
        .as_mut()
        .unwrap()
        .stop(Duration::from_secs(5));
    let mut cmd = c.nodes[2].ns.cmd(bin("hostgw-routed"));
    cmd.arg("release")
        .args(c.common_args(2))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    let t0 = Instant::now();
    let mut release = Proc::spawn(cmd)?;
    let mut release_done = None;
    let dropped = first_times(&c, &[0, 1], t0, Duration::from_secs(10), |i| {
        if release_done.is_none() && release.exited().is_some() {
            release_done = Some(t0.elapsed());
        }
        !has_route(&c, i, &sub2, None)
    })?;
    let status = wait_for_exit(&mut release)?;
    assert!(status.success(), "release failed: {status}");
    eprintln!(
        "release: command ran {:?}, routes gone on nodes 0 and 1 after {dropped:?} (from its start)",
        release_done.unwrap_or_default()
    );
    for (i, at) in dropped.iter().enumerate() {
        assert!(
            *at <= Duration::from_secs(1),
            "node {i} dropped the released node's route {at:?} after the release started (> 1 s)\n{}",
            c.logs()
        );
    }
    assert!(
        c.etcd.get_prefix(&subnet_key(&sub2))?.is_empty(),
        "key of the released node gone"
    );
    assert!(
        c.routes(2)?.is_empty(),
        "released node keeps no owned route"
    );
    // The remaining pods are untouched; the released subnet is no longer reachable.
    all_reach(&pods, None)?;
    assert!(
        !ping_once(&pods[0].ns, &gone_pod.ip),
        "released subnet still reachable"
    );
    for i in [0, 1] {
        assert_eq!(c.routes(i)?.len(), 1, "node {i}: {:?}", c.routes(i)?);
    }
    Ok(())
}

fn wait_for_exit(p: &mut Proc) -> Result<std::process::ExitStatus> {
    hostgw_harness::wait_for("release to finish", Duration::from_secs(20), || p.exited())
}
