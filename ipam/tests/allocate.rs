//! ADD semantics of host-local (cni-notes §4.B items 10, 11, 13, 16, 18-20, 26).

mod common;

use std::fs;

use common::*;
use hostgw_ipam::{Error, Pool, Store};
use tempfile::TempDir;

#[test]
fn layout_first_ip_and_file_content() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    assert_eq!(store.dir(), tmp.path().join(NET));
    let ips = add(&store, &[pool("198.18.3.0/24")], &att("abc", "eth0"));
    assert_eq!(ips, ["198.18.3.2"]);
    let files = files(&store);
    let expected = [
        ("198.18.3.2", "abc\r\neth0"),
        ("last_reserved_ip.0", "198.18.3.2"),
        ("lock", ""),
    ];
    let expected = expected.map(|(k, v)| (k.to_owned(), v.to_owned())).into();
    assert_eq!(files, expected);

    assert_eq!(del(&store, &att("abc", "eth0")), [ip("198.18.3.2")]);
    assert!(!files_of(&store).contains(&"198.18.3.2".to_owned()));
}

#[test]
fn dual_stack_one_per_pool_in_order() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    let pools = [pool("198.18.3.0/24"), pool("fd18:18:0:3::/64")];
    let ips = add(&store, &pools, &att("abc", "eth0"));
    assert_eq!(ips, ["198.18.3.2", "fd18:18:0:3::2"]);
    let files = files(&store);
    assert_eq!(files["fd18:18:0:3::2"], "abc\r\neth0");
    assert_eq!(files["last_reserved_ip.1"], "fd18:18:0:3::2");
}

#[test]
fn round_robin_never_gateway_or_broadcast() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    let pools = [pool("198.18.3.0/29")]; // .2 ..= .6 usable, .1 gateway, .7 broadcast
    let mut got = Vec::new();
    for i in 0..5 {
        got.extend(add(&store, &pools, &att(&format!("c{i}"), "eth0")));
    }
    assert_eq!(
        got,
        [
            "198.18.3.2",
            "198.18.3.3",
            "198.18.3.4",
            "198.18.3.5",
            "198.18.3.6"
        ]
    );

    // A freed address is not handed out again until the range wraps.
    del(&store, &att("c1", "eth0")); // .3
    del(&store, &att("c3", "eth0")); // .5
    assert_eq!(add(&store, &pools, &att("x", "eth0")), ["198.18.3.3"]);
    assert_eq!(add(&store, &pools, &att("y", "eth0")), ["198.18.3.5"]);
}

#[test]
fn after_release_next_add_gets_next_ip() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    let pools = [pool("198.18.3.0/24")];
    assert_eq!(add(&store, &pools, &att("a", "eth0")), ["198.18.3.2"]);
    del(&store, &att("a", "eth0"));
    assert_eq!(add(&store, &pools, &att("a", "eth0")), ["198.18.3.3"]);
}

#[test]
fn resumes_after_marker_and_ignores_foreign_marker() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    let pools = [pool("198.18.3.0/24")];
    fs::write(store.dir().join("last_reserved_ip.0"), "198.18.3.9").unwrap();
    assert_eq!(add(&store, &pools, &att("a", "eth0")), ["198.18.3.10"]);
    fs::write(store.dir().join("last_reserved_ip.0"), "198.18.3.254").unwrap();
    assert_eq!(add(&store, &pools, &att("b", "eth0")), ["198.18.3.2"]);
    fs::write(store.dir().join("last_reserved_ip.0"), "10.0.0.9").unwrap();
    assert_eq!(add(&store, &pools, &att("c", "eth0")), ["198.18.3.3"]);
    fs::write(store.dir().join("last_reserved_ip.0"), "garbage\n").unwrap();
    assert_eq!(add(&store, &pools, &att("d", "eth0")), ["198.18.3.4"]);
}

#[test]
fn duplicate_allocation_is_refused() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    let pools = [pool("198.18.3.0/24")];
    add(&store, &pools, &att("abc", "eth0"));
    let mut locked = store.lock(WAIT).unwrap();
    let err = locked
        .allocate(&pools, &att("abc", "eth0"), &[])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "198.18.3.2 has been allocated to abc, duplicate allocation is not allowed"
    );
    assert!(matches!(err, Error::Duplicate { pool: 0, .. }));
    // Another container gets the next address, and the first still cannot double up.
    let other = locked.allocate(&pools, &att("def", "eth0"), &[]).unwrap();
    assert_eq!(other, [ip("198.18.3.3")]);
    assert!(locked.allocate(&pools, &att(" abc ", "eth0"), &[]).is_err());
    // A second interface of the same container is a different attachment.
    let eth1 = locked.allocate(&pools, &att("abc", "eth1"), &[]).unwrap();
    assert_eq!(eth1, [ip("198.18.3.4")]);
}

#[test]
fn exhaustion_names_the_range() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    let pools = [pool("198.18.3.0/30")]; // only .2 usable
    add(&store, &pools, &att("a", "eth0"));
    let mut locked = store.lock(WAIT).unwrap();
    assert!(!locked.has_free(&pools[0]).unwrap());
    let err = locked.allocate(&pools, &att("b", "eth0"), &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no IP addresses available in range set: 198.18.3.1-198.18.3.2"
    );
    assert!(!err.is_transient() && !err.is_config());
    assert_eq!(locked.list().unwrap().len(), 1);
}

#[test]
fn full_29_is_exhausted_and_has_free_tracks_it() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    let pools = [pool("198.18.3.8/29")];
    let mut locked = store.lock(WAIT).unwrap();
    for i in 0..5 {
        assert!(locked.has_free(&pools[0]).unwrap());
        locked
            .allocate(&pools, &att(&format!("c{i}"), "eth0"), &[])
            .unwrap();
    }
    assert!(!locked.has_free(&pools[0]).unwrap());
    let err = locked
        .allocate(&pools, &att("late", "eth0"), &[])
        .unwrap_err();
    assert!(matches!(err, Error::Exhausted { pool: 0, .. }), "{err}");
    assert!(err.to_string().ends_with("198.18.3.9-198.18.3.14"));
}

#[test]
fn dual_stack_is_all_or_nothing() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    let pools = [pool("198.18.3.0/24"), pool("fd18:18:0:3::/126")]; // v6: ::2, ::3
    add(&store, &pools, &att("a", "eth0"));
    add(&store, &pools, &att("b", "eth0"));
    let before = files(&store);
    let mut locked = store.lock(WAIT).unwrap();
    let err = locked.allocate(&pools, &att("c", "eth0"), &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no IP addresses available in range set: fd18:18:0:3::1-fd18:18:0:3::3"
    );
    assert!(matches!(err, Error::Exhausted { pool: 1, .. }));
    drop(locked);
    // The v4 address of the failed call is gone again, markers untouched.
    assert_eq!(files(&store), before);
}

#[test]
fn requested_ips() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    let pools = [pool("198.18.3.0/24"), pool("fd18:18:0:3::/64")];
    let mut locked = store.lock(WAIT).unwrap();
    let wanted = [ip("fd18:18:0:3::99"), ip("198.18.3.77")];
    let got = locked.allocate(&pools, &att("a", "eth0"), &wanted).unwrap();
    assert_eq!(got, [ip("198.18.3.77"), ip("fd18:18:0:3::99")]);
    // Only one requested: the other pool goes round-robin, after the marker that the
    // requested ::99 moved (as host-local does).
    let got = locked
        .allocate(&pools, &att("b", "eth0"), &[ip("198.18.3.20")])
        .unwrap();
    assert_eq!(got, [ip("198.18.3.20"), ip("fd18:18:0:3::9a")]);

    let mut fails = |requested: &str| {
        let err = locked
            .allocate(&pools, &att("c", "eth0"), &[ip(requested)])
            .unwrap_err();
        err.to_string()
    };
    assert_eq!(
        fails("198.18.3.77"),
        "requested IP address 198.18.3.77 is not available in range set 198.18.3.1-198.18.3.254"
    );
    assert_eq!(
        fails("198.18.3.1"),
        "requested ip 198.18.3.1 is subnet's gateway"
    );
    assert_eq!(
        fails("198.18.3.255"),
        "198.18.3.255 not in range set 198.18.3.1-198.18.3.254"
    );
    assert_eq!(
        fails("198.18.3.0"),
        "198.18.3.0 not in range set 198.18.3.1-198.18.3.254"
    );
    assert_eq!(
        fails("198.18.9.9"),
        "failed to allocate all requested IPs: 198.18.9.9"
    );
    // Two for one pool: the second is left over.
    let err = locked
        .allocate(
            &pools,
            &att("c", "eth0"),
            &[ip("198.18.3.5"), ip("198.18.3.6")],
        )
        .unwrap_err();
    assert!(matches!(err, Error::RequestedUnmatched { ref ips } if ips == &[ip("198.18.3.6")]));
    // None of the failures left anything behind for "c".
    assert!(locked.find(&att("c", "eth0")).unwrap().is_empty());
}

#[test]
fn requested_v4_taken_rolls_back_nothing_else() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    let pools = [pool("fd18:18:0:3::/64"), pool("198.18.3.0/24")];
    add(&store, &pools, &att("a", "eth0")); // fd18:18:0:3::2, 198.18.3.2
    let mut locked = store.lock(WAIT).unwrap();
    let err = locked
        .allocate(&pools, &att("b", "eth0"), &[ip("198.18.3.2")])
        .unwrap_err();
    assert!(matches!(err, Error::RequestedUnavailable { .. }), "{err}");
    // The v6 address taken for "b" in pool 0 before pool 1 failed was released.
    assert!(locked.find(&att("b", "eth0")).unwrap().is_empty());
    assert_eq!(locked.list().unwrap().len(), 2);
}

#[test]
fn invalid_pools_and_names_are_config_errors() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    let mut locked = store.lock(WAIT).unwrap();
    let a = att("a", "eth0");
    let overlapping = [pool("198.18.0.0/16"), pool("198.18.3.0/24")];
    let err = locked.allocate(&overlapping, &a, &[]).unwrap_err();
    assert_eq!(err.to_string(), "range set 0 overlaps with 1");
    assert!(err.is_config());
    assert!(locked.allocate(&[], &a, &[]).unwrap_err().is_config());
    let bad = Pool {
        subnet: "198.18.3.0/31".parse().unwrap(),
        gateway: ip("198.18.3.1"),
    };
    let err = locked.allocate(&[bad], &a, &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Network 198.18.3.0/31 too small to allocate from"
    );
    assert!(locked.has_free(&bad).unwrap_err().is_config());
    assert!(
        locked
            .allocate(&[pool("198.18.3.0/24")], &att("a\nb", "eth0"), &[])
            .is_err()
    );

    for name in ["", ".", "..", "a/b"] {
        let err = Store::open(tmp.path(), name).unwrap_err();
        assert!(err.is_config(), "{name:?}: {err}");
    }
}

fn files_of(store: &Store) -> Vec<String> {
    files(store).into_keys().collect()
}
