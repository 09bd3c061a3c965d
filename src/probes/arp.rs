//! `arp`: the node's IPv4 neighbour table: its hard limit (gc_thresh3), its entries (an
//! RTM_GETNEIGH dump, NOARP entries and entries in no state left out as in /proc/net/arp and
//! `ip neigh`) and the packets discarded while waiting for resolution
//! (/proc/net/stat/arp_cache).

use anyhow::{Context, Result};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::neighbour::NeighbourState;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Build, MetricDef, Probe, Scope, Series, format};
use crate::component::NoOptions;
use crate::metrics;
use crate::sources::TargetSources;
use crate::sources::netlink::messages;

pub struct Arp;

const METRICS: &[MetricDef] = metrics![
    gauge "netexporter_arp_maxentries" "Neighbour table hard limit (net.ipv4.neigh.default.gc_thresh3).",
    gauge "netexporter_arp_entries" "IPv4 neighbour entries now.",
    counter "netexporter_arp_unresolveddiscards" "Packets discarded while waiting for address resolution (arp_cache unresolved_discards).",
];

/// IPv4 neighbour entries in an RTM_GETNEIGH reply. NOARP entries and entries in no state at
/// all (NUD_NONE: created but never resolved, or added with `nud none`) are left out, as
/// /proc/net/arp (which skips entries whose state has no bit beside NOARP) and `ip neigh` do.
pub fn count_entries(reply: &[u8]) -> Result<u64> {
    let mut n = 0;
    for msg in messages::<RouteNetlinkMessage>(reply) {
        if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(nb)) = msg?.payload
            && nb.header.family == AddressFamily::Inet
            && !matches!(
                nb.header.state,
                NeighbourState::Noarp | NeighbourState::None
            )
        {
            n += 1;
        }
    }
    Ok(n)
}

pub fn parse(gc_thresh3: &[u8], neigh_reply: &[u8], arp_cache: &[u8]) -> Result<Vec<Series>> {
    let max = format::single_number(gc_thresh3).context("gc_thresh3")?;
    let entries = count_entries(neigh_reply).context("RTM_GETNEIGH")?;
    let discards =
        format::percpu_table(arp_cache, &["unresolved_discards"]).context("stat/arp_cache")?[0];
    Ok(vec![Series::new(vec![Some(max), Some(entries), discards])])
}

impl Build for Arp {
    const NAME: &'static str = "arp";
    const SCOPE: Scope = Scope::Node;
    const METRICS: &'static [MetricDef] = METRICS;
    type Options = NoOptions;

    fn new(_: NoOptions) -> Result<Self> {
        Ok(Self)
    }
}

impl Probe for Arp {
    fn collect(&self, src: &mut TargetSources) -> Result<Vec<Series>> {
        parse(
            &src.node_file("sys/net/ipv4/neigh/default/gc_thresh3")?,
            &src.neighbours(AddressFamily::Inet)?,
            &src.node_file("net/stat/arp_cache")?,
        )
    }
}
