//! Netlink route, address and link events: anything that could have changed our routes or
//! the reachability of a peer kicks the reconciler. Our own route additions are ignored,
//! so applying a plan does not wake us again.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use rtnetlink::{
    MulticastGroup,
    packet_core::NetlinkPayload,
    packet_route::{RouteNetlinkMessage, route::RouteProtocol},
};
use tokio::sync::Notify;
use tracing::warn;

use crate::{kernel::PROTO, shutdown::Shutdown};

const GROUPS: [MulticastGroup; 5] = [
    MulticastGroup::Link,
    MulticastGroup::Ipv4Route,
    MulticastGroup::Ipv6Route,
    MulticastGroup::Ipv4Ifaddr,
    MulticastGroup::Ipv6Ifaddr,
];

pub fn relevant(m: &RouteNetlinkMessage) -> bool {
    match m {
        RouteNetlinkMessage::NewRoute(r) => r.header.protocol != RouteProtocol::Other(PROTO),
        RouteNetlinkMessage::DelRoute(_)
        | RouteNetlinkMessage::NewLink(_)
        | RouteNetlinkMessage::DelLink(_)
        | RouteNetlinkMessage::NewAddress(_)
        | RouteNetlinkMessage::DelAddress(_) => true,
        _ => false,
    }
}

/// Listens until shutdown; a broken socket (e.g. ENOBUFS after a burst) is reopened, with
/// a kick, since events may have been lost.
pub async fn listen(kick: Arc<Notify>, mut shutdown: Shutdown) {
    loop {
        match rtnetlink::new_multicast_connection(&GROUPS) {
            Ok((conn, _handle, mut msgs)) => {
                let task = tokio::spawn(conn);
                loop {
                    tokio::select! {
                        _ = shutdown.wait() => {
                            task.abort();
                            return;
                        }
                        m = msgs.next() => match m {
                            Some((msg, _)) => {
                                if let NetlinkPayload::InnerMessage(inner) = &msg.payload
                                    && relevant(inner) {
                                        kick.notify_one();
                                    }
                            }
                            None => break,
                        }
                    }
                }
                task.abort();
                kick.notify_one();
                warn!("netlink event socket closed; reopening");
            }
            Err(e) => warn!(error = %e, "cannot open netlink event socket; retrying"),
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
