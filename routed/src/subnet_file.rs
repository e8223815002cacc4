//! The subnet file: the only thing the CNI plugin reads from the daemon.

use std::path::Path;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubnetFile {
    pub network: IpNetwork,
    pub subnet: IpNetwork,
    pub ipv6_network: Option<IpNetwork>,
    pub ipv6_subnet: Option<IpNetwork>,
    pub mtu: u32,
}

/// Reads a previous subnet file, if any, to prefer the same subnet after a restart.
pub fn read(path: &Path) -> Option<SubnetFile> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes atomically: a reader sees the old file or the new one, never a partial one.
pub fn write(path: &Path, f: &SubnetFile) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    if read(path).as_ref() == Some(f) {
        return Ok(());
    }
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("subnet"),
        std::process::id()
    ));
    let body = serde_json::to_vec(f).map_err(std::io::Error::other)?;
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&body)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

pub fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_contract_shape_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/subnet.json");
        let f = SubnetFile {
            network: "198.18.0.0/16".parse().unwrap(),
            subnet: "198.18.3.0/24".parse().unwrap(),
            ipv6_network: None,
            ipv6_subnet: None,
            mtu: 1500,
        };
        write(&path, &f).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            r#"{"network":"198.18.0.0/16","subnet":"198.18.3.0/24","ipv6Network":null,"ipv6Subnet":null,"mtu":1500}"#
        );
        assert_eq!(read(&path), Some(f));
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1,
            "no temp file left"
        );
        remove(&path).unwrap();
        remove(&path).unwrap();
    }
}
