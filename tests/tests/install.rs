//! The init container's install step, `manifests/install-cni.sh`, run against a temporary
//! host root exactly as the DaemonSet runs it (`HOST_ROOT=/host`, the plugin at `/hostgw`,
//! the conflist from the ConfigMap mount): contents, modes whatever the umask, no temporary
//! file left, a missing source refused, and replacement by rename only, so a runtime never
//! reads half a file — checked both on the old inode and by readers racing the install.
//! The chained `portmap` and `bandwidth` plugins are installed from the image only where
//! the host lacks them.

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// The shells the script must work under: the image's busybox, and the host's /bin/sh.
fn shells() -> Vec<Vec<String>> {
    let mut v = vec![vec!["/bin/sh".to_owned()]];
    if Command::new("busybox").arg("true").status().is_ok() {
        v.push(vec!["busybox".to_owned(), "sh".to_owned()]);
    }
    v
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::create_dir_all(f.src()).unwrap();
        fs::create_dir_all(f.root()).unwrap();
        fs::create_dir_all(f.chained()).unwrap();
        for p in CHAINED {
            fs::write(f.chained().join(p), format!("\x7fELF image {p}")).unwrap();
        }
        f.set_sources(b"\x7fELF plugin v1", b"{\"conflist\": 1}\n");
        f
    }
    fn src(&self) -> PathBuf {
        self.dir.path().join("src")
    }
    fn root(&self) -> PathBuf {
        self.dir.path().join("host")
    }
    /// The image's copies of the chained plugins (`/cni-plugins` in the image).
    fn chained(&self) -> PathBuf {
        self.dir.path().join("cni-plugins")
    }
    fn plugin_dst(&self) -> PathBuf {
        self.root().join("opt/cni/bin/hostgw")
    }
    fn conflist_dst(&self) -> PathBuf {
        self.root().join("etc/cni/net.d/10-hostgw.conflist")
    }
    fn set_sources(&self, plugin: &[u8], conflist: &[u8]) {
        // Written aside and renamed, so a racing install never copies half a source.
        for (name, data) in [("hostgw", plugin), ("10-hostgw.conflist", conflist)] {
            let tmp = self.src().join(format!(".{name}.new"));
            fs::write(&tmp, data).unwrap();
            fs::rename(&tmp, self.src().join(name)).unwrap();
        }
    }
    fn install_with(&self, shell: &[String], umask: &str) -> Output {
        Command::new(&shell[0])
            .args(&shell[1..])
            .arg("-c")
            .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
            .arg(&shell[0])
            .args(&shell[1..])
            .arg(manifests().join("install-cni.sh"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOST_ROOT", self.root())
            .env("SRC_PLUGIN", self.src().join("hostgw"))
            .env("SRC_CONFLIST", self.src().join("10-hostgw.conflist"))
            .env("SRC_CHAINED_DIR", self.chained())
            .output()
            .unwrap()
    }
    fn install(&self) -> Output {
        self.install_with(&["/bin/sh".to_owned()], "022")
    }
    /// Every file below the host root, relative.
    fn files(&self) -> Vec<String> {
        fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
            for e in fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(base, &p, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().display().to_string());
                }
            }
        }
        let mut v = vec![];
        walk(&self.root(), &self.root(), &mut v);
        v.sort();
        v
    }
}

/// The plugins the shipped conflist chains after hostgw (a test checks the conflist).
const CHAINED: [&str; 2] = ["portmap", "bandwidth"];

/// What a first install leaves on an empty host.
const INSTALLED: [&str; 4] = [
    "etc/cni/net.d/10-hostgw.conflist",
    "opt/cni/bin/bandwidth",
    "opt/cni/bin/hostgw",
    "opt/cni/bin/portmap",
];

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "install-cni.sh failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn installs_plugin_and_conflist_with_their_modes_under_any_shell_and_umask() {
    for shell in shells() {
        for umask in ["022", "077", "000"] {
            let f = Fixture::new();
            ok(&f.install_with(&shell, umask));
            assert_eq!(fs::read(f.plugin_dst()).unwrap(), b"\x7fELF plugin v1");
            assert_eq!(fs::read(f.conflist_dst()).unwrap(), b"{\"conflist\": 1}\n");
            assert_eq!(mode(&f.plugin_dst()), 0o755, "{shell:?} umask {umask}");
            assert_eq!(mode(&f.conflist_dst()), 0o644, "{shell:?} umask {umask}");
            for p in CHAINED {
                let dst = f.root().join("opt/cni/bin").join(p);
                assert_eq!(
                    fs::read(&dst).unwrap(),
                    format!("\x7fELF image {p}").as_bytes()
                );
                assert_eq!(mode(&dst), 0o755, "{p} {shell:?} umask {umask}");
            }
            assert_eq!(
                f.files(),
                INSTALLED,
                "only the four files, no temporary one ({shell:?})"
            );
        }
    }
}

#[test]
fn install_lands_the_shipped_conflist_on_the_host() {
    let f = Fixture::new();
    let shipped = fs::read(manifests().join("10-hostgw.conflist")).unwrap();
    fs::copy(
        manifests().join("10-hostgw.conflist"),
        f.src().join("10-hostgw.conflist"),
    )
    .unwrap();
    ok(&f.install());
    assert_eq!(fs::read(f.conflist_dst()).unwrap(), shipped);
}

#[test]
fn install_replaces_by_rename_and_never_writes_into_the_old_file() {
    let f = Fixture::new();
    ok(&f.install());
    // Hold the old inodes through hard links, as a runtime holds an open file or a running
    // binary: their contents must stay exactly the old ones.
    let held = f.dir.path().join("held");
    fs::create_dir(&held).unwrap();
    fs::hard_link(f.plugin_dst(), held.join("plugin")).unwrap();
    fs::hard_link(f.conflist_dst(), held.join("conflist")).unwrap();
    let old_ino = fs::metadata(f.plugin_dst()).unwrap().ino();

    f.set_sources(b"\x7fELF plugin v2, longer", b"{\"conflist\": 2}\n");
    ok(&f.install());
    assert_eq!(
        fs::read(f.plugin_dst()).unwrap(),
        b"\x7fELF plugin v2, longer"
    );
    assert_eq!(fs::read(f.conflist_dst()).unwrap(), b"{\"conflist\": 2}\n");
    assert_ne!(fs::metadata(f.plugin_dst()).unwrap().ino(), old_ino);
    assert_eq!(fs::read(held.join("plugin")).unwrap(), b"\x7fELF plugin v1");
    assert_eq!(
        fs::read(held.join("conflist")).unwrap(),
        b"{\"conflist\": 1}\n"
    );
    assert_eq!(mode(&f.plugin_dst()), 0o755);
    assert_eq!(f.files(), INSTALLED);
}

#[test]
fn readers_racing_installs_see_a_whole_old_or_a_whole_new_file() {
    let f = Arc::new(Fixture::new());
    // Large enough that a copy in place would be seen half done.
    let a = vec![b'a'; 4 << 20];
    let b = vec![b'b'; 3 << 20];
    f.set_sources(&a, &a[..1 << 20]);
    ok(&f.install());
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (f, stop, a, b) = (f.clone(), stop.clone(), a.clone(), b.clone());
            thread::spawn(move || {
                let mut reads = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let p = fs::read(f.plugin_dst()).expect("the plugin is never missing");
                    assert!(
                        p == a || p == b,
                        "a reader saw a torn plugin ({} bytes)",
                        p.len()
                    );
                    let c = fs::read(f.conflist_dst()).expect("the conflist is never missing");
                    assert!(
                        c == a[..1 << 20] || c == b[..1 << 20],
                        "a reader saw a torn conflist"
                    );
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..12 {
        let data = if i % 2 == 0 { &b } else { &a };
        f.set_sources(data, &data[..1 << 20]);
        ok(&f.install());
        if Instant::now() > deadline {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let reads: u32 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(reads > 0);
    assert_eq!(f.files(), INSTALLED);
}

#[test]
fn install_with_a_missing_source_fails_and_changes_nothing() {
    let f = Fixture::new();
    ok(&f.install());
    f.set_sources(b"new plugin", b"x");
    fs::remove_file(f.src().join("10-hostgw.conflist")).unwrap();
    let o = f.install();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not exist"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Both sources are checked before anything is installed: no half-updated pair.
    assert_eq!(fs::read(f.plugin_dst()).unwrap(), b"\x7fELF plugin v1");
    assert_eq!(fs::read(f.conflist_dst()).unwrap(), b"{\"conflist\": 1}\n");
    assert_eq!(f.files(), INSTALLED);
}

#[test]
fn a_temporary_file_of_a_killed_install_is_removed_and_never_a_config() {
    let f = Fixture::new();
    let net_d = f.root().join("etc/cni/net.d");
    let bin_d = f.root().join("opt/cni/bin");
    fs::create_dir_all(&net_d).unwrap();
    fs::create_dir_all(&bin_d).unwrap();
    // What an install killed between cp and mv leaves.
    fs::write(net_d.join(".10-hostgw.conflist.hostgw-tmp.4242"), "{\"half").unwrap();
    fs::write(bin_d.join(".hostgw.hostgw-tmp.4242"), "half").unwrap();
    ok(&f.install());
    assert_eq!(f.files(), INSTALLED);
    // And such a name is one a runtime never loads: libcni reads only *.conf, *.conflist
    // and *.json from the config directory.
    let tmp_name = ".10-hostgw.conflist.hostgw-tmp.4242";
    assert!(
        ![".conf", ".conflist", ".json"]
            .iter()
            .any(|e| tmp_name.ends_with(e))
    );
}

#[test]
fn install_script_is_the_one_the_image_and_the_daemonset_run() {
    // manifests/build-image.sh copies install-cni.sh to /install-cni.sh, and the DaemonSet
    // runs exactly that path.
    let build = fs::read_to_string(manifests().join("build-image.sh")).unwrap();
    assert!(build.contains(r#""$HERE/install-cni.sh" "$R/install-cni.sh""#));
    let ds = fs::read_to_string(manifests().join("hostgw.yaml")).unwrap();
    assert!(ds.contains(r#"command: ["/bin/sh", "/install-cni.sh"]"#));
    let cf = fs::read_to_string(manifests().join("Containerfile")).unwrap();
    assert!(cf.contains("install-cni.sh /install-cni.sh"));
}

#[test]
fn a_host_that_has_a_chained_plugin_keeps_its_own_copy() {
    let f = Fixture::new();
    let bin_d = f.root().join("opt/cni/bin");
    fs::create_dir_all(&bin_d).unwrap();
    fs::write(bin_d.join("portmap"), "host portmap").unwrap();
    fs::set_permissions(bin_d.join("portmap"), fs::Permissions::from_mode(0o755)).unwrap();
    let o = f.install();
    ok(&o);
    assert_eq!(fs::read(bin_d.join("portmap")).unwrap(), b"host portmap");
    assert_eq!(
        fs::read(bin_d.join("bandwidth")).unwrap(),
        b"\x7fELF image bandwidth"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("kept the host's"));
    assert_eq!(f.files(), INSTALLED);
}

#[test]
fn a_chained_plugin_neither_on_the_host_nor_in_the_image_fails_and_installs_nothing() {
    let f = Fixture::new();
    fs::remove_file(f.chained().join("bandwidth")).unwrap();
    let o = f.install();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("the host has no bandwidth"), "{err}");
    assert!(f.files().is_empty(), "{:?}", f.files());
}

#[test]
fn the_script_installs_exactly_what_the_shipped_conflist_chains() {
    let list: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(manifests().join("10-hostgw.conflist")).unwrap())
            .unwrap();
    let types: Vec<&str> = list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["hostgw", "portmap", "bandwidth"]);
    assert_eq!(types[1..], CHAINED);
    let script = fs::read_to_string(manifests().join("install-cni.sh")).unwrap();
    assert!(script.contains(&format!("CHAINED=${{CHAINED:-{}}}", CHAINED.join(" "))));
    let build = fs::read_to_string(manifests().join("build-image.sh")).unwrap();
    for p in CHAINED {
        assert!(build.contains(p), "build-image.sh carries {p}");
    }
}
