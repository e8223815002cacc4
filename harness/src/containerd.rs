//! A real container runtime for root tests: Debian's `containerd` (with runc) started inside
//! a node's network namespace and inside a mount namespace of its own, so that nothing it
//! does lands on the host's filesystem.
//!
//! Where things live:
//! - root, state, config and sockets in a tempdir (`Containerd::dir`);
//! - `/run` is a fresh tmpfs in containerd's mount namespace (shims and runc hard-code
//!   `/run/containerd/…`), with the host's `/run/netns` bound back in as a slave, so
//!   namespaces created later (pods for `ctr run --cni`) are visible to it; mounts made in
//!   there never propagate back to the host;
//! - every `ctr` call runs in containerd's mount and network namespaces (the client creates
//!   the task's FIFOs under `/run/containerd/fifo`, which must be the daemon's);
//! - containers use the `native` snapshotter (works on any filesystem) and a cgroup below
//!   a parent named after this instance, removed on Drop.
//!
//! Drop ends every task it started (SIGTERM, then SIGKILL), deletes the containers, stops
//! containerd by PID, ends by PID any process left in its mount namespace (shims), removes
//! the cgroups it created, and lets the tempdir go.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{Netns, Proc, run_timeout, unique, wait_for};

/// The containerd namespace every call uses.
pub const NAMESPACE: &str = "hgwt";

/// A running containerd inside a node namespace.
pub struct Containerd {
    /// Declared first: containerd ends before its files go.
    proc: Option<Proc>,
    pid: u32,
    /// Mount namespace of containerd (`/proc/<pid>/ns/mnt` link text), to find its shims.
    mnt_ns: String,
    netns: PathBuf,
    cgroup_parent: String,
    started: Mutex<Vec<String>>,
    pub dir: tempfile::TempDir,
}

/// How to run one container; `Default` is a detached container with the image's own
/// command, its own network namespace and ctr's default capabilities.
#[derive(Clone, Debug, Default)]
pub struct RunOpts {
    /// Replaces the image's entrypoint and command when not empty.
    pub args: Vec<String>,
    pub host_net: bool,
    pub privileged: bool,
    /// `CAP_…` names; `cap_drop: ["ALL"]` with `cap_add` gives exactly the added ones.
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub env: Vec<(String, String)>,
    /// (host path, container path, read-only) bind mounts.
    pub mounts: Vec<(PathBuf, PathBuf, bool)>,
    /// Extra `ctr run` flags (`--cni`, …), placed before the image.
    pub extra: Vec<String>,
}

/// Every Linux capability, for `cap_drop: ["ALL"]`.
pub const ALL_CAPS: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

const START_SCRIPT: &str = r#"
set -eu
d=$1
mkdir -p "$d/hostrun"
mount --rbind /run "$d/hostrun"
mount -t tmpfs -o mode=0755 hgwt-containerd-run /run
mkdir -p /run/netns /run/containerd
mount --rbind "$d/hostrun/netns" /run/netns
umount -l "$d/hostrun"
exec containerd --config "$d/config.toml"
"#;

fn config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  address = ""
  level = "warn"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#
    )
}

impl Containerd {
    /// Starts containerd in `node`'s network namespace and waits until it answers.
    pub fn start(node: &Netns) -> Result<Containerd> {
        let dir = tempfile::Builder::new()
            .prefix("hgwt-containerd")
            .tempdir()?;
        std::fs::write(dir.path().join("config.toml"), config(dir.path()))?;
        let log = std::fs::File::create(dir.path().join("containerd.log"))?;
        // nsenter and unshare (neither forks) exec into sh, which execs containerd: the
        // child's PID is containerd's.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", node.path().display()))
            .args(["--", "unshare", "--mount", "--propagation", "slave", "--"])
            .args(["sh", "-c", START_SCRIPT, "sh"])
            .arg(dir.path())
            .stdout(log.try_clone()?)
            .stderr(log);
        let proc = Proc::spawn(cmd)?;
        let pid = proc.pid();
        let mut c = Containerd {
            proc: Some(proc),
            pid,
            mnt_ns: String::new(),
            netns: node.path(),
            cgroup_parent: format!("{}{}", crate::prefix(), unique("ctd")),
            started: Mutex::new(vec![]),
            dir,
        };
        wait_for("containerd to answer", Duration::from_secs(30), || {
            if let Some(p) = c.proc.as_mut()
                && p.exited().is_some()
            {
                return Some(());
            }
            c.ctr(&["version"]).ok().map(|_| ())
        })
        .with_context(|| c.log())?;
        if c.proc.as_mut().and_then(Proc::exited).is_some() {
            bail!("containerd exited at start:\n{}", c.log());
        }
        c.mnt_ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
            .context("containerd's mount namespace")?
            .display()
            .to_string();
        Ok(c)
    }

    /// containerd's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn address(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// `ctr --address … -n hgwt` inside containerd's mount and network namespaces.
    pub fn ctr_cmd(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--mount=/proc/{}/ns/mnt", self.pid))
            .arg(format!("--net={}", self.netns.display()))
            .args(["--", "ctr", "--address"])
            .arg(self.address())
            .args(["--namespace", NAMESPACE]);
        c
    }

    /// `ctr ARGS`, which must succeed within 2 minutes; returns stdout.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let out = run_timeout(self.ctr_cmd().args(args), Duration::from_secs(120))?;
        if !out.status.success() {
            bail!(
                "ctr {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Imports an image tarball (OCI layout or docker save); returns the names it got.
    pub fn import(&self, image_tar: &Path) -> Result<Vec<String>> {
        let tar = image_tar.display().to_string();
        self.ctr(&["images", "import", "--snapshotter", "native", &tar])?;
        let names = self.ctr(&["images", "ls", "-q"])?;
        Ok(names.lines().map(str::to_owned).collect())
    }

    /// Where the stdout and stderr of container `id` go.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("{id}.log"))
    }

    /// What container `id` wrote so far.
    pub fn container_log(&self, id: &str) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    /// Starts a detached container running `args` (the image's command when empty).
    pub fn run(&self, image: &str, id: &str, args: &[&str], host_net: bool) -> Result<()> {
        self.run_with(
            image,
            id,
            &RunOpts {
                args: args.iter().map(|s| s.to_string()).collect(),
                host_net,
                ..RunOpts::default()
            },
        )
    }

    fn run_args(&self, image: &str, id: &str, o: &RunOpts, detach: bool) -> Vec<String> {
        let mut a: Vec<String> = vec!["run".into(), "--snapshotter".into(), "native".into()];
        a.push("--cgroup".into());
        a.push(format!("/{}/{id}", self.cgroup_parent));
        if detach {
            a.push("-d".into());
            a.push("--log-uri".into());
            a.push(format!("file://{}", self.log_path(id).display()));
        } else {
            a.push("--rm".into());
        }
        if o.host_net {
            a.push("--net-host".into());
        }
        if o.privileged {
            a.push("--privileged".into());
        }
        // ctr 1.6 knows no "ALL", and applies drops after adds: name every capability to
        // drop except those to add (dropping an absent one is a no-op).
        let drops: Vec<String> = if o.cap_drop.iter().any(|c| c == "ALL") {
            ALL_CAPS.iter().map(|c| c.to_string()).collect()
        } else {
            o.cap_drop.clone()
        };
        for c in drops.iter().filter(|c| !o.cap_add.contains(c)) {
            a.extend(["--cap-drop".into(), c.clone()]);
        }
        for c in &o.cap_add {
            a.extend(["--cap-add".into(), c.clone()]);
        }
        for (k, v) in &o.env {
            a.extend(["--env".into(), format!("{k}={v}")]);
        }
        for (src, dst, ro) in &o.mounts {
            a.push("--mount".into());
            a.push(format!(
                "type=bind,src={},dst={},options=rbind:{}",
                src.display(),
                dst.display(),
                if *ro { "ro" } else { "rw" }
            ));
        }
        a.extend(o.extra.iter().cloned());
        a.push(image.into());
        a.push(id.into());
        a.extend(o.args.iter().cloned());
        a
    }

    /// Starts a detached container; its output goes to `log_path(id)`.
    pub fn run_with(&self, image: &str, id: &str, o: &RunOpts) -> Result<()> {
        let args = self.run_args(image, id, o, true);
        self.started.lock().unwrap().push(id.to_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ctr(&args)?;
        Ok(())
    }

    /// Runs a container to completion (removed afterwards), bounded by `limit`; returns
    /// its exit status and its output (stdout then stderr).
    pub fn run_once(
        &self,
        image: &str,
        id: &str,
        o: &RunOpts,
        limit: Duration,
    ) -> Result<(std::process::ExitStatus, String)> {
        let args = self.run_args(image, id, o, false);
        self.started.lock().unwrap().push(id.to_owned());
        let out = run_timeout(self.ctr_cmd().args(&args), limit)?;
        self.started.lock().unwrap().retain(|s| s != id);
        Ok((
            out.status,
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }

    /// The task's status as `ctr task ls` shows it (RUNNING, STOPPED, …), if it exists.
    pub fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ctr(&["task", "ls"]).ok()?;
        out.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| f.get(2).unwrap_or(&"").to_string())
        })
    }

    /// The host PID of the task's init process.
    pub fn task_pid(&self, id: &str) -> Option<u32> {
        let out = self.ctr(&["task", "ls"]).ok()?;
        out.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| f.get(1)?.parse().ok())?
        })
    }

    /// Ends container `id`: SIGTERM, up to 10 s, SIGKILL; then deletes task and container
    /// (and its snapshot). A container that does not exist is not an error.
    pub fn kill(&self, id: &str) -> Result<()> {
        if self.task_status(id).is_some() {
            let _ = self.ctr(&["task", "kill", "--signal", "SIGTERM", id]);
            let stopped = wait_for("task to stop", Duration::from_secs(10), || {
                matches!(self.task_status(id).as_deref(), None | Some("STOPPED")).then_some(())
            });
            if stopped.is_err() {
                let _ = self.ctr(&["task", "kill", "--signal", "SIGKILL", id]);
                wait_for("task to die", Duration::from_secs(10), || {
                    matches!(self.task_status(id).as_deref(), None | Some("STOPPED")).then_some(())
                })?;
            }
            self.ctr(&["task", "delete", id])?;
        }
        let containers = self.ctr(&["containers", "ls", "-q"])?;
        if containers.lines().any(|l| l == id) {
            self.ctr(&["containers", "delete", id])?;
        }
        self.started.lock().unwrap().retain(|s| s != id);
        Ok(())
    }

    /// PIDs of processes in containerd's mount namespace other than containerd (its shims
    /// and their containers).
    fn leftovers(&self) -> Vec<i32> {
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return vec![];
        };
        rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid as u32 != self.pid)
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
                    .is_ok_and(|l| l.display().to_string() == self.mnt_ns)
            })
            .collect()
    }

    /// Ends by PID what is still in our containers' cgroups (only containers of this
    /// containerd are below its parent), then removes `<hierarchy>/<parent>` and its
    /// children in every cgroup hierarchy (v1 and v2).
    fn remove_cgroups(&self) {
        let root = Path::new("/sys/fs/cgroup");
        let mut roots = vec![root.to_path_buf()];
        if let Ok(rd) = std::fs::read_dir(root) {
            roots.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
        }
        for r in roots {
            let parent = r.join(&self.cgroup_parent);
            if !parent.is_dir() {
                continue;
            }
            if let Ok(rd) = std::fs::read_dir(&parent) {
                for e in rd.filter_map(|e| e.ok()) {
                    if !e.file_type().is_ok_and(|t| t.is_dir()) {
                        continue;
                    }
                    let procs = std::fs::read_to_string(e.path().join("cgroup.procs"));
                    for pid in procs.unwrap_or_default().split_whitespace() {
                        if let Ok(pid) = pid.parse::<i32>() {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                        }
                    }
                    let _ = wait_for("cgroup to empty", Duration::from_secs(5), || {
                        std::fs::remove_dir(e.path()).ok()
                    });
                }
            }
            let _ = std::fs::remove_dir(&parent);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let mut ids: Vec<String> = self.started.lock().unwrap().clone();
        // Also what someone started through `ctr()` directly.
        for list in [["task", "ls", "-q"], ["containers", "ls", "-q"]] {
            if let Ok(out) = self.ctr(&list) {
                ids.extend(out.lines().map(str::to_owned));
            }
        }
        ids.sort();
        ids.dedup();
        for id in ids {
            let _ = self.kill(&id);
        }
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(10));
        }
        // Shims outlive containerd by design; ours go with it.
        for _ in 0..50 {
            let left = self.leftovers();
            if left.is_empty() {
                break;
            }
            for pid in left {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.remove_cgroups();
    }
}
