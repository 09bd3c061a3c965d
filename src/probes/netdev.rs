//! `netdev`: per-interface counters of the namespace, from an RTM_GETLINK dump
//! (IFLA_STATS64), which unlike /proc/net/dev carries `rx_crc_errors`.

use std::collections::HashMap;

use anyhow::{Context, Result};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, Stats64};

use super::{MetricDef, Probe, Scope, Series};
use crate::config::ProbeOptions;
use crate::metrics;
use crate::sources::TargetSources;
use crate::sources::netlink::messages;

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
}

/// Decodes an RTM_GETLINK dump reply.
pub fn links(reply: &[u8]) -> Result<Vec<Link>> {
    let mut out = Vec::new();
    for msg in messages::<RouteNetlinkMessage>(reply) {
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) = msg?.payload else {
            continue;
        };
        let mut name = None;
        let mut stats = None;
        for attr in link.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = Some(n),
                LinkAttribute::Stats64(s) => stats = Some(s),
                _ => {}
            }
        }
        out.push(Link {
            index: link.header.index,
            name: name.unwrap_or_else(|| format!("if{}", link.header.index)),
            stats,
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
