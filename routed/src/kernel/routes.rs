//! The real `RouteTable` over rtnetlink, on a socket with strict checking so the kernel
//! filters dumps by protocol and table for us.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use futures::TryStreamExt;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        route::{RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType},
    },
    sys::TokioSocket,
};

use super::{
    HostRoute, KernelError, LocalView, NextHop, PROTO, Results, RouteTable,
    batch::Write,
    message::{message, owned, parse},
};

const ENOENT: i32 = 2;
/// `RT_TABLE_LOCAL` (rtnetlink.h): local, broadcast and anycast entries.
const RT_TABLE_LOCAL: u8 = 255;
const ESRCH: i32 = 3;

#[derive(Clone)]
pub struct NetlinkRoutes {
    handle: Handle,
    /// The batch socket, opened once (see `batch`); one batch at a time uses it, so
    /// acks are never read by the wrong writer.
    batch: Arc<tokio::sync::Mutex<TokioSocket>>,
    /// The uplink's link index (0 until known): link-local next hops go out of it.
    uplink: Arc<AtomicU32>,
}

const _: fn() = || {
    fn assert<T: RouteTable>() {}
    assert::<NetlinkRoutes>();
};

impl NetlinkRoutes {
    /// Opens the socket and spawns its connection task on the current runtime.
    pub fn connect() -> Result<NetlinkRoutes, KernelError> {
        let (conn, handle, _) = rtnetlink::new_connection_with_strict_check()?;
        let batch = Arc::new(tokio::sync::Mutex::new(super::batch::open()?));
        tokio::spawn(conn);
        Ok(NetlinkRoutes {
            handle,
            batch,
            uplink: Arc::default(),
        })
    }

    /// The uplink, once detected: the device of routes via a link-local next hop.
    pub fn set_uplink(&self, index: u32) {
        self.uplink.store(index, Ordering::Relaxed);
    }

    fn uplink(&self) -> u32 {
        self.uplink.load(Ordering::Relaxed)
    }

    async fn write_all(&self, routes: &[HostRoute], how: Write) -> Results {
        let sock = self.batch.lock().await;
        super::batch::write_all(&sock, routes, how, self.uplink()).await
    }

    async fn dump(
        &self,
        family: AddressFamily,
        proto: RouteProtocol,
    ) -> Result<Vec<RouteMessage>, KernelError> {
        super::dump::routes(&self.handle, family, proto).await
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

/// One main-table route into the view: every destination not ours is foreign; a
/// gateway-less unicast one (not ours, not multipath, not default) is a connected prefix.
fn add_main(view: &mut LocalView, m: &RouteMessage) {
    let (dst, gw) = parse(m);
    let Some(dst) = dst else { return };
    if m.header.protocol == RouteProtocol::Other(PROTO)
        || m.header.table != RouteHeader::RT_TABLE_MAIN
    {
        return;
    }
    view.foreign.insert(dst);
    let has_nexthops = m
        .attributes
        .iter()
        .any(|a| matches!(a, RouteAttribute::MultiPath(_)));
    if gw.is_none() && !has_nexthops && m.header.kind == RouteType::Unicast && dst.prefix() > 0 {
        view.connected.push(dst);
    }
}

/// The delete message for our route `r`: an owned route without a gateway is listed with an
/// unspecified next hop, and deleted without one. The kernel matches a delete on what it
/// names (protocol, type, metric), not on the mtu: a stale mtu never stops a delete.
pub(super) fn deletion(r: &HostRoute, mut m: RouteMessage) -> RouteMessage {
    if r.via.is_unspecified() {
        m.attributes
            .retain(|a| !matches!(a, RouteAttribute::Gateway(_)));
    }
    m.attributes
        .retain(|a| !matches!(a, RouteAttribute::Metrics(_)));
    m
}

impl RouteTable for NetlinkRoutes {
    async fn list_owned(&self) -> Result<BTreeSet<HostRoute>, KernelError> {
        let mut out = BTreeSet::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            for m in self.dump(family, RouteProtocol::Other(PROTO)).await? {
                // Strict checking filters already; re-check in case of an old kernel.
                if m.header.protocol != RouteProtocol::Other(PROTO)
                    || m.header.table != RouteHeader::RT_TABLE_MAIN
                {
                    continue;
                }
                if let Some(r) = owned(&m) {
                    out.insert(r);
                }
            }
        }
        Ok(out)
    }

    async fn replace(&self, r: &HostRoute) -> Result<(), KernelError> {
        self.handle
            .route()
            .add(message(r, self.uplink())?)
            .replace()
            .execute()
            .await
            .map_err(|source| KernelError::Netlink {
                op: format!("replace {r}"),
                source,
            })
    }

    async fn create(&self, r: &HostRoute) -> Result<(), KernelError> {
        // rtnetlink's add without `.replace()` sends NLM_F_CREATE | NLM_F_EXCL.
        self.handle
            .route()
            .add(message(r, self.uplink())?)
            .execute()
            .await
            .map_err(|source| KernelError::Netlink {
                op: format!("create {r}"),
                source,
            })
    }

    async fn replace_all(&self, routes: &[HostRoute]) -> Results {
        self.write_all(routes, Write::Replace).await
    }

    async fn create_all(&self, routes: &[HostRoute]) -> Results {
        self.write_all(routes, Write::Create).await
    }

    async fn delete_all(&self, routes: &[HostRoute]) -> Results {
        self.write_all(routes, Write::Delete).await
    }

    async fn delete(&self, r: &HostRoute) -> Result<(), KernelError> {
        let m = deletion(r, message(r, self.uplink())?);
        match self.handle.route().del(m).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e))
                if [-ENOENT, -ESRCH, ENOENT, ESRCH].contains(&e.raw_code()) =>
            {
                Ok(())
            }
            Err(source) => Err(KernelError::Netlink {
                op: format!("delete {r}"),
                source,
            }),
        }
    }

    async fn local_view(&self) -> Result<LocalView, KernelError> {
        let mut view = LocalView::default();
        let uplink = self.uplink();
        for (index, ip, _) in super::dump::addresses(&self.handle).await? {
            view.uplink_link_local |=
                uplink != 0 && index == uplink && crate::net::is_link_local(&ip);
            view.addrs.insert(ip);
        }
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            for m in self.dump(family, RouteProtocol::Unspec).await? {
                add_main(&mut view, &m);
            }
            let local = RT_TABLE_LOCAL;
            for m in
                super::dump::routes_in(&self.handle, family, RouteProtocol::Unspec, local).await?
            {
                if let (Some(dst), _) = parse(&m)
                    && m.header.table == local
                {
                    view.foreign.insert(dst);
                    view.local.push(dst);
                }
            }
        }
        Ok(view)
    }

    async fn lookup(&self, ip: IpAddr) -> Result<NextHop, KernelError> {
        let len = if ip.is_ipv4() { 32 } else { 128 };
        let mut msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(ip, len)
            .map_err(|e| KernelError::Other(e.to_string()))?
            .build();
        msg.header.table = 0;
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unspec;
        let answer: Result<Vec<RouteMessage>, _> =
            self.handle.route().get(msg).execute().try_collect().await;
        match answer {
            Ok(msgs) => Ok(match msgs.first().map(parse) {
                Some((_, None)) => NextHop::OnLink,
                Some((_, gw)) => NextHop::ViaGateway(gw),
                None => NextHop::ViaGateway(None),
            }),
            // ENETUNREACH / EHOSTUNREACH: no route at all, which is as unusable as a gateway.
            Err(rtnetlink::Error::NetlinkError(_)) => Ok(NextHop::ViaGateway(None)),
            Err(source) => Err(KernelError::Netlink {
                op: format!("route get {ip}"),
                source,
            }),
        }
    }
}
