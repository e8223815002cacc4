//! The deployment files in `manifests/`, as the root tests use them: the one conflist the
//! DaemonSet's ConfigMap ships (rendered from `manifests/10-hostgw.conflist`), the image
//! built by `manifests/build-image.sh`, and the install script of the init container.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{bin, must};

/// `<workspace>/manifests`.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// The conflist the ConfigMap ships, parsed (the one source: `manifests/render.sh` inlines
/// this file into `manifests/hostgw.yaml`, and a test checks they agree).
pub fn shipped_conflist() -> Value {
    let path = dir().join("10-hostgw.conflist");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// The plugin entry of the shipped conflist as a runtime hands it to the plugin: the
/// entry's keys plus the list's `cniVersion` and `name`, with `overrides` applied (a test
/// points `subnetFile` and `dataDir` at its own tempdir; everything else stays shipped).
pub fn shipped_plugin_conf(overrides: &[(&str, Value)]) -> Value {
    let list = shipped_conflist();
    let mut conf = list["plugins"][0].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    for (k, v) in overrides {
        conf[*k] = v.clone();
    }
    conf
}

/// An image built from this workspace's binaries by `manifests/build-image.sh`.
pub struct Image {
    pub dir: tempfile::TempDir,
    /// The name `ctr images import` gives it.
    pub name: String,
}

impl Image {
    /// Builds the image from the binaries `bin()` finds (`HOSTGW_BIN_DIR` or the profile
    /// directory the tests were built in).
    pub fn build() -> Result<Image> {
        let bins = bin("hostgw-routed")
            .parent()
            .context("binary directory")?
            .to_path_buf();
        let dir = tempfile::Builder::new().prefix("hgwt-image").tempdir()?;
        must(
            std::process::Command::new("bash")
                .arg(dir_file("build-image.sh"))
                .arg(&bins)
                .arg(dir.path())
                .arg("test"),
        )?;
        Ok(Image {
            dir,
            name: "localhost/hostgw:test".into(),
        })
    }

    pub fn tar(&self) -> PathBuf {
        self.dir.path().join("hostgw-image.tar")
    }
}

fn dir_file(name: &str) -> PathBuf {
    dir().join(name)
}
