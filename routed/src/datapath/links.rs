//! The node's links as the fast path needs them, from one netlink dump; and the link events
//! that wake the keeper (its own multicast socket, so the reconciler's filter stays as it is).

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Duration};

use futures::{StreamExt, TryStreamExt};
use rtnetlink::{
    Handle, MulticastGroup,
    packet_core::NetlinkPayload,
    packet_route::{RouteNetlinkMessage, link::LinkAttribute, tc::TcAttribute},
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::plan::LinkInfo;
use crate::kernel::{KernelError, dump};

fn netlink(op: &str) -> impl FnOnce(rtnetlink::Error) -> KernelError + '_ {
    move |source| KernelError::Netlink {
        op: op.into(),
        source,
    }
}

/// The node's links, each with the first qdisc on it that is not `noqueue` (one dump of
/// links, one of qdiscs).
pub async fn list(h: &Handle) -> Result<Vec<LinkInfo>, KernelError> {
    let msgs: Vec<_> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("dump links"))?;
    let qdiscs: Vec<_> = h
        .qdisc()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("dump qdiscs"))?;
    let mut shaped: HashMap<u32, String> = HashMap::new();
    for q in &qdiscs {
        let kind = q.attributes.iter().find_map(|a| match a {
            TcAttribute::Kind(k) => Some(k.as_str()),
            _ => None,
        });
        if let (Ok(i), Some(k)) = (u32::try_from(q.header.index), kind)
            && k != "noqueue"
        {
            shaped.entry(i).or_insert_with(|| k.to_owned());
        }
    }
    Ok(msgs
        .iter()
        .filter_map(|m| {
            let mut l = LinkInfo {
                ifindex: m.header.index,
                name: String::new(),
                master: None,
                peer: None,
                qdisc: shaped.get(&m.header.index).cloned(),
            };
            let (mut peer, mut nsid) = (None, None);
            for a in &m.attributes {
                match a {
                    LinkAttribute::IfName(n) => l.name = n.clone(),
                    LinkAttribute::Controller(i) => l.master = Some(*i),
                    LinkAttribute::Link(i) => peer = Some(*i),
                    LinkAttribute::LinkNetNsId(i) => nsid = Some(*i),
                    _ => {}
                }
            }
            l.peer = peer.map(|p| (p, nsid));
            (!l.name.is_empty()).then_some(l)
        })
        .collect())
}

/// The link holding the node's public IP: the uplink the daemon routes over.
pub async fn uplink_of(h: &Handle, ip: IpAddr) -> Result<u32, KernelError> {
    dump::addresses(h)
        .await?
        .into_iter()
        .find(|(_, a, _)| *a == ip)
        .map(|(i, _, _)| i)
        .ok_or_else(|| KernelError::Other(format!("no link holds the public IP {ip}")))
}

/// Kicks on every NEWLINK/DELLINK (a new pod's veth, a deleted one, the uplink re-created)
/// and every qdisc added or deleted (the bandwidth plugin shaping a pod after our ADD) until
/// shutdown; a broken socket is reopened with a kick, events may have been lost.
pub async fn watch(kick: Arc<Notify>, sd: CancellationToken) {
    loop {
        match rtnetlink::new_multicast_connection(&[MulticastGroup::Link, MulticastGroup::Tc]) {
            Ok((conn, _handle, mut msgs)) => {
                let task = tokio::spawn(conn);
                loop {
                    tokio::select! {
                        _ = sd.cancelled() => { task.abort(); return; }
                        m = msgs.next() => match m {
                            Some((msg, _)) => if matches!(
                                msg.payload,
                                NetlinkPayload::InnerMessage(
                                    RouteNetlinkMessage::NewLink(_)
                                        | RouteNetlinkMessage::DelLink(_)
                                        | RouteNetlinkMessage::NewQueueDiscipline(_)
                                        | RouteNetlinkMessage::DelQueueDiscipline(_)
                                )
                            ) {
                                kick.notify_one();
                            },
                            None => break,
                        }
                    }
                }
                task.abort();
                kick.notify_one();
                warn!("netlink link-event socket of the fast path closed; reopening");
            }
            Err(e) => warn!(error = %e, "cannot open the fast path's link-event socket; retrying"),
        }
        tokio::select! {
            _ = sd.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
