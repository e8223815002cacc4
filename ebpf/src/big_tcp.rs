//! BIG TCP on an interface: GSO/GRO sizes above 64 KB for IPv6 (Linux 5.19) and IPv4
//! (`IFLA_GSO_IPV4_MAX_SIZE`, Linux 6.3). Debian 12's iproute2 (6.1) cannot set the IPv4
//! sizes, hence netlink. The plugin sets it on both ends of a pod's veth; the uplink decides
//! what leaves the node (a physical NIC needs a driver with a large `tso_max_size`).

use std::io;

use rtnetlink::{
    packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::{
        RouteNetlinkMessage,
        link::{LinkAttribute, LinkMessage},
    },
    sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
};

use crate::error::{Error, Result};

/// The size issue 13 measured with: under veth's `tso_max_size` (524280), far above 64 KB.
pub const BIG_TCP_SIZE: u32 = 185_000;
/// The kernel's default (GSO_LEGACY_MAX_SIZE), to turn BIG TCP off again.
pub const LEGACY_GSO_SIZE: u32 = 65_536;

/// Sets the four GSO/GRO maximums of `ifindex` (in the caller's netns) to `size` and reads them
/// back: a kernel that silently ignores an attribute it does not know is reported, not trusted.
pub fn set_gso_gro_max(ifindex: u32, size: u32) -> Result<()> {
    let err = |what, source| Error::Netlink {
        what,
        ifindex,
        source,
    };
    let sock = open().map_err(|e| err("open a netlink socket", e))?;
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    m.attributes = vec![
        LinkAttribute::GsoMaxSize(size),
        LinkAttribute::GroMaxSize(size),
        LinkAttribute::GsoIpv4MaxSize(size),
        LinkAttribute::GroIpv4MaxSize(size),
    ];
    request(
        &sock,
        RouteNetlinkMessage::SetLink(m),
        NLM_F_REQUEST | NLM_F_ACK,
    )
    .map_err(|e| err("set GSO/GRO max sizes", e))?;
    let mut get = LinkMessage::default();
    get.header.index = ifindex;
    let got = match request(&sock, RouteNetlinkMessage::GetLink(get), NLM_F_REQUEST)
        .map_err(|e| err("read the link back", e))?
    {
        Some(RouteNetlinkMessage::NewLink(l)) => l.attributes,
        _ => Vec::new(),
    };
    let ipv4 = got.iter().find_map(|a| match a {
        LinkAttribute::GsoIpv4MaxSize(v) => Some(*v),
        _ => None,
    });
    let ipv6 = got.iter().find_map(|a| match a {
        LinkAttribute::GsoMaxSize(v) => Some(*v),
        _ => None,
    });
    if ipv4 != Some(size) || ipv6 != Some(size) {
        return Err(Error::GsoNotApplied {
            ifindex,
            want: size,
            ipv4,
            ipv6,
        });
    }
    Ok(())
}

fn open() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    Ok(sock)
}

/// One request, one answer: the kernel's error (as io::Error with its errno), its ack, or the
/// message it sent back.
fn request(
    sock: &Socket,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> io::Result<Option<RouteNetlinkMessage>> {
    let mut nl = NetlinkMessage::from(msg);
    nl.header.flags = flags;
    nl.header.sequence_number = 1;
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    sock.send(&buf, 0)?;
    let mut rbuf: Vec<u8> = Vec::with_capacity(1 << 16);
    sock.recv(&mut rbuf, 0)?;
    let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rbuf)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    match reply.payload {
        NetlinkPayload::Error(e) => match e.code {
            None => Ok(None),
            Some(c) => Err(io::Error::from_raw_os_error(-c.get())),
        },
        NetlinkPayload::InnerMessage(m) => Ok(Some(m)),
        _ => Ok(None),
    }
}
