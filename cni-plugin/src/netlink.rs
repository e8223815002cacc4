//! `Datapath` over rtnetlink: one socket in the host namespace, one opened inside the pod's
//! namespace (on a throwaway thread, then driven from here), both on a current-thread
//! runtime that lives only as long as the call.

use std::{
    cell::{OnceCell, RefCell},
    fs::File,
    future::Future,
    net::IpAddr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::Duration,
};

use futures::TryStreamExt;
use hostgw_common::{route, sysctl};
use ipnetwork::IpNetwork;
use netlink_packet_route::{
    AddressFamily,
    address::{AddressAttribute, AddressFlags, AddressMessage},
    link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo as NlLinkInfo, LinkMessage},
    route::{RouteProtocol, RouteScope},
};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder,
};

use crate::{
    config::Mode,
    datapath::{
        Datapath, HostFacts, LinkInfo, Observed, PodAddr, PodFacts, PodLinks, PodSpec, format_mac,
    },
    error::{Error, netlink_errno},
    netns,
};

/// All netlink work of one plugin call shares this budget; past it the call answers 11.
/// With the stdin bound (10 s) and the IPAM lock bound (10 s, twice on a failed ADD) the
/// worst case stays under kubelet's 2-minute runtime request timeout.
const NETLINK_BUDGET: Duration = Duration::from_secs(60);

pub struct NetlinkDatapath {
    rt: tokio::runtime::Runtime,
    deadline: tokio::time::Instant,
    host: OnceCell<Handle>,
    pods: RefCell<Vec<(PathBuf, File, Handle)>>,
}

impl NetlinkDatapath {
    pub fn new() -> Result<NetlinkDatapath, Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(Error::io("start runtime"))?;
        Ok(NetlinkDatapath {
            deadline: tokio::time::Instant::now() + NETLINK_BUDGET,
            rt,
            host: OnceCell::new(),
            pods: RefCell::new(Vec::new()),
        })
    }

    fn block_on<T>(&self, f: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        self.rt.block_on(async {
            tokio::time::timeout_at(self.deadline, f)
                .await
                .unwrap_or_else(|_| {
                    Err(Error::TryAgain(format!(
                        "netlink work did not finish within {NETLINK_BUDGET:?}"
                    )))
                })
        })
    }

    fn host(&self) -> Result<Handle, Error> {
        if let Some(h) = self.host.get() {
            return Ok(h.clone());
        }
        let _guard = self.rt.enter();
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(Error::io("open netlink socket"))?;
        self.rt.spawn(conn);
        Ok(self.host.get_or_init(|| handle).clone())
    }

    /// A netlink handle whose socket lives in the pod's namespace, and the namespace's fd.
    fn pod(&self, path: &Path) -> Result<(Handle, i32), Error> {
        if let Some((_, f, h)) = self.pods.borrow().iter().find(|(p, _, _)| p == path) {
            return Ok((h.clone(), f.as_raw_fd()));
        }
        let ns = netns::open(path)?;
        let rt = self.rt.handle().clone();
        let (conn, handle, _) = netns::run_in(&ns, path, move || {
            let _guard = rt.enter();
            rtnetlink::new_connection()
        })?
        .map_err(Error::io(format!(
            "open netlink socket in {}",
            path.display()
        )))?;
        self.rt.spawn(conn);
        let fd = ns.as_raw_fd();
        self.pods
            .borrow_mut()
            .push((path.to_path_buf(), ns, handle.clone()));
        Ok((handle, fd))
    }
}

impl Datapath for NetlinkDatapath {
    fn check_pod(&self, netns: &Path, ifname: &str) -> Result<(), Error> {
        let (pod, _) = self.pod(netns)?;
        self.block_on(async {
            match link_by_name(&pod, ifname).await? {
                Some(_) => Err(Error::Config(format!(
                    "container interface {ifname} already exists in {}",
                    netns.display()
                ))),
                None => Ok(()),
            }
        })
    }

    fn setup(&self, spec: &PodSpec) -> Result<PodLinks, Error> {
        ensure_forwarding(&spec.addrs)?;
        let host = self.host()?;
        let (pod, pod_fd) = self.pod(&spec.netns)?;
        let bridge = match &spec.mode {
            Mode::Bridge(name) => Some(self.block_on(ensure_bridge(&host, name, spec))?),
            Mode::Ptp => None,
        };
        // Nothing to undo when the veth could not be made: whatever holds the name is not
        // ours to delete.
        self.block_on(create_veth(&host, spec, pod_fd))?;
        let bridge_index = bridge.as_ref().map(|b| b.1);
        let host_info = match self.block_on(configure_host_end(&host, spec, bridge_index)) {
            Ok(x) => x,
            Err(e) => return Err(self.undo(spec, e)),
        };
        let bridge = bridge.map(|b| b.0);
        // Per-interface sysctls must be set before the link comes up and addresses land.
        let ns = &self
            .pods
            .borrow()
            .iter()
            .find(|(p, _, _)| *p == spec.netns)
            .map(|(_, f, _)| f.try_clone());
        let sysctls = match ns {
            Some(Ok(f)) => netns::run_in(f, &spec.netns, || pod_sysctls(spec)).and_then(|r| r),
            _ => Err(Error::Internal("pod namespace handle vanished".into())),
        };
        if let Err(e) = sysctls {
            return Err(self.undo(spec, e));
        }
        match self.block_on(configure_pod_end(&pod, spec)) {
            Ok(pod_info) => Ok(PodLinks {
                bridge,
                host: host_info,
                pod: pod_info,
            }),
            Err(e) => Err(self.undo(spec, e)),
        }
    }

    fn teardown(&self, host_veth: &str, alias: &str) -> Result<bool, Error> {
        let host = self.host()?;
        self.block_on(async {
            let Some(link) = link_by_name(&host, host_veth).await? else {
                return Ok(false);
            };
            if !is_ours(&link, alias) {
                return Ok(false);
            }
            match host.link().del(link.header.index).execute().await {
                Ok(()) => Ok(true),
                Err(e) if netlink_errno(&e) == Some(libc_enodev()) => Ok(false),
                Err(e) => Err(Error::netlink(format!("delete {host_veth}"))(e)),
            }
        })
    }

    fn observe(&self, spec: &PodSpec) -> Result<Observed, Error> {
        let host = self.host()?;
        let pod = match self.pod(&spec.netns) {
            Ok((p, _)) => Some(p),
            // The host's own namespace, or no namespace at all: refused as in ADD.
            Err(e) if e.code() == 4 => return Err(e),
            Err(_) => None,
        };
        self.block_on(async {
            let host_facts = match link_by_name(&host, &spec.host_veth).await? {
                Some(l) => Some(host_facts(&host, &l).await?),
                None => None,
            };
            let pod_facts = match &pod {
                Some(p) => match link_by_name(p, &spec.ifname).await? {
                    Some(l) => Some(pod_facts(p, &l).await?),
                    None => None,
                },
                None => None,
            };
            Ok(Observed {
                host: host_facts,
                pod: pod_facts,
            })
        })
    }

    fn host_veths(&self, alias_prefix: &str) -> Result<Vec<(String, String)>, Error> {
        let host = self.host()?;
        self.block_on(async {
            let links: Vec<LinkMessage> = host
                .link()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(Error::netlink("dump links"))?;
            Ok(links
                .iter()
                .filter_map(|l| Some((link_name(l)?, link_alias(l)?)))
                .filter(|(_, a)| a.starts_with(alias_prefix))
                .collect())
        })
    }

    fn default_mtu(&self) -> Result<u32, Error> {
        let host = self.host()?;
        self.block_on(async {
            let mtu = route::default_route_mtu(&host)
                .await
                .map_err(Error::netlink("find the default route's link"))?;
            Ok(mtu.unwrap_or(1500))
        })
    }
}

impl NetlinkDatapath {
    /// Rollback of a failed setup: deleting the host end removes the pod end, its
    /// addresses and the host routes through it. The original error is what counts.
    fn undo(&self, spec: &PodSpec, err: Error) -> Error {
        let _ = self.teardown(&spec.host_veth, &spec.alias);
        err
    }
}

fn libc_enodev() -> i32 {
    nix::errno::Errno::ENODEV as i32
}

fn ensure_forwarding(addrs: &[PodAddr]) -> Result<(), Error> {
    let v4 = addrs.iter().any(|a| a.addr.is_ipv4());
    let v6 = addrs.iter().any(|a| a.addr.is_ipv6());
    sysctl::ensure_forwarding(v4, v6).map_err(Error::io("enable IP forwarding"))
}

/// Inside the pod: announce the address on link-up (arp_notify) and skip IPv6 DAD, which
/// would hold the address back ~1 s for a link that has exactly one peer, the host.
fn pod_sysctls(spec: &PodSpec) -> Result<(), Error> {
    netns::write_sysctl(&format!("net/ipv4/conf/{}/arp_notify", spec.ifname), "1")?;
    if spec.addrs.iter().any(|a| a.addr.is_ipv6()) {
        netns::write_sysctl(&format!("net/ipv6/conf/{}/accept_dad", spec.ifname), "0")?;
    }
    Ok(())
}

async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, Error> {
    match h.link().get().match_name(name).execute().try_next().await {
        Ok(l) => Ok(l),
        Err(e) if netlink_errno(&e) == Some(libc_enodev()) => Ok(None),
        Err(e) => Err(Error::netlink(format!("look up link {name}"))(e)),
    }
}

fn link_name(l: &LinkMessage) -> Option<String> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// A host veth is ours when its alias is `alias`, or still empty: an ADD killed between
/// creating the veth and setting its alias. One rule for teardown and for ADD's retry.
fn is_ours(l: &LinkMessage, alias: &str) -> bool {
    is_kind(l, InfoKind::Veth) && link_alias(l).is_none_or(|a| a.is_empty() || a == alias)
}

fn link_alias(l: &LinkMessage) -> Option<String> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(n) => Some(n.clone()),
        _ => None,
    })
}

fn link_mac(l: &LinkMessage) -> String {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) => Some(format_mac(m)),
            _ => None,
        })
        .unwrap_or_default()
}

fn is_kind(l: &LinkMessage, kind: InfoKind) -> bool {
    l.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, NlLinkInfo::Kind(k) if *k == kind)),
        _ => false,
    })
}

/// The bridge of bridge mode: created once per node, then reused; holds each gateway.
async fn ensure_bridge(h: &Handle, name: &str, spec: &PodSpec) -> Result<(LinkInfo, u32), Error> {
    let link = match link_by_name(h, name).await? {
        Some(l) => l,
        None => {
            // An explicit MAC pins the bridge's address; left to the kernel it follows the
            // lowest port MAC and changes as pods come and go (and with it every pod's ARP entry).
            let mut mac: [u8; 6] = rand::random();
            mac[0] = (mac[0] & 0xfe) | 0x02;
            let msg = LinkBridge::new(name)
                .mtu(spec.mtu)
                .address(mac.to_vec())
                .up()
                .build();
            match h.link().add(msg).execute().await {
                Ok(()) => {}
                // A concurrent ADD created it first: fine.
                Err(e) if netlink_errno(&e) == Some(nix::errno::Errno::EEXIST as i32) => {}
                Err(e) => return Err(Error::netlink(format!("create bridge {name}"))(e)),
            }
            link_by_name(h, name)
                .await?
                .ok_or_else(|| Error::Internal(format!("bridge {name} vanished")))?
        }
    };
    if !is_kind(&link, InfoKind::Bridge) {
        return Err(Error::Config(format!(
            "{name:?} already exists but is not a bridge"
        )));
    }
    let index = link.header.index;
    let up = LinkUnspec::new_with_index(index).up().build();
    h.link()
        .set(up)
        .execute()
        .await
        .map_err(Error::netlink(format!("set {name} up")))?;
    for a in &spec.addrs {
        let gw = IpNetwork::new(a.gateway, a.addr.prefix()).expect("gateway prefix");
        add_address(h, index, gw, AddressFlags::Nodad, true).await?;
    }
    Ok((
        LinkInfo {
            name: name.to_owned(),
            mac: link_mac(&link),
        },
        index,
    ))
}

/// One RTM_NEWLINK from the host socket: the pod end is created directly inside the pod's
/// namespace (IFLA_NET_NS_FD on the main link) and the peer in ours. Nothing is moved
/// between namespaces afterwards, which would cost an extra rtnl round and a rename.
async fn create_veth(h: &Handle, spec: &PodSpec, pod_fd: i32) -> Result<(), Error> {
    let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(spec.host_veth.clone())
        .mtu(spec.mtu)
        .build();
    if spec.big_tcp {
        peer.attributes.extend(big_tcp_attrs());
    }
    let mut b = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(spec.ifname.clone())
        .mtu(spec.mtu)
        .setns_by_fd(pod_fd)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)));
    if spec.big_tcp {
        for a in big_tcp_attrs() {
            b = b.append_extra_attribute(a);
        }
    }
    if let Some(mac) = spec.mac {
        b = b.address(mac.to_vec());
    }
    let msg = b.build();
    match h.link().add(msg.clone()).execute().await {
        Ok(()) => Ok(()),
        Err(e) if netlink_errno(&e) == Some(nix::errno::Errno::EEXIST as i32) => {
            // Our host-side name is taken. If it is a leftover of this same attachment
            // (an ADD killed mid-way whose DEL never came), replace it; otherwise refuse.
            match link_by_name(h, &spec.host_veth).await? {
                Some(l) if is_ours(&l, &spec.alias) => {
                    h.link()
                        .del(l.header.index)
                        .execute()
                        .await
                        .map_err(Error::netlink("delete stale veth"))?;
                    h.link()
                        .add(msg)
                        .execute()
                        .await
                        .map_err(Error::netlink("create veth"))
                }
                Some(_) => Err(Error::Internal(format!(
                    "host interface {} already exists",
                    spec.host_veth
                ))),
                None => Err(Error::Config(format!(
                    "container interface {} already exists in {}",
                    spec.ifname,
                    spec.netns.display()
                ))),
            }
        }
        Err(e) => Err(Error::netlink(format!(
            "create veth {}/{}",
            spec.host_veth, spec.ifname
        ))(e)),
    }
}

/// BIG TCP's sizes for a veth end (IPv6 and, since Linux 6.3, IPv4), in the creating
/// RTM_NEWLINK: the kernel applies them in `rtnl_create_link`, before the link exists for
/// anyone, so no socket of the pod ever caches the 64 KB default. veth's `tso_max_size` is
/// 524280; a kernel without the IPv4 attributes ignores them (IPv6 BIG TCP still applies).
fn big_tcp_attrs() -> [LinkAttribute; 4] {
    const SIZE: u32 = 185_000;
    [
        LinkAttribute::GsoMaxSize(SIZE),
        LinkAttribute::GroMaxSize(SIZE),
        LinkAttribute::GsoIpv4MaxSize(SIZE),
        LinkAttribute::GroIpv4MaxSize(SIZE),
    ]
}

/// Host end: alias (for GC), up, then ptp's gateway /32 and per-pod route, or bridge port.
async fn configure_host_end(
    h: &Handle,
    spec: &PodSpec,
    bridge: Option<u32>,
) -> Result<LinkInfo, Error> {
    let link = link_by_name(h, &spec.host_veth)
        .await?
        .ok_or_else(|| Error::Internal(format!("host veth {} vanished", spec.host_veth)))?;
    let index = link.header.index;
    if spec.addrs.iter().any(|a| a.addr.is_ipv6()) {
        // The host can only solicit a new pod's neighbour entry from a non-tentative
        // link-local address (ndisc_send_ns gives up otherwise), so with DAD on, the first
        // second of IPv6 traffic to every new pod is lost. A veth has exactly one peer.
        netns::write_sysctl(&format!("net/ipv6/conf/{}/accept_dad", spec.host_veth), "0")?;
    }
    let mut b = LinkUnspec::new_with_index(index)
        .alias(spec.alias.clone())
        .up();
    if let Some(br) = bridge {
        b = b.controller(br);
    }
    h.link()
        .set(b.build())
        .execute()
        .await
        .map_err(Error::netlink(format!("set {} up", spec.host_veth)))?;
    match bridge {
        Some(_) => {
            // Hairpin lets a pod reach itself through a service IP that DNATs back to it.
            let port = LinkBridgePort::new(index).hairpin(true).build();
            h.link()
                .set_port(port)
                .execute()
                .await
                .map_err(Error::netlink("set hairpin"))?;
        }
        None => {
            for a in &spec.addrs {
                let full = if a.gateway.is_ipv4() { 32 } else { 128 };
                let gw = IpNetwork::new(a.gateway, full).expect("full prefix");
                add_address(h, index, gw, AddressFlags::Nodad, true).await?;
                let dst = IpNetwork::new(a.addr.ip(), full).expect("full prefix");
                add_route(h, dst, None, index, RouteScope::Link).await?;
            }
        }
    }
    Ok(LinkInfo {
        name: spec.host_veth.clone(),
        mac: link_mac(&link),
    })
}

/// Pod end: up, addresses, and a default route via the gateway (made on-link first in ptp,
/// where the pod's address carries no prefix route).
async fn configure_pod_end(h: &Handle, spec: &PodSpec) -> Result<LinkInfo, Error> {
    let link = link_by_name(h, &spec.ifname)
        .await?
        .ok_or_else(|| Error::Internal(format!("pod interface {} vanished", spec.ifname)))?;
    let index = link.header.index;
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(Error::netlink(format!("set {} up", spec.ifname)))?;
    let ptp = spec.mode == Mode::Ptp;
    for a in &spec.addrs {
        let flags = if ptp {
            AddressFlags::Nodad | AddressFlags::Noprefixroute
        } else {
            AddressFlags::Nodad
        };
        add_address(h, index, a.addr, flags, false).await?;
        // A pod attached twice to this network (eth0, eth1: the spec allows it) keeps
        // the gateway and default routes of its first attachment, which already exist
        // (EEXIST); the second interface still gets its address, and the host its /32.
        if ptp {
            let full = if a.gateway.is_ipv4() { 32 } else { 128 };
            let gw = IpNetwork::new(a.gateway, full).expect("full prefix");
            if !tolerate_exists(add_route(h, gw, None, index, RouteScope::Link).await)? {
                // The gateway is on-link through the first attachment only, so a default
                // route through this one would be unreachable (ENETUNREACH); the first's
                // default route serves both.
                continue;
            }
        }
        let default = crate::datapath::default_route(a.addr);
        tolerate_exists(add_route(h, default, Some(a.gateway), index, RouteScope::Universe).await)?;
    }
    Ok(LinkInfo {
        name: spec.ifname.clone(),
        mac: link_mac(&link),
    })
}

/// A route that is already there (EEXIST) is fine: Ok(false) then, Ok(true) if added.
fn tolerate_exists(r: Result<(), Error>) -> Result<bool, Error> {
    match r {
        Ok(()) => Ok(true),
        Err(Error::Netlink { source, .. })
            if netlink_errno(&source) == Some(nix::errno::Errno::EEXIST as i32) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

async fn add_address(
    h: &Handle,
    index: u32,
    net: IpNetwork,
    flags: AddressFlags,
    may_exist: bool,
) -> Result<(), Error> {
    let mut req = h.address().add(index, net.ip(), net.prefix());
    req.message_mut()
        .attributes
        .push(AddressAttribute::Flags(flags));
    match req.execute().await {
        Ok(()) => Ok(()),
        Err(e) if may_exist && netlink_errno(&e) == Some(nix::errno::Errno::EEXIST as i32) => {
            Ok(())
        }
        Err(e) => Err(Error::netlink(format!("add address {net}"))(e)),
    }
}

async fn add_route(
    h: &Handle,
    dst: IpNetwork,
    gw: Option<IpAddr>,
    oif: u32,
    scope: RouteScope,
) -> Result<(), Error> {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.ip(), dst.prefix())
        .map_err(|e| Error::Internal(format!("route {dst}: {e}")))?
        .output_interface(oif)
        .scope(scope);
    if let Some(g) = gw {
        b = b
            .gateway(g)
            .map_err(|e| Error::Internal(format!("route {dst}: {e}")))?;
    }
    h.route()
        .add(b.build())
        .execute()
        .await
        .map_err(Error::netlink(format!("add route {dst}")))
}

async fn addrs_of(h: &Handle, index: u32) -> Result<Vec<IpNetwork>, Error> {
    let msgs: Vec<AddressMessage> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(Error::netlink("dump addresses"))?;
    Ok(msgs
        .iter()
        .filter_map(|m| {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })?;
            IpNetwork::new(ip, m.header.prefix_len).ok()
        })
        .collect())
}

/// Main-table routes, both families; only those leaving through link `index` if given.
async fn routes_of(
    h: &Handle,
    index: Option<u32>,
) -> Result<Vec<(IpNetwork, Option<IpAddr>)>, Error> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        out.extend(
            route::dump_main(h, family, RouteProtocol::Unspec)
                .await
                .map_err(Error::netlink("dump routes"))?
                .iter()
                .filter(|r| index.is_none_or(|i| route::oif(r) == Some(i)))
                .filter_map(|r| Some((route::dst(r)?, route::gateway(r)))),
        );
    }
    Ok(out)
}

async fn host_facts(h: &Handle, l: &LinkMessage) -> Result<HostFacts, Error> {
    let index = l.header.index;
    let master_index = l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    });
    let master = match master_index {
        Some(i) => h
            .link()
            .get()
            .match_index(i)
            .execute()
            .try_next()
            .await
            .ok()
            .flatten()
            .and_then(|m| link_name(&m)),
        None => None,
    };
    Ok(HostFacts {
        mac: link_mac(l),
        master,
        addrs: addrs_of(h, index).await?,
        routes: routes_of(h, Some(index))
            .await?
            .into_iter()
            .map(|(d, _)| d)
            .collect(),
    })
}

async fn pod_facts(h: &Handle, l: &LinkMessage) -> Result<PodFacts, Error> {
    Ok(PodFacts {
        is_veth: is_kind(l, InfoKind::Veth),
        mac: link_mac(l),
        addrs: addrs_of(h, l.header.index).await?,
        // Every route of the pod's table: a route in prevResult may leave through another
        // interface (a second attachment, an earlier plugin's), as the reference checks it.
        routes: routes_of(h, None).await?,
    })
}
