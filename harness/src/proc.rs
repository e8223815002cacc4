//! Processes the harness starts: long-running ones ([`Proc`], ended by PID on Drop) and
//! bounded runs ([`launch`] + [`finish_all`]: the one run-with-timeout helper, which
//! [`run_timeout`], the plugin invocations of [`crate::cni`] and the CNI benchmark share).
//!
//! A bounded run watches the child's pidfd and its stdout and stderr pipes in one `poll`:
//! output is read while the child runs, so a child that prints more than a pipe holds
//! cannot block on it, and the exit is seen the moment it happens (the CNI benchmark's
//! timing depends on that) rather than at the next tick of a sleep loop.

use std::{
    fs::File,
    io::{ErrorKind, Read, Write},
    os::{
        fd::{AsFd, OwnedFd},
        unix::process::ExitStatusExt,
    },
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::{
    fcntl::{FcntlArg, OFlag, fcntl},
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::{
        resource::{UsageWho, getrusage},
        signal::{Signal, kill},
        time::TimeVal,
    },
    unistd::Pid,
};
use rustix::process::{PidfdFlags, pidfd_open};

/// What a bounded run may write to its child's stdin: one pipe's worth, so that the write
/// never blocks before the child's output is being read.
const MAX_INPUT: usize = 64 * 1024;

// === impl Running ===

/// A child started by [`launch`], watched through its pidfd until [`finish_all`] reaps it.
pub struct Running {
    start: Instant,
    child: Child,
    pidfd: OwnedFd,
    /// stdout, stderr.
    pipes: [Pipe; 2],
}

/// One output pipe of a child, read without blocking as data arrives.
struct Pipe {
    file: Option<File>,
    buf: Vec<u8>,
}

impl Pipe {
    fn new(fd: Option<OwnedFd>) -> Result<Pipe> {
        if let Some(fd) = &fd {
            let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
            fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        }
        Ok(Pipe {
            file: fd.map(File::from),
            buf: Vec::new(),
        })
    }

    /// Reads what the pipe holds now; closes it at end of file or on an error.
    fn read_available(&mut self) {
        let Some(f) = &mut self.file else { return };
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match f.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        self.file = None;
    }
}

/// A bounded run that has ended.
#[derive(Debug)]
pub struct Finished {
    /// Just before `spawn()`.
    pub start: Instant,
    /// When the pidfd reported the exit.
    pub exited: Instant,
    pub status: ExitStatus,
    /// User + system CPU of the child and of the children it waited for (`RUSAGE_CHILDREN`
    /// around the reap: exact while no other thread of this process reaps at the same time).
    pub cpu: Duration,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Finished {
    /// Spawn to exit.
    pub fn wall(&self) -> Duration {
        self.exited - self.start
    }

    /// The exit code, or 128 + the signal that ended it (as a shell reports it).
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| 128 + self.status.signal().unwrap_or(0))
    }

    pub fn into_output(self) -> Output {
        Output {
            status: self.status,
            stdout: self.stdout,
            stderr: self.stderr,
        }
    }
}

/// Kills and reaps a child we gave up on (by its PID: it is ours and not yet reaped).
fn abandon(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Spawns `cmd` with `input` on its stdin (none: stdin is /dev/null) and its stdout and
/// stderr captured; [`finish_all`] waits for it.
pub fn launch(cmd: &mut Command, input: &[u8]) -> Result<Running> {
    if input.len() > MAX_INPUT {
        bail!(
            "{cmd:?}: input of {} bytes is more than a pipe holds",
            input.len()
        );
    }
    let stdin = if input.is_empty() {
        Stdio::null()
    } else {
        Stdio::piped()
    };
    cmd.stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
    let pidfd = match pidfd_open(
        rustix::process::Pid::from_child(&child),
        PidfdFlags::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) => {
            abandon(&mut child);
            bail!("pidfd_open of {cmd:?}: {e}");
        }
    };
    // A child may exit without reading its input (a plugin answering an environment error,
    // as the Go skel does; the benchmark's /bin/true): the write then meets a closed pipe,
    // which is not the run's failure.
    if let Some(mut w) = child.stdin.take()
        && let Err(e) = w.write_all(input)
        && e.kind() != ErrorKind::BrokenPipe
    {
        abandon(&mut child);
        return Err(e).with_context(|| format!("write the input of {cmd:?}"));
    }
    let pipes = [
        Pipe::new(child.stdout.take().map(OwnedFd::from)),
        Pipe::new(child.stderr.take().map(OwnedFd::from)),
    ];
    let pipes = match pipes {
        [Ok(o), Ok(e)] => [o, e],
        [Err(e), _] | [_, Err(e)] => {
            abandon(&mut child);
            return Err(e.context("make the output pipes non-blocking"));
        }
    };
    Ok(Running {
        start,
        child,
        pidfd,
        pipes,
    })
}

fn cpu_of_children() -> Duration {
    let tv = |t: TimeVal| {
        Duration::from_secs(t.tv_sec().max(0) as u64)
            + Duration::from_micros(t.tv_usec().max(0) as u64)
    };
    getrusage(UsageWho::RUSAGE_CHILDREN)
        .map(|u| tv(u.user_time()) + tv(u.system_time()))
        .unwrap_or_default()
}

/// Reaps a child whose pidfd reported its exit at `exited`.
fn reap(mut r: Running, exited: Instant) -> Result<Finished> {
    for p in &mut r.pipes {
        p.read_available();
    }
    let before = cpu_of_children();
    let status = r.child.wait().context("wait for the child")?;
    let cpu = cpu_of_children().saturating_sub(before);
    let [out, err] = r.pipes;
    Ok(Finished {
        start: r.start,
        exited,
        status,
        cpu,
        stdout: out.buf,
        stderr: err.buf,
    })
}

/// What `poll` found ready: (slot, `None` for the pidfd or `Some(pipe)`).
type Ready = Vec<(usize, Option<usize>)>;

/// One `poll` over every pidfd and open pipe of `slots`, bounded by `deadline`; returns
/// the time it returned and what was ready.
fn poll_once(slots: &[Option<Running>], deadline: Instant) -> Result<(Instant, Ready)> {
    let mut fds = Vec::new();
    let mut who = Vec::new();
    for (i, r) in slots.iter().enumerate() {
        let Some(r) = r else { continue };
        fds.push(PollFd::new(r.pidfd.as_fd(), PollFlags::POLLIN));
        who.push((i, None));
        for (k, p) in r.pipes.iter().enumerate() {
            if let Some(f) = &p.file {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                who.push((i, Some(k)));
            }
        }
    }
    let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(1);
    let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, timeout) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
        Err(e) => bail!("poll: {e}"),
    }
    let t = Instant::now();
    let ready = fds
        .iter()
        .zip(who)
        .filter(|(fd, _)| fd.any().unwrap_or(false))
        .map(|(_, w)| w)
        .collect();
    Ok((t, ready))
}

/// Waits for every run, noting each one's exit time as its pidfd turns readable and
/// reading its output meanwhile. Past `limit` the rest are killed (by PID, each ours) and
/// this fails.
pub fn finish_all(running: Vec<Running>, limit: Duration) -> Result<Vec<Finished>> {
    let deadline = Instant::now() + limit;
    let n = running.len();
    let mut slots: Vec<Option<Running>> = running.into_iter().map(Some).collect();
    let mut out: Vec<Option<Finished>> = (0..n).map(|_| None).collect();
    let mut left = n;
    while left > 0 {
        if Instant::now() >= deadline {
            for r in slots.iter_mut().flatten() {
                abandon(&mut r.child);
            }
            bail!("{left} of {n} processes did not finish within {limit:?}");
        }
        let (t, ready) = poll_once(&slots, deadline)?;
        for (i, pipe) in ready {
            match pipe {
                Some(k) => {
                    if let Some(r) = &mut slots[i] {
                        r.pipes[k].read_available();
                    }
                }
                None => {
                    let r = slots[i].take().context("a slot reaped twice")?;
                    out[i] = Some(reap(r, t)?);
                    left -= 1;
                }
            }
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// Runs a command to completion with a bound on its run time, `input` on its stdin.
pub fn run_input(cmd: &mut Command, input: &[u8], limit: Duration) -> Result<Output> {
    let r = launch(cmd, input)?;
    let mut done = finish_all(vec![r], limit).with_context(|| format!("{cmd:?}"))?;
    Ok(done.pop().context("no result")?.into_output())
}

/// Runs a command to completion with a bound on its run time (stdin is /dev/null).
pub fn run_timeout(cmd: &mut Command, limit: Duration) -> Result<Output> {
    run_input(cmd, &[], limit)
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

    /// A handle that holds no process yet (started later, e.g. by `Etcd::restart`).
    pub(crate) fn none() -> Proc {
        Proc { child: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Whether the process has exited (and so can be restarted or asserted on).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends a signal without waiting.
    pub fn signal(&self, sig: Signal) {
        if let Some(c) = &self.child {
            let _ = kill(Pid::from_raw(c.id() as i32), sig);
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_larger_than_a_pipe_is_read_while_the_child_runs() {
        let out = run_timeout(
            Command::new("sh").args(["-c", "head -c 300000 /dev/zero; echo err >&2"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout.len(), 300_000);
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    fn input_reaches_stdin() {
        let out = run_input(&mut Command::new("cat"), b"config", Duration::from_secs(10)).unwrap();
        assert_eq!(out.stdout, b"config");
    }

    #[test]
    fn a_run_past_its_limit_is_killed_and_fails() {
        let t = Instant::now();
        let err =
            run_timeout(Command::new("sleep").arg("30"), Duration::from_millis(200)).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(
            format!("{err:#}").contains("did not finish within"),
            "{err:#}"
        );
    }

    #[test]
    fn every_run_of_a_batch_gets_its_own_exit_and_code() {
        let mut runs = Vec::new();
        for script in ["exit 3", "sleep 0.2; exit 0", "kill -9 $$"] {
            runs.push(launch(Command::new("sh").args(["-c", script]), &[]).unwrap());
        }
        let done = finish_all(runs, Duration::from_secs(10)).unwrap();
        let codes: Vec<i32> = done.iter().map(Finished::code).collect();
        assert_eq!(codes, [3, 0, 128 + 9]);
        assert!(done[1].wall() >= Duration::from_millis(200));
        assert!(done.iter().all(|f| f.exited >= f.start));
    }
}
