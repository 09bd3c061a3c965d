//! What probes read: the kernel sources of one target, each read at most once per collection
//! however many probes use it.

pub mod netlink;
pub mod netns;
pub mod socket_storage;

use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{Context, Result, anyhow};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::tc::TcMessage;
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};

use netns::{NetFile, NetnsSession};

/// The sources of one target during one collection.
pub struct TargetSources<'a> {
    session: &'a mut NetnsSession,
    procfs: &'a Path,
    is_node: bool,
    /// The target's namespace inode.
    pub inode: u64,
    /// Which collection this is (probes with node-wide state read it once per collection).
    pub collection: u64,
    /// The Kubernetes view of the node, in Kubernetes mode.
    pub cluster: Option<std::sync::Arc<crate::inventory::ClusterView>>,
    files: [Option<Rc<Vec<u8>>>; 4],
    links: Option<Rc<Vec<u8>>>,
}

impl<'a> TargetSources<'a> {
    pub fn new(session: &'a mut NetnsSession, procfs: &'a Path, is_node: bool) -> Self {
        Self {
            session,
            procfs,
            is_node,
            inode: 0,
            collection: 0,
            cluster: None,
            files: Default::default(),
            links: None,
        }
    }

    /// A /proc/net file of the target's namespace.
    pub fn net_file(&mut self, f: NetFile) -> Result<Rc<Vec<u8>>> {
        let idx = NetFile::ALL.iter().position(|x| *x == f).unwrap_or(0);
        if let Some(v) = &self.files[idx] {
            return Ok(v.clone());
        }
        let v = Rc::new(self.session.read(f)?);
        self.files[idx] = Some(v.clone());
        Ok(v)
    }

    pub fn is_node(&self) -> bool {
        self.is_node
    }

    /// The namespace, to enter it (`None` for the node's: the agent's own).
    pub fn ns_file(&self) -> Option<&std::fs::File> {
        self.session.ns.as_ref()
    }

    /// Whether the namespace has IPv6 (its sockstat6 could be opened).
    pub fn has_ipv6(&self) -> bool {
        self.session.has(NetFile::Sockstat6)
    }

    /// A node-wide file, `<procfs>/<rel>` (only the node's own target reads these).
    pub fn node_file(&self, rel: &str) -> Result<Vec<u8>> {
        if !self.is_node {
            return Err(anyhow!("{rel} is read in the node's namespace only"));
        }
        let path: PathBuf = self.procfs.join(rel);
        std::fs::read(&path).with_context(|| format!("read {}", path.display()))
    }

    /// RTM_GETLINK dump (every interface with its IFLA_STATS64).
    pub fn links(&mut self) -> Result<Rc<Vec<u8>>> {
        if let Some(v) = &self.links {
            return Ok(v.clone());
        }
        let v = Rc::new(self.route_dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?);
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
        let socket_id = if family == libc::AF_INET6 as u8 {
            SocketId::new_v6()
        } else {
            SocketId::new_v4()
        };
        let req = SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: libc::IPPROTO_TCP as u8,
            extensions: ExtensionFlags::empty(),
            states,
            socket_id,
        });
        let sock = self.session.diag.as_mut().map_err(|e| anyhow!("{e}"))?;
        sock.dump(req).context("sock_diag dump")
    }

    /// Every TCP socket of the namespace in `states`, IPv4 and IPv6, from one walk of the TCP
    /// hash (`TCPDIAG_GETSOCK`); where the kernel refuses that request, one sock_diag dump per
    /// family (`ipv6`: whether to dump IPv6 too).
    pub fn tcp_sockets_any_family(&mut self, states: StateFlags, ipv6: bool) -> Result<Vec<u8>> {
        let sock = self.session.diag.as_mut().map_err(|e| anyhow!("{e}"))?;
        let request = netlink::tcpdiag_request(states.bits());
        match sock.dump_raw(netlink::TCPDIAG_GETSOCK, &request) {
            Ok(reply) => Ok(reply),
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "TCPDIAG_GETSOCK refused; one dump per family");
                let mut reply = self.tcp_sockets(libc::AF_INET as u8, states.clone())?;
                if ipv6 {
                    reply.extend(self.tcp_sockets(libc::AF_INET6 as u8, states)?);
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
        let mut msg = NsidMessage::default();
        msg.attributes
            .push(NsidAttribute::Fd(ns.as_raw_fd() as u32));
        let sock = self.session.route.as_mut().map_err(|e| anyhow!("{e}"))?;
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
        let sock = self.session.route.as_mut().map_err(|e| anyhow!("{e}"))?;
        sock.dump(msg).context("rtnetlink dump")
    }
}

/// Runs `f` on the sources of `target` from a session opened for this call only, for the
/// checks: they run about once a minute and need a dump or two, so they do not share the
/// collector's long-lived sessions. The session (and the pin on the namespace) is closed
/// when `f` returns.
pub fn with_target<T>(
    procfs: &Path,
    target: &crate::inventory::Target,
    f: impl FnOnce(&mut TargetSources<'_>) -> Result<T>,
) -> Result<T> {
    let mut session = match &target.ns_path {
        None => NetnsSession::open_own(procfs),
        Some(path) => NetnsSession::open_in(path, procfs)?,
    };
    let mut src = TargetSources::new(&mut session, procfs, target.is_node());
    src.inode = target.inode;
    f(&mut src)
}
