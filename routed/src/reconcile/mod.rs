//! The reconciler: the one owner of the kernel view. Wakes on a new lease set, a netlink
//! event (debounced), a slow resync tick, or a retry after failed routes; each pass is
//! compute → dump → plan → apply.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{Notify, watch};
use tracing::{Instrument, info, info_span, warn};

use tokio_util::sync::CancellationToken;

use ipnetwork::IpNetwork;

use self::{
    apply::Applied,
    plan::HostRoute,
    state::{Pending, Problem, State, Touched},
    validate::{Reason, Rejected},
};
use crate::{
    backoff::Backoff,
    config::NetConfig,
    etcd::watch::{Changes, Cursor, LeasesRx},
    http::Ready,
    kernel::{LocalView, RouteTable, events::OwnDeletes},
    me::OwnLease,
    metrics::{Metrics, ReasonLabel},
};

pub mod apply;
pub mod compute;
pub mod plan;
pub mod state;
pub mod validate;

/// Netlink events come in bursts (a link flap is several messages): wait this long.
const DEBOUNCE: Duration = Duration::from_millis(5);
/// More changes than this in one pass are logged as one summary line.
const LOG_EACH_UP_TO: usize = 20;

/// What a reconciler is built from.
pub struct ReconcilerConfig<R> {
    pub table: R,
    pub cfg: NetConfig,
    pub metrics: Metrics,
    pub ready: Arc<Ready>,
    pub leases: LeasesRx,
    pub own: watch::Receiver<OwnLease>,
    /// Netlink events notify this (see `kernel::events`).
    pub kick: Arc<Notify>,
    /// Set by every kernel event, also those too small to wake a pass (a pod's plumbing):
    /// a lease-event pass then reads the kernel instead of planning on an outdated view.
    pub stale: Arc<AtomicBool>,
    /// Routes we delete are noted here first, so their events wake nothing.
    pub deletes: Arc<OwnDeletes>,
    pub resync: Duration,
    /// This node's uplink MTU (routes to peers with another one carry the smaller).
    pub mtu: Option<u32>,
}

pub struct Reconciler<R> {
    table: R,
    cfg: NetConfig,
    metrics: Metrics,
    ready: Arc<Ready>,
    leases: LeasesRx,
    own: watch::Receiver<OwnLease>,
    kick: Arc<Notify>,
    stale: Arc<AtomicBool>,
    deletes: Arc<OwnDeletes>,
    resync: Duration,
    mtu: Option<u32>,
    /// What has been reported once already (unreachable peers, rejected leases).
    reported: BTreeSet<(String, String)>,
    /// Routes we installed or found in place, to tell a repair from a first install.
    installed: BTreeSet<HostRoute>,
    /// The node's addresses and foreign routes as last read, and whether `installed` is
    /// the kernel's owned set (the last pass read the kernel, or applied cleanly since).
    view: Option<LocalView>,
    synced: bool,
    /// What is wanted, kept between passes (see [`state`]), and how far into the lease
    /// set it is.
    state: Option<State>,
    seen: Option<Cursor>,
    /// Destinations whose route the kernel refused in the last pass.
    refused: BTreeSet<IpNetwork>,
}

impl<R: RouteTable> Reconciler<R> {
    pub fn new(c: ReconcilerConfig<R>) -> Self {
        Reconciler {
            table: c.table,
            cfg: c.cfg,
            metrics: c.metrics,
            ready: c.ready,
            leases: c.leases,
            own: c.own,
            kick: c.kick,
            stale: c.stale,
            deletes: c.deletes,
            resync: c.resync,
            mtu: c.mtu,
            reported: BTreeSet::new(),
            installed: BTreeSet::new(),
            view: None,
            synced: false,
            state: None,
            seen: None,
            refused: BTreeSet::new(),
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut resync =
            tokio::time::interval_at(tokio::time::Instant::now() + self.resync, self.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = Backoff::etcd();
        let mut read_kernel = true;
        loop {
            let failed = self.pass_with(read_kernel).await;
            let retry = match failed {
                0 => {
                    backoff.reset();
                    None
                }
                _ => Some(tokio::time::Instant::now() + backoff.next_delay()),
            };
            // A new lease set alone needs no kernel read: nothing but us changed the kernel
            // since the last one (anything else would have sent a netlink event).
            read_kernel = tokio::select! {
                _ = shutdown.cancelled() => return,
                Ok(()) = self.leases.changed() => false,
                Ok(()) = self.own.changed() => false,
                _ = self.kick.notified() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    true
                }
                _ = resync.tick() => true,
                _ = sleep_until(retry), if retry.is_some() => true,
            };
        }
    }

    /// One pass that reads the kernel; returns the number of routes that failed (0 when
    /// in sync).
    #[cfg(test)]
    pub async fn pass(&mut self) -> usize {
        self.pass_with(true).await
    }

    /// One pass. Without `read_kernel` (a lease event) and while in sync, it plans against
    /// the view and routes of the last read plus what it applied since, and only for the
    /// leases that changed (see [`state`]): per lease event a node then does work in the
    /// changed leases and the one route change, not two dumps and a pass over N leases
    /// (measured at N = 1,000: see BENCHMARKS.md, "1,000 nodes"). Netlink events, the
    /// resync tick and every retry still read the kernel and compute everything anew.
    pub async fn pass_with(&mut self, read_kernel: bool) -> usize {
        if self.leases.borrow().is_none() {
            return 0;
        }
        let own = self.own.borrow_and_update().clone();
        let start = Instant::now();
        // `swap` before the read: an event during it leaves the flag set for the next pass.
        let stale = self.stale.swap(false, Ordering::SeqCst);
        let read_kernel = read_kernel || stale || !self.synced || self.view.is_none();
        let span = info_span!("reconcile", read_kernel);
        if read_kernel {
            self.deletes.clear();
        }
        let failed = async {
            let view = match self.view.take().filter(|_| !read_kernel) {
                Some(v) => Ok(v),
                None => self.table.local_view().await,
            };
            let actual = match read_kernel {
                true => self.table.list_owned().await.map(Some),
                false => Ok(None),
            };
            let (view, actual) = match (view, actual) {
                (Ok(v), Ok(a)) => (v, a),
                (Err(e), _) | (_, Err(e)) => {
                    warn!(error = %e, "reading the kernel failed; will retry");
                    return 1;
                }
            };
            let (pending, mut state) = self.changes(&own, &view, read_kernel);
            for ip in state.lookups(&view, &pending) {
                // One failed lookup makes one peer unreachable, never the whole pass a
                // failure: what a lease names must not decide this node's readiness.
                let hop = self.table.lookup(ip).await.map_err(|e| {
                    tracing::debug!(%ip, error = %e, "next-hop lookup failed");
                });
                state.learn(ip, hop);
            }
            let touched = state.settle(self.mtu, pending);
            self.view = Some(view);
            let failed = self.apply(&state, touched, actual, start.elapsed()).await;
            self.state = Some(state);
            failed
        }
        .instrument(span)
        .await;
        self.synced = failed == 0;
        self.metrics.reconcile.inc();
        self.metrics
            .reconcile_duration
            .observe(start.elapsed().as_secs_f64());
        self.ready
            .routes_in_sync
            .store(failed == 0, Ordering::Relaxed);
        failed
    }

    /// The leases changed since the last pass, checked, and the state to settle them in:
    /// a new one (every lease) after a kernel read, a new lease of ours or a replaced set.
    /// Synchronous: the lease set's borrow is never held across an `.await`.
    fn changes(&mut self, own: &OwnLease, view: &LocalView, read_kernel: bool) -> (Pending, State) {
        let b = self.leases.borrow_and_update();
        let Some(set) = b.as_ref() else {
            return (Pending::default(), State::new(own));
        };
        let kept = self.state.take().filter(|s| !read_kernel && s.own() == own);
        let changes = match &kept {
            Some(_) => set.changes_since(self.seen),
            None => Changes::All,
        };
        self.seen = Some(set.cursor());
        match (kept, changes) {
            (Some(mut s), Changes::Keys(keys)) => {
                let changed = keys.iter().map(|k| (k.as_str(), set.get(k)));
                let p = s.check(&self.cfg, view, changed, false);
                (p, s)
            }
            _ => {
                let mut s = State::new(own);
                let all = set.iter().map(|(k, d)| (k.as_str(), Some(d)));
                let p = s.check(&self.cfg, view, all, true);
                (p, s)
            }
        }
    }

    /// Plans and applies: everything (`touched` all, or the kernel was read), or only the
    /// touched destinations and those the kernel refused last time (retried every pass, as
    /// a full plan would). Returns the failures of this node (not those of one route the
    /// kernel refused for what a lease says: those become `kernel-refused` rejections,
    /// retried on the next pass but never a retry loop, and never a readiness change).
    async fn apply(
        &mut self,
        state: &State,
        touched: Touched,
        kernel: Option<BTreeSet<HostRoute>>,
        read: Duration,
    ) -> usize {
        let only = match (&kernel, touched) {
            (None, Touched::Dsts(mut d)) => {
                d.extend(self.refused.iter().copied());
                Some(d)
            }
            _ => None,
        };
        let sub;
        let (desired, actual) = match (&only, kernel) {
            (Some(d), _) => {
                sub = at(&state.desired, d);
                (&sub, at(&self.installed, d))
            }
            (None, Some(k)) => (&state.desired, k),
            (None, None) => (&state.desired, self.installed.clone()),
        };
        let plan = plan::plan(desired, &actual);
        let t = Instant::now();
        self.deletes.expect(plan.remove.iter().map(|r| r.dst));
        let applied = apply::apply(&self.table, &plan).await;
        for (r, _) in applied
            .errors
            .iter()
            .filter(|(r, _)| plan.remove.contains(r))
        {
            self.deletes.unexpect(&r.dst);
        }
        self.log_applied(&applied, &actual, (read, t.elapsed()));
        let (refused, failed): (Vec<_>, Vec<_>) = applied
            .errors
            .iter()
            .partition(|(_, e)| e.is_route_specific());
        let refused: Vec<Rejected> = refused
            .iter()
            .filter_map(|(r, e)| {
                Some(Rejected {
                    key: state.key_of(r)?.to_owned(),
                    reason: Reason::KernelRefused,
                    detail: e.to_string(),
                })
            })
            .collect();
        self.refused = applied
            .errors
            .iter()
            .filter(|(_, e)| e.is_route_specific())
            .map(|(r, _)| r.dst)
            .collect();
        self.report(state, &refused);
        let failed_dst: BTreeSet<_> = applied.errors.iter().map(|(r, _)| r.dst).collect();
        let keep = |r: &&HostRoute| !failed_dst.contains(&r.dst);
        match &only {
            None => self.installed = desired.iter().filter(keep).copied().collect(),
            Some(dsts) => {
                for r in at(&self.installed, dsts) {
                    self.installed.remove(&r);
                }
                self.installed.extend(desired.iter().filter(keep).copied());
            }
        }
        // Routes to peers: our own `unreachable` routes are not counted.
        let own = state.own().subnets();
        let unreachable = own
            .iter()
            .filter(|s| self.installed.contains(&HostRoute::unreachable(**s)))
            .count();
        self.metrics
            .routes_installed
            .set((self.installed.len() - unreachable) as i64);
        failed.len()
    }

    fn log_applied(
        &self,
        a: &Applied,
        actual: &BTreeSet<HostRoute>,
        (read, apply): (Duration, Duration),
    ) {
        let repaired: Vec<_> = a
            .added
            .iter()
            .filter(|r| self.installed.contains(r) && !actual.contains(r))
            .collect();
        self.metrics.routes_repaired.inc_by(repaired.len() as u64);
        if a.added.len() + a.removed.len() > LOG_EACH_UP_TO {
            info!(
                added = a.added.len(),
                removed = a.removed.len(),
                repaired = repaired.len(),
                read_ms = read.as_millis() as u64,
                apply_ms = apply.as_millis() as u64,
                "routes applied"
            );
        } else {
            for r in &a.removed {
                info!(dst = %r.dst, route = %r, "route removed");
            }
            for r in &a.added {
                let what = if repaired.contains(&r) {
                    "route repaired"
                } else {
                    "route added"
                };
                info!(dst = %r.dst, route = %r, "{what}");
            }
        }
        // A route the kernel refused is reported once, as a rejected lease.
        for (r, e) in a.errors.iter().filter(|(_, e)| !e.is_route_specific()) {
            warn!(dst = %r.dst, gw = %r.via, error = %e, "route failed");
        }
    }

    /// Metrics every pass; a log line only when something newly goes wrong. Walks the
    /// leases with a problem only, not all of them.
    fn report(&mut self, state: &State, refused: &[Rejected]) {
        self.metrics.peers.set(state.peers() as i64);
        let mut unreachable = 0;
        let mut by_reason = [0i64; Reason::ALL.len()];
        let mut now = BTreeSet::new();
        let mut rejected = |key: &str, reason: Reason, detail: &str, now: &mut BTreeSet<_>| {
            if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
                by_reason[i] += 1;
            }
            let k = (key.to_owned(), reason.as_str().to_owned());
            if !self.reported.contains(&k) {
                warn!(key = ?key, reason = reason.as_str(), detail = ?detail, "lease rejected");
            }
            now.insert(k);
        };
        for p in state.problems() {
            match p {
                Problem::Unreachable { key, via } => {
                    unreachable += 1;
                    let gw = via.map(|g| g.to_string()).unwrap_or_else(|| "none".into());
                    let k = (key.to_owned(), "unreachable".to_owned());
                    if !self.reported.contains(&k) {
                        let leases = self.leases.borrow();
                        let lease = leases.as_ref().and_then(|s| s.get(key)?.as_ref().ok());
                        let node = lease.map_or("", |l| l.value.node_name.as_str());
                        warn!(key = ?key, node = ?node, gateway = %gw, "peer not on-link (reached through a router); route not installed");
                    }
                    now.insert(k);
                }
                Problem::Rejected {
                    key,
                    reason,
                    detail,
                } => rejected(key, reason, detail, &mut now),
            }
        }
        for r in refused {
            rejected(&r.key, r.reason, &r.detail, &mut now);
        }
        self.metrics.peers_unreachable.set(unreachable);
        for (reason, n) in Reason::ALL.iter().zip(by_reason) {
            self.metrics
                .leases_rejected
                .get_or_create(&ReasonLabel {
                    reason: reason.as_str().into(),
                })
                .set(n);
        }
        self.reported = now;
    }
}

/// The routes of `set` at the destinations `dsts`.
fn at(set: &BTreeSet<HostRoute>, dsts: &BTreeSet<IpNetwork>) -> BTreeSet<HostRoute> {
    let mut out = BTreeSet::new();
    for d in dsts {
        let from = HostRoute::via(*d, std::net::IpAddr::V4(0.into()));
        out.extend(set.range(from..).take_while(|r| r.dst == *d).copied());
    }
    out
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "cost_tests.rs"]
mod cost_tests;
#[cfg(test)]
#[path = "state_tests.rs"]
mod state_tests;
#[cfg(test)]
mod tests;
