//! `netdev`: per-interface counters of the namespace, from an RTM_GETLINK dump
//! (IFLA_STATS64), which unlike /proc/net/dev carries `rx_crc_errors`.

use std::collections::HashMap;

use anyhow::{Context, Result, anyhow};
use netlink_packet_core::NlasIterator;
use netlink_packet_route::link::{LinkHeader, Stats64};

use super::{MetricDef, Probe, Scope, Series};
use crate::config::ProbeOptions;
use crate::metrics;
use crate::sources::TargetSources;
use crate::sources::netlink::raw_messages;

pub struct Netdev;

const METRICS: &[MetricDef] = metrics![
    counter "netexporter_netdev_rxbytes" "Bytes received by the interface.",
    counter "netexporter_netdev_rxerrors" "Receive errors of the interface.",
    counter "netexporter_netdev_rxpackets" "Packets received by the interface.",
    counter "netexporter_netdev_rxdropped" "Received packets dropped by the interface.",
    counter "netexporter_netdev_txbytes" "Bytes sent by the interface.",
    counter "netexporter_netdev_txerrors" "Send errors of the interface.",
    counter "netexporter_netdev_rxfifos" "RX ring buffer overruns of the interface (rx_fifo_errors).",
    counter "netexporter_netdev_txfifos" "TX ring buffer overruns of the interface (tx_fifo_errors).",
    counter "netexporter_netdev_rxcrcerrors" "Frames with a bad CRC received by the interface.",
    counter "netexporter_netdev_txpackets" "Packets sent by the interface.",
    counter "netexporter_netdev_txdropped" "Packets dropped on send by the interface.",
];

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

pub fn parse(reply: &[u8]) -> Result<Vec<Series>> {
    Ok(links(reply)?
        .into_iter()
        .filter_map(|l| {
            let s = l.stats?;
            Some(Series {
                label: Some(("if_name", l.name)),
                values: [
                    s.rx_bytes,
                    s.rx_errors,
                    s.rx_packets,
                    s.rx_dropped,
                    s.tx_bytes,
                    s.tx_errors,
                    s.rx_fifo_errors,
                    s.tx_fifo_errors,
                    s.rx_crc_errors,
                    s.tx_packets,
                    s.tx_dropped,
                ]
                .map(Some)
                .to_vec(),
            })
        })
        .collect())
}

impl Probe for Netdev {
    fn name(&self) -> &'static str {
        "netdev"
    }
    fn scope(&self) -> Scope {
        Scope::Pod
    }
    fn metrics(&self) -> &'static [MetricDef] {
        METRICS
    }
    fn collect(&self, src: &mut TargetSources, _: &ProbeOptions) -> Result<Vec<Series>> {
        parse(&src.links()?).context("RTM_GETLINK")
    }
}
