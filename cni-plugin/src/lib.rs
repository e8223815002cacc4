//! The `hostgw` CNI plugin: a veth, addresses from the node's subnet and routes for one pod.
//!
//! `dispatch::run` is the whole protocol as a pure function of (environment, stdin); the
//! kernel sits behind `datapath::Datapath` (rtnetlink in `netlink.rs`, a fake for tests);
//! addresses come from the `hostgw-ipam` store.
#![forbid(unsafe_code)]

pub mod cmd;
pub mod config;
pub mod datapath;
pub mod dispatch;
pub mod error;
pub mod netlink;
pub mod netns;
pub mod result;
pub mod validate;
pub mod version;

use std::{
    io::{Read, Write},
    os::{fd::AsFd, unix::fs::OpenOptionsExt},
    time::{Duration, Instant},
};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// The process entry: real environment, stdin/stdout, the kernel. Returns the exit code.
pub fn main_with_process_io() -> i32 {
    std::panic::set_hook(Box::new(|info| {
        // stdout is the protocol: a panic must still read as a CNI error there.
        let e = error::Error::Internal(format!("hostgw plugin bug: {info}"));
        println!("{}", e.to_json(None));
    }));
    let dp = match netlink::NetlinkDatapath::new() {
        Ok(dp) => dp,
        Err(e) => {
            println!("{}", e.to_json(None));
            return 1;
        }
    };
    let getenv = |k: &str| std::env::var(k).ok();
    let bound = match getenv("CNI_COMMAND").as_deref() {
        Some("VERSION") => Duration::from_millis(100),
        _ => Duration::from_secs(10),
    };
    let outcome = dispatch::run(
        &getenv,
        &mut BoundedStdin {
            deadline: Instant::now() + bound,
        },
        &mut std::io::stdout().lock(),
        &mut std::io::stderr(),
        &dp,
    );
    if let Some(line) = outcome.log {
        log_line(outcome.log_file.as_deref(), &line);
    }
    outcome.code
}

/// stdin that gives up at a deadline. Runtimes write the config and close the pipe at
/// once; one that leaves it open must not hang the call. Reads go straight to fd 0 (not
/// through std's buffer) so that poll() sees every byte still to be read.
struct BoundedStdin {
    deadline: Instant,
}

impl Read for BoundedStdin {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let stdin = std::io::stdin();
        let left = self.deadline.saturating_duration_since(Instant::now());
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, timeout)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "stdin was not closed in time: the runtime must write the config and close it",
            ));
        }
        Ok(nix::unistd::read(stdin.as_fd(), buf)?)
    }
}

/// Logs go to the configured file, else stderr; never stdout.
fn log_line(file: Option<&std::path::Path>, line: &str) {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let text = format!("{stamp:.3} hostgw: {line}\n");
    let wrote = file.is_some_and(|p| {
        // Non-blocking: a FIFO without a reader put there must not hang the call's end.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(p)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .is_ok()
    });
    if !wrote {
        let _ = std::io::stderr().write_all(text.as_bytes());
    }
}
