//! The task that keeps the fast path on the node's links: one pass on start, on every link
//! event (a new pod's veth, a deleted one) and every few seconds (the counters for /metrics).
//! A failed attach never touches a pod: its packets take the stack until the next pass.

use std::{sync::Arc, time::Duration};

use hostgw_ebpf::{BIG_TCP_SIZE, FastPathOps};
use rtnetlink::Handle;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    links,
    plan::{self, LinkInfo},
};
use crate::metrics::{Metrics, ReasonLabel};

/// Counters are read this often when no link event comes.
const REFRESH: Duration = Duration::from_secs(5);

/// BIG TCP on the uplink, behind a seam for the unit tests. The pod veths get it from the
/// plugin, in the message that creates them (`"bigTcp": true`): one owner per link. (Setting
/// a pod's end from here would need its namespace: `IFLA_TARGET_NETNSID` on RTM_SETLINK
/// *moves* a link into that namespace, it does not address one there.)
pub trait Tuning {
    fn big_tcp(&self, ifindex: u32) -> Result<(), String>;
}

pub struct NetlinkTuning;

impl Tuning for NetlinkTuning {
    fn big_tcp(&self, ifindex: u32) -> Result<(), String> {
        hostgw_ebpf::set_gso_gro_max(ifindex, BIG_TCP_SIZE).map_err(|e| e.to_string())
    }
}

pub struct Keeper<F, T> {
    /// None: plain routes (the keeper then only sets BIG TCP, if asked).
    pub fp: Option<F>,
    pub tuning: T,
    pub big_tcp: bool,
    pub uplink: u32,
    pub metrics: Metrics,
    /// The uplink's ifindex once BIG TCP was tried (and whether it took): tried once per
    /// link, so a refusal is logged once.
    pub tuned: Option<(u32, bool)>,
}

impl<F: FastPathOps, T: Tuning> Keeper<F, T> {
    pub fn new(fp: Option<F>, tuning: T, big_tcp: bool, uplink: u32, metrics: Metrics) -> Self {
        Keeper {
            fp,
            tuning,
            big_tcp,
            uplink,
            metrics,
            tuned: None,
        }
    }

    /// One pass over a fresh link list: attach what lacks the fast path, drop stale pins, tune,
    /// and export the counters.
    pub fn pass(&mut self, links: &[LinkInfo]) {
        if self.big_tcp {
            self.tune(links);
        }
        let Some(fp) = &self.fp else { return };
        let pinned = match fp.status() {
            Ok(p) => p,
            Err(e) => return warn!(error = %e, "reading the fast path's links failed"),
        };
        let p = plan::plan(links, self.uplink, &pinned);
        if p.attach_uplink {
            match fp.attach_uplink(self.uplink) {
                Ok(how) => info!(ifindex = self.uplink, ?how, "fast path on the uplink"),
                Err(e) => warn!(error = %e, "attaching the fast path to the uplink failed"),
            }
        }
        for &i in &p.attach_pods {
            match fp.attach_pod(i) {
                Ok(how) => info!(
                    ifindex = i,
                    veth = name(links, i),
                    ?how,
                    "fast path on a pod"
                ),
                Err(e) => warn!(error = %e, ifindex = i, "attaching the fast path to a pod failed"),
            }
        }
        for &i in &p.detach {
            let shaped = links
                .iter()
                .find(|l| l.ifindex == i)
                .and_then(|l| l.qdisc.as_deref());
            match (fp.detach(i), shaped) {
                (Ok(_), Some(qdisc)) => info!(
                    ifindex = i,
                    veth = name(links, i),
                    qdisc,
                    "fast path off for a pod with a qdisc: its packets take the stack, which the qdisc sees"
                ),
                (Ok(_), None) => info!(ifindex = i, "fast path pin of a gone interface removed"),
                (Err(e), _) => warn!(error = %e, ifindex = i, "removing a fast path pin failed"),
            }
        }
        self.export(fp);
    }

    /// What leaves the node is bounded by the uplink's GSO size, and what GRO builds from the
    /// wire by its GRO size: a NIC needs a driver with a large `tso_max_size` (veth: 524280).
    fn tune(&mut self, links: &[LinkInfo]) {
        if self.tuned.is_some_and(|(i, _)| i == self.uplink) {
            return;
        }
        let Some(l) = links.iter().find(|l| l.ifindex == self.uplink) else {
            return;
        };
        let r = self.tuning.big_tcp(l.ifindex);
        match &r {
            Ok(()) => info!(link = %l.name, size = BIG_TCP_SIZE, "BIG TCP on the uplink"),
            Err(e) => warn!(link = %l.name, error = %e, "BIG TCP not available on the uplink"),
        }
        self.tuned = Some((l.ifindex, r.is_ok()));
    }

    fn export(&self, fp: &F) {
        if let Ok(st) = fp.status() {
            let pods = st.iter().filter(|a| a.attached && a.ifindex != self.uplink);
            self.metrics.ebpf_pods_attached.set(pods.count() as i64);
        }
        let Ok(counters) = fp.counters() else { return };
        for (reason, count) in counters.0 {
            let label = ReasonLabel {
                reason: reason.label().into(),
            };
            // The BPF counters are totals; a Prometheus counter only goes up, by the difference.
            for (family, now) in [
                (&self.metrics.ebpf_packets, count.packets),
                (&self.metrics.ebpf_bytes, count.bytes),
            ] {
                let c = family.get_or_create(&label);
                c.inc_by(now.saturating_sub(c.get()));
            }
        }
    }

    pub async fn run(mut self, handle: Handle, sd: CancellationToken) {
        let kick = Arc::new(Notify::new());
        let watch = links::watch(kick.clone(), sd.clone());
        let work = async {
            loop {
                match links::list(&handle).await {
                    Ok(l) => self.pass(&l),
                    Err(e) => warn!(error = %e, "listing links for the fast path failed"),
                }
                tokio::select! {
                    _ = sd.cancelled() => return,
                    _ = kick.notified() => {
                        // A pod ADD is a burst of link events: take them in one pass.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    _ = tokio::time::sleep(REFRESH) => {}
                }
            }
        };
        tokio::join!(watch, work);
    }
}

fn name(links: &[LinkInfo], ifindex: u32) -> &str {
    links
        .iter()
        .find(|l| l.ifindex == ifindex)
        .map_or("?", |l| l.name.as_str())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use hostgw_ebpf::{Count, Counters, FakeFastPath, IfaceKind, Reason};

    use super::*;

    #[derive(Default)]
    struct FakeTuning {
        calls: Mutex<Vec<u32>>,
        refuse: Option<u32>,
    }

    impl Tuning for FakeTuning {
        fn big_tcp(&self, ifindex: u32) -> Result<(), String> {
            self.calls.lock().unwrap().push(ifindex);
            match self.refuse == Some(ifindex) {
                true => Err("tso_max_size 65536".into()),
                false => Ok(()),
            }
        }
    }

    fn link(ifindex: u32, name: &str, peer: Option<(u32, Option<i32>)>) -> LinkInfo {
        LinkInfo {
            ifindex,
            name: name.into(),
            master: None,
            peer,
            qdisc: None,
        }
    }

    #[test]
    fn start_new_pod_and_del_follow_the_links() {
        let fp = FakeFastPath::default();
        *fp.counters.lock().unwrap() = Counters(vec![(
            Reason::FwdRedirect,
            Count {
                packets: 5,
                bytes: 500,
            },
        )]);
        let m = Metrics::new();
        let mut k = Keeper::new(Some(fp), FakeTuning::default(), false, 2, m.clone());
        let mut links = vec![link(2, "eth0", None), link(7, "hgw5f27bec41cf4", None)];
        k.pass(&links);
        let kinds = |k: &Keeper<FakeFastPath, FakeTuning>| -> Vec<(u32, Option<IfaceKind>)> {
            let st = k.fp.as_ref().unwrap().status().unwrap();
            st.iter().map(|a| (a.ifindex, a.kind)).collect()
        };
        assert_eq!(
            kinds(&k),
            [(2, Some(IfaceKind::Uplink)), (7, Some(IfaceKind::Pod))]
        );
        links.push(link(9, "hgw000000000009", None));
        k.pass(&links);
        assert_eq!(kinds(&k).len(), 3, "the new pod's veth");
        links.retain(|l| l.ifindex != 7);
        k.pass(&links);
        assert_eq!(
            kinds(&k),
            [(2, Some(IfaceKind::Uplink)), (9, Some(IfaceKind::Pod))]
        );
        let text = m.encode();
        assert!(
            text.contains("hostgw_ebpf_packets_total{reason=\"fwd_redirect\"} 5"),
            "{text}"
        );
        assert!(text.contains("hostgw_ebpf_bytes_total{reason=\"fwd_redirect\"} 500"));
        assert!(text.contains("hostgw_ebpf_pods_attached 1"), "{text}");
        // Counters are exported as totals, not summed on every pass.
        k.pass(&links);
        assert!(
            m.encode()
                .contains("hostgw_ebpf_packets_total{reason=\"fwd_redirect\"} 5")
        );
    }

    #[test]
    fn big_tcp_is_tried_on_the_uplink_once_and_never_on_pod_veths() {
        let t = FakeTuning {
            refuse: Some(2),
            ..FakeTuning::default()
        };
        let mut k = Keeper::<FakeFastPath, _>::new(None, t, true, 2, Metrics::new());
        let links = [
            link(2, "eth0", None),
            link(7, "hgw5f27bec41cf4", Some((3, Some(4)))),
            link(8, "lo", None),
        ];
        k.pass(&links);
        k.pass(&links);
        assert_eq!(*k.tuning.calls.lock().unwrap(), [2]);
        assert_eq!(k.tuned, Some((2, false)));
    }
}
