//! The per-container lock that serialises ADD and DEL of one container (issue 12 item
//! 15), and the IPAM files that must never block (item 13).

mod common;

use std::{
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use common::*;
use hostgw_ipam::Error;
use tempfile::TempDir;

const SHORT: Duration = Duration::from_millis(200);

#[test]
fn one_holder_per_container_and_other_containers_are_free() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    let held = store.lock_container("c1", WAIT).unwrap();
    let other = open(tmp.path());
    let start = Instant::now();
    let err = other.lock_container("c1", SHORT).unwrap_err();
    assert!(matches!(err, Error::LockTimeout { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(other.lock_container("c2", SHORT).is_ok(), "c2 is not c1");
    // The network's own directory keeps host-local's layout exactly.
    assert_eq!(files(&store).keys().collect::<Vec<_>>(), ["lock"]);
    drop(held);
    assert!(other.lock_container("c1", SHORT).is_ok());
}

/// A waiter that gets the flock of a file the holder removed must not run beside the
/// next process, which locks the new file: it tries again on the file now at the path.
#[test]
fn a_waiter_on_a_removed_lock_file_retries_on_the_new_one() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    let first = store.lock_container("c1", WAIT).unwrap();
    let dir = tmp.path().to_owned();
    let (tx, rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let waiter = thread::spawn(move || {
        let s = open(&dir);
        let got = s.lock_container("c1", WAIT).unwrap();
        tx.send(()).unwrap();
        release_rx.recv().unwrap();
        drop(got);
    });
    thread::sleep(SHORT);
    first.remove().unwrap();
    rx.recv_timeout(WAIT).expect("the waiter got the lock");
    // Now the waiter holds c1: nobody else may, whichever file they open.
    let third = open(tmp.path());
    assert!(
        matches!(
            third.lock_container("c1", SHORT),
            Err(Error::LockTimeout { .. })
        ),
        "two holders of one container's lock"
    );
    release_tx.send(()).unwrap();
    waiter.join().unwrap();
    assert!(third.lock_container("c1", SHORT).is_ok());
}

#[test]
fn gc_removes_the_lock_files_of_containers_that_are_gone() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    for id in ["keep", "gone", "busy"] {
        drop(store.lock_container(id, WAIT).unwrap());
    }
    let busy = store.lock_container("busy", WAIT).unwrap();
    store
        .lock(WAIT)
        .unwrap()
        .gc(&[att("keep", "eth0")])
        .unwrap();
    let mut left: Vec<String> = std::fs::read_dir(tmp.path().join(".hostgw-locks").join(NET))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["busy", "keep"], "a held lock is never removed");
    drop(busy);
}

#[test]
fn bad_container_ids_are_refused_and_long_ones_share_a_prefix() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    for bad in ["", " ", ".hidden", "a/b", "a\nb"] {
        assert!(
            matches!(
                store.lock_container(bad, SHORT),
                Err(Error::InvalidAttachment(_))
            ),
            "{bad:?}"
        );
    }
    let long = "x".repeat(300);
    assert!(
        store.lock_container(&long, SHORT).is_ok(),
        "no ENAMETOOLONG"
    );
}
