//! Many route writes with few syscalls: up to 256 requests per `send`, acks read back in
//! bulk. rtnetlink's one-request-one-future path costs ~100 µs per route on a busy host;
//! convergence at 5,000 peers needs less. Runs on a blocking thread with its own socket,
//! opened once at start: a pass never needs a new file descriptor (a flood of HTTP
//! connections that used every fd once stopped routing for that reason).

use std::sync::atomic::{AtomicU32, Ordering};

use rtnetlink::{
    packet_core::{
        NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
        NetlinkPayload,
    },
    packet_route::RouteNetlinkMessage,
    sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
};

use super::{HostRoute, KernelError, Results, message::message};

const PER_SEND: usize = 256;

/// How a batch writes: over our own route, or only where no route exists at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// `NLM_F_REPLACE`: swaps the next hop of a route we hold.
    Replace,
    /// `NLM_F_EXCL`: `EEXIST` if any route, of any protocol, holds the destination.
    Create,
    /// `RTM_DELROUTE` of our route (the message carries protocol 75, which the kernel
    /// matches); one already gone is success.
    Delete,
}

impl Write {
    fn flags(self) -> u16 {
        let how = match self {
            Write::Replace => NLM_F_REPLACE | NLM_F_CREATE,
            Write::Create => NLM_F_EXCL | NLM_F_CREATE,
            Write::Delete => 0,
        };
        NLM_F_REQUEST | NLM_F_ACK | how
    }

    fn verb(self) -> &'static str {
        match self {
            Write::Replace => "replace",
            Write::Create => "create",
            Write::Delete => "delete",
        }
    }
}

pub fn write_all(sock: &Socket, routes: &[HostRoute], how: Write) -> Results {
    routes
        .chunks(PER_SEND)
        .flat_map(|c| chunk(sock, c, how))
        .collect()
}

pub fn open() -> std::io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    // Room for every ack of a chunk (an ack with the echoed header is ~36 + request bytes).
    sock.set_rx_buf_sz(4 << 20)?;
    Ok(sock)
}

/// Sequence numbers go on across chunks and passes: the socket lives as long as the
/// daemon, so a late ack of an earlier chunk must not be taken for one of this chunk.
static SEQ: AtomicU32 = AtomicU32::new(1);

fn chunk(sock: &Socket, routes: &[HostRoute], how: Write) -> Results {
    let base = SEQ.fetch_add(PER_SEND as u32, Ordering::Relaxed);
    let mut results: Vec<Option<Result<(), KernelError>>> =
        (0..routes.len()).map(|_| None).collect();
    let mut buf = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        match message(r) {
            Ok(m) => {
                let m = match how {
                    Write::Delete => RouteNetlinkMessage::DelRoute(super::routes::deletion(r, m)),
                    _ => RouteNetlinkMessage::NewRoute(m),
                };
                let mut nl = NetlinkMessage::from(m);
                nl.header.flags = how.flags();
                nl.header.sequence_number = base.wrapping_add(i as u32);
                nl.finalize();
                let start = buf.len();
                buf.resize(start + nl.buffer_len(), 0);
                nl.serialize(&mut buf[start..]);
            }
            Err(e) => results[i] = Some(Err(e)),
        }
    }
    let mut pending = results.iter().filter(|r| r.is_none()).count();
    if let Err(e) = sock.send(&buf, 0) {
        return fail_rest(routes, results, &format!("send: {e}"));
    }
    let mut rbuf: Vec<u8> = Vec::with_capacity(1 << 16);
    while pending > 0 {
        rbuf.clear();
        if let Err(e) = sock.recv(&mut rbuf, 0) {
            return fail_rest(routes, results, &format!("recv: {e}"));
        }
        let mut off = 0;
        while off < rbuf.len() {
            let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rbuf[off..]) else {
                break;
            };
            let len = (msg.header.length as usize).max(16);
            let idx = msg.header.sequence_number.wrapping_sub(base) as usize;
            if let (NetlinkPayload::Error(e), Some(slot)) = (msg.payload, results.get_mut(idx))
                && slot.is_none()
            {
                pending -= 1;
                *slot = Some(match e.code {
                    None => Ok(()),
                    // ENOENT / ESRCH: the route to delete is gone already.
                    Some(c) if how == Write::Delete && [2, 3].contains(&-c.get()) => Ok(()),
                    Some(c) => Err(KernelError::Errno {
                        op: format!("{} {}", how.verb(), routes[idx]),
                        errno: -c.get(),
                    }),
                });
            }
            off += (len + 3) & !3;
        }
    }
    fail_rest(routes, results, "no answer")
}

fn fail_rest(
    routes: &[HostRoute],
    results: Vec<Option<Result<(), KernelError>>>,
    why: &str,
) -> Results {
    routes
        .iter()
        .zip(results)
        .map(|(r, res)| {
            (
                *r,
                res.unwrap_or_else(|| Err(KernelError::Other(format!("replace {r}: {why}")))),
            )
        })
        .collect()
}
