//! `packetloss`: every dropped packet, counted in the kernel by an eBPF program on
//! `skb:kfree_skb` (`bpf/packetloss.bpf.c`) by network namespace, drop reason and device.
//!
//! Per target: `netexporter_packetloss_reason{reason}` for each reason seen in that namespace,
//! with the kernel's own reason names read from its BTF. Drops on the host side of a Pod's veth
//! are given to that Pod. On the node: the spec's seven legacy counters, derived from the same
//! counts over every namespace, the attach point in use and the drops lost to a full map.
//!
//! The program is loaded at the first collection. Without permission, BTF or kernel support the
//! probe fails with the reason (logged once by the collector, `success 0`) and the agent runs
//! on without it.

pub mod bpf;
pub mod btf;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use anyhow::{Result, anyhow};

use super::{MetricDef, Probe, Scope, Series, netdev};
use crate::config::ProbeOptions;
use crate::metrics;
use crate::sources::TargetSources;
pub use bpf::AttachMode;
use bpf::{DropCounter, DropKey};

pub struct PacketLoss;

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

struct State {
    counter: Result<DropCounter, String>,
    reasons: BTreeMap<u32, String>,
    /// The collection `counts` was read for.
    read_for: u64,
    counts: HashMap<DropKey, u64>,
    lost: u64,
    /// Node devices whose peer lives in another namespace: ifindex -> the peer's ifindex.
    /// Recorded by the node's target; Pods use the latest record (at most one collection old).
    node_veths: HashMap<u32, u32>,
    node_inode: u64,
    /// The node's namespace, to ask each Pod's namespace what id it gives it.
    node_ns: Option<std::fs::File>,
    /// Drops of namespaces that are gone, by reason: the node's counters keep them, so they
    /// never go backwards when a Pod is deleted.
    retired: HashMap<u32, u64>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

impl State {
    fn load(opts: &ProbeOptions) -> Self {
        let counter = DropCounter::load(opts.attach, &opts.btf_path).map_err(|e| format!("{e:#}"));
        if let Ok(c) = &counter {
            tracing::info!(
                probe = "packetloss",
                attach = c.mode.name(),
                "drop counter attached"
            );
        }
        Self {
            counter,
            reasons: reason_names(opts),
            read_for: 0,
            counts: HashMap::new(),
            lost: 0,
            node_veths: HashMap::new(),
            node_inode: 0,
            node_ns: std::fs::File::open(opts_procfs_self_ns()).ok(),
            retired: HashMap::new(),
        }
    }

    fn name(&self, reason: u32) -> String {
        self.reasons
            .get(&reason)
            .cloned()
            .unwrap_or_else(|| format!("REASON_{reason}"))
    }
}

/// The agent's own network namespace: the node's (the agent runs on the host network).
fn opts_procfs_self_ns() -> &'static str {
    "/proc/self/ns/net"
}

/// Reason names from the kernel's BTF, else from the tracepoint format, else none (numbers).
fn reason_names(opts: &ProbeOptions) -> BTreeMap<u32, String> {
    let from_btf = std::fs::read(&opts.btf_path)
        .map_err(anyhow::Error::from)
        .and_then(|b| btf::drop_reasons(&b));
    match from_btf {
        Ok(r) => r,
        Err(e) => {
            let from_format = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
                .iter()
                .find_map(|t| {
                    std::fs::read_to_string(format!("{t}/events/skb/kfree_skb/format")).ok()
                })
                .ok_or_else(|| anyhow!("tracefs not readable"))
                .and_then(|f| btf::reasons_from_format(&f));
            tracing::warn!(probe = "packetloss", error = %format!("{e:#}"), fallback = from_format.is_ok(), "drop reason names not read from BTF; using the tracepoint format");
            from_format.unwrap_or_default()
        }
    }
}

/// Counts of one target by reason name.
fn counts_for(
    st: &State,
    inode: u64,
    is_node: bool,
    own_veths: &HashMap<u32, u32>,
) -> BTreeMap<String, u64> {
    let on_node_veth =
        |k: &DropKey| u64::from(k.netns) == st.node_inode && st.node_veths.contains_key(&k.ifindex);
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    for (k, v) in &st.counts {
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
            let name = st.name(k.reason);
            if btf::is_drop(&name) {
                *by_reason.entry(name).or_default() += v;
            }
        }
    }
    by_reason
}

impl Probe for PacketLoss {
    fn name(&self) -> &'static str {
        "packetloss"
    }
    fn scope(&self) -> Scope {
        Scope::Pod
    }
    fn metrics(&self) -> &'static [MetricDef] {
        METRICS
    }

    fn collect(&self, src: &mut TargetSources, opts: &ProbeOptions) -> Result<Vec<Series>> {
        let mut guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
        let st = guard.get_or_insert_with(|| State::load(opts));
        let counter = st.counter.as_ref().map_err(|e| anyhow!("{e}"))?;
        if st.read_for != src.collection {
            let (counts, lost) = counter.read()?;
            st.counts = counts;
            st.lost = lost;
            st.read_for = src.collection;
        }
        let mode = counter.mode;

        // This namespace's devices whose peer is in the node's namespace: ifindex -> the peer's
        // ifindex there. (The node records its devices with a peer anywhere else.)
        let links = netdev::links(&src.links()?)?;
        let node_id = match (&st.node_ns, src.is_node()) {
            (Some(ns), false) if links.iter().any(|l| l.peer.is_some()) => {
                src.nsid_of(ns).ok().flatten()
            }
            _ => None,
        };
        let own_veths: HashMap<u32, u32> = links
            .iter()
            .filter(|l| src.is_node() || (node_id.is_some() && l.peer_netnsid == node_id))
            .filter_map(|l| Some((l.index, l.peer?)))
            .collect();
        if src.is_node() {
            st.node_veths = own_veths.clone();
            st.node_inode = src.inode;
        }

        let n = METRICS.len();
        let mut out: Vec<Series> = counts_for(st, src.inode, src.is_node(), &own_veths)
            .into_iter()
            .map(|(reason, v)| {
                let mut values = vec![None; n];
                values[REASON] = Some(v);
                Series {
                    label: Some(("reason", reason)),
                    values,
                }
            })
            .collect();

        if src.is_node() {
            let mut legacy = vec![None; n];
            let mut sums = [0u64; LEGACY.len() + 1];
            for (k, v) in &st.counts {
                let name = st.name(k.reason);
                if !btf::is_drop(&name) {
                    continue;
                }
                if let Some(i) = LEGACY.iter().position(|l| *l == name) {
                    sums[i] += v;
                }
                sums[TOTAL] += v;
            }
            for (reason, v) in &st.retired {
                let name = st.name(*reason);
                if let Some(i) = LEGACY.iter().position(|l| *l == name) {
                    sums[i] += v;
                }
                sums[TOTAL] += v;
            }
            for (i, s) in sums.iter().enumerate() {
                legacy[i] = Some(*s);
            }
            legacy[LOST] = Some(st.lost);
            out.push(Series::new(legacy));
            let mut info = vec![None; n];
            info[INFO] = Some(1);
            out.push(Series {
                label: Some(("attach", mode.name().to_string())),
                values: info,
            });
        }
        Ok(out)
    }

    fn after_collection(&self, live: &HashSet<u64>) {
        let mut guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
        let Some(st) = guard.as_mut() else { return };
        let gone: Vec<DropKey> = st
            .counts
            .keys()
            .filter(|k| k.netns != 0 && !live.contains(&u64::from(k.netns)))
            .copied()
            .collect();
        if gone.is_empty() {
            return;
        }
        if let Ok(c) = st.counter.as_mut() {
            c.remove(&gone);
        }
        for k in &gone {
            if let Some(v) = st.counts.remove(k)
                && btf::is_drop(&st.name(k.reason))
            {
                *st.retired.entry(k.reason).or_default() += v;
            }
        }
    }
}
