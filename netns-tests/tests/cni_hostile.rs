//! The real `hostgw` binary against hostile input that needs the kernel (issue 12, plugin
//! items 10, 12, 13, 14, 15, 16): a CNI_NETNS that is the node's own or no network
//! namespace, an alias the kernel cannot take, a read-only or full dataDir, special files
//! in the store, a second attachment, DEL racing ADD, and a relative dataDir.

use std::{
    collections::BTreeMap,
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use hostgw_harness::{
    Netns,
    cni::{Call, Reply},
    pod::{NETWORK, Node, err_code, global_addrs, ns_path, ok_empty, ok_json, routes, with},
    require_root,
};
use serde_json::{Value, json};

fn node(tag: &str) -> Result<Node> {
    let n = Node::new(tag)?;
    n.write_subnet_file("198.18.3.0/24", Some("fd18:18:0:3::/64"), Some(1450))?;
    Ok(n)
}

/// The node holds nothing but `lo`, no global address and no route: the pod's address
/// and default route were not put on the host.
fn assert_node_untouched(n: &Node) -> Result<()> {
    assert_eq!(n.ns.links()?, ["lo"], "a link was made in the node");
    assert!(
        global_addrs(&n.ns, "lo")?.is_empty(),
        "address on the node's lo"
    );
    for fam in ["-4", "-6"] {
        let r = routes(&n.ns, fam)?;
        assert!(r.is_empty(), "routes on the node: {r:?}");
    }
    n.assert_clean(NETWORK)
}

/// Item 10: the node's own namespace (by its name and as the plugin's /proc/self), and
/// paths that are no network namespace, are refused with code 4 and nothing changes.
#[test]
fn cni_netns_of_the_host_or_not_a_netns_is_refused() -> Result<()> {
    require_root();
    let n = node("ownns")?;
    let conf = n.conf("ptp", "1.0.0");
    let file = n.tmp.path().join("regular-file");
    std::fs::write(&file, "")?;
    let fifo = n.tmp.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU)?;
    let dangling = n.tmp.path().join("dangling");
    std::os::unix::fs::symlink(n.tmp.path().join("gone"), &dangling)?;
    let paths = [
        ns_path(&n.ns),
        "/proc/self/ns/net".into(),
        "/proc/thread-self/ns/net".into(),
        "/proc/self/ns/mnt".into(),
        "/proc/self/ns/user".into(),
        file.display().to_string(),
        fifo.display().to_string(),
        dangling.display().to_string(),
        n.tmp.path().display().to_string(),
        "/dev/null".into(),
    ];
    for (i, path) in paths.iter().enumerate() {
        let id = format!("c{i}");
        let e = err_code(&n.invoke(&Call::attach("ADD", &id, path), &conf)?, 4)
            .with_context(|| format!("CNI_NETNS={path}"))?;
        assert!(e["msg"].as_str().unwrap().contains("CNI_NETNS"), "{e}");
        assert_node_untouched(&n)?;
    }
    // CHECK of the node's own namespace is refused the same way; DEL still succeeds.
    let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": ns_path(&n.ns)}],
                      "ips": [{"address": "198.18.3.2/24", "interface": 0}]});
    let check = with(&conf, "prevResult", prev);
    err_code(
        &n.invoke(&Call::attach("CHECK", "c0", &ns_path(&n.ns)), &check)?,
        4,
    )?;
    ok_empty(&n.del(&conf, "c0", Some(&ns_path(&n.ns)))?)?;
    assert_node_untouched(&n)
}

/// Item 12: a container id whose alias the kernel cannot hold (IFALIASZ) is code 4
/// before anything is made; the longest one that fits works.
#[test]
fn cni_container_id_too_long_for_the_alias_is_code_4() -> Result<()> {
    require_root();
    let n = node("alias")?;
    let conf = n.conf("ptp", "1.0.0");
    let pod = Netns::new("pod")?;
    // "hostgw/podnet/" + id + "/eth0" must stay within 254 bytes (255 with the NUL).
    let fits = "f".repeat(254 - "hostgw/podnet/".len() - "/eth0".len());
    let too_long = format!("{fits}x");
    let e = err_code(&n.add(&conf, &too_long, &pod)?, 4)?;
    assert!(
        e["msg"].as_str().unwrap().contains("CNI_CONTAINERID"),
        "{e}"
    );
    assert_eq!(pod.links()?, ["lo"]);
    assert_node_untouched(&n)?;
    ok_empty(&n.del(&conf, &too_long, Some(&ns_path(&pod)))?)?;
    ok_json(&n.add(&conf, &fits, &pod)?)?;
    ok_empty(&n.del(&conf, &fits, Some(&ns_path(&pod)))?)?;
    n.assert_clean(NETWORK)
}

/// Runs the plugin in `n` inside a private mount namespace in which `setup` (a shell
/// script) has run first: the tmpfs it mounts on the data dir is seen by nobody else.
fn invoke_with_mounts(n: &Node, call: &Call, conf: &Value, setup: &str) -> Result<Reply> {
    let script = format!(
        "set -e\n{setup}\nexec nsenter --net={} -- {} </dev/stdin",
        ns_path(&n.ns),
        n.plugin.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    call.set_env(&mut cmd);
    run_cmd(cmd, conf)
}

/// Runs a prepared plugin command with `conf` on stdin, bounded in time.
fn run_cmd(mut cmd: Command, conf: &Value) -> Result<Reply> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(conf.to_string().as_bytes())?;
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out?,
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            bail!("plugin did not finish within 60 s");
        }
    };
    Ok(Reply {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Items 12 and 16: a read-only or full dataDir is code 5 naming the path for ADD (which
/// leaves no veth behind), and STATUS says not ready (50) instead of ready.
#[test]
fn cni_read_only_or_full_data_dir_is_code_5_and_status_not_ready() -> Result<()> {
    require_root();
    let n = node("rofull")?;
    let conf = n.conf("ptp", "1.1.0");
    let pod = Netns::new("pod")?;
    let data = n.data_dir();
    std::fs::create_dir_all(&data)?;
    let d = data.display();
    let cases = [
        (
            "read-only",
            format!("mount -t tmpfs -o ro,size=1m tmpfs {d}"),
        ),
        (
            "full",
            format!(
                "mount -t tmpfs -o size=64k tmpfs {d}\nmkdir -p {d}/{NETWORK}\n\
                 dd if=/dev/zero of={d}/fill bs=4k 2>/dev/null || true"
            ),
        ),
    ];
    for (what, setup) in cases {
        let path = ns_path(&pod);
        let r = invoke_with_mounts(&n, &Call::attach("ADD", "c1", &path), &conf, &setup)?;
        let e = err_code(&r, 5).with_context(|| format!("ADD with a {what} dataDir"))?;
        assert!(
            e["msg"].as_str().unwrap().contains(&d.to_string()),
            "{what}: {e}"
        );
        assert_eq!(pod.links()?, ["lo"], "{what}");
        assert!(n.host_veths()?.is_empty(), "{what}");
        let call = Call {
            command: "STATUS",
            path: Some("/opt/cni/bin"),
            ..Default::default()
        };
        let e = err_code(&invoke_with_mounts(&n, &call, &conf, &setup)?, 50)
            .with_context(|| format!("STATUS with a {what} dataDir"))?;
        assert!(e["msg"].as_str().unwrap().contains(&d.to_string()), "{e}");
    }
    // The same node with its real data dir is ready.
    ok_empty(&n.status(&conf)?)?;
    n.assert_clean(NETWORK)
}

/// Item 13: special files where the store keeps its files end every call in bounded time.
#[test]
fn cni_special_files_in_the_store_never_hang_an_add() -> Result<()> {
    require_root();
    let n = node("fifo")?;
    let conf = n.conf("ptp", "1.0.0");
    let net = n.net_dir(NETWORK);
    std::fs::create_dir_all(&net)?;
    let mkfifo = |p: &std::path::Path| nix::unistd::mkfifo(p, nix::sys::stat::Mode::S_IRWXU);
    mkfifo(&net.join("last_reserved_ip.0"))?;
    mkfifo(&net.join("last_reserved_ip.1"))?;
    mkfifo(&net.join("198.18.3.2"))?;
    std::os::unix::fs::symlink("/dev/zero", net.join("198.18.3.3"))?;
    let pod = Netns::new("pod")?;
    let start = std::time::Instant::now();
    let r = ok_json(&n.add(&conf, "c1", &pod)?)?;
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        r["ips"][0]["address"], "198.18.3.4/24",
        "taken names stay taken"
    );
    ok_empty(&n.del(&conf, "c1", Some(&ns_path(&pod)))?)?;
    // A FIFO as the lock: refused at once with the path, nothing made.
    std::fs::remove_file(net.join("lock"))?;
    mkfifo(&net.join("lock"))?;
    // ... with a FIFO as the logFile too: the error line goes to stderr instead.
    let log_fifo = n.tmp.path().join("log-fifo");
    mkfifo(&log_fifo)?;
    let logged = with(&conf, "logFile", json!(log_fifo));
    let r = n.add(&logged, "c2", &pod)?;
    let e = err_code(&r, 5)?;
    assert!(e["msg"].as_str().unwrap().contains("lock"), "{e}");
    assert!(r.stderr.contains("ADD c2: error 5"), "{:?}", r.stderr);
    assert_eq!(pod.links()?, ["lo"]);
    assert!(n.host_veths()?.is_empty());
    Ok(())
}

/// Item 14: a second attachment of one container (eth1) works in both modes, each
/// interface with its own address; DEL of either leaves the other working.
#[test]
fn cni_second_attachment_of_a_container_works_in_both_modes() -> Result<()> {
    require_root();
    for mode in ["ptp", "bridge"] {
        let n = node(&format!("two{}", &mode[..2]))?;
        let conf = n.conf(mode, "1.0.0");
        let pod = Netns::new("pod")?;
        let path = ns_path(&pod);
        let add = |ifname| {
            let call = Call {
                ifname: Some(ifname),
                ..Call::attach("ADD", "c1", &path)
            };
            n.invoke(&call, &conf)
        };
        let r0 = ok_json(&add("eth0")?).context(mode)?;
        let r1 = ok_json(&add("eth1")?).with_context(|| format!("{mode}: second attachment"))?;
        let a0 = r0["ips"][0]["address"].as_str().unwrap().to_owned();
        let a1 = r1["ips"][0]["address"].as_str().unwrap().to_owned();
        assert_ne!(a0, a1, "{mode}");
        assert_eq!(
            global_addrs(&pod, "eth1")?.len(),
            2,
            "{mode}: v4 and v6 on eth1"
        );
        pod.sh("ping -c1 -W2 198.18.3.1 >/dev/null")?;
        let reserved: Vec<String> = n.reservations(NETWORK)?.into_values().collect();
        assert!(
            reserved.contains(&"c1\r\neth0".to_owned())
                && reserved.contains(&"c1\r\neth1".to_owned())
        );
        let del = |ifname| {
            let call = Call {
                ifname: Some(ifname),
                ..Call::attach("DEL", "c1", &path)
            };
            n.invoke(&call, &conf)
        };
        ok_empty(&del("eth1")?)?;
        assert!(!pod.links()?.contains(&"eth1".to_owned()));
        pod.sh("ping -c1 -W2 198.18.3.1 >/dev/null")
            .with_context(|| format!("{mode}: eth0 after DEL of eth1"))?;
        ok_empty(&del("eth0")?)?;
        n.assert_clean(NETWORK)?;
    }
    Ok(())
}

/// What the node says about one container: its reservations and whether its pod has an
/// eth0 with a global IPv4 address (and which).
fn state(n: &Node, id: &str, pod: &Netns) -> Result<(Vec<String>, Option<String>)> {
    let held: Vec<String> = n
        .reservations(NETWORK)?
        .into_iter()
        .filter(|(_, who)| who.starts_with(&format!("{id}\r\n")))
        .map(|(ip, _)| ip)
        .collect();
    let addr = if pod.links()?.contains(&"eth0".to_owned()) {
        global_addrs(pod, "eth0")?
            .into_iter()
            .find(|a| a.starts_with("198.18."))
    } else {
        None
    };
    Ok((held, addr))
}

/// Item 15: DEL racing ADD of the same container ends either with the pod fully set up
/// and its addresses reserved, or with neither; never two pods with one address.
#[test]
fn cni_del_racing_add_leaves_a_consistent_node() -> Result<()> {
    require_root();
    let n = node("race")?;
    let conf = n.conf("bridge", "1.0.0");
    let mut live: BTreeMap<String, String> = BTreeMap::new();
    let mut pods = Vec::new();
    for i in 0..12 {
        let id = format!("r{i}");
        let pod = Netns::new("pod")?;
        let path = ns_path(&pod);
        let delay = Duration::from_millis((i % 6) * 8);
        let (add, del) = std::thread::scope(|s| {
            let a = s.spawn(|| n.invoke(&Call::attach("ADD", &id, &path), &conf));
            let d = s.spawn(|| {
                std::thread::sleep(delay);
                n.del(&conf, &id, Some(&path))
            });
            (a.join().expect("ADD thread"), d.join().expect("DEL thread"))
        });
        let (add, del) = (add?, del?);
        assert!(del.ok() || del.error_code() == Some(11), "DEL: {del:?}");
        let (held, addr) = state(&n, &id, &pod)?;
        match (&addr, held.is_empty()) {
            (Some(a), false) => {
                assert!(add.ok(), "{id}: pod set up by a failed ADD: {add:?}");
                let ip = a.split('/').next().unwrap().to_owned();
                assert!(held.contains(&ip), "{id}: pod has {a}, reserved {held:?}");
                live.insert(id.clone(), ip);
            }
            (None, true) => {}
            _ => bail!("{id}: inconsistent: pod address {addr:?}, reservations {held:?}"),
        }
        pods.push((id, pod));
    }
    let ips: Vec<&String> = live.values().collect();
    let unique: std::collections::BTreeSet<&&String> = ips.iter().collect();
    assert_eq!(
        unique.len(),
        ips.len(),
        "two pods with one address: {live:?}"
    );
    for (id, pod) in &pods {
        ok_empty(&n.del(&conf, id, Some(&ns_path(pod)))?)?;
    }
    n.assert_clean(NETWORK)
}

/// Item 16: an empty or relative dataDir is code 7 and nothing is written below the
/// working directory the runtime started the plugin in.
#[test]
fn cni_relative_data_dir_is_code_7_and_writes_nothing() -> Result<()> {
    require_root();
    let n = node("reldir")?;
    let pod = Netns::new("pod")?;
    let cwd = tempfile::tempdir()?;
    for dir in ["", "data", "./data", "../data"] {
        let conf = with(&n.conf("ptp", "1.0.0"), "dataDir", json!(dir));
        let mut cmd = hostgw_harness::cni::command(
            &n.plugin,
            &n.ns,
            &Call::attach("ADD", "c1", &ns_path(&pod)),
        );
        cmd.current_dir(cwd.path());
        let e = err_code(&run_cmd(cmd, &conf)?, 7).with_context(|| format!("dataDir {dir:?}"))?;
        assert!(e["msg"].as_str().unwrap().contains("dataDir"), "{e}");
        assert_eq!(
            std::fs::read_dir(cwd.path())?.count(),
            0,
            "dataDir {dir:?} wrote below the working directory"
        );
        assert_eq!(pod.links()?, ["lo"]);
    }
    Ok(())
}
