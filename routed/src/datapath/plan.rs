//! Which interfaces should carry the fast path, against what is pinned: a pure function, so the
//! lifecycle (attach on start and on a new pod, drop a stale pin after a DEL) is unit-tested.

use std::collections::BTreeSet;

use hostgw_common::veth::is_host_veth_name;
use hostgw_ebpf::{Attachment, IfaceKind};

/// One link of the node's namespace, as a netlink dump shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub ifindex: u32,
    pub name: String,
    /// `IFLA_MASTER`: a bridge port (bridge mode) is switched by the bridge, not routed.
    pub master: Option<u32>,
    /// A veth's peer: its ifindex and the netnsid it lives in (None: this namespace).
    pub peer: Option<(u32, Option<i32>)>,
    /// The kind of a qdisc on the link other than `noqueue` (`tbf` at the root, `ingress`,
    /// `clsact`, ...): the bandwidth plugin's shaping, or someone's tc filters.
    pub qdisc: Option<String>,
}

impl LinkInfo {
    /// A pod's host veth in ptp mode: our name shape and no bridge above it. In bridge mode
    /// the FIB answers the bridge, which the programs pass to the stack anyway.
    pub fn is_routed_pod(&self) -> bool {
        is_host_veth_name(&self.name) && self.master.is_none()
    }

    /// A routed pod the fast path may carry. A qdisc on its host veth must see the pod's
    /// packets: the bandwidth plugin shapes egress with an `ingress` qdisc redirecting to an
    /// ifb, and ingress with a `tbf` root, and both a tcx redirect and a peer redirect into
    /// the pod would pass them by. Such a pod's packets take the stack.
    pub fn is_fast_pod(&self) -> bool {
        self.is_routed_pod() && self.qdisc.is_none()
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub attach_uplink: bool,
    pub attach_pods: Vec<u32>,
    /// Pins whose interface is gone or no longer ours (the kernel detached a deleted veth's
    /// link already; the pin is what is left), or a pod that gained a qdisc.
    pub detach: Vec<u32>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        !self.attach_uplink && self.attach_pods.is_empty() && self.detach.is_empty()
    }
}

pub fn plan(links: &[LinkInfo], uplink: u32, pinned: &[Attachment]) -> Plan {
    let live = |ifindex: u32, kind: IfaceKind| {
        pinned
            .iter()
            .any(|a| a.ifindex == ifindex && a.attached && a.current && a.kind == Some(kind))
    };
    let pods: BTreeSet<u32> = links
        .iter()
        .filter(|l| l.is_fast_pod() && l.ifindex != uplink)
        .map(|l| l.ifindex)
        .collect();
    let uplink_exists = links.iter().any(|l| l.ifindex == uplink);
    Plan {
        attach_uplink: uplink_exists && !live(uplink, IfaceKind::Uplink),
        attach_pods: pods
            .iter()
            .copied()
            .filter(|&i| !live(i, IfaceKind::Pod))
            .collect(),
        detach: pinned
            .iter()
            .map(|a| a.ifindex)
            .filter(|i| !(pods.contains(i) || (*i == uplink && uplink_exists)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(ifindex: u32, name: &str, master: Option<u32>) -> LinkInfo {
        LinkInfo {
            ifindex,
            name: name.into(),
            master,
            peer: None,
            qdisc: None,
        }
    }

    fn shaped(ifindex: u32, name: &str, qdisc: &str) -> LinkInfo {
        LinkInfo {
            qdisc: Some(qdisc.into()),
            ..link(ifindex, name, None)
        }
    }

    #[test]
    fn a_pod_with_a_qdisc_is_left_to_the_stack_and_detached_once_it_gains_one() {
        let plain = [link(2, "eth0", None), link(7, "hgw5f27bec41cf4", None)];
        assert_eq!(plan(&plain, 2, &[]).attach_pods, vec![7]);
        let pinned = [
            pin(2, IfaceKind::Uplink, true),
            pin(7, IfaceKind::Pod, true),
        ];
        // bandwidth's egress limit (ingress qdisc + ifb) and its ingress limit (tbf root).
        for kind in ["ingress", "tbf", "clsact"] {
            let links = [link(2, "eth0", None), shaped(7, "hgw5f27bec41cf4", kind)];
            let p = plan(&links, 2, &[]);
            assert!(p.attach_pods.is_empty(), "{kind}: {p:?}");
            let p = plan(&links, 2, &pinned);
            assert_eq!(p.detach, vec![7], "{kind}");
            assert!(!p.attach_uplink);
        }
        // The qdisc removed: attached again.
        assert_eq!(
            plan(&plain, 2, &[pin(2, IfaceKind::Uplink, true)]).attach_pods,
            vec![7]
        );
    }

    fn pin(ifindex: u32, kind: IfaceKind, attached: bool) -> Attachment {
        Attachment {
            ifindex,
            kind: Some(kind),
            link_id: ifindex,
            prog_id: 1,
            attached,
            current: true,
        }
    }

    #[test]
    fn start_attaches_the_uplink_and_every_routed_pod_veth() {
        let links = [
            link(1, "lo", None),
            link(2, "eth0", None),
            link(7, "hgw5f27bec41cf4", None),
            link(8, "hgw000000000001", Some(5)),
            link(9, "hgwnot-ours", None),
        ];
        let p = plan(&links, 2, &[]);
        assert_eq!(
            p,
            Plan {
                attach_uplink: true,
                attach_pods: vec![7],
                detach: vec![]
            }
        );
        // Once attached, nothing more to do: idempotent.
        let pinned = [
            pin(2, IfaceKind::Uplink, true),
            pin(7, IfaceKind::Pod, true),
        ];
        assert!(plan(&links, 2, &pinned).is_empty());
    }

    #[test]
    fn a_deleted_veth_leaves_a_stale_pin_that_is_dropped() {
        let links = [link(2, "eth0", None)];
        let pinned = [
            pin(2, IfaceKind::Uplink, true),
            pin(7, IfaceKind::Pod, false),
        ];
        let p = plan(&links, 2, &pinned);
        assert_eq!(p.detach, vec![7]);
        assert!(!p.attach_uplink && p.attach_pods.is_empty());
    }

    #[test]
    fn an_old_program_or_wrong_kind_is_attached_again() {
        let links = [link(2, "eth0", None), link(7, "hgw5f27bec41cf4", None)];
        let mut old = pin(7, IfaceKind::Pod, true);
        old.current = false;
        let p = plan(&links, 2, &[pin(2, IfaceKind::Pod, true), old]);
        assert!(p.attach_uplink);
        assert_eq!(p.attach_pods, vec![7]);
        assert!(p.detach.is_empty());
    }

    #[test]
    fn a_veth_that_joined_a_bridge_is_detached() {
        let links = [link(2, "eth0", None), link(7, "hgw5f27bec41cf4", Some(4))];
        let p = plan(&links, 2, &[pin(7, IfaceKind::Pod, true)]);
        assert_eq!(p.detach, vec![7]);
    }
}
