//! Harness for the root tests, the benchmarks and the demo: throwaway network namespaces
//! ([`netns`]), processes that are always ended and runs bounded in time ([`proc`]), a real
//! etcd ([`etcd`]) and containerd ([`containerd`]), one [`node::Node`] type, clusters of nodes running `hostgw-routed`
//! ([`routed`]), pods wired by the real plugin ([`pod`], [`cluster`], [`cni`]) and the shipped
//! deployment files ([`manifests`]).
//!
//! Every namespace is named `hgwt-…` and deleted on Drop (after ending the processes still
//! inside it, by PID), so a failing test leaves nothing behind; `scripts/test.sh` also sweeps
//! `hgwt-*` on interrupt, when Drop cannot run.
#![forbid(unsafe_code)]

use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

pub mod cluster;
pub mod cni;
pub mod containerd;
pub mod etcd;
pub mod fleet;
pub mod manifests;
pub mod netns;
pub mod node;
pub mod pod;
pub mod proc;
pub mod routed;

pub use netns::{Netns, veth};
pub use proc::{Proc, run_input, run_timeout};

/// Root tests call this first: without root they fail loudly instead of passing quietly.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces); run it as root, e.g. via scripts/test.sh"
    );
}

/// Path of a binary built from this workspace (`hostgw`, `hostgw-routed`, …).
///
/// `HOSTGW_BIN_DIR` wins; otherwise the profile directory this test binary was built in
/// (`target/<profile>/deps/<test>` → `target/<profile>`).
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("HOSTGW_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            let deps = exe.parent().expect("deps dir");
            let dir = if deps.ends_with("deps") {
                deps.parent().unwrap()
            } else {
                deps
            };
            dir.to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --workspace --bins` first (or set HOSTGW_BIN_DIR)",
        path.display()
    );
    path
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The prefix of every namespace and cgroup the harness makes: `hgwt-`, or what
/// `HOSTGW_TEST_PREFIX` says. The scripts give each run its own (`hgwt-r<pid>-`), so the
/// sweep after an interrupted run removes that run's leftovers and never another run's.
pub fn prefix() -> String {
    std::env::var("HOSTGW_TEST_PREFIX")
        .ok()
        .filter(|p| p.starts_with("hgwt-") && !p.contains('/'))
        .unwrap_or_else(|| "hgwt-".to_owned())
}

/// A name unique to this process and call, short enough for interface names (≤ 15 bytes
/// with a 3-byte prefix): `<tag><pid%1000><n>`.
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{}x{n}", std::process::id() % 10_000)
}

/// Runs a command that must succeed within a minute; returns its stdout.
pub fn must(cmd: &mut Command) -> Result<String> {
    let out = run_timeout(cmd, Duration::from_secs(60))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `f` until it returns `Some`, or fails after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}
