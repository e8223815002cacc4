//! A plugin SIGKILLed in the middle of ADD (a runtime's context deadline, cni-notes §5.6),
//! then DEL or GC: nothing leaks (cni-notes §4 cases 23, 47, 57).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hostgw_harness::{
    Netns,
    pod::{NETWORK, Node, ns_path, ok_empty},
    require_root,
};
use serde_json::json;

#[derive(Debug, Default)]
struct Tally {
    /// Killed before it left any trace.
    early: u32,
    /// Killed with a reservation or a link made: the cases that matter.
    midway: u32,
    /// Finished before the kill.
    finished: u32,
}

fn killed_mid_add(mode: &str, iterations: u32) -> Result<()> {
    let n = Node::new("crash")?;
    n.write_subnet_file("198.18.3.0/24", Some("fd18:18:0:3::/64"), None)?;
    let conf = n.conf(mode, "1.1.0");

    // How long one whole ADD takes here and now, so the kills spread over all of it (the
    // quickest of three: the first also creates the bridge, and the machine may be busy).
    let mut full = Duration::MAX;
    for probe in ["probe0", "probe1", "probe2"] {
        let pod = Netns::new("pod")?;
        let t = Instant::now();
        n.add_ok(&conf, probe, &pod)?;
        full = full.min(t.elapsed());
        ok_empty(&n.del(&conf, probe, None)?)?;
    }

    let mut tally = Tally::default();
    for i in 0..iterations {
        let id = format!("k{i}");
        let pod = Netns::new("pod")?;
        // 0 to ~1.1x a whole ADD, plus a few at 0..5 ms whatever the machine's speed.
        let delay = if i < 6 {
            Duration::from_micros(u64::from(i) * 1000)
        } else {
            full.mul_f64(f64::from(i - 6) * 1.1 / f64::from(iterations - 6))
        };
        let finished = n.add_killed_after(&conf, &id, &pod, delay)?;
        let traces = !n.reservations(NETWORK)?.is_empty() || !n.host_veths()?.is_empty();
        match (finished, traces) {
            (true, _) => tally.finished += 1,
            (false, true) => tally.midway += 1,
            (false, false) => tally.early += 1,
        }
        // The runtime's follow-up: DEL (with or without the netns), or GC with nothing valid.
        match i % 3 {
            0 => ok_empty(&n.del(&conf, &id, Some(&ns_path(&pod)))?)?,
            1 => ok_empty(&n.del(&conf, &id, None)?)?,
            _ => ok_empty(&n.gc(&conf, json!([]))?)?,
        }
        if let Err(e) = n.assert_clean(NETWORK) {
            bail!("{mode} iteration {i} (kill after {delay:?}, tally {tally:?}): {e}");
        }
        assert_eq!(
            pod.links()?,
            ["lo"],
            "{mode} iteration {i}: pod end left behind"
        );
    }
    eprintln!("{mode}: a whole ADD took {full:?}; kills: {tally:?}");
    assert!(
        tally.midway > 0,
        "no kill landed mid-way ({tally:?}): the test proved nothing"
    );

    // The node still works: a fresh ADD after all that gets an address and is clean.
    let pod = Netns::new("pod")?;
    n.add_ok(&conf, "after", &pod)?;
    ok_empty(&n.del(&conf, "after", None)?)?;
    n.assert_clean(NETWORK)
}

#[test]
fn cni_add_killed_midway_leaves_nothing_ptp() -> Result<()> {
    require_root();
    killed_mid_add("ptp", 30)
}

#[test]
fn cni_add_killed_midway_leaves_nothing_bridge() -> Result<()> {
    require_root();
    killed_mid_add("bridge", 30)
}
