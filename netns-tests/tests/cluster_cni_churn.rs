//! 200 pod ADD/DEL cycles on one node of a running cluster (its daemon reconciling on
//! every netlink event the plugin causes), with the plugin SIGKILLed in a tenth of the
//! ADDs and those sandboxes simply gone, as a runtime that lost track leaves them; then GC
//! with the live attachments: no reservation, link or route leaks, no two live pods ever
//! shared an address, and the live pods still talk across nodes.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use hostgw_harness::{
    Netns,
    cluster::{Pod, add_pod, del_pod, ping, ping_once, plugin, pod_conf, reservations},
    cni::Call,
    pod::{NETWORK, host_veth_name, routes},
    require_root,
    routed::{CONFIG_V6, Cluster, Spec},
};
use serde_json::{Value, json};

const CYCLES: usize = 200;
const LIVE: usize = 8;

/// Host veths of node `node`.
fn host_veths(c: &Cluster, node: usize) -> Result<BTreeSet<String>> {
    Ok(c.nodes[node]
        .ns
        .links()?
        .into_iter()
        .filter(|l| l.starts_with("hgw"))
        .collect())
}

/// Destinations of the node's routes through host veths (the plugin's per-pod routes).
fn pod_routes(c: &Cluster, node: usize) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for fam in ["-4", "-6"] {
        for r in routes(&c.nodes[node].ns, fam)? {
            if r.contains(" dev hgw") {
                let dst = r.split_whitespace().next().unwrap_or("?");
                out.insert(
                    dst.trim_end_matches("/32")
                        .trim_end_matches("/128")
                        .to_owned(),
                );
            }
        }
    }
    Ok(out)
}

/// How long a whole ADD takes here and now (the quickest of three), so that the kills
/// spread over all of it.
fn whole_add(c: &Cluster) -> Result<Duration> {
    let mut full = Duration::MAX;
    for k in 0..3 {
        let t = Instant::now();
        let p = add_pod(c, 0, &format!("probe-{k}"))?;
        full = full.min(t.elapsed());
        del_pod(c, &p)?;
    }
    Ok(full)
}

/// The churn so far: the live pods (oldest first) and what the cycles did.
#[derive(Default)]
struct Churn {
    live: VecDeque<Pod>,
    adds: usize,
    killed_finished: usize,
    killed_midway: usize,
    killed_early: usize,
    seen_addrs: usize,
}

impl Churn {
    /// Cycle `k` of the killed tenth: killed at 0..1.1× a whole ADD; the sandbox then goes
    /// without a DEL (its namespace is deleted, taking the pod end with it).
    fn killed(&mut self, c: &Cluster, k: usize, full: Duration) -> Result<()> {
        let id = format!("churn-{k}");
        let pod = Netns::new("pod")?;
        let j = (k / 10) as f64;
        let delay = full.mul_f64(j * 1.1 / (CYCLES / 10) as f64);
        let before = reservations(c, 0)?.len();
        let finished = c.nodes[0].add_killed_after(&pod_conf(c, 0), &id, &pod, delay)?;
        let traces = reservations(c, 0)?.len() > before
            || host_veths(c, 0)?.contains(&host_veth_name(NETWORK, &id, "eth0"));
        match (finished, traces) {
            (true, _) => self.killed_finished += 1,
            (false, true) => self.killed_midway += 1,
            (false, false) => self.killed_early += 1,
        }
        Ok(())
    }

    /// Cycle `k` of the others: an ADD that must succeed; the oldest live pod goes once
    /// there are more than `LIVE`.
    fn add(&mut self, c: &Cluster, k: usize) -> Result<()> {
        let id = format!("churn-{k}");
        let pod = add_pod(c, 0, &id)
            .with_context(|| format!("cycle {k}; reservations {:?}", reservations(c, 0)))?;
        self.adds += 1;
        // No two live pods share an address, and the store says it is this pod's.
        let res = reservations(c, 0)?;
        for a in pod.addrs() {
            for other in &self.live {
                assert!(
                    !other.addrs().contains(&a),
                    "cycle {k}: {id} got {a}, which live pod {} holds",
                    other.name
                );
            }
            assert_eq!(
                res.get(a).map(String::as_str),
                Some(id.as_str()),
                "cycle {k}: {a}"
            );
            self.seen_addrs += 1;
        }
        self.live.push_back(pod);
        if self.live.len() > LIVE {
            let old = self.live.pop_front().unwrap();
            del_pod(c, &old).with_context(|| format!("cycle {k}"))?;
        }
        Ok(())
    }
}

/// GC with the live attachments, as the runtime sends it.
fn gc_keeping(c: &Cluster, live: &VecDeque<Pod>) -> Result<()> {
    let valid: Vec<Value> = live
        .iter()
        .map(|p| json!({"containerID": p.name, "ifname": "eth0"}))
        .collect();
    let mut conf = pod_conf(c, 0);
    conf["cniVersion"] = json!("1.1.0");
    conf["cni.dev/valid-attachments"] = json!(valid);
    let reply = plugin(
        c,
        0,
        &Call {
            command: "GC",
            path: Some("/opt/cni/bin"),
            ..Default::default()
        },
        &conf,
    )?;
    assert!(reply.ok(), "GC failed: {} {}", reply.stdout, reply.stderr);
    Ok(())
}

/// Node 0 holds exactly the live pods' reservations, host veths and routes.
fn assert_only_live_left(c: &Cluster, live: &VecDeque<Pod>) -> Result<()> {
    let want_addrs: BTreeMap<String, String> = live
        .iter()
        .flat_map(|p| {
            p.addrs()
                .into_iter()
                .map(|a| (a.to_owned(), p.name.clone()))
        })
        .collect();
    let want_veths: BTreeSet<String> = live
        .iter()
        .map(|p| host_veth_name(NETWORK, &p.name, "eth0"))
        .collect();
    let want_routes: BTreeSet<String> = want_addrs.keys().cloned().collect();
    assert_eq!(reservations(c, 0)?, want_addrs, "reservations after GC");
    assert_eq!(host_veths(c, 0)?, want_veths, "host veths after GC");
    assert_eq!(pod_routes(c, 0)?, want_routes, "pod routes after GC");
    Ok(())
}

/// The live pods and the remote one reach each other (both families where both have one).
fn assert_live_talk(live: &VecDeque<Pod>, remote: &Pod) -> Result<()> {
    for p in live {
        for (from, to) in [(&p.ns, &remote.ip), (&remote.ns, &p.ip)] {
            assert!(
                ping_once(from, to) || ping(from, to).is_ok(),
                "{} <-> remote",
                p.name
            );
        }
        if let (Some(a), Some(b)) = (&p.ip6, &remote.ip6) {
            ping(&p.ns, b)?;
            ping(&remote.ns, a)?;
        }
    }
    Ok(())
}

#[test]
fn cluster_heavy_200_pod_cycles_with_killed_plugins_then_gc_leak_nothing() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec {
        nodes: 2,
        tls: false,
        config: CONFIG_V6,
    })?;
    c.start_all()?;
    c.wait_converged(Duration::from_secs(20))?;
    let owned_before = c.routes(0)?;
    let remote = add_pod(&c, 1, "remote")?;
    let full = whole_add(&c)?;

    let mut churn = Churn::default();
    let t0 = Instant::now();
    for k in 0..CYCLES {
        if k % 10 == 3 {
            churn.killed(&c, k, full)?;
        } else {
            churn.add(&c, k)?;
        }
        if k % 50 == 49 {
            let p = churn.live.back().unwrap();
            ping(&p.ns, &remote.ip).with_context(|| format!("cycle {k}: {} to remote", p.name))?;
        }
    }
    let churn_time = t0.elapsed();
    gc_keeping(&c, &churn.live)?;
    let Churn {
        live,
        adds,
        killed_finished,
        killed_midway,
        killed_early,
        seen_addrs,
    } = churn;
    eprintln!(
        "{CYCLES} cycles in {churn_time:?} (whole ADD {full:?}): {adds} ADDs, {} killed \
         ({killed_finished} finished, {killed_midway} mid-way, {killed_early} early); \
         {seen_addrs} addresses handed out",
        CYCLES - adds
    );
    assert_only_live_left(&c, &live)?;
    assert!(
        killed_midway > 0,
        "no kill landed mid-way: the test proved nothing"
    );
    // The daemon never touched the plugin's routes nor lost its own.
    assert_eq!(c.routes(0)?, owned_before, "owned routes of node 0");
    assert!(!c.log(0).contains("route removed"), "{}", c.log(0));
    assert_live_talk(&live, &remote)?;
    for p in &live {
        del_pod(&c, p)?;
    }
    assert!(
        reservations(&c, 0)?.is_empty(),
        "{:?}",
        reservations(&c, 0)?
    );
    assert!(host_veths(&c, 0)?.is_empty());
    assert!(pod_routes(&c, 0)?.is_empty());
    Ok(())
}
