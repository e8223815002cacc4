//! Ctrl-C and SIGTERM end the benchmark cleanly: Drop guards cannot run when a signal ends
//! the process, so a waiting thread removes this run's namespaces (with the processes
//! inside them, by PID) and folders itself, then exits.
//!
//! The signals are blocked in every thread (set before any is spawned) and taken by
//! `sigwait` in one. A child inherits the mask (`std::process::Command` does not clear it):
//! the fleet spawns its daemons with both unblocked, so they still get their SIGTERM from
//! `Proc`.

use std::{path::PathBuf, process::Command, sync::Mutex};

use anyhow::Result;
use hostgw_harness::fleet::Fleet;
use nix::sys::signal::{SigSet, Signal};

static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Call first, before any other thread exists.
pub fn install() -> Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()?;
    std::thread::spawn(move || {
        let sig = set.wait();
        eprintln!("bench-scale: {sig:?}: removing this run's namespaces and processes");
        sweep();
        std::process::exit(130);
    });
    Ok(())
}

/// The folders to remove on a signal: the fleet's, every node's, every etcd member's.
pub fn register(f: &Fleet) {
    let mut d = DIRS.lock().unwrap_or_else(|e| e.into_inner());
    d.push(f.dir.path().to_owned());
    d.extend(f.nodes.iter().map(|n| n.tmp.path().to_owned()));
    d.extend(f.etcd.members.iter().map(|m| m.data_dir().to_owned()));
}

/// Whether `name` is one of this process's namespaces (`<prefix><tag><pid%10000>x<n>`).
fn ours(name: &str, prefix: &str, pid: u32) -> bool {
    let Some(rest) = name.strip_prefix(prefix) else {
        return false;
    };
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_alphabetic());
    rest.strip_prefix(&format!("{}x", pid % 10_000))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn sweep() {
    let prefix = hostgw_harness::prefix();
    let pid = std::process::id();
    let list = Command::new("ip").args(["netns", "list"]).output();
    let names: Vec<String> = list
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| ours(n, &prefix, pid))
        .map(str::to_owned)
        .collect();
    kill_inside(&names);
    // `ip netns del` of a thousand namespaces one by one takes minutes: in parallel.
    let _ = hostgw_harness::fleet::par(names.len(), 8, |i| {
        let _ = Command::new("ip")
            .args(["netns", "del", &names[i]])
            .status();
        Ok(())
    });
    for d in DIRS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = std::fs::remove_dir_all(d);
    }
    eprintln!("bench-scale: removed {} namespaces", names.len());
}

/// SIGKILL to every process inside one of `names`, found in one pass over /proc (`ip netns
/// pids` per namespace scans all of /proc each time: quadratic with a thousand daemons).
fn kill_inside(names: &[String]) {
    use std::os::unix::fs::MetadataExt;
    let inodes: std::collections::HashSet<u64> = names
        .iter()
        .filter_map(|n| std::fs::metadata(format!("/run/netns/{n}")).ok())
        .map(|m| m.ino())
        .collect();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in procs.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let inside =
            std::fs::metadata(format!("/proc/{p}/ns/net")).is_ok_and(|m| inodes.contains(&m.ino()));
        if inside {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_this_runs_namespaces_are_swept() {
        let ours = |n| super::ours(n, "hgwt-rs-", 123_456);
        assert!(ours("hgwt-rs-n3456x12"));
        assert!(ours("hgwt-rs-sw3456x0"));
        assert!(!ours("hgwt-rs-n3457x12"), "another process");
        assert!(!ours("hgwt-other-n3456x1"), "another prefix");
        assert!(!ours("hgwt-rs-n3456x"), "no counter");
    }
}
