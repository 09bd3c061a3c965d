//! `netdev`: per-interface counters of the namespace, from an RTM_GETLINK dump
//! (IFLA_STATS64), which unlike /proc/net/dev carries `rx_crc_errors`.

use anyhow::{Context, Result};

use super::{Build, MetricDef, Probe, Scope, Series};
use crate::component::NoOptions;
use crate::metrics;
use crate::sources::TargetSources;
use crate::sources::links::links;

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

pub fn parse(reply: &[u8]) -> Result<Vec<Series>> {
    Ok(links(reply)?
        .into_iter()
        .filter_map(|l| {
            let s = l.stats?;
            Some(Series::labelled(
                ("if_name", l.name.into()),
                [
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
            ))
        })
        .collect())
}

impl Build for Netdev {
    const NAME: &'static str = "netdev";
    const SCOPE: Scope = Scope::Pod;
    const METRICS: &'static [MetricDef] = METRICS;
    type Options = NoOptions;

    fn new(_: NoOptions) -> Result<Self> {
        Ok(Self)
    }
}

impl Probe for Netdev {
    fn collect(&self, src: &mut TargetSources) -> Result<Vec<Series>> {
        parse(&src.links()?).context("RTM_GETLINK")
    }
}
