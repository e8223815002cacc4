//! The CNI protocol as a runtime sees it from the real binary: VERSION, environment and
//! config validation, error objects on stdout (cni-notes §4 cases 1-8, a representative
//! subset; the full matrix is unit-tested in-process in cni-plugin/tests/dispatch.rs).

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Result;
use hostgw_harness::{
    Netns,
    cni::{Call, Reply, command},
    pod::{NETWORK, Node, err_code, ns_path, ok_json, verb_call, with},
    require_root,
};
use serde_json::json;

const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn node() -> Result<Node> {
    let n = Node::new("proto")?;
    n.write_subnet_file("198.18.3.0/24", None, None)?;
    Ok(n)
}

/// An error reply is exactly one JSON object on one line of stdout.
fn one_object(r: &Reply) {
    assert_eq!(
        r.stdout.trim_end().lines().count(),
        1,
        "stdout: {:?}",
        r.stdout
    );
}

#[test]
fn cni_version_command() -> Result<()> {
    require_root();
    let n = node()?;
    let bare = Call {
        command: "VERSION",
        ..Default::default()
    };
    let r = n.invoke(&bare, &json!(""))?;
    // invoke sends the JSON string `""`: not a config, and VERSION does not care.
    let v = ok_json(&r)?;
    assert_eq!(v["supportedVersions"], json!(SUPPORTED));
    assert_eq!(v["cniVersion"], "1.1.0");
    one_object(&r);
    // libcni sends {"cniVersion": …} and dummy attachment variables.
    let libcni = Call {
        command: "VERSION",
        netns: Some("dummy"),
        ifname: Some("dummy"),
        path: Some("dummy"),
        ..Default::default()
    };
    let v = ok_json(&n.invoke(&libcni, &json!({"cniVersion": "1.0.0"}))?)?;
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(v["supportedVersions"], json!(SUPPORTED));

    // VERSION with nothing on stdin at all (stdin is /dev/null).
    let mut c = command(&n.plugin, &n.ns, &bare);
    let out = hostgw_harness::run_timeout(&mut c, Duration::from_secs(10))?;
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["supportedVersions"], json!(SUPPORTED));
    Ok(())
}

/// Go skel answers VERSION without reading stdin (cni-notes §4 case 1); a runtime that
/// leaves stdin open must not hang the call. The plugin reads stdin to echo the asked
/// `cniVersion` (the spec's wording) but gives up after 100 ms for VERSION.
#[test]
fn cni_version_does_not_wait_for_stdin() -> Result<()> {
    require_root();
    let n = node()?;
    let call = Call {
        command: "VERSION",
        ..Default::default()
    };
    let mut child = command(&n.plugin, &n.ns, &call)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdin = child.stdin.take();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut done = None;
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait()? {
            done = Some(st);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(stdin);
    if done.is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
    assert!(
        done.is_some_and(|s| s.success()),
        "VERSION blocked reading a stdin that stays open"
    );
    Ok(())
}

#[test]
fn cni_no_or_unknown_command() -> Result<()> {
    require_root();
    let n = node()?;
    let mut c = command(&n.plugin, &n.ns, &Call::default());
    c.env_remove("CNI_COMMAND");
    let out = hostgw_harness::run_timeout(&mut c, Duration::from_secs(10))?;
    assert!(out.status.success());
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CNI protocol versions supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"),
        "{stderr}"
    );

    let r = n.invoke(&verb_call("NOPE"), &n.conf("ptp", "1.0.0"))?;
    let e = err_code(&r, 4)?;
    assert_eq!(e["msg"], "unknown CNI_COMMAND: NOPE");
    one_object(&r);
    Ok(())
}

#[test]
fn cni_environment_errors() -> Result<()> {
    require_root();
    let n = node()?;
    let conf = n.conf("ptp", "1.0.0");
    let pod = Netns::new("pod")?;
    let path = ns_path(&pod);
    let missing = |cmd: &'static str| Call {
        command: cmd,
        ..Default::default()
    };
    for (cmd, msg) in [
        (
            "ADD",
            "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME] missing",
        ),
        (
            "CHECK",
            "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME] missing",
        ),
        (
            "DEL",
            "required env variables [CNI_CONTAINERID,CNI_IFNAME] missing",
        ),
        ("GC", "required env variables [CNI_PATH] missing"),
    ] {
        let r = n.invoke(&missing(cmd), &conf)?;
        assert_eq!(err_code(&r, 4)?["msg"], msg, "{cmd}");
        one_object(&r);
    }
    // Empty is missing (libcni sets all six, the unused ones empty).
    let empty_netns = Call {
        netns: Some(""),
        ..Call::attach("ADD", "c1", &path)
    };
    assert_eq!(
        err_code(&n.invoke(&empty_netns, &conf)?, 4)?["msg"],
        "required env variables [CNI_NETNS] missing"
    );
    for bad_id in ["bad/id", "-lead", "a b", "x;y"] {
        let e = err_code(&n.invoke(&Call::attach("ADD", bad_id, &path), &conf)?, 4)?;
        assert_eq!(e["details"], bad_id, "{e}");
    }
    for bad_if in ["0123456789abcdef", ".", "..", "a/b", "a:b", "a b"] {
        let call = Call {
            ifname: Some(bad_if),
            ..Call::attach("ADD", "c1", &path)
        };
        err_code(&n.invoke(&call, &conf)?, 4)?;
        let del = Call {
            ifname: Some(bad_if),
            ..Call::attach("DEL", "c1", &path)
        };
        err_code(&n.invoke(&del, &conf)?, 4)?;
    }
    // None of that touched the node or the pod.
    n.assert_clean(NETWORK)?;
    assert_eq!(pod.links()?, ["lo"]);
    Ok(())
}

#[test]
fn cni_stdin_and_config_errors() -> Result<()> {
    require_root();
    let n = node()?;
    let pod = Netns::new("pod")?;
    let path = ns_path(&pod);
    let add = Call::attach("ADD", "c1", &path);
    let conf = n.conf("ptp", "1.0.0");
    let raw = |s: &str| hostgw_harness::cni::invoke(&n.plugin, &n.ns, &add, s);

    // Unreadable stdin (a directory): I/O error.
    let mut c = command(&n.plugin, &n.ns, &add);
    c.stdin(std::fs::File::open(n.tmp.path())?);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let out = child.wait_with_output()?;
    let r = Reply {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    err_code(&r, 5)?;

    err_code(&raw("{not json")?, 6)?;
    err_code(&raw("")?, 6)?;
    let mut no_name = conf.clone();
    no_name.as_object_mut().unwrap().remove("name");
    assert_eq!(
        err_code(&n.invoke(&add, &no_name)?, 7)?["msg"],
        "missing network name"
    );
    err_code(&n.invoke(&add, &with(&conf, "name", json!("bad name")))?, 7)?;
    err_code(&n.invoke(&add, &with(&conf, "name", json!("../up")))?, 7)?;
    err_code(&n.invoke(&add, &with(&conf, "mode", json!("overlay")))?, 7)?;
    err_code(&n.invoke(&add, &with(&conf, "mtu", json!(20)))?, 7)?;

    // Versions: absent = 0.1.0 (unsupported), garbage is a decode error.
    let mut no_version = conf.clone();
    no_version.as_object_mut().unwrap().remove("cniVersion");
    let e = err_code(&n.invoke(&add, &no_version)?, 1)?;
    assert!(
        e["details"]
            .as_str()
            .unwrap()
            .contains("config is \"0.1.0\""),
        "{e}"
    );
    for bad in ["0.2.0", "9.9.9"] {
        let e = err_code(&n.invoke(&add, &with(&conf, "cniVersion", json!(bad)))?, 1)?;
        assert_eq!(e["msg"], "incompatible CNI versions");
        assert!(e["details"].as_str().unwrap().contains("1.1.0"), "{e}");
    }
    for bad in ["1.x.0", "1.0", "", "v1.0.0"] {
        err_code(&n.invoke(&add, &with(&conf, "cniVersion", json!(bad)))?, 6)?;
    }
    n.assert_clean(NETWORK)?;
    assert_eq!(pod.links()?, ["lo"]);
    Ok(())
}

/// CNI_NETNS that does not exist, or is not a network namespace: ADD fails, nothing
/// reserved.
#[test]
fn cni_add_with_bad_netns() -> Result<()> {
    require_root();
    let n = node()?;
    let conf = n.conf("ptp", "1.0.0");
    let not_ns = n.tmp.path().join("not-a-netns");
    std::fs::write(&not_ns, "")?;
    let gone = "/run/netns/hgwt-does-not-exist".to_owned();
    for path in [gone, not_ns.display().to_string()] {
        let r = n.invoke(&Call::attach("ADD", "c1", &path), &conf)?;
        assert!(!r.ok(), "ADD into {path} succeeded");
        one_object(&r);
        n.assert_clean(NETWORK)?;
    }
    Ok(())
}

/// Unknown keys (capabilities, ipam, anything) pass through; a logFile takes the log
/// lines off stderr; nothing but the result is on stdout.
#[test]
fn cni_unknown_keys_and_log_file() -> Result<()> {
    require_root();
    let n = node()?;
    let pod = Netns::new("pod")?;
    let log = n.tmp.path().join("hostgw.log");
    let mut conf = n.conf("ptp", "1.0.0");
    conf["capabilities"] = json!({"portMappings": true, "ips": true});
    conf["ipam"] = json!({});
    conf["somethingElse"] = json!({"x": [1, 2]});
    conf["cni.dev/something"] = json!(true);
    conf["logFile"] = json!(log);
    let r = n.add(&conf, "c1", &pod)?;
    ok_json(&r)?;
    assert_eq!(r.stdout.trim_end().lines().count(), 1);
    let again = Netns::new("pod")?;
    let r = n.add(&conf, "c1", &again)?;
    assert!(!r.ok());
    assert!(
        r.stderr.is_empty(),
        "with logFile the log goes to the file: {}",
        r.stderr
    );
    let text = std::fs::read_to_string(&log)?;
    assert!(text.contains("ADD c1: error"), "{text}");
    Ok(())
}
