//! Network devices of a namespace, from an RTM_GETLINK dump: what the `netdev` probe reports
//! and what others need to know about devices (names for `qdisc`, veth peers for `packetloss`,
//! MTUs for the MTU check).

use std::collections::HashMap;

use anyhow::{Result, anyhow};
use netlink_packet_core::NlasIterator;
use netlink_packet_route::link::{LinkHeader, Stats64};

use super::netlink::raw_messages;

/// One interface of an RTM_GETLINK reply.
pub struct Link {
    pub index: u32,
    pub name: String,
    pub stats: Option<Stats64>,
    /// For a device whose peer lives in another namespace (a veth): the peer's ifindex there.
    pub peer: Option<u32>,
    /// And the id (this namespace's name for it) of the namespace the peer lives in.
    pub peer_netnsid: Option<i32>,
    /// IFLA_MTU, for the MTU check.
    pub mtu: Option<u32>,
    /// Administratively up (IFF_UP).
    pub up: bool,
}

const RTM_NEWLINK: u16 = 16;
const IFLA_IFNAME: u16 = 3;
const IFLA_STATS64: u16 = 23;
const IFLA_LINK: u16 = 5;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_MTU: u16 = 4;
/// `struct ifinfomsg`.
const LINK_HEADER_LEN: usize = 16;

/// Decodes an RTM_GETLINK dump reply. Only the attributes needed are decoded (with the
/// crate's header, attribute iterator and `Stats64` parser): a full `LinkMessage` decodes some
/// fifty attributes per interface, which dominated the probe's cost on nodes with many Pods.
pub fn links(reply: &[u8]) -> Result<Vec<Link>> {
    let mut out = Vec::new();
    for msg in raw_messages(reply) {
        let (kind, payload) = msg?;
        if kind != RTM_NEWLINK {
            continue;
        }
        let header = LinkHeader::parse(payload).map_err(|e| anyhow!("ifinfomsg: {e}"))?;
        let mut name = None;
        let mut stats = None;
        let mut link = None;
        let mut other_netns = None;
        let mut mtu = None;
        for nla in NlasIterator::new(payload.get(LINK_HEADER_LEN..).unwrap_or_default()) {
            let nla = nla.map_err(|e| anyhow!("link attribute: {e}"))?;
            match nla.kind() {
                IFLA_IFNAME => {
                    let v = nla.value();
                    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
                    name = Some(String::from_utf8_lossy(&v[..end]).into_owned());
                }
                IFLA_STATS64 => {
                    stats = Some(
                        Stats64::parse(nla.value()).map_err(|e| anyhow!("IFLA_STATS64: {e}"))?,
                    );
                }
                IFLA_LINK => {
                    link = nla
                        .value()
                        .get(..4)
                        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                }
                IFLA_MTU => {
                    mtu = nla
                        .value()
                        .get(..4)
                        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                }
                IFLA_LINK_NETNSID => {
                    other_netns = nla
                        .value()
                        .get(..4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                }
                _ => {}
            }
        }
        out.push(Link {
            index: header.index,
            name: name.unwrap_or_else(|| format!("if{}", header.index)),
            stats,
            peer: link.filter(|_| other_netns.is_some()),
            peer_netnsid: other_netns,
            mtu,
            up: header
                .flags
                .contains(netlink_packet_route::link::LinkFlags::Up),
        });
    }
    Ok(out)
}

/// Interface names by index, for probes that get only an index (qdisc).
pub fn names(reply: &[u8]) -> Result<HashMap<u32, String>> {
    Ok(links(reply)?
        .into_iter()
        .map(|l| (l.index, l.name))
        .collect())
}
