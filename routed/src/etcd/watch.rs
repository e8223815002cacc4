//! The one owner of the etcd view of all leases: lists `<prefix>/` once at a revision, then
//! follows a watch from the next revision, and publishes the lease map into a `watch`
//! channel. It also watches the network config and tells the keeper when our own key was
//! touched by someone else.
//!
//! A failed or empty read never replaces what we have: the last good set stays published,
//! so routes stay as they are while etcd is unreachable. An etcd restored from a snapshot
//! or rebuilt (cluster ID changed, revision gone backwards) or wiped by one prefix delete is
//! re-listed once, and the leases it lost are kept for [`GRACE`] while their nodes re-create
//! them, so routes don't flap.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    ops::Deref,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::FutureExt;

use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{
    EtcdError, Keys, Snapshot,
    cache::LeaseCache,
    claim::is_conflict,
    codec::{self as lease, Decoded},
    store::{Event, Header, Store, WatchMsg, WatchStream},
};
use crate::{
    backoff::Backoff,
    config::NetConfig,
    me::{Me, OwnLease},
    metrics::Metrics,
};

pub type Leases = BTreeMap<String, Decoded>;

/// `None` until the first complete list: nothing is reconciled against an unknown set.
/// The set is changed in place (`send_modify`), never copied per event: a reader must not
/// hold its borrow across an `.await` (the watcher could not publish meanwhile).
pub type LeasesRx = watch::Receiver<Option<LeaseSet>>;

/// How many changed keys a [`LeaseSet`] remembers: a reader further behind reads it all.
const CHANGE_LOG: usize = 256;

/// The published leases, and which keys changed lately: a reader that saw an earlier
/// state asks [`LeaseSet::changes_since`] and looks at those keys only. Per lease event
/// the watcher then writes one entry instead of publishing a copy of all N (measured:
/// the copy and the pass over all N were the per-event work that grew with N; see
/// BENCHMARKS.md, "1,000 nodes").
#[derive(Debug, Clone)]
pub struct LeaseSet {
    leases: Leases,
    /// New for every set replaced whole (a list, a restore, a grace's end): a reader that
    /// saw another epoch reads everything.
    epoch: u64,
    /// Counts the changes within an epoch.
    generation: u64,
    /// `(generation, key)` of the latest changes, oldest first.
    log: VecDeque<(u64, String)>,
}

/// Where a reader of a [`LeaseSet`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    epoch: u64,
    generation: u64,
}

/// What changed since a [`Cursor`].
#[derive(Debug, PartialEq, Eq)]
pub enum Changes {
    /// Read the whole set (another epoch, or too far behind).
    All,
    Keys(BTreeSet<String>),
}

static EPOCHS: AtomicU64 = AtomicU64::new(1);

impl LeaseSet {
    pub fn new(leases: Leases) -> Self {
        LeaseSet {
            leases,
            epoch: EPOCHS.fetch_add(1, Ordering::Relaxed),
            generation: 0,
            log: VecDeque::new(),
        }
    }

    pub fn cursor(&self) -> Cursor {
        Cursor {
            epoch: self.epoch,
            generation: self.generation,
        }
    }

    pub fn changes_since(&self, seen: Option<Cursor>) -> Changes {
        let Some(seen) = seen.filter(|c| c.epoch == self.epoch) else {
            return Changes::All;
        };
        // Changes seen+1 ..= now must all be in the log.
        let oldest = self.log.front().map_or(self.generation + 1, |(g, _)| *g);
        if seen.generation > self.generation || oldest > seen.generation + 1 {
            return Changes::All;
        }
        Changes::Keys(
            self.log
                .iter()
                .filter(|(g, _)| *g > seen.generation)
                .map(|(_, k)| k.clone())
                .collect(),
        )
    }

    /// Sets (`Some`) or removes (`None`) one key, as one change.
    pub fn set(&mut self, key: &str, value: Option<Decoded>) {
        match value {
            Some(v) => {
                self.leases.insert(key.to_owned(), v);
            }
            None => {
                self.leases.remove(key);
            }
        }
        self.generation += 1;
        if self.log.len() == CHANGE_LOG {
            self.log.pop_front();
        }
        self.log.push_back((self.generation, key.to_owned()));
    }
}

impl Deref for LeaseSet {
    type Target = Leases;

    fn deref(&self) -> &Leases {
        &self.leases
    }
}

/// How long leases lost to a restored or wiped etcd keep their routes: long enough for
/// every running daemon to notice and re-create its key (seconds), short enough that a node
/// that died meanwhile doesn't leave a black hole for long.
pub const GRACE: Duration = Duration::from_secs(120);

const CLUSTER_CHANGED: &str = "cluster ID changed";

pub struct Watcher<S> {
    pub store: S,
    pub keys: Keys,
    pub tx: watch::Sender<Option<LeaseSet>>,
    pub metrics: Metrics,
    /// The config this process runs with: a different one in etcd is reported, not applied.
    pub cfg: NetConfig,
    pub me: Me,
    /// Our lease as held, to notice someone else deleting or rewriting our key.
    pub own: watch::Receiver<OwnLease>,
    /// Wakes the keeper to check our key.
    pub check_own: Arc<Notify>,
    /// The read the claim decided on (taken before our own write): followed from instead
    /// of listing again, so a start costs etcd one range read, not two.
    pub seed: Option<Snapshot>,
    /// Where the lease set is kept for the next start (none: not kept).
    pub cache: Option<LeaseCache>,
}

/// How long a watch resumed from the lease cache may stay silent after it was created
/// before the cached set is published as it is. Until then nothing is reconciled (the
/// kernel keeps the routes it has): events since the cache's revision come right after
/// the watch's creation, and a set published before them could take back, for a moment,
/// a change the kernel already holds (a cache written up to `--lease-cache-secs` before a
/// crash).
pub const RESUME_SETTLE: Duration = Duration::from_secs(1);

/// What the watcher knows beyond the lease map.
#[derive(Default)]
struct View {
    rev: i64,
    cluster: Option<u64>,
    /// Leases lost to a restore or wipe, kept until `carry_until`. The published set is
    /// etcd's leases plus these: the one copy of the lease map this watcher keeps.
    carry: Leases,
    /// The keys of `carry` etcd does not hold (again): published, but not etcd's.
    carry_only: BTreeSet<String>,
    carry_until: Option<Instant>,
    config: ConfigState,
    /// Keys reported as node-name conflicts, and the lease of ours they were found for.
    conflicts: BTreeSet<String>,
    conflicts_for: Option<OwnLease>,
    /// Keys changed since the last look for node-name conflicts.
    dirty: Vec<String>,
    /// A set resumed from the lease cache, not yet published (see [`RESUME_SETTLE`]),
    /// and when it is published anyway once the watch has answered.
    held: Option<LeaseSet>,
    held_until: Option<Instant>,
    /// When the lease cache is to be written next (none: nothing new to write).
    cache_due: Option<Instant>,
    cache_written: Option<Instant>,
}

#[derive(Debug, Default, Clone, PartialEq)]
enum ConfigState {
    #[default]
    Same,
    Changed(String),
    Deleted,
    Invalid(String),
}

enum End {
    /// Our revision was compacted away: deletes may be lost, so re-list and replace.
    Compacted(i64),
    /// Another etcd answered (restored, rebuilt): re-list once and re-claim.
    Restored(&'static str),
    /// The stream broke: resume from the last revision seen. `true` when etcd could not
    /// be reached at all (see `Backoff::next_delay_for`).
    Broken(String, bool),
}

impl<S: Store> Watcher<S> {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut view = View::default();
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = self.forever(&mut view) => {}
        }
        // A stop writes what changed since the last write: the next start resumes from it.
        if view.cache_due.is_some() {
            self.write_cache(&mut view);
        }
    }

    async fn forever(&mut self, view: &mut View) {
        let mut backoff = Backoff::etcd();
        let mut restored = None;
        let mut seeded = match self.seed.take() {
            Some(seed) => self.load(view, seed, &mut restored, true).is_ok(),
            None => false,
        };
        loop {
            let got = if std::mem::take(&mut seeded) {
                Ok(())
            } else {
                self.list(view, &mut restored).await
            };
            if let Err(e) = got {
                let d = backoff.next_delay_for(e.is_unreachable());
                warn!(error = %e, retry_in = ?d, "listing leases failed; keeping the current routes");
                tokio::time::sleep(d).await;
                continue;
            }
            loop {
                match self.follow(view, &mut backoff).await {
                    End::Compacted(at) => {
                        self.metrics.watch_restarts.inc();
                        let d = relist_delay(self.etcd_leases(view), &mut rand::rng());
                        warn!(
                            revision = view.rev,
                            compacted = at,
                            in_ = ?d,
                            "watch revision compacted; listing again"
                        );
                        tokio::time::sleep(d).await;
                        break;
                    }
                    End::Restored(why) => {
                        self.metrics.watch_restarts.inc();
                        restored = Some(why);
                        break;
                    }
                    End::Broken(e, unreachable) => {
                        self.metrics.watch_restarts.inc();
                        let d = backoff.next_delay_for(unreachable);
                        warn!(error = %e, revision = view.rev, retry_in = ?d, "lease watch broke; resuming");
                        tokio::time::sleep(d).await;
                    }
                }
            }
        }
    }

    /// Whether `h` comes from another etcd than the one we followed, and why.
    fn other_etcd(view: &View, h: &Header) -> Option<&'static str> {
        match view.cluster {
            Some(c) if h.cluster_id != 0 && c != h.cluster_id => Some(CLUSTER_CHANGED),
            Some(_) if h.revision < view.rev => Some("revision went backwards"),
            _ => None,
        }
    }

    /// Lists and publishes; `restored` (why the follow found another etcd) is handled once.
    async fn list(
        &mut self,
        view: &mut View,
        restored: &mut Option<&'static str>,
    ) -> Result<(), EtcdError> {
        let snap = Snapshot::take(&self.store, &self.keys).await?;
        self.load(view, snap, restored, false)
    }

    /// Takes `snap` as the whole lease set and publishes it. A `seed` was read before our
    /// own claim wrote: our key missing from it, or no key at all, is expected (the watch
    /// from its revision brings our write), so neither wakes the keeper or is refused.
    fn load(
        &mut self,
        view: &mut View,
        snap: Snapshot,
        restored: &mut Option<&'static str>,
        seed: bool,
    ) -> Result<(), EtcdError> {
        let Snapshot {
            header,
            config,
            entries,
            resumed,
        } = snap;
        // A revision behind ours on the watch may be a member lagging by a few entries
        // (after a leader change): only the list, a moment later, confirms a restore. A
        // changed cluster ID needs no confirmation.
        let suspected = restored.take().filter(|w| *w == CLUSTER_CHANGED);
        if let Some(why) = Self::other_etcd(view, &header).or(suspected) {
            self.metrics.etcd_restores.inc();
            error!(
                reason = why,
                revision = header.revision,
                last_revision = view.rev,
                "etcd was restored or replaced; listing again and re-claiming our key"
            );
            let lost: Leases = match self.tx.borrow().as_ref() {
                Some(set) => set
                    .iter()
                    .filter(|(k, _)| !view.carry_only.contains(*k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                None => Leases::new(),
            };
            self.start_carry(view, lost, false);
            self.check_own.notify_one();
        }
        view.cluster = Some(header.cluster_id);
        view.rev = header.revision;
        self.check_config(view, config.as_deref());
        let own = self.own.borrow().clone();
        let own_ok = entries
            .get(&own.name)
            .is_some_and(|e| self.is_ours(e.lease_id, &e.decoded, &own));
        let current: Leases = entries.into_iter().map(|(k, e)| (k, e.decoded)).collect();
        if !own_ok && !seed {
            self.check_own.notify_one();
        }
        if current.is_empty() && !seed {
            // Our own key is always there, so an empty answer is not a real cluster state.
            return Err(EtcdError::Empty);
        }
        if resumed {
            info!(
                leases = current.len(),
                revision = view.rev,
                "leases from the lease cache; held until the watch from its revision answers"
            );
        } else {
            info!(leases = current.len(), revision = view.rev, "listed leases");
        }
        view.carry_only = view
            .carry
            .keys()
            .filter(|k| !current.contains_key(*k))
            .cloned()
            .collect();
        let mut all = current;
        for (k, v) in &view.carry {
            all.entry(k.clone()).or_insert_with(|| v.clone());
        }
        self.report_conflicts(view, &all, None);
        let set = LeaseSet::new(all);
        if seed && resumed {
            view.held = Some(set);
        } else {
            view.held = None;
            self.tx.send_replace(Some(set));
            // Etcd's own read (not a resumed cache): the next start may resume from it.
            self.cache_changed(view);
        }
        view.dirty.clear();
        Ok(())
    }

    /// Keeps `lost` published for [`GRACE`]; `republish`: they were taken out of the
    /// published set (a wipe seen on the watch) and go back in.
    fn start_carry(&self, view: &mut View, lost: Leases, republish: bool) {
        if lost.is_empty() {
            return;
        }
        warn!(leases = lost.len(), grace = ?GRACE, "keeping the routes of leases etcd lost until their nodes re-create them");
        // Not etcd's state while carried, and what the file holds is the old etcd's.
        view.cache_due = None;
        if let Some(c) = &self.cache
            && let Err(e) = c.remove()
        {
            warn!(error = %e, path = %c.path.display(), "could not remove the lease cache");
        }
        if republish {
            self.modify(view, |set| {
                for (k, v) in &lost {
                    set.set(k, Some(v.clone()));
                }
            });
            view.dirty.extend(lost.keys().cloned());
        }
        view.carry_only.extend(lost.keys().cloned());
        view.carry.extend(lost);
        view.carry_until = Some(Instant::now() + GRACE);
    }

    /// Changes the set in place: the published one (it exists from the first list on), or
    /// the one held back after a resume.
    fn modify(&self, view: &mut View, f: impl FnOnce(&mut LeaseSet)) {
        if let Some(held) = &mut view.held {
            f(held);
            return;
        }
        self.tx.send_modify(|s| {
            if let Some(s) = s {
                f(s);
            }
        });
    }

    /// How many leases etcd holds, as far as we know.
    fn etcd_leases(&self, view: &View) -> usize {
        let known = match &view.held {
            Some(h) => h.len(),
            None => self.tx.borrow().as_ref().map_or(0, |s| s.len()),
        };
        known.saturating_sub(view.carry_only.len())
    }

    /// Publishes a set held back after a resume: the watch from its revision answered.
    fn release_held(&self, view: &mut View) {
        view.held_until = None;
        if let Some(set) = view.held.take() {
            info!(
                leases = set.len(),
                revision = view.rev,
                "the watch resumed from the lease cache; routing by it"
            );
            self.tx.send_replace(Some(set));
        }
    }

    /// Something changed: the cache is written its interval after the last write (or
    /// after now), so a burst of events costs one write.
    fn cache_changed(&self, view: &mut View) {
        let Some(c) = &self.cache else { return };
        if view.cache_due.is_some() || view.carry_until.is_some() {
            return;
        }
        let now = Instant::now();
        let after = view.cache_written.map_or(now, |t| t.max(now));
        view.cache_due = Some(after + c.every);
    }

    /// Writes the published set (etcd's, at our revision) to the cache. Not while leases
    /// etcd lost are carried: that set is not etcd's at any revision.
    fn write_cache(&self, view: &mut View) {
        view.cache_due = None;
        let (Some(c), Some(cluster)) = (&self.cache, view.cluster) else {
            return;
        };
        if view.carry_until.is_some() || view.held.is_some() {
            return;
        }
        let own = self.own.borrow().clone();
        let b = self.tx.borrow();
        let Some(set) = b.as_ref() else { return };
        match c.write(cluster, view.rev, &own, set) {
            Ok(()) => debug!(
                leases = set.len(),
                revision = view.rev,
                "lease cache written"
            ),
            Err(e) => {
                warn!(error = %e, path = %c.path.display(), "could not write the lease cache; the next start lists")
            }
        }
        drop(b);
        view.cache_written = Some(Instant::now());
    }

    /// Our key, our lease, our node name and public IP: written by us.
    fn is_ours(&self, lease_id: i64, decoded: &Decoded, own: &OwnLease) -> bool {
        lease_id == own.lease_id
            && decoded.as_ref().is_ok_and(|l| {
                l.value.node_name == self.me.node && super::claim::same_address(l, &self.me)
            })
    }

    async fn follow(&mut self, view: &mut View, backoff: &mut Backoff) -> End {
        let mut stream = match self
            .store
            .watch(&self.keys.prefix_dir(), view.rev + 1)
            .await
        {
            Ok(s) => s,
            Err(e) => return End::Broken(e.to_string(), e.is_unreachable()),
        };
        loop {
            let msg = tokio::select! {
                m = stream.next() => m,
                _ = sleep_until(view.carry_until) => {
                    self.end_carry(view);
                    continue;
                }
                _ = sleep_until(view.held_until) => {
                    self.release_held(view);
                    continue;
                }
                _ = sleep_until(view.cache_due) => {
                    self.write_cache(view);
                    continue;
                }
            };
            // Everything etcd has already sent goes into one publish: under churn a copy of
            // the whole lease map per response queued far more work than the events
            // themselves (a new lease once waited 36 s behind 10,000 churning ones).
            let mut applied = false;
            let mut next = Some(msg);
            while let Some(msg) = next.take() {
                match self.take(view, msg) {
                    Ok(had_events) => applied |= had_events,
                    Err(end) => {
                        if applied {
                            self.publish(view);
                        }
                        return end;
                    }
                }
                next = stream.next().now_or_never();
            }
            if applied {
                backoff.reset();
                self.publish(view);
            }
            if view.held.is_some() {
                if applied {
                    self.release_held(view);
                } else if view.held_until.is_none() {
                    // The watch answered (created, not compacted): events since the cache's
                    // revision come next, if there are any.
                    view.held_until = Some(Instant::now() + RESUME_SETTLE);
                }
            }
        }
    }

    /// Folds one watch message into the view; whether it carried events, or why the
    /// watch ends.
    fn take(
        &mut self,
        view: &mut View,
        msg: Result<Option<WatchMsg>, EtcdError>,
    ) -> Result<bool, End> {
        let (header, events) = match msg {
            Ok(Some(WatchMsg::Events { header, events })) => (header, events),
            Ok(Some(WatchMsg::Progress(header))) => {
                if let Some(why) = Self::other_etcd(view, &header) {
                    return Err(End::Restored(why));
                }
                self.progress(view, header.revision);
                return Ok(false);
            }
            Ok(Some(WatchMsg::Compacted(at))) => return Err(End::Compacted(at)),
            Ok(Some(WatchMsg::Canceled(why))) => {
                return Err(End::Broken(format!("watch canceled: {why}"), false));
            }
            // A stream that ends or fails mid-way: etcd went away (stopped, restarted).
            Ok(None) => return Err(End::Broken("stream ended".into(), true)),
            Err(e) => return Err(End::Broken(e.to_string(), e.is_unreachable())),
        };
        if let Some(why) = Self::other_etcd(view, &header) {
            return Err(End::Restored(why));
        }
        if events.is_empty() {
            return Ok(false);
        }
        self.apply(view, events);
        Ok(true)
    }

    /// Every event up to `rev` has come: the set is etcd's as of `rev`. The watch resumes
    /// after it, the cache records it (so a quiet cluster's cache does not fall behind a
    /// compaction for want of events), and a set held after a resume is up to date.
    fn progress(&self, view: &mut View, rev: i64) {
        if rev > view.rev {
            view.rev = rev;
            self.cache_changed(view);
        }
        self.release_held(view);
    }

    fn end_carry(&self, view: &mut View) {
        view.carry_until = None;
        view.carry.clear();
        let gone = std::mem::take(&mut view.carry_only);
        warn!(
            dropped = gone.len(),
            "grace after etcd lost leases is over; leases not re-created are dropped"
        );
        self.modify(view, |set| {
            for k in &gone {
                set.set(k, None);
            }
        });
        view.dirty.extend(gone);
        self.publish(view);
    }

    fn apply(&mut self, view: &mut View, events: Vec<Event>) {
        let before = self.etcd_leases(view);
        let mut removed = Vec::new();
        let own = self.own.borrow().clone();
        for ev in events {
            let (key, rev) = match &ev {
                Event::Put(kv) => (kv.key.clone(), kv.mod_revision),
                Event::Delete { key, mod_revision } => (key.clone(), *mod_revision),
            };
            view.rev = view.rev.max(rev);
            if key == self.keys.config() {
                let value = match &ev {
                    Event::Put(kv) => Some(kv.value.clone()),
                    Event::Delete { .. } => None,
                };
                self.check_config(view, value.as_deref());
                continue;
            }
            let Some(name) = self.keys.name(key.as_bytes()) else {
                continue;
            };
            view.carry.remove(name);
            let carried_only = view.carry_only.remove(name);
            view.dirty.push(name.to_owned());
            match ev {
                Event::Put(kv) => {
                    debug!(key = name, "lease put");
                    let decoded = lease::decode(name, &kv.value, kv.create_revision);
                    if name == own.name && !self.is_ours(kv.lease, &decoded, &own) {
                        self.check_own.notify_one();
                    }
                    self.modify(view, |set| set.set(name, Some(decoded)));
                }
                Event::Delete { .. } => {
                    info!(key = name, "lease gone");
                    if name == own.name {
                        self.check_own.notify_one();
                    }
                    let mut old = None;
                    self.modify(view, |set| {
                        old = set.get(name).cloned();
                        set.set(name, None);
                    });
                    if let Some(d) = old.filter(|_| !carried_only) {
                        removed.push((rev, name.to_owned(), d));
                    }
                }
            }
        }
        self.check_wipe(view, removed, before);
    }

    /// One delete of the whole prefix (all deletes at one revision, most of the keys): an
    /// operator's `etcdctl del --prefix`, not nodes leaving (each expiry is its own
    /// revision). Treated like a restore: the lost leases keep their routes for a while.
    fn check_wipe(&self, view: &mut View, removed: Vec<(i64, String, Decoded)>, before: usize) {
        let mut by_rev: BTreeMap<i64, Leases> = BTreeMap::new();
        for (rev, name, d) in removed {
            by_rev.entry(rev).or_default().insert(name, d);
        }
        let Some(lost) = by_rev.into_values().max_by_key(|l| l.len()) else {
            return;
        };
        if lost.len() >= 2 && lost.len() * 2 >= before {
            self.metrics.etcd_restores.inc();
            error!(
                deleted = lost.len(),
                "most leases were deleted at once (etcd wiped?); re-creating our key"
            );
            self.start_carry(view, lost, true);
        }
    }

    /// The set is changed in place as events come (see [`LeaseSet`]): what is left is to
    /// look at the changed keys for a node-name conflict.
    fn publish(&self, view: &mut View) {
        let dirty = std::mem::take(&mut view.dirty);
        self.cache_changed(view);
        if let Some(held) = view.held.take() {
            self.report_conflicts(view, &held, Some(&dirty));
            view.held = Some(held);
            return;
        }
        let b = self.tx.borrow();
        if let Some(set) = b.as_ref() {
            self.report_conflicts(view, set, Some(&dirty));
        }
    }

    /// Keys other than ours that carry our node name with another address: all of them
    /// after a full publish (or when our lease changed), else only the changed ones.
    fn report_conflicts(&self, view: &mut View, all: &Leases, changed: Option<&[String]>) {
        let own = self.own.borrow().clone();
        let conflict = |k: &String, d: &Decoded| {
            *k != own.name
                && d.as_ref()
                    .is_ok_and(|l| is_conflict(l, &self.me, Some(own.subnet)))
        };
        let changed = changed.filter(|_| view.conflicts_for.as_ref() == Some(&own));
        let mut now = match changed {
            Some(_) => view.conflicts.clone(),
            None => BTreeSet::new(),
        };
        match changed {
            Some(keys) => {
                for k in keys {
                    match all.get(k) {
                        Some(d) if conflict(k, d) => now.insert(k.clone()),
                        _ => now.remove(k),
                    };
                }
            }
            None => now.extend(
                all.iter()
                    .filter(|(k, d)| conflict(k, d))
                    .map(|(k, _)| k.clone()),
            ),
        }
        for k in now.difference(&view.conflicts) {
            error!(key = %k, node = %self.me.node, "another key carries our node name with another public IP: two nodes share a name? Not ours; left alone");
        }
        self.metrics.node_name_conflicts.set(now.len() as i64);
        view.conflicts = now;
        view.conflicts_for = Some(own);
    }

    fn check_config(&self, view: &mut View, value: Option<&[u8]>) {
        let state = match value.map(NetConfig::parse) {
            None => ConfigState::Deleted,
            Some(Ok(c)) if c == self.cfg => ConfigState::Same,
            Some(Ok(c)) => ConfigState::Changed(format!("{c:?}")),
            Some(Err(e)) => ConfigState::Invalid(e.to_string()),
        };
        if state == view.config {
            return;
        }
        let running = self.cfg.describe();
        match &state {
            ConfigState::Same => info!("the network config in etcd matches the running one again"),
            ConfigState::Changed(new) => {
                error!(%running, new = %new, "the network config in etcd changed; still routing by the running config: restart the daemons to apply it")
            }
            ConfigState::Deleted => {
                error!(%running, "the network config was deleted from etcd; still routing by the running config")
            }
            ConfigState::Invalid(e) => {
                error!(%running, error = %e, "the network config in etcd is invalid; still routing by the running config")
            }
        }
        self.metrics
            .config_mismatch
            .set(i64::from(state != ConfigState::Same));
        view.config = state;
    }
}

/// How long a compacted watcher waits before its re-list: uniform in a window of 10 ms per
/// lease (at most 60 s), so however many daemons lose their watch to one compaction, etcd
/// serves about 100 full lists a second rather than all of them at once (1,000 daemons:
/// spread over 10 s). Meanwhile the last set stays published, as on any etcd trouble.
pub fn relist_delay(leases: usize, rng: &mut impl rand::Rng) -> Duration {
    use rand::RngExt;
    let window = Duration::from_millis(10 * leases as u64).min(Duration::from_secs(60));
    window.mul_f64(rng.random::<f64>())
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod lease_set_tests {
    use super::*;

    fn key(i: usize) -> String {
        format!("198.18.{i}.0-24")
    }

    /// A reader sees exactly the keys changed since its cursor; one further behind than the
    /// log, or from another epoch, or with a cursor from the future, reads everything.
    #[test]
    fn changes_since_names_the_changed_keys_or_asks_for_all() {
        let mut s = LeaseSet::new(Leases::new());
        assert_eq!(s.changes_since(None), Changes::All);
        let start = s.cursor();
        assert_eq!(s.changes_since(Some(start)), Changes::Keys(BTreeSet::new()));
        s.set(&key(1), Some(Err("malformed".into())));
        s.set(&key(2), Some(Err("malformed".into())));
        s.set(&key(1), None);
        assert_eq!(
            s.changes_since(Some(start)),
            Changes::Keys([key(1), key(2)].into())
        );
        let mid = s.cursor();
        assert_eq!(s.len(), 1);
        for i in 0..CHANGE_LOG {
            s.set(&key(i % 7), None);
        }
        // `mid` is exactly CHANGE_LOG changes behind: still in the log.
        assert!(matches!(s.changes_since(Some(mid)), Changes::Keys(_)));
        assert_eq!(s.changes_since(Some(start)), Changes::All, "too far behind");
        let other = LeaseSet::new(Leases::new());
        assert_eq!(
            s.changes_since(Some(other.cursor())),
            Changes::All,
            "another epoch"
        );
        let mut ahead = LeaseSet::new(Leases::new());
        ahead.epoch = s.epoch;
        ahead.generation = s.generation + 1;
        assert_eq!(
            s.changes_since(Some(ahead.cursor())),
            Changes::All,
            "a future cursor"
        );
    }
}
