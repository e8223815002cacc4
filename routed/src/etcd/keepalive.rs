//! Keeps this node's etcd lease alive: one keep-alive every TTL/4, retried with backoff on
//! failure. If the lease is gone anyway (node cut off for longer than the TTL), the subnet
//! is claimed again — the same one when still free, through the same guarded transaction.

use std::time::Duration;

use etcd_client::Client;
use tokio::sync::watch;
use tracing::{error, warn};

use tokio_util::sync::CancellationToken;

use super::{
    Keys,
    claim::{self as lease, Claim},
};
use crate::{
    backoff::Backoff,
    config::NetConfig,
    me::{Me, OwnLease},
    metrics::Metrics,
};

pub struct KeepAlive {
    pub client: Client,
    pub keys: Keys,
    pub cfg: NetConfig,
    pub me: Me,
    pub ttl: i64,
    pub own: watch::Sender<OwnLease>,
    pub metrics: Metrics,
}

impl KeepAlive {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let period = Duration::from_secs((self.ttl / 4).max(1) as u64);
        let mut backoff = Backoff::etcd();
        let mut wait = period;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let id = self.own.borrow().lease_id;
            wait = match lease::alive(&mut self.client, id).await {
                Ok(true) => {
                    backoff.reset();
                    period
                }
                Ok(false) => self.reclaim(&shutdown).await.unwrap_or(period),
                Err(e) => {
                    self.metrics.lease_renewal_failures.inc();
                    let d = backoff.next_delay();
                    warn!(error = %e, retry_in = ?d, "lease renewal failed; routes and subnet stay as they are");
                    d
                }
            };
        }
    }

    /// The lease expired: claim again, preferring the subnets we had.
    async fn reclaim(&mut self, shutdown: &CancellationToken) -> Option<Duration> {
        let old = self.own.borrow().clone();
        error!(subnet = %old.subnet, lease = old.lease_id, "our etcd lease expired; claiming a subnet again");
        let claim = Claim {
            keys: &self.keys,
            cfg: &self.cfg,
            me: &self.me,
            ttl: self.ttl,
            prefer: Some((old.subnet, old.ipv6_subnet)),
        };
        let got = tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = lease::acquire(&mut self.client, &claim) => r,
        };
        match got {
            Ok(new) => {
                if new.subnet != old.subnet {
                    error!(old = %old.subnet, new = %new.subnet, "subnet changed: pods need new addresses");
                }
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
