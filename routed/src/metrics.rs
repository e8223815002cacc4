//! Prometheus metrics (prometheus-client), cheap to clone: every handle is an `Arc`.

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    pub cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    pub mode: String,
}

#[derive(Clone)]
pub struct Metrics {
    pub registry: Arc<Registry>,
    pub routes_installed: Gauge,
    pub peers: Gauge,
    pub leases_rejected: Family<ReasonLabel, Gauge>,
    pub peers_unreachable: Gauge,
    pub reconcile: Counter,
    pub reconcile_duration: Histogram,
    pub watch_restarts: Counter,
    pub lease_renewal_failures: Counter,
    pub routes_repaired: Counter,
    pub etcd_restores: Counter,
    pub own_key_restores: Family<CauseLabel, Counter>,
    pub node_name_conflicts: Gauge,
    pub config_mismatch: Gauge,
    pub subnet_pool_exhausted: Gauge,
    pub datapath: Family<ModeLabel, Gauge>,
    pub ebpf_packets: Family<ReasonLabel, Counter>,
    pub ebpf_bytes: Family<ReasonLabel, Counter>,
    pub ebpf_pods_attached: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("hostgw");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            routes_installed: Gauge::default(),
            peers: Gauge::default(),
            leases_rejected: Family::default(),
            peers_unreachable: Gauge::default(),
            reconcile: Counter::default(),
            reconcile_duration: Histogram::new([
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            watch_restarts: Counter::default(),
            lease_renewal_failures: Counter::default(),
            routes_repaired: Counter::default(),
            etcd_restores: Counter::default(),
            own_key_restores: Family::default(),
            node_name_conflicts: Gauge::default(),
            config_mismatch: Gauge::default(),
            subnet_pool_exhausted: Gauge::default(),
            datapath: Family::default(),
            ebpf_packets: Family::default(),
            ebpf_bytes: Family::default(),
            ebpf_pods_attached: Gauge::default(),
        };
        r.register(
            "routes_installed",
            "Owned routes in the kernel after the last reconcile",
            m.routes_installed.clone(),
        );
        r.register("peers", "Valid peer leases", m.peers.clone());
        r.register(
            "leases_rejected",
            "Leases rejected by validation",
            m.leases_rejected.clone(),
        );
        r.register(
            "peers_unreachable",
            "Peers whose public IP is behind a router",
            m.peers_unreachable.clone(),
        );
        // prometheus-client appends `_total` to counters.
        r.register("reconcile", "Reconcile passes", m.reconcile.clone());
        r.register(
            "reconcile_duration_seconds",
            "Duration of reconcile passes",
            m.reconcile_duration.clone(),
        );
        r.register(
            "etcd_watch_restarts",
            "Lease watch restarts (broken or compacted)",
            m.watch_restarts.clone(),
        );
        r.register(
            "lease_renewal_failures",
            "Failed keep-alives of our etcd lease",
            m.lease_renewal_failures.clone(),
        );
        r.register(
            "routes_repaired",
            "Owned routes restored after someone removed them",
            m.routes_repaired.clone(),
        );
        m.register_etcd(&mut r);
        m.register_datapath(&mut r);
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    /// What the daemon found wrong in etcd: restores, our key, names, config.
    fn register_etcd(&self, r: &mut Registry) {
        r.register(
            "etcd_restores",
            "Times etcd was found restored, replaced or wiped (leases re-listed, own key re-claimed)",
            self.etcd_restores.clone(),
        );
        r.register(
            "own_key_restores",
            "Times our own key was put back after someone else deleted or overwrote it, or its lease was lost",
            self.own_key_restores.clone(),
        );
        r.register(
            "node_name_conflicts",
            "Keys that carry our node name but not our public IP (not adopted)",
            self.node_name_conflicts.clone(),
        );
        r.register(
            "config_mismatch",
            "1 when the network config in etcd differs from the running one (changed, deleted or invalid)",
            self.config_mismatch.clone(),
        );
        r.register(
            "subnet_pool_exhausted",
            "1 while this node holds no subnet because every subnet of the pool is leased",
            self.subnet_pool_exhausted.clone(),
        );
    }

    /// The eBPF fast path (issue 13): which datapath runs, and the programs' counters.
    fn register_datapath(&self, r: &mut Registry) {
        r.register(
            "datapath",
            "1 for the datapath this daemon runs (mode=\"ebpf\" or \"routes\"), 0 for the other",
            self.datapath.clone(),
        );
        r.register(
            "ebpf_packets",
            "Packets the fast path's programs saw, by outcome: fwd_peer/fwd_redirect skipped the stack, every other reason went to it",
            self.ebpf_packets.clone(),
        );
        r.register(
            "ebpf_bytes",
            "Bytes the fast path's programs saw, by outcome (a GSO packet counts once in packets)",
            self.ebpf_bytes.clone(),
        );
        r.register(
            "ebpf_pods_attached",
            "Pod host veths with the fast path attached",
            self.ebpf_pods_attached.clone(),
        );
    }

    pub fn set_datapath(&self, mode: &str) {
        for m in ["ebpf", "routes"] {
            self.datapath
                .get_or_create(&ModeLabel { mode: m.into() })
                .set(i64::from(m == mode));
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_documented_ones() {
        let m = Metrics::new();
        m.leases_rejected
            .get_or_create(&ReasonLabel {
                reason: "overlap".into(),
            })
            .set(2);
        m.reconcile.inc();
        m.set_datapath("routes");
        let text = m.encode();
        for name in [
            "hostgw_routes_installed ",
            "hostgw_peers ",
            "hostgw_leases_rejected{reason=\"overlap\"} 2",
            "hostgw_peers_unreachable ",
            "hostgw_reconcile_total 1",
            "hostgw_reconcile_duration_seconds_bucket",
            "hostgw_etcd_watch_restarts_total ",
            "hostgw_lease_renewal_failures_total ",
            "hostgw_routes_repaired_total ",
            "hostgw_etcd_restores_total ",
            "hostgw_node_name_conflicts ",
            "hostgw_config_mismatch ",
            "hostgw_subnet_pool_exhausted ",
            "hostgw_datapath{mode=\"routes\"} 1",
            "hostgw_datapath{mode=\"ebpf\"} 0",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
