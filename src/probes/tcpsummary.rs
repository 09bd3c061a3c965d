//! `tcpsummary`: established and TIME-WAIT TCP sockets of the namespace and the bytes queued
//! on the established ones, from sock_diag dumps (what `ss` reads).
//!
//! A dump walks the node's whole established hash whatever the namespace, so a family whose
//! sockstat line says it has no sockets (and no TIME-WAIT ones), or only listening ones, is not
//! dumped at all.

use std::sync::Arc;

use anyhow::{Context, Result};
use netlink_packet_sock_diag::constants::{TCP_ESTABLISHED, TCP_TIME_WAIT};
use netlink_packet_sock_diag::inet::StateFlags;

use super::{Build, MetricDef, Probe, Scope, Series, format};
use crate::component::NoOptions;
use crate::metrics;
use crate::sources::TargetSources;
use crate::sources::netlink::inet_sockets;
use crate::sources::netns::NetFile;
use crate::sources::socket_storage::SocketSummaries;
use crate::sources::{Collection, Node};

#[derive(Default)]
pub struct TcpSummary {
    /// The summaries of every namespace, shared with `sockbacklog` (set up at start).
    summaries: Option<Arc<SocketSummaries>>,
}

const METRICS: &[MetricDef] = metrics![
    gauge "netexporter_tcpsummary_tcpestablishedconn" "TCP sockets in ESTABLISHED now.",
    gauge "netexporter_tcpsummary_tcptimewaitconn" "TCP sockets in TIME_WAIT now.",
    gauge "netexporter_tcpsummary_tcptxqueue" "Bytes waiting in the send queues of ESTABLISHED TCP sockets.",
    gauge "netexporter_tcpsummary_tcprxqueue" "Bytes waiting in the receive queues of ESTABLISHED TCP sockets.",
    gauge "netexporter_tcpsummary_info" "Always 1; the label path tells how socket summaries are read: bpf (socket storage, one pass for every namespace) or sock_diag.",
];

/// Running sums over sock_diag replies: established, time-wait, send queue, receive queue.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct Summary {
    pub established: u64,
    pub time_wait: u64,
    pub tx_queue: u64,
    pub rx_queue: u64,
}

impl Summary {
    /// Adds the sockets of one sock_diag reply.
    pub fn add(&mut self, reply: &[u8]) -> Result<()> {
        for r in inet_sockets(reply) {
            let r = r?;
            match r.state {
                TCP_ESTABLISHED => {
                    self.established += 1;
                    self.tx_queue += u64::from(r.send_queue);
                    self.rx_queue += u64::from(r.recv_queue);
                }
                TCP_TIME_WAIT => self.time_wait += 1,
                _ => {}
            }
        }
        Ok(())
    }

    pub fn series(&self) -> Vec<Series> {
        let mut values: Vec<Option<u64>> = [
            self.established,
            self.time_wait,
            self.tx_queue,
            self.rx_queue,
        ]
        .map(Some)
        .to_vec();
        values.push(None);
        vec![Series::new(values)]
    }
}

/// The address families worth dumping, judged from sockstat and sockstat6: a family with no
/// TCP socket in use needs no dump unless TIME-WAIT sockets exist (sockstat counts those for
/// both families together). Listening sockets count as in use too, but they live in the
/// listening hash: a family whose sockets in use are all listeners (a server with no
/// connection at the moment) has nothing in the established hash either, and the namespace's
/// LISTEN-only dump, which says so, walks the listening hash alone (13 µs here, against
/// ~1 ms for a dump that walks the node's established hash; it is made once a collection and
/// shared with `sockbacklog` and `peers`). A file or dump that cannot be read means "dump it".
pub fn families_to_dump(src: &mut TargetSources) -> Vec<u8> {
    let tw = src
        .net_file(NetFile::Sockstat)
        .ok()
        .and_then(|s| format::keyed_line(&s, "TCP", &["tw"]).ok())
        .and_then(|v| v[0])
        .unwrap_or(1);
    let in_use = |src: &mut TargetSources, f: NetFile, prefix: &str| {
        src.net_file(f)
            .ok()
            .and_then(|s| format::keyed_line(&s, prefix, &["inuse"]).ok())
            .and_then(|v| v[0])
            .unwrap_or(1)
    };
    let ipv6 = src.has_ipv6();
    let v4 = in_use(src, NetFile::Sockstat, "TCP");
    let v6 = if ipv6 {
        in_use(src, NetFile::Sockstat6, "TCP6")
    } else {
        0
    };
    let listeners = if tw == 0 && (v4 > 0 || v6 > 0) {
        listeners_by_family(src)
    } else {
        None
    };
    let beyond_listeners = |in_use: u64, family: u8| {
        in_use > 0
            && listeners.as_ref().is_none_or(|l| {
                let n = l.iter().filter(|f| **f == family).count();
                in_use > n as u64
            })
    };
    let mut out = Vec::with_capacity(2);
    if tw > 0 || beyond_listeners(v4, libc::AF_INET as u8) {
        out.push(libc::AF_INET as u8);
    }
    if ipv6 && (tw > 0 || beyond_listeners(v6, libc::AF_INET6 as u8)) {
        out.push(libc::AF_INET6 as u8);
    }
    out
}

/// The family of each listening socket of the namespace (`None`: the dump failed).
fn listeners_by_family(src: &mut TargetSources) -> Option<Vec<u8>> {
    let dump = src.tcp_listeners().ok()?;
    inet_sockets(&dump)
        .map(|r| r.map(|h| h.family))
        .collect::<Result<Vec<u8>>>()
        .ok()
}

impl Build for TcpSummary {
    const NAME: &'static str = "tcpsummary";
    const SCOPE: Scope = Scope::Pod;
    const METRICS: &'static [MetricDef] = METRICS;
    type Options = NoOptions;

    fn new(_: NoOptions) -> Result<Self> {
        Ok(Self::default())
    }
}

impl Probe for TcpSummary {
    fn start(&mut self, node: &Node) -> Result<()> {
        let summaries = node.socket_summaries();
        summaries.start(&node.kernel_btf)?;
        self.summaries = Some(summaries);
        Ok(())
    }

    fn prepare(&self, collection: &Collection) {
        if let Some(s) = &self.summaries {
            s.prepare(collection);
        }
    }

    fn collect(&self, src: &mut TargetSources) -> Result<Vec<Series>> {
        let sum = match self.summaries.as_ref().and_then(|s| s.summary(src.inode())) {
            Some(bpf) => {
                let b = bpf?;
                // TIME-WAIT sockets carry no socket storage. sockstat's `tw` counts them, but
                // together with orphaned FIN-WAIT-2 connections (the same kind of kernel
                // object), which `ss` and sock_diag show as FIN-WAIT-2. So sockstat only says
                // whether there are any; when there are, a TIME-WAIT-only dump counts them
                // exactly, at the cost of a hash walk for namespaces that have some.
                let sockstat = src.net_file(NetFile::Sockstat)?;
                let tw_or_orphans = format::keyed_line(&sockstat, "TCP", &["tw"])
                    .context("/proc/net/sockstat")?[0]
                    .unwrap_or(0);
                let mut tw = 0;
                if tw_or_orphans > 0 {
                    let ipv6 = src.has_ipv6();
                    let mut only_tw = Summary::default();
                    only_tw
                        .add(&src.tcp_sockets_any_family(StateFlags::TIME_WAIT, ipv6)?)
                        .context("sock_diag reply")?;
                    tw = only_tw.time_wait;
                }
                Summary {
                    established: b.established,
                    time_wait: tw,
                    tx_queue: b.tx_queue,
                    rx_queue: b.rx_queue,
                }
            }
            None => {
                let mut sum = Summary::default();
                let states = StateFlags::ESTABLISHED | StateFlags::TIME_WAIT;
                match families_to_dump(src).as_slice() {
                    [] => {}
                    [family] => sum
                        .add(&src.tcp_sockets(*family, states)?)
                        .context("sock_diag reply")?,
                    // Both: one walk of the TCP hash instead of two.
                    _ => sum
                        .add(&src.tcp_sockets_any_family(states, true)?)
                        .context("sock_diag reply")?,
                }
                sum
            }
        };
        let mut out = sum.series();
        if src.is_node() {
            let path = self.summaries.as_ref().map_or("sock_diag", |s| s.path());
            out.push(Series::one(
                METRICS.len(),
                METRICS.len() - 1,
                1,
                ("path", path.to_string().into()),
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The families to dump in a namespace whose sockstat says `TCP: inuse {v4} ... tw {tw}`
    /// and `TCP6: inuse {v6}`, with the captured listener dump when `listeners` (two IPv4
    /// listeners: `tests/fixtures/listeners/ss.txt`).
    fn families(v4: u64, v6: u64, tw: u64, listeners: bool) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let sockstat = format!("sockets: used 9\nTCP: inuse {v4} orphan 0 tw {tw} alloc 9 mem 1\n");
        std::fs::write(dir.path().join("sockstat"), sockstat).unwrap();
        std::fs::write(dir.path().join("sockstat6"), format!("TCP6: inuse {v6}\n")).unwrap();
        if listeners {
            let dump = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/listeners/listeners.bin");
            std::fs::copy(dump, dir.path().join("inet_any.bin")).unwrap();
        }
        families_to_dump(&mut TargetSources::captured(dir.path(), false))
    }

    #[test]
    fn a_family_whose_sockets_in_use_are_all_listeners_is_not_dumped() {
        let (v4, v6) = (libc::AF_INET as u8, libc::AF_INET6 as u8);
        assert_eq!(families(0, 0, 0, true), Vec::<u8>::new());
        // The two listeners are all: nothing in the established hash.
        assert_eq!(families(2, 0, 0, true), Vec::<u8>::new());
        // One socket more than the listeners (a connection).
        assert_eq!(families(3, 0, 0, true), vec![v4]);
        // An IPv6 socket, and no IPv6 listener.
        assert_eq!(families(2, 1, 0, true), vec![v6]);
        // TIME-WAIT sockets (counted for both families together).
        assert_eq!(families(2, 0, 1, true), vec![v4, v6]);
        // No listener dump: whatever is in use is dumped.
        assert_eq!(families(2, 0, 0, false), vec![v4]);
        // Counts no namespace has: dumped, no overflow.
        assert_eq!(families(u64::MAX, u64::MAX, 0, true), vec![v4, v6]);
    }
}
