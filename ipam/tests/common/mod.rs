//! Helpers shared by the integration tests (each test binary uses a subset).
#![allow(dead_code)]

use std::{collections::BTreeMap, fs, net::IpAddr, path::Path, time::Duration};

use hostgw_ipam::{Attachment, Pool, Store};

pub const NET: &str = "podnet";
pub const WAIT: Duration = Duration::from_secs(10);

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

pub fn pool(subnet: &str) -> Pool {
    Pool::new(subnet.parse().expect("test subnet"), None).expect("test pool")
}

pub fn att(id: &str, ifname: &str) -> Attachment {
    Attachment::new(id, ifname)
}

pub fn open(data_dir: &Path) -> Store {
    Store::open(data_dir, NET).expect("open store")
}

/// Every file of the network directory with its content, for exact layout checks.
pub fn files(store: &Store) -> BTreeMap<String, String> {
    fs::read_dir(store.dir())
        .expect("read dir")
        .map(|e| {
            let e = e.expect("dirent");
            let name = e.file_name().into_string().expect("utf-8 name");
            let content = fs::read_to_string(e.path()).expect("read file");
            (name, content)
        })
        .collect()
}

/// Allocates under a fresh lock and returns the IPs as strings.
pub fn add(store: &Store, pools: &[Pool], a: &Attachment) -> Vec<String> {
    let mut locked = store.lock(WAIT).expect("lock");
    let ips = locked.allocate(pools, a, &[]).expect("allocate");
    ips.iter().map(ToString::to_string).collect()
}

pub fn del(store: &Store, a: &Attachment) -> Vec<IpAddr> {
    store.lock(WAIT).expect("lock").release(a).expect("release")
}
