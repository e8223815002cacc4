//! The only code that enters another network namespace. `setns` changes the calling
//! *thread*, so each entry happens on a scoped thread that ends right after: nothing else
//! in the process ever runs inside the pod's namespace by accident. No `unsafe`: nix's
//! `setns` is a safe wrapper, and the checks below read /proc instead of calling ioctls.

use std::{
    fs::{File, OpenOptions},
    os::{
        fd::AsRawFd,
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::Path,
};

use nix::{
    fcntl::OFlag,
    sched::{CloneFlags, setns},
    sys::statfs::{NSFS_MAGIC, fstatfs},
};

use crate::error::Error;

/// Namespaces a pod never lives in: the plugin's own (the node's, where the host veths
/// go) and that of PID 1 (the machine's). A pod "in" either would put its address and
/// default route on the host itself.
const NOT_A_POD: [&str; 2] = ["/proc/self/ns/net", "/proc/1/ns/net"];

/// Opens a pod's namespace path (`/run/netns/x`, `/proc/<pid>/ns/net`) and makes sure it
/// is a network namespace that is not the host's. Refusals are environment errors (4):
/// the path comes from `CNI_NETNS`.
pub fn open(path: &Path) -> Result<File, Error> {
    let refuse = |why: String| Error::InvalidEnv {
        msg: format!("invalid CNI_NETNS {}: {why}", path.display()),
        details: why,
    };
    // Non-blocking: a FIFO at the path must not hang the call.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).bits())
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => refuse("no such file".into()),
            _ => Error::io(format!("open netns {}", path.display()))(e),
        })?;
    // Namespace files live on nsfs, whether reached by /proc/<pid>/ns/net or by a bind
    // mount under /run/netns. Which kind of namespace: an fd of the /proc form reads
    // back as "<kind>:[<inode>]"; a bind mount reads back as its path, and setns with
    // CLONE_NEWNET (run_in) refuses any other kind with EINVAL before anything is made.
    let fs =
        fstatfs(&file).map_err(|e| Error::io(format!("statfs {}", path.display()))(e.into()))?;
    if fs.filesystem_type() != NSFS_MAGIC {
        return Err(refuse(
            "not a network namespace (not a namespace file at all)".into(),
        ));
    }
    let fd_link = format!("/proc/self/fd/{}", file.as_raw_fd());
    let target = std::fs::read_link(&fd_link).map_err(Error::io(format!("readlink {fd_link}")))?;
    let target = target.to_string_lossy();
    if let Some((kind, _)) = target.split_once(":[")
        && kind != "net"
        && !kind.contains('/')
    {
        return Err(refuse(format!("not a network namespace (it is {target})")));
    }
    let meta = file
        .metadata()
        .map_err(Error::io(format!("stat {}", path.display())))?;
    for host in NOT_A_POD {
        if let Ok(h) = std::fs::metadata(host)
            && (h.dev(), h.ino()) == (meta.dev(), meta.ino())
        {
            return Err(refuse(format!(
                "the host's own network namespace (the same as {host}); a pod needs its own"
            )));
        }
    }
    Ok(file)
}

/// Runs `f` on a fresh thread that has joined the namespace `ns`.
pub fn run_in<T: Send>(ns: &File, path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| Error::InvalidEnv {
                msg: format!("invalid CNI_NETNS {}: cannot enter it: {e}", path.display()),
                details: format!("cannot enter it: {e}"),
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
#[cfg(test)]
mod tests {
    use super::*;

    fn refused(path: &Path) -> String {
        let e = open(path).unwrap_err();
        assert_eq!(e.code(), 4, "{}: {e}", path.display());
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        e.to_string()
    }

    /// Issue 12 item 10: the host's own namespace, and anything that is no network
    /// namespace, is refused with code 4 (no root needed: nothing is entered).
    #[test]
    fn host_namespaces_and_non_namespaces_are_refused() {
        for own in ["/proc/self/ns/net", "/proc/thread-self/ns/net"] {
            assert!(refused(Path::new(own)).contains("host's own"));
        }
        let pid = format!("/proc/{}/ns/net", std::process::id());
        assert!(refused(Path::new(&pid)).contains("host's own"));
        // PID 1's: refused as the host's, or not even openable (a container without
        // ptrace rights over PID 1 gets EACCES, an I/O error naming the path).
        let e = open(Path::new("/proc/1/ns/net")).unwrap_err();
        assert!(
            (e.code() == 4 && e.to_string().contains("host's own")) || e.code() == 5,
            "{e}"
        );
        for other in [
            "/proc/self/ns/mnt",
            "/proc/self/ns/uts",
            "/proc/self/ns/user",
        ] {
            assert!(refused(Path::new(other)).contains("not a network namespace"));
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("gone"), &dangling).unwrap();
        for p in [file, fifo, dir.path().to_path_buf(), "/dev/null".into()] {
            assert!(refused(&p).contains("not a network namespace"));
        }
        assert!(refused(&dangling).contains("no such file"));
        assert!(refused(Path::new("/run/netns/hgwt-never-made")).contains("no such file"));
    }
}
