//! The lease cache: the lease set as of one etcd revision, in a file beside the subnet file
//! (`/run/hostgw/leases.json`), so that a restarted daemon resumes its watch after that
//! revision instead of listing every lease again.
//!
//! Why: a full restart of every daemon (an upgrade that restarts them all, a config change)
//! costs etcd one full list per node, N lists of N leases at once: at 5,000 nodes ≈ 4.6 GB
//! in one burst (BENCHMARKS.md, "On paper: 5,000 nodes"). Resumed, a restart costs one read
//! of the config key and a watch that replays only the events since the cache was written.
//!
//! When it is used: the file parses, names our prefix and node, comes from the etcd cluster
//! that answers now (same cluster ID) and from a revision that etcd has reached (a revision
//! ahead of etcd's means another etcd: restored or rebuilt). Otherwise the start lists, as
//! without a cache. A revision etcd has compacted away ends the resumed watch at once, and
//! the watcher re-lists after the usual jittered delay. The file is written by the watcher
//! at most every [`WRITE_EVERY`] while leases change and at every stop, never while leases
//! etcd lost are carried (a restore's grace), and removed when a restore is seen.
//!
//! Values are checked again when read (`codec::check`), so an edited file can hold nothing
//! that a lease in etcd could not.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize, Serializer};

use super::{
    Entry, Snapshot,
    codec::{self as lease, Decoded, LeaseValue},
    store::Header,
};
use crate::me::OwnLease;

/// The file's format; another is not read.
const VERSION: u32 = 1;
/// A cache larger than this is not read (5,000 leases take ≈ 1.2 MB).
const MAX_LEN: u64 = 64 << 20;
/// Least time between two writes while leases keep changing, by default (a stop always
/// writes). Freshness is not correctness (the watch replays what came after the cache's
/// revision); a write is a serialisation of every lease, which at 1,000 nodes, every 10 s
/// on every node, was a measurable share of churn's CPU.
pub const WRITE_EVERY: Duration = Duration::from_secs(60);

/// `leases.json` beside the subnet file (this node's runtime state in /run/hostgw).
pub fn path_for(subnet_file: &Path) -> PathBuf {
    subnet_file.with_file_name("leases.json")
}

/// Where this daemon keeps its cache, and whose it is.
#[derive(Debug, Clone)]
pub struct LeaseCache {
    pub path: PathBuf,
    pub prefix: String,
    pub node: String,
    /// Least time between two writes while leases change (`--lease-cache-secs`).
    pub every: Duration,
}

/// One cached key: a decoded lease's value, or why it was rejected.
#[derive(Serialize, Deserialize)]
struct Cached<V, S> {
    name: S,
    #[serde(default)]
    created: i64,
    // A missing Option field reads as None.
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<V>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<S>,
}

#[derive(Serialize, Deserialize)]
struct File1<L, S> {
    version: u32,
    prefix: S,
    node: S,
    cluster_id: u64,
    revision: i64,
    own_key: S,
    own_lease: i64,
    leases: L,
}

/// Serialises the lease set in place: a write copies nothing.
struct Seq<'a> {
    leases: &'a BTreeMap<String, Decoded>,
}

impl Serialize for Seq<'_> {
    fn serialize<Z: Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        s.collect_seq(self.leases.iter().map(|(name, d)| match d {
            Ok(l) => Cached {
                name: name.as_str(),
                created: l.created,
                value: Some(&l.value),
                error: None,
            },
            Err(e) => Cached {
                name: name.as_str(),
                created: 0,
                value: None,
                error: Some(e.as_str()),
            },
        }))
    }
}

/// A cache as read, not yet checked against the etcd that answers. [`Loaded::seed`] checks
/// each value as a lease from etcd is checked; a value that does not even parse as one
/// (the daemon wrote every value from a parsed lease) makes the whole file unusable.
pub struct Loaded(File1<Vec<Cached<LeaseValue, String>>, String>);

impl LeaseCache {
    /// Writes `leases` (etcd's, as of `revision` of cluster `cluster_id`) atomically: a
    /// reader sees the old file or the new one.
    pub fn write(
        &self,
        cluster_id: u64,
        revision: i64,
        own: &OwnLease,
        leases: &BTreeMap<String, Decoded>,
    ) -> io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("json.tmp");
        let out = File1 {
            version: VERSION,
            prefix: self.prefix.as_str(),
            node: self.node.as_str(),
            cluster_id,
            revision,
            own_key: own.name.as_str(),
            own_lease: own.lease_id,
            leases: Seq { leases },
        };
        {
            let mut w = BufWriter::new(File::create(&tmp)?);
            serde_json::to_writer(&mut w, &out).map_err(io::Error::other)?;
            w.flush()?;
        }
        std::fs::rename(&tmp, &self.path)
    }

    /// Removes the file; a missing one is fine.
    pub fn remove(&self) -> io::Result<()> {
        hostgw_common::fs::remove_if_present(&self.path)
    }

    /// The file, if there is one that parses; `Err` says why not (nothing there is `Ok(None)`).
    pub fn read(&self) -> Result<Option<Loaded>, String> {
        let bytes = match hostgw_common::fs::read_small_file(&self.path, MAX_LEN, true) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("read {}: {e}", self.path.display())),
        };
        let f: File1<Vec<Cached<LeaseValue, String>>, String> = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} does not parse: {e}", self.path.display()))?;
        if f.version != VERSION {
            return Err(format!(
                "format {} (this daemon reads {VERSION})",
                f.version
            ));
        }
        if f.prefix != self.prefix || f.node != self.node {
            return Err(format!(
                "written for prefix {} and node {}, not {} and {}",
                f.prefix, f.node, self.prefix, self.node
            ));
        }
        Ok(Some(Loaded(f)))
    }
}

impl Loaded {
    pub fn revision(&self) -> i64 {
        self.0.revision
    }

    /// How many leases it holds.
    pub fn leases(&self) -> usize {
        self.0.leases.len()
    }

    /// Whether the cache belongs to the etcd that answered `now`: its cluster, and a
    /// revision etcd has reached.
    pub fn check(&self, now: &Header) -> Result<(), String> {
        let f = &self.0;
        if f.cluster_id != now.cluster_id {
            return Err(format!(
                "written for etcd cluster {:x}, this is {:x}",
                f.cluster_id, now.cluster_id
            ));
        }
        if f.revision <= 0 || f.revision > now.revision {
            return Err(format!(
                "revision {} is ahead of etcd's {} (etcd restored or rebuilt?)",
                f.revision, now.revision
            ));
        }
        Ok(())
    }

    /// The snapshot a start decides on and the watcher follows from, if the cache belongs
    /// to the etcd that answered `now` (with `config`, the config key's value it holds).
    /// Entries carry no mod revision (0): a guarded rewrite of our key decided on the cache
    /// fails, and the claim then reads etcd whole.
    pub fn seed(self, now: &Header, config: Option<Vec<u8>>) -> Result<Snapshot, String> {
        self.check(now)?;
        let f = self.0;
        let mut entries = BTreeMap::new();
        for c in f.leases {
            let decoded = match (c.value, c.error) {
                (Some(v), _) => lease::check(&c.name, v, c.created),
                (None, Some(e)) => Err(e),
                (None, None) => return Err(format!("{} has neither value nor error", c.name)),
            };
            let lease_id = if c.name == f.own_key { f.own_lease } else { 0 };
            entries.insert(
                c.name,
                Entry {
                    decoded,
                    mod_revision: 0,
                    lease_id,
                },
            );
        }
        Ok(Snapshot {
            header: Header {
                revision: f.revision,
                ..*now
            },
            config,
            entries,
            resumed: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path) -> LeaseCache {
        LeaseCache {
            path: dir.join("leases.json"),
            prefix: "/hostgw/network".into(),
            node: "node-1".into(),
            every: WRITE_EVERY,
        }
    }

    fn own() -> OwnLease {
        OwnLease {
            name: "198.18.1.0-24".into(),
            subnet: "198.18.1.0/24".parse().unwrap(),
            ipv6_subnet: None,
            lease_id: 77,
        }
    }

    fn leases() -> BTreeMap<String, Decoded> {
        let mut m = BTreeMap::new();
        for (name, v) in [
            (
                "198.18.1.0-24",
                r#"{"PublicIP":"198.19.0.1","BackendType":"host-gw","NodeName":"node-1","MTU":9000}"#,
            ),
            (
                "198.18.2.0-24&fd18:18:0:2::-64",
                r#"{"PublicIP":"198.19.0.2","PublicIPv6":"fd19:19::2","BackendType":"host-gw","NodeName":"node-2"}"#,
            ),
            ("198.18.3.0-24", r#"{"NodeName":"broken"}"#),
        ] {
            m.insert(name.to_owned(), lease::decode(name, v.as_bytes(), 5));
        }
        m
    }

    fn header(cluster_id: u64, revision: i64) -> Header {
        Header {
            cluster_id,
            member_id: 3,
            revision,
        }
    }

    /// What is written reads back as the same decoded leases (rejected ones with their
    /// reason), our key with our lease, at the written revision.
    #[test]
    fn a_written_cache_reads_back_as_the_same_leases() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        c.write(9, 40, &own(), &leases()).unwrap();
        let loaded = c.read().unwrap().unwrap();
        assert_eq!(loaded.revision(), 40);
        let snap = loaded.seed(&header(9, 45), Some(b"cfg".to_vec())).unwrap();
        assert_eq!(snap.header, header(9, 40));
        assert_eq!(snap.config.as_deref(), Some(&b"cfg"[..]));
        let want = leases();
        assert_eq!(snap.entries.len(), want.len());
        for (k, e) in &snap.entries {
            assert_eq!(&e.decoded, &want[k], "{k}");
            assert_eq!(e.mod_revision, 0);
            assert_eq!(e.lease_id, if k == "198.18.1.0-24" { 77 } else { 0 });
        }
        assert!(snap.entries["198.18.3.0-24"].decoded.is_err());
        assert!(!dir.path().join("leases.json.tmp").exists());
    }

    /// Another cluster, a revision etcd has not reached, another node or prefix, another
    /// format or a file that does not parse: never used, each with its reason.
    #[test]
    fn a_cache_of_another_etcd_node_or_format_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        assert!(c.read().unwrap().is_none(), "no file: nothing to say");
        c.write(9, 40, &own(), &leases()).unwrap();
        let seed = |h| c.read().unwrap().unwrap().seed(&h, None).err();
        assert!(seed(header(8, 45)).unwrap().contains("cluster"));
        assert!(seed(header(9, 39)).unwrap().contains("ahead"));
        assert!(
            seed(header(9, 40)).is_none(),
            "etcd at the cache's revision"
        );

        let other = LeaseCache {
            node: "node-2".into(),
            ..c.clone()
        };
        assert!(other.read().err().unwrap().contains("node-2"));
        let text = std::fs::read_to_string(&c.path).unwrap();
        std::fs::write(&c.path, text.replace("\"version\":1", "\"version\":2")).unwrap();
        assert!(c.read().err().unwrap().contains("format 2"));
        std::fs::write(&c.path, &text[..text.len() / 2]).unwrap();
        assert!(c.read().err().unwrap().contains("does not parse"));
        // A value edited in the file is checked again: rejected as it would be from etcd
        // (no next hop left), or the whole file unused (not a lease value at all).
        let no_hop = text
            .replace("\"PublicIP\":\"198.19.0.2\",", "")
            .replace("\"PublicIPv6\":\"fd19:19::2\",", "");
        assert_ne!(no_hop, text);
        std::fs::write(&c.path, no_hop).unwrap();
        let snap = c
            .read()
            .unwrap()
            .unwrap()
            .seed(&header(9, 45), None)
            .unwrap();
        let edited = &snap.entries["198.18.2.0-24&fd18:18:0:2::-64"].decoded;
        assert!(edited.is_err(), "{edited:?}");
        std::fs::write(&c.path, text.replace("198.19.0.2", "not-an-address")).unwrap();
        assert!(c.read().err().unwrap().contains("does not parse"));
        c.remove().unwrap();
        c.remove().unwrap();
        assert!(c.read().unwrap().is_none());
    }
}
