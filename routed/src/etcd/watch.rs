//! The one owner of the etcd view of all leases: lists once at a revision, then follows a
//! watch from the next revision, and publishes the lease map into a `watch` channel.
//!
//! A failed or empty read never replaces what we have: the last good set stays published,
//! so routes stay as they are while etcd is unreachable.

use std::{collections::BTreeMap, sync::Arc};

use etcd_client::{Client, EventType, WatchOptions};
use futures::FutureExt;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use tokio_util::sync::CancellationToken;

use super::{
    EtcdError, Keys,
    codec::{self as lease, Decoded},
};
use crate::{backoff::Backoff, metrics::Metrics};

pub type Leases = BTreeMap<String, Decoded>;

/// `None` until the first complete list: nothing is reconciled against an unknown set.
pub type LeasesRx = watch::Receiver<Option<Arc<Leases>>>;

pub struct Watcher {
    pub client: Client,
    pub keys: Keys,
    pub tx: watch::Sender<Option<Arc<Leases>>>,
    pub metrics: Metrics,
}

enum End {
    /// Our revision was compacted away: deletes may be lost, so re-list and replace.
    Compacted(i64),
    /// The stream broke: resume from the last revision seen. `true` when etcd could not
    /// be reached at all (see `Backoff::next_delay_for`).
    Broken(String, bool),
}

impl Watcher {
    pub async fn run(mut self, shutdown: CancellationToken) {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = self.forever() => {}
        }
    }

    async fn forever(&mut self) {
        let mut backoff = Backoff::etcd();
        loop {
            let (mut rev, mut current) = match self.list().await {
                Ok(v) => v,
                Err(e) => {
                    let d = backoff.next_delay_for(e.is_unreachable());
                    warn!(error = %e, retry_in = ?d, "listing leases failed; keeping the current routes");
                    tokio::time::sleep(d).await;
                    continue;
                }
            };
            self.tx.send_replace(Some(current.clone()));
            loop {
                match self.follow(&mut rev, &mut current, &mut backoff).await {
                    End::Compacted(at) => {
                        self.metrics.watch_restarts.inc();
                        warn!(
                            revision = rev,
                            compacted = at,
                            "watch revision compacted; listing again"
                        );
                        break;
                    }
                    End::Broken(e, unreachable) => {
                        self.metrics.watch_restarts.inc();
                        let d = backoff.next_delay_for(unreachable);
                        warn!(error = %e, revision = rev, retry_in = ?d, "lease watch broke; resuming");
                        tokio::time::sleep(d).await;
                    }
                }
            }
        }
    }

    async fn list(&mut self) -> Result<(i64, Arc<Leases>), EtcdError> {
        let (rev, entries) = super::list(&mut self.client, &self.keys).await?;
        if entries.is_empty() {
            // Our own key is always there, so an empty answer is not a real cluster state.
            return Err(EtcdError::Empty);
        }
        info!(leases = entries.len(), revision = rev, "listed leases");
        Ok((
            rev,
            Arc::new(entries.into_iter().map(|(k, e)| (k, e.decoded)).collect()),
        ))
    }

    async fn follow(
        &mut self,
        rev: &mut i64,
        current: &mut Arc<Leases>,
        backoff: &mut Backoff,
    ) -> End {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(*rev + 1);
        let mut stream =
            match super::timeout("watch", self.client.watch(self.keys.subnets(), Some(opts))).await
            {
                Ok(s) => s,
                Err(e) => return End::Broken(e.to_string(), e.is_unreachable()),
            };
        loop {
            let resp = match stream.message().await {
                Ok(Some(r)) => r,
                // A stream that ends or fails mid-way: etcd went away (stopped, restarted).
                Ok(None) => return End::Broken("stream ended".into(), true),
                Err(e) => {
                    let e = EtcdError::Client(e);
                    return End::Broken(e.to_string(), e.is_unreachable());
                }
            };
            if let Some(end) = self.apply(&resp, rev, current, backoff) {
                return end;
            }
            // Coalesce: fold in every response already received, then publish once. One
            // publish per response cost a copy of the whole map each (the channel holds a
            // reference), and under churn the watch fell behind by tens of seconds.
            let mut end = None;
            while end.is_none()
                && let Some(next) = stream.message().now_or_never()
            {
                end = match next {
                    Ok(Some(r)) => self.apply(&r, rev, current, backoff),
                    Ok(None) => Some(End::Broken("stream ended".into(), true)),
                    Err(e) => {
                        let e = EtcdError::Client(e);
                        Some(End::Broken(e.to_string(), e.is_unreachable()))
                    }
                };
            }
            self.tx.send_if_modified(|old| {
                let same = old.as_ref().is_some_and(|o| Arc::ptr_eq(o, current));
                *old = Some(current.clone());
                !same
            });
            if let Some(end) = end {
                return end;
            }
        }
    }

    /// One watch response into the map; `Some` when the watch must end.
    fn apply(
        &self,
        resp: &etcd_client::WatchResponse,
        rev: &mut i64,
        current: &mut Arc<Leases>,
        backoff: &mut Backoff,
    ) -> Option<End> {
        if resp.compact_revision() != 0 {
            return Some(End::Compacted(resp.compact_revision()));
        }
        if resp.canceled() {
            return Some(End::Broken(
                format!("watch canceled: {}", resp.cancel_reason()),
                false,
            ));
        }
        if resp.events().is_empty() {
            return None;
        }
        backoff.reset();
        let map = Arc::make_mut(current);
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            *rev = (*rev).max(kv.mod_revision());
            let Some(name) = self.keys.name(kv.key()) else {
                continue;
            };
            match ev.event_type() {
                EventType::Put => {
                    debug!(key = name, "lease put");
                    map.insert(
                        name.to_owned(),
                        lease::decode(name, kv.value(), kv.create_revision()),
                    );
                }
                EventType::Delete => {
                    info!(key = name, "lease gone");
                    map.remove(name);
                }
            }
        }
        None
    }
}
