//! The seam in front of etcd: the few operations the daemon needs, in its own terms (keys,
//! values, revisions, lease ids), with the real client behind it. Claim, keep-alive and
//! watch take a `Store`, so their logic runs in unit tests against `etcd::fake`.

use std::future::Future;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};

use super::{EtcdError, REQUEST_TIMEOUT, timeout};

/// One key as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// The etcd lease the key is attached to (0: none).
    pub lease: i64,
}

/// Which etcd answered, and at which revision: how a restored or replaced etcd is told.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub cluster_id: u64,
    pub member_id: u64,
    pub revision: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(Kv),
    Delete { key: String, mod_revision: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMsg {
    /// Events (none in the "created" answer).
    Events {
        header: Header,
        events: Vec<Event>,
    },
    /// A progress notification: every event up to the header's revision has been sent
    /// (etcd sends one to a watcher that has caught up and seen nothing for a while).
    Progress(Header),
    /// The start revision was compacted away: deletes may be lost.
    Compacted(i64),
    Canceled(String),
}

#[allow(async_fn_in_trait)]
pub trait WatchStream {
    /// The next message; `Ok(None)` when the stream ended.
    async fn next(&mut self) -> Result<Option<WatchMsg>, EtcdError>;
}

/// Every method is bounded in time except the watch stream itself.
#[allow(async_fn_in_trait)]
pub trait Store: Clone {
    type Watch: WatchStream;
    fn get(&self, key: &str) -> impl Future<Output = Result<(Header, Option<Kv>), EtcdError>>;
    /// Every key under `prefix`, at one revision.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<(Header, Vec<Kv>), EtcdError>>;
    /// Events under `prefix` from revision `from` on.
    fn watch(
        &self,
        prefix: &str,
        from: i64,
    ) -> impl Future<Output = Result<Self::Watch, EtcdError>>;
    /// Puts `value` bound to `lease` only if `key` does not exist; whether it did.
    fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
    ) -> impl Future<Output = Result<bool, EtcdError>>;
    /// As [`Store::create`], and only if no key lies in any `absent` range `[start, end)`;
    /// whether it did. One transaction: a subnet claimed under another key form (flannel's
    /// `<v4>-<len>&<v6>-<len>` next to `<v4>-<len>`) is a lost race, not a second owner.
    fn create_unless(
        &self,
        key: &str,
        absent: &[(String, String)],
        value: Vec<u8>,
        lease: i64,
    ) -> impl Future<Output = Result<bool, EtcdError>>;
    /// Puts only if `key` is still at `mod_revision`; whether it did.
    fn put_if(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
        mod_revision: i64,
    ) -> impl Future<Output = Result<bool, EtcdError>>;
    /// Deletes only if `key` is still at `mod_revision`; whether it did.
    fn delete_if(
        &self,
        key: &str,
        mod_revision: i64,
    ) -> impl Future<Output = Result<bool, EtcdError>>;
    fn grant(&self, ttl: i64) -> impl Future<Output = Result<i64, EtcdError>>;
    /// One keep-alive: `false` when the lease no longer exists.
    fn keep_alive(&self, id: i64) -> impl Future<Output = Result<bool, EtcdError>>;
    fn revoke(&self, id: i64) -> impl Future<Output = Result<(), EtcdError>>;
}

// === impl EtcdStore ===

/// The real store. `Client` is a cheap handle over one channel, so each call clones it.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
}

const _: fn() = || {
    fn assert<T: Store>() {}
    assert::<EtcdStore>();
};

impl EtcdStore {
    pub fn new(client: Client) -> EtcdStore {
        EtcdStore { client }
    }
}

fn header(h: Option<&etcd_client::ResponseHeader>) -> Header {
    h.map(|h| Header {
        cluster_id: h.cluster_id(),
        member_id: h.member_id(),
        revision: h.revision(),
    })
    .unwrap_or_default()
}

fn kv(k: &etcd_client::KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(k.key()).into_owned(),
        value: k.value().to_vec(),
        create_revision: k.create_revision(),
        mod_revision: k.mod_revision(),
        lease: k.lease(),
    }
}

impl EtcdStore {
    async fn txn(&self, what: &'static str, guard: Compare, op: TxnOp) -> Result<bool, EtcdError> {
        let txn = Txn::new().when([guard]).and_then([op]);
        Ok(timeout(what, self.client.clone().txn(txn))
            .await?
            .succeeded())
    }
}

impl Store for EtcdStore {
    type Watch = EtcdWatch;

    async fn get(&self, key: &str) -> Result<(Header, Option<Kv>), EtcdError> {
        let resp = timeout("get", self.client.clone().get(key, None)).await?;
        Ok((header(resp.header()), resp.kvs().first().map(kv)))
    }

    async fn list(&self, prefix: &str) -> Result<(Header, Vec<Kv>), EtcdError> {
        let opts = GetOptions::new().with_prefix();
        let resp = timeout("list", self.client.clone().get(prefix, Some(opts))).await?;
        Ok((header(resp.header()), resp.kvs().iter().map(kv).collect()))
    }

    async fn watch(&self, prefix: &str, from: i64) -> Result<EtcdWatch, EtcdError> {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_progress_notify();
        let stream = timeout("watch", self.client.clone().watch(prefix, Some(opts))).await?;
        Ok(EtcdWatch(stream))
    }

    async fn create(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<bool, EtcdError> {
        let guard = Compare::version(key, CompareOp::Equal, 0);
        let put = TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)));
        self.txn("create transaction", guard, put).await
    }

    async fn create_unless(
        &self,
        key: &str,
        absent: &[(String, String)],
        value: Vec<u8>,
        lease: i64,
    ) -> Result<bool, EtcdError> {
        let mut guards = vec![Compare::version(key, CompareOp::Equal, 0)];
        guards.extend(absent.iter().map(|(start, end)| {
            Compare::version(start.as_str(), CompareOp::Equal, 0).with_range(end.as_str())
        }));
        let put = TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)));
        let txn = Txn::new().when(guards).and_then([put]);
        Ok(timeout("create transaction", self.client.clone().txn(txn))
            .await?
            .succeeded())
    }

    async fn put_if(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
        mod_revision: i64,
    ) -> Result<bool, EtcdError> {
        let guard = Compare::mod_revision(key, CompareOp::Equal, mod_revision);
        let put = TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)));
        self.txn("guarded put", guard, put).await
    }

    async fn delete_if(&self, key: &str, mod_revision: i64) -> Result<bool, EtcdError> {
        let guard = Compare::mod_revision(key, CompareOp::Equal, mod_revision);
        self.txn("guarded delete", guard, TxnOp::delete(key, None))
            .await
    }

    async fn grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        Ok(
            timeout("grant lease", self.client.clone().lease_grant(ttl, None))
                .await?
                .id(),
        )
    }

    async fn keep_alive(&self, id: i64) -> Result<bool, EtcdError> {
        let mut c = self.client.clone();
        match tokio::time::timeout(REQUEST_TIMEOUT, c.lease_keep_alive(id)).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => Ok(false),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(EtcdError::Timeout("lease keep-alive")),
        }
    }

    async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        timeout("revoke lease", self.client.clone().lease_revoke(id)).await?;
        Ok(())
    }
}

pub struct EtcdWatch(etcd_client::WatchStream);

impl WatchStream for EtcdWatch {
    async fn next(&mut self) -> Result<Option<WatchMsg>, EtcdError> {
        let Some(resp) = self.0.message().await? else {
            return Ok(None);
        };
        if resp.compact_revision() != 0 {
            return Ok(Some(WatchMsg::Compacted(resp.compact_revision())));
        }
        if resp.canceled() {
            return Ok(Some(WatchMsg::Canceled(resp.cancel_reason().to_owned())));
        }
        if !resp.created() && resp.events().is_empty() {
            return Ok(Some(WatchMsg::Progress(header(resp.header()))));
        }
        let events = resp
            .events()
            .iter()
            .filter_map(|ev| {
                let k = ev.kv()?;
                Some(match ev.event_type() {
                    EventType::Put => Event::Put(kv(k)),
                    EventType::Delete => Event::Delete {
                        key: String::from_utf8_lossy(k.key()).into_owned(),
                        mod_revision: k.mod_revision(),
                    },
                })
            })
            .collect();
        Ok(Some(WatchMsg::Events {
            header: header(resp.header()),
            events,
        }))
    }
}
