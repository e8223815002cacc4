//! Running a CNI plugin exactly as a runtime does: environment variables and a config on
//! stdin, the plugin's own namespace being the node's.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{Netns, run_input};

/// One invocation's parameters; `None` leaves a variable unset.
#[derive(Clone, Debug, Default)]
pub struct Call<'a> {
    pub command: &'a str,
    pub container_id: Option<&'a str>,
    pub netns: Option<&'a str>,
    pub ifname: Option<&'a str>,
    pub args: Option<&'a str>,
    pub path: Option<&'a str>,
}

impl<'a> Call<'a> {
    /// ADD/DEL/CHECK of `container_id` on `eth0` in the pod namespace `pod`.
    pub fn attach(command: &'a str, container_id: &'a str, pod: &'a str) -> Call<'a> {
        Call {
            command,
            container_id: Some(container_id),
            netns: Some(pod),
            ifname: Some("eth0"),
            args: None,
            path: Some("/opt/cni/bin"),
        }
    }
}

/// What the plugin printed and how it exited.
#[derive(Debug)]
pub struct Reply {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Reply {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// stdout as JSON (the result, or the error object).
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("plugin stdout is not JSON: {:?}", self.stdout))
    }

    /// The CNI error code of a failed call.
    pub fn error_code(&self) -> Option<u64> {
        self.json().ok()?.get("code")?.as_u64()
    }
}

/// The command that runs `plugin` inside `node` with the call's environment.
pub fn command(plugin: &Path, node: &Netns, call: &Call) -> Command {
    let mut cmd = node.cmd(plugin);
    call.set_env(&mut cmd);
    cmd
}

impl Call<'_> {
    /// A clean environment holding only PATH and this call's CNI_* variables, as a
    /// runtime execs a plugin.
    pub fn set_env(&self, cmd: &mut Command) {
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", self.command);
        for (k, v) in [
            ("CNI_CONTAINERID", self.container_id),
            ("CNI_NETNS", self.netns),
            ("CNI_IFNAME", self.ifname),
            ("CNI_ARGS", self.args),
            ("CNI_PATH", self.path),
        ] {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
    }
}

/// Runs the plugin with `stdin` as its config, bounded in time (a minute).
pub fn invoke(plugin: &Path, node: &Netns, call: &Call, stdin: &str) -> Result<Reply> {
    let out = run_input(
        &mut command(plugin, node, call),
        stdin.as_bytes(),
        Duration::from_secs(60),
    )
    .context("run the plugin")?;
    Ok(Reply {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
