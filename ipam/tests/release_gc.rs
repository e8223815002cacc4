//! DEL, CHECK and GC semantics, legacy files, crash leftovers (cni-notes §4.B items 12,
//! 14, 23-25).

mod common;

use std::{fs, os::unix::fs::MetadataExt};

use common::*;
use tempfile::TempDir;

#[test]
fn release_only_touches_that_ifname() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    let pools = [pool("198.18.3.0/24")];
    add(&store, &pools, &att("abc", "eth0"));
    add(&store, &pools, &att("abc", "eth1"));
    assert_eq!(del(&store, &att("abc", "eth0")), [ip("198.18.3.2")]);
    let locked = store.lock(WAIT).unwrap();
    assert!(locked.find(&att("abc", "eth0")).unwrap().is_empty());
    assert_eq!(
        locked.find(&att("abc", "eth1")).unwrap(),
        [ip("198.18.3.3")]
    );
}

#[test]
fn release_of_unknown_is_success() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    assert!(del(&store, &att("nobody", "eth0")).is_empty());
}

#[test]
fn legacy_id_only_files() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    fs::write(store.dir().join("198.18.3.7"), "abc").unwrap();
    fs::write(store.dir().join("198.18.3.8"), "abc\n").unwrap();
    fs::write(store.dir().join("198.18.3.9"), "other").unwrap();
    let mut locked = store.lock(WAIT).unwrap();
    // CHECK accepts them, ADD treats them as a duplicate.
    assert_eq!(locked.find(&att("abc", "eth0")).unwrap().len(), 2);
    let pools = [pool("198.18.3.0/24")];
    assert!(locked.allocate(&pools, &att("abc", "eth0"), &[]).is_err());
    // DEL falls back to them when nothing matches (id, ifname).
    let released = locked.release(&att("abc", "eth0")).unwrap();
    assert_eq!(released, [ip("198.18.3.7"), ip("198.18.3.8")]);
    assert_eq!(
        locked.list().unwrap(),
        [(ip("198.18.3.9"), att("other", ""))]
    );
}

#[test]
fn legacy_files_stay_when_exact_match_exists() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    fs::write(store.dir().join("198.18.3.7"), "abc").unwrap();
    fs::write(store.dir().join("198.18.3.8"), "abc\r\neth0").unwrap();
    assert_eq!(del(&store, &att("abc", "eth0")), [ip("198.18.3.8")]);
    assert_eq!(del(&store, &att("abc", "eth0")), [ip("198.18.3.7")]);
}

#[test]
fn container_ids_are_trimmed() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    add(&store, &[pool("198.18.3.0/24")], &att("  abc\t", "eth0"));
    assert_eq!(files(&store)["198.18.3.2"], "abc\r\neth0");
    let locked = store.lock(WAIT).unwrap();
    assert_eq!(
        locked.find(&att("abc ", "eth0")).unwrap(),
        [ip("198.18.3.2")]
    );
    drop(locked);
    assert_eq!(del(&store, &att(" abc", "eth0")), [ip("198.18.3.2")]);
}

#[test]
fn check_fails_after_removal() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    add(&store, &[pool("198.18.3.0/24")], &att("abc", "eth0"));
    fs::remove_file(store.dir().join("198.18.3.2")).unwrap();
    assert!(
        store
            .lock(WAIT)
            .unwrap()
            .find(&att("abc", "eth0"))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn gc_keeps_valid_and_bookkeeping() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    let pools = [pool("198.18.3.0/24"), pool("fd18:18:0:3::/64")];
    add(&store, &pools, &att("keep", "eth0"));
    add(&store, &pools, &att("drop", "eth0"));
    add(&store, &pools, &att("keep", "eth1"));
    fs::write(store.dir().join("198.18.3.50"), "keep").unwrap(); // legacy of a valid id
    fs::write(store.dir().join("198.18.3.51"), "gone").unwrap(); // legacy of a stale id
    fs::write(store.dir().join("198.18.3.52"), "").unwrap(); // host-local #498 leftover
    let valid = [att("keep", "eth0"), att(" keep ", "eth1")];
    let released = store.lock(WAIT).unwrap().gc(&valid).unwrap();
    let expected = [
        (ip("198.18.3.3"), att("drop", "eth0")),
        (ip("198.18.3.51"), att("gone", "")),
        (ip("198.18.3.52"), att("", "")),
        (ip("fd18:18:0:3::3"), att("drop", "eth0")),
    ];
    assert_eq!(released, expected);
    let names: Vec<String> = files(&store).into_keys().collect();
    let kept = [
        "198.18.3.2",
        "198.18.3.4",
        "198.18.3.50",
        "fd18:18:0:3::2",
        "fd18:18:0:3::4",
        "last_reserved_ip.0",
        "last_reserved_ip.1",
        "lock",
    ];
    assert_eq!(names, kept);
}

#[test]
fn gc_with_empty_list_releases_all() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    let pools = [pool("198.18.3.0/24")];
    add(&store, &pools, &att("a", "eth0"));
    add(&store, &pools, &att("b", "eth0"));
    let mut locked = store.lock(WAIT).unwrap();
    assert_eq!(locked.gc(&[]).unwrap().len(), 2);
    assert!(locked.list().unwrap().is_empty());
    drop(locked);
    let names: Vec<String> = files(&store).into_keys().collect();
    assert_eq!(names, ["last_reserved_ip.0", "lock"]);
}

#[test]
fn stray_files_are_not_reservations() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    for name in ["README", "last_reserved_ip.7", "198.18.3.2.bak"] {
        fs::write(store.dir().join(name), "abc\r\neth0").unwrap();
    }
    fs::create_dir(store.dir().join("198.18.3.3")).unwrap();
    let mut locked = store.lock(WAIT).unwrap();
    assert!(locked.list().unwrap().is_empty());
    // The directory named like an IP blocks that IP without breaking allocation.
    let pools = [pool("198.18.3.0/24")];
    let a = locked.allocate(&pools, &att("a", "eth0"), &[]).unwrap();
    let b = locked.allocate(&pools, &att("b", "eth0"), &[]).unwrap();
    assert_eq!((a[0], b[0]), (ip("198.18.3.2"), ip("198.18.3.4")));
    assert_eq!(locked.gc(&[]).unwrap().len(), 2);
}

/// What a plugin killed mid-write leaves: a partial temp file (before link) or a temp
/// hard-linked to a complete reservation (between link and unlink).
#[test]
fn crash_leftovers_are_ignored_and_cleaned() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    let dir = store.dir().to_owned();
    fs::write(dir.join(".tmp-198.18.3.2-4242"), "ab").unwrap();
    fs::write(dir.join(".tmp-last_reserved_ip.0-4242"), "198.18").unwrap();
    fs::write(dir.join("198.18.3.9"), "dead\r\neth0").unwrap();
    fs::hard_link(dir.join("198.18.3.9"), dir.join(".tmp-198.18.3.9-4243")).unwrap();

    let mut locked = store.lock(WAIT).unwrap();
    assert_eq!(
        locked.list().unwrap(),
        [(ip("198.18.3.9"), att("dead", "eth0"))]
    );
    let got = locked
        .allocate(&[pool("198.18.3.0/24")], &att("a", "eth0"), &[])
        .unwrap();
    assert_eq!(got, [ip("198.18.3.2")]);
    drop(locked);

    let all = files(&store);
    assert!(all.keys().all(|n| !n.starts_with(".tmp-")), "{all:?}");
    assert_eq!(all["198.18.3.9"], "dead\r\neth0");
    assert_eq!(fs::metadata(dir.join("198.18.3.9")).unwrap().nlink(), 1);
    // A DEL of the killed container frees what it had reserved.
    assert_eq!(del(&store, &att("dead", "eth0")), [ip("198.18.3.9")]);
}

#[test]
fn reservation_file_mode() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    add(&store, &[pool("198.18.3.0/24")], &att("a", "eth0"));
    let meta = fs::metadata(store.dir().join("198.18.3.2")).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(meta.nlink(), 1);
}
