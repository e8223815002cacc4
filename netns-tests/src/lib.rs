//! Harness for the root tests: throwaway network namespaces, processes that are always
//! ended, and the workspace's built binaries.
//!
//! Every namespace is named `hgwt-…` and deleted on Drop (after ending the processes still
//! inside it, by PID), so a failing test leaves nothing behind; `scripts/test.sh` also sweeps
//! `hgwt-*` on interrupt, when Drop cannot run. Nothing is ever created in the root
//! namespace: links are made inside a namespace with `ip -n NS link add … netns OTHER`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

pub mod cluster;
pub mod cni;
pub mod containerd;
pub mod dataplane;
pub mod etcd;
pub mod manifests;
pub mod pod;
pub mod routed;

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

/// Runs a command to completion with a bound on its run time. Its output is drained while
/// it runs, so a child that prints more than a pipe holds cannot block on a full pipe.
pub fn run_timeout(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {limit:?}");
        }
        thread::sleep(Duration::from_millis(5));
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Runs a command that must succeed; returns its stdout.
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

// === impl Netns ===

/// A named network namespace that is deleted, with every process inside it, on Drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Result<Netns> {
        let name = format!("{}{}", prefix(), unique(tag));
        must(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        // `ip netns add` returns once the bind mount exists; the namespace is usable now.
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// A command that runs inside this namespace. `nsenter --net` rather than
    /// `ip netns exec`, which remounts /sys and hides the cgroup mounts runc needs.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        c
    }

    /// `ip -n <ns> ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        must(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// `ip -j -n <ns> ARGS` parsed as JSON (an empty answer is an empty array).
    pub fn ip_json(&self, args: &[&str]) -> Result<Value> {
        let out = must(Command::new("ip").args(["-j", "-n", &self.name]).args(args))?;
        if out.trim().is_empty() {
            return Ok(Value::Array(vec![]));
        }
        serde_json::from_str(&out).with_context(|| format!("parse `ip -j {args:?}`: {out}"))
    }

    /// Runs `sh -c SCRIPT` inside the namespace; it must succeed.
    pub fn sh(&self, script: &str) -> Result<String> {
        must(self.cmd("sh").args(["-c", script]))
    }

    /// Starts a long-running process inside the namespace; it is ended on Drop.
    pub fn spawn(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Result<Proc> {
        let mut c = self.cmd(program);
        c.args(args);
        Proc::spawn(c)
    }

    /// Names of the links in this namespace.
    pub fn links(&self) -> Result<Vec<String>> {
        let v = self.ip_json(&["link", "show"])?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .collect())
    }

    /// Sets a sysctl inside the namespace (`net.ipv4.ip_forward`, …).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        must(self.cmd("sysctl").args(["-qw", &format!("{key}={value}")]))?;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // End what still runs inside (only processes in our own namespace), then delete it.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A veth pair with one end in each namespace, created inside `a` so that the root
/// namespace never holds either end.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

// === impl Proc ===

/// A child process that is ended (SIGTERM, then SIGKILL) by its PID on Drop.
pub struct Proc {
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Result<Proc> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {cmd:?}"))?;
        Ok(Proc { child: Some(child) })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Whether the process has exited (and so can be restarted or asserted on).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends a signal without waiting.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// SIGKILL at once (a crash), reaping the child.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
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
