//! Loading the programs, attaching them with tcx links pinned in bpffs, and reading them back.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/hostgw`):
//! `maps/{counters,config,fast_ifaces}` (reused by the next load, so counters and the interface
//! table survive a restart) and `links/<ifindex>` (one tcx link per interface; a pinned link
//! stays attached when the process exits, and a new load swaps its program atomically).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use libbpf_rs::{Link, MapCore, MapFlags, Object, ObjectBuilder, Program, query::LinkTypeInfo};

use crate::{
    error::{Error, Result},
    maps::{ClusterNetworks, Count, Counters, IfaceKind, Reason},
    sys,
};

/// The compiled object (build.rs), embedded so the binary needs no file beside it.
const OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fastpath.bpf.o"));
const UPLINK_PROG: &str = "hgw_from_uplink";
const POD_PROG: &str = "hgw_from_pod";

/// libbpf parses the ELF in place; a heap copy gives it an aligned buffer.
pub(crate) fn object_bytes() -> Vec<u8> {
    OBJECT.to_vec()
}

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/hostgw";

#[derive(Debug, Clone)]
pub struct Options {
    /// A directory on bpffs; created if missing.
    pub pin_dir: PathBuf,
    pub networks: ClusterNetworks,
}

/// What `attach_*` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// A new tcx link.
    New,
    /// The interface had our link already; it now runs this load's program.
    Replaced,
}

/// One pinned link, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub ifindex: u32,
    pub kind: Option<IfaceKind>,
    pub link_id: u32,
    pub prog_id: u32,
    /// False once the interface is gone (the kernel detaches the link then).
    pub attached: bool,
    /// The link runs the program of this load (false: an older program, not yet adopted).
    pub current: bool,
}

/// What `adopt` found after a restart or an upgrade.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Adopted {
    pub replaced: Vec<u32>,
    pub pruned: Vec<u32>,
}

/// The loaded programs and their pinned maps. Attach and detach calls must run in the network
/// namespace of the interfaces: the kernel resolves an ifindex in the caller's namespace.
pub struct FastPath {
    obj: Object,
    pin_dir: PathBuf,
}

// === impl FastPath ===

impl FastPath {
    /// Loads the programs, reusing the pinned maps of an earlier load, and writes the networks.
    pub fn load(opts: &Options) -> Result<FastPath> {
        ensure_bpffs_dir(&opts.pin_dir)?;
        let maps_dir = opts.pin_dir.join("maps");
        ensure_dir(&maps_dir)?;
        ensure_dir(&opts.pin_dir.join("links"))?;
        let bytes = object_bytes();
        let mut open = ObjectBuilder::default()
            .open_memory(&bytes)
            .map_err(Error::Open)?;
        for mut m in open.maps_mut() {
            let path = maps_dir.join(m.name());
            m.set_pin_path(&path).map_err(Error::Open)?;
        }
        let obj = open.load().map_err(|source| Error::Load {
            pin_dir: opts.pin_dir.clone(),
            source,
        })?;
        let fp = FastPath {
            obj,
            pin_dir: opts.pin_dir.clone(),
        };
        fp.set_networks(&opts.networks)?;
        Ok(fp)
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Replaces the cluster networks the programs fast-path; takes effect with the next packet.
    pub fn set_networks(&self, n: &ClusterNetworks) -> Result<()> {
        let map = self.map("config")?;
        map.update(&0u32.to_ne_bytes(), &n.encode(), MapFlags::ANY)
            .map_err(|source| Error::Map {
                what: "write config",
                source,
            })
    }

    /// The node's uplink: packets for local pods go straight into them.
    pub fn attach_uplink(&self, ifindex: u32) -> Result<Attached> {
        self.attach(ifindex, IfaceKind::Uplink)
    }

    /// A pod's host-side veth: its packets leave by the uplink or enter another local pod.
    pub fn attach_pod(&self, ifindex: u32) -> Result<Attached> {
        self.attach(ifindex, IfaceKind::Pod)
    }

    fn attach(&self, ifindex: u32, kind: IfaceKind) -> Result<Attached> {
        if ifindex == 0 {
            return Err(Error::BadIfindex(ifindex));
        }
        let prog = self.prog(kind)?;
        let path = self.link_path(ifindex);
        let link_err = |what, source| Error::Link {
            what,
            ifindex,
            source,
        };
        if let Some(mut link) = open_live_link(&path, ifindex)? {
            link.update_prog(&prog)
                .map_err(|e| link_err("replace the program of the tcx link", e))?;
            self.set_kind(ifindex, kind)?;
            return Ok(Attached::Replaced);
        }
        let mut link =
            sys::attach_tcx(&prog, ifindex).map_err(|e| link_err("attach tcx ingress", e))?;
        // If pinning fails, dropping the unpinned link detaches it again.
        link.pin(&path)
            .map_err(|e| link_err("pin the tcx link", e))?;
        self.set_kind(ifindex, kind)?;
        Ok(Attached::New)
    }

    /// Detaches the program from `ifindex` and forgets the interface. Idempotent: returns
    /// whether there was anything to remove.
    pub fn detach(&self, ifindex: u32) -> Result<bool> {
        let mut found = self.forget_kind(ifindex)?;
        let path = self.link_path(ifindex);
        if path.exists() {
            found = true;
            if let Ok(link) = Link::open(&path) {
                // A link whose interface is gone is already detached; the kernel's answer
                // for it does not matter, only the pin has to go.
                let live = link_ifindex(&link) == Some(ifindex);
                if let Err(source) = link.detach()
                    && live
                {
                    return Err(Error::Link {
                        what: "detach the tcx link",
                        ifindex,
                        source,
                    });
                }
            }
            remove_pin(&path)?;
        }
        Ok(found)
    }

    /// Detaches every interface (the daemon's `release`); returns how many there were.
    pub fn detach_all(&self) -> Result<usize> {
        let all = self.pinned_ifindexes()?;
        for ifindex in &all {
            self.detach(*ifindex)?;
        }
        Ok(all.len())
    }

    /// After a restart or an upgrade: every pinned link gets this load's program (an atomic
    /// swap, no packet sees no program), and links whose interface is gone are removed.
    pub fn adopt(&self) -> Result<Adopted> {
        let mut done = Adopted::default();
        for ifindex in self.pinned_ifindexes()? {
            let path = self.link_path(ifindex);
            let kind = self.kind(ifindex)?;
            match (open_live_link(&path, ifindex)?, kind) {
                (Some(_), Some(kind)) => {
                    self.attach(ifindex, kind)?;
                    done.replaced.push(ifindex);
                }
                _ => {
                    self.detach(ifindex)?;
                    done.pruned.push(ifindex);
                }
            }
        }
        Ok(done)
    }

    /// Every pinned link and whether it is attached: the per-pod status.
    pub fn status(&self) -> Result<Vec<Attachment>> {
        let mut out = Vec::new();
        for ifindex in self.pinned_ifindexes()? {
            let Ok(link) = Link::open(self.link_path(ifindex)) else {
                continue;
            };
            let Ok(info) = link.info() else { continue };
            let kind = self.kind(ifindex)?;
            let current = match kind {
                Some(k) => sys::prog_id(&self.prog(k)?).ok() == Some(info.prog_id),
                None => false,
            };
            out.push(Attachment {
                ifindex,
                kind,
                link_id: info.id,
                prog_id: info.prog_id,
                attached: matches!(info.info, LinkTypeInfo::Tcx(ref t) if t.ifindex == ifindex),
                current,
            });
        }
        Ok(out)
    }

    /// The programs' counters, summed over the CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let map = self.map("counters")?;
        let mut all = Vec::with_capacity(Reason::ALL.len());
        for r in Reason::ALL {
            let values = map
                .lookup_percpu(&r.index().to_ne_bytes(), MapFlags::ANY)
                .map_err(|source| Error::Map {
                    what: "read counters",
                    source,
                })?
                .unwrap_or_default();
            all.push((r, Count::sum_per_cpu(&values)));
        }
        Ok(Counters(all))
    }

    // --- helpers ---

    fn prog(&self, kind: IfaceKind) -> Result<Program<'_>> {
        let name = match kind {
            IfaceKind::Uplink => UPLINK_PROG,
            IfaceKind::Pod => POD_PROG,
        };
        self.obj
            .progs()
            .find(|p| p.name() == name)
            .ok_or(Error::MissingProgram(name))
    }

    fn map(&self, name: &'static str) -> Result<libbpf_rs::Map<'_>> {
        self.obj
            .maps()
            .find(|m| m.name() == name)
            .ok_or(Error::MissingMap(name))
    }

    fn link_path(&self, ifindex: u32) -> PathBuf {
        self.pin_dir.join("links").join(ifindex.to_string())
    }

    fn pinned_ifindexes(&self) -> Result<Vec<u32>> {
        let dir = self.pin_dir.join("links");
        let entries = fs::read_dir(&dir).map_err(|source| Error::PinDir {
            path: dir.clone(),
            source,
        })?;
        let mut all: Vec<u32> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        all.sort_unstable();
        Ok(all)
    }

    fn kind(&self, ifindex: u32) -> Result<Option<IfaceKind>> {
        let value = self
            .map("fast_ifaces")?
            .lookup(&ifindex.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| Error::Map {
                what: "read fast_ifaces",
                source,
            })?;
        Ok(value.and_then(|v| IfaceKind::decode(&v)))
    }

    fn set_kind(&self, ifindex: u32, kind: IfaceKind) -> Result<()> {
        self.map("fast_ifaces")?
            .update(&ifindex.to_ne_bytes(), &kind.encode(), MapFlags::ANY)
            .map_err(|source| Error::Map {
                what: "write fast_ifaces",
                source,
            })
    }

    fn forget_kind(&self, ifindex: u32) -> Result<bool> {
        let map = self.map("fast_ifaces")?;
        match map.delete(&ifindex.to_ne_bytes()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(Error::Map {
                what: "delete from fast_ifaces",
                source,
            }),
        }
    }
}

/// A pinned link as read without loading anything: what `hostgw-routed status` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedLink {
    pub ifindex: u32,
    pub prog_id: u32,
    /// False once the interface is gone (the kernel detached the link; the pin is stale).
    pub attached: bool,
}

/// Every pin under `<pin_dir>/links`, read back from the kernel (needs CAP_BPF to open the
/// pins, as loading does). A missing pin directory is no links, not an error.
pub fn pinned_links(pin_dir: &Path) -> Result<Vec<PinnedLink>> {
    let dir = pin_dir.join("links");
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::PinDir { path: dir, source }),
    };
    let mut out: Vec<PinnedLink> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .map(|ifindex: u32| {
            let link = Link::open(dir.join(ifindex.to_string())).ok();
            let info = link.as_ref().and_then(|l| l.info().ok());
            PinnedLink {
                ifindex,
                prog_id: info.as_ref().map_or(0, |i| i.prog_id),
                attached: link.as_ref().and_then(link_ifindex) == Some(ifindex),
            }
        })
        .collect();
    out.sort_by_key(|l| l.ifindex);
    Ok(out)
}

/// The pinned link of `ifindex` if it is still attached there; a stale pin (its interface
/// deleted, its ifindex maybe reused) is removed.
fn open_live_link(path: &Path, ifindex: u32) -> Result<Option<Link>> {
    if !path.exists() {
        return Ok(None);
    }
    if let Ok(link) = Link::open(path)
        && link_ifindex(&link) == Some(ifindex)
    {
        return Ok(Some(link));
    }
    remove_pin(path)?;
    Ok(None)
}

/// The interface a tcx link is attached to; None once the kernel detached it.
fn link_ifindex(link: &Link) -> Option<u32> {
    match link.info().ok()?.info {
        LinkTypeInfo::Tcx(t) if t.ifindex != 0 => Some(t.ifindex),
        _ => None,
    }
}

fn remove_pin(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::PinDir {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn ensure_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|source| Error::PinDir {
        path: path.to_path_buf(),
        source,
    })
}

/// Pins outside bpffs would fail deep in libbpf; say so first.
fn ensure_bpffs_dir(pin_dir: &Path) -> Result<()> {
    if crate::probe::on_bpffs(pin_dir).is_err() {
        return Err(Error::NotBpffs {
            pin_dir: pin_dir.to_path_buf(),
        });
    }
    ensure_dir(pin_dir)
}
