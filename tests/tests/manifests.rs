//! The deployment files in `manifests/`, without root: every Kubernetes manifest validates
//! against the Kubernetes schemas offline (kubernetes-validate, strict), the committed
//! `hostgw.yaml` is exactly what `render.sh` makes of the one conflist, the DaemonSet keeps
//! the promises the issue asks for, every environment variable the DaemonSet and the systemd
//! environment file set is one the daemon reads, and the systemd unit verifies.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::{Value, json};

/// Kubernetes versions the manifests must validate against (schemas bundled with
/// kubernetes-validate, so no network): the oldest still common, and a recent one.
const K8S_VERSIONS: [&str; 2] = ["1.30.0", "1.34.0"];

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

fn read(name: &str) -> String {
    fs::read_to_string(manifests().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Every Kubernetes manifest (`*.yaml`; templates end in `.yaml.in`).
fn k8s_manifests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(manifests())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    assert!(v.len() >= 2, "manifests: {v:?}");
    v
}

fn kubernetes_validate() -> Command {
    let mut c = Command::new("kubernetes-validate");
    // Offline: any attempt to reach the network would go to a closed local port and fail.
    for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        c.env(k, "http://127.0.0.1:9");
    }
    c.env_remove("NO_PROXY").env_remove("no_proxy");
    c
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas_offline() {
    let files = k8s_manifests();
    for v in K8S_VERSIONS {
        let out = kubernetes_validate()
            .args(["--strict", "--kubernetes-version", v])
            .args(&files)
            .output()
            .unwrap_or_else(|e| {
                panic!("kubernetes-validate: {e} (scripts/setup.sh installs it with pip)")
            });
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "Kubernetes {v}:\n{text}");
        // It says "passed" once per resource: ServiceAccount, ConfigMap, DaemonSet, Secret.
        assert_eq!(
            text.matches(" passed ").count(),
            4,
            "Kubernetes {v}:\n{text}"
        );
    }
}

#[test]
fn manifest_validator_rejects_what_is_wrong() {
    // A misspelt field and a wrong type: strict validation must fail, or the test above
    // proves nothing.
    let dir = tempfile::tempdir().unwrap();
    let good = read("hostgw.yaml");
    for (from, to) in [
        (
            "hostNetwork: true",
            "hostNetwork: true\n      hostNetwrk: true",
        ),
        ("containerPort: 9475", "containerPort: \"metrics\""),
    ] {
        assert!(good.contains(from));
        let bad = dir.path().join("bad.yaml");
        fs::write(&bad, good.replacen(from, to, 1)).unwrap();
        let out = kubernetes_validate()
            .args(["--strict", "--kubernetes-version", K8S_VERSIONS[1]])
            .arg(&bad)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{to} was accepted");
    }
}

#[test]
fn manifest_hostgw_yaml_is_the_rendered_one() {
    let out = Command::new("bash")
        .arg(manifests().join("render.sh"))
        .arg("-")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout) == read("hostgw.yaml"),
        "manifests/hostgw.yaml is stale: run manifests/render.sh and commit the result"
    );
}

/// Every document of a YAML file as JSON (PyYAML comes with kubernetes-validate).
fn yaml_docs(name: &str) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json,sys,yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(manifests().join(name))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn manifest_configmap_carries_the_one_conflist_and_the_net_conf() {
    let docs = yaml_docs("hostgw.yaml");
    let cm = kind(&docs, "ConfigMap");
    let file: Value = serde_json::from_str(&read("10-hostgw.conflist")).unwrap();
    let shipped: Value =
        serde_json::from_str(cm["data"]["10-hostgw.conflist"].as_str().unwrap()).unwrap();
    assert_eq!(shipped, file);
    assert_eq!(
        shipped,
        json!({"cniVersion":"1.0.0","cniVersions":["0.3.1","0.4.0","1.0.0","1.1.0"],
               "name":"podnet","plugins":[{"type":"hostgw","mode":"ptp",
               "subnetFile":"/run/hostgw/subnet.json","dataDir":"/var/lib/cni/networks"},
               {"type":"portmap","capabilities":{"portMappings":true},"snat":true},
               {"type":"bandwidth","capabilities":{"bandwidth":true}}]})
    );
    let net: Value = serde_json::from_str(cm["data"]["net-conf.json"].as_str().unwrap()).unwrap();
    assert_eq!(
        net,
        serde_json::from_str::<Value>(&read("net-conf.json")).unwrap()
    );
    assert_eq!(net["Backend"]["Type"], "host-gw");
    // The plugin's subnet file is where the daemon writes it.
    let ds = kind(&docs, "DaemonSet");
    let env = &ds["spec"]["template"]["spec"]["containers"][0]["env"];
    let subnet_file = env
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "HOSTGW_SUBNET_FILE")
        .unwrap();
    assert_eq!(subnet_file["value"], shipped["plugins"][0]["subnetFile"]);
}

#[test]
fn manifest_daemonset_keeps_its_promises() {
    let docs = yaml_docs("hostgw.yaml");
    let ds = kind(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(
        pod["dnsPolicy"], "Default",
        "cluster DNS needs the pod network"
    );
    // Every taint tolerated: one toleration with operator Exists and no key or effect.
    assert_eq!(pod["tolerations"], json!([{"operator": "Exists"}]));

    let main = &pod["containers"][0];
    assert_eq!(
        main["command"],
        json!(["/usr/local/bin/hostgw-routed", "run"])
    );
    let sc = &main["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(
        sc["capabilities"]["add"],
        json!(["NET_ADMIN", "BPF", "PERFMON"])
    );
    // The fast path's pins live on the host's bpffs.
    let bpffs = main["volumeMounts"]
        .as_array()
        .and_then(|v| v.iter().find(|m| m["mountPath"] == "/sys/fs/bpf"))
        .expect("/sys/fs/bpf mounted");
    let vol = pod["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|x| x["name"] == bpffs["name"]))
        .expect("its volume");
    assert_eq!(vol["hostPath"]["path"], "/sys/fs/bpf");
    assert_eq!(main["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(main["livenessProbe"]["httpGet"]["path"], "/healthz");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(main[probe]["httpGet"]["port"], 9475);
    }
    for c in pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(pod["initContainers"].as_array().unwrap())
    {
        for k in ["requests", "limits"] {
            for r in ["cpu", "memory"] {
                assert!(
                    c["resources"][k][r].is_string(),
                    "{}: resources.{k}.{r}",
                    c["name"]
                );
            }
        }
        assert_ne!(c["securityContext"]["privileged"], true, "{}", c["name"]);
    }
    let env = main["env"].as_array().unwrap();
    let node = env
        .iter()
        .find(|e| e["name"] == "HOSTGW_NODE_NAME")
        .unwrap();
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    let metrics = env
        .iter()
        .find(|e| e["name"] == "HOSTGW_METRICS_ADDR")
        .unwrap();
    assert!(metrics["value"].as_str().unwrap().ends_with(":9475"));

    // The init containers, in order: install, then forwarding.
    let init = pod["initContainers"].as_array().unwrap();
    assert_eq!(init[0]["name"], "install-cni");
    assert_eq!(init[0]["command"], json!(["/bin/sh", "/install-cni.sh"]));
    assert_eq!(init[1]["name"], "forwarding");
    assert_eq!(
        init[1]["command"],
        json!(["/bin/sh", "/enable-forwarding.sh"])
    );

    // The host paths it touches, and nothing else.
    let host_paths: BTreeSet<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert_eq!(
        host_paths,
        BTreeSet::from([
            "/etc/cni/net.d",
            "/opt/cni/bin",
            "/proc/sys/net",
            "/run/hostgw",
            "/sys/fs/bpf"
        ])
    );
}

/// Every `env = "HOSTGW_…"` the daemon's command line reads (routed/src/cli.rs).
fn daemon_env_names() -> BTreeSet<String> {
    let cli =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../routed/src/cli.rs"))
            .unwrap();
    let names: BTreeSet<String> = cli
        .split("env = \"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_owned)
        .collect();
    assert!(names.contains("HOSTGW_ETCD_ENDPOINTS"), "{names:?}");
    names
}

#[test]
fn manifest_env_vars_are_ones_the_daemon_reads() {
    let known = daemon_env_names();
    let docs = yaml_docs("hostgw.yaml");
    let ds = kind(&docs, "DaemonSet");
    let ds_names: Vec<String> = ds["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .filter(|n| n.starts_with("HOSTGW_"))
        .collect();
    let env_file = read("systemd/hostgw-routed.env");
    let file_names: Vec<String> = env_file
        .lines()
        .map(|l| l.trim_start_matches('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_owned()))
        .filter(|n| n.starts_with("HOSTGW_"))
        .collect();
    for (what, names) in [("DaemonSet", &ds_names), ("hostgw-routed.env", &file_names)] {
        for n in names {
            assert!(
                known.contains(n),
                "{what} sets {n}, which the daemon does not read"
            );
        }
        for required in ["HOSTGW_ETCD_ENDPOINTS", "HOSTGW_NODE_NAME"] {
            assert!(
                names.iter().any(|n| n == required),
                "{what} lacks {required}"
            );
        }
    }
    // The environment file documents every variable the daemon reads.
    for n in &known {
        assert!(
            file_names.contains(n),
            "hostgw-routed.env does not mention {n}"
        );
    }
}

#[test]
fn manifest_systemd_unit_verifies_and_keeps_only_net_admin_bpf_and_perfmon() {
    let unit = read("systemd/hostgw-routed.service");
    let keys: Vec<(&str, &str)> = unit
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect();
    let get = |k: &str| keys.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    assert_eq!(get("ExecStart"), Some("/usr/local/bin/hostgw-routed run"));
    assert_eq!(get("Restart"), Some("always"));
    assert_eq!(get("EnvironmentFile"), Some("/etc/default/hostgw-routed"));
    assert_eq!(
        get("CapabilityBoundingSet"),
        Some("CAP_NET_ADMIN CAP_BPF CAP_PERFMON")
    );
    assert_eq!(get("ReadWritePaths"), Some("/run/hostgw /sys/fs/bpf"));
    assert_eq!(get("NoNewPrivileges"), Some("yes"));
    // The daemon writes net.ipv4.ip_forward: /proc/sys must stay writable.
    assert_eq!(get("ProtectKernelTunables"), None);

    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed: only the parse above ran");
        return;
    }
    // Verify a copy whose ExecStart and EnvironmentFile exist here (verify checks both).
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("hostgw-routed.env");
    fs::write(&env, read("systemd/hostgw-routed.env")).unwrap();
    let exe = hostgw_tests::bin("hostgw-routed");
    let copy = unit
        .replace("/usr/local/bin/hostgw-routed", &exe.display().to_string())
        .replace(
            "EnvironmentFile=/etc/default/hostgw-routed",
            &format!("EnvironmentFile={}", env.display()),
        );
    let path = dir.path().join("hostgw-routed.service");
    fs::write(&path, copy).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

#[test]
fn manifest_containerfile_and_build_script_make_the_same_image() {
    let cf = read("Containerfile");
    let sh = read("build-image.sh");
    assert!(cf.contains(r#"ENTRYPOINT ["/usr/local/bin/hostgw-routed", "run"]"#));
    assert!(
        sh.contains("--config.entrypoint /usr/local/bin/hostgw-routed --config.entrypoint run")
    );
    for (in_cf, in_sh) in [
        (
            "/out/usr/local/bin/hostgw-routed",
            "$R/usr/local/bin/hostgw-routed",
        ),
        ("/out/hostgw", "$R/hostgw"),
        ("/out/usr/sbin/nft", "$R/usr/sbin/nft"),
        ("/install-cni.sh", "$R/install-cni.sh"),
        ("/enable-forwarding.sh", "$R/enable-forwarding.sh"),
        (
            "/etc/hostgw/10-hostgw.conflist",
            "$R/etc/hostgw/10-hostgw.conflist",
        ),
        ("/etc/hostgw/net-conf.json", "$R/etc/hostgw/net-conf.json"),
        ("/out/bin/busybox", "$R/bin/busybox"),
    ] {
        assert!(cf.contains(in_cf), "Containerfile lacks {in_cf}");
        assert!(sh.contains(in_sh), "build-image.sh lacks {in_sh}");
    }
}
