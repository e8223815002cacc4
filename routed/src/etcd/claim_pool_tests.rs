//! A full pool: waited out with backoff, and taken the moment a subnet is released.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use super::*;
use crate::etcd::fake::FakeStore;

/// Four /24 subnets (SubnetMin given: flannel's default skips the first).
const CFG: &str = r#"{"Network":"198.18.0.0/22","SubnetLen":24,"SubnetMin":"198.18.0.0"}"#;

fn me(node: &str, ip: &str) -> Me {
    Me {
        node: node.into(),
        public_ip: Some(ip.parse().unwrap()),
        public_ipv6: None,
        last: None,
        mtu: None,
    }
}

/// The four /24 of the /22, each held by another node on its own lease.
fn full_pool(s: &FakeStore) {
    for i in 0..4 {
        let l = s.grant_lease();
        let v = value_of(&me(&format!("n{i}"), &format!("198.19.0.{}", 10 + i)), None);
        let v = String::from_utf8(lease::encode(&v)).unwrap();
        s.put(&format!("/p/subnets/198.18.{i}.0-24"), &v, l);
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_pool_is_waited_out_and_a_release_taken_at_once() {
    let s = FakeStore::new();
    let cfg = NetConfig::parse(CFG.as_bytes()).unwrap();
    full_pool(&s);
    let flag = Arc::new(AtomicI64::new(-1));
    let task = {
        let (s, cfg, flag) = (s.clone(), cfg.clone(), flag.clone());
        tokio::spawn(async move {
            let keys = Keys::new("/p");
            let fifth = me("n4", "198.19.0.14");
            let c = Claim {
                keys: &keys,
                cfg: &cfg,
                me: &fifth,
                ttl: 60,
                prefer: None,
            };
            let got = acquire_waiting(&s, &c, None, |e| flag.store(i64::from(e), Ordering::SeqCst));
            got.await
        })
    };
    // A minute of retries: still waiting (not an exit), and saying so.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!task.is_finished());
    assert_eq!(flag.load(Ordering::SeqCst), 1);
    let lists = s.count("list /p/");
    assert!(
        (3..=12).contains(&lists),
        "backoff, not a hot loop: {lists} lists"
    );
    // One node releases: the waiting node takes that subnet without waiting out its backoff
    // (by now up to 30 s).
    let released = tokio::time::Instant::now();
    s.delete("/p/subnets/198.18.2.0-24");
    let own = task.await.unwrap().unwrap();
    assert!(
        released.elapsed() < Duration::from_millis(10),
        "{:?}",
        released.elapsed()
    );
    assert_eq!(own.0.subnet.to_string(), "198.18.2.0/24");
    assert_eq!(flag.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_frees_its_subnet_for_the_waiting_node() {
    let s = FakeStore::new();
    let cfg = NetConfig::parse(CFG.as_bytes()).unwrap();
    full_pool(&s);
    let keys = Keys::new("/p");
    let fifth = me("n4", "198.19.0.14");
    let c = Claim {
        keys: &keys,
        cfg: &cfg,
        me: &fifth,
        ttl: 60,
        prefer: None,
    };
    let lease = s.value("/p/subnets/198.18.3.0-24").unwrap().lease;
    let expire = async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        s.expire(lease);
    };
    let (got, ()) = tokio::join!(acquire_waiting(&s, &c, None, |_| {}), expire);
    assert_eq!(got.unwrap().0.subnet.to_string(), "198.18.3.0/24");
}

/// Two nodes that chose one IPv4 subnet with different IPv6 subnets: flannel's key form
/// names both, so the keys differ, and only the guard on the IPv4 part makes the second
/// create a lost race (as it was when the key named the IPv4 subnet alone).
#[tokio::test]
async fn one_ipv4_subnet_is_won_once_whatever_the_ipv6_part_of_the_key() {
    let s = FakeStore::new();
    let keys = Keys::new("/p");
    let a: IpNetwork = "198.18.3.0/24".parse().unwrap();
    let guard = same_subnet(&keys, &a);
    let create = |name: &str| {
        let (s, guard, key) = (&s, &guard, keys.subnet(name));
        async move {
            s.create_unless(&key, guard, b"{}".to_vec(), 0)
                .await
                .unwrap()
        }
    };
    assert!(create("198.18.3.0-24&fd18:18:0:3::-64").await);
    assert!(
        !create("198.18.3.0-24&fd18:18:0:7::-64").await,
        "same IPv4 subnet, other IPv6"
    );
    assert!(
        !create("198.18.3.0-24").await,
        "the IPv4-only form of a taken subnet"
    );
    // Neighbours whose names share a prefix are not caught by the guard.
    let other = same_subnet(&keys, &"198.18.30.0/24".parse().unwrap());
    let key = keys.subnet("198.18.30.0-24&fd18:18:0:30::-64");
    assert!(
        s.create_unless(&key, &other, b"{}".to_vec(), 0)
            .await
            .unwrap()
    );
    // And the other way round: an IPv4-only key blocks a dual-stack claim of its subnet.
    let b = same_subnet(&keys, &"198.18.4.0/24".parse().unwrap());
    s.put("/p/subnets/198.18.4.0-24", "{}", 0);
    let key = keys.subnet("198.18.4.0-24&fd18:18:0:4::-64");
    assert!(!s.create_unless(&key, &b, b"{}".to_vec(), 0).await.unwrap());
}
