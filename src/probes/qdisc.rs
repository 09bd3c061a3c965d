//! `qdisc`: the node's root qdiscs from an RTM_GETQDISC dump, summed over the devices whose
//! name starts with one of the configured prefixes. Only root qdiscs are summed: a classful
//! root (mq, htb) already reports the sum of its children, so adding those would count twice.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use netlink_packet_core::{NetlinkPayload, Nla};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcStats2};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Build, MetricDef, Probe, Scope, Series};
use crate::metrics;
use crate::sources::netlink::messages;
use crate::sources::{TargetSources, links};

pub struct Qdisc {
    options: QdiscOptions,
}

/// `probes.qdisc`.
#[derive(Deserialize, Serialize, JsonSchema, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct QdiscOptions {
    /// Device name prefixes whose root qdiscs are summed: the node's Pod-facing and uplink
    /// devices (Calico's `cali*`, the uplink `eth*`).
    pub device_prefixes: Vec<String>,
}

impl Default for QdiscOptions {
    fn default() -> Self {
        Self {
            device_prefixes: vec!["cali".into(), "eth".into()],
        }
    }
}

/// `TCA_STATS_PKT64`: the 64-bit packet count the kernel adds when it overflows the 32-bit
/// field of `TCA_STATS_BASIC` (not decoded by netlink-packet-route).
const TCA_STATS_PKT64: u16 = 8;

const METRICS: &[MetricDef] = metrics![
    counter "netexporter_qdisc_bytes" "Bytes sent through the root qdiscs of the selected devices.",
    counter "netexporter_qdisc_packets" "Packets sent through the root qdiscs of the selected devices.",
    counter "netexporter_qdisc_drops" "Packets dropped by the root qdiscs of the selected devices.",
    counter "netexporter_qdisc_overlimits" "Packets over a configured qdisc limit on the selected devices.",
    gauge "netexporter_qdisc_backlog" "Bytes queued now in the root qdiscs of the selected devices.",
    gauge "netexporter_qdisc_qlen" "Packets queued now in the root qdiscs of the selected devices.",
];

pub fn parse(
    reply: &[u8],
    names: &HashMap<u32, String>,
    prefixes: &[String],
) -> Result<Vec<Series>> {
    let mut sum = [0u64; 6];
    for msg in messages::<RouteNetlinkMessage>(reply) {
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewQueueDiscipline(tc)) =
            msg?.payload
        else {
            continue;
        };
        if tc.header.parent != TcHandle::ROOT {
            continue;
        }
        let selected = u32::try_from(tc.header.index)
            .ok()
            .and_then(|i| names.get(&i))
            .is_some_and(|n| prefixes.iter().any(|p| n.starts_with(p.as_str())));
        if !selected {
            continue;
        }
        let q = qdisc_stats(&tc.attributes);
        for (s, v) in sum.iter_mut().zip(q) {
            *s = s.wrapping_add(v);
        }
    }
    Ok(vec![Series::new(sum.map(Some).to_vec())])
}

/// bytes, packets, drops, overlimits, backlog, qlen of one qdisc.
fn qdisc_stats(attrs: &[TcAttribute]) -> [u64; 6] {
    let mut out = [0u64; 6];
    let mut have_stats2 = false;
    let mut pkt64 = None;
    for attr in attrs {
        match attr {
            TcAttribute::Stats2(stats) => {
                have_stats2 = true;
                for s in stats {
                    match s {
                        TcStats2::Basic(b) => {
                            out[0] = b.bytes;
                            out[1] = u64::from(b.packets);
                        }
                        TcStats2::Queue(q) => {
                            out[2] = u64::from(q.drops);
                            out[3] = u64::from(q.overlimits);
                            out[4] = u64::from(q.backlog);
                            out[5] = u64::from(q.qlen);
                        }
                        TcStats2::Other(nla) if nla.kind() == TCA_STATS_PKT64 => {
                            let mut v = [0u8; 8];
                            if nla.value_len() == 8 {
                                nla.emit_value(&mut v);
                                pkt64 = Some(u64::from_ne_bytes(v));
                            }
                        }
                        _ => {}
                    }
                }
            }
            TcAttribute::Stats(s) if !have_stats2 => {
                out = [
                    s.bytes,
                    u64::from(s.packets),
                    u64::from(s.drops),
                    u64::from(s.overlimits),
                    u64::from(s.backlog),
                    u64::from(s.qlen),
                ];
            }
            _ => {}
        }
    }
    if let Some(p) = pkt64 {
        out[1] = p;
    }
    out
}

impl Build for Qdisc {
    const NAME: &'static str = "qdisc";
    const SCOPE: Scope = Scope::Node;
    const METRICS: &'static [MetricDef] = METRICS;
    type Options = QdiscOptions;

    fn new(options: QdiscOptions) -> Result<Self> {
        if options.device_prefixes.iter().any(|p| p.is_empty()) {
            bail!("device_prefixes: an empty prefix would select every device");
        }
        Ok(Self { options })
    }
}

impl Probe for Qdisc {
    fn collect(&self, src: &mut TargetSources) -> Result<Vec<Series>> {
        let names = links::names(&src.links()?).context("RTM_GETLINK")?;
        parse(&src.qdiscs()?, &names, &self.options.device_prefixes).context("RTM_GETQDISC")
    }
}
