//! `hostgw-routed run`: the start sequence, then the long-running tasks until shutdown.
//!
//! Shutdown stops the tasks and nothing else: routes, nft table, lease key and subnet file
//! stay, so a restart adopts them without a flap (see README "Stopping and releasing").

use std::{
    future::Future,
    sync::{Arc, atomic::Ordering},
};

use hostgw_common::SubnetFile;
use ipnetwork::IpNetwork;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    backoff::Backoff,
    cli::RunArgs,
    config::NetConfig,
    error::Error,
    etcd::{
        self, EtcdError, Keys, Snapshot,
        cache::LeaseCache,
        claim::{self, Claim},
        keepalive::KeepAlive,
        store::EtcdStore,
        watch::Watcher,
    },
    http::{self, Ready},
    kernel::{LocalView, RouteTable, events, nft, routes::NetlinkRoutes},
    me::{Me, OwnLease},
    metrics::Metrics,
    net,
    reconcile::{Reconciler, ReconcilerConfig},
};

struct Started {
    table: NetlinkRoutes,
    store: EtcdStore,
    cfg: NetConfig,
    me: Me,
    mtu: u32,
    own: OwnLease,
    /// The one read of the start, which the watcher follows from.
    snap: Snapshot,
    cache: Option<LeaseCache>,
}

pub async fn run(args: RunArgs, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    tokio::pin!(shutdown);
    raise_fd_limit();
    let metrics = Metrics::new();
    let ready = Arc::new(Ready::default());
    let listener = match args.metrics_addr {
        Some(a) => Some(
            http::bind(a)
                .await
                .map_err(|e| Error::Io(format!("bind {a}"), e))?,
        ),
        None => None,
    };
    let sd = CancellationToken::new();
    let http_task = {
        let (m, r, sd) = (metrics.clone(), ready.clone(), sd.clone());
        async move {
            if let Some(l) = listener {
                http::serve(l, m, r, sd).await;
            }
        }
    };
    // The large futures are boxed: built on the stack and moved by value into the next
    // one up, each left another copy of itself in touched stack pages (measured: half a MiB
    // of the daemon's RSS was such copies).
    let main_flow = async {
        let s = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            s = Box::pin(start(&args, &ready, &metrics)) => s?,
        };
        Box::pin(tasks(
            args.clone(),
            s,
            metrics.clone(),
            ready.clone(),
            sd.clone(),
            &mut shutdown,
        ))
        .await;
        Ok(())
    };
    // The drain: `run` returns only once every task (HTTP included) has returned.
    let (r, ()) = tokio::join!(
        Box::pin(async {
            let r = main_flow.await;
            sd.cancel();
            r
        }),
        Box::pin(http_task)
    );
    info!("stopped; routes, rules, lease and subnet file left in place");
    r
}

/// Soft `RLIMIT_NOFILE` up to the hard limit: the daemon's fds are few and bounded (the
/// HTTP server takes at most `http::MAX_CONNECTIONS`), but a soft limit of 1024 left too
/// little room once. Where the hard limit is the soft one, nothing changes.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => warn!(error = %e, soft, hard, "could not raise the open-file limit"),
        },
        Ok(_) => {}
        Err(e) => warn!(error = %e, "could not read the open-file limit"),
    }
}

async fn start(args: &RunArgs, ready: &Ready, metrics: &Metrics) -> Result<Started, Error> {
    let c = &args.common;
    let table = NetlinkRoutes::connect()?;
    let (me, mtu) = super::me(&table, c).await?;
    let keys = Keys::new(&c.etcd_prefix);
    let cache = lease_cache(args, &keys, &me);
    let (store, cfg, snap) = connect_and_read_config(c, &keys, cache.as_ref()).await?;
    let me = me.for_config(&cfg);
    check_public_ips(&cfg, &me)?;
    check_network_vs_links(&cfg, &me, &table.local_view().await?)?;
    let claim = Claim {
        keys: &keys,
        cfg: &cfg,
        me: &me,
        ttl: args.lease_ttl,
        prefer: me.last,
    };
    // A full pool is waited out (not ready meanwhile: no subnet file yet).
    let exhausted = |e: bool| {
        metrics.subnet_pool_exhausted.set(i64::from(e));
    };
    let (own, snap) = claim::acquire_waiting(&store, &claim, Some(snap), exhausted).await?;
    write_subnet_file(c, &cfg, mtu, &own)?;
    ready.subnet_file.store(true, Ordering::Relaxed);
    hostgw_common::sysctl::ensure_forwarding(cfg.v4.is_some(), cfg.v6.is_some())
        .map_err(|e| Error::Io("enable forwarding".into(), e))?;
    match nft::ensure(&cfg, &masq(args), &super::rules::own_ips(&me)).await? {
        nft::Change::Installed => info!("nftables table inet hostgw (masquerade) installed"),
        nft::Change::Removed => info!(
            "nftables table inet hostgw deleted: without --ip-masq there is nothing to put in it"
        ),
        nft::Change::None => {}
    }
    ready.rules.store(true, Ordering::Relaxed);
    info!(node = %me.node, public_ip = ?me.public_ip, public_ipv6 = ?me.public_ipv6, subnet = %own.subnet, ipv6_subnet = ?own.ipv6_subnet, "started");
    Ok(Started {
        table,
        store,
        cfg,
        me,
        mtu,
        own,
        snap,
        cache,
    })
}

/// The lease cache this daemon resumes from and keeps; with `--no-lease-cache` none, and
/// a file left by an earlier start is removed (it would be older every start).
fn lease_cache(args: &RunArgs, keys: &Keys, me: &Me) -> Option<LeaseCache> {
    let path = args.common.lease_cache_path();
    if args.no_lease_cache {
        if let Err(e) = hostgw_common::fs::remove_if_present(&path) {
            warn!(error = %e, path = %path.display(), "could not remove the lease cache");
        }
        return None;
    }
    Some(LeaseCache {
        path,
        prefix: keys.prefix.clone(),
        node: me.node.clone(),
        every: std::time::Duration::from_secs(args.lease_cache_secs),
    })
}

/// etcd being unreachable at start is retried; a missing or invalid config is not. The
/// config comes from the one read the claim and the watcher use too: the whole prefix, or
/// the config key beside the lease cache (`etcd::first_read`).
async fn connect_and_read_config(
    c: &crate::cli::Common,
    keys: &Keys,
    cache: Option<&LeaseCache>,
) -> Result<(EtcdStore, NetConfig, Snapshot), Error> {
    let mut backoff = Backoff::etcd();
    loop {
        let r = async {
            let store = etcd::connect(c).await?;
            let snap = etcd::first_read(&store, keys, cache).await?;
            let cfg = snap.config(keys)?;
            Ok::<_, EtcdError>((store, cfg, snap))
        }
        .await;
        match r {
            Ok(v) => return Ok(v),
            Err(e @ (EtcdError::NoConfig(_) | EtcdError::Config(_) | EtcdError::Tls { .. })) => {
                return Err(e.into());
            }
            // A URI or argument the client refuses will be refused forever: not a retry.
            Err(
                e @ EtcdError::Client(
                    etcd_client::Error::InvalidUri(_)
                    | etcd_client::Error::InvalidArgs(_)
                    | etcd_client::Error::EndpointError(_),
                ),
            ) => return Err(e.into()),
            Err(e) => {
                let d = backoff.next_delay();
                warn!(error = %e, retry_in = ?d, "etcd not reachable yet");
                tokio::time::sleep(d).await;
            }
        }
    }
}

/// The node needs a next hop of the key's family: IPv4 when the cluster has `Network`, IPv6
/// in an IPv6-only one. (A dual-stack cluster's node without IPv6 routes IPv4 only.)
fn check_public_ips(cfg: &NetConfig, me: &Me) -> Result<(), Error> {
    let (have, family, flag) = if cfg.primary().v6() {
        (me.public_ipv6.is_some(), "global IPv6", "--public-ipv6")
    } else {
        (me.public_ip.is_some(), "IPv4", "--public-ip")
    };
    if have {
        return Ok(());
    }
    Err(Error::Other(format!(
        "network config has {}, but this node's uplink has no {family} address: give {flag}",
        cfg.describe()
    )))
}

/// The pod networks must not overlap this node's own links: a lease inside them would
/// replace the node's LAN route and cut it off. Addresses and connected prefixes inside the
/// subnet this node held before (its pods' gateways, a `cni0` bridge) are its pods' own.
pub(crate) fn check_network_vs_links(
    cfg: &NetConfig,
    me: &Me,
    view: &LocalView,
) -> Result<(), Error> {
    let pods: Vec<IpNetwork> = me
        .last
        .map(|(v4, v6)| std::iter::once(v4).chain(v6).collect())
        .unwrap_or_default();
    let mine = |n: &IpNetwork| pods.iter().any(|p| net::within(n, p));
    let links = view.connected.iter().copied().chain(
        view.addrs
            .iter()
            .filter_map(|a| IpNetwork::new(*a, if a.is_ipv4() { 32 } else { 128 }).ok()),
    );
    let networks: Vec<IpNetwork> = cfg.pools().map(|p| p.network).collect();
    for link in links.filter(|l| !mine(l)) {
        if let Some(n) = networks.iter().find(|n| net::overlaps(n, &link)) {
            return Err(Error::Other(format!(
                "network config: {n} overlaps {link}, which is on this node's own links; \
                 a lease there would replace the node's LAN route. Use a pod network apart \
                 from every node network"
            )));
        }
    }
    Ok(())
}

fn write_subnet_file(
    c: &crate::cli::Common,
    cfg: &NetConfig,
    mtu: u32,
    own: &OwnLease,
) -> Result<(), Error> {
    let v4 = |n: IpNetwork| match n {
        IpNetwork::V4(n) => Some(n),
        IpNetwork::V6(_) => None,
    };
    let v6 = |n: IpNetwork| match n {
        IpNetwork::V6(n) => Some(n),
        IpNetwork::V4(_) => None,
    };
    // Only the families this node holds: an IPv6-only node's file has no IPv4 fields.
    let ipv6_subnet = own.ipv6_subnet.or(Some(own.subnet)).and_then(v6);
    let f = SubnetFile {
        network: v4(own.subnet)
            .and(cfg.v4.as_ref())
            .and_then(|p| v4(p.network)),
        subnet: v4(own.subnet),
        ipv6_network: ipv6_subnet.and(cfg.v6.as_ref()).and_then(|p| v6(p.network)),
        ipv6_subnet,
        mtu: Some(mtu),
    };
    f.write(&c.subnet_file)
        .map_err(|e| Error::Io(format!("write {}", c.subnet_file.display()), e))
}

async fn tasks(
    args: RunArgs,
    s: Started,
    metrics: Metrics,
    ready: Arc<Ready>,
    sd: CancellationToken,
    shutdown: impl Future<Output = ()>,
) {
    let keys = Keys::new(&args.common.etcd_prefix);
    let (own_tx, own_rx) = watch::channel(s.own.clone());
    let (leases_tx, leases_rx) = watch::channel(None);
    let check_own = Arc::new(Notify::new());
    let watcher = Watcher {
        store: s.store.clone(),
        keys: keys.clone(),
        tx: leases_tx,
        metrics: metrics.clone(),
        cfg: s.cfg.clone(),
        me: s.me.clone(),
        own: own_rx.clone(),
        check_own: check_own.clone(),
        seed: Some(s.snap),
        cache: s.cache,
    };
    let keeper = KeepAlive {
        store: s.store.clone(),
        keys,
        cfg: s.cfg.clone(),
        me: s.me.clone(),
        ttl: args.lease_ttl,
        own: own_tx,
        metrics: metrics.clone(),
        check_own,
    };
    let every = std::time::Duration::from_secs(args.resync_secs.clamp(1, 60));
    let rules = super::rules::keep(
        super::rules::Rules {
            cfg: s.cfg.clone(),
            masq: masq(&args),
            me: s.me.clone(),
            leases: leases_rx.clone(),
            every,
            ready: ready.clone(),
        },
        sd.clone(),
    );
    let kick = Arc::new(Notify::new());
    let stale = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deletes = Arc::new(events::OwnDeletes::default());
    let dp_cfg = s.cfg.clone();
    // The uplink holds our public address of either family (an IPv6-only node has no IPv4).
    let uplink_ip = s.me.public_ip.or(s.me.public_ipv6);
    let datapath = crate::datapath::run(&args, &dp_cfg, uplink_ip, metrics.clone(), sd.clone());
    let rec = Reconciler::new(ReconcilerConfig {
        table: s.table,
        cfg: s.cfg.clone(),
        metrics,
        ready,
        leases: leases_rx,
        own: own_rx.clone(),
        kick: kick.clone(),
        stale: stale.clone(),
        deletes: deletes.clone(),
        resync: std::time::Duration::from_secs(args.resync_secs.max(1)),
        mtu: s.me.mtu,
    });
    let follow = follow_own(args.common.clone(), s.cfg, s.mtu, own_rx, sd.clone());
    crate::tasks::join_all([
        Box::pin(watcher.run(sd.clone())) as crate::tasks::Task,
        Box::pin(keeper.run(sd.clone())),
        Box::pin(rec.run(sd.clone())),
        Box::pin(events::listen(kick, stale, deletes, sd.clone())),
        Box::pin(follow),
        Box::pin(rules),
        Box::pin(datapath),
        Box::pin(async {
            shutdown.await;
            info!("shutting down");
            sd.cancel();
        }),
    ])
    .await;
}

fn masq(args: &RunArgs) -> nft::Masq {
    nft::Masq {
        enabled: args.ip_masq,
        random_fully: args.ip_masq_random_fully,
        except: args.no_masquerade_cidrs.clone(),
    }
}

/// Rewrites the subnet file if the lease had to be claimed again.
async fn follow_own(
    c: crate::cli::Common,
    cfg: NetConfig,
    mtu: u32,
    mut rx: watch::Receiver<OwnLease>,
    sd: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = sd.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
        let own = rx.borrow_and_update().clone();
        if let Err(e) = write_subnet_file(&c, &cfg, mtu, &own) {
            warn!(error = %e, "rewriting the subnet file failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me(last: Option<&str>) -> Me {
        Me {
            node: "node-0".into(),
            public_ip: Some("198.19.0.10".parse().unwrap()),
            public_ipv6: None,
            last: last.map(|s| (s.parse().unwrap(), None)),
            mtu: None,
        }
    }

    #[test]
    fn a_pod_network_over_the_node_link_is_refused() {
        let view = LocalView {
            addrs: [
                "198.19.0.10".parse().unwrap(),
                "198.18.7.1".parse().unwrap(),
            ]
            .into(),
            connected: vec![
                "198.19.0.0/24".parse().unwrap(),
                "198.18.7.0/24".parse().unwrap(),
            ],
            ..LocalView::default()
        };
        let cfg = |n: &str| NetConfig::parse(format!(r#"{{"Network":"{n}"}}"#).as_bytes()).unwrap();
        // The node LAN inside the pod network: refused, with both named.
        let e = check_network_vs_links(&cfg("198.16.0.0/12"), &me(Some("198.18.7.0/24")), &view)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("198.16.0.0/12") && e.contains("198.19.0.0/24"),
            "{e}"
        );
        // The node's own pod bridge from its previous subnet is not a node link.
        assert!(
            check_network_vs_links(&cfg("198.18.0.0/16"), &me(Some("198.18.7.0/24")), &view)
                .is_ok()
        );
        // Without that subnet, the bridge is just another link inside the pod network.
        assert!(check_network_vs_links(&cfg("198.18.0.0/16"), &me(None), &view).is_err());
    }
}
