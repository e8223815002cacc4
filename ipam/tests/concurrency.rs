//! Many plugin processes at once, bounded locking, and SIGKILL at any instant
//! (cni-notes §4.B items 21-23).

mod common;

use std::{
    collections::BTreeSet,
    env,
    net::IpAddr,
    process::{Command, Stdio},
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use common::*;
use hostgw_ipam::{Error, Store};
use tempfile::TempDir;

const CRASH_DIR_VAR: &str = "HOSTGW_IPAM_CRASH_DIR";

#[test]
fn lock_times_out_while_another_store_holds_it() {
    let tmp = TempDir::new().unwrap();
    let holder = open(tmp.path());
    let guard = holder.lock(WAIT).unwrap();
    let data_dir = tmp.path().to_owned();
    let waiter = thread::spawn(move || {
        let store = open(&data_dir);
        let start = Instant::now();
        let err = store.lock(Duration::from_millis(100)).unwrap_err();
        (err, start.elapsed())
    });
    let (err, waited) = waiter.join().unwrap();
    assert!(matches!(err, Error::LockTimeout { .. }), "{err}");
    assert!(err.is_transient() && !err.is_config());
    assert!(waited >= Duration::from_millis(100) && waited < Duration::from_secs(2));
    drop(guard);
    assert!(open(tmp.path()).lock(Duration::from_millis(100)).is_ok());
}

#[test]
fn two_guards_of_one_store_exclude_each_other() {
    let tmp = TempDir::new().unwrap();
    let store = open(tmp.path());
    let guard = store.lock(WAIT).unwrap();
    let err = store.lock(Duration::from_millis(20)).unwrap_err();
    assert!(err.is_transient());
    drop(guard);
    assert!(store.lock(Duration::ZERO).is_ok());
}

#[test]
fn hundred_parallel_adds_get_distinct_ips() {
    let tmp = TempDir::new().unwrap();
    let barrier = Arc::new(Barrier::new(100));
    let threads: Vec<_> = (0..100)
        .map(|i| {
            let data_dir = tmp.path().to_owned();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                let store = Store::open(&data_dir, NET).unwrap();
                let pools = [pool("198.18.3.0/24"), pool("fd18:18:0:3::/64")];
                barrier.wait();
                let mut locked = store.lock(Duration::from_secs(20)).unwrap();
                locked
                    .allocate(&pools, &att(&format!("c{i}"), "eth0"), &[])
                    .unwrap()
            })
        })
        .collect();
    let ips: Vec<IpAddr> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let distinct: BTreeSet<IpAddr> = ips.iter().copied().collect();
    assert_eq!(distinct.len(), 200);
    let store = open(tmp.path());
    let files = files(&store);
    assert_eq!(files.len(), 200 + 3); // + lock, last_reserved_ip.0 and .1
    assert!(files.values().filter(|c| c.ends_with("\r\neth0")).count() == 200);
}

#[test]
fn adds_and_dels_interleave_without_loss() {
    let tmp = TempDir::new().unwrap();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let data_dir = tmp.path().to_owned();
            thread::spawn(move || {
                let store = Store::open(&data_dir, NET).unwrap();
                let pools = [pool("198.18.3.0/24")];
                for i in 0..20 {
                    let a = att(&format!("t{t}-{i}"), "eth0");
                    add(&store, &pools, &a);
                    if i % 4 != 0 {
                        assert_eq!(del(&store, &a).len(), 1);
                    }
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let list = open(tmp.path()).lock(WAIT).unwrap().list().unwrap();
    assert_eq!(list.len(), 16 * 5);
}

/// Body of the child processes of `killed_mid_operation_leaves_no_partial_file`;
/// does nothing when run on its own.
#[test]
#[ignore = "child process of killed_mid_operation_leaves_no_partial_file"]
fn crash_child() {
    let Some(data_dir) = env::var_os(CRASH_DIR_VAR) else {
        return;
    };
    let store = Store::open(data_dir.as_ref(), NET).unwrap();
    let pools = [pool("198.18.3.0/24"), pool("fd18:18:0:3::/64")];
    let id = std::process::id();
    for i in 0.. {
        let a = att(&format!("c{id}-{i}"), "eth0");
        let mut locked = store.lock(WAIT).unwrap();
        match locked.allocate(&pools, &a, &[]) {
            Err(Error::Exhausted { .. }) => drop(locked.gc(&[]).unwrap()),
            // A reused pid meets the id of an earlier, killed child.
            Err(Error::Duplicate { .. }) => {}
            other => drop(other.unwrap()),
        }
        if i % 8 != 0 {
            locked.release(&a).unwrap();
        }
    }
}

#[test]
fn killed_mid_operation_leaves_no_partial_file() {
    let tmp = TempDir::new().unwrap();
    let exe = env::current_exe().unwrap();
    for round in 0..12u64 {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--ignored", "--test-threads=1"])
            .env(CRASH_DIR_VAR, tmp.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        thread::sleep(Duration::from_millis(15 + round * 37 % 50));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let store = open(tmp.path());
    for (name, content) in files(&store) {
        if let Ok(ip) = name.parse::<IpAddr>() {
            let (id, ifname) = content.split_once("\r\n").expect("complete reservation");
            assert!(id.starts_with('c') && ifname == "eth0", "{ip}: {content:?}");
        } else if name.starts_with("last_reserved_ip.") {
            content.parse::<IpAddr>().expect("complete marker");
        }
    }
    let mut locked = store.lock(WAIT).unwrap();
    let children_worked = locked.list().unwrap().len();
    assert!(children_worked > 0, "no child got as far as an allocation");
    locked.gc(&[]).unwrap();
    assert!(locked.has_free(&pool("198.18.3.0/24")).unwrap());
    drop(locked);
    let left: Vec<String> = files(&store).into_keys().collect();
    assert_eq!(left, ["last_reserved_ip.0", "last_reserved_ip.1", "lock"]);
}
