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

use self::{
    apply::Applied,
    compute::Computed,
    plan::HostRoute,
    validate::{Reason, Rejected},
};
use crate::{
    backoff::Backoff,
    config::NetConfig,
    etcd::watch::LeasesRx,
    http::Ready,
    kernel::{Kind, LocalView, RouteTable},
    me::OwnLease,
    metrics::{Metrics, ReasonLabel},
};

pub mod apply;
pub mod compute;
pub mod plan;
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
            resync: c.resync,
            mtu: c.mtu,
            reported: BTreeSet::new(),
            installed: BTreeSet::new(),
            view: None,
            synced: false,
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
    /// the view and routes of the last read plus what it applied since: per lease event a
    /// node then does work in memory and the one route change, not two dumps of N routes
    /// (measured at N = 1,000: see BENCHMARKS.md, "1,000 nodes"). Netlink events, the
    /// resync tick and every retry still read the kernel.
    pub async fn pass_with(&mut self, read_kernel: bool) -> usize {
        let Some(leases) = self.leases.borrow_and_update().clone() else {
            return 0;
        };
        let own = self.own.borrow_and_update().clone();
        let start = Instant::now();
        // `swap` before the read: an event during it leaves the flag set for the next pass.
        let stale = self.stale.swap(false, Ordering::SeqCst);
        let read_kernel = read_kernel || stale || !self.synced || self.view.is_none();
        let span = info_span!("reconcile", leases = leases.len(), read_kernel);
        let failed = async {
            let view = match self.view.take().filter(|_| !read_kernel) {
                Some(v) => Ok(v),
                None => self.table.local_view().await,
            };
            let actual = match read_kernel {
                true => self.table.list_owned().await,
                false => Ok(self.installed.clone()),
            };
            match (view, actual) {
                (Ok(v), Ok(a)) => {
                    let here = compute::Here {
                        own: Some(&own),
                        mtu: self.mtu,
                    };
                    let c = compute::compute_in(&self.table, &self.cfg, here, &leases, &v);
                    let c = c.await;
                    self.view = Some(v);
                    self.apply(c, a, start.elapsed()).await
                }
                (Err(e), _) | (_, Err(e)) => {
                    warn!(error = %e, "reading the kernel failed; will retry");
                    1
                }
            }
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

    /// Applies the plan; returns the failures of this node (not those of one route the
    /// kernel refused for what a lease says: those become `kernel-refused` rejections,
    /// retried on the next pass but never a retry loop, and never a readiness change).
    async fn apply(
        &mut self,
        mut c: Computed,
        actual: BTreeSet<HostRoute>,
        read: Duration,
    ) -> usize {
        let plan = plan::plan(&c.desired, &actual);
        let t = Instant::now();
        let applied = apply::apply(&self.table, &plan).await;
        self.log_applied(&applied, &actual, (read, t.elapsed()));
        let (refused, failed): (Vec<_>, Vec<_>) = applied
            .errors
            .iter()
            .partition(|(_, e)| e.is_route_specific());
        c.rejected.extend(refused.iter().filter_map(|(r, e)| {
            let p = c.peers.iter().find(|p| p.routes.contains(r))?;
            Some(Rejected {
                key: p.key.clone(),
                reason: Reason::KernelRefused,
                detail: e.to_string(),
            })
        }));
        self.report(&c);
        let failed_dst: BTreeSet<_> = applied.errors.iter().map(|(r, _)| r.dst).collect();
        self.installed = c
            .desired
            .iter()
            .filter(|r| !failed_dst.contains(&r.dst))
            .copied()
            .collect();
        // Routes to peers: our own `unreachable` route is not counted.
        let to_peers = self.installed.iter().filter(|r| r.kind == Kind::Via);
        self.metrics.routes_installed.set(to_peers.count() as i64);
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

    /// Metrics every pass; a log line only when something newly goes wrong.
    fn report(&mut self, c: &Computed) {
        self.metrics.peers.set(c.peers.len() as i64);
        let unreachable: Vec<_> = c.unreachable().collect();
        self.metrics.peers_unreachable.set(unreachable.len() as i64);
        for reason in Reason::ALL {
            let n = c.rejected.iter().filter(|r| r.reason == reason).count();
            self.metrics
                .leases_rejected
                .get_or_create(&ReasonLabel {
                    reason: reason.as_str().into(),
                })
                .set(n as i64);
        }
        let mut now = BTreeSet::new();
        for p in unreachable {
            let gw = p
                .unreachable_via
                .flatten()
                .map(|g| g.to_string())
                .unwrap_or_else(|| "none".into());
            let k = (p.key.clone(), "unreachable".to_owned());
            if !self.reported.contains(&k) {
                warn!(key = ?p.key, node = ?p.node, gateway = %gw, "peer not on-link (reached through a router); route not installed");
            }
            now.insert(k);
        }
        for r in &c.rejected {
            let k = (r.key.clone(), r.reason.as_str().to_owned());
            if !self.reported.contains(&k) {
                warn!(key = ?r.key, reason = r.reason.as_str(), detail = ?r.detail, "lease rejected");
            }
            now.insert(k);
        }
        self.reported = now;
    }
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
