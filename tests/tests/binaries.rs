//! The built binaries as a runtime or an operator meets them, without root: the plugin's
//! protocol answers that touch no kernel state, and the daemon's command line refusing bad
//! input with a message that says what is wrong.

use hostgw_tests::run;
use serde_json::Value;

fn stdout_json(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

#[test]
fn plugin_version_and_about() {
    let o = run(
        "hostgw",
        &[],
        &[("CNI_COMMAND", "VERSION")],
        r#"{"cniVersion":"1.0.0"}"#,
    );
    assert!(o.status.success());
    let v = stdout_json(&o);
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(
        v["supportedVersions"],
        serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    let o = run("hostgw", &[], &[], "");
    assert!(o.status.success());
    assert!(o.stdout.is_empty());
    assert!(String::from_utf8_lossy(&o.stderr).contains("CNI protocol versions supported"));
}

#[test]
fn plugin_errors_are_json_on_stdout_with_nonzero_exit() {
    let o = run(
        "hostgw",
        &[],
        &[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1")],
        "{}",
    );
    assert_eq!(o.status.code(), Some(1));
    let v = stdout_json(&o);
    assert_eq!(v["code"], 4);
    assert_eq!(
        v["msg"],
        "required env variables [CNI_NETNS,CNI_IFNAME] missing"
    );
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains('{'),
        "logs never carry the protocol"
    );
    let env = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_IFNAME", "eth0"),
    ];
    let o = run("hostgw", &[], &env, "not json");
    assert_eq!(stdout_json(&o)["code"], 6);
}

#[test]
fn plugin_status_without_a_subnet_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let conf = serde_json::json!({"cniVersion":"1.1.0","name":"podnet","type":"hostgw",
        "subnetFile": dir.path().join("absent.json"), "dataDir": dir.path()});
    let o = run(
        "hostgw",
        &[],
        &[("CNI_COMMAND", "STATUS")],
        &conf.to_string(),
    );
    assert_eq!(o.status.code(), Some(1));
    let v = stdout_json(&o);
    assert_eq!(v["code"], 50);
    assert!(v["msg"].as_str().unwrap().contains("absent.json"), "{v}");
}

fn routed(args: &[&str]) -> (Option<i32>, String) {
    let o = run("hostgw-routed", args, &[], "");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn daemon_command_line_says_what_is_wrong() {
    let (code, err) = routed(&["run"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--etcd-endpoints") && err.contains("--node-name"),
        "{err}"
    );
    let (code, err) = routed(&[
        "run",
        "--etcd-endpoints",
        "http://127.0.0.1:1",
        "--node-name",
        "a",
        "--public-ip",
        "nope",
    ]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("invalid value 'nope' for '--public-ip"),
        "{err}"
    );
    let (code, err) = routed(&["bogus"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("unrecognized subcommand 'bogus'"), "{err}");
    let help = run("hostgw-routed", &["help", "run"], &[], "");
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--etcd-endpoints",
        "--node-name",
        "--public-ip",
        "--iface",
        "--etcd-prefix",
        "--subnet-file",
        "--metrics-addr",
        "--etcd-cafile",
        "--etcd-certfile",
        "--etcd-keyfile",
        "--ip-masq",
    ] {
        assert!(text.contains(flag), "`help run` lacks {flag}:\n{text}");
    }
}
