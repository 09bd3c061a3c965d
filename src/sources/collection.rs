//! One collection as the probes share it: its number, the namespaces it reads, and the
//! node's devices and addresses, dumped once for every probe that needs them (the node's
//! `netdev` and `qdisc`, and `packetloss`, which maps the node side of each Pod's veth to its
//! Pod; `peers` and `dns`, which name the node's own addresses).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Result, anyhow};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::LinkMessage;

use super::netlink::NlSocket;

/// A route netlink socket in the node's (the agent's own) namespace, kept across collections.
pub type NodeSocket = Arc<Mutex<Option<NlSocket>>>;

pub struct Collection {
    /// Collections are numbered from 1.
    pub id: u64,
    /// Every namespace of this collection: its inode and how to enter it (`None`: the
    /// node's).
    pub namespaces: Vec<(u64, Option<PathBuf>)>,
    /// Whether discovery was complete; when it was not, nothing may be forgotten on the
    /// grounds that a namespace is missing from `namespaces`.
    pub complete: bool,
    live: HashSet<u64>,
    node_socket: NodeSocket,
    node_links: OnceLock<Result<Arc<Vec<u8>>, String>>,
    node_addresses: OnceLock<Result<Arc<Vec<std::net::IpAddr>>, String>>,
}

impl Collection {
    pub fn new(
        id: u64,
        namespaces: Vec<(u64, Option<PathBuf>)>,
        complete: bool,
        node_socket: NodeSocket,
    ) -> Self {
        Self {
            id,
            live: namespaces.iter().map(|(i, _)| *i).collect(),
            namespaces,
            complete,
            node_socket,
            node_links: OnceLock::new(),
            node_addresses: OnceLock::new(),
        }
    }

    /// Whether namespace `inode` is part of this collection.
    pub fn is_live(&self, inode: u64) -> bool {
        self.live.contains(&inode)
    }

    /// Whether state kept for namespace `inode` may be dropped: discovery was complete and
    /// did not find it.
    pub fn is_gone(&self, inode: u64) -> bool {
        self.complete && !self.live.contains(&inode)
    }

    /// The node's RTM_GETLINK dump, read at the first request of this collection.
    pub fn node_links(&self) -> Result<Arc<Vec<u8>>> {
        self.node_links
            .get_or_init(|| self.dump_node_links().map(Arc::new))
            .clone()
            .map_err(|e| anyhow!("{e}"))
    }

    /// A fresh RTM_GETLINK dump of the node, for what must see every device that exists now
    /// (not as of the collection's first request).
    pub fn node_links_now(&self) -> Result<Vec<u8>> {
        self.dump_node_links().map_err(|e| anyhow!("{e}"))
    }

    /// Every address of the node's (the agent's) namespace, both families, from an
    /// RTM_GETADDR dump made at the first request of this collection.
    pub fn node_addresses(&self) -> Result<Arc<Vec<std::net::IpAddr>>> {
        self.node_addresses
            .get_or_init(|| {
                self.dump_node_addresses()
                    .map(Arc::new)
                    .map_err(|e| format!("{e:#}"))
            })
            .clone()
            .map_err(|e| anyhow!("{e}"))
    }

    fn dump_node_addresses(&self) -> Result<Vec<std::net::IpAddr>> {
        let mut socket = self.node_socket.lock().unwrap_or_else(|e| e.into_inner());
        if socket.is_none() {
            *socket = Some(
                NlSocket::open(netlink_sys::protocols::NETLINK_ROUTE)
                    .map_err(|e| anyhow!("netlink route socket: {e}"))?,
            );
        }
        let Some(s) = socket.as_mut() else {
            return Err(anyhow!("netlink route socket: not open"));
        };
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = AddressMessage::default();
            msg.header.family = family;
            let reply = s
                .dump(RouteNetlinkMessage::GetAddress(msg))
                .map_err(|e| anyhow!("RTM_GETADDR dump of the node's addresses: {e:#}"))?;
            out.extend(
                super::routes::parse_addresses(&reply)?
                    .into_iter()
                    .map(|a| a.ip),
            );
        }
        Ok(out)
    }

    fn dump_node_links(&self) -> Result<Vec<u8>, String> {
        let mut socket = self.node_socket.lock().unwrap_or_else(|e| e.into_inner());
        if socket.is_none() {
            *socket = Some(
                NlSocket::open(netlink_sys::protocols::NETLINK_ROUTE)
                    .map_err(|e| format!("netlink route socket: {e}"))?,
            );
        }
        let Some(s) = socket.as_mut() else {
            return Err("netlink route socket: not open".into());
        };
        s.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
            .map_err(|e| format!("rtnetlink dump of the node's devices: {e:#}"))
    }
}
