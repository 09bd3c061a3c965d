//! `sockbacklog`: connections waiting in the accept queues of the namespace's TCP listeners
//! (sum of `ss` Recv-Q over LISTEN sockets). A LISTEN-only sock_diag dump walks only the
//! listening hash, so it stays cheap however many connections the node has.

use anyhow::{Context, Result};
use netlink_packet_sock_diag::constants::TCP_LISTEN;
use netlink_packet_sock_diag::inet::StateFlags;

use super::{MetricDef, Probe, Scope, Series};
use crate::config::ProbeOptions;
use crate::metrics;
use crate::sources::TargetSources;
use crate::sources::netlink::inet_sockets;
use crate::sources::socket_storage;

pub struct SockBacklog;

const METRICS: &[MetricDef] = metrics![
    gauge "netexporter_sockbacklog_recvq" "Connections that completed the handshake and wait for accept(), summed over the TCP listeners; persistently non-zero means an accept queue is full.",
];

/// Sum of the accept-queue lengths of the listeners in one sock_diag reply.
pub fn accept_queue(reply: &[u8]) -> Result<u64> {
    let mut n = 0u64;
    for r in inet_sockets(reply) {
        let r = r?;
        if r.state == TCP_LISTEN {
            n += u64::from(r.recv_queue);
        }
    }
    Ok(n)
}

impl Probe for SockBacklog {
    fn name(&self) -> &'static str {
        "sockbacklog"
    }
    fn scope(&self) -> Scope {
        Scope::Pod
    }
    fn metrics(&self) -> &'static [MetricDef] {
        METRICS
    }
    fn collect(&self, src: &mut TargetSources, opts: &ProbeOptions) -> Result<Vec<Series>> {
        if let Some(bpf) = socket_storage::summary(src, opts) {
            return Ok(vec![Series::new(vec![Some(bpf?.accept_queue)])]);
        }
        let ipv6 = src.has_ipv6();
        let total = accept_queue(&src.tcp_sockets_any_family(StateFlags::LISTEN, ipv6)?)
            .context("sock_diag reply")?;
        Ok(vec![Series::new(vec![Some(total)])])
    }
}
