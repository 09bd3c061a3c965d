//! What probes and checks read: the kernel, through readers shared by every component.
//!
//! - [`TargetSources`]: the sources of one target (a network namespace), each read at most
//!   once per collection however many probes use it. It reads a live namespace through its
//!   [`netns::NetnsSession`], or captured kernel data from a folder (the golden tests).
//! - [`Node`]: what the node offers at start: its /proc and /sys, the Kubernetes mode, and the
//!   readers several probes share ([`socket_storage`]).
//! - [`Collection`]: one collection's shared view: which namespaces exist, and the node's
//!   devices, read once for every probe that needs them.
//! - Parsers of kernel replies that more than one component needs: [`links`] (devices),
//!   [`routes`] (routes, addresses, rules), [`ipvs`], [`sysctl`].

pub mod bpf_maps;
pub mod bpf_programs;
pub mod collection;

pub mod links;
pub mod netlink;
pub mod netns;
pub mod node;

pub mod ipvs;
pub mod kernel_btf;
pub mod routes;
pub mod socket_storage;
pub mod sysctl;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::tc::TcMessage;
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};

pub use collection::Collection;
use netns::{NetFile, NetnsSession};
pub use node::{Node, SourcesOptions};

use crate::inventory::ClusterView;

/// The sources of one target.
pub struct TargetSources<'a> {
    kernel: Kernel<'a>,
    is_node: bool,
    inode: u64,
    collection: Option<&'a Collection>,
    cluster: Option<Arc<ClusterView>>,
    files: [Option<Arc<Vec<u8>>>; NetFile::ALL.len()],
    links: Option<Arc<Vec<u8>>>,
    listeners: Option<Arc<Vec<u8>>>,
}

/// Where a target's data comes from.
enum Kernel<'a> {
    /// A namespace, through its session; node-wide files under `procfs`.
    Live {
        session: &'a mut NetnsSession,
        procfs: &'a Path,
    },
    /// Kernel data captured into a folder, one file per source (see
    /// [`TargetSources::captured`]).
    Captured(&'a Path),
}

impl<'a> TargetSources<'a> {
    /// A live namespace's sources; node-wide files (read by the node's target only) come from
    /// `procfs`.
    pub fn new(session: &'a mut NetnsSession, procfs: &'a Path, is_node: bool) -> Self {
        Self::with_kernel(Kernel::Live { session, procfs }, is_node)
    }

    /// Captured kernel data in `dir`, one file per source: the /proc/net files by name
    /// (`snmp`, `netstat`, `sockstat`, `sockstat6`, `snmp6`), node-wide files by their last path
    /// component (`nf_conntrack`, `gc_thresh3`, ...), netlink replies as received
    /// (`links.bin`, `qdisc.bin`, `neigh.bin`, `inet.bin`, `inet6.bin`, `inet_any.bin`,
    /// `routes.bin`, `addrs.bin`, `rules.bin`; the IPv6 ones with a `6`). A source without
    /// its file fails as a missing file would.
    pub fn captured(dir: &'a Path, is_node: bool) -> Self {
        Self::with_kernel(Kernel::Captured(dir), is_node)
    }

    fn with_kernel(kernel: Kernel<'a>, is_node: bool) -> Self {
        Self {
            kernel,
            is_node,
            inode: 0,
            collection: None,
            cluster: None,
            files: Default::default(),
            links: None,
            listeners: None,
        }
    }

    /// The target's namespace inode (its identity across collections).
    pub fn with_inode(mut self, inode: u64) -> Self {
        self.inode = inode;
        self
    }

    /// Read as part of `collection` (the node's devices come from its shared dump).
    pub fn in_collection(mut self, collection: &'a Collection) -> Self {
        self.collection = Some(collection);
        self
    }

    /// The Kubernetes view of the node (Kubernetes mode).
    pub fn with_cluster(mut self, cluster: Option<Arc<ClusterView>>) -> Self {
        self.cluster = cluster;
        self
    }

    pub fn inode(&self) -> u64 {
        self.inode
    }

    pub fn is_node(&self) -> bool {
        self.is_node
    }

    pub fn cluster(&self) -> Option<&Arc<ClusterView>> {
        self.cluster.as_ref()
    }

    /// The namespace's cookie, as BPF programs name it (`bpf_get_netns_cookie`); `None` for
    /// captured data and kernels before 5.14.
    pub fn netns_cookie(&self) -> Option<u64> {
        match &self.kernel {
            Kernel::Live { session, .. } => session.cookie,
            Kernel::Captured(_) => None,
        }
    }

    /// The namespace, to enter it or name it to the kernel (`None` for the node's, the
    /// agent's own, and for captured data).
    pub fn ns_file(&self) -> Option<&std::fs::File> {
        match &self.kernel {
            Kernel::Live { session, .. } => session.ns.as_ref(),
            Kernel::Captured(_) => None,
        }
    }

    /// A /proc/net file of the target's namespace.
    pub fn net_file(&mut self, f: NetFile) -> Result<Arc<Vec<u8>>> {
        let idx = f.index();
        if let Some(v) = &self.files[idx] {
            return Ok(v.clone());
        }
        let v = Arc::new(match &self.kernel {
            Kernel::Live { session, .. } => session.read(f)?,
            Kernel::Captured(dir) => captured(dir, f.file_name())?,
        });
        self.files[idx] = Some(v.clone());
        Ok(v)
    }

    /// `net.ipv4.tcp_ehash_entries` as the namespace reads it, raw (captured:
    /// `tcp_ehash_entries`).
    pub fn tcp_hash_entries(&self) -> Result<Vec<u8>> {
        match &self.kernel {
            Kernel::Live { session, .. } => session.tcp_hash.clone().map_err(|e| anyhow!("{e}")),
            Kernel::Captured(dir) => captured(dir, "tcp_ehash_entries"),
        }
    }

    /// Whether the namespace has IPv6 (its sockstat6 could be opened).
    pub fn has_ipv6(&self) -> bool {
        match &self.kernel {
            Kernel::Live { session, .. } => session.has(NetFile::Sockstat6),
            Kernel::Captured(dir) => ["sockstat6", "snmp6", "inet6.bin"]
                .iter()
                .any(|f| dir.join(f).exists()),
        }
    }

    /// A node-wide file, `<procfs>/<rel>` (only the node's own target reads these).
    pub fn node_file(&self, rel: &str) -> Result<Vec<u8>> {
        if !self.is_node {
            return Err(anyhow!("{rel} is read in the node's namespace only"));
        }
        match &self.kernel {
            Kernel::Live { procfs, .. } => {
                let path: PathBuf = procfs.join(rel);
                std::fs::read(&path).with_context(|| format!("read {}", path.display()))
            }
            Kernel::Captured(dir) => {
                captured(dir, rel.rsplit('/').next().unwrap_or(rel)).context(rel.to_string())
            }
        }
    }

    /// RTM_GETLINK dump (every interface with its IFLA_STATS64). The node's comes from the
    /// collection's one dump of it, shared with the probes that map Pods' devices to it.
    pub fn links(&mut self) -> Result<Arc<Vec<u8>>> {
        if let Some(v) = &self.links {
            return Ok(v.clone());
        }
        let v = match (&self.kernel, self.collection) {
            (Kernel::Captured(dir), _) => Arc::new(captured(dir, "links.bin")?),
            (Kernel::Live { .. }, Some(c)) if self.is_node => c.node_links()?,
            (Kernel::Live { .. }, _) => {
                Arc::new(self.route_dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?)
            }
        };
        self.links = Some(v.clone());
        Ok(v)
    }

    /// RTM_GETQDISC dump.
    pub fn qdiscs(&mut self) -> Result<Vec<u8>> {
        self.route_dump(RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()))
    }

    /// RTM_GETNEIGH dump of one address family.
    pub fn neighbours(&mut self, family: AddressFamily) -> Result<Vec<u8>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family;
        self.route_dump(RouteNetlinkMessage::GetNeighbour(msg))
    }

    /// sock_diag dump of the TCP sockets of one family (`AF_INET`/`AF_INET6`) in `states`.
    pub fn tcp_sockets(&mut self, family: u8, states: StateFlags) -> Result<Vec<u8>> {
        self.tcp_sockets_with(family, states, ExtensionFlags::empty())
    }

    /// The namespace's TCP listeners, both families, each with its memory counters (the
    /// `INET_DIAG_SKMEMINFO` attribute: its drops). One dump per collection, shared by the
    /// probes that read listeners: a LISTEN-only dump walks the listening hash alone, never
    /// the node's established one.
    pub fn tcp_listeners(&mut self) -> Result<Arc<Vec<u8>>> {
        if let Some(v) = &self.listeners {
            return Ok(v.clone());
        }
        let ipv6 = self.has_ipv6();
        let v = Arc::new(self.tcp_sockets_any_family_with(
            StateFlags::LISTEN,
            ipv6,
            ExtensionFlags::SKMEMINFO,
        )?);
        self.listeners = Some(v.clone());
        Ok(v)
    }

    fn tcp_sockets_with(
        &mut self,
        family: u8,
        states: StateFlags,
        extensions: ExtensionFlags,
    ) -> Result<Vec<u8>> {
        let session = match &mut self.kernel {
            Kernel::Captured(dir) => {
                let v6 = family == libc::AF_INET6 as u8;
                return captured(dir, if v6 { "inet6.bin" } else { "inet.bin" });
            }
            Kernel::Live { session, .. } => session,
        };
        let socket_id = if family == libc::AF_INET6 as u8 {
            SocketId::new_v6()
        } else {
            SocketId::new_v4()
        };
        let req = SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: libc::IPPROTO_TCP as u8,
            extensions,
            states,
            socket_id,
        });
        let sock = session.diag.as_mut().map_err(|e| anyhow!("{e}"))?;
        sock.dump(req).context("sock_diag dump")
    }

    /// Every TCP socket of the namespace in `states`, IPv4 and IPv6, from one walk of the TCP
    /// hash (`TCPDIAG_GETSOCK`); where the kernel refuses that request, one sock_diag dump per
    /// family (`ipv6`: whether to dump IPv6 too).
    pub fn tcp_sockets_any_family(&mut self, states: StateFlags, ipv6: bool) -> Result<Vec<u8>> {
        self.tcp_sockets_any_family_with(states, ipv6, ExtensionFlags::empty())
    }

    fn tcp_sockets_any_family_with(
        &mut self,
        states: StateFlags,
        ipv6: bool,
        extensions: ExtensionFlags,
    ) -> Result<Vec<u8>> {
        let one_walk = match &mut self.kernel {
            Kernel::Captured(dir) => captured(dir, "inet_any.bin"),
            Kernel::Live { session, .. } => {
                let sock = session.diag.as_mut().map_err(|e| anyhow!("{e}"))?;
                let request = netlink::tcpdiag_request(states.bits(), extensions.bits());
                sock.dump_raw(netlink::TCPDIAG_GETSOCK, &request)
            }
        };
        match one_walk {
            Ok(reply) => Ok(reply),
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "TCPDIAG_GETSOCK refused; one dump per family");
                let v4 = libc::AF_INET as u8;
                let mut reply = self.tcp_sockets_with(v4, states.clone(), extensions.clone())?;
                if ipv6 {
                    let v6 = libc::AF_INET6 as u8;
                    reply.extend(self.tcp_sockets_with(v6, states, extensions)?);
                }
                Ok(reply)
            }
        }
    }

    /// The id this namespace gives the namespace of `ns` (an open nsfs file), if it gave one
    /// (RTM_GETNSID). Device peers in other namespaces are named by such ids.
    pub fn nsid_of(&mut self, ns: &std::fs::File) -> Result<Option<i32>> {
        use netlink_packet_core::NetlinkPayload;
        use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
        use std::os::fd::AsRawFd;
        let session = match &mut self.kernel {
            Kernel::Captured(_) => return Ok(None),
            Kernel::Live { session, .. } => session,
        };
        let mut msg = NsidMessage::default();
        msg.attributes
            .push(NsidAttribute::Fd(ns.as_raw_fd() as u32));
        let sock = session.route.as_mut().map_err(|e| anyhow!("{e}"))?;
        let reply = sock
            .request(RouteNetlinkMessage::GetNsId(msg))
            .context("RTM_GETNSID")?;
        for m in netlink::messages::<RouteNetlinkMessage>(&reply) {
            if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(n)) = m?.payload {
                return Ok(n.attributes.iter().find_map(|a| match a {
                    NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                    _ => None,
                }));
            }
        }
        Ok(None)
    }

    /// RTM_GETROUTE dump of one address family: the routes of every table.
    pub fn routes(&mut self, family: AddressFamily) -> Result<Vec<u8>> {
        let mut msg = netlink_packet_route::route::RouteMessage::default();
        msg.header.address_family = family;
        self.route_dump(RouteNetlinkMessage::GetRoute(msg))
            .context("RTM_GETROUTE")
    }

    /// RTM_GETADDR dump of one address family: every address of every interface.
    pub fn addresses(&mut self, family: AddressFamily) -> Result<Vec<u8>> {
        let mut msg = netlink_packet_route::address::AddressMessage::default();
        msg.header.family = family;
        self.route_dump(RouteNetlinkMessage::GetAddress(msg))
            .context("RTM_GETADDR")
    }

    /// RTM_GETRULE dump of one address family: the policy-routing rules (`ip rule`).
    pub fn rules(&mut self, family: AddressFamily) -> Result<Vec<u8>> {
        let mut msg = netlink_packet_route::rule::RuleMessage::default();
        msg.header.family = family;
        self.route_dump(RouteNetlinkMessage::GetRule(msg))
            .context("RTM_GETRULE")
    }

    fn route_dump(&mut self, msg: RouteNetlinkMessage) -> Result<Vec<u8>> {
        match &mut self.kernel {
            Kernel::Captured(dir) => captured(dir, captured_name(&msg)),
            Kernel::Live { session, .. } => {
                let sock = session.route.as_mut().map_err(|e| anyhow!("{e}"))?;
                sock.dump(msg).context("rtnetlink dump")
            }
        }
    }
}

/// The captured file of an rtnetlink dump (see [`TargetSources::captured`]).
fn captured_name(msg: &RouteNetlinkMessage) -> &'static str {
    let v6 = |f: AddressFamily| f == AddressFamily::Inet6;
    match msg {
        RouteNetlinkMessage::GetLink(_) => "links.bin",
        RouteNetlinkMessage::GetQueueDiscipline(_) => "qdisc.bin",
        RouteNetlinkMessage::GetNeighbour(m) if v6(m.header.family) => "neigh6.bin",
        RouteNetlinkMessage::GetNeighbour(_) => "neigh.bin",
        RouteNetlinkMessage::GetRoute(m) if v6(m.header.address_family) => "routes6.bin",
        RouteNetlinkMessage::GetRoute(_) => "routes.bin",
        RouteNetlinkMessage::GetAddress(m) if v6(m.header.family) => "addrs6.bin",
        RouteNetlinkMessage::GetAddress(_) => "addrs.bin",
        RouteNetlinkMessage::GetRule(m) if v6(m.header.family) => "rules6.bin",
        RouteNetlinkMessage::GetRule(_) => "rules.bin",
        _ => "unknown.bin",
    }
}

fn captured(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let path = dir.join(name);
    std::fs::read(&path).with_context(|| format!("read {}", path.display()))
}

/// Runs `f` on the sources of the namespace at `ns_path` (`None`: the node's, the agent's
/// own) from a session opened for this call only, for the checks: they run about once a
/// minute and need a dump or two, so they do not share the collector's long-lived sessions.
/// The session (and the pin on the namespace) is closed when `f` returns.
pub fn with_namespace<T>(
    procfs: &Path,
    ns_path: Option<&Path>,
    f: impl FnOnce(&mut TargetSources<'_>) -> Result<T>,
) -> Result<T> {
    let mut session = match ns_path {
        None => NetnsSession::open_own(procfs),
        Some(path) => NetnsSession::open_in(path, procfs)?,
    };
    let mut src = TargetSources::new(&mut session, procfs, ns_path.is_none());
    f(&mut src)
}
