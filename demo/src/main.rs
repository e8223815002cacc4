//! The main job: a hostgw cluster on this machine, in network namespaces.
//!
//! A switch (bridge), a real etcd, three nodes each running `hostgw-routed`, two pods per
//! node wired by the `hostgw` CNI plugin exactly as a runtime calls it, and one more pod
//! started by a real runtime (containerd + runc inside node 0, `ctr run --cni`, a busybox
//! image built here, our plugin and conflist installed by `manifests/install-cni.sh`);
//! every pod pings every other pod across nodes (IPv4 and IPv6), then `hostgw-routed
//! status` of one node, then everything is torn down: on success, on failure, and on
//! Ctrl-C (every namespace, process and container is a Drop guard, and SIGINT/SIGTERM
//! are turned into an orderly teardown).
//!
//! `--ipv6-only`: the same cluster with only `IPv6Network` in the network config, nodes
//! whose only addresses and default route are IPv6 and etcd reached over IPv6; pods get
//! only IPv6 addresses. (The containerd step is left out: `ctr run --cni` hands the demo
//! the pod's IPv4 address.)

#![forbid(unsafe_code)]

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use hostgw_harness::{
    cluster::{CniHost, CtrPod, Pod, add_pod, busybox_image, del_pod, ping},
    containerd::Containerd,
    require_root,
    routed::{CONFIG_V6, CONFIG_V6_ONLY, Cluster, Spec},
};
use tokio::signal::unix::{SignalKind, signal};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Turns SIGINT and SIGTERM into a flag the steps check, through tokio's signal streams
/// on a thread of their own (tokio installs the handler; no `unsafe` here). Not with a
/// blocked signal mask and `sigwait`: a mask is inherited across fork and exec, and every
/// daemon the demo starts would then ignore the SIGTERM that stops it.
fn catch_signals() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let (mut int, mut term) = rt.block_on(async {
        std::io::Result::Ok((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    })?;
    std::thread::spawn(move || {
        rt.block_on(async {
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                INTERRUPTED.store(true, Ordering::SeqCst);
            }
        })
    });
    Ok(())
}

/// One line per step; fails once the user asked to stop, so that the teardown runs.
fn step(t0: Instant, msg: &str) -> Result<()> {
    println!("[{:>6.2}s] {msg}", t0.elapsed().as_secs_f64());
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn main() -> Result<()> {
    let ipv6_only = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--ipv6-only") => true,
        Some(other) => bail!("unknown argument {other:?}; usage: demo [--ipv6-only]"),
    };
    require_root();
    catch_signals()?;
    let t0 = Instant::now();
    let r = if ipv6_only { run6(t0) } else { run(t0) };
    match &r {
        Ok(()) => println!(
            "[{:>6.2}s] done: no namespace, process, container or route of the demo is left",
            t0.elapsed().as_secs_f64()
        ),
        Err(e) => println!(
            "[{:>6.2}s] stopped ({e:#}); everything was torn down",
            t0.elapsed().as_secs_f64()
        ),
    }
    r
}

/// etcd and three nodes running `hostgw-routed`, converged.
fn start_cluster(t0: Instant) -> Result<Cluster> {
    step(
        t0,
        "starting etcd and 3 node namespaces on one L2 segment (198.19.0.0/24, fd19:19::/64)",
    )?;
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
    )?;
    cluster.start_all()?;
    for i in 0..3 {
        let subnet = cluster.wait_subnet(i)?;
        let n = &cluster.nodes[i];
        step(
            t0,
            &format!(
                "{} ({}) runs hostgw-routed and leased {subnet}",
                n.name, n.ip
            ),
        )?;
    }
    cluster.wait_converged(Duration::from_secs(10))?;
    for i in 0..3 {
        let routes: Vec<String> = cluster
            .routes(i)?
            .iter()
            .map(|(d, g)| format!("{d} via {g}"))
            .collect();
        let name = &cluster.nodes[i].name;
        step(
            t0,
            &format!("{name} routes (proto 75): {}", routes.join(", ")),
        )?;
    }
    Ok(cluster)
}

/// etcd and three IPv6-only nodes running `hostgw-routed`, converged.
fn start_cluster6(t0: Instant) -> Result<Cluster> {
    step(
        t0,
        "starting etcd and 3 IPv6-only node namespaces on one L2 segment (fd19:19::/64)",
    )?;
    let mut cluster = Cluster::ipv6_only(3)?;
    step(
        t0,
        &format!(
            "etcd is up at {}; network config {CONFIG_V6_ONLY}",
            cluster.etcd.endpoint
        ),
    )?;
    cluster.start_all()?;
    let subnets = cluster.wait_converged6(Duration::from_secs(20))?;
    for (i, subnet) in subnets.iter().enumerate() {
        let n = &cluster.nodes[i];
        let routes: Vec<String> = cluster
            .routes(i)?
            .iter()
            .map(|(d, g)| format!("{d} via {g}"))
            .collect();
        step(
            t0,
            &format!(
                "{} ({}) leased {subnet}; routes (proto 75): {}",
                n.name,
                n.ip6,
                routes.join(", ")
            ),
        )?;
    }
    Ok(cluster)
}

/// The IPv6-only demo: cluster, pods, every pod pings every other, status, teardown.
fn run6(t0: Instant) -> Result<()> {
    let cluster = start_cluster6(t0)?;
    let pods = add_pods(t0, &cluster)?;
    ping_all(t0, &pods)?;
    println!("\n$ hostgw-routed status   (on {})", cluster.nodes[0].name);
    print!("{}", cluster.cli(0, "status", &[])?);
    println!();
    for p in &pods {
        del_pod(&cluster, p)?;
    }
    step(
        t0,
        "pods deleted (DEL); tearing down the daemons, etcd and the namespaces",
    )?;
    drop(pods);
    drop(cluster);
    Ok(())
}

/// Two pods per node, wired by the plugin as a runtime calls it.
fn add_pods(t0: Instant, cluster: &Cluster) -> Result<Vec<Pod>> {
    let mut pods: Vec<Pod> = Vec::new();
    for node in 0..3 {
        for k in 0..2 {
            let p = add_pod(cluster, node, &format!("pod-{node}-{k}"))?;
            step(
                t0,
                &format!(
                    "pod {} on {} (hostgw plugin, shipped conflist): {}",
                    p.name,
                    cluster.nodes[node].name,
                    p.addrs().join(" ")
                ),
            )?;
            pods.push(p);
        }
    }
    Ok(pods)
}

/// Every pod pings every other pod on every address it has.
fn ping_all(t0: Instant, pods: &[Pod]) -> Result<()> {
    let mut pairs = 0;
    for a in pods {
        for b in pods.iter().filter(|b| b.name != a.name) {
            for ip in b.addrs() {
                ping(&a.ns, ip).with_context(|| format!("{} -> {} ({ip})", a.name, b.name))?;
            }
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
            "all {pairs} pod pairs reach each other over {} ({cross} of them across nodes)",
            if pods.iter().all(|p| p.ip.is_empty()) {
                "IPv6"
            } else {
                "IPv4 and IPv6"
            }
        ),
    )
}

/// A pod through the real runtime on node 0: it reaches the pods of the other nodes and
/// they reach it; then the status of node 0, and the runtime's teardown.
fn runtime_pod(t0: Instant, cluster: &Cluster, ctd: &Containerd, pods: &[Pod]) -> Result<()> {
    std::thread::scope(|s| -> Result<()> {
        let web = CtrPod::start(s, ctd, "web")?;
        step(
            t0,
            &format!(
                "ctr run --cni: container {} on {} got {} from the hostgw plugin",
                web.id, cluster.nodes[0].name, web.ip
            ),
        )?;
        ping_all(t0, pods)?;
        for p in pods.iter().filter(|p| p.node != 0) {
            web.ping(&p.ip)
                .with_context(|| format!("container -> {}", p.name))?;
            ping(&p.ns, &web.ip).with_context(|| format!("{} -> container", p.name))?;
        }
        step(
            t0,
            "the containerd pod and the pods on node-1 and node-2 reach each other",
        )?;

        println!("\n$ hostgw-routed status   (on {})", cluster.nodes[0].name);
        print!("{}", cluster.cli(0, "status", &[])?);
        println!();

        web.stop()?;
        step(
            t0,
            "container stopped: ctr called the plugin's DEL and removed the container",
        )
    })
}

fn run(t0: Instant) -> Result<()> {
    let cluster = start_cluster(t0)?;
    let pods = add_pods(t0, &cluster)?;

    // A pod through a real runtime on node 0. Declared before containerd: outlives it.
    let cni = CniHost::new()?;
    let image_dir = tempfile::tempdir()?;
    let tar = busybox_image(image_dir.path())?;
    step(t0, "built a busybox-static OCI image with umoci")?;
    let ctd = Containerd::start(&cluster.nodes[0].ns)?;
    cni.install(&ctd, &cluster, 0)?;
    ctd.import(&tar)?;
    step(
        t0,
        &format!(
            "containerd runs inside {} (private mount namespace); install-cni.sh put hostgw \
             in /opt/cni/bin and 10-hostgw.conflist in /etc/cni/net.d there",
            cluster.nodes[0].name
        ),
    )?;
    runtime_pod(t0, &cluster, &ctd, &pods)?;
    for p in &pods {
        del_pod(&cluster, p)?;
    }
    step(
        t0,
        "pods deleted (DEL); tearing down containerd, the daemons, etcd and the namespaces",
    )?;
    drop(ctd);
    drop(cni);
    drop(pods);
    drop(cluster);
    Ok(())
}
