//! The CNI entry point as a pure function of (environment, stdin) to (stdout, exit code).
//!
//! Validation follows the order of the Go `skel` package, so runtimes see the messages and
//! codes they know: environment (4), stdin (5), JSON (6), network name (7), version (6/1),
//! then the verb.

use std::{
    io::{Read, Write},
    path::PathBuf,
};

use serde_json::{Value, json};

use crate::{
    cmd::{self, Attach},
    config::{CniArgsEnv, NetConf, valid_id, validate_ifname},
    datapath::Datapath,
    error::Error,
    version::{SUPPORTED, Version},
};

/// A config is a few KiB; a prevResult of a long chain a few more. Far above both, and
/// bounded so that a runaway writer cannot make the plugin hold gigabytes.
const STDIN_MAX: u64 = 4 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verb {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Verb {
    fn parse(s: &str) -> Option<Verb> {
        Some(match s {
            "ADD" => Verb::Add,
            "DEL" => Verb::Del,
            "CHECK" => Verb::Check,
            "GC" => Verb::Gc,
            "STATUS" => Verb::Status,
            "VERSION" => Verb::Version,
            _ => return None,
        })
    }

    /// Variables the spec requires for each verb (`CNI_NETNS` is optional for DEL).
    fn required(self) -> &'static [&'static str] {
        match self {
            Verb::Add | Verb::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            Verb::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            Verb::Gc => &["CNI_PATH"],
            Verb::Status | Verb::Version => &[],
        }
    }
}

/// What one invocation printed and returned; `main` writes it out.
pub struct Outcome {
    pub code: i32,
    /// One line for the log (stderr or the configured log file), if anything is worth saying.
    pub log: Option<String>,
    pub log_file: Option<PathBuf>,
}

/// Runs one plugin invocation. `getenv` treats empty variables as absent, as libcni sets
/// all six and leaves the unused ones empty.
pub fn run(
    getenv: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
    dp: &dyn Datapath,
) -> Outcome {
    let env = |k: &str| getenv(k).filter(|v| !v.is_empty());
    let Some(command) = env("CNI_COMMAND") else {
        let _ = writeln!(
            stderr,
            "hostgw CNI plugin {}\nCNI protocol versions supported: {}",
            env!("CARGO_PKG_VERSION"),
            SUPPORTED.join(", ")
        );
        return Outcome {
            code: 0,
            log: None,
            log_file: None,
        };
    };
    let mut version_str = None;
    let mut log_file = None;
    let result = dispatch(&env, &command, stdin, &mut version_str, &mut log_file, dp);
    let (code, log) = match result {
        Ok(Some(out)) => {
            let _ = writeln!(stdout, "{out}");
            (0, None)
        }
        Ok(None) => (0, None),
        Err(e) => {
            let _ = writeln!(stdout, "{}", e.to_json(version_str.as_deref()));
            let who = env("CNI_CONTAINERID").unwrap_or_default();
            (1, Some(format!("{command} {who}: error {}: {e}", e.code())))
        }
    };
    Outcome {
        code,
        log,
        log_file,
    }
}

fn dispatch(
    env: &dyn Fn(&str) -> Option<String>,
    command: &str,
    stdin: &mut dyn Read,
    version_out: &mut Option<String>,
    log_file: &mut Option<PathBuf>,
    dp: &dyn Datapath,
) -> Result<Option<Value>, Error> {
    let verb = Verb::parse(command).ok_or_else(|| Error::UnknownCommand(command.to_owned()))?;
    let missing: Vec<&str> = verb
        .required()
        .iter()
        .copied()
        .filter(|k| env(k).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(Error::MissingEnv(missing.join(",")));
    }
    if let Some(id) = env("CNI_CONTAINERID")
        && !valid_id(&id)
    {
        return Err(Error::InvalidEnv {
            msg: "invalid characters in containerID".into(),
            details: id,
        });
    }
    if matches!(verb, Verb::Add | Verb::Del | Verb::Check) {
        let ifname = env("CNI_IFNAME").unwrap_or_default();
        validate_ifname(&ifname).map_err(|e| Error::InvalidEnv {
            msg: "invalid CNI_IFNAME".into(),
            details: e,
        })?;
    }
    let mut input = Vec::new();
    let read = stdin.take(STDIN_MAX + 1).read_to_end(&mut input);
    if verb == Verb::Version {
        // VERSION needs nothing from stdin: a failed or unfinished read still gets an answer.
        return Ok(Some(version_answer(&input)));
    }
    read.map_err(Error::Stdin)?;
    if input.len() as u64 > STDIN_MAX {
        return Err(Error::Stdin(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the config on stdin is larger than {STDIN_MAX} bytes"),
        )));
    }

    let value: Value = serde_json::from_slice(&input).map_err(|e| Error::Decode(e.to_string()))?;
    let name = match value.get("name") {
        Some(Value::String(n)) if !n.is_empty() => n.clone(),
        _ => return Err(Error::Config("missing network name".into())),
    };
    if !valid_id(&name) {
        return Err(Error::Config(format!(
            "invalid characters found in network name {name:?}"
        )));
    }
    let raw_version = match value.get("cniVersion") {
        None | Some(Value::Null) => "0.1.0".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(Error::Decode(format!("cniVersion {other} is not a string"))),
    };
    // Every answer, a refusal of the version included, carries the request's own string.
    *version_out = Some(raw_version.clone());
    let version = Version::negotiate(&raw_version)?;
    match verb {
        Verb::Check if version < Version::V0_4_0 => {
            return Err(Error::VersionNotAllowed(
                "config version does not allow CHECK".into(),
            ));
        }
        Verb::Gc | Verb::Status if version < Version::V1_1_0 => {
            return Err(Error::VersionNotAllowed(format!(
                "config version does not allow {command}"
            )));
        }
        _ => {}
    }
    let conf = NetConf::parse(&value, &name, version)?;
    *log_file = conf.log_file.clone();

    match verb {
        Verb::Add | Verb::Del | Verb::Check => {
            let attach = Attach {
                container_id: env("CNI_CONTAINERID").unwrap_or_default().trim().to_owned(),
                netns: env("CNI_NETNS").map(PathBuf::from),
                ifname: env("CNI_IFNAME").unwrap_or_default(),
                args: CniArgsEnv::parse(&env("CNI_ARGS").unwrap_or_default())?,
            };
            match verb {
                Verb::Add => cmd::add(&conf, &attach, dp).map(|r| Some(r.to_json(version))),
                Verb::Del => cmd::del(&conf, &attach, dp).map(|()| None),
                _ => cmd::check(&conf, &attach, dp).map(|()| None),
            }
        }
        Verb::Gc => cmd::gc(&conf, dp).map(|()| None),
        Verb::Status => cmd::status(&conf).map(|()| None),
        Verb::Version => unreachable!("answered above"),
    }
}

/// VERSION echoes the version asked for on stdin (the spec), or our newest when stdin
/// has none (the Go skel's habit).
fn version_answer(input: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(input)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .filter(|v| SUPPORTED.contains(&v.as_str()));
    let newest = SUPPORTED[SUPPORTED.len() - 1];
    json!({ "cniVersion": asked.as_deref().unwrap_or(newest), "supportedVersions": SUPPORTED })
}
