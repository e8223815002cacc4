//! The keeper of this node's key: one keep-alive every TTL/4, retried with backoff on
//! failure; when the watcher saw our key touched by someone else, a check that restores it
//! (re-created if deleted, rewritten if overwritten, both guarded) within a second. If the
//! lease is gone (node cut off for longer than the TTL, etcd restored or wiped), the subnet
//! is claimed again — the same one when still free, through the same guarded transaction.

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{
    EtcdError, Keys,
    claim::{self, Claim},
    codec,
    store::{Kv, Store},
};
use crate::{
    backoff::Backoff,
    config::NetConfig,
    me::{Me, OwnLease},
    metrics::{CauseLabel, Metrics},
};

pub struct KeepAlive<S> {
    pub store: S,
    pub keys: Keys,
    pub cfg: NetConfig,
    pub me: Me,
    pub ttl: i64,
    pub own: watch::Sender<OwnLease>,
    pub metrics: Metrics,
    /// The watcher's "look at our key now".
    pub check_own: Arc<Notify>,
}

enum Next {
    KeepAlive,
    Check,
}

/// What a check found.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    Fine,
    Restored(&'static str),
    Reclaimed,
    /// A guarded write lost a race: look again soon.
    Again,
}

impl<S: Store> KeepAlive<S> {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let period = Duration::from_secs((self.ttl / 4).max(1) as u64);
        let mut backoff = Backoff::etcd();
        // Restores are spaced out by their own backoff: two parties fighting over one key
        // (an operator's script, a twin daemon) cost etcd at most one write per 30 s each.
        let mut restores = Backoff::etcd();
        let mut not_before = Instant::now();
        let mut wait = period;
        let mut next = Next::KeepAlive;
        loop {
            let check = self.check_own.clone();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = check.notified() => next = Next::Check,
            }
            (wait, next) = match next {
                Next::KeepAlive => self.keep_alive(&mut backoff, &shutdown, period).await,
                Next::Check => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep_until(not_before) => {}
                    }
                    match self.check(&shutdown).await {
                        Ok(Checked::Fine | Checked::Reclaimed) => {
                            restores.reset();
                            (period, Next::KeepAlive)
                        }
                        Ok(Checked::Restored(_)) => {
                            not_before = Instant::now() + restores.next_delay();
                            (period, Next::KeepAlive)
                        }
                        Ok(Checked::Again) => (backoff.next_delay(), Next::Check),
                        Err(e) => {
                            let d = backoff.next_delay_for(e.is_unreachable());
                            warn!(error = %e, retry_in = ?d, "checking our key failed");
                            (d, Next::Check)
                        }
                    }
                }
            };
        }
    }

    async fn keep_alive(
        &mut self,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
        period: Duration,
    ) -> (Duration, Next) {
        let id = self.own.borrow().lease_id;
        match self.store.keep_alive(id).await {
            Ok(true) => {
                backoff.reset();
                (period, Next::KeepAlive)
            }
            Ok(false) => {
                let d = self.reclaim(shutdown).await.unwrap_or(period);
                (d, Next::KeepAlive)
            }
            Err(e) => {
                self.metrics.lease_renewal_failures.inc();
                let d = backoff.next_delay_for(e.is_unreachable());
                warn!(error = %e, retry_in = ?d, "lease renewal failed; routes and subnet stay as they are");
                (d, Next::KeepAlive)
            }
        }
    }

    /// Reads our key and our lease, and puts back what someone else changed.
    pub async fn check(&mut self, shutdown: &CancellationToken) -> Result<Checked, EtcdError> {
        let own = self.own.borrow().clone();
        let key = self.keys.subnet(&own.name);
        let (_, kv) = self.store.get(&key).await?;
        if !self.store.keep_alive(own.lease_id).await? {
            self.reclaim(shutdown).await;
            return Ok(Checked::Reclaimed);
        }
        let want = claim::value_of(&self.me, own.ipv6_subnet);
        let Some(kv) = kv else {
            if !self
                .store
                .create(&key, codec::encode(&want), own.lease_id)
                .await?
            {
                return Ok(Checked::Again);
            }
            return Ok(self.restored("deleted", &key, None));
        };
        let value = codec::decode(&own.name, &kv.value, kv.create_revision);
        if kv.lease == own.lease_id && value.as_ref().is_ok_and(|l| l.value == want) {
            return Ok(Checked::Fine);
        }
        let put = self
            .store
            .put_if(&key, codec::encode(&want), own.lease_id, kv.mod_revision);
        if !put.await? {
            return Ok(Checked::Again);
        }
        Ok(self.restored("overwritten", &key, Some(&kv)))
    }

    fn restored(&self, cause: &'static str, key: &str, found: Option<&Kv>) -> Checked {
        let found = found.map(|k| String::from_utf8_lossy(&k.value).into_owned());
        error!(%key, cause, found = ?found, "our key was changed by someone else; restored it");
        self.metrics
            .own_key_restores
            .get_or_create(&CauseLabel {
                cause: cause.into(),
            })
            .inc();
        Checked::Restored(cause)
    }

    /// The lease is gone: claim again, preferring the subnets we had.
    async fn reclaim(&mut self, shutdown: &CancellationToken) -> Option<Duration> {
        let old = self.own.borrow().clone();
        error!(subnet = %old.subnet, lease = old.lease_id, "our etcd lease is gone; claiming a subnet again");
        let claim = Claim {
            keys: &self.keys,
            cfg: &self.cfg,
            me: &self.me,
            ttl: self.ttl,
            prefer: Some((old.subnet, old.ipv6_subnet)),
        };
        let got = tokio::select! {
            _ = shutdown.cancelled() => return None,
            // A full pool (someone took our subnet meanwhile) is waited out, as at start.
            r = claim::acquire_waiting(&self.store, &claim, None, |e| {
                self.metrics.subnet_pool_exhausted.set(i64::from(e));
            }) => r.map(|(own, _)| own),
        };
        match got {
            Ok(new) => {
                if new.subnet != old.subnet {
                    error!(old = %old.subnet, new = %new.subnet, "subnet changed: pods need new addresses");
                } else {
                    info!(subnet = %new.subnet, lease = new.lease_id, "claimed our subnet again");
                }
                self.metrics
                    .own_key_restores
                    .get_or_create(&CauseLabel {
                        cause: "lease-lost".into(),
                    })
                    .inc();
                self.own.send_replace(new);
                None
            }
            Err(e) => {
                error!(error = %e, "could not claim a subnet again");
                Some(Duration::from_secs(30))
            }
        }
    }
}
