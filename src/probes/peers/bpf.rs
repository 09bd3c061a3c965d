//! Loading the peer counter (`peers.bpf.c`) and reading and pruning its map.

use anyhow::{Context, Result};
use aya::Ebpf;
use aya::maps::{HashMap as BpfHashMap, IterableMap, PerCpuArray, PerCpuHashMap};

use crate::sources::bpf_maps::{self, Values};
use aya::programs::{BtfTracePoint, Iter};

use crate::sources::bpf_programs::BpfMapFill;
use crate::sources::kernel_btf::{AttachPoints, KernelBtf};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/peers.bpf.o"));

/// Mirrors `struct peer_key` of `peers.h` (a test checks both declare the same fields in the
/// same order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey {
    pub netns: u32,
    pub port: u16,
    pub role: u8,
    pub family: u8,
    pub addr: [u8; 16],
}

// SAFETY: repr(C), 24 bytes without padding (4 + 2 + 1 + 1 + 16), any bit pattern valid.
unsafe impl aya::Pod for PeerKey {}

/// Mirrors `struct peer_counts` of `peers.h`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerCounts {
    pub opened: u64,
    pub refused: u64,
    pub timeout: u64,
    pub reset: u64,
    pub other: u64,
    pub retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Opened connections that closed: `opened - closed` are open now.
    pub closed: u64,
}

// SAFETY: repr(C), eleven u64 fields, no padding, any bit pattern valid.
unsafe impl aya::Pod for PeerCounts {}

impl PeerCounts {
    pub fn add(&mut self, o: &PeerCounts) {
        self.opened += o.opened;
        self.refused += o.refused;
        self.timeout += o.timeout;
        self.reset += o.reset;
        self.other += o.other;
        self.retransmits += o.retransmits;
        self.resets_sent += o.resets_sent;
        self.resets_received += o.resets_received;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.closed += o.closed;
    }

    /// Connections opened or failed: what the busiest peers are ranked by.
    pub fn events(&self) -> u64 {
        self.opened + self.refused + self.timeout + self.reset + self.other
    }

    /// What was counted since `base` (an earlier read of the same key).
    pub fn since(&self, base: &PeerCounts) -> PeerCounts {
        PeerCounts {
            opened: self.opened.saturating_sub(base.opened),
            refused: self.refused.saturating_sub(base.refused),
            timeout: self.timeout.saturating_sub(base.timeout),
            reset: self.reset.saturating_sub(base.reset),
            other: self.other.saturating_sub(base.other),
            retransmits: self.retransmits.saturating_sub(base.retransmits),
            resets_sent: self.resets_sent.saturating_sub(base.resets_sent),
            resets_received: self.resets_received.saturating_sub(base.resets_received),
            bytes_sent: self.bytes_sent.saturating_sub(base.bytes_sent),
            bytes_received: self.bytes_received.saturating_sub(base.bytes_received),
            closed: self.closed.saturating_sub(base.closed),
        }
    }
}

/// Mirrors `struct peer_backend_key` of `peers.h`: a client's connections to a translated
/// address (`peer`), by the backend conntrack sent them to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub peer: PeerKey,
    pub backend: [u8; 16],
    pub backend_port: u16,
    pub pad: [u8; 6],
}

// SAFETY: repr(C), 48 bytes without implicit padding (24 + 16 + 2 + 6), any bit pattern valid.
unsafe impl aya::Pod for BackendKey {}

/// Mirrors `struct peer_backend_counts` of `peers.h`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendCounts {
    pub opened: u64,
    pub refused: u64,
    pub timeout: u64,
    pub other: u64,
}

// SAFETY: repr(C), four u64 fields, no padding, any bit pattern valid.
unsafe impl aya::Pod for BackendCounts {}

impl BackendCounts {
    pub fn add(&mut self, o: &BackendCounts) {
        self.opened += o.opened;
        self.refused += o.refused;
        self.timeout += o.timeout;
        self.other += o.other;
    }

    /// What was counted since `base` (an earlier read of the same key).
    pub fn since(&self, base: &BackendCounts) -> BackendCounts {
        BackendCounts {
            opened: self.opened.saturating_sub(base.opened),
            refused: self.refused.saturating_sub(base.refused),
            timeout: self.timeout.saturating_sub(base.timeout),
            other: self.other.saturating_sub(base.other),
        }
    }
}

/// `PEER_BUCKETS` of `peers.h`: histogram buckets, the last one unbounded.
pub const BUCKETS: usize = 21;

/// Mirrors `struct peer_timing` of `peers.h`: bucket i counts values up to 2^(i+4) µs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerTiming {
    pub connect: [u64; BUCKETS],
    pub connect_sum_us: u64,
    pub rtt: [u64; BUCKETS],
    pub rtt_sum_us: u64,
}

// SAFETY: repr(C), u64 fields and arrays only, no padding, any bit pattern valid.
unsafe impl aya::Pod for PeerTiming {}

impl PeerTiming {
    pub fn add(&mut self, o: &PeerTiming) {
        for i in 0..BUCKETS {
            self.connect[i] += o.connect[i];
            self.rtt[i] += o.rtt[i];
        }
        self.connect_sum_us += o.connect_sum_us;
        self.rtt_sum_us += o.rtt_sum_us;
    }

    /// What was counted since `base` (an earlier read of the same key).
    pub fn since(&self, base: &PeerTiming) -> PeerTiming {
        let mut out = *self;
        for i in 0..BUCKETS {
            out.connect[i] = self.connect[i].saturating_sub(base.connect[i]);
            out.rtt[i] = self.rtt[i].saturating_sub(base.rtt[i]);
        }
        out.connect_sum_us = self.connect_sum_us.saturating_sub(base.connect_sum_us);
        out.rtt_sum_us = self.rtt_sum_us.saturating_sub(base.rtt_sum_us);
        out
    }
}

/// `PEER_CLIENT` and `PEER_SERVER` of `peers.h`.
pub const CLIENT: u8 = 1;
pub const SERVER: u8 = 2;

/// The programs of `peers.bpf.c` and the tracepoints they attach to.
const PROGRAMS: [(&str, &str); 4] = [
    ("peer_state", "inet_sock_set_state"),
    ("peer_retransmit", "tcp_retransmit_skb"),
    ("peer_send_reset", "tcp_send_reset"),
    ("peer_recv_reset", "tcp_receive_reset"),
];

/// The program that remembers where conntrack translated a connection's destination (a
/// ClusterIP to a backend), and the tracepoint it attaches to. Optional: without it (a kernel
/// without connection tracking) connections are counted by the address they were made to only.
const TRANSLATIONS: (&str, &str) = ("peer_translated", "net_dev_queue");

/// The iterator that samples open connections (`iter/tcp`), run by user space.
const SAMPLER: &str = "peer_sample";

/// Slots of `peers_overflow` (`peers.h`): events lost to a full `peers`, and samples lost to a
/// full `peer_timings`.
const UNCOUNTED_PEERS: u32 = 0;
const UNCOUNTED_TIMINGS: u32 = 1;
const UNCOUNTED_BACKENDS: u32 = 2;

/// The loaded and attached programs. Dropping it detaches them.
pub struct PeerCounter {
    ebpf: Ebpf,
    /// Why connections are not followed to their backends, if they are not.
    translations_error: Option<String>,
}

impl PeerCounter {
    /// Loads and attaches the programs; with `follow_translations`, also the one that follows
    /// connections to a translated address to their backend (one run per packet queued).
    pub fn load(kernel_btf: &KernelBtf, follow_translations: bool) -> Result<Self> {
        let (mut ebpf, attach) = kernel_btf.load(OBJECT)?;
        for (program, tracepoint) in PROGRAMS {
            attach_tracepoint(&mut ebpf, &attach, program, tracepoint)?;
        }
        let sampler: &mut Iter = ebpf
            .program_mut(SAMPLER)
            .with_context(|| format!("program {SAMPLER} missing from the object"))?
            .try_into()?;
        attach.iter(sampler, "tcp").map_err(|e| {
            let text = format!("{:#}", anyhow::Error::from(e)).replace('\n', " | ");
            anyhow::anyhow!("iter/tcp: {text}")
        })?;
        let translations_error = if follow_translations {
            Self::follow_translations(&mut ebpf, &attach)
                .err()
                .map(|e| format!("{e:#}").replace('\n', " | "))
        } else {
            Some("off (probes.peers.follow_translations)".to_string())
        };
        Ok(Self {
            ebpf,
            translations_error,
        })
    }

    /// The benchmark's floor: programs that do nothing (`floor_state`, `floor_queue`),
    /// attached where `peer_state` and `peer_translated` attach: what the hooks cost a
    /// connection before any counting.
    pub fn load_floor(kernel_btf: &KernelBtf) -> Result<Self> {
        let (mut ebpf, attach) = kernel_btf.load(OBJECT)?;
        for (program, tracepoint) in [
            ("floor_state", "inet_sock_set_state"),
            ("floor_queue", "net_dev_queue"),
        ] {
            attach_tracepoint(&mut ebpf, &attach, program, tracepoint)?;
        }
        Ok(Self {
            ebpf,
            translations_error: None,
        })
    }

    fn follow_translations(ebpf: &mut Ebpf, attach: &AttachPoints) -> Result<()> {
        let (program, tracepoint) = TRANSLATIONS;
        attach_tracepoint(ebpf, attach, program, tracepoint)
    }

    /// Why connections to a translated address are not followed to their backend (`None`:
    /// they are).
    pub fn translations_error(&self) -> Option<&str> {
        self.translations_error.as_deref()
    }

    /// Every client's connections to a translated address by backend, summed over CPUs, and
    /// the map's fill.
    pub fn backends(&self) -> Result<(Vec<(BackendKey, BackendCounts)>, BpfMapFill)> {
        let map = self
            .ebpf
            .map("peer_backends")
            .context("map peer_backends missing")?;
        let backends: PerCpuHashMap<_, BackendKey, BackendCounts> = PerCpuHashMap::try_from(map)?;
        let mut out = Vec::new();
        bpf_maps::for_each(backends.map(), Values::PerCpu, |key, values| {
            let mut sum = BackendCounts::default();
            for v in values {
                sum.add(v);
            }
            out.push((key, sum));
        })
        .context("reading map peer_backends")?;
        let lost = self.uncounted(UNCOUNTED_BACKENDS)?;
        let fill = BpfMapFill::of(backends.map(), "peer_backends", out.len(), lost);
        Ok((out, fill))
    }

    /// Removes the entries of `keys` (namespaces that are gone) from the backends' map.
    pub fn remove_backends(&mut self, keys: &[BackendKey]) {
        if let Some(map) = self.ebpf.map_mut("peer_backends")
            && let Ok(mut backends) = PerCpuHashMap::<_, BackendKey, BackendCounts>::try_from(map)
        {
            for k in keys {
                let _ = backends.remove(k);
            }
        }
    }

    /// Runs the sampling iterator in the namespace of `ns` (`None`: the agent's own): an RTT
    /// sample of each open connection with a role, and the bytes and retransmits it has
    /// counted so far, added in the kernel. Returns how many connections it sampled.
    pub fn sample(&mut self, ns: Option<&std::fs::File>) -> Result<usize> {
        let prog: &mut Iter = self
            .ebpf
            .program_mut(SAMPLER)
            .with_context(|| format!("program {SAMPLER} missing from the object"))?
            .try_into()?;
        let id = prog.attach().context("attach iter/tcp")?;
        let link = prog.take_link(id)?;
        let out = crate::sources::netns::run_in(ns, move || {
            use std::io::Read;
            let mut f = link.into_file().context("bpf_iter_create")?;
            let mut out = Vec::new();
            f.read_to_end(&mut out).context("read iter/tcp")?;
            Ok(out)
        })?;
        Ok(out.len())
    }

    /// Every key's latency histograms, and the map's fill (with the samples lost because it
    /// was full).
    pub fn timings(&self) -> Result<(Vec<(PeerKey, PeerTiming)>, BpfMapFill)> {
        let map = self
            .ebpf
            .map("peer_timings")
            .context("map peer_timings missing")?;
        let timings: BpfHashMap<_, PeerKey, PeerTiming> = BpfHashMap::try_from(map)?;
        let mut out = Vec::new();
        bpf_maps::for_each(
            timings.map(),
            Values::Shared,
            |key, value: &[PeerTiming]| {
                out.extend(value.first().map(|v| (key, *v)));
            },
        )
        .context("reading map peer_timings")?;
        let fill = BpfMapFill::of(
            timings.map(),
            "peer_timings",
            out.len(),
            self.uncounted(UNCOUNTED_TIMINGS)?,
        );
        Ok((out, fill))
    }

    /// Events lost because a map was full, summed over CPUs: `slot` says which map.
    fn uncounted(&self, slot: u32) -> Result<u64> {
        let map = self
            .ebpf
            .map("peers_overflow")
            .context("map peers_overflow missing")?;
        let overflow: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        Ok(overflow.get(&slot, 0).map(|v| v.iter().sum()).unwrap_or(0))
    }

    /// Every key's counters summed over CPUs, and the map's fill (with the events lost because
    /// it was full).
    pub fn read(&self) -> Result<(Vec<(PeerKey, PeerCounts)>, BpfMapFill)> {
        let map = self.ebpf.map("peers").context("map peers missing")?;
        let peers: PerCpuHashMap<_, PeerKey, PeerCounts> = PerCpuHashMap::try_from(map)?;
        let mut out = Vec::new();
        bpf_maps::for_each(peers.map(), Values::PerCpu, |key, values| {
            let mut sum = PeerCounts::default();
            for v in values {
                sum.add(v);
            }
            out.push((key, sum));
        })
        .context("reading map peers")?;
        let lost = self.uncounted(UNCOUNTED_PEERS)?;
        let fill = BpfMapFill::of(peers.map(), "peers", out.len(), lost);
        Ok((out, fill))
    }

    /// The kernel's statistics of each program, by name: run time and runs (counted only
    /// while `kernel.bpf_stats_enabled` is 1).
    pub fn program_stats(&self) -> Vec<(String, std::time::Duration, u64)> {
        crate::sources::bpf_programs::program_stats(&self.ebpf)
    }

    /// The kernel's statistics of all four programs, summed: run time and runs (counted only
    /// while `kernel.bpf_stats_enabled` is 1).
    pub fn run_stats(&self) -> (std::time::Duration, u64) {
        self.program_stats()
            .into_iter()
            .fold((std::time::Duration::ZERO, 0), |(t, n), (_, pt, pn)| {
                (t + pt, n + pn)
            })
    }

    /// Removes the entries of `keys` (namespaces that are gone) from both maps.
    pub fn remove(&mut self, keys: &[PeerKey]) {
        if let Some(map) = self.ebpf.map_mut("peers")
            && let Ok(mut peers) = PerCpuHashMap::<_, PeerKey, PeerCounts>::try_from(map)
        {
            for k in keys {
                let _ = peers.remove(k);
            }
        }
        if let Some(map) = self.ebpf.map_mut("peer_timings")
            && let Ok(mut timings) = BpfHashMap::<_, PeerKey, PeerTiming>::try_from(map)
        {
            for k in keys {
                let _ = timings.remove(k);
            }
        }
    }
}

/// Loads `program` for the BTF tracepoint `tracepoint` and attaches it.
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    attach: &AttachPoints,
    program: &str,
    tracepoint: &str,
) -> Result<()> {
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing from the object"))?
        .try_into()?;
    attach.tracepoint(prog, tracepoint).map_err(|e| {
        // Verifier logs span many lines; one line keeps the log greppable.
        let text = format!("{:#}", anyhow::Error::from(e)).replace('\n', " | ");
        anyhow::anyhow!("load tp_btf/{tracepoint}: {text}")
    })?;
    prog.attach()
        .with_context(|| format!("attach tp_btf/{tracepoint}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(header: &str, name: &str) -> Vec<String> {
        let body = header
            .split(&format!("struct {name} {{"))
            .nth(1)
            .and_then(|b| b.split("};").next())
            .unwrap_or_else(|| panic!("struct {name} in peers.h"));
        body.lines()
            .filter_map(|l| l.split(';').next())
            .filter_map(|d| d.trim().rsplit(' ').next())
            .filter(|f| !f.is_empty() && !f.starts_with("/*") && !f.starts_with('*'))
            .map(|f| f.split('[').next().unwrap_or(f).to_string())
            .collect()
    }

    #[test]
    fn layouts_match_the_c_header() {
        let header = include_str!("peers.h");
        assert_eq!(
            fields(header, "peer_key"),
            ["netns", "port", "role", "family", "addr"]
        );
        assert_eq!(std::mem::size_of::<PeerKey>(), 24);
        assert_eq!(
            fields(header, "peer_counts"),
            [
                "opened",
                "refused",
                "timeout",
                "reset",
                "other",
                "retransmits",
                "resets_sent",
                "resets_received",
                "bytes_sent",
                "bytes_received",
                "closed"
            ]
        );
        assert_eq!(std::mem::size_of::<PeerCounts>(), 88);
        assert_eq!(
            fields(header, "peer_timing"),
            ["connect", "connect_sum_us", "rtt", "rtt_sum_us"]
        );
        assert_eq!(std::mem::size_of::<PeerTiming>(), (2 * BUCKETS + 2) * 8);
        assert!(header.contains(&format!("#define PEER_BUCKETS {BUCKETS}")));
        assert!(header.contains(&format!("#define UNCOUNTED_PEERS {UNCOUNTED_PEERS}")));
        assert!(header.contains(&format!("#define UNCOUNTED_TIMINGS {UNCOUNTED_TIMINGS}")));
        assert!(header.contains(&format!("#define UNCOUNTED_BACKENDS {UNCOUNTED_BACKENDS}")));
        assert_eq!(
            fields(header, "peer_backend_key"),
            ["peer", "backend", "backend_port", "pad"]
        );
        assert_eq!(std::mem::size_of::<BackendKey>(), 48);
        assert_eq!(
            fields(header, "peer_backend_counts"),
            ["opened", "refused", "timeout", "other"]
        );
        assert_eq!(std::mem::size_of::<BackendCounts>(), 32);
        assert!(
            header.contains("#define PEER_CLIENT 1") && header.contains("#define PEER_SERVER 2")
        );
        assert_eq!((CLIENT, SERVER), (1, 2));
    }
}
