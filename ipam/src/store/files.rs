//! The files of one network directory. Callers hold the directory's flock for
//! everything here that writes.
//!
//! Crash safety: a reservation is written in full to a temporary file and only then
//! given its final name with link(2), which fails with EEXIST when the IP is taken, so
//! it doubles as the exclusive create. A process killed at any instant leaves either no
//! reservation or a complete one, never the empty file that blocks an IP forever
//! (host-local issue #498); at worst it leaves a `.tmp-*` file, which readers ignore and
//! the next lock holder deletes (the killed holder's flock died with it, so no writer
//! can still be using it).
//!
//! No fsync: this guards against process death, not power loss. dataDir is usually on
//! tmpfs or treated as such, and after a reboot the runtime re-DELs (or GCs) every
//! attachment anyway; a sync per pod would only slow down every ADD.

use std::{
    ffi::OsString,
    fs::{self, OpenOptions},
    io::{self, Write},
    net::IpAddr,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use crate::{Attachment, Error, error::Result};

pub(crate) const LOCK_FILE: &str = "lock";
const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
/// Starts with a dot, so it can never parse as an IP address.
const TMP_PREFIX: &str = ".tmp-";
/// host-local HEAD writes reservations 0600.
const FILE_MODE: u32 = 0o600;
/// `<containerID>\r\n<ifname>` is well under this; anything longer is not ours.
const RESERVATION_MAX: u64 = 4096;
/// An IP address in text.
const MARKER_MAX: u64 = 256;

/// One reservation file. `name` is kept because a hand-made file may spell the IP in a
/// non-canonical way (`FD18::2`): it still blocks that IP and is removed by its own name.
#[derive(Debug)]
pub(crate) struct Entry {
    pub ip: IpAddr,
    pub name: OsString,
    pub holder: Attachment,
}

/// What a directory read found: the readable reservations, sorted by IP, and the
/// failures to read others (kept apart so DEL and GC can carry on past them).
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub entries: Vec<Entry>,
    pub unreadable: Vec<Error>,
}

impl Scan {
    /// For operations that must see every reservation to be correct (ADD's duplicate
    /// check, CHECK, STATUS): the first unreadable file is an error.
    pub fn strict(mut self) -> Result<Vec<Entry>> {
        match self.unreadable.pop() {
            Some(err) => Err(err),
            None => Ok(self.entries),
        }
    }
}

/// Every reservation in `dir`. Skips `lock`, `last_reserved_ip.*`, `.tmp-*`, anything
/// that is not a regular file or whose name is not an IP. With `clean_tmp` (only under
/// the lock) also deletes stale temporary files.
pub(crate) fn scan(dir: &Path, clean_tmp: bool) -> Result<Scan> {
    let read_dir = fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))?;
    let mut scan = Scan::default();
    for dirent in read_dir {
        let dirent = dirent.map_err(|e| Error::io("read directory", dir, e))?;
        let name = dirent.file_name();
        let Some(text) = name.to_str() else { continue };
        if text.starts_with(TMP_PREFIX) {
            if clean_tmp {
                // A failure here is harmless: the temp is never read as a reservation
                // and the next lock holder tries again.
                let _ = fs::remove_file(dirent.path());
            }
            continue;
        }
        if text == LOCK_FILE || text.starts_with(LAST_RESERVED_PREFIX) {
            continue;
        }
        let Ok(ip) = text.parse::<IpAddr>() else {
            continue;
        };
        if !dirent.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let path = dirent.path();
        match read_small_file(&path, RESERVATION_MAX, false) {
            Ok(content) => scan.entries.push(Entry {
                ip,
                name,
                holder: Attachment::decode(&content),
            }),
            // Only possible for unlocked readers racing a release.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => scan.unreadable.push(Error::io("read reservation", path, e)),
        }
    }
    scan.entries.sort_by_key(|e| e.ip);
    Ok(scan)
}

/// Reserves `ip` for `att`. Ok(false) when the IP is already taken.
pub(crate) fn reserve(dir: &Path, ip: IpAddr, att: &Attachment) -> Result<bool> {
    let name = ip.to_string();
    let tmp = write_temp(dir, &name, att.encode().as_bytes())?;
    let path = dir.join(&name);
    let linked = match fs::hard_link(&tmp, &path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io("write reservation", path, e)),
    };
    // Harmless if it fails: the reservation (if made) is complete, the temp is cleaned
    // by the next lock holder.
    let _ = fs::remove_file(&tmp);
    linked
}

/// Removes one reservation by its file name. Ok(false) when it was already gone.
pub(crate) fn remove(dir: &Path, name: &OsString) -> Result<bool> {
    let path = dir.join(name);
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("remove reservation", path, e)),
    }
}

/// The round-robin marker of pool `index`. Missing or unparsable means "start from the
/// beginning" (host-local logs that as noise on a fresh directory; we stay quiet).
pub(crate) fn read_last_reserved(dir: &Path, index: usize) -> Result<Option<IpAddr>> {
    let path = last_reserved_path(dir, index);
    // Only a hint: a marker that is no regular file (a FIFO, a symlink, a directory) or
    // holds junk is read as "none"; the next write renames a fresh one over it.
    match read_small_file(&path, MARKER_MAX, false) {
        Ok(text) => Ok(String::from_utf8_lossy(&text).trim().parse().ok()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::InvalidData
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(Error::io("read last reserved IP", path, e)),
    }
}

/// temp + rename, so a reader never sees a half-written marker.
pub(crate) fn write_last_reserved(dir: &Path, index: usize, ip: IpAddr) -> Result<()> {
    let path = last_reserved_path(dir, index);
    let name = format!("{LAST_RESERVED_PREFIX}{index}");
    let tmp = write_temp(dir, &name, ip.to_string().as_bytes())?;
    fs::rename(&tmp, &path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io("write last reserved IP", path, e)
    })
}

pub use hostgw_common::fs::{check_regular, read_small_file};

fn last_reserved_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("{LAST_RESERVED_PREFIX}{index}"))
}

/// Writes `content` to `.tmp-<final_name>-<pid>` and returns its path.
pub(crate) fn write_temp(dir: &Path, final_name: &str, content: &[u8]) -> Result<PathBuf> {
    let tmp = dir.join(format!("{TMP_PREFIX}{final_name}-{}", std::process::id()));
    // A leftover of a killed process with a reused pid may be hard-linked to a live
    // reservation: unlink it rather than truncate it, or we would rewrite that
    // reservation through the shared inode.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(Error::io("remove stale temporary file", tmp, e));
        }
        _ => {}
    }
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&tmp)
        .and_then(|mut f| f.write_all(content));
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(Error::io("write temporary file", tmp, e))
        }
    }
}
