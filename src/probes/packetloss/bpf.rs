//! Loading the drop counter (`packetloss.bpf.c`) with its fallback chain, and reading and
//! pruning its map.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use aya::maps::{IterableMap, PerCpuArray, PerCpuHashMap};
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
                    return Ok(Self { ebpf, mode });
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
        let (mut ebpf, btf) = kernel_btf.load(OBJECT)?;
        let prog: &mut BtfTracePoint = program(&mut ebpf, "kfree_skb_floor")?.try_into()?;
        prog.load("kfree_skb", &btf)?;
        prog.attach()?;
        Ok(Self {
            ebpf,
            mode: AttachMode::TpBtf,
        })
    }

    fn try_mode(mode: AttachMode, kernel_btf: &KernelBtf) -> Result<Ebpf> {
        match mode {
            AttachMode::TpBtf => {
                let (mut ebpf, btf) = kernel_btf.load(OBJECT)?;
                let prog: &mut BtfTracePoint = program(&mut ebpf, "kfree_skb_btf")?.try_into()?;
                prog.load("kfree_skb", &btf)?;
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

    /// Every counter summed over CPUs, and the map's fill (with the drops lost because it was
    /// full).
    pub fn read(&self) -> Result<(HashMap<DropKey, u64>, BpfMapFill)> {
        let map = self.ebpf.map("drops").context("map drops missing")?;
        let drops: PerCpuHashMap<_, DropKey, u64> = PerCpuHashMap::try_from(map)?;
        let mut out = HashMap::new();
        for entry in drops.iter() {
            // An entry deleted between listing and reading is skipped, not an error.
            let Ok((key, values)) = entry else { continue };
            out.insert(key, values.iter().sum());
        }
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

    /// Removes the entries of `keys` (namespaces that are gone).
    pub fn remove(&mut self, keys: &[DropKey]) {
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
    }

    #[test]
    fn reason_offset_from_format() {
        let f = "\tfield:void * rx_sk;\toffset:24;\tsize:8;\tsigned:0;\n\tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;\n";
        assert_eq!(parse_reason_offset(f).unwrap(), 36);
        assert!(parse_reason_offset("field:void * skbaddr; offset:8;").is_err());
    }
}
