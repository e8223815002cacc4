//! Named network namespaces that are deleted, with every process inside them, on Drop, and
//! veth pairs between them. Nothing is ever created in the root namespace: links are made
//! inside a namespace with `ip -n NS link add … netns OTHER`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{Proc, must, prefix, unique};

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
