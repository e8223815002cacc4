//! Peak RSS of a plugin's calls, measured in a process of its own.
//!
//! Linux reports a child's peak RSS only through the `rusage` of the wait that reaps it,
//! and no safe wrapper (nix, rustix, std) exposes `wait4`'s rusage. `getrusage(
//! RUSAGE_CHILDREN)` is safe but covers every child a process has reaped. So the benchmark
//! re-executes itself as `bench-cni rss-probe`, hands it one contender's calls on stdin,
//! and the probe answers its own `RUSAGE_CHILDREN` `ru_maxrss` after running them: the
//! high-water RSS over exactly those calls. As with `wait4`, each call's figure also
//! covers the pre-exec image of the spawn (here the probe's, which is small) and the
//! children the call waited for (the reference's `host-local`); the floor probe runs
//! `/bin/true` the same way.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use hostgw_harness::run_input;
use nix::sys::resource::{UsageWho, getrusage};
use serde::{Deserialize, Serialize};

/// One call the probe runs, taken apart from the `Command` a runtime would run.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProbeCall {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The whole environment (the probe clears its own).
    pub env: Vec<(String, String)>,
    pub stdin: String,
}

impl ProbeCall {
    /// `cmd` must have had its environment cleared (as `cni::command` does): only the
    /// variables set on it are carried over.
    pub fn of(cmd: &Command, stdin: &str) -> ProbeCall {
        let s = |o: &std::ffi::OsStr| o.to_string_lossy().into_owned();
        ProbeCall {
            program: PathBuf::from(cmd.get_program()),
            args: cmd.get_args().map(s).collect(),
            env: cmd
                .get_envs()
                .filter_map(|(k, v)| Some((s(k), s(v?))))
                .collect(),
            stdin: stdin.to_owned(),
        }
    }
}

/// What the probe answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProbeAnswer {
    pub maxrss_kib: i64,
}

/// Runs `calls` in a probe (`self_exe rss-probe`); each must exit 0. Returns their peak RSS.
pub fn peak_rss(self_exe: &Path, calls: &[ProbeCall]) -> Result<i64> {
    let input = serde_json::to_string(calls)?;
    let mut cmd = Command::new(self_exe);
    cmd.arg("rss-probe");
    let limit = Duration::from_secs(30) * calls.len().max(1) as u32;
    // The calls travel on stdin, one pipe's worth at most; a few calls fit easily.
    let out = run_input(&mut cmd, input.as_bytes(), limit)?;
    if !out.status.success() {
        bail!(
            "rss-probe failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let a: ProbeAnswer = serde_json::from_slice(&out.stdout).context("rss-probe answer")?;
    Ok(a.maxrss_kib)
}

/// The probe itself: reads the calls from stdin, runs them in order, prints the answer.
pub fn probe_main() -> Result<()> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let calls: Vec<ProbeCall> = serde_json::from_str(&input).context("rss-probe input")?;
    for c in &calls {
        let mut cmd = Command::new(&c.program);
        cmd.args(&c.args).env_clear().envs(c.env.iter().cloned());
        let out = run_input(&mut cmd, c.stdin.as_bytes(), Duration::from_secs(30))?;
        if !out.status.success() {
            bail!(
                "{} failed ({}): {}{}",
                c.program.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let maxrss_kib = getrusage(UsageWho::RUSAGE_CHILDREN)?.max_rss();
    println!("{}", serde_json::to_string(&ProbeAnswer { maxrss_kib })?);
    Ok(())
}
