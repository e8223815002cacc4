//! Fuzzing of the environment and config parsing, bounded so it runs in the test command:
//! whatever arrives, the plugin never panics and answers with exit 0, or exit 1 and exactly
//! one well-formed CNI error object on stdout.

use std::collections::HashMap;

use hostgw_cni::{datapath::FakeDatapath, dispatch};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const KNOWN_CODES: [u64; 10] = [1, 2, 3, 4, 5, 6, 7, 11, 50, 999];

fn env_value() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some(String::new())),
        "[a-zA-Z0-9_.\\-]{1,20}".prop_map(Some),
        ".{0,40}".prop_map(Some),
        Just(Some("/run/netns/pod".to_owned())),
        Just(Some("eth0".to_owned())),
        Just(Some("IgnoreUnknown=1;IP=198.18.3.9".to_owned())),
    ]
}

fn command() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        4 => prop::sample::select(vec!["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"]).prop_map(|s| Some(s.to_owned())),
        1 => env_value(),
    ]
}

/// JSON values of every kind, nested a little.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "198.18.3.0/24",
            "fd18:18:0:3::/64",
            "1.0.0",
            "ptp",
            "bridge",
            "198.18.3.7"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::hash_map("[a-zA-Z.]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A config near a valid one: every key we read, with random or plausible values.
fn config(data_dir: String) -> impl Strategy<Value = String> {
    let keys = vec![
        "cniVersion",
        "name",
        "type",
        "mode",
        "subnet",
        "ipv6Subnet",
        "mtu",
        "bridge",
        "subnetFile",
        "prevResult",
        "runtimeConfig",
        "args",
        "dns",
        "cni.dev/valid-attachments",
        "ipam",
    ];
    let fields = prop::collection::vec((prop::sample::select(keys), any_json()), 0..8);
    let shape = prop_oneof![
        3 => fields.prop_map(move |fs| {
            let mut m = Map::new();
            m.insert("cniVersion".into(), json!("1.1.0"));
            m.insert("name".into(), json!("podnet"));
            m.insert("subnet".into(), json!("198.18.3.0/24"));
            for (k, v) in fs {
                m.insert(k.to_owned(), v);
            }
            // Writes must stay in the test's tempdir: these two keys are never fuzzed.
            m.insert("dataDir".into(), json!(data_dir.clone()));
            m.remove("logFile");
            Value::Object(m).to_string()
        }),
        1 => ".{0,64}",
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    shape
}

/// One invocation with a fuzzed environment and stdin; returns why it misbehaved, if it did.
fn invoke(env: Vec<(&str, Option<String>)>, stdin: &str) -> Result<(), TestCaseError> {
    let env: HashMap<String, String> = env
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_owned(), v?)))
        .collect();
    let getenv = move |k: &str| env.get(k).cloned();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let dp = FakeDatapath::default();
    let o = dispatch::run(&getenv, &mut stdin.as_bytes(), &mut out, &mut err, &dp);
    let out = String::from_utf8(out).expect("stdout is UTF-8");
    prop_assert!(o.code == 0 || o.code == 1, "exit code {}", o.code);
    if o.code == 1 {
        let v: Value =
            serde_json::from_str(&out).map_err(|e| TestCaseError::fail(format!("{e}: {out}")))?;
        let code = v["code"].as_u64().unwrap_or(0);
        prop_assert!(KNOWN_CODES.contains(&code), "code {code} in {out}");
        prop_assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{out}");
        prop_assert_eq!(out.lines().count(), 1);
    } else if !out.is_empty() {
        let v: Value =
            serde_json::from_str(&out).map_err(|e| TestCaseError::fail(format!("{e}: {out}")))?;
        prop_assert!(v.get("cniVersion").is_some(), "{out}");
    }
    Ok(())
}

#[test]
fn never_panics_and_always_answers_well_formed() {
    // Bounded: 1,500 cases take well under a second against the fake datapath.
    let dir = tempfile::tempdir().unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 1500,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        command(),
        env_value(),
        env_value(),
        env_value(),
        env_value(),
        env_value(),
        config(dir.path().display().to_string()),
    );
    let result = runner.run(&strategy, |(cmd, id, netns, ifname, args, path, stdin)| {
        invoke(
            vec![
                ("CNI_COMMAND", cmd),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", ifname),
                ("CNI_ARGS", args),
                ("CNI_PATH", path),
            ],
            &stdin,
        )
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
