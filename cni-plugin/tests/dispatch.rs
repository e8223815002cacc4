//! The CNI entry point as a pure function, for every verb and every missing or invalid
//! variable. No root: the kernel is the fake datapath, IPAM is the real store in a tempdir.

use std::{collections::HashMap, io::Read, path::Path};

use hostgw_cni::{datapath::FakeDatapath, dispatch};
use serde_json::{Value, json};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout {:?}: {e}", self.stdout))
    }
    fn err_code(&self) -> u64 {
        assert_eq!(self.code, 1, "expected failure, got stdout {}", self.stdout);
        self.json()["code"].as_u64().expect("error code")
    }
}

fn run_with(env: &[(&str, &str)], stdin: &mut dyn Read, dp: &FakeDatapath) -> Run {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let getenv = move |k: &str| env.get(k).cloned();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let o = dispatch::run(&getenv, stdin, &mut out, &mut err, dp);
    Run {
        code: o.code,
        stdout: String::from_utf8(out).unwrap(),
        stderr: String::from_utf8(err).unwrap(),
    }
}

fn run(env: &[(&str, &str)], stdin: &str, dp: &FakeDatapath) -> Run {
    run_with(env, &mut stdin.as_bytes(), dp)
}

fn conf(dir: &Path, version: &str) -> Value {
    json!({"cniVersion": version, "name": "podnet", "type": "hostgw", "subnet": "198.18.3.0/24",
           "dataDir": dir, "mtu": 1400})
}

fn attach<'a>(cmd: &'a str, id: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", "/run/netns/pod"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

fn reservations(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("podnet"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.retain(|n| n.parse::<std::net::IpAddr>().is_ok());
    v.sort();
    v
}

#[test]
fn no_command_prints_about_on_stderr_and_succeeds() {
    let r = run(&[], "", &FakeDatapath::default());
    assert_eq!(r.code, 0);
    assert!(r.stdout.is_empty());
    assert!(
        r.stderr
            .contains("CNI protocol versions supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0")
    );
}

#[test]
fn unknown_command_is_code_4() {
    let r = run(&[("CNI_COMMAND", "NOPE")], "{}", &FakeDatapath::default());
    assert_eq!(r.err_code(), 4);
    assert_eq!(r.json()["msg"], "unknown CNI_COMMAND: NOPE");
}

#[test]
fn version_echoes_the_request_and_lists_versions() {
    let dp = FakeDatapath::default();
    let r = run(
        &[("CNI_COMMAND", "VERSION")],
        r#"{"cniVersion":"0.4.0"}"#,
        &dp,
    );
    assert_eq!(r.code, 0);
    assert_eq!(
        r.json(),
        json!({"cniVersion":"0.4.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]})
    );
    let r = run(&[("CNI_COMMAND", "VERSION")], "", &dp);
    assert_eq!(r.json()["cniVersion"], "1.1.0");
    let r = run_with(&[("CNI_COMMAND", "VERSION")], &mut Broken, &dp);
    assert_eq!(r.code, 0, "VERSION answers even when stdin fails");
    assert_eq!(r.json()["cniVersion"], "1.1.0");
}

#[test]
fn missing_variables_are_all_named_per_verb() {
    let dp = FakeDatapath::default();
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 5] = [
        ("ADD", &[], "CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME"),
        (
            "CHECK",
            &[("CNI_CONTAINERID", "c1")],
            "CNI_NETNS,CNI_IFNAME",
        ),
        // Empty counts as missing: libcni sets all six and leaves the unused ones empty.
        (
            "ADD",
            &[
                ("CNI_CONTAINERID", "c1"),
                ("CNI_NETNS", ""),
                ("CNI_IFNAME", "eth0"),
            ],
            "CNI_NETNS",
        ),
        ("DEL", &[("CNI_NETNS", "/x")], "CNI_CONTAINERID,CNI_IFNAME"),
        ("GC", &[], "CNI_PATH"),
    ];
    for (cmd, extra, missing) in cases {
        let mut env = vec![("CNI_COMMAND", cmd)];
        env.extend_from_slice(extra);
        let r = run(&env, "{}", &dp);
        assert_eq!(r.err_code(), 4, "{cmd}");
        assert_eq!(
            r.json()["msg"],
            format!("required env variables [{missing}] missing"),
            "{cmd}"
        );
    }
}

#[test]
fn del_without_netns_and_status_without_anything_pass_validation() {
    let dir = tempfile::tempdir().unwrap();
    let dp = FakeDatapath::default();
    let env = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_IFNAME", "eth0"),
    ];
    assert_eq!(
        run(&env, &conf(dir.path(), "1.0.0").to_string(), &dp).code,
        0
    );
    let r = run(
        &[("CNI_COMMAND", "STATUS")],
        &conf(dir.path(), "1.1.0").to_string(),
        &dp,
    );
    assert_eq!(r.code, 0, "{}", r.stdout);
}

#[test]
fn invalid_container_id_and_ifname_are_code_4() {
    let dir = tempfile::tempdir().unwrap();
    let dp = FakeDatapath::default();
    let c = conf(dir.path(), "1.0.0").to_string();
    for id in ["-lead", "a b", "x/y", "ü"] {
        let r = run(&attach("ADD", id), &c, &dp);
        assert_eq!(r.err_code(), 4, "{id}");
        assert_eq!(r.json()["details"], id);
    }
    for ifname in [".", "..", "a/b", "a:b", "a b", "0123456789abcdef"] {
        let mut env = attach("ADD", "c1");
        env[3] = ("CNI_IFNAME", ifname);
        assert_eq!(run(&env, &c, &dp).err_code(), 4, "{ifname}");
    }
    assert!(reservations(dir.path()).is_empty());
}

struct Broken;
impl Read for Broken {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("pipe broke"))
    }
}

#[test]
fn stdin_failure_is_5_bad_json_6_bad_name_7() {
    let dp = FakeDatapath::default();
    assert_eq!(
        run_with(&attach("ADD", "c1"), &mut Broken, &dp).err_code(),
        5
    );
    assert_eq!(run(&attach("ADD", "c1"), "{not json", &dp).err_code(), 6);
    assert_eq!(
        run(&attach("ADD", "c1"), r#"{"cniVersion":"1.0.0"}"#, &dp).err_code(),
        7
    );
    let r = run(
        &attach("ADD", "c1"),
        r#"{"cniVersion":"1.0.0","name":"bad name!"}"#,
        &dp,
    );
    assert_eq!(r.err_code(), 7);
}

#[test]
fn versions_missing_unsupported_garbage() {
    let dp = FakeDatapath::default();
    let r = run(&attach("ADD", "c1"), r#"{"name":"podnet"}"#, &dp);
    assert_eq!(
        r.err_code(),
        1,
        "no cniVersion means 0.1.0, which we don't speak"
    );
    assert!(
        r.json()["details"]
            .as_str()
            .unwrap()
            .contains("config is \"0.1.0\"")
    );
    assert_eq!(
        run(
            &attach("ADD", "c1"),
            r#"{"name":"podnet","cniVersion":"9.9.9"}"#,
            &dp
        )
        .err_code(),
        1
    );
    assert_eq!(
        run(
            &attach("ADD", "c1"),
            r#"{"name":"podnet","cniVersion":"one"}"#,
            &dp
        )
        .err_code(),
        6
    );
    assert_eq!(
        run(
            &attach("ADD", "c1"),
            r#"{"name":"podnet","cniVersion":1}"#,
            &dp
        )
        .err_code(),
        6
    );
}

#[test]
fn check_below_0_4_and_gc_status_below_1_1_are_code_1() {
    let dir = tempfile::tempdir().unwrap();
    let dp = FakeDatapath::default();
    for v in ["0.3.0", "0.3.1"] {
        let r = run(
            &attach("CHECK", "c1"),
            &conf(dir.path(), v).to_string(),
            &dp,
        );
        assert_eq!(r.err_code(), 1);
        assert_eq!(r.json()["msg"], "config version does not allow CHECK");
        assert_eq!(r.json()["cniVersion"], v);
    }
    for v in ["0.4.0", "1.0.0"] {
        let gc = [("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")];
        assert_eq!(
            run(&gc, &conf(dir.path(), v).to_string(), &dp).err_code(),
            1
        );
        assert_eq!(
            run(
                &[("CNI_COMMAND", "STATUS")],
                &conf(dir.path(), v).to_string(),
                &dp
            )
            .err_code(),
            1
        );
    }
}

#[test]
fn add_result_has_the_shape_of_every_version() {
    for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let dir = tempfile::tempdir().unwrap();
        let dp = FakeDatapath::default();
        let r = run(&attach("ADD", "c1"), &conf(dir.path(), v).to_string(), &dp);
        assert_eq!(r.code, 0, "{v}: {}", r.stdout);
        assert_eq!(r.stdout.lines().count(), 1, "one JSON document only");
        let j = r.json();
        assert_eq!(j["cniVersion"], v);
        assert_eq!(j["interfaces"].as_array().unwrap().len(), 2);
        assert_eq!(j["interfaces"][1]["name"], "eth0");
        assert_eq!(j["interfaces"][1]["sandbox"], "/run/netns/pod");
        assert_eq!(j["ips"][0]["address"], "198.18.3.2/24");
        assert_eq!(j["ips"][0]["gateway"], "198.18.3.1");
        assert_eq!(j["ips"][0]["interface"], 1);
        assert_eq!(j["routes"][0], json!({"dst":"0.0.0.0/0","gw":"198.18.3.1"}));
        assert_eq!(
            j["ips"][0].get("version").is_some(),
            v.starts_with("0."),
            "{v}"
        );
        assert_eq!(j["interfaces"][1].get("mtu").is_some(), v == "1.1.0", "{v}");
        assert_eq!(reservations(dir.path()), vec!["198.18.3.2"]);
        assert_eq!(dp.pods.borrow()[0].mtu, 1400);
    }
}

#[test]
fn add_then_del_twice_releases_everything() {
    let dir = tempfile::tempdir().unwrap();
    let dp = FakeDatapath::default();
    let c = conf(dir.path(), "1.0.0").to_string();
    assert_eq!(run(&attach("ADD", "c1"), &c, &dp).code, 0);
    assert_eq!(
        run(&attach("ADD", "c2"), &c, &dp).json()["ips"][0]["address"],
        "198.18.3.3/24"
    );
    let mut del = attach("DEL", "c1");
    del[2] = ("CNI_NETNS", "");
    for _ in 0..2 {
        let r = run(&del, &c, &dp);
        assert_eq!(r.code, 0, "{}", r.stdout);
        assert!(r.stdout.is_empty());
    }
    assert_eq!(reservations(dir.path()), vec!["198.18.3.3"]);
    assert_eq!(dp.pods.borrow().len(), 1);
    assert!(
        dp.calls
            .borrow()
            .iter()
            .any(|c| c.starts_with("teardown hgw"))
    );
}

#[test]
fn add_into_existing_ifname_or_failed_setup_keeps_no_reservation() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(dir.path(), "1.0.0").to_string();
    let dp = FakeDatapath::default();
    *dp.existing_ifname.borrow_mut() = true;
    let r = run(&attach("ADD", "c1"), &c, &dp);
    assert_eq!(r.code, 1);
    assert!(r.json()["msg"].as_str().unwrap().contains("already exists"));
    assert!(reservations(dir.path()).is_empty());
    let dp = FakeDatapath::default();
    *dp.fail_setup.borrow_mut() = Some("veth exploded".into());
    let r = run(&attach("ADD", "c1"), &c, &dp);
    assert_eq!(r.err_code(), 999);
    assert!(
        reservations(dir.path()).is_empty(),
        "failed ADD must give its address back"
    );
}

#[test]
fn prev_result_is_kept_and_indices_follow_it() {
    let dir = tempfile::tempdir().unwrap();
    let dp = FakeDatapath::default();
    let mut c = conf(dir.path(), "1.0.0");
    c["prevResult"] = json!({"cniVersion":"1.0.0","interfaces":[{"name":"lo0","sandbox":"/run/netns/pod"}],
        "ips":[{"address":"198.18.200.9/32","interface":0}],"routes":[{"dst":"198.18.200.0/24"}],
        "dns":{"nameservers":["198.18.0.53"]}});
    let j = run(&attach("ADD", "c1"), &c.to_string(), &dp).json();
    assert_eq!(j["interfaces"][0]["name"], "lo0");
    assert_eq!(j["interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(j["ips"][0]["address"], "198.18.200.9/32");
    assert_eq!(j["ips"][1]["interface"], 2);
    assert_eq!(j["routes"].as_array().unwrap().len(), 2);
    assert_eq!(j["dns"]["nameservers"][0], "198.18.0.53");
    c["prevResult"] = json!({"ips":[{"address":"garbage"}]});
    assert_eq!(run(&attach("ADD", "c2"), &c.to_string(), &dp).err_code(), 6);
}

#[test]
fn requested_ips_from_every_source() {
    let dir = tempfile::tempdir().unwrap();
    let dp = FakeDatapath::default();
    let mut c = conf(dir.path(), "1.0.0");
    c["runtimeConfig"] = json!({"ips": ["198.18.3.50/24"]});
    assert_eq!(
        run(&attach("ADD", "c1"), &c.to_string(), &dp).json()["ips"][0]["address"],
        "198.18.3.50/24"
    );
    let plain = conf(dir.path(), "1.0.0").to_string();
    let mut env = attach("ADD", "c2");
    env.push(("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=p;IP=198.18.3.60"));
    assert_eq!(
        run(&env, &plain, &dp).json()["ips"][0]["address"],
        "198.18.3.60/24"
    );
    let mut env = attach("ADD", "c3");
    env.push(("CNI_ARGS", "IP=198.18.3.60"));
    let r = run(&env, &plain, &dp);
    assert_eq!(r.code, 1, "a taken address is refused");
    assert!(r.json()["msg"].as_str().unwrap().contains("198.18.3.60"));
    let mut env = attach("ADD", "c4");
    env.push(("CNI_ARGS", "FOO=bar"));
    assert_eq!(run(&env, &plain, &dp).err_code(), 4);
}

#[test]
fn subnet_file_drives_add_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("subnet.json");
    let dp = FakeDatapath::default();
    let c = json!({"cniVersion":"1.1.0","name":"podnet","type":"hostgw","subnetFile":file,"dataDir":dir.path()});
    assert_eq!(
        run(&attach("ADD", "c1"), &c.to_string(), &dp).err_code(),
        11
    );
    let status = run(&[("CNI_COMMAND", "STATUS")], &c.to_string(), &dp);
    assert_eq!(status.err_code(), 50);
    std::fs::write(
        &file,
        r#"{"network":"198.18.0.0/16","subnet":"198.18.4.0/29","mtu":1450}"#,
    )
    .unwrap();
    assert_eq!(
        run(&[("CNI_COMMAND", "STATUS")], &c.to_string(), &dp).code,
        0
    );
    for id in ["a", "b", "c", "d", "e"] {
        let r = run(&attach("ADD", id), &c.to_string(), &dp);
        assert_eq!(r.code, 0, "{id}: {}", r.stdout);
    }
    assert_eq!(
        dp.pods.borrow()[0].mtu,
        1450,
        "MTU comes from the subnet file"
    );
    let r = run(&attach("ADD", "f"), &c.to_string(), &dp);
    assert!(
        r.json()["msg"]
            .as_str()
            .unwrap()
            .contains("no IP addresses available"),
        "{}",
        r.stdout
    );
    let status = run(&[("CNI_COMMAND", "STATUS")], &c.to_string(), &dp);
    assert_eq!(status.err_code(), 50);
    std::fs::write(&file, "{garbage").unwrap();
    assert_eq!(run(&attach("ADD", "g"), &c.to_string(), &dp).err_code(), 6);
}

#[test]
fn default_mtu_comes_from_the_host_when_nothing_sets_it() {
    let dir = tempfile::tempdir().unwrap();
    let dp = FakeDatapath {
        mtu: 9000,
        ..Default::default()
    };
    let mut c = conf(dir.path(), "1.0.0");
    c.as_object_mut().unwrap().remove("mtu");
    assert_eq!(run(&attach("ADD", "c1"), &c.to_string(), &dp).code, 0);
    assert_eq!(dp.pods.borrow()[0].mtu, 9000);
}

#[test]
fn check_passes_after_add_and_fails_without_reservation_or_prev_result() {
    let dir = tempfile::tempdir().unwrap();
    let dp = FakeDatapath::default();
    let mut c = conf(dir.path(), "1.0.0");
    let result = run(&attach("ADD", "c1"), &c.to_string(), &dp).json();
    assert_eq!(
        run(&attach("CHECK", "c1"), &c.to_string(), &dp).err_code(),
        7,
        "prevResult is required"
    );
    c["prevResult"] = result;
    let r = run(&attach("CHECK", "c1"), &c.to_string(), &dp);
    assert_eq!(r.code, 0, "{}", r.stdout);
    std::fs::remove_file(dir.path().join("podnet/198.18.3.2")).unwrap();
    let r = run(&attach("CHECK", "c1"), &c.to_string(), &dp);
    assert_eq!(r.code, 1);
    assert!(
        r.json()["msg"]
            .as_str()
            .unwrap()
            .contains("no address is reserved")
    );
}

#[test]
fn gc_releases_all_but_the_valid_attachments() {
    let dir = tempfile::tempdir().unwrap();
    let dp = FakeDatapath::default();
    let c = conf(dir.path(), "1.1.0");
    for id in ["keep", "drop1", "drop2"] {
        assert_eq!(run(&attach("ADD", id), &c.to_string(), &dp).code, 0);
    }
    let gc_env = [("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")];
    let mut g = c.clone();
    assert_eq!(
        run(&gc_env, &g.to_string(), &dp).err_code(),
        7,
        "a missing list is refused"
    );
    assert_eq!(reservations(dir.path()).len(), 3);
    g["cni.dev/valid-attachments"] = json!([{"containerID":"keep","ifname":"eth0"}]);
    let r = run(&gc_env, &g.to_string(), &dp);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(reservations(dir.path()), vec!["198.18.3.2"]);
    assert_eq!(dp.pods.borrow().len(), 1);
    g["cni.dev/valid-attachments"] = Value::Null;
    assert_eq!(run(&gc_env, &g.to_string(), &dp).code, 0);
    assert!(reservations(dir.path()).is_empty());
    assert!(dp.pods.borrow().is_empty());
}

#[test]
fn errors_carry_the_request_version_and_are_the_only_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = conf(dir.path(), "0.4.0");
    c["mode"] = json!("overlay");
    let r = run(
        &attach("ADD", "c1"),
        &c.to_string(),
        &FakeDatapath::default(),
    );
    assert_eq!(r.err_code(), 7);
    assert_eq!(r.json()["cniVersion"], "0.4.0");
    assert_eq!(r.stdout.lines().count(), 1);
    assert!(r.stderr.is_empty(), "the caller decides where logs go");
}
