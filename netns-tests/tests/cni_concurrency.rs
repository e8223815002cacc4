//! Many plugin processes at once on one node, and the IPAM lock's bound
//! (cni-notes §4 case 22, §1.11, §5.6).

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    sync::Barrier,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use hostgw_harness::{
    Netns,
    cni::Reply,
    pod::{
        NETWORK, Node, err_code, global_addrs, host_veth_name, link, ns_path, ok_empty, ok_json,
    },
    require_root, wait_for,
};
use serde_json::Value;

/// `count` pod namespaces, made by a few threads.
fn pods(count: usize) -> Result<Vec<Netns>> {
    let chunks: Vec<Result<Vec<Netns>>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|t| {
                s.spawn(move || {
                    (0..count)
                        .filter(|i| i % 4 == t)
                        .map(|_| Netns::new("pod"))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("pod thread"))
            .collect()
    });
    let mut out = Vec::new();
    for c in chunks {
        out.extend(c?);
    }
    Ok(out)
}

/// Runs `f(i)` for every i at once (threads released together by a barrier).
fn all_at_once<T: Send>(count: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let barrier = Barrier::new(count);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..count)
            .map(|i| {
                let (f, barrier) = (&f, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    f(i)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("call thread"))
            .collect()
    })
}

fn ipv4_of(r: &Value) -> Ipv4Addr {
    r["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn expect_all_ok(replies: Vec<Result<Reply>>, what: &str) -> Result<Vec<Reply>> {
    let mut out = Vec::new();
    for (i, r) in replies.into_iter().enumerate() {
        let r = r?;
        if !r.ok() {
            bail!(
                "{what} #{i} failed: stdout {:?} stderr {:?}",
                r.stdout,
                r.stderr
            );
        }
        out.push(r);
    }
    Ok(out)
}

/// The test: 100 ADDs in parallel on one node give 100 distinct addresses and no
/// error; then 100 parallel DELs leave no reservation, no host veth, no /32 route.
#[test]
fn cni_hundred_parallel_adds_and_dels_ptp() -> Result<()> {
    require_root();
    const N: usize = 100;
    let n = Node::new("par")?;
    n.write_subnet_file("198.18.3.0/24", None, None)?;
    let conf = n.conf("ptp", "1.0.0");
    let pods = pods(N)?;
    let id = |i: usize| format!("par-{i:03}");

    let started = Instant::now();
    let replies = expect_all_ok(all_at_once(N, |i| n.add(&conf, &id(i), &pods[i])), "ADD")?;
    eprintln!("{N} parallel ADDs took {:?}", started.elapsed());
    let results: Vec<Value> = replies.iter().map(ok_json).collect::<Result<_>>()?;
    let ips: BTreeSet<Ipv4Addr> = results.iter().map(ipv4_of).collect();
    assert_eq!(ips.len(), N, "addresses handed out twice");
    // Under one lock the allocations are sequential: exactly .2 to .101.
    let want: BTreeSet<Ipv4Addr> = (2..2 + N as u8)
        .map(|h| Ipv4Addr::new(198, 18, 3, h))
        .collect();
    assert_eq!(ips, want);

    let res = n.reservations(NETWORK)?;
    assert_eq!(res.len(), N, "{res:?}");
    for (i, r) in results.iter().enumerate() {
        assert_eq!(res[&ipv4_of(r).to_string()], format!("{}\r\neth0", id(i)));
        assert_eq!(
            global_addrs(&pods[i], "eth0")?,
            [r["ips"][0]["address"].as_str().unwrap()]
        );
    }
    assert_eq!(n.host_veths()?.len(), N);
    assert_eq!(n.pod_host_routes()?.len(), N);

    let started = Instant::now();
    let dels = all_at_once(N, |i| n.del(&conf, &id(i), Some(&ns_path(&pods[i]))));
    eprintln!("{N} parallel DELs took {:?}", started.elapsed());
    for r in expect_all_ok(dels, "DEL")? {
        ok_empty(&r)?;
    }
    n.assert_clean(NETWORK)?;
    for p in &pods {
        assert_eq!(p.links()?, ["lo"]);
    }
    Ok(())
}

/// Bridge mode: the first ADDs race to create the bridge; then DELs and new ADDs run
/// together (§22 "concurrent ADD+DEL").
#[test]
fn cni_parallel_adds_and_dels_bridge() -> Result<()> {
    require_root();
    const N: usize = 30;
    let n = Node::new("parb")?;
    n.write_subnet_file("198.18.3.0/24", None, None)?;
    let conf = n.conf("bridge", "1.0.0");
    let pods = pods(2 * N)?;
    let id = |i: usize| format!("br-{i:03}");

    let first = expect_all_ok(all_at_once(N, |i| n.add(&conf, &id(i), &pods[i])), "ADD")?;
    let ips: BTreeSet<Ipv4Addr> = first.iter().map(|r| ipv4_of(&r.json().unwrap())).collect();
    assert_eq!(ips.len(), N);
    assert_eq!(link(&n.ns, "cni0")?["linkinfo"]["info_kind"], "bridge");

    // DEL the first half while the second batch comes in.
    let mixed = all_at_once(N, |k| {
        if k < N / 2 {
            n.del(&conf, &id(k), None)
        } else {
            let i = N + k;
            n.add(&conf, &id(i), &pods[i])
        }
    });
    let mixed = expect_all_ok(mixed, "mixed ADD/DEL")?;
    let live: Vec<usize> = (N / 2..N).chain(N + N / 2..2 * N).collect();
    let res = n.reservations(NETWORK)?;
    assert_eq!(res.len(), live.len(), "{res:?}");
    let holders: BTreeSet<&str> = res.values().map(String::as_str).collect();
    assert_eq!(holders.len(), live.len(), "one address per live pod");
    for r in mixed.iter().filter(|r| !r.stdout.trim().is_empty()) {
        let ip = ipv4_of(&r.json()?).to_string();
        assert!(res.contains_key(&ip));
    }
    let veths = n.host_veths()?;
    assert_eq!(veths.len(), live.len());
    for v in &veths {
        assert_eq!(link(&n.ns, v)?["master"], "cni0", "{v}");
    }
    for k in &live {
        assert!(veths.contains(&host_veth_name(NETWORK, &id(*k), "eth0")));
    }
    let dels = all_at_once(live.len(), |j| n.del(&conf, &id(live[j]), None));
    expect_all_ok(dels, "DEL")?;
    n.assert_clean(NETWORK)
}

/// The test 4: with the IPAM lock held by someone else, ADD (and DEL, STATUS)
/// give up after the plugin's bound (10 s) with "try again" (11), leaving nothing; once
/// the lock is free, ADD works and gets the first address.
#[test]
fn cni_ipam_lock_wait_is_bounded() -> Result<()> {
    require_root();
    let n = Node::new("lock")?;
    n.write_subnet_file("198.18.3.0/24", None, None)?;
    let conf = n.conf("ptp", "1.1.0");
    std::fs::create_dir_all(n.net_dir(NETWORK))?;
    let lock = n.net_dir(NETWORK).join("lock");
    let mark = n.tmp.path().join("locked");
    // One process that opens the lock file, takes the flock and then becomes `sleep`,
    // so the lock lives exactly as long as that PID (run inside the node: it also dies
    // with the namespace).
    let script = format!(
        "exec 9>>'{}' && flock 9 && touch '{}' && exec sleep 60",
        lock.display(),
        mark.display()
    );
    let mut holder = n.ns.spawn("sh", &["-c", &script])?;
    wait_for(
        "the test to hold the IPAM lock",
        Duration::from_secs(10),
        || mark.exists().then_some(()),
    )?;

    let pod = Netns::new("pod")?;
    let started = Instant::now();
    let replies = all_at_once(3, |k| match k {
        0 => n.add(&conf, "l1", &pod),
        1 => n.del(&conf, "l0", None),
        _ => n.status(&conf),
    });
    let waited = started.elapsed();
    for (what, r) in ["ADD", "DEL", "STATUS"].iter().zip(replies) {
        let e = err_code(&r?, 11)?;
        assert!(e["msg"].as_str().unwrap().contains("lock"), "{what}: {e}");
    }
    assert!(
        waited >= Duration::from_secs(9),
        "gave up too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(25),
        "the bound did not hold: {waited:?}"
    );
    assert!(n.reservations(NETWORK)?.is_empty());
    assert!(n.host_veths()?.is_empty());
    assert_eq!(
        pod.links()?,
        ["lo"],
        "ADD touched the pod without an address"
    );

    holder.kill();
    let r = n.add_ok(&conf, "l1", &pod)?;
    assert_eq!(r["ips"][0]["address"], "198.18.3.2/24");
    ok_empty(&n.del(&conf, "l1", None)?)?;
    n.assert_clean(NETWORK)
}
