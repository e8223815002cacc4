//! The daemon's etcd logic against the in-memory etcd of `fake.rs`, with paused time.

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use super::{
    Keys,
    cache::LeaseCache,
    claim::{self, Claim},
    codec::{self, LeaseValue},
    fake::{FakeStore, Op, State},
    keepalive::KeepAlive,
    watch::{GRACE, Watcher},
};
use crate::{
    config::NetConfig,
    me::{Me, OwnLease},
    metrics::Metrics,
};

const CFG: &str =
    r#"{"Network":"198.18.0.0/16","SubnetMin":"198.18.1.0/24","SubnetMax":"198.18.200.0/24"}"#;
const P: &str = "/p/subnets/";

fn cfg() -> NetConfig {
    NetConfig::parse(CFG.as_bytes()).unwrap()
}

fn keys() -> Keys {
    Keys::new("/p")
}

/// A node whose subnet file names 198.18.100.0/24 (free unless a test takes it).
fn me(node: &str, ip: &str) -> Me {
    Me {
        node: node.into(),
        public_ip: Some(ip.parse().unwrap()),
        public_ipv6: None,
        last: Some(("198.18.100.0/24".parse().unwrap(), None)),
        mtu: None,
    }
}

/// How many recorded calls are exactly `call`.
fn exactly(s: &FakeStore, call: &str) -> usize {
    s.calls().iter().filter(|c| *c == call).count()
}

fn value(node: &str, ip: &str) -> String {
    String::from_utf8(codec::encode(&LeaseValue {
        public_ip: Some(ip.parse().unwrap()),
        public_ipv6: None,
        backend_type: "host-gw".into(),
        node_name: node.into(),
        ipv6_subnet: None,
        mtu: None,
    }))
    .unwrap()
}

fn store() -> FakeStore {
    let s = FakeStore::new();
    s.put("/p/config", CFG, 0);
    s
}

/// A peer's key on its own live lease.
fn peer(s: &FakeStore, subnet: &str, node: &str, ip: &str) -> i64 {
    let l = s.grant_lease();
    s.put(&format!("{P}{subnet}"), &value(node, ip), l);
    l
}

async fn acquire(s: &FakeStore, me: &Me, prefer: Option<&str>) -> OwnLease {
    let (k, c) = (keys(), cfg());
    let claim = Claim {
        keys: &k,
        cfg: &c,
        me,
        ttl: 60,
        prefer: prefer.map(|p| (p.parse().unwrap(), None)),
    };
    claim::acquire(s, &claim).await.unwrap()
}

struct Daemon {
    leases: watch::Receiver<Option<super::watch::LeaseSet>>,
    own: watch::Receiver<OwnLease>,
    metrics: Metrics,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Daemon {
    /// Reads once, claims, then runs the watcher and the keeper as `run` does.
    async fn start(s: &FakeStore, me: Me) -> Daemon {
        Daemon::start_with(s, me, None).await
    }

    /// As [`Daemon::start`], resuming from and keeping `cache`.
    async fn start_with(s: &FakeStore, me: Me, cache: Option<LeaseCache>) -> Daemon {
        let (k, c) = (keys(), cfg());
        // `run` retries its first read as long as etcd is unreachable.
        let snap = loop {
            match super::first_read(s, &k, cache.as_ref()).await {
                Ok(snap) => break snap,
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        };
        assert_eq!(snap.config(&k).unwrap(), c);
        let claim = Claim {
            keys: &k,
            cfg: &c,
            me: &me,
            ttl: 60,
            prefer: me.last,
        };
        let (own, seed) = claim::acquire_from(s, &claim, Some(snap)).await.unwrap();
        let (own_tx, own_rx) = watch::channel(own);
        let (tx, leases) = watch::channel(None);
        let (metrics, stop, check) = (
            Metrics::new(),
            CancellationToken::new(),
            Arc::new(Notify::new()),
        );
        let watcher = Watcher {
            store: s.clone(),
            keys: keys(),
            tx,
            metrics: metrics.clone(),
            cfg: cfg(),
            me: me.clone(),
            own: own_rx.clone(),
            check_own: check.clone(),
            seed: Some(seed),
            cache,
        };
        let keeper = KeepAlive {
            store: s.clone(),
            keys: keys(),
            cfg: cfg(),
            me,
            ttl: 60,
            own: own_tx,
            metrics: metrics.clone(),
            check_own: check,
        };
        let tasks = vec![
            tokio::spawn(watcher.run(stop.clone())),
            tokio::spawn(keeper.run(stop.clone())),
        ];
        let d = Daemon {
            leases,
            own: own_rx,
            metrics,
            stop,
            tasks,
        };
        settle().await;
        d
    }

    fn names(&self) -> Vec<String> {
        self.leases
            .borrow()
            .as_ref()
            .map(|l| l.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn metric(&self, name: &str) -> String {
        let text = self.metrics.encode();
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_owned()
    }

    async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            t.await.unwrap();
        }
    }
}

/// Lets every task run until idle (time is paused, so this costs nothing).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

// === claim ===

#[tokio::test(start_paused = true)]
async fn a_lost_create_race_is_retried_on_another_subnet() {
    let s = store();
    let prefer = "198.18.2.0/24";
    // Another node creates our preferred subnet between our list and our create.
    let s2 = s.clone();
    s.before_next(Op::Create, move |_| {
        peer(&s2, "198.18.2.0-24", "other", "198.19.0.9");
    });
    let got = acquire(&s, &me("a", "198.19.0.1"), Some(prefer)).await;
    assert_ne!(got.subnet.to_string(), prefer);
    assert_eq!(s.count("create"), 2, "{:?}", s.calls());
    assert_eq!(
        s.count("list"),
        1,
        "the second try decides on the same read, the lost subnet marked taken: {:?}",
        s.calls()
    );
    assert_eq!(s.count("revoke"), 1, "the lease of the lost try is revoked");
    let other = s.value(&format!("{P}198.18.2.0-24")).unwrap();
    assert_eq!(other.value, value("other", "198.19.0.9").into_bytes());
}

#[tokio::test(start_paused = true)]
async fn adopt_on_restart_writes_nothing() {
    let s = store();
    let l = peer(&s, "198.18.3.0-24", "a", "198.19.0.1");
    let before = s.state().rev;
    let got = acquire(&s, &me("a", "198.19.0.1"), None).await;
    assert_eq!(
        (got.subnet.to_string(), got.lease_id),
        ("198.18.3.0/24".into(), l)
    );
    assert_eq!(s.state().rev, before, "no write: {:?}", s.calls());
    assert_eq!(s.count("grant") + s.count("create") + s.count("put_if"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_guarded_renewal_that_finds_another_nodes_key_never_overwrites_it() {
    let s = store();
    // Our key from before, on a lease that is gone: a renewal must rewrite it.
    s.put(&format!("{P}198.18.1.0-24"), &value("a", "198.19.0.1"), 42);
    let s2 = s.clone();
    // Meanwhile it expires and another node claims the subnet.
    s.before_next(Op::PutIf, move |_| {
        s2.delete(&format!("{P}198.18.1.0-24"));
        peer(&s2, "198.18.1.0-24", "b", "198.19.0.2");
    });
    let got = acquire(&s, &me("a", "198.19.0.1"), None).await;
    assert_eq!(s.count("put_if"), 1);
    assert_ne!(got.subnet.to_string(), "198.18.1.0/24");
    let b = s.value(&format!("{P}198.18.1.0-24")).unwrap();
    assert_eq!(
        b.value,
        value("b", "198.19.0.2").into_bytes(),
        "b's key intact"
    );
}

#[test]
fn only_a_provable_key_is_adopted() {
    let lease = |node: &str, ip: &str, subnet: &str| codec::Lease {
        subnet: subnet.parse().unwrap(),
        value: serde_json::from_str(&value(node, ip)).unwrap(),
        created: 1,
    };
    let a = me("a", "198.19.0.1");
    let file = Some("198.18.2.0/24".parse().unwrap());
    assert!(claim::is_own(
        &lease("a", "198.19.0.1", "198.18.1.0/24"),
        &a,
        None
    ));
    // Same name, other IP: ours only if the subnet file names it.
    assert!(!claim::is_own(
        &lease("a", "198.19.0.7", "198.18.1.0/24"),
        &a,
        file
    ));
    assert!(claim::is_conflict(
        &lease("a", "198.19.0.7", "198.18.1.0/24"),
        &a,
        file
    ));
    assert!(claim::is_own(
        &lease("a", "198.19.0.7", "198.18.2.0/24"),
        &a,
        file
    ));
    // A nameless key with our IP (the old, too loose rule) is not proof.
    assert!(!claim::is_own(
        &lease("", "198.19.0.1", "198.18.1.0/24"),
        &a,
        None
    ));
    assert!(claim::is_own(
        &lease("", "198.19.0.9", "198.18.2.0/24"),
        &a,
        file
    ));
    // The subnet file never hands us another node's key.
    assert!(!claim::is_own(
        &lease("b", "198.19.0.2", "198.18.2.0/24"),
        &a,
        file
    ));
}

#[tokio::test(start_paused = true)]
async fn two_daemons_with_one_name_never_share_a_key() {
    let s = store();
    let first = Daemon::start(&s, me("a", "198.19.0.1")).await;
    // The same name on another node, without a subnet file: not the first one's key.
    let second = Daemon::start(
        &s,
        Me {
            last: None,
            ..me("a", "198.19.0.2")
        },
    )
    .await;
    let (k1, k2) = (first.own.borrow().clone(), second.own.borrow().clone());
    assert_ne!(k1.name, k2.name);
    assert_ne!(k1.lease_id, k2.lease_id);
    settle().await;
    assert!(
        first.metric("hostgw_node_name_conflicts").ends_with(" 1"),
        "{}",
        first.metrics.encode()
    );
    assert_eq!(
        s.value(&format!("{P}{}", k1.name)).unwrap().value,
        value("a", "198.19.0.1").into_bytes()
    );
    first.stop().await;
    second.stop().await;
}

// === keep-alive ===

#[tokio::test(start_paused = true)]
async fn reclaim_after_expiry_prefers_the_old_subnet() {
    let s = store();
    peer(&s, "198.18.1.0-24", "b", "198.19.0.2");
    let d = Daemon::start(&s, me("a", "198.19.0.1")).await;
    let old = d.own.borrow().clone();
    s.expire(old.lease_id);
    tokio::time::sleep(Duration::from_secs(16)).await; // one keep-alive period (TTL/4)
    let new = d.own.borrow().clone();
    assert_eq!(new.subnet, old.subnet);
    assert_ne!(new.lease_id, old.lease_id);
    assert!(s.value(&format!("{P}{}", old.name)).is_some());
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn keep_alive_failures_back_off_and_recover() {
    let s = store();
    let d = Daemon::start(&s, me("a", "198.19.0.1")).await;
    s.fail(Op::KeepAlive, 6);
    let t0 = tokio::time::Instant::now();
    let mut at = Vec::new();
    let mut seen = s.count("keep_alive");
    while t0.elapsed() < Duration::from_secs(45) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if s.count("keep_alive") > seen {
            seen = s.count("keep_alive");
            at.push(t0.elapsed());
        }
    }
    // Six failures and the success after them, then one keep-alive per period (TTL/4).
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(at.len(), 8, "{at:?}");
    // Unreachable etcd: retries within the 1 s reconnect cap, never a hot loop.
    assert!(
        gaps[..6]
            .iter()
            .all(|g| *g >= Duration::from_millis(90) && *g <= Duration::from_secs(1)),
        "{gaps:?}"
    );
    assert!(gaps[6] >= Duration::from_secs(15), "{gaps:?}");
    assert!(
        d.metric("hostgw_lease_renewal_failures_total")
            .ends_with(" 6")
    );
    d.stop().await;
}

// === watch ===

#[tokio::test(start_paused = true)]
async fn the_watch_resumes_from_the_last_revision() {
    let s = store();
    peer(&s, "198.18.1.0-24", "b", "198.19.0.2");
    let d = Daemon::start(&s, me("a", "198.19.0.1")).await;
    peer(&s, "198.18.2.0-24", "c", "198.19.0.3");
    settle().await;
    let rev = s.state().rev;
    s.break_watches();
    peer(&s, "198.18.3.0-24", "d", "198.19.0.4"); // while the stream is down
    settle().await;
    assert_eq!(exactly(&s, "list /p/"), 1, "no re-list: {:?}", s.calls());
    assert!(
        s.calls().contains(&format!("watch /p/ from {}", rev + 1)),
        "{:?}",
        s.calls()
    );
    assert!(
        d.names().contains(&"198.18.3.0-24".to_owned()),
        "missed event replayed"
    );
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn compaction_gives_exactly_one_relist() {
    let s = store();
    peer(&s, "198.18.1.0-24", "b", "198.19.0.2");
    let d = Daemon::start(&s, me("a", "198.19.0.1")).await;
    s.break_watches();
    s.delete(&format!("{P}198.18.1.0-24"));
    s.compact();
    settle().await;
    assert_eq!(exactly(&s, "list /p/"), 2, "{:?}", s.calls());
    assert!(
        !d.names().contains(&"198.18.1.0-24".to_owned()),
        "lost delete seen by the re-list"
    );
    settle().await;
    assert_eq!(exactly(&s, "list /p/"), 2, "exactly one");
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn no_list_is_ever_read_as_no_peers_after_an_error() {
    let s = store();
    peer(&s, "198.18.1.0-24", "b", "198.19.0.2");
    s.fail(Op::List, 3);
    let d = Daemon::start(&s, me("a", "198.19.0.1")).await;
    let ok = d.names();
    assert_eq!(ok.len(), 2, "first good list after 3 failures: {ok:?}");
    // Compaction, then the re-list fails again: the last good set stays published.
    s.break_watches();
    s.compact();
    s.fail(Op::List, 3);
    let mut rx = d.leases.clone();
    rx.borrow_and_update();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if rx.has_changed().unwrap() {
            assert_eq!(d.names(), ok, "never an empty or partial set");
            rx.borrow_and_update();
        }
    }
    assert_eq!(d.names(), ok);
    d.stop().await;
}

// === issue 12: restored etcd, identity, config ===

#[tokio::test(start_paused = true)]
async fn an_etcd_restored_empty_is_relisted_our_key_reclaimed_and_routes_kept() {
    let s = store();
    peer(&s, "198.18.1.0-24", "b", "198.19.0.2");
    let d = Daemon::start(&s, me("a", "198.19.0.1")).await;
    let old = d.own.borrow().clone();
    let mut empty = State::default();
    empty.rev = 1; // a fresh etcd: far behind our revision
    s.restore(empty);
    settle().await;
    let new = d.own.borrow().clone();
    assert_eq!(new.subnet, old.subnet, "re-claimed the same subnet");
    assert!(s.value(&format!("{P}{}", new.name)).is_some());
    assert!(
        d.names().contains(&"198.18.1.0-24".to_owned()),
        "peer's route kept while it re-creates"
    );
    assert!(
        d.metric("hostgw_etcd_restores_total").ends_with(" 1"),
        "{}",
        d.metrics.encode()
    );
    // The peer never comes back: dropped after the grace.
    tokio::time::sleep(GRACE).await;
    assert!(!d.names().contains(&"198.18.1.0-24".to_owned()));
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_older_snapshot_of_the_same_cluster_is_detected_by_its_revision() {
    let s = store();
    let d = Daemon::start(&s, me("a", "198.19.0.1")).await;
    let snap = s.snapshot(); // holds our key and lease
    peer(&s, "198.18.1.0-24", "b", "198.19.0.2");
    settle().await;
    let mut snap = snap;
    snap.cluster_id = s.state().cluster_id - 1; // restore() bumps it: keep it the same
    s.restore(snap);
    peer(&s, "198.18.2.0-24", "c", "198.19.0.3"); // written after the restore
    settle().await;
    assert!(
        d.names().contains(&"198.18.2.0-24".to_owned()),
        "{:?}",
        d.names()
    );
    assert!(d.metric("hostgw_etcd_restores_total").ends_with(" 1"));
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn our_deleted_key_is_recreated_and_an_overwritten_one_restored() {
    let s = store();
    let d = Daemon::start(&s, me("a", "198.19.0.1")).await;
    let own = d.own.borrow().clone();
    let key = format!("{P}{}", own.name);
    s.delete(&key);
    settle().await;
    let kv = s.value(&key).expect("re-created");
    assert_eq!(
        (kv.lease, kv.value.clone()),
        (own.lease_id, value("a", "198.19.0.1").into_bytes())
    );
    // Rewritten with a foreign public IP: put back, guarded by the revision it was found at.
    s.put(&key, &value("a", "198.19.0.66"), 0);
    let hijacked_at = s.state().rev;
    settle().await;
    let kv = s.value(&key).unwrap();
    assert_eq!(kv.value, value("a", "198.19.0.1").into_bytes());
    assert!(s.calls().contains(&format!(
        "put_if {key} lease {} at {hijacked_at}",
        own.lease_id
    )));
    let text = d.metrics.encode();
    assert!(
        text.contains("hostgw_own_key_restores_total{cause=\"deleted\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("hostgw_own_key_restores_total{cause=\"overwritten\"} 1"),
        "{text}"
    );
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_contested_key_is_restored_with_backoff_not_in_a_loop() {
    let s = store();
    let d = Daemon::start(&s, me("a", "198.19.0.1")).await;
    let key = format!("{P}{}", d.own.borrow().name);
    for _ in 0..30 {
        s.put(&key, &value("x", "198.19.0.66"), 0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        s.count("put_if") <= 6,
        "{} restores in 3 s",
        s.count("put_if")
    );
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_changed_deleted_or_invalid_config_is_reported_and_not_applied() {
    let s = store();
    peer(&s, "198.18.1.0-24", "b", "198.19.0.2");
    let d = Daemon::start(&s, me("a", "198.19.0.1")).await;
    let before = d.names();
    assert!(d.metric("hostgw_config_mismatch").ends_with(" 0"));
    for bad in [r#"{"Network":"198.20.0.0/16"}"#, "garbage", ""] {
        if bad.is_empty() {
            s.delete("/p/config");
        } else {
            s.put("/p/config", bad, 0);
        }
        settle().await;
        assert!(d.metric("hostgw_config_mismatch").ends_with(" 1"), "{bad}");
        assert_eq!(d.names(), before, "lease set unchanged");
    }
    s.put("/p/config", CFG, 0);
    settle().await;
    assert!(d.metric("hostgw_config_mismatch").ends_with(" 0"));
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_prefix_wipe_keeps_routes_while_nodes_recreate_their_keys() {
    let s = store();
    peer(&s, "198.18.1.0-24", "b", "198.19.0.2");
    peer(&s, "198.18.2.0-24", "c", "198.19.0.3");
    let d = Daemon::start(&s, me("a", "198.19.0.1")).await;
    let all = d.names();
    let mut rx = d.leases.clone();
    rx.borrow_and_update();
    // etcdctl del --prefix: one transaction, one revision.
    s.wipe_prefix(P);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if rx.has_changed().unwrap() {
            assert_eq!(
                rx.borrow_and_update().as_ref().unwrap().len(),
                3,
                "no peer dropped"
            );
        }
    }
    assert_eq!(d.names(), all);
    assert!(
        s.value(&format!("{P}{}", d.own.borrow().name)).is_some(),
        "own key re-created"
    );
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_member_lagging_behind_is_not_taken_for_a_restored_etcd() {
    let s = store();
    peer(&s, "198.18.1.0-24", "b", "198.19.0.2");
    let d = Daemon::start(&s, me("a", "198.19.0.1")).await;
    let rev = s.state().rev;
    // The watch resumes on a member two entries behind; by the list it has caught up.
    s.before_next(Op::Watch, |f| f.state().rev -= 2);
    s.before_next(Op::List, move |f| f.state().rev = rev);
    s.break_watches();
    settle().await;
    assert!(
        d.metric("hostgw_etcd_restores_total").ends_with(" 0"),
        "{}",
        d.metrics.encode()
    );
    assert_eq!(
        exactly(&s, "list /p/"),
        2,
        "one plain re-list: {:?}",
        s.calls()
    );
    assert_eq!(d.names().len(), 2);
    d.stop().await;
}

// === request counts (issue 11: what a daemon costs etcd) ===

/// Every recorded call that reads a range (`get` or `list`).
fn reads(s: &FakeStore) -> usize {
    s.count("get ") + s.count("list ")
}

#[tokio::test(start_paused = true)]
async fn a_cold_start_lists_once() {
    let s = store();
    for i in 1..=20 {
        peer(
            &s,
            &format!("198.18.{i}.0-24"),
            &format!("n{i}"),
            &format!("198.19.1.{i}"),
        );
    }
    let d = Daemon::start(&s, me("a", "198.19.0.1")).await;
    assert_eq!(
        reads(&s),
        1,
        "config, claim and watch share one read: {:?}",
        s.calls()
    );
    assert_eq!(exactly(&s, "list /p/"), 1, "{:?}", s.calls());
    assert_eq!(s.count("watch"), 1, "{:?}", s.calls());
    assert_eq!(
        d.names().len(),
        21,
        "every peer and our own key: {:?}",
        d.names()
    );
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_first_node_of_an_empty_cluster_lists_once() {
    let s = store();
    let d = Daemon::start(&s, me("a", "198.19.0.1")).await;
    assert_eq!(reads(&s), 1, "an empty seed is no error: {:?}", s.calls());
    assert_eq!(
        d.names(),
        vec!["198.18.100.0-24".to_owned()],
        "our key came by the watch"
    );
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_lost_race_at_start_costs_no_other_read_and_leaves_no_gap() {
    let s = store();
    peer(&s, "198.18.1.0-24", "b", "198.19.0.2");
    // Our preferred subnet is taken between our read and our create.
    let s2 = s.clone();
    s.before_next(Op::Create, move |_| {
        peer(&s2, "198.18.100.0-24", "other", "198.19.0.9");
    });
    let d = Daemon::start(&s, me("a", "198.19.0.1")).await;
    assert_eq!(reads(&s), 1, "{:?}", s.calls());
    assert_eq!(s.count("create"), 2, "{:?}", s.calls());
    peer(&s, "198.18.7.0-24", "late", "198.19.0.7");
    settle().await;
    let names = d.names();
    // The winner of our race came after our read: the watch from its revision brings it.
    for k in ["198.18.1.0-24", "198.18.100.0-24", "198.18.7.0-24"] {
        assert!(names.contains(&k.to_owned()), "{k} missing: {names:?}");
    }
    assert_eq!(names.len(), 4, "and our own: {names:?}");
    assert_eq!(reads(&s), 1, "{:?}", s.calls());
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_write_between_the_read_and_the_watch_is_not_lost() {
    let s = store();
    peer(&s, "198.18.1.0-24", "b", "198.19.0.2");
    // Another node joins and one leaves while we claim: after our read, before our watch.
    let s2 = s.clone();
    s.before_next(Op::Grant, move |_| {
        peer(&s2, "198.18.2.0-24", "c", "198.19.0.3");
        s2.delete(&format!("{P}198.18.1.0-24"));
    });
    let d = Daemon::start(&s, me("a", "198.19.0.1")).await;
    let names = d.names();
    assert!(names.contains(&"198.18.2.0-24".to_owned()), "{names:?}");
    assert!(!names.contains(&"198.18.1.0-24".to_owned()), "{names:?}");
    assert_eq!(reads(&s), 1, "{:?}", s.calls());
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_steady_state_reads_nothing() {
    let s = store();
    peer(&s, "198.18.1.0-24", "b", "198.19.0.2");
    let d = Daemon::start(&s, me("a", "198.19.0.1")).await;
    let at_start = reads(&s);
    for i in 2..30 {
        peer(
            &s,
            &format!("198.18.{i}.0-24"),
            "x",
            &format!("198.19.2.{i}"),
        );
        s.delete(&format!("{P}198.18.{i}.0-24"));
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    assert_eq!(reads(&s), at_start, "{:?}", s.calls());
    assert!(
        s.count("keep_alive") >= 1,
        "renewed meanwhile: {:?}",
        s.calls()
    );
    assert_eq!(s.count("watch"), 1, "{:?}", s.calls());
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_compaction_relists_each_daemon_once_spread_over_the_window() {
    let s = store();
    for i in 1..=50 {
        peer(
            &s,
            &format!("198.18.{i}.0-24"),
            "x",
            &format!("198.19.1.{i}"),
        );
    }
    let mut ds = Vec::new();
    for i in 0..10 {
        ds.push(Daemon::start(&s, me(&format!("d{i}"), &format!("198.19.3.{i}"))).await);
    }
    let before = exactly(&s, "list /p/");
    s.break_watches();
    s.delete(&format!("{P}198.18.1.0-24"));
    s.compact();
    // 60 leases: a window of 600 ms. Nobody lists at once; all have by its end.
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(exactly(&s, "list /p/") - before < 10, "{:?}", s.calls());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(exactly(&s, "list /p/") - before, 10, "{:?}", s.calls());
    for d in &ds {
        assert!(!d.names().contains(&"198.18.1.0-24".to_owned()));
    }
    for d in ds {
        d.stop().await;
    }
}

#[test]
fn the_relist_window_grows_with_the_leases_and_is_capped() {
    use rand::{SeedableRng, rngs::StdRng};
    let mut rng = StdRng::seed_from_u64(7);
    let delays: Vec<Duration> = (0..1000)
        .map(|_| super::watch::relist_delay(1000, &mut rng))
        .collect();
    assert!(delays.iter().all(|d| *d < Duration::from_secs(10)));
    let early = delays
        .iter()
        .filter(|d| **d < Duration::from_secs(1))
        .count();
    assert!(
        (50..150).contains(&early),
        "about 1 in 10 in the first second: {early}"
    );
    let big = super::watch::relist_delay(1_000_000, &mut rng);
    assert!(big <= Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn a_read_that_loses_every_retry_is_taken_again() {
    let s = store();
    // Whatever we try to create, another node has just taken it.
    for _ in 0..=claim::RETRIES_ON_ONE_READ {
        let s2 = s.clone();
        s.before_next(Op::Create, move |st| {
            let call = st.calls().last().cloned().unwrap_or_default();
            let key = call
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            s2.put(&key, &value("other", "198.19.0.9"), 0);
        });
    }
    let got = acquire(&s, &me("a", "198.19.0.1"), None).await;
    let creates = claim::RETRIES_ON_ONE_READ + 2;
    assert_eq!(s.count("create"), creates, "{:?}", s.calls());
    assert_eq!(
        s.count("list"),
        2,
        "one more read after the retries: {:?}",
        s.calls()
    );
    let key = format!("{P}{}", codec::key_name(&got.subnet));
    assert_eq!(s.value(&key).unwrap().lease, got.lease_id);
}

// === the lease cache (issue 11: a full restart without N full lists) ===

fn lease_cache(dir: &std::path::Path) -> LeaseCache {
    LeaseCache {
        path: dir.join("leases.json"),
        prefix: "/p".into(),
        node: "a".into(),
        every: super::cache::WRITE_EVERY,
    }
}

/// A stop writes the cache; the next start reads the config key, adopts our key and
/// resumes the watch after the cache's revision: no list. What changed meanwhile (a node
/// joined, one left) arrives on the watch.
#[tokio::test(start_paused = true)]
async fn a_restart_resumes_from_the_lease_cache_without_a_list() {
    let dir = tempfile::tempdir().unwrap();
    let s = store();
    peer(&s, "198.18.1.0-24", "b", "198.19.0.2");
    peer(&s, "198.18.2.0-24", "c", "198.19.0.3");
    let d = Daemon::start_with(&s, me("a", "198.19.0.1"), Some(lease_cache(dir.path()))).await;
    d.stop().await;
    let rev = s.state().rev;
    assert!(
        dir.path().join("leases.json").exists(),
        "written at the stop"
    );
    peer(&s, "198.18.3.0-24", "d", "198.19.0.4");
    s.delete(&format!("{P}198.18.1.0-24"));
    let lists = exactly(&s, "list /p/");
    assert_eq!(lists, 1);

    let d = Daemon::start_with(&s, me("a", "198.19.0.1"), Some(lease_cache(dir.path()))).await;
    assert_eq!(exactly(&s, "list /p/"), lists, "no list: {:?}", s.calls());
    assert_eq!(exactly(&s, "get /p/config"), 1, "{:?}", s.calls());
    assert_eq!(
        exactly(&s, &format!("watch /p/ from {}", rev + 1)),
        1,
        "resumed after the cache's revision: {:?}",
        s.calls()
    );
    assert_eq!(s.count("create"), 1, "our key adopted, not claimed again");
    let mut names = d.names();
    names.sort();
    assert_eq!(names, ["198.18.100.0-24", "198.18.2.0-24", "198.18.3.0-24"]);
    d.stop().await;
}

/// A cache whose revision etcd has compacted: the resumed watch is refused, the daemon
/// lists once (after the jittered delay) and has the right set.
#[tokio::test(start_paused = true)]
async fn a_cache_older_than_the_compaction_lists_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = store();
    peer(&s, "198.18.1.0-24", "b", "198.19.0.2");
    let d = Daemon::start_with(&s, me("a", "198.19.0.1"), Some(lease_cache(dir.path()))).await;
    d.stop().await;
    s.delete(&format!("{P}198.18.1.0-24"));
    peer(&s, "198.18.3.0-24", "d", "198.19.0.4");
    s.compact();
    let d = Daemon::start_with(&s, me("a", "198.19.0.1"), Some(lease_cache(dir.path()))).await;
    settle().await;
    assert_eq!(exactly(&s, "list /p/"), 2, "one list more: {:?}", s.calls());
    let mut names = d.names();
    names.sort();
    assert_eq!(names, ["198.18.100.0-24", "198.18.3.0-24"]);
    settle().await;
    assert_eq!(exactly(&s, "list /p/"), 2, "exactly one");
    d.stop().await;
}

/// A cache from a revision etcd has not reached (etcd restored from an older snapshot, or
/// rebuilt) or from another cluster is not used: the start lists.
#[tokio::test(start_paused = true)]
async fn a_cache_ahead_of_etcd_or_of_another_cluster_is_not_used() {
    for other_cluster in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let s = store();
        let old = s.snapshot();
        peer(&s, "198.18.1.0-24", "b", "198.19.0.2");
        let d = Daemon::start_with(&s, me("a", "198.19.0.1"), Some(lease_cache(dir.path()))).await;
        d.stop().await;
        let mut old = old;
        if !other_cluster {
            old.cluster_id = s.state().cluster_id - 1; // restore() bumps it: keep it
        }
        s.restore(old);
        peer(&s, "198.18.2.0-24", "c", "198.19.0.3");
        let d = Daemon::start_with(&s, me("a", "198.19.0.1"), Some(lease_cache(dir.path()))).await;
        assert_eq!(
            exactly(&s, "list /p/"),
            2,
            "{other_cluster}: {:?}",
            s.calls()
        );
        let mut names = d.names();
        names.sort();
        assert_eq!(
            names,
            ["198.18.100.0-24", "198.18.2.0-24"],
            "{other_cluster}"
        );
        d.stop().await;
    }
}

/// While leases change the cache is rewritten at most every WRITE_EVERY; a quiet daemon
/// writes nothing.
#[tokio::test(start_paused = true)]
async fn the_cache_follows_changes_at_most_every_write_interval() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leases.json");
    let s = store();
    let d = Daemon::start_with(&s, me("a", "198.19.0.1"), Some(lease_cache(dir.path()))).await;
    let written = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    tokio::time::sleep(super::cache::WRITE_EVERY).await;
    let first = written(&path);
    assert!(first.contains("198.18.100.0-24"), "{first}");
    peer(&s, "198.18.1.0-24", "b", "198.19.0.2");
    settle().await;
    assert_eq!(written(&path), first, "not at once");
    tokio::time::sleep(super::cache::WRITE_EVERY).await;
    let second = written(&path);
    assert!(second.contains("198.18.1.0-24"), "{second}");
    std::fs::remove_file(&path).unwrap();
    tokio::time::sleep(super::cache::WRITE_EVERY * 3).await;
    assert!(!path.exists(), "nothing changed: nothing written");
    d.stop().await;
    assert!(!path.exists(), "nothing new at the stop either");
}

/// In a quiet cluster the cache follows etcd's progress notifications, not only events:
/// after writes elsewhere in etcd and a compaction past our last event, a restart still
/// resumes (without them the cache's revision would be compacted and the start would list).
#[tokio::test(start_paused = true)]
async fn progress_notifications_keep_the_cache_ahead_of_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let s = store();
    peer(&s, "198.18.1.0-24", "b", "198.19.0.2");
    let d = Daemon::start_with(&s, me("a", "198.19.0.1"), Some(lease_cache(dir.path()))).await;
    tokio::time::sleep(super::cache::WRITE_EVERY).await;
    s.put("/other/k", "1", 0);
    s.put("/other/k", "2", 0);
    s.progress();
    settle().await;
    d.stop().await;
    s.compact();
    let d = Daemon::start_with(&s, me("a", "198.19.0.1"), Some(lease_cache(dir.path()))).await;
    assert_eq!(
        exactly(&s, "list /p/"),
        1,
        "resumed, no list: {:?}",
        s.calls()
    );
    assert_eq!(d.names().len(), 2, "{:?}", d.names());
    d.stop().await;
}
