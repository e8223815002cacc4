//! The on-disk store of one network, in host-local's layout (cni-notes §2.4):
//! `<dataDir>/<network>/{lock, last_reserved_ip.<pool>, <ip>...}`.
//!
//! Every operation runs under one flock on `lock` held for the whole ADD/DEL/GC (host-local
//! takes it per range set, so a dual-stack ADD there is not one transaction). The lock
//! file is the one host-local uses, so the two can even share a directory safely.

mod alloc;
mod files;

use std::{
    collections::HashSet,
    fs::{DirBuilder, File, OpenOptions},
    net::IpAddr,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

use crate::{Attachment, Error, Pool, error::Result};

/// A network's directory. Cheap to open: one mkdir and one open, no scan.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    lock_path: PathBuf,
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
        let store = Store { dir, lock_path };
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
        let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(flock) => {
                return Ok(Locked {
                    store: self,
                    _flock: flock,
                });
            }
            Err((f, Errno::EWOULDBLOCK | Errno::EINTR)) => f,
            Err((_, errno)) => return Err(Error::io("lock", &self.lock_path, errno.into())),
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
            .map_err(|e| Error::io("spawn lock waiter", &self.lock_path, e))?;
        let waited = match Instant::now().checked_add(timeout) {
            Some(_) => rx.recv_timeout(timeout).map_err(|_| ()),
            // A timeout too large to add to now: wait for as long as it takes.
            None => rx.recv().map_err(|_| ()),
        };
        match waited {
            Ok(Ok(flock)) => Ok(Locked {
                store: self,
                _flock: flock,
            }),
            Ok(Err(errno)) => Err(Error::io("lock", &self.lock_path, errno.into())),
            Err(()) => Err(Error::LockTimeout {
                path: self.lock_path.clone(),
                timeout,
            }),
        }
    }

    fn open_lock_file(&self) -> Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.lock_path)
            .map_err(|e| Error::io("open lock", &self.lock_path, e))
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
        self.remove_all(&stale, scan.unreadable)
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
