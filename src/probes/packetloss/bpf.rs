//! Loading the drop counter (`packetloss.bpf.c`) with its fallback chain, and reading and
//! pruning its map.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use aya::maps::{IterableMap, PerCpuArray, PerCpuHashMap};

use crate::sources::bpf_maps::{self, Values};
use aya::programs::{BtfTracePoint, RawTracePoint, TracePoint};
use aya::{Ebpf, EbpfLoader};

use crate::sources::bpf_programs::BpfMapFill;
use crate::sources::kernel_btf::KernelBtf;

/// The CO-RE object (three entry points) and the no-BTF fallback, built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/packetloss.bpf.o"));
static OBJECT_NOBTF: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/packetloss_nobtf.bpf.o"));

/// Mirrors `struct drop_key` of `packetloss.h` (a test checks both declare the same
/// fields in the same order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DropKey {
    pub netns: u32,
    pub reason: u32,
    pub ifindex: u32,
    pub pad: u32,
}

// SAFETY: repr(C), four u32 fields, no padding, any bit pattern valid.
unsafe impl aya::Pod for DropKey {}

impl DropKey {
    pub fn new(netns: u32, reason: u32, ifindex: u32) -> Self {
        Self {
            netns,
            reason,
            ifindex,
            pad: 0,
        }
    }
}

/// Mirrors `DROP_SLOTS` and `struct drop_slot` / `struct drop_slots` of `packetloss.h`.
pub const DROP_SLOTS: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropSlot {
    pub netns: u32,
    pub ifindex: u32,
    pub pad: u32,
    pub reason: u32,
    pub count: u64,
}

impl DropSlot {
    fn key(&self) -> DropKey {
        DropKey::new(self.netns, self.reason, self.ifindex)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DropSlots {
    pub slot: [DropSlot; DROP_SLOTS],
}

// SAFETY: repr(C), u32 and u64 fields in an order without padding, any bit pattern valid.
unsafe impl aya::Pod for DropSlot {}
// SAFETY: an array of the above.
unsafe impl aya::Pod for DropSlots {}

/// A slot as user space keeps track of it: (CPU, slot index).
type SlotId = (usize, usize);

/// Where the program is attached, in the order tried.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AttachMode {
    /// Try each of the others in order.
    #[default]
    Auto,
    /// A BTF-typed tracepoint: typed arguments, the cheapest.
    TpBtf,
    /// A raw tracepoint, with CO-RE reads.
    RawTracepoint,
    /// The classic tracepoint (needs tracefs).
    Tracepoint,
    /// No kernel struct read (no BTF needed): reason only, every drop counted under the node.
    TracepointNobtf,
}

impl AttachMode {
    pub const CHAIN: [AttachMode; 4] = [
        Self::TpBtf,
        Self::RawTracepoint,
        Self::Tracepoint,
        Self::TracepointNobtf,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::TpBtf => "tp_btf",
            Self::RawTracepoint => "raw_tracepoint",
            Self::Tracepoint => "tracepoint",
            Self::TracepointNobtf => "tracepoint_nobtf",
        }
    }
}

/// The loaded and attached program. Dropping it detaches the program.
pub struct DropCounter {
    ebpf: Ebpf,
    pub mode: AttachMode,
    /// Each claimed slot's key and count as the last read found them.
    slots: HashMap<SlotId, (DropKey, u64)>,
    /// Slots whose key's namespace or device went: their count then, which the node's retired
    /// totals hold. A slot keeps its key for good (clearing one would mean rewriting every slot
    /// of every CPU, losing the adds in between), so only counts above it are new: the same
    /// key again (a namespace inode or device index reused).
    retired: HashMap<SlotId, u64>,
}

/// Tracefs mount points, in the order tried.
pub const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

impl DropCounter {
    /// Tries `wanted` (or the whole chain for `Auto`); every failure is returned with its cause
    /// in the error, in order.
    pub fn load(wanted: AttachMode, kernel_btf: &KernelBtf) -> Result<Self> {
        let modes: &[AttachMode] = match wanted {
            AttachMode::Auto => &AttachMode::CHAIN,
            ref one => std::slice::from_ref(one),
        };
        let mut failures = Vec::new();
        for &mode in modes {
            match Self::try_mode(mode, kernel_btf) {
                Ok(ebpf) => {
                    for (m, e) in &failures {
                        tracing::info!(probe = "packetloss", attach = m, error = %e, "attach point unavailable; fell back");
                    }
                    return Ok(Self::new(ebpf, mode));
                }
                // Verifier logs span many lines; one line keeps the log greppable.
                Err(e) => failures.push((mode.name(), format!("{e:#}").replace('\n', " | "))),
            }
        }
        let list: Vec<String> = failures.iter().map(|(m, e)| format!("{m}: {e}")).collect();
        bail!("no attach point worked ({})", list.join("; "))
    }

    /// The benchmark's floor: the program that does nothing (`kfree_skb_floor`), attached
    /// where `tp_btf` attaches: what the attach point costs before any counting.
    pub fn load_floor(kernel_btf: &KernelBtf) -> Result<Self> {
        let (mut ebpf, attach) = kernel_btf.load(OBJECT)?;
        let prog: &mut BtfTracePoint = program(&mut ebpf, "kfree_skb_floor")?.try_into()?;
        attach.tracepoint(prog, "kfree_skb")?;
        prog.attach()?;
        Ok(Self::new(ebpf, AttachMode::TpBtf))
    }

    fn try_mode(mode: AttachMode, kernel_btf: &KernelBtf) -> Result<Ebpf> {
        match mode {
            AttachMode::TpBtf => {
                let (mut ebpf, attach) = kernel_btf.load(OBJECT)?;
                let prog: &mut BtfTracePoint = program(&mut ebpf, "kfree_skb_btf")?.try_into()?;
                attach.tracepoint(prog, "kfree_skb")?;
                prog.attach()?;
                Ok(ebpf)
            }
            AttachMode::RawTracepoint => {
                let mut ebpf = kernel_btf.load_relocated(OBJECT)?;
                let prog: &mut RawTracePoint = program(&mut ebpf, "kfree_skb_raw")?.try_into()?;
                prog.load()?;
                prog.attach("kfree_skb")?;
                Ok(ebpf)
            }
            AttachMode::Tracepoint => {
                let mut ebpf = kernel_btf.load_relocated(OBJECT)?;
                let prog: &mut TracePoint = program(&mut ebpf, "kfree_skb_tp")?.try_into()?;
                prog.load()?;
                prog.attach("skb", "kfree_skb")?;
                Ok(ebpf)
            }
            AttachMode::TracepointNobtf => {
                let offset = reason_offset()?;
                let mut ebpf = EbpfLoader::new()
                    .btf(None)
                    .override_global("reason_offset", &offset, true)
                    .load(OBJECT_NOBTF)?;
                let prog: &mut TracePoint = program(&mut ebpf, "kfree_skb_nobtf")?.try_into()?;
                prog.load()?;
                prog.attach("skb", "kfree_skb")?;
                Ok(ebpf)
            }
            AttachMode::Auto => bail!("auto is not an attach point"),
        }
    }

    fn new(ebpf: Ebpf, mode: AttachMode) -> Self {
        Self {
            ebpf,
            mode,
            slots: HashMap::new(),
            retired: HashMap::new(),
        }
    }

    /// Every counter summed over CPUs and over the slots and the hash, and the hash's fill
    /// (with the drops lost because it was full).
    pub fn read(&mut self) -> Result<(HashMap<DropKey, u64>, BpfMapFill)> {
        let mut out = self.read_slots()?;
        let (hash, fill) = self.read_hash()?;
        for (k, v) in hash {
            *out.entry(k).or_default() += v;
        }
        Ok((out, fill))
    }

    /// The slots' counts by key. The slots are read twice and a slot counts only when both
    /// reads agree on its key: a claim read half-way (its key half written) is left for the
    /// next read, never counted under a wrong key. (The no-BTF object has no slots.)
    fn read_slots(&mut self) -> Result<HashMap<DropKey, u64>> {
        let Some(map) = self.ebpf.map("drop_slots") else {
            return Ok(HashMap::new());
        };
        let slots: PerCpuArray<_, DropSlots> = PerCpuArray::try_from(map)?;
        let (first, second) = (slots.get(&0, 0)?, slots.get(&0, 0)?);
        let (counts, seen) = sum_slots(&first, &second, &self.retired);
        self.slots = seen;
        Ok(counts)
    }

    fn read_hash(&self) -> Result<(HashMap<DropKey, u64>, BpfMapFill)> {
        let map = self.ebpf.map("drops").context("map drops missing")?;
        let drops: PerCpuHashMap<_, DropKey, u64> = PerCpuHashMap::try_from(map)?;
        let mut out = HashMap::new();
        bpf_maps::for_each(drops.map(), Values::PerCpu, |key, values: &[u64]| {
            out.insert(key, values.iter().sum());
        })
        .context("reading map drops")?;
        let map = self.ebpf.map("overflow").context("map overflow missing")?;
        let overflow: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        let lost = overflow.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0);
        let fill = BpfMapFill::of(drops.map(), "drops", out.len(), lost);
        Ok((out, fill))
    }

    /// Run time and run count of the attached program, as the kernel accounts them while
    /// `kernel.bpf_stats_enabled` is on (`aya::sys::enable_stats`).
    pub fn run_stats(&self) -> Option<(std::time::Duration, u64)> {
        self.ebpf
            .programs()
            .find_map(|(_, p)| p.info().ok())
            .map(|i| (i.run_time(), i.run_count()))
    }

    /// Removes the entries of `keys` (namespaces that are gone) from the hash, and retires
    /// their slots at the counts the last read found.
    pub fn remove(&mut self, keys: &[DropKey]) {
        for (id, (key, count)) in &self.slots {
            if keys.contains(key) {
                self.retired.insert(*id, *count);
            }
        }
        let Some(map) = self.ebpf.map_mut("drops") else {
            return;
        };
        let Ok(mut drops) = PerCpuHashMap::<_, DropKey, u64>::try_from(map) else {
            return;
        };
        for k in keys {
            let _ = drops.remove(k);
        }
    }
}

/// The slots' counts by key from two reads of every CPU's slots (`first`, then `second`), less
/// what `retired` slots had counted; and each slot trusted, with its key and count. A slot
/// counts only when claimed (count above 0, a drop reason) and both reads agree on its key.
fn sum_slots(
    first: &[DropSlots],
    second: &[DropSlots],
    retired: &HashMap<SlotId, u64>,
) -> (HashMap<DropKey, u64>, HashMap<SlotId, (DropKey, u64)>) {
    let (mut counts, mut seen) = (HashMap::new(), HashMap::new());
    for (cpu, (a, b)) in first.iter().zip(second).enumerate() {
        for (i, (sa, sb)) in a.slot.iter().zip(&b.slot).enumerate() {
            if sa.count == 0 || sa.reason == 0 || sa.key() != sb.key() {
                continue;
            }
            let key = sa.key();
            seen.insert((cpu, i), (key, sa.count));
            let since = retired.get(&(cpu, i)).copied().unwrap_or(0);
            let fresh = sa.count.saturating_sub(since);
            if fresh > 0 {
                *counts.entry(key).or_default() += fresh;
            }
        }
    }
    (counts, seen)
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))
}

/// Offset of `reason` in the kfree_skb tracepoint record, from its format file.
fn reason_offset() -> Result<u32> {
    let format = TRACEFS
        .iter()
        .find_map(|t| std::fs::read_to_string(format!("{t}/events/skb/kfree_skb/format")).ok())
        .context("tracefs not mounted or not readable (events/skb/kfree_skb/format)")?;
    parse_reason_offset(&format)
}

pub fn parse_reason_offset(format: &str) -> Result<u32> {
    let line = format
        .lines()
        .find(|l| l.contains("field:") && l.contains(" reason;"))
        .context("no reason field in the kfree_skb format (kernel older than 5.17)")?;
    let offset = line
        .split(';')
        .find_map(|f| f.trim().strip_prefix("offset:"))
        .context("reason field without offset")?;
    offset.trim().parse().context("bad reason offset")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout_matches_the_c_header() {
        let header = include_str!("packetloss.h");
        let body = header
            .split("struct drop_key {")
            .nth(1)
            .and_then(|b| b.split("};").next())
            .expect("struct drop_key in packetloss.h");
        let fields: Vec<&str> = body
            .lines()
            .filter_map(|l| l.trim().strip_prefix("__u32 "))
            .map(|l| l.split(';').next().unwrap_or("").trim())
            .collect();
        assert_eq!(fields, ["netns", "reason", "ifindex", "pad"]);
        assert_eq!(std::mem::size_of::<DropKey>(), 16);
        let body = header
            .split("struct drop_slot {")
            .nth(1)
            .and_then(|b| b.split("};").next())
            .expect("struct drop_slot in packetloss.h");
        let fields: Vec<&str> = body
            .lines()
            .filter_map(|l| l.trim().split_once(' ').map(|(_, f)| f))
            .map(|f| f.trim_end_matches(';'))
            .collect();
        assert_eq!(fields, ["netns", "ifindex", "pad", "reason", "count"]);
        assert!(header.contains(&format!("#define DROP_SLOTS {DROP_SLOTS}")));
        assert_eq!(std::mem::size_of::<DropSlot>(), 24);
        assert_eq!(std::mem::size_of::<DropSlots>(), 24 * DROP_SLOTS);
    }

    fn slots(set: &[(usize, DropSlot)]) -> DropSlots {
        let mut s = DropSlots {
            slot: [DropSlot::default(); DROP_SLOTS],
        };
        for (i, slot) in set {
            s.slot[*i] = *slot;
        }
        s
    }

    fn slot(netns: u32, reason: u32, ifindex: u32, count: u64) -> DropSlot {
        DropSlot {
            netns,
            ifindex,
            pad: 0,
            reason,
            count,
        }
    }

    #[test]
    fn slots_add_up_over_cpus_and_skip_free_and_half_claimed_ones() {
        let a = slot(7, 2, 3, 5);
        let cpu0 = slots(&[(1, a), (2, slot(8, 2, 0, 4))]);
        // A claim on CPU 1, slot 4, seen half-way by the first read (count set, key words
        // still the free slot's), whole by the second: left for the next read.
        let torn = slots(&[(9, a), (4, slot(0, 0, 0, 1))]);
        let whole = slots(&[(9, a), (4, slot(9, 5, 1, 1))]);
        // A free slot's stale key words (count 0) count nothing.
        let free = slots(&[(6, slot(9, 5, 1, 0))]);
        let first = [cpu0, torn, free];
        let second = [cpu0, whole, free];
        let (counts, seen) = sum_slots(&first, &second, &HashMap::new());
        // The same key in a slot of each of two CPUs: added.
        assert_eq!(counts.get(&DropKey::new(7, 2, 3)), Some(&10));
        assert_eq!(counts.get(&DropKey::new(8, 2, 0)), Some(&4));
        assert_eq!(counts.len(), 2, "{counts:?}");
        assert_eq!(seen.len(), 3);
        // Also with a differing key (a torn read that caught some new words).
        let (counts, _) = sum_slots(
            &[slots(&[(4, slot(9, 5, 0, 1))])],
            &[slots(&[(4, slot(9, 5, 1, 1))])],
            &HashMap::new(),
        );
        assert!(counts.is_empty());
    }

    #[test]
    fn a_retired_slot_counts_only_what_came_after() {
        let now = [slots(&[(3, slot(7, 2, 3, 12))])];
        let retired = HashMap::from([((0, 3), 10)]);
        let (counts, _) = sum_slots(&now, &now, &retired);
        assert_eq!(counts.get(&DropKey::new(7, 2, 3)), Some(&2));
        let retired = HashMap::from([((0, 3), 12)]);
        let (counts, seen) = sum_slots(&now, &now, &retired);
        assert!(counts.is_empty());
        assert_eq!(seen.get(&(0, 3)), Some(&(DropKey::new(7, 2, 3), 12)));
    }

    #[test]
    fn reason_offset_from_format() {
        let f = "\tfield:void * rx_sk;\toffset:24;\tsize:8;\tsigned:0;\n\tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;\n";
        assert_eq!(parse_reason_offset(f).unwrap(), 36);
        assert!(parse_reason_offset("field:void * skbaddr; offset:8;").is_err());
    }
}
