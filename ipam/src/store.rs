//! The on-disk store of one network, in host-local's layout (cni-notes §2.4):
//! `<dataDir>/<network>/{lock, last_reserved_ip.<pool>, <ip>...}`.
//!
//! Every operation runs under one flock on `lock` held for the whole ADD/DEL/GC (host-local
//! takes it per range set, so a dual-stack ADD there is not one transaction). The lock
//! file is the one host-local uses, so the two can even share a directory safely.

mod alloc;
mod files;

pub use files::read_small_file;

use std::{
    collections::HashSet,
    fs::{DirBuilder, File, OpenOptions},
    net::IpAddr,
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg, OFlag},
};

use crate::{Attachment, Error, Pool, error::Result};

/// Beside the networks' directories: `<dataDir>/.hostgw-locks/<network>/<containerID>`,
/// one lock file per container. Outside the network's directory, which keeps exactly
/// host-local's layout; a name starting with a dot is no valid network name, so it
/// never collides with one.
const CONTAINER_LOCK_DIR: &str = ".hostgw-locks";

/// A network's directory. Cheap to open: one mkdir and one open, no scan.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    lock_path: PathBuf,
    container_locks: PathBuf,
}

/// Proof that this process holds the network's lock; every operation hangs off it.
/// The lock is released when it drops (or when the process dies).
#[derive(Debug)]
pub struct Locked<'a> {
    store: &'a Store,
    _flock: Flock<File>,
}

// === impl Store ===

impl Store {
    /// Creates `<data_dir>/<network>` (0755) and the `lock` file in it.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store> {
        if network.is_empty() || network.contains('/') || network == "." || network == ".." {
            return Err(Error::InvalidNetworkName(network.to_owned()));
        }
        let dir = data_dir.join(network);
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|e| Error::io("create network directory", &dir, e))?;
        let lock_path = dir.join(files::LOCK_FILE);
        let container_locks = data_dir.join(CONTAINER_LOCK_DIR).join(network);
        let store = Store {
            dir,
            lock_path,
            container_locks,
        };
        store.open_lock_file()?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the exclusive lock, waiting at most `timeout`, so that a stuck holder turns
    /// into [`Error::LockTimeout`] instead of a hung pod sandbox.
    ///
    /// The uncontended case is one non-blocking flock. Under contention a helper thread
    /// makes the blocking call, so the kernel wakes us the moment the holder lets go
    /// (polling with sleeps added up to its sleep interval to every waiter of a 100-pod
    /// burst). On timeout the helper is left blocked; if it gets the lock later it finds
    /// nobody listening and drops it at once, and the plugin process exits anyway.
    pub fn lock(&self, timeout: Duration) -> Result<Locked<'_>> {
        // A fresh open file description per call: flock belongs to the description, so
        // two guards from one Store exclude each other like guards of two processes.
        let file = self.open_lock_file()?;
        let flock = flock_bounded(file, &self.lock_path, timeout)?;
        Ok(Locked {
            store: self,
            _flock: flock,
        })
    }

    /// Takes the lock of one container's attachments, held for a whole ADD or DEL so that
    /// a DEL racing the ADD of the same container waits for it (and then undoes all of
    /// it) instead of freeing an address a pod is still being given. Take it before
    /// [`Store::lock`], never while holding that.
    ///
    /// The lock file is `<dataDir>/.hostgw-locks/<network>/<containerID>`; DEL removes it while holding
    /// it, so a waiter that then gets the flock of the removed inode tries again on the
    /// new file instead of running beside the next holder.
    pub fn lock_container(&self, container_id: &str, timeout: Duration) -> Result<ContainerLock> {
        let path = self.container_lock_path(container_id)?;
        let dir = &self.container_locks;
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io("create lock directory", dir, e))?;
        let deadline = Instant::now() + timeout;
        loop {
            let file = open_lock(&path)?;
            let left = deadline.saturating_duration_since(Instant::now());
            let flock = flock_bounded(file, &path, left)?;
            let held = flock.metadata().map_err(|e| Error::io("lock", &path, e))?;
            match std::fs::symlink_metadata(&path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(ContainerLock {
                        path,
                        _flock: flock,
                    });
                }
                Ok(_) | Err(_) if Instant::now() < deadline => continue,
                _ => {
                    return Err(Error::LockTimeout { path, timeout });
                }
            }
        }
    }

    /// Whether a reservation could be written now: writes and removes a small temporary
    /// file, so a read-only or full dataDir shows up before an ADD fails on it.
    pub fn check_writable(&self) -> Result<()> {
        let tmp = files::write_temp(&self.dir, "status", &[b'x'; 64])?;
        let _ = std::fs::remove_file(tmp);
        Ok(())
    }

    fn container_lock_path(&self, container_id: &str) -> Result<PathBuf> {
        let id = container_id.trim();
        if id.is_empty() || id.starts_with('.') || id.contains(['/', '\0', '\r', '\n']) {
            return Err(Error::InvalidAttachment(Attachment::new(id, "")));
        }
        // A file name holds 255 bytes; two ids sharing their first 200 only share a lock.
        let cut = id
            .char_indices()
            .map(|(i, c)| i + c.len_utf8())
            .take_while(|end| *end <= 200)
            .last()
            .unwrap_or(0);
        Ok(self.container_locks.join(&id[..cut]))
    }

    fn open_lock_file(&self) -> Result<File> {
        open_lock(&self.lock_path)
    }
}

/// Opens (creating) a lock file without following a symlink or blocking on a FIFO put in
/// its place, and refuses anything but a regular file.
fn open_lock(path: &Path) -> Result<File> {
    let flags = OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(flags.bits())
        .open(path)
        .map_err(|e| Error::io("open lock", path, e))?;
    files::check_regular(&file).map_err(|e| Error::io("open lock", path, e))?;
    Ok(file)
}

/// flock with a bound. The uncontended case is one non-blocking flock. Under contention
/// a helper thread makes the blocking call, so the kernel wakes us the moment the holder
/// lets go (polling with sleeps added up to its sleep interval to every waiter of a
/// 100-pod burst). On timeout the helper is left blocked; if it gets the lock later it
/// finds nobody listening and drops it at once, and the plugin process exits anyway.
fn flock_bounded(file: File, path: &Path, timeout: Duration) -> Result<Flock<File>> {
    let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(flock) => return Ok(flock),
        Err((f, Errno::EWOULDBLOCK | Errno::EINTR)) => f,
        Err((_, errno)) => return Err(Error::io("lock", path, errno.into())),
    };
    let (tx, rx) = mpsc::sync_channel(1);
    thread::Builder::new()
        .name("ipam-lock".into())
        .spawn(move || {
            let mut file = file;
            let got = loop {
                match Flock::lock(file, FlockArg::LockExclusive) {
                    Ok(flock) => break Ok(flock),
                    Err((f, Errno::EINTR)) => file = f,
                    Err((_, errno)) => break Err(errno),
                }
            };
            let _ = tx.send(got);
        })
        .map_err(|e| Error::io("spawn lock waiter", path, e))?;
    let waited = match Instant::now().checked_add(timeout) {
        Some(_) => rx.recv_timeout(timeout).map_err(|_| ()),
        // A timeout too large to add to now: wait for as long as it takes.
        None => rx.recv().map_err(|_| ()),
    };
    match waited {
        Ok(Ok(flock)) => Ok(flock),
        Ok(Err(errno)) => Err(Error::io("lock", path, errno.into())),
        Err(()) => Err(Error::LockTimeout {
            path: path.to_path_buf(),
            timeout,
        }),
    }
}

/// One container's lock (see [`Store::lock_container`]); released on drop.
#[derive(Debug)]
pub struct ContainerLock {
    path: PathBuf,
    _flock: Flock<File>,
}

impl ContainerLock {
    /// Removes the lock file, still holding it: for DEL, after which the container has
    /// nothing left on this network.
    pub fn remove(self) -> Result<()> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove lock", &self.path, e)),
        }
    }
}

// === impl Locked ===

impl Locked<'_> {
    /// Releases every reservation of (id, ifname); when there is none, the legacy
    /// id-only files of that container instead (as host-local's DEL). Nothing to release
    /// is success.
    pub fn release(&mut self, att: &Attachment) -> Result<Vec<IpAddr>> {
        let me = att.normalized();
        let scan = files::scan(self.dir(), true)?;
        let entries = &scan.entries;
        let mut mine: Vec<&files::Entry> = entries
            .iter()
            .filter(|e| me.owns(&e.holder, false))
            .collect();
        if mine.is_empty() {
            mine = entries
                .iter()
                .filter(|e| me.owns(&e.holder, true))
                .collect();
        }
        let released = self.remove_all(&mine, scan.unreadable)?;
        Ok(released.into_iter().map(|(ip, _)| ip).collect())
    }

    /// The IPs held by this attachment, legacy id-only files of its container included
    /// (host-local's CHECK accepts either).
    pub fn find(&self, att: &Attachment) -> Result<Vec<IpAddr>> {
        let me = att.normalized();
        let entries = files::scan(self.dir(), false)?.strict()?;
        Ok(entries
            .into_iter()
            .filter(|e| me.owns(&e.holder, true))
            .map(|e| e.ip)
            .collect())
    }

    /// Releases every reservation not owned by one of `valid` (legacy files count as
    /// owned by their container id). An empty `valid` releases everything; the caller
    /// must not pass one for a *missing* `cni.dev/valid-attachments` key.
    pub fn gc(&mut self, valid: &[Attachment]) -> Result<Vec<(IpAddr, Attachment)>> {
        let valid: Vec<Attachment> = valid.iter().map(Attachment::normalized).collect();
        let scan = files::scan(self.dir(), true)?;
        let stale: Vec<&files::Entry> = scan
            .entries
            .iter()
            .filter(|e| !valid.iter().any(|v| v.owns(&e.holder, true)))
            .collect();
        self.remove_stale_container_locks(&valid);
        self.remove_all(&stale, scan.unreadable)
    }

    /// Lock files of containers that are not valid any more and that nobody holds. Best
    /// effort: a leftover lock file costs an inode, nothing else.
    fn remove_stale_container_locks(&self, valid: &[Attachment]) {
        let store = self.store;
        let Ok(rd) = std::fs::read_dir(&store.container_locks) else {
            return;
        };
        for name in rd.filter_map(|e| e.ok()?.file_name().into_string().ok()) {
            let keep = valid.iter().any(|v| {
                store
                    .container_lock_path(&v.container_id)
                    .is_ok_and(|p| p.file_name() == Some(name.as_ref()))
            });
            if !keep && let Ok(lock) = store.lock_container(&name, Duration::ZERO) {
                let _ = lock.remove();
            }
        }
    }

    /// Every reservation, sorted by IP. Legacy files have an empty ifname; a file with no
    /// content at all (an old host-local crash) shows up with an empty container id.
    pub fn list(&self) -> Result<Vec<(IpAddr, Attachment)>> {
        let entries = files::scan(self.dir(), false)?.strict()?;
        Ok(entries.into_iter().map(|e| (e.ip, e.holder)).collect())
    }

    /// Whether `pool` has a usable address left. Counts instead of iterating, so an
    /// IPv6 /64 costs the same as a /29.
    pub fn has_free(&self, pool: &Pool) -> Result<bool> {
        pool.validate()?;
        let entries = files::scan(self.dir(), false)?.strict()?;
        let taken: HashSet<IpAddr> = entries
            .iter()
            .map(|e| e.ip)
            .filter(|ip| pool.contains_usable(*ip))
            .collect();
        Ok((taken.len() as u128) < pool.usable_count())
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.store.dir
    }

    /// Removes what it can and reports every failure at the end (`errors` brings the
    /// files the scan could not read), with what did go.
    fn remove_all(
        &mut self,
        entries: &[&files::Entry],
        mut errors: Vec<Error>,
    ) -> Result<Vec<(IpAddr, Attachment)>> {
        let mut released = Vec::new();
        for entry in entries {
            match files::remove(self.dir(), &entry.name) {
                Ok(true) => released.push((entry.ip, entry.holder.clone())),
                Ok(false) => {}
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(released)
        } else {
            Err(Error::Incomplete { released, errors })
        }
    }
}
