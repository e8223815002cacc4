//! hostgw-routed against hostile input on the kernel, validation and operator side:
//! routes that are not ours, leases that must be refused without touching readiness, text
//! meant for the operator's terminal, a flood of HTTP connections, signals at start-up.

use std::{fs::File, process::Stdio, time::Duration};

use anyhow::Result;
use hostgw_harness::{
    Proc, bin,
    cluster::{rejected, status_json},
    require_root,
    routed::{CONFIG_V6, Cluster, PREFIX, Spec, lease_json, metric, subnet_key},
    wait_for,
};
use serde_json::Value;

/// Subnets 198.18.<n>.0/24 no node holds, `count` of them.
fn free(c: &Cluster, count: usize) -> Vec<String> {
    let used: Vec<String> = (0..c.nodes.len()).filter_map(|i| c.subnet(i)).collect();
    (200..=254u8)
        .map(|n| format!("198.18.{n}.0/24"))
        .filter(|s| !used.contains(s))
        .take(count)
        .collect()
}

/// `ip -j route show` for one destination in node `i`, in the given table.
fn route_of(c: &Cluster, i: usize, dst: &str, table: &str) -> Result<Vec<Value>> {
    let v = c.nodes[i]
        .ns
        .ip_json(&["route", "show", "table", table, "exact", dst])?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

fn key_of(subnet: &str) -> String {
    subnet.replace('/', "-")
}

#[test]
fn routed_hostile_kernel_foreign_and_connected_routes_are_never_taken_over() -> Result<()> {
    require_root();
    let c = Cluster::converged(Spec {
        nodes: 2,
        ..Spec::default()
    })?;
    let f = free(&c, 3);
    let (stat, devr, local) = (&f[0], &f[1], &f[2]);
    let n0 = &c.nodes[0].ns;
    // A static route, a device route of proto boot (a "connected" one) and a local-table
    // entry, all for subnets a peer lease will name.
    n0.ip(&[
        "route",
        "add",
        stat,
        "via",
        "198.19.0.99",
        "proto",
        "static",
    ])?;
    n0.ip(&["route", "add", devr, "dev", "eth0", "proto", "boot"])?;
    n0.ip(&[
        "route", "add", "local", local, "dev", "lo", "table", "local",
    ])?;
    for (k, s) in f.iter().enumerate() {
        c.etcd.put(
            &subnet_key(s),
            &lease_json(&format!("198.19.0.{}", 50 + k), &format!("peer-{k}")),
        )?;
    }
    // Node 1 has none of those routes: the leases are good there (the watch works).
    wait_for("leases routed on node 1", Duration::from_secs(5), || {
        let r = c.routes(1).ok()?;
        f.iter()
            .all(|s| r.iter().any(|(d, _)| d == s))
            .then_some(())
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let check_untouched = || -> Result<()> {
        let s = route_of(&c, 0, stat, "main")?;
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0]["protocol"], "static", "{s:?}");
        assert_eq!(s[0]["gateway"], "198.19.0.99", "{s:?}");
        let d = route_of(&c, 0, devr, "main")?;
        assert_eq!(d.len(), 1, "{d:?}");
        // `ip -j` leaves out the default protocol, boot.
        assert_eq!(d[0]["protocol"].as_str().unwrap_or("boot"), "boot", "{d:?}");
        assert_eq!(route_of(&c, 0, local, "local")?.len(), 1);
        let owned = c.routes(0)?;
        assert!(
            !owned.iter().any(|(d, _)| f.contains(d)),
            "no proto 75 route for a destination held by another: {owned:?}"
        );
        Ok(())
    };
    check_untouched()?;
    let r = rejected(&status_json(&c, 0)?);
    assert_eq!(r[&key_of(stat)], "foreign-route", "{r:?}");
    assert_eq!(r[&key_of(devr)], "connected", "{r:?}");
    assert_eq!(r[&key_of(local)], "connected", "{r:?}");
    let m = c.metrics(0)?;
    assert_eq!(
        metric(&m, "hostgw_leases_rejected", &["reason=\"foreign-route\""]),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "hostgw_leases_rejected", &["reason=\"connected\""]),
        2.0
    );
    assert_eq!(c.readyz(0)?, "200");
    // The leases go away: nothing of theirs is deleted either.
    for s in &f {
        c.etcd.del(&subnet_key(s))?;
    }
    wait_for("leases withdrawn on node 1", Duration::from_secs(5), || {
        let r = c.routes(1).ok()?;
        (!f.iter().any(|s| r.iter().any(|(d, _)| d == s))).then_some(())
    })?;
    std::thread::sleep(Duration::from_millis(500));
    check_untouched()?;
    Ok(())
}

#[test]
fn routed_hostile_kernel_pod_network_over_the_node_link_is_refused_at_start() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec {
        nodes: 1,
        config: r#"{"Network":"198.16.0.0/12","SubnetLen":24,"Backend":{"Type":"host-gw"}}"#,
        ..Spec::default()
    })?;
    let before = c.nodes[0].ns.ip(&["route", "show"])?;
    c.start(0)?;
    let status = wait_for(
        "daemon to refuse the config",
        Duration::from_secs(15),
        || c.nodes[0].daemon.as_mut()?.exited(),
    )?;
    assert!(!status.success(), "{status:?}");
    let log = c.log(0);
    assert!(log.contains("overlaps 198.19.0.0/24"), "{log}");
    assert!(c.subnet(0).is_none(), "no subnet claimed");
    assert!(
        c.etcd.get_prefix(&format!("{PREFIX}/subnets/"))?.is_empty(),
        "nothing written to etcd"
    );
    assert_eq!(c.nodes[0].ns.ip(&["route", "show"])?, before);
    Ok(())
}

#[test]
fn routed_hostile_kernel_refused_leases_never_change_readiness() -> Result<()> {
    require_root();
    let c = Cluster::converged(Spec {
        nodes: 2,
        config: CONFIG_V6,
        ..Spec::default()
    })?;
    assert_eq!(c.readyz(0)?, "200");
    let f = free(&c, 5);
    let pod_of_node1 = c.subnet(1).unwrap().replace(".0/24", ".7");
    let v6 = |s: &str, hop: &str| {
        format!(
            r#"{{"PublicIP":"198.19.0.60","PublicIPv6":"{hop}","IPv6Subnet":"{s}","BackendType":"host-gw","NodeName":"v6-peer"}}"#
        )
    };
    let evil_name = "x\n  node-9  198.18.9.0/24  via 198.19.0.9  installed\u{1b}[2J";
    let puts = [
        (
            subnet_key(&f[0]),
            // Site-local: no node has one. (A link-local next hop is routed through the
            // uplink: see routed_link_local.rs.)
            v6("fd18:18:0:f0::/64", "fec0::1"),
            "bad-next-hop",
        ),
        (
            subnet_key(&f[1]),
            lease_json(&pod_of_node1, "pod-hop"),
            "bad-next-hop",
        ),
        (
            subnet_key(&f[2]),
            lease_json("198.19.0.62", "vx").replace("host-gw", "vxlan"),
            "backend",
        ),
        (
            subnet_key(&f[3]).replace("-24", "-024"),
            lease_json("198.19.0.63", "padded"),
            "malformed",
        ),
        (
            subnet_key(&f[4]),
            serde_json::json!({"PublicIP":"198.19.0.64","BackendType":"host-gw","NodeName":evil_name})
                .to_string(),
            "bad-node-name",
        ),
    ];
    for (k, v, _) in &puts {
        c.etcd.put(k, v)?;
    }
    // Readiness stays 200 the whole time, on every node.
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        for i in 0..2 {
            assert_eq!(c.readyz(i)?, "200", "node {i}:\n{}", c.log(i));
        }
    }
    let owned = c.routes(0)?;
    assert_eq!(owned.len(), 2, "only node 1's two routes: {owned:?}");
    let r = rejected(&status_json(&c, 0)?);
    for (k, _, reason) in &puts {
        let name = k.rsplit('/').next().unwrap();
        assert_eq!(
            r.get(name).map(String::as_str),
            Some(*reason),
            "{name}: {r:?}"
        );
    }
    // The operator's terminal: no escape sequence, no forged line.
    let text = c.cli(0, "status", &[])?;
    assert!(!text.contains('\u{1b}'), "{text:?}");
    assert!(!text.contains("\n  node-9"), "{text}");
    let log = c.log(0);
    assert!(
        !log.contains('\u{1b}') && !log.contains("\n  node-9"),
        "{log}"
    );
    Ok(())
}

#[test]
fn routed_hostile_kernel_sighup_at_start_is_ignored_and_signals_are_logged() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec {
        nodes: 1,
        ..Spec::default()
    })?;
    // etcd down: the daemon sits in its start-up retry loop.
    c.etcd.kill();
    c.start(0)?;
    std::thread::sleep(Duration::from_millis(300));
    let d = c.nodes[0].daemon.as_mut().unwrap();
    for sig in [
        nix::sys::signal::Signal::SIGHUP,
        nix::sys::signal::Signal::SIGUSR1,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        d.signal(sig);
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(d.exited().is_none(), "alive after SIGHUP:\n{}", c.log(0));
    let d = c.nodes[0].daemon.as_mut().unwrap();
    let st = d.stop(Duration::from_secs(5)).expect("exit status");
    assert!(st.success(), "{st:?}");
    let log = c.log(0);
    assert_eq!(log.matches("signal ignored").count(), 3, "{log}");
    assert!(log.contains("SIGHUP") && log.contains("SIGUSR1"), "{log}");
    assert!(
        log.contains("signal received; shutting down") && log.contains("SIGTERM"),
        "{log}"
    );
    Ok(())
}

#[test]
fn routed_hostile_kernel_malformed_endpoint_fails_at_once() -> Result<()> {
    require_root();
    let c = Cluster::new(Spec {
        nodes: 1,
        ..Spec::default()
    })?;
    let mut cmd = c.nodes[0].ns.cmd(bin("hostgw-routed"));
    cmd.args([
        "run",
        "--etcd-endpoints",
        "http://198.19.0.2:2379/v3?x",
        "--node-name",
        "node-0",
        "--public-ip",
        &c.nodes[0].ip,
    ]);
    let t = std::time::Instant::now();
    let out = hostgw_harness::run_timeout(&mut cmd, Duration::from_secs(10))?;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("etcd endpoint"), "{err}");
    let mut cmd = c.nodes[0].ns.cmd(bin("hostgw-routed"));
    cmd.args([
        "run",
        "--etcd-endpoints",
        &c.etcd.endpoint,
        "--node-name",
        "",
    ]);
    let out = hostgw_harness::run_timeout(&mut cmd, Duration::from_secs(10))?;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is empty"));
    Ok(())
}

/// Starts node `i`'s daemon under `prlimit --nofile=N:N`: a hard limit it cannot raise.
fn start_limited(c: &mut Cluster, i: usize, nofile: u32) -> Result<()> {
    let mut args = vec!["run".to_owned()];
    args.extend(c.common_args(i));
    args.extend(["--metrics-addr".to_owned(), "127.0.0.1:9475".to_owned()]);
    let n = &mut c.nodes[i];
    let log = File::options().create(true).append(true).open(&n.log)?;
    let mut cmd = n.ns.cmd("prlimit");
    cmd.arg(format!("--nofile={nofile}:{nofile}"))
        .arg(bin("hostgw-routed"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(log)
        .env("RUST_LOG", "info");
    n.daemon = Some(Proc::spawn(cmd)?);
    Ok(())
}

#[test]
fn routed_hostile_kernel_connection_flood_never_stops_routing() -> Result<()> {
    require_root();
    let mut c = Cluster::new(Spec {
        nodes: 2,
        ..Spec::default()
    })?;
    start_limited(&mut c, 0, 256)?;
    c.start(1)?;
    c.wait_converged(Duration::from_secs(20))?;
    // 1,000 idle connections to /metrics, held open, from inside node 0.
    let mut flood = c.nodes[0].ns.cmd("bash");
    flood.args([
        "-c",
        "ulimit -n 4096; for i in $(seq 1000); do exec {fd}<>/dev/tcp/127.0.0.1/9475 || exit 1; done; sleep 60",
    ]);
    let _flood = Proc::spawn(flood)?;
    std::thread::sleep(Duration::from_secs(2));
    let f = free(&c, 3);
    for (k, s) in f.iter().enumerate() {
        c.etcd.put(
            &subnet_key(s),
            &lease_json(&format!("198.19.0.{}", 70 + k), &format!("late-{k}")),
        )?;
        wait_for(
            &format!("{s} routed during the flood"),
            Duration::from_secs(3),
            || c.routes(0).ok()?.iter().any(|(d, _)| d == s).then_some(()),
        )
        .map_err(|e| anyhow::anyhow!("{e}\n{}", c.log(0)))?;
    }
    // Deleted ones are withdrawn too, and kernel drift is still repaired.
    c.etcd.del(&subnet_key(&f[0]))?;
    wait_for("withdrawn during the flood", Duration::from_secs(3), || {
        (!c.routes(0).ok()?.iter().any(|(d, _)| *d == f[0])).then_some(())
    })?;
    c.nodes[0].ns.ip(&["route", "del", &f[1]])?;
    wait_for("repaired during the flood", Duration::from_secs(3), || {
        c.routes(0)
            .ok()?
            .iter()
            .any(|(d, _)| *d == f[1])
            .then_some(())
    })?;
    let pid = c.nodes[0].daemon.as_ref().unwrap().pid();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    assert!(fds < 200, "{fds} fds open in the daemon");
    let log = c.log(0);
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(c.nodes[0].daemon.as_mut().unwrap().exited().is_none());
    // A scrape still gets through once idle connections time out (2 s each, 64 at a time).
    let mut scrape = c.nodes[0].ns.cmd("curl");
    scrape.args(["-sf", "--max-time", "40", "http://127.0.0.1:9475/healthz"]);
    let out = scrape.output()?;
    assert!(out.status.success(), "{out:?}");
    Ok(())
}
