//! Reading small files that someone else may have replaced with something hostile: a
//! FIFO, a directory, a symlink, a huge file. The plugin reads its IPAM store and the
//! subnet file this way while kubelet waits on it (and, for the store, while it holds the
//! node's IPAM lock), so no read may block or grow without bound.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read},
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::Path,
};

use nix::{errno::Errno, fcntl::OFlag};

/// Reads a small regular file without ever blocking on it: opened non-blocking (a FIFO
/// would otherwise wait for a writer forever, while we hold the IPAM lock), without
/// following a symlink unless `follow`, refused unless it is a regular file, and read at
/// most `limit` bytes. Refusals are `InvalidData` errors naming what was found.
pub fn read_small_file(path: &Path, limit: u64, follow: bool) -> io::Result<Vec<u8>> {
    let mut flags = OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    if !follow {
        flags |= OFlag::O_NOFOLLOW;
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(c) if c == Errno::ELOOP as i32 => invalid("is a symbolic link"),
            _ => e,
        })?;
    let meta = check_regular(&file)?;
    if meta.len() > limit {
        return Err(invalid(&format!(
            "is {} bytes, more than {limit}",
            meta.len()
        )));
    }
    let mut buf = Vec::new();
    file.take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(invalid(&format!("holds more than {limit} bytes")));
    }
    Ok(buf)
}

/// The file's metadata, or an `InvalidData` error saying what kind of file it is instead.
pub fn check_regular(file: &File) -> io::Result<fs::Metadata> {
    let meta = file.metadata()?;
    let t = meta.file_type();
    let what = if t.is_file() {
        return Ok(meta);
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    };
    Err(invalid(&format!("is {what}, not a regular file")))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Removes a file; one that is not there is fine (runtime state a stop or `release` clears).
pub fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok");
        std::fs::write(&ok, "198.18.3.7").unwrap();
        assert_eq!(read_small_file(&ok, 64, false).unwrap(), b"198.18.3.7");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&ok, &link).unwrap();
        for (path, follow, what) in [
            (&fifo, false, "is a FIFO"),
            (&dir.path().to_path_buf(), false, "is a directory"),
            (&link, false, "is a symbolic link"),
            (&ok, false, "more than 4"),
        ] {
            let limit = if what == "more than 4" { 4 } else { 64 };
            let e = read_small_file(path, limit, follow).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{}", path.display());
            assert!(e.to_string().contains(what), "{e}");
        }
        assert_eq!(read_small_file(&link, 64, true).unwrap(), b"198.18.3.7");
    }
}
