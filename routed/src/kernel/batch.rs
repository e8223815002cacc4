//! Many route writes with few syscalls: up to 256 requests per `send`, acks read back in
//! bulk. rtnetlink's one-request-one-future path costs ~100 µs per route on a busy host;
//! convergence at 5,000 peers needs less. Its own async socket (rtnetlink's netlink-sys),
//! opened once at start: a pass never needs a new file descriptor (a flood of HTTP
//! connections that used every fd once stopped routing for that reason).
//!
//! Bounded: acks are awaited at most [`ACK_TIMEOUT`] per chunk, and framing is read from
//! each message's 16-byte header alone, so an ack whose payload doesn't parse is an error
//! for its route and never leaves the others waiting.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use rtnetlink::{
    packet_core::{
        NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NLMSG_ERROR,
        NetlinkMessage, NetlinkPayload,
    },
    packet_route::RouteNetlinkMessage,
    sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket, protocols::NETLINK_ROUTE},
};

use super::{HostRoute, KernelError, Results, message::message};

const PER_SEND: usize = 256;
/// The kernel acks a chunk within milliseconds; a chunk not answered by then never will be.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
const HEADER_LEN: usize = 16;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;

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

pub fn open() -> std::io::Result<TokioSocket> {
    let mut sock = TokioSocket::new(NETLINK_ROUTE)?;
    let s = sock.socket_mut();
    s.bind_auto()?;
    s.connect(&SocketAddr::new(0, 0))?;
    // Room for every ack of a chunk (an ack with the echoed header is ~36 + request bytes).
    s.set_rx_buf_sz(4 << 20)?;
    Ok(sock)
}

/// `uplink`: the device of link-local next hops (see [`message`]).
pub async fn write_all(
    sock: &TokioSocket,
    routes: &[HostRoute],
    how: Write,
    uplink: u32,
) -> Results {
    let mut out = Vec::with_capacity(routes.len());
    for c in routes.chunks(PER_SEND) {
        out.extend(chunk(sock, c, how, uplink).await);
    }
    out
}

/// Sequence numbers go on across chunks and passes: the socket lives as long as the
/// daemon, so a late ack of an earlier chunk must not be taken for one of this chunk.
static SEQ: AtomicU32 = AtomicU32::new(1);

type Slots = Vec<Option<Result<(), KernelError>>>;

/// The requests of one chunk, sequence number = `base` + index; a route that can't be
/// encoded gets its error in its slot at once.
pub fn encode(routes: &[HostRoute], how: Write, base: u32, uplink: u32) -> (Vec<u8>, Slots) {
    let mut slots: Slots = (0..routes.len()).map(|_| None).collect();
    let mut buf = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        match message(r, uplink) {
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
            Err(e) => slots[i] = Some(Err(e)),
        }
    }
    (buf, slots)
}

async fn chunk(sock: &TokioSocket, routes: &[HostRoute], how: Write, uplink: u32) -> Results {
    let base = SEQ.fetch_add(PER_SEND as u32, Ordering::Relaxed);
    let (buf, mut slots) = encode(routes, how, base, uplink);
    let mut pending = slots.iter().filter(|r| r.is_none()).count();
    if let Err(e) = sock.send(&buf).await {
        return fail_rest(routes, slots, how, &format!("send: {e}"));
    }
    let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
    let mut rbuf: Vec<u8> = Vec::with_capacity(1 << 16);
    while pending > 0 {
        rbuf.clear();
        match tokio::time::timeout_at(deadline, sock.recv(&mut rbuf)).await {
            Err(_) => return fail_rest(routes, slots, how, "no ack in time"),
            Ok(Err(e)) => return fail_rest(routes, slots, how, &format!("recv: {e}")),
            Ok(Ok(())) => {}
        }
        pending -= fill(&mut slots, routes, how, base, acks(&rbuf));
    }
    fail_rest(routes, slots, how, "no answer")
}

/// Puts each ack into its route's slot; returns how many slots it filled.
pub fn fill(
    slots: &mut Slots,
    routes: &[HostRoute],
    how: Write,
    base: u32,
    acks: Vec<(u32, Ack)>,
) -> usize {
    let mut filled = 0;
    for (seq, ack) in acks {
        let idx = seq.wrapping_sub(base) as usize;
        if let Some(slot) = slots.get_mut(idx)
            && slot.is_none()
        {
            let op = || format!("{} {}", how.verb(), routes[idx]);
            *slot = Some(match ack {
                Ack::Ok => Ok(()),
                // The route to delete is gone already.
                Ack::Errno(ENOENT | ESRCH) if how == Write::Delete => Ok(()),
                Ack::Errno(errno) => Err(KernelError::Errno { op: op(), errno }),
                Ack::Bad(why) => Err(KernelError::Other(format!("{}: bad ack: {why}", op()))),
            });
            filled += 1;
        }
    }
    filled
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    Ok,
    Errno(i32),
    /// An NLMSG_ERROR whose payload didn't parse.
    Bad(String),
}

/// The acks in one datagram, as (sequence number, ack). A header that can't be framed
/// (length below 16 or past the end) ends the datagram: nothing after it can be trusted.
pub fn acks(buf: &[u8]) -> Vec<(u32, Ack)> {
    let mut out = Vec::new();
    let mut off = 0;
    while buf.len() - off >= HEADER_LEN {
        let word = |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let len = word(off) as usize;
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        let seq = word(off + 8);
        if len < HEADER_LEN || len > buf.len() - off {
            break;
        }
        let msg = &buf[off..off + len];
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(msg) {
            Ok(m) => {
                if let NetlinkPayload::Error(e) = m.payload {
                    out.push((seq, e.code.map_or(Ack::Ok, |c| Ack::Errno(-c.get()))));
                }
            }
            Err(e) if kind == NLMSG_ERROR => out.push((seq, Ack::Bad(e.to_string()))),
            // Not an ack (NLMSG_DONE, a notification): nothing waits for it.
            Err(_) => {}
        }
        off += (len + 3) & !3;
        off = off.min(buf.len());
    }
    out
}

fn fail_rest(routes: &[HostRoute], results: Slots, how: Write, why: &str) -> Results {
    routes
        .iter()
        .zip(results)
        .map(|(r, res)| {
            let failed = || Err(KernelError::Other(format!("{} {r}: {why}", how.verb())));
            (*r, res.unwrap_or_else(failed))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroI32;

    use rtnetlink::packet_core::{ErrorMessage, NetlinkHeader};

    use super::*;

    fn ack(seq: u32, code: i32) -> Vec<u8> {
        let mut e = ErrorMessage::default();
        e.code = NonZeroI32::new(code);
        let mut m = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::<RouteNetlinkMessage>::Error(e),
        );
        m.header.sequence_number = seq;
        m.finalize();
        let mut b = vec![0; m.buffer_len()];
        m.serialize(&mut b);
        b
    }

    fn r(i: u8) -> HostRoute {
        HostRoute::via(
            format!("198.18.{i}.0/24").parse().unwrap(),
            "198.19.0.2".parse().unwrap(),
        )
    }

    #[test]
    fn requests_carry_sequence_numbers_and_ack_flags() {
        let (buf, slots) = encode(&[r(1), r(2)], Write::Replace, 1, 0);
        assert!(slots.iter().all(Option::is_none));
        let first = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf).unwrap();
        assert_eq!(first.header.sequence_number, 1);
        assert_ne!(first.header.flags & NLM_F_ACK, 0);
        assert_ne!(first.header.flags & NLM_F_REPLACE, 0);
        let second = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[first.buffer_len()..]);
        assert_eq!(second.unwrap().header.sequence_number, 2);
    }

    #[test]
    fn acks_and_errnos_are_read_in_one_datagram() {
        let buf = [ack(1, 0), ack(2, -17), ack(3, 0)].concat();
        assert_eq!(
            acks(&buf),
            vec![(1, Ack::Ok), (2, Ack::Errno(17)), (3, Ack::Ok)]
        );
    }

    #[test]
    fn an_unparsable_ack_fails_its_route_only() {
        let mut bad = ack(2, -17);
        bad.truncate(18); // an NLMSG_ERROR too short for its error code
        bad[0..4].copy_from_slice(&18u32.to_ne_bytes());
        bad.resize(20, 0); // aligned to 4 like the kernel does
        let buf = [ack(1, 0), bad, ack(3, 0)].concat();
        let got = acks(&buf);
        assert_eq!(got[0], (1, Ack::Ok));
        assert!(matches!(got[1], (2, Ack::Bad(_))), "{got:?}");
        assert_eq!(got[2], (3, Ack::Ok));
        let routes = [r(1), r(2), r(3)];
        let mut slots: Slots = (0..3).map(|_| None).collect();
        assert_eq!(
            fill(&mut slots, &routes, Write::Replace, 1, got),
            3,
            "all three answered"
        );
        assert!(slots[1].as_ref().unwrap().is_err());
    }

    #[test]
    fn broken_framing_ends_the_datagram_without_looping() {
        let mut zero = ack(2, 0);
        zero[0..4].copy_from_slice(&0u32.to_ne_bytes());
        assert_eq!(
            acks(&[ack(1, 0), zero, ack(3, 0)].concat()),
            vec![(1, Ack::Ok)]
        );
        let mut long = ack(1, 0);
        long[0..4].copy_from_slice(&4096u32.to_ne_bytes());
        assert!(acks(&long).is_empty());
        assert!(acks(&[1, 2, 3]).is_empty());
    }

    #[test]
    fn unknown_or_duplicate_sequence_numbers_fill_nothing() {
        let routes = [r(1)];
        let mut slots: Slots = vec![None];
        assert_eq!(
            fill(
                &mut slots,
                &routes,
                Write::Replace,
                1,
                vec![(0, Ack::Ok), (9, Ack::Ok)]
            ),
            0
        );
        assert_eq!(
            fill(
                &mut slots,
                &routes,
                Write::Replace,
                1,
                vec![(1, Ack::Ok), (1, Ack::Errno(1))]
            ),
            1
        );
        assert!(slots[0].as_ref().unwrap().is_ok(), "first answer kept");
    }

    #[test]
    fn creates_are_exclusive_and_a_delete_of_a_gone_route_is_success() {
        let (buf, _) = encode(&[r(1)], Write::Create, 700, 0);
        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf).unwrap();
        assert_eq!(m.header.sequence_number, 700);
        assert_ne!(m.header.flags & NLM_F_EXCL, 0);
        assert_eq!(m.header.flags & NLM_F_REPLACE, 0);
        let (buf, _) = encode(&[r(1)], Write::Delete, 9, 0);
        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf).unwrap();
        assert!(matches!(
            m.payload,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(_))
        ));
        let routes = [r(1), r(2), r(3)];
        let mut slots: Slots = (0..3).map(|_| None).collect();
        let got = vec![
            (9, Ack::Errno(ENOENT)),
            (10, Ack::Errno(ESRCH)),
            (11, Ack::Errno(1)),
        ];
        assert_eq!(fill(&mut slots, &routes, Write::Delete, 9, got), 3);
        assert!(slots[0].as_ref().unwrap().is_ok() && slots[1].as_ref().unwrap().is_ok());
        assert!(slots[2].as_ref().unwrap().is_err(), "EPERM stays an error");
    }
}
