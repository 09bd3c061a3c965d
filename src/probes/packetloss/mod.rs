//! `packetloss`: every dropped packet, counted in the kernel by an eBPF program on
//! `skb:kfree_skb` (`packetloss.bpf.c`, beside this file) by network namespace, drop reason and
//! device.
//!
//! Per target: `netexporter_packetloss_reason{reason}` for each reason seen in that namespace,
//! with the kernel's own reason names read from its BTF. Drops on the host side of a Pod's veth
//! are given to that Pod. On the node: the spec's seven legacy counters, derived from the same
//! counts over every namespace, the attach point in use and the drops lost to a full map.
//!
//! The program is loaded at start. A node with neither BTF nor tracefs cannot attach it: the
//! probe is unavailable there (said once). Where it can but the kernel refuses (no permission),
//! the probe fails with the reason and the agent runs on without it.

pub mod bpf;
pub mod reasons;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, anyhow};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Build, MetricDef, Probe, Scope, Series};
use crate::metrics;
use crate::sources::bpf_programs::BpfMapFill;
use crate::sources::kernel_btf;
use crate::sources::links::links;
use crate::sources::{Collection, Node, TargetSources};
pub use bpf::AttachMode;
use bpf::{DropCounter, DropKey, TRACEFS};

#[derive(Default)]
pub struct PacketLoss {
    options: PacketLossOptions,
    loaded: Option<Loaded>,
}

/// `probes.packetloss`.
#[derive(Deserialize, Serialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PacketLossOptions {
    /// Where the drop counter attaches. `auto` tries each in turn; naming one makes the
    /// probe fail, saying why, where that one cannot attach.
    pub attach: AttachMode,
}

/// The legacy metrics and the reason each counts; `total` counts every reason.
const LEGACY: [&str; 6] = [
    "NETFILTER_DROP",
    "OTHERHOST",
    "NO_SOCKET",
    "IP_RPFILTER",
    "NOMEM",
    "TCP_ZEROWINDOW",
];
const TOTAL: usize = 6;
const REASON: usize = 7;
const INFO: usize = 8;
const LOST: usize = 9;

const METRICS: &[MetricDef] = metrics![
    counter "netexporter_packetloss_netfilter" "Packets dropped in netfilter (reason NETFILTER_DROP), all namespaces of the node.",
    counter "netexporter_packetloss_otherhost" "Packets dropped because the destination MAC is not this interface's (reason OTHERHOST), all namespaces.",
    counter "netexporter_packetloss_nosocket" "Packets dropped because no socket matched (reason NO_SOCKET), all namespaces.",
    counter "netexporter_packetloss_iprpfilter" "Packets dropped by reverse-path filtering (reason IP_RPFILTER), all namespaces.",
    counter "netexporter_packetloss_nomem" "Packets dropped because memory could not be allocated (reason NOMEM), all namespaces.",
    counter "netexporter_packetloss_zerowindow" "Packets dropped because the TCP receive window was zero (reason TCP_ZEROWINDOW), all namespaces.",
    counter "netexporter_packetloss_total" "Packets dropped for any reason (skb:kfree_skb), all namespaces of the node.",
    counter "netexporter_packetloss_reason" "Packets dropped in this network namespace, by the kernel's drop reason (label reason).",
    gauge "netexporter_packetloss_info" "Always 1; the label attach tells where the drop counter is attached (tp_btf, raw_tracepoint, tracepoint, tracepoint_nobtf).",
    counter "netexporter_packetloss_uncounted_total" "Drops that could not be counted because the in-kernel map was full.",
];

/// The attached program and what it has counted.
struct Loaded {
    counter: Mutex<DropCounter>,
    reasons: BTreeMap<u32, String>,
    /// The node's namespace (the agent's own), to ask each Pod's namespace what id it gives it.
    node_ns: Option<std::fs::File>,
    counts: Mutex<Counts>,
}

/// The drop counts as of the last collection, and what they are attributed with.
#[derive(Default)]
struct Counts {
    /// Why this collection's counts could not be read, if they could not.
    error: Option<String>,
    by_key: HashMap<DropKey, u64>,
    /// The map's fill as this read found it.
    fill: Option<BpfMapFill>,
    node_inode: u64,
    /// Node devices whose peer lives in another namespace: ifindex -> the peer's ifindex.
    node_veths: HashMap<u32, u32>,
    /// Drops of namespaces that are gone, by reason: the node's counters keep them, so they
    /// never go backwards when a Pod is deleted.
    retired: HashMap<u32, u64>,
}

impl Loaded {
    fn name(&self, reason: u32) -> String {
        self.reasons
            .get(&reason)
            .cloned()
            .unwrap_or_else(|| format!("REASON_{reason}"))
    }

    /// This collection's counts: the map read once, entries of namespaces and node devices
    /// that are gone retired into the node's totals (see [`departed`]), and the node's veths.
    /// The node's devices are dumped after the map is read (not taken from the collection's
    /// dump, which may be older): a device with drops in the map that is missing from the dump
    /// is gone, not yet to come.
    fn read(&self, collection: &Collection, counts: &mut Counts) -> Result<()> {
        let (by_key, fill) = self
            .counter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read()?;
        counts.by_key = by_key;
        counts.fill = Some(fill);
        if let Some((inode, _)) = collection.namespaces.iter().find(|(_, p)| p.is_none()) {
            counts.node_inode = *inode;
        }
        let node_links = links(&collection.node_links_now()?).context("the node's devices")?;
        let node_devices: HashSet<u32> = node_links.iter().map(|l| l.index).collect();
        let gone = departed(
            counts.by_key.keys(),
            counts.node_inode,
            &node_devices,
            |inode| collection.is_gone(inode),
        );
        if !gone.is_empty() {
            self.counter
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&gone);
            for k in &gone {
                if let Some(v) = counts.by_key.remove(k)
                    && reasons::is_drop(&self.name(k.reason))
                {
                    *counts.retired.entry(k.reason).or_default() += v;
                }
            }
        }
        counts.node_veths = node_links
            .iter()
            .filter_map(|l| Some((l.index, l.peer?)))
            .collect();
        Ok(())
    }
}

/// The map's keys whose state may go: those of namespaces that are gone, and those of the
/// node's devices missing from `node_devices`, dumped after the map was read (above all the
/// node side of a deleted Pod's veth: without this its keys would stay in the map until it is
/// full, and their counts would move into the node's own series once the veth is no Pod's).
fn departed<'a>(
    keys: impl Iterator<Item = &'a DropKey>,
    node_inode: u64,
    node_devices: &HashSet<u32>,
    is_gone: impl Fn(u64) -> bool,
) -> Vec<DropKey> {
    keys.filter(|k| {
        let ns = u64::from(k.netns);
        (k.netns != 0 && is_gone(ns))
            || (ns == node_inode && k.ifindex != 0 && !node_devices.contains(&k.ifindex))
    })
    .copied()
    .collect()
}

/// The agent's own network namespace, the node's (the agent runs on the host network). It is
/// the agent process itself, not node data: not under the configured procfs.
const OWN_NAMESPACE: &str = "/proc/self/ns/net";

/// Reason names from the kernel's BTF, else from the tracepoint format, else none (numbers).
fn reason_names(btf_path: &Path) -> BTreeMap<u32, String> {
    let from_btf = kernel_btf::read(btf_path)
        .with_context(|| btf_path.display().to_string())
        .and_then(|b| reasons::drop_reasons(&b));
    match from_btf {
        Ok(r) => r,
        Err(e) => {
            let from_format = TRACEFS
                .iter()
                .find_map(|t| {
                    std::fs::read_to_string(format!("{t}/events/skb/kfree_skb/format")).ok()
                })
                .ok_or_else(|| anyhow!("tracefs not readable"))
                .and_then(|f| reasons::reasons_from_format(&f));
            tracing::warn!(probe = "packetloss", error = %format!("{e:#}"), fallback = from_format.is_ok(), "drop reason names not read from BTF; using the tracepoint format");
            from_format.unwrap_or_default()
        }
    }
}

/// Counts of one target by reason name.
fn counts_for(
    loaded: &Loaded,
    st: &Counts,
    inode: u64,
    is_node: bool,
    own_veths: &HashMap<u32, u32>,
) -> BTreeMap<String, u64> {
    let on_node_veth =
        |k: &DropKey| u64::from(k.netns) == st.node_inode && st.node_veths.contains_key(&k.ifindex);
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    for (k, v) in &st.by_key {
        let mine = if is_node {
            // The node's own drops, but not those on the node side of a veth whose peer is in
            // another namespace: that namespace claims them.
            (u64::from(k.netns) == inode || k.netns == 0) && !on_node_veth(k)
        } else {
            // Its own, and those on the node side of its veths: the node device `k.ifindex`
            // must have a device of this namespace as its peer, with that device's peer
            // being `k.ifindex` again.
            u64::from(k.netns) == inode
                || (on_node_veth(k)
                    && st
                        .node_veths
                        .get(&k.ifindex)
                        .is_some_and(|peer| own_veths.get(peer) == Some(&k.ifindex)))
        };
        if mine {
            let name = loaded.name(k.reason);
            if reasons::is_drop(&name) {
                *by_reason.entry(name).or_default() += v;
            }
        }
    }
    by_reason
}

impl Build for PacketLoss {
    const NAME: &'static str = "packetloss";
    const SCOPE: Scope = Scope::Pod;
    const METRICS: &'static [MetricDef] = METRICS;
    type Options = PacketLossOptions;

    fn new(options: PacketLossOptions) -> Result<Self> {
        Ok(Self {
            options,
            loaded: None,
        })
    }
}

impl Probe for PacketLoss {
    fn prerequisites(&self, node: &Node) -> Result<(), String> {
        // A named attach point is the operator's demand: if it cannot attach, that is a
        // failure to show, not an absence.
        if self.options.attach != AttachMode::Auto {
            return Ok(());
        }
        let btf = &node.options.btf_path;
        let tracepoint = TRACEFS
            .iter()
            .any(|t| Path::new(t).join("events/skb/kfree_skb/format").exists());
        if btf.exists() || tracepoint {
            Ok(())
        } else {
            Err(format!(
                "no kernel BTF ({}) and no readable tracefs: the drop counter cannot attach",
                btf.display()
            ))
        }
    }

    fn start(&mut self, node: &Node) -> Result<()> {
        let btf_path: PathBuf = node.options.btf_path.clone();
        let counter = DropCounter::load(self.options.attach, &node.kernel_btf)?;
        tracing::info!(
            probe = "packetloss",
            attach = counter.mode.name(),
            "drop counter attached"
        );
        self.loaded = Some(Loaded {
            counter: Mutex::new(counter),
            reasons: reason_names(&btf_path),
            node_ns: std::fs::File::open(OWN_NAMESPACE).ok(),
            counts: Mutex::new(Counts::default()),
        });
        Ok(())
    }

    fn bpf_maps(&self) -> Vec<BpfMapFill> {
        let Some(loaded) = &self.loaded else {
            return Vec::new();
        };
        let counts = loaded.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.fill.iter().cloned().collect()
    }

    fn prepare(&self, collection: &Collection) {
        let Some(loaded) = &self.loaded else { return };
        let mut counts = loaded.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.error = loaded
            .read(collection, &mut counts)
            .err()
            .map(|e| format!("{e:#}"));
    }

    fn collect(&self, src: &mut TargetSources) -> Result<Vec<Series>> {
        let loaded = self
            .loaded
            .as_ref()
            .ok_or_else(|| anyhow!("the drop counter is not attached"))?;
        // This namespace's devices whose peer is in the node's namespace: ifindex -> the
        // peer's ifindex there (the node records its devices with a peer anywhere else).
        // Read before taking the counts: no netlink round trip holds them.
        let own_links = links(&src.links()?)?;
        let node_id = match (&loaded.node_ns, src.is_node()) {
            (Some(ns), false) if own_links.iter().any(|l| l.peer.is_some()) => {
                src.nsid_of(ns).ok().flatten()
            }
            _ => None,
        };
        let own_veths: HashMap<u32, u32> = own_links
            .iter()
            .filter(|l| src.is_node() || (node_id.is_some() && l.peer_netnsid == node_id))
            .filter_map(|l| Some((l.index, l.peer?)))
            .collect();

        let st = loaded.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = &st.error {
            return Err(anyhow!("{e}"));
        }
        let n = METRICS.len();
        let mut out: Vec<Series> = counts_for(loaded, &st, src.inode(), src.is_node(), &own_veths)
            .into_iter()
            .map(|(reason, v)| Series::one(n, REASON, v, ("reason", reason.into())))
            .collect();

        if src.is_node() {
            let mut sums = [0u64; LEGACY.len() + 1];
            let kept = st.by_key.iter().map(|(k, v)| (k.reason, *v));
            let retired = st.retired.iter().map(|(r, v)| (*r, *v));
            for (reason, v) in kept.chain(retired) {
                let name = loaded.name(reason);
                if !reasons::is_drop(&name) {
                    continue;
                }
                if let Some(i) = LEGACY.iter().position(|l| *l == name) {
                    sums[i] += v;
                }
                sums[TOTAL] += v;
            }
            let mut legacy = vec![None; n];
            for (i, s) in sums.iter().enumerate() {
                legacy[i] = Some(*s);
            }
            legacy[LOST] = Some(st.fill.as_ref().map_or(0, |f| f.uncounted));
            out.push(Series::new(legacy));
            let mode = loaded
                .counter
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .mode;
            out.push(Series::one(n, INFO, 1, ("attach", mode.name().into())));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_of_gone_namespaces_and_node_devices_departs() {
        const NODE: u32 = 4026531840;
        const POD: u32 = 4026532100;
        const GONE_POD: u32 = 4026532200;
        let keys = [
            DropKey::new(NODE, 2, 1),     // lo: stays
            DropKey::new(NODE, 2, 0),     // no device: stays
            DropKey::new(NODE, 5, 7),     // a deleted Pod's host-side veth: goes
            DropKey::new(NODE, 5, 9),     // a live veth: stays
            DropKey::new(POD, 5, 2),      // a live Pod: stays
            DropKey::new(GONE_POD, 5, 2), // a deleted Pod's namespace: goes
            DropKey::new(0, 3, 4),        // no namespace known: stays
        ];
        let node_devices: HashSet<u32> = [1, 2, 9, 10].into();
        let gone = departed(keys.iter(), u64::from(NODE), &node_devices, |i| {
            i == u64::from(GONE_POD)
        });
        assert_eq!(
            gone,
            vec![DropKey::new(NODE, 5, 7), DropKey::new(GONE_POD, 5, 2)]
        );
    }
}
