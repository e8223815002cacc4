//! The only code that enters another network namespace. `setns` changes the calling
//! *thread*, so each entry happens on a scoped thread that ends right after: nothing else
//! in the process ever runs inside the pod's namespace by accident.

use std::{fs::File, path::Path};

use nix::sched::{CloneFlags, setns};

use crate::error::Error;

/// Opens a namespace path (`/run/netns/x`, `/proc/<pid>/ns/net`).
pub fn open(path: &Path) -> Result<File, Error> {
    File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::Config(format!("netns {} does not exist", path.display()))
        }
        _ => Error::io(format!("open netns {}", path.display()))(e),
    })
}

/// Runs `f` on a fresh thread that has joined the namespace `ns`.
pub fn run_in<T: Send>(ns: &File, path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| {
                Error::Config(format!(
                    "{} is not a network namespace: {e}",
                    path.display()
                ))
            })?;
            Ok(f())
        })
        .join()
        .map_err(|_| Error::Internal("netns thread panicked".into()))?
    })
}

/// Writes a sysctl of the calling thread's namespace (`/proc/sys/net` follows the thread).
/// `key` is the path below /proc/sys (`net/ipv4/conf/eth0/arp_notify`): interface names
/// may hold dots, so the dotted form would be ambiguous.
pub fn write_sysctl(key: &str, value: &str) -> Result<(), Error> {
    let path = format!("/proc/sys/{key}");
    std::fs::write(&path, value).map_err(Error::io(format!("write {path}")))
}
