//! The subnet file: the only coupling between the daemon and the plugin (design.md).
//! `hostgw-routed` writes it atomically once it holds a lease; the plugin reads it on every
//! ADD, so the read is bounded: a FIFO or a huge file put in its place must not hang or
//! exhaust a plugin that kubelet is waiting on.

use std::{
    fs::File,
    io::{self, Write},
    path::{Path, PathBuf},
};

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

pub const DEFAULT_PATH: &str = "/run/hostgw/subnet.json";

/// A real subnet file is about 120 bytes.
const MAX_LEN: u64 = 64 * 1024;

/// `{"network":"198.18.0.0/16","subnet":"198.18.3.0/24","ipv6Network":null,"ipv6Subnet":null,"mtu":1500}`.
/// Every field may be null when read (an IPv6-only node has no `subnet`); the daemon
/// writes every key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubnetFile {
    #[serde(default)]
    pub network: Option<Ipv4Network>,
    #[serde(default)]
    pub subnet: Option<Ipv4Network>,
    #[serde(default)]
    pub ipv6_network: Option<Ipv6Network>,
    #[serde(default)]
    pub ipv6_subnet: Option<Ipv6Network>,
    #[serde(default)]
    pub mtu: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubnetFileError {
    #[error("subnet file {0} does not exist")]
    Missing(PathBuf),
    #[error("read subnet file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("subnet file {path}: {msg}")]
    Decode { path: PathBuf, msg: String },
}

impl SubnetFile {
    /// Reads and decodes the file. Only a regular file of at most 64 KiB is read (anything
    /// else is an I/O error naming the path), without blocking: see [`crate::fs`].
    pub fn read(path: &Path) -> Result<SubnetFile, SubnetFileError> {
        let io = |source| SubnetFileError::Io {
            path: path.to_owned(),
            source,
        };
        let decode = |msg: String| SubnetFileError::Decode {
            path: path.to_owned(),
            msg,
        };
        let bytes = match crate::fs::read_small_file(path, MAX_LEN, true) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SubnetFileError::Missing(path.to_owned()));
            }
            r => r.map_err(io)?,
        };
        serde_json::from_slice(&bytes).map_err(|e| decode(e.to_string()))
    }

    /// Writes atomically (temporary file, fsync, rename): a reader sees the old file or the
    /// new one, never a partial one. An identical file is left untouched.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        if SubnetFile::read(path).ok().as_ref() == Some(self) {
            return Ok(());
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("subnet");
        let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
        let body = serde_json::to_vec(self).map_err(io::Error::other)?;
        {
            let mut file = File::create(&tmp)?;
            file.write_all(&body)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    }

    /// Removes the file; a missing one is fine.
    pub fn remove(path: &Path) -> io::Result<()> {
        crate::fs::remove_if_present(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SubnetFile {
        SubnetFile {
            network: Some("198.18.0.0/16".parse().unwrap()),
            subnet: Some("198.18.3.0/24".parse().unwrap()),
            ipv6_network: None,
            ipv6_subnet: None,
            mtu: Some(1500),
        }
    }

    #[test]
    fn writes_the_contract_shape_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/subnet.json");
        let f = sample();
        f.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            r#"{"network":"198.18.0.0/16","subnet":"198.18.3.0/24","ipv6Network":null,"ipv6Subnet":null,"mtu":1500}"#
        );
        assert_eq!(SubnetFile::read(&path).unwrap(), f);
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1,
            "no temp file left"
        );
        SubnetFile::remove(&path).unwrap();
        SubnetFile::remove(&path).unwrap();
        assert!(matches!(
            SubnetFile::read(&path),
            Err(SubnetFileError::Missing(_))
        ));
    }

    #[test]
    fn hostile_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(ok.success());
        let err = SubnetFile::read(&fifo).unwrap_err();
        assert!(matches!(err, SubnetFileError::Io { .. }), "{err}");
        assert!(err.to_string().contains("is a FIFO"), "{err}");
        assert!(matches!(
            SubnetFile::read(dir.path()),
            Err(SubnetFileError::Io { .. })
        ));
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b' '; 100_000]).unwrap();
        let err = SubnetFile::read(&big).unwrap_err().to_string();
        assert!(err.contains("more than"), "{err}");
        let garbage = dir.path().join("garbage");
        std::fs::write(&garbage, "{not json").unwrap();
        assert!(matches!(
            SubnetFile::read(&garbage),
            Err(SubnetFileError::Decode { .. })
        ));
    }

    #[test]
    fn ipv6_only_and_sparse_files_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(&path, r#"{"ipv6Subnet":"fd18:18:0:3::/64"}"#).unwrap();
        let f = SubnetFile::read(&path).unwrap();
        assert_eq!(f.subnet, None);
        assert_eq!(f.ipv6_subnet, Some("fd18:18:0:3::/64".parse().unwrap()));
        assert_eq!(f.mtu, None);
    }
}
