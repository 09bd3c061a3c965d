//! `qdisc`: the node's root qdiscs from an RTM_GETQDISC dump, summed over the devices whose
//! name starts with one of the configured prefixes. Only root qdiscs are summed: a classful
//! root (mq, htb) already reports the sum of its children, so adding those would count twice.
//!
//! The selected devices come and go with Pods (their host-side veths). A sum over the devices
//! present would fall when one goes, and `rate()` reads a fall as a counter reset (a spike the
//! size of the node's traffic). So the counters keep what gone devices counted: a device that
//! disappears (or whose counters restart: its qdisc replaced) adds its last values to the
//! totals for good. The gauges (backlog, queue length) are of the devices present.

use std::collections::HashMap;
use std::sync::Mutex;

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
    totals: Mutex<Totals>,
}

/// The first `COUNTERS` values of a qdisc are counters; the rest gauges.
const COUNTERS: usize = 4;

/// A device by index and name (an index is reused only after the device is gone, and then
/// mostly under another name).
type DeviceKey = (u32, String);

/// What the selected devices counted, so that the node's totals never go backwards.
#[derive(Default)]
struct Totals {
    /// Each device's counters at the last collection.
    last: HashMap<DeviceKey, [u64; COUNTERS]>,
    /// What devices that are gone (or whose counters restarted) had counted.
    retired: [u64; COUNTERS],
}

impl Totals {
    /// The node's values now: counters with what gone devices counted, gauges of the present.
    fn update(&mut self, now: Vec<(DeviceKey, [u64; 6])>) -> [u64; 6] {
        let mut current: HashMap<DeviceKey, [u64; COUNTERS]> = HashMap::with_capacity(now.len());
        let mut out = [0u64; 6];
        for (key, v) in now {
            let counters = [v[0], v[1], v[2], v[3]];
            if let Some(prev) = self.last.get(&key)
                && counters.iter().zip(prev).any(|(c, p)| c < p)
            {
                add(&mut self.retired, prev);
            }
            for (o, x) in out.iter_mut().zip(v) {
                *o = o.wrapping_add(x);
            }
            current.insert(key, counters);
        }
        for (key, prev) in &self.last {
            if !current.contains_key(key) {
                add(&mut self.retired, prev);
            }
        }
        self.last = current;
        for (o, r) in out.iter_mut().zip(self.retired) {
            *o = o.wrapping_add(r);
        }
        out
    }
}

fn add(to: &mut [u64; COUNTERS], v: &[u64; COUNTERS]) {
    for (t, x) in to.iter_mut().zip(v) {
        *t = t.wrapping_add(*x);
    }
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

/// The root qdisc of each selected device: (device, bytes, packets, drops, overlimits,
/// backlog, qlen).
pub fn root_qdiscs(
    reply: &[u8],
    names: &HashMap<u32, String>,
    prefixes: &[String],
) -> Result<Vec<(DeviceKey, [u64; 6])>> {
    let mut out = Vec::new();
    for msg in messages::<RouteNetlinkMessage>(reply) {
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewQueueDiscipline(tc)) =
            msg?.payload
        else {
            continue;
        };
        if tc.header.parent != TcHandle::ROOT {
            continue;
        }
        let Some((index, name)) = u32::try_from(tc.header.index)
            .ok()
            .and_then(|i| Some((i, names.get(&i)?)))
        else {
            continue;
        };
        if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            out.push(((index, name.clone()), qdisc_stats(&tc.attributes)));
        }
    }
    Ok(out)
}

/// The sums over the selected devices present in one dump.
pub fn parse(
    reply: &[u8],
    names: &HashMap<u32, String>,
    prefixes: &[String],
) -> Result<Vec<Series>> {
    let sum = Totals::default().update(root_qdiscs(reply, names, prefixes)?);
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
        Ok(Self {
            options,
            totals: Mutex::default(),
        })
    }
}

impl Probe for Qdisc {
    fn collect(&self, src: &mut TargetSources) -> Result<Vec<Series>> {
        let names = links::names(&src.links()?).context("RTM_GETLINK")?;
        let now = root_qdiscs(&src.qdiscs()?, &names, &self.options.device_prefixes)
            .context("RTM_GETQDISC")?;
        let values = self
            .totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .update(now);
        Ok(vec![Series::new(values.map(Some).to_vec())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(i: u32, name: &str, c: u64, gauge: u64) -> (DeviceKey, [u64; 6]) {
        ((i, name.into()), [c, c, c, c, gauge, gauge])
    }

    #[test]
    fn totals_keep_what_gone_devices_counted() {
        let mut t = Totals::default();
        assert_eq!(
            t.update(vec![dev(1, "cali1", 10, 1), dev(2, "cali2", 5, 2)]),
            [15, 15, 15, 15, 3, 3]
        );
        // cali2 gone: its 5 stay in the counters, not in the gauges.
        assert_eq!(
            t.update(vec![dev(1, "cali1", 12, 0)]),
            [17, 17, 17, 17, 0, 0]
        );
        // cali1's qdisc replaced (its counters restart), a new device with a reused index.
        assert_eq!(
            t.update(vec![dev(1, "cali1", 1, 0), dev(2, "cali9", 4, 0)]),
            [22, 22, 22, 22, 0, 0]
        );
        // Nothing at all: everything counted so far remains.
        assert_eq!(t.update(vec![]), [22, 22, 22, 22, 0, 0]);
        assert!(t.last.is_empty(), "no device is remembered once gone");
    }
}
