//! Everything that talks to etcd: the connection, the key layout and lease codec, this
//! node's claim and keep-alive, and the watch of all leases.

use std::{collections::BTreeMap, time::Duration};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::{cli::Common, config::NetConfig};

pub mod cache;
pub mod claim;
pub mod codec;
#[cfg(test)]
pub mod fake;
pub mod keepalive;
mod keys;
pub mod store;
pub mod subnet;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_families;
pub mod watch;

pub use codec::Decoded;
pub use keys::Keys;
use store::{Header, Kv, Store};

/// Every unary request is bounded; the watch stream is not (it is meant to stay open).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd: {0}")]
    Client(#[from] etcd_client::Error),
    #[error("etcd: {0} timed out")]
    Timeout(&'static str),
    #[error("read {path}: {source}")]
    Tls {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} does not exist in etcd: create it first (see routed/README.md)")]
    NoConfig(String),
    #[error("etcd returned no leases at all, not even ours: not believed")]
    Empty,
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

impl EtcdError {
    /// etcd could not be reached at all (refused, unreachable, silent): such a retry costs
    /// etcd nothing, unlike one of an error etcd itself answered.
    pub fn is_unreachable(&self) -> bool {
        match self {
            EtcdError::Client(etcd_client::Error::TransportError(_)) => true,
            EtcdError::Client(etcd_client::Error::GRpcStatus(s)) => {
                s.code() == tonic::Code::Unavailable
            }
            EtcdError::Timeout(_) => true,
            _ => false,
        }
    }
}

pub async fn connect(c: &Common) -> Result<store::EtcdStore, EtcdError> {
    let endpoints: Vec<String> = c
        .etcd_endpoints
        .iter()
        .map(|e| e.trim().to_owned())
        .collect();
    let client = timeout(
        "connect",
        Client::connect(endpoints, Some(options(c).await?)),
    )
    .await?;
    Ok(store::EtcdStore::new(client))
}

/// A client for a one-shot command (`status`, `release`), on the first endpoint that answers.
///
/// The balanced channel of [`connect`] sends each request to one member and returns its
/// error: the daemon retries, but a one-shot command would fail whenever any member of a
/// 3-member etcd is down. So each endpoint is tried in turn with a cheap read.
pub async fn connect_reachable(c: &Common) -> Result<store::EtcdStore, EtcdError> {
    let opts = options(c).await?;
    let mut last = None;
    for ep in c.etcd_endpoints.iter().map(|e| e.trim()) {
        let attempt = async {
            let mut client = timeout("connect", Client::connect([ep], Some(opts.clone()))).await?;
            timeout("status", client.status()).await?;
            Ok::<_, EtcdError>(client)
        };
        match attempt.await {
            Ok(client) => return Ok(store::EtcdStore::new(client)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(EtcdError::Timeout("connect: no endpoint given")))
}

async fn options(c: &Common) -> Result<ConnectOptions, EtcdError> {
    // HTTP/2 pings detect a dead etcd on an idle watch stream: the stream then fails and
    // the watcher resumes elsewhere instead of waiting forever on a half-open connection.
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(true);
    if let Some(ca) = &c.etcd_cafile {
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca).await?));
        if let (Some(cert), Some(key)) = (&c.etcd_certfile, &c.etcd_keyfile) {
            tls = tls.identity(Identity::from_pem(read(cert).await?, read(key).await?));
        }
        opts = opts.with_tls(tls);
    }
    Ok(opts)
}

async fn read(path: &std::path::Path) -> Result<Vec<u8>, EtcdError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| EtcdError::Tls {
            path: path.display().to_string(),
            source,
        })
}

pub async fn timeout<T>(
    what: &'static str,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(EtcdError::Timeout(what)),
    }
}

pub async fn read_config<S: Store>(store: &S, keys: &Keys) -> Result<NetConfig, EtcdError> {
    let (_, kv) = store.get(&keys.config()).await?;
    let kv = kv.ok_or_else(|| EtcdError::NoConfig(keys.config()))?;
    Ok(NetConfig::parse(&kv.value)?)
}

/// One leased subnet as read: decoded (or why not), plus what guarded writes need.
#[derive(Debug, Clone)]
pub struct Entry {
    pub decoded: Decoded,
    pub mod_revision: i64,
    pub lease_id: i64,
}

impl Entry {
    pub fn of(name: &str, kv: &Kv) -> Entry {
        Entry {
            decoded: codec::decode(name, &kv.value, kv.create_revision),
            mod_revision: kv.mod_revision,
            lease_id: kv.lease,
        }
    }
}

/// One read of everything under the prefix at one revision: the config, every subnet key,
/// and the revision a watch resumes after. A start takes exactly one (the claim decides on
/// it and the watcher follows from it), so a cold start costs etcd one range read per
/// node, plus one per lost create race. A restart may take it from the lease cache
/// instead ([`first_read`]).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub header: Header,
    /// The config key's value, if there is one.
    pub config: Option<Vec<u8>>,
    /// The subnet keys by name.
    pub entries: BTreeMap<String, Entry>,
    /// Taken from the lease cache, not from etcd: the watcher publishes it only once the
    /// watch from its revision has answered.
    pub resumed: bool,
}

impl Snapshot {
    pub async fn take<S: Store>(store: &S, keys: &Keys) -> Result<Snapshot, EtcdError> {
        let (header, kvs) = store.list(&keys.prefix_dir()).await?;
        let key = keys.config();
        Ok(Snapshot {
            header,
            config: kvs.iter().find(|k| k.key == key).map(|k| k.value.clone()),
            entries: entries(keys, &kvs),
            resumed: false,
        })
    }

    /// The network config it holds (as [`read_config`] reads it).
    pub fn config(&self, keys: &Keys) -> Result<NetConfig, EtcdError> {
        let value = self
            .config
            .as_deref()
            .ok_or_else(|| EtcdError::NoConfig(keys.config()))?;
        Ok(NetConfig::parse(value)?)
    }
}

/// The start's one read: the lease cache when it belongs to the etcd that answers (one
/// read of the config key, then the watch replays what changed since), else one list of
/// the whole prefix. Without a cache file a start lists at once: a cold start costs one
/// range read, not two.
pub async fn first_read<S: Store>(
    store: &S,
    keys: &Keys,
    cache: Option<&cache::LeaseCache>,
) -> Result<Snapshot, EtcdError> {
    let loaded = match cache.map(cache::LeaseCache::read) {
        Some(Ok(Some(l))) => Some(l),
        Some(Err(why)) => {
            tracing::info!(%why, "lease cache not used; listing every lease");
            None
        }
        _ => None,
    };
    if let Some(l) = loaded {
        let (header, config) = store.get(&keys.config()).await?;
        let (rev, n) = (l.revision(), l.leases());
        match l.seed(&header, config.map(|k| k.value)) {
            Ok(snap) => {
                tracing::info!(revision = rev, leases = n, "resuming from the lease cache");
                return Ok(snap);
            }
            Err(why) => tracing::info!(%why, "lease cache not used; listing every lease"),
        }
    }
    Snapshot::take(store, keys).await
}

fn entries(keys: &Keys, kvs: &[Kv]) -> BTreeMap<String, Entry> {
    kvs.iter()
        .filter_map(|kv| {
            keys.name(kv.key.as_bytes())
                .map(|n| (n.to_owned(), Entry::of(n, kv)))
        })
        .collect()
}

/// Lists every subnet key at one revision.
pub async fn list<S: Store>(
    store: &S,
    keys: &Keys,
) -> Result<(Header, BTreeMap<String, Entry>), EtcdError> {
    let (header, kvs) = store.list(&keys.subnets()).await?;
    Ok((header, entries(keys, &kvs)))
}
