//! A namespace's TCP listeners, from the collection's LISTEN-only sock_diag dump (shared with
//! `sockbacklog`): each one's accept queue, its limit and its drops, fresh at every
//! collection. A LISTEN-only dump walks the node's listening hash alone, so this costs the same
//! in a namespace with a million connections as in an empty one; the sampling iterator, which
//! read them before, walks the established hash too and took turns across namespaces.

use anyhow::{Context, Result};
use netlink_packet_core::Parseable;
use netlink_packet_sock_diag::constants::{SOCK_DIAG_BY_FAMILY, TCP_LISTEN};
use netlink_packet_sock_diag::inet::{InetResponse, nlas::Nla};

use crate::sources::netlink::{TCPDIAG_GETSOCK, raw_messages};

/// One TCP listening socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Listener {
    /// Its local port.
    pub port: u16,
    /// Connections waiting for accept() (`ss -ltn`'s Recv-Q).
    pub queue: u32,
    /// The accept queue's limit: listen()'s backlog, capped by `net.core.somaxconn` (Send-Q).
    pub limit: u32,
    /// SYNs and handshakes it dropped since it was opened (`sk_drops`: a full accept queue,
    /// and other listen drops; `ss -ltnm`'s `d`).
    pub drops: u32,
    /// The socket's cookie (unique while the kernel runs): which listener this is.
    pub cookie: u64,
}

/// The listeners of a sock_diag (or `TCPDIAG_GETSOCK`) reply that asked for
/// `INET_DIAG_SKMEMINFO`; a listener without that attribute counts no drops.
pub fn parse(reply: &[u8]) -> Result<Vec<Listener>> {
    let mut out = Vec::new();
    for m in raw_messages(reply) {
        let (kind, payload) = m?;
        if kind != SOCK_DIAG_BY_FAMILY && kind != TCPDIAG_GETSOCK {
            continue;
        }
        let r = InetResponse::parse(payload)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("inet_diag_msg of a listener")?;
        if r.header.state != TCP_LISTEN {
            continue;
        }
        let drops = r.nlas.iter().find_map(|n| match n {
            Nla::MemInfo(m) => Some(m.drops),
            _ => None,
        });
        out.push(Listener {
            port: r.header.socket_id.source_port,
            queue: r.header.recv_queue,
            limit: r.header.send_queue,
            drops: drops.unwrap_or(0),
            cookie: u64::from_ne_bytes(r.header.socket_id.cookie),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tests/fixtures/listeners/`: a LISTEN dump with memory counters, captured by
    /// `scripts/capture-fixtures.sh` from a namespace whose listener on 8080 (backlog 1) had
    /// three connections never accepted, with `ss -ltnm` at the same moment (`ss.txt`).
    #[test]
    fn reads_each_listener_as_ss_shows_it() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/listeners");
        let reply = std::fs::read(dir.join("listeners.bin")).expect("fixture");
        let got = parse(&reply).expect("parse");
        let ss = std::fs::read_to_string(dir.join("ss.txt")).expect("ss.txt");
        let want = from_ss(&ss);
        assert!(!want.is_empty(), "ss.txt lists no listener");
        let mut got: Vec<(u16, u32, u32, u32)> = got
            .iter()
            .map(|l| (l.port, l.queue, l.limit, l.drops))
            .collect();
        got.sort_unstable();
        assert_eq!(got, want);
        assert!(
            want.iter()
                .any(|&(_, queue, _, drops)| queue > 0 && drops > 0),
            "the fixture should hold a full accept queue that dropped: {want:?}"
        );
    }

    /// (port, Recv-Q, Send-Q, d of skmem) of each listener `ss -Hltnm` printed, sorted.
    fn from_ss(ss: &str) -> Vec<(u16, u32, u32, u32)> {
        let mut out = Vec::new();
        let mut lines = ss.lines();
        while let Some(line) = lines.next() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.first() != Some(&"LISTEN") {
                continue;
            }
            let port = f[3].rsplit(':').next().and_then(|p| p.parse().ok());
            let skmem = f
                .iter()
                .copied()
                .chain(
                    lines
                        .clone()
                        .next()
                        .into_iter()
                        .flat_map(str::split_whitespace),
                )
                .find(|w| w.starts_with("skmem:"))
                .unwrap_or_default();
            let drops = skmem
                .trim_start_matches("skmem:(")
                .trim_end_matches(')')
                .split(',')
                .find_map(|kv| kv.strip_prefix('d').and_then(|v| v.parse().ok()));
            if let (Some(port), Ok(q), Ok(s), Some(d)) = (port, f[1].parse(), f[2].parse(), drops) {
                out.push((port, q, s, d));
            }
        }
        out.sort_unstable();
        out
    }
}
