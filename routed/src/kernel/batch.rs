//! Many route replaces with few syscalls: up to 256 requests per `send`, acks read back in
//! bulk. rtnetlink's one-request-one-future path costs ~100 µs per route on a busy host;
//! convergence at 5,000 peers needs less. Runs on a blocking thread with its own socket.

use rtnetlink::{
    packet_core::{
        NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
    },
    packet_route::RouteNetlinkMessage,
    sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
};

use super::{HostRoute, KernelError, Results, message::message};

const PER_SEND: usize = 256;

pub fn replace_all(routes: &[HostRoute]) -> Results {
    match open() {
        Ok(sock) => routes
            .chunks(PER_SEND)
            .flat_map(|c| chunk(&sock, c))
            .collect(),
        Err(e) => routes
            .iter()
            .map(|r| (*r, Err(KernelError::Other(format!("netlink socket: {e}")))))
            .collect(),
    }
}

fn open() -> std::io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    // Room for every ack of a chunk (an ack with the echoed header is ~36 + request bytes).
    sock.set_rx_buf_sz(4 << 20)?;
    Ok(sock)
}

fn chunk(sock: &Socket, routes: &[HostRoute]) -> Results {
    let mut results: Vec<Option<Result<(), KernelError>>> =
        (0..routes.len()).map(|_| None).collect();
    let mut buf = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        match message(r) {
            Ok(m) => {
                let mut nl = NetlinkMessage::from(RouteNetlinkMessage::NewRoute(m));
                nl.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE;
                nl.header.sequence_number = i as u32 + 1;
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
            let idx = (msg.header.sequence_number as usize).wrapping_sub(1);
            if let (NetlinkPayload::Error(e), Some(slot)) = (msg.payload, results.get_mut(idx))
                && slot.is_none()
            {
                pending -= 1;
                *slot = Some(match e.code {
                    None => Ok(()),
                    Some(c) => Err(KernelError::Errno {
                        op: format!("replace {}", routes[idx]),
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
