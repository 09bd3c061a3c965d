//! `sockbacklog`: connections waiting in the accept queues of the namespace's TCP listeners
//! (sum of `ss` Recv-Q over LISTEN sockets). A LISTEN-only sock_diag dump walks only the
//! listening hash, so it stays cheap however many connections the node has.

use std::sync::Arc;

use anyhow::{Context, Result};
use netlink_packet_sock_diag::constants::TCP_LISTEN;

use super::{Build, MetricDef, Probe, Scope, Series};
use crate::component::NoOptions;
use crate::metrics;
use crate::sources::TargetSources;
use crate::sources::netlink::inet_sockets;
use crate::sources::socket_storage::SocketSummaries;
use crate::sources::{Collection, Node};

#[derive(Default)]
pub struct SockBacklog {
    /// The summaries of every namespace, shared with `tcpsummary` (set up at start).
    summaries: Option<Arc<SocketSummaries>>,
}

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

impl Build for SockBacklog {
    const NAME: &'static str = "sockbacklog";
    const SCOPE: Scope = Scope::Pod;
    const METRICS: &'static [MetricDef] = METRICS;
    type Options = NoOptions;

    fn new(_: NoOptions) -> Result<Self> {
        Ok(Self::default())
    }
}

impl Probe for SockBacklog {
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
        if let Some(bpf) = self.summaries.as_ref().and_then(|s| s.summary(src.inode())) {
            return Ok(vec![Series::new(vec![Some(bpf?.accept_queue)])]);
        }
        let total = accept_queue(&src.tcp_listeners()?).context("sock_diag reply")?;
        Ok(vec![Series::new(vec![Some(total)])])
    }
}
