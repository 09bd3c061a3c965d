//! A netlink socket that runs dumps and returns the raw reply. Requests are built and replies
//! parsed with the `netlink-packet-*` crates; this file only moves bytes, so that parsers can be
//! tested on captured replies (`tests/fixtures/`).

use std::io;

use anyhow::{Context, Result, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NetlinkBuffer,
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_sys::{Socket, SocketAddr};

/// Largest datagram the kernel sends for a dump (it caps dump skbs at 32 KiB; a bigger buffer
/// avoids truncation on kernels that raise it).
const RECV_BUF: usize = 64 * 1024;
/// A dump that has not finished after this many datagrams is abandoned: it protects against a
/// kernel (or a fuzzed reply) that never sends NLMSG_DONE.
const MAX_DATAGRAMS: usize = 1 << 20;
/// `struct nlmsghdr` is 16 bytes (not re-exported by netlink-packet-core).
const NETLINK_HEADER_LEN: usize = 16;

pub struct NlSocket {
    socket: Socket,
    seq: u32,
}

thread_local! {
    /// One receive buffer per thread, not per socket: a node with hundreds of namespaces has
    /// two sockets each, and a buffer each would cost RSS for nothing.
    static RECV: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; RECV_BUF]);
}

impl NlSocket {
    /// Opens a socket in the calling thread's network namespace; it stays bound to that
    /// namespace for its whole life, whichever thread uses it later.
    pub fn open(protocol: isize) -> io::Result<Self> {
        let mut socket = Socket::new(protocol)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 0 })
    }

    /// The cookie of the network namespace the socket belongs to (`SO_NETNS_COOKIE`, Linux
    /// 5.14): the namespace's identity as BPF programs see it (`bpf_get_netns_cookie`).
    pub fn netns_cookie(&self) -> io::Result<u64> {
        use std::os::fd::AsRawFd;
        // asm-generic's value, which x86 and arm64 use; not exported by the libc crate here.
        const SO_NETNS_COOKIE: libc::c_int = 71;
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: the option writes at most `len` bytes into `cookie`, which is that large.
        let r = unsafe {
            libc::getsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_NETNS_COOKIE,
                (&mut cookie as *mut u64).cast(),
                &mut len,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(cookie)
    }

    /// Sends a single (non-dump) request and returns its reply messages.
    pub fn request<M>(&mut self, payload: M) -> Result<Vec<u8>>
    where
        M: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        msg.finalize();
        let mut req = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut req);
        self.socket.send(&req, 0).context("netlink send")?;
        RECV.with_borrow_mut(|buf| {
            let mut out = Vec::new();
            // Replies to earlier, abandoned requests are skipped by sequence number.
            for _ in 0..16 {
                let n = self
                    .socket
                    .recv(&mut &mut buf[..], libc::MSG_TRUNC)
                    .context("netlink recv")?;
                if n > buf.len() {
                    bail!("netlink reply of {n} bytes truncated to {}", buf.len());
                }
                let done = append_messages(&buf[..n], self.seq, &mut out)?;
                if !out.is_empty() || matches!(done, Done::Yes) {
                    return Ok(out);
                }
            }
            bail!("no netlink reply to request {}", self.seq)
        })
    }

    /// Sends a dump request and returns every reply message of it, concatenated as received
    /// (NLMSG_DONE excluded). An NLMSG_ERROR reply becomes the matching `io::Error`.
    pub fn dump<M>(&mut self, payload: M) -> Result<Vec<u8>>
    where
        M: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        msg.finalize();
        let mut req = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut req);
        self.send_dump(&req)
    }

    /// [`NlSocket::dump`] of a message no crate builds: type `kind`, body `payload`.
    pub fn dump_raw(&mut self, kind: u16, payload: &[u8]) -> Result<Vec<u8>> {
        self.seq = self.seq.wrapping_add(1);
        let len = u32::try_from(NETLINK_HEADER_LEN + payload.len()).context("request size")?;
        let mut req = Vec::with_capacity(NETLINK_HEADER_LEN + payload.len());
        req.extend_from_slice(&len.to_ne_bytes());
        req.extend_from_slice(&kind.to_ne_bytes());
        req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req.extend_from_slice(&self.seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        req.extend_from_slice(payload);
        self.send_dump(&req)
    }

    fn send_dump(&mut self, req: &[u8]) -> Result<Vec<u8>> {
        self.socket.send(req, 0).context("netlink send")?;
        RECV.with_borrow_mut(|buf| {
            let mut out = Vec::new();
            for _ in 0..MAX_DATAGRAMS {
                let n = self
                    .socket
                    .recv(&mut &mut buf[..], libc::MSG_TRUNC)
                    .context("netlink recv")?;
                if n > buf.len() {
                    bail!("netlink reply of {n} bytes truncated to {}", buf.len());
                }
                if let Done::Yes = append_messages(&buf[..n], self.seq, &mut out)? {
                    return Ok(out);
                }
            }
            bail!("netlink dump did not finish after {MAX_DATAGRAMS} datagrams")
        })
    }
}

enum Done {
    Yes,
    No,
}

/// Appends the messages of one datagram that answer `seq` to `out`. Messages of an earlier,
/// abandoned request (another sequence number) are skipped.
fn append_messages(mut datagram: &[u8], seq: u32, out: &mut Vec<u8>) -> Result<Done> {
    while !datagram.is_empty() {
        let buf = NetlinkBuffer::new_checked(datagram).context("malformed netlink header")?;
        let len = buf.length() as usize;
        let (kind, msg_seq) = (buf.message_type(), buf.sequence_number());
        let aligned = (len + 3) & !3;
        let this = &datagram[..len];
        datagram = datagram.get(aligned..).unwrap_or(&[]);
        if msg_seq != seq {
            continue;
        }
        match kind {
            NLMSG_NOOP => {}
            NLMSG_DONE => return Ok(Done::Yes),
            NLMSG_ERROR => {
                let code = this
                    .get(16..20)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .context("truncated NLMSG_ERROR")?;
                if code == 0 {
                    return Ok(Done::Yes);
                }
                // wrapping_neg: -i32::MIN overflows (a panic in debug builds); no errno is that big.
                return Err(io::Error::from_raw_os_error(code.wrapping_neg()))
                    .context("netlink request refused");
            }
            _ => {
                // NLM_F_DUMP_INTR (the table changed during the dump) is ignored: the reply is
                // still a fair sample for counters, as `ip` and `ss` treat it.
                out.extend_from_slice(this);
                out.extend(std::iter::repeat_n(0, aligned - len));
            }
        }
    }
    Ok(Done::No)
}

/// [`append_messages`] for tests and fuzzing: appends the messages of `datagram` that answer
/// `seq` to `out`, and says whether the datagram ended the dump (NLMSG_DONE, or an
/// NLMSG_ERROR acknowledgement).
#[doc(hidden)]
pub fn append_datagram(datagram: &[u8], seq: u32, out: &mut Vec<u8>) -> Result<bool> {
    append_messages(datagram, seq, out).map(|done| matches!(done, Done::Yes))
}

/// Iterates the messages of a reply as (message type, payload) without decoding payloads, for
/// parsers that need two attributes of a message that has fifty.
pub fn raw_messages(reply: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8])>> + '_ {
    let mut rest = reply;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let res = NetlinkBuffer::new_checked(rest)
            .map_err(|e| anyhow::anyhow!("malformed netlink header: {e}"))
            .map(|buf| {
                let len = buf.length() as usize;
                let kind = buf.message_type();
                let payload = &rest[NETLINK_HEADER_LEN.min(len)..len];
                (len, kind, payload)
            });
        Some(match res {
            Ok((len, kind, payload)) => {
                rest = rest.get((len + 3) & !3..).unwrap_or(&[]);
                Ok((kind, payload))
            }
            Err(e) => {
                rest = &[];
                Err(e)
            }
        })
    })
}

/// Iterates the messages of a reply returned by [`NlSocket::dump`] (or captured in a fixture),
/// decoding each with `M`.
pub fn messages<M>(reply: &[u8]) -> impl Iterator<Item = Result<NetlinkMessage<M>>> + '_
where
    M: NetlinkDeserializable,
{
    let mut rest = reply;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let res = (|| {
            let buf = NetlinkBuffer::new_checked(rest).context("malformed netlink header")?;
            let len = buf.length() as usize;
            let msg = NetlinkMessage::<M>::deserialize(&rest[..len])
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("malformed netlink message")?;
            rest = rest.get((len + 3) & !3..).unwrap_or(&[]);
            Ok(msg)
        })();
        if res.is_err() {
            rest = &[];
        }
        Some(res)
    })
}

/// `SOCK_DIAG_BY_FAMILY`, the message type of sock_diag replies.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `TCPDIAG_GETSOCK`: the original inet_diag request, still served by the kernel. Unlike
/// `SOCK_DIAG_BY_FAMILY`, which needs one request (and one walk of the node's whole TCP hash)
/// per address family, it dumps IPv4 and IPv6 sockets in one walk. Its replies have its type
/// and the same `inet_diag_msg` body.
pub const TCPDIAG_GETSOCK: u16 = 18;

/// The body of a `TCPDIAG_GETSOCK` dump of every TCP socket in `states` (a bit per TCP
/// state), with the attributes `extensions` asks for (`idiag_ext`, a bit per
/// `INET_DIAG_*` attribute): `struct inet_diag_req`, all zero but those. No crate builds it.
pub fn tcpdiag_request(states: u32, extensions: u8) -> [u8; 60] {
    // idiag_family, idiag_src_len, idiag_dst_len, idiag_ext (4), id (48), states, dbs.
    let mut req = [0u8; 60];
    req[3] = extensions;
    req[52..56].copy_from_slice(&states.to_ne_bytes());
    req
}

/// The socket headers of a sock_diag or `TCPDIAG_GETSOCK` reply (state, queues, ...). Attributes are not decoded:
/// the probes need none, and a dump can hold one message per socket of the namespace.
pub fn inet_sockets(
    reply: &[u8],
) -> impl Iterator<Item = Result<netlink_packet_sock_diag::inet::InetResponseHeader>> + '_ {
    use netlink_packet_core::Parseable;
    raw_messages(reply).filter_map(|m| match m {
        Err(e) => Some(Err(e)),
        Ok((SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK, payload)) => Some(
            netlink_packet_sock_diag::inet::InetResponseHeader::parse(payload)
                .map_err(|e| anyhow::anyhow!("inet_diag_msg: {e}")),
        ),
        Ok(_) => None,
    })
}
