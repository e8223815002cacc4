//! A `Store` for unit tests: a small in-memory etcd (revisions, leases, compaction, watch
//! history) that records every call and serves scripted faults and interleavings.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::mpsc;

use super::{
    EtcdError,
    store::{Event, Header, Kv, Store, WatchMsg, WatchStream},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    List,
    Watch,
    Create,
    PutIf,
    DeleteIf,
    Grant,
    KeepAlive,
    Revoke,
}

type Hook = Box<dyn FnOnce(&FakeStore) + Send>;
type Tx = mpsc::UnboundedSender<Result<WatchMsg, EtcdError>>;

#[derive(Default)]
pub struct State {
    pub rev: i64,
    pub cluster_id: u64,
    pub kvs: BTreeMap<String, Kv>,
    pub leases: BTreeMap<i64, i64>,
    next_lease: i64,
    compacted: i64,
    history: Vec<(i64, Event)>,
    watchers: Vec<(String, Tx)>,
    /// Per operation: the next calls fail (unreachable etcd) this many times.
    failing: Vec<(Op, usize)>,
    /// Runs just before the next call of an operation (another node acting first).
    hooks: VecDeque<(Op, Hook)>,
    pub calls: Vec<String>,
}

#[derive(Clone, Default)]
pub struct FakeStore(Arc<Mutex<State>>);

const _: fn() = || {
    fn assert<T: Store>() {}
    assert::<FakeStore>();
};

impl FakeStore {
    pub fn new() -> FakeStore {
        let f = FakeStore::default();
        f.state().cluster_id = 1;
        f.state().next_lease = 100;
        f
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    /// Calls recorded so far whose text starts with `what`.
    pub fn count(&self, what: &str) -> usize {
        self.state()
            .calls
            .iter()
            .filter(|c| c.starts_with(what))
            .count()
    }

    pub fn fail(&self, op: Op, times: usize) {
        self.state().failing.push((op, times));
    }

    pub fn before_next(&self, op: Op, f: impl FnOnce(&FakeStore) + Send + 'static) {
        self.state().hooks.push_back((op, Box::new(f)));
    }

    pub fn value(&self, key: &str) -> Option<Kv> {
        self.state().kvs.get(key).cloned()
    }

    /// A write by someone else (operator, other node): no guard.
    pub fn put(&self, key: &str, value: &str, lease: i64) {
        self.state().put(key, value.as_bytes().to_vec(), lease);
    }

    pub fn delete(&self, key: &str) {
        self.state().delete(key);
    }

    /// `etcdctl del --prefix`: every key under `prefix` in one transaction.
    pub fn wipe_prefix(&self, prefix: &str) {
        let mut s = self.state();
        let keys: Vec<String> = s
            .kvs
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        s.rev += 1;
        let mod_revision = s.rev;
        let events = keys
            .into_iter()
            .map(|key| {
                s.kvs.remove(&key);
                Event::Delete { key, mod_revision }
            })
            .collect();
        s.emit_all(events);
    }

    pub fn grant_lease(&self) -> i64 {
        self.state().grant(60)
    }

    /// The lease runs out: it and its keys are gone.
    pub fn expire(&self, lease: i64) {
        let mut s = self.state();
        s.leases.remove(&lease);
        let keys: Vec<String> = s
            .kvs
            .values()
            .filter(|k| k.lease == lease)
            .map(|k| k.key.clone())
            .collect();
        for k in keys {
            s.delete(&k);
        }
    }

    pub fn compact(&self) {
        let mut s = self.state();
        s.compacted = s.rev;
        s.history.clear();
    }

    /// A progress notification on every open watch, at the current revision (etcd sends
    /// them to watchers that have caught up and seen nothing for a while).
    pub fn progress(&self) {
        let mut s = self.state();
        let h = s.header();
        s.watchers
            .retain(|(_, tx)| tx.send(Ok(WatchMsg::Progress(h))).is_ok());
    }

    /// Every open watch stream fails (etcd restarted, connection lost).
    pub fn break_watches(&self) {
        for (_, tx) in self.state().watchers.drain(..) {
            let _ = tx.send(Err(EtcdError::Timeout("fake: connection lost")));
        }
    }

    /// etcd replaced by one restored from `snapshot` (or empty): other cluster id, its own
    /// revision, keys and leases. Open watches break.
    pub fn restore(&self, snapshot: State) {
        self.break_watches();
        let mut s = self.state();
        let calls = std::mem::take(&mut s.calls);
        let cluster_id = s.cluster_id + 1;
        *s = snapshot;
        s.calls = calls;
        s.cluster_id = cluster_id;
        s.next_lease = s.next_lease.max(1000);
    }

    /// A copy of the data (for `restore` later), without watches, faults or calls.
    pub fn snapshot(&self) -> State {
        let s = self.state();
        State {
            rev: s.rev,
            cluster_id: s.cluster_id,
            kvs: s.kvs.clone(),
            leases: s.leases.clone(),
            next_lease: s.next_lease,
            ..State::default()
        }
    }

    /// Records the call, runs a hook, and fails it if scripted to.
    fn enter(&self, op: Op, call: String) -> Result<(), EtcdError> {
        let hook = {
            let mut s = self.state();
            s.calls.push(call);
            s.hooks
                .iter()
                .position(|(o, _)| *o == op)
                .and_then(|i| s.hooks.remove(i))
        };
        if let Some((_, f)) = hook {
            f(self);
        }
        let mut s = self.state();
        if let Some(slot) = s.failing.iter_mut().find(|(o, n)| *o == op && *n > 0) {
            slot.1 -= 1;
            return Err(EtcdError::Timeout("fake: unreachable"));
        }
        Ok(())
    }
}

fn key_of(ev: &Event) -> &str {
    match ev {
        Event::Put(kv) => &kv.key,
        Event::Delete { key, .. } => key,
    }
}

// === impl State ===

impl State {
    fn header(&self) -> Header {
        Header {
            cluster_id: self.cluster_id,
            member_id: 7,
            revision: self.rev,
        }
    }

    fn emit(&mut self, ev: Event) {
        self.emit_all(vec![ev]);
    }

    /// Events of one revision, in one watch message as etcd sends them.
    fn emit_all(&mut self, events: Vec<Event>) {
        let header = self.header();
        for ev in &events {
            self.history.push((self.rev, ev.clone()));
        }
        self.watchers.retain(|(prefix, tx)| {
            let mine: Vec<Event> = events
                .iter()
                .filter(|ev| key_of(ev).starts_with(prefix.as_str()))
                .cloned()
                .collect();
            mine.is_empty()
                || tx
                    .send(Ok(WatchMsg::Events {
                        header,
                        events: mine,
                    }))
                    .is_ok()
        });
    }

    fn put(&mut self, key: &str, value: Vec<u8>, lease: i64) {
        self.rev += 1;
        let create_revision = self.kvs.get(key).map_or(self.rev, |k| k.create_revision);
        let kv = Kv {
            key: key.to_owned(),
            value,
            create_revision,
            mod_revision: self.rev,
            lease,
        };
        self.kvs.insert(key.to_owned(), kv.clone());
        self.emit(Event::Put(kv));
    }

    fn delete(&mut self, key: &str) {
        if self.kvs.remove(key).is_some() {
            self.rev += 1;
            let mod_revision = self.rev;
            self.emit(Event::Delete {
                key: key.to_owned(),
                mod_revision,
            });
        }
    }

    fn grant(&mut self, ttl: i64) -> i64 {
        self.next_lease += 1;
        self.leases.insert(self.next_lease, ttl);
        self.next_lease
    }
}

// === impl Store for FakeStore ===

impl Store for FakeStore {
    type Watch = FakeWatch;

    async fn get(&self, key: &str) -> Result<(Header, Option<Kv>), EtcdError> {
        self.enter(Op::Get, format!("get {key}"))?;
        let s = self.state();
        Ok((s.header(), s.kvs.get(key).cloned()))
    }

    async fn list(&self, prefix: &str) -> Result<(Header, Vec<Kv>), EtcdError> {
        self.enter(Op::List, format!("list {prefix}"))?;
        let s = self.state();
        let kvs = s
            .kvs
            .values()
            .filter(|k| k.key.starts_with(prefix))
            .cloned()
            .collect();
        Ok((s.header(), kvs))
    }

    async fn watch(&self, prefix: &str, from: i64) -> Result<FakeWatch, EtcdError> {
        self.enter(Op::Watch, format!("watch {prefix} from {from}"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = self.state();
        if from <= s.compacted {
            let _ = tx.send(Ok(WatchMsg::Compacted(s.compacted)));
            return Ok(FakeWatch(rx));
        }
        let header = s.header();
        let _ = tx.send(Ok(WatchMsg::Events {
            header,
            events: vec![],
        }));
        for (rev, ev) in &s.history {
            if *rev >= from && key_of(ev).starts_with(prefix) {
                let _ = tx.send(Ok(WatchMsg::Events {
                    header,
                    events: vec![ev.clone()],
                }));
            }
        }
        s.watchers.push((prefix.to_owned(), tx));
        Ok(FakeWatch(rx))
    }

    async fn create(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<bool, EtcdError> {
        self.enter(Op::Create, format!("create {key} lease {lease}"))?;
        let mut s = self.state();
        if s.kvs.contains_key(key) {
            return Ok(false);
        }
        s.put(key, value, lease);
        Ok(true)
    }

    async fn create_unless(
        &self,
        key: &str,
        absent: &[(String, String)],
        value: Vec<u8>,
        lease: i64,
    ) -> Result<bool, EtcdError> {
        self.enter(Op::Create, format!("create {key} lease {lease}"))?;
        let mut s = self.state();
        let in_range = |k: &String| absent.iter().any(|(a, b)| k >= a && k < b);
        if s.kvs.contains_key(key) || s.kvs.keys().any(in_range) {
            return Ok(false);
        }
        s.put(key, value, lease);
        Ok(true)
    }

    async fn put_if(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
        mod_revision: i64,
    ) -> Result<bool, EtcdError> {
        self.enter(
            Op::PutIf,
            format!("put_if {key} lease {lease} at {mod_revision}"),
        )?;
        let mut s = self.state();
        if s.kvs.get(key).map(|k| k.mod_revision) != Some(mod_revision) {
            return Ok(false);
        }
        s.put(key, value, lease);
        Ok(true)
    }

    async fn delete_if(&self, key: &str, mod_revision: i64) -> Result<bool, EtcdError> {
        self.enter(Op::DeleteIf, format!("delete_if {key} at {mod_revision}"))?;
        let mut s = self.state();
        if s.kvs.get(key).map(|k| k.mod_revision) != Some(mod_revision) {
            return Ok(false);
        }
        s.delete(key);
        Ok(true)
    }

    async fn grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        self.enter(Op::Grant, format!("grant {ttl}"))?;
        Ok(self.state().grant(ttl))
    }

    async fn keep_alive(&self, id: i64) -> Result<bool, EtcdError> {
        self.enter(Op::KeepAlive, format!("keep_alive {id}"))?;
        Ok(self.state().leases.contains_key(&id))
    }

    async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.enter(Op::Revoke, format!("revoke {id}"))?;
        self.expire(id);
        Ok(())
    }
}

pub struct FakeWatch(mpsc::UnboundedReceiver<Result<WatchMsg, EtcdError>>);

impl WatchStream for FakeWatch {
    async fn next(&mut self) -> Result<Option<WatchMsg>, EtcdError> {
        self.0.recv().await.transpose()
    }
}
