//! The main job: a hostgw cluster on this machine, in network namespaces.
//!
//! A switch (bridge), a real etcd, three nodes each running `hostgw-routed`, two pods per
//! node wired by the `hostgw` CNI plugin exactly as a runtime calls it; every pod pings
//! every other pod across nodes (IPv4 and IPv6), then `hostgw-routed status` of one node,
//! then everything is torn down (also on failure: every namespace is a Drop guard).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hostgw_netns_tests::{
    Netns, bin,
    cni::{Call, invoke},
    must, require_root,
    routed::{CONFIG_V6, Cluster, Spec},
};
use serde_json::{Value, json};

struct Pod {
    name: String,
    node: usize,
    ns: Netns,
    ip: String,
    ip6: String,
}

fn step(t0: Instant, msg: &str) {
    println!("[{:>6.2}s] {msg}", t0.elapsed().as_secs_f64());
}

fn main() -> Result<()> {
    require_root();
    let t0 = Instant::now();
    step(
        t0,
        "starting etcd and 3 node namespaces on one L2 segment (198.19.0.0/24, fd19:19::/64)",
    );
    let mut cluster = Cluster::new(Spec {
        nodes: 3,
        tls: false,
        config: CONFIG_V6,
    })?;
    step(
        t0,
        &format!(
            "etcd is up at {}; network config {CONFIG_V6}",
            cluster.etcd.endpoint
        ),
    );
    cluster.start_all()?;
    for i in 0..3 {
        let subnet = cluster.wait_subnet(i)?;
        step(
            t0,
            &format!(
                "{} ({}) leased {subnet}",
                cluster.nodes[i].name, cluster.nodes[i].ip
            ),
        );
    }
    cluster.wait_converged(Duration::from_secs(10))?;
    for i in 0..3 {
        let routes: Vec<String> = cluster
            .routes(i)?
            .iter()
            .map(|(d, g)| format!("{d} via {g}"))
            .collect();
        step(
            t0,
            &format!("{} routes: {}", cluster.nodes[i].name, routes.join(", ")),
        );
    }

    let mut pods = Vec::new();
    for node in 0..3 {
        for k in 0..2 {
            pods.push(add_pod(&cluster, node, k)?);
            let p = pods.last().unwrap();
            step(
                t0,
                &format!(
                    "pod {} on {}: {} {}",
                    p.name, cluster.nodes[node].name, p.ip, p.ip6
                ),
            );
        }
    }

    let mut pairs = 0;
    for a in &pods {
        for b in pods.iter().filter(|b| b.name != a.name) {
            ping(&a.ns, &b.ip).with_context(|| format!("{} -> {} ({})", a.name, b.name, b.ip))?;
            ping(&a.ns, &b.ip6).with_context(|| format!("{} -> {} ({})", a.name, b.name, b.ip6))?;
            pairs += 1;
        }
    }
    let cross = pods
        .iter()
        .flat_map(|a| pods.iter().map(move |b| (a, b)))
        .filter(|(a, b)| a.node != b.node)
        .count();
    step(
        t0,
        &format!(
            "all {pairs} pod pairs reach each other over IPv4 and IPv6 ({cross} of them across nodes)"
        ),
    );

    println!("\n$ hostgw-routed status   (on {})", cluster.nodes[0].name);
    print!("{}", cluster.cli(0, "status", &[])?);
    println!();

    for p in &pods {
        del_pod(&cluster, p)?;
    }
    step(t0, "pods deleted; tearing down the cluster");
    drop(pods);
    drop(cluster);
    step(
        t0,
        "done: no namespace, process or route of the demo is left",
    );
    Ok(())
}

fn conf(cluster: &Cluster, node: usize) -> Value {
    let dir = cluster
        .dir
        .path()
        .join(format!("{}-ipam", cluster.nodes[node].name));
    json!({"cniVersion": "1.0.0", "name": "podnet", "type": "hostgw", "mode": "ptp",
           "subnetFile": cluster.nodes[node].subnet_file, "dataDir": dir})
}

fn add_pod(cluster: &Cluster, node: usize, k: usize) -> Result<Pod> {
    let name = format!("pod-{node}-{k}");
    let ns = Netns::new("pod")?;
    let path = ns.path().display().to_string();
    let call = Call::attach("ADD", &name, &path);
    let reply = invoke(
        &bin("hostgw"),
        &cluster.nodes[node].ns,
        &call,
        &conf(cluster, node).to_string(),
    )?;
    if !reply.ok() {
        bail!("ADD {name} failed: {} {}", reply.stdout, reply.stderr);
    }
    let result = reply.json()?;
    let addr = |i: usize| -> Result<String> {
        let a = result["ips"][i]["address"]
            .as_str()
            .context("no address in result")?;
        Ok(a.split('/').next().unwrap_or(a).to_owned())
    };
    Ok(Pod {
        name,
        node,
        ip: addr(0)?,
        ip6: addr(1)?,
        ns,
    })
}

fn del_pod(cluster: &Cluster, p: &Pod) -> Result<()> {
    let path = p.ns.path().display().to_string();
    let call = Call::attach("DEL", &p.name, &path);
    let reply = invoke(
        &bin("hostgw"),
        &cluster.nodes[p.node].ns,
        &call,
        &conf(cluster, p.node).to_string(),
    )?;
    if !reply.ok() {
        bail!("DEL {} failed: {}", p.name, reply.stdout);
    }
    Ok(())
}

fn ping(ns: &Netns, ip: &str) -> Result<()> {
    must(ns.cmd("ping").args(["-c", "1", "-W", "2", ip]))?;
    Ok(())
}
