//! Hostile input through the dispatcher (issue 12, items 11-13 and 16): each is refused
//! with the right code and a message naming what was wrong, before anything is touched,
//! and nothing makes a call wait without a bound. No root: the kernel is the fake.

use std::{collections::HashMap, path::Path, sync::mpsc, time::Duration};

use hostgw_cni::{datapath::FakeDatapath, dispatch};
use serde_json::{Value, json};

struct Run {
    code: i32,
    out: Value,
}

/// One call on its own thread: a hang fails the test instead of stalling it.
fn run(cmd: &str, id: &str, conf: &Value, mtu: u32) -> Run {
    let env: HashMap<String, String> = [
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", "/run/netns/pod"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let stdin = conf.to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let dp = FakeDatapath {
            mtu,
            ..Default::default()
        };
        let getenv = move |k: &str| env.get(k).cloned();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let o = dispatch::run(&getenv, &mut stdin.as_bytes(), &mut out, &mut err, &dp);
        let _ = tx.send((
            o.code,
            String::from_utf8(out).unwrap(),
            dp.pods.borrow().len(),
        ));
    });
    let (code, out, _) = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{cmd} did not answer within 20 s: {conf}"));
    let out = if out.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("stdout {out:?}: {e}"))
    };
    Run { code, out }
}

fn conf(dir: &Path) -> Value {
    json!({"cniVersion": "1.0.0", "name": "podnet", "type": "hostgw",
           "subnet": "198.18.3.0/24", "dataDir": dir.join("data"), "mtu": 1400})
}

fn with(mut c: Value, k: &str, v: Value) -> Value {
    c[k] = v;
    c
}

/// Asserts error `code` whose msg holds every one of `names`; returns the msg.
fn refused(r: &Run, code: u64, names: &[&str]) -> String {
    assert_eq!(r.code, 1, "expected failure, got {}", r.out);
    assert_eq!(r.out["code"], code, "{}", r.out);
    let msg = r.out["msg"].as_str().unwrap().to_owned();
    for n in names {
        assert!(msg.contains(n), "{n:?} not in {msg:?}");
    }
    msg
}

#[test]
fn nonsense_config_is_code_7_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let base = conf(dir.path());
    let v6 = with(base.clone(), "ipv6Subnet", json!("fd18:18:0:3::/64"));
    for (c, names) in [
        (
            with(base.clone(), "subnet", json!("0.0.0.0/0")),
            vec!["subnet", "0.0.0.0/0"],
        ),
        (
            with(base.clone(), "subnet", json!("198.18.3.0/31")),
            vec!["subnet", "/31"],
        ),
        (
            with(base.clone(), "subnet", json!("198.18.3.4/32")),
            vec!["subnet", "/32"],
        ),
        (
            with(base.clone(), "ipv6Subnet", json!("fd18::/127")),
            vec!["ipv6Subnet", "/127"],
        ),
        (
            with(base.clone(), "ipv6Subnet", json!("fd18::1/128")),
            vec!["ipv6Subnet", "/128"],
        ),
        (
            with(base.clone(), "dns", json!({"nameservers": "198.18.0.10"})),
            vec!["dns"],
        ),
        (
            with(base.clone(), "dns", json!(["198.18.0.10"])),
            vec!["dns"],
        ),
        (
            with(base.clone(), "mtu", json!("1400")),
            vec!["mtu", "1400"],
        ),
        (
            with(v6.clone(), "mtu", json!(1279)),
            vec!["mtu 1279", "1280", "fd18:18:0:3::/64"],
        ),
        (with(base.clone(), "dataDir", json!("")), vec!["dataDir"]),
        (
            with(base.clone(), "dataDir", json!("rel/dir")),
            vec!["dataDir", "rel/dir"],
        ),
        (
            with(
                base.clone(),
                "runtimeConfig",
                json!({"ips": ["198.18.3.9/33"]}),
            ),
            vec!["runtimeConfig.ips", "198.18.3.9/33"],
        ),
        (
            with(
                base.clone(),
                "runtimeConfig",
                json!({"ips": ["198.18.4.9"]}),
            ),
            vec!["runtimeConfig.ips", "198.18.4.9", "no pool"],
        ),
        (
            with(
                base.clone(),
                "runtimeConfig",
                json!({"ips": ["198.18.3.1"]}),
            ),
            vec!["198.18.3.1", "gateway"],
        ),
        (
            with(
                base.clone(),
                "runtimeConfig",
                json!({"ips": ["198.18.3.255/24"]}),
            ),
            vec!["198.18.3.255", "not usable"],
        ),
        (
            with(base.clone(), "prevResult", json!({"routes": [{"dst": 5}]})),
            vec!["prevResult"],
        ),
    ] {
        let code = if names[0] == "prevResult" { 6 } else { 7 };
        refused(&run("ADD", "c1", &c, 1500), code, &names);
        assert!(
            !dir.path().join("data").exists(),
            "{c}: the store was touched"
        );
    }
}

/// The MTU of the subnet file, and the host's when nothing sets it, are checked too.
#[test]
fn nonsense_mtu_of_the_subnet_file_or_the_host_is_refused_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("subnet.json");
    std::fs::write(
        &file,
        r#"{"subnet":"198.18.3.0/24","ipv6Subnet":"fd18:18:0:3::/64","mtu":1000}"#,
    )
    .unwrap();
    let from_file = json!({"cniVersion": "1.0.0", "name": "podnet", "subnetFile": file,
                           "dataDir": dir.path().join("data")});
    refused(
        &run("ADD", "c1", &from_file, 1500),
        7,
        &["mtu", "1000", "subnet file"],
    );
    std::fs::write(
        &file,
        r#"{"subnet":"198.18.3.0/24","ipv6Subnet":"fd18:18:0:3::/64"}"#,
    )
    .unwrap();
    refused(
        &run("ADD", "c1", &from_file, 1200),
        4,
        &["1200", "default-route link"],
    );
    assert!(!dir.path().join("data").exists());
    assert_eq!(run("ADD", "c1", &from_file, 1500).code, 0);
}

#[test]
fn version_must_be_an_exact_supported_string_and_is_echoed() {
    let dir = tempfile::tempdir().unwrap();
    for odd in ["01.0.0", "1.0.00", "0.04.0"] {
        let r = run(
            "ADD",
            "c1",
            &with(conf(dir.path()), "cniVersion", json!(odd)),
            1500,
        );
        assert_eq!(r.out["code"], 1, "{odd}: {}", r.out);
        assert_eq!(
            r.out["cniVersion"], odd,
            "the error carries the request's version"
        );
        assert!(r.out["details"].as_str().unwrap().contains(odd));
    }
    let r = run("VERSION", "c1", &json!({"cniVersion": "01.0.0"}), 1500);
    assert_eq!(
        r.out["cniVersion"], "1.1.0",
        "VERSION never echoes a string it does not speak"
    );
    assert!(!dir.path().join("data").exists());
}

#[test]
fn io_failures_are_code_5_with_the_path_and_long_ids_are_code_4() {
    let dir = tempfile::tempdir().unwrap();
    // /proc takes no directories: the store cannot be created, whoever we run as.
    let c = with(
        conf(dir.path()),
        "dataDir",
        json!("/proc/hostgw-no-such-dir"),
    );
    refused(
        &run("ADD", "c1", &c, 1500),
        5,
        &["/proc/hostgw-no-such-dir"],
    );
    let s = with(
        with(c, "cniVersion", json!("1.1.0")),
        "subnet",
        json!("198.18.3.0/24"),
    );
    refused(
        &run("STATUS", "", &s, 1500),
        50,
        &["/proc/hostgw-no-such-dir"],
    );
    // A container id the kernel cannot take in the host veth's alias (254 bytes).
    let long = "a".repeat(240);
    let msg = refused(
        &run("ADD", &long, &conf(dir.path()), 1500),
        4,
        &["CNI_CONTAINERID"],
    );
    assert!(msg.contains("254"), "{msg}");
    assert!(!dir.path().join("data").exists());
    assert_eq!(
        run("DEL", &long, &conf(dir.path()), 1500).code,
        0,
        "DEL still succeeds"
    );
}

#[test]
fn special_files_in_the_store_never_hang_and_corrupt_entries_are_io_errors() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(dir.path());
    let net = dir.path().join("data/podnet");
    std::fs::create_dir_all(&net).unwrap();
    let fifo =
        |name: &str| nix::unistd::mkfifo(&net.join(name), nix::sys::stat::Mode::S_IRWXU).unwrap();
    // A marker that is a FIFO (or a symlink to one) is read as "no marker", then replaced.
    fifo("last_reserved_ip.0");
    // Reservations that are no regular file keep their IP taken but are never read.
    fifo("198.18.3.2");
    std::fs::create_dir(net.join("198.18.3.3")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", net.join("198.18.3.4")).unwrap();
    let r = run("ADD", "c1", &c, 1500);
    assert_eq!(r.code, 0, "{}", r.out);
    assert_eq!(r.out["ips"][0]["address"], "198.18.3.5/24");
    let marker = std::fs::symlink_metadata(net.join("last_reserved_ip.0")).unwrap();
    assert!(marker.is_file(), "the FIFO marker was replaced by a file");
    assert_eq!(run("DEL", "c1", &c, 1500).code, 0);

    // A reservation too large to be one is an I/O error for that entry, naming it.
    std::fs::write(net.join("198.18.3.9"), vec![b'x'; 100_000]).unwrap();
    refused(&run("ADD", "c2", &c, 1500), 5, &["198.18.3.9"]);
    std::fs::remove_file(net.join("198.18.3.9")).unwrap();

    // The lock itself: a FIFO or a symlink there is refused at once.
    std::fs::remove_file(net.join("lock")).unwrap();
    fifo("lock");
    refused(&run("ADD", "c2", &c, 1500), 5, &["lock"]);
    std::fs::remove_file(net.join("lock")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", net.join("lock")).unwrap();
    refused(&run("ADD", "c2", &c, 1500), 5, &["lock"]);
    std::fs::remove_file(net.join("lock")).unwrap();
    assert_eq!(run("ADD", "c2", &c, 1500).code, 0);
}

#[test]
fn stdin_is_bounded_in_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = conf(dir.path());
    c["padding"] = json!("x".repeat(5 * 1024 * 1024));
    refused(&run("ADD", "c1", &c, 1500), 5, &["stdin", "larger than"]);
    assert!(!dir.path().join("data").exists());
}
