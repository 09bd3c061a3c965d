//! Loading the DNS counter (`dns.bpf.c`), attaching it to a cgroup, reading its maps and
//! timing out the queries nobody answered.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHashMap, IterableMap, PerCpuArray, PerCpuHashMap};

use crate::sources::bpf_maps::{self, Values};
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType};
use aya::{Ebpf, EbpfLoader};

use crate::sources::bpf_programs::BpfMapFill;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dns.bpf.o"));

/// `DNS_TYPES`, `DNS_RCODES` and `DNS_BUCKETS` of `dns.h`.
pub const TYPES: usize = 5;
pub const RCODES: usize = 5;
pub const BUCKETS: usize = 21;

/// Mirrors `struct dns_key` of `dns.h` (a test checks both declare the same fields in the
/// same order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsKey {
    pub netns: u64,
    pub addr: [u8; 16],
    pub family: u8,
    pub proto: u8,
    pub pad: [u8; 6],
}

// SAFETY: repr(C), 32 bytes without implicit padding (8 + 16 + 1 + 1 + 6), any bit pattern
// valid.
unsafe impl aya::Pod for DnsKey {}

/// Mirrors `struct dns_counts` of `dns.h`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsCounts {
    pub queries: [u64; TYPES],
    pub answers: [u64; RCODES],
    pub empty: u64,
    pub late: u64,
    pub malformed: u64,
    pub latency: [u64; BUCKETS],
    pub latency_sum_us: u64,
    pub expansions: u64,
}

// SAFETY: repr(C), u64 fields and arrays only, no padding, any bit pattern valid.
unsafe impl aya::Pod for DnsCounts {}

impl DnsCounts {
    pub fn add(&mut self, o: &DnsCounts) {
        let sum = |a: &mut [u64], b: &[u64]| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        sum(&mut self.queries, &o.queries);
        sum(&mut self.answers, &o.answers);
        sum(&mut self.latency, &o.latency);
        self.empty += o.empty;
        self.late += o.late;
        self.malformed += o.malformed;
        self.latency_sum_us += o.latency_sum_us;
        self.expansions += o.expansions;
    }

    /// What was counted since `base` (an earlier read of the same key).
    pub fn since(&self, base: &DnsCounts) -> DnsCounts {
        let less = |a: &mut [u64], b: &[u64]| {
            a.iter_mut()
                .zip(b)
                .for_each(|(x, y)| *x = x.saturating_sub(*y))
        };
        let mut d = *self;
        less(&mut d.queries, &base.queries);
        less(&mut d.answers, &base.answers);
        less(&mut d.latency, &base.latency);
        d.empty = d.empty.saturating_sub(base.empty);
        d.late = d.late.saturating_sub(base.late);
        d.malformed = d.malformed.saturating_sub(base.malformed);
        d.latency_sum_us = d.latency_sum_us.saturating_sub(base.latency_sum_us);
        d.expansions = d.expansions.saturating_sub(base.expansions);
        d
    }

    /// Queries sent: what the busiest resolvers are ranked by.
    pub fn total_queries(&self) -> u64 {
        self.queries.iter().sum()
    }
}

/// Mirrors `struct dns_flight` of `dns.h`: a query waiting for its answer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DnsFlight {
    pub netns: u64,
    pub client_port: u16,
    pub id: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

// SAFETY: repr(C), 16 bytes without implicit padding (8 + 2 + 2 + 1 + 3), any bit pattern
// valid.
unsafe impl aya::Pod for DnsFlight {}

/// Mirrors `struct dns_sent` of `dns.h`: when a query in flight left, and the resolver it
/// was counted under.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsSent {
    pub at_ns: u64,
    pub first_label: u32,
    pub family: u8,
    pub pad: [u8; 3],
    pub resolver: [u8; 16],
}

// SAFETY: repr(C), 32 bytes without implicit padding (8 + 4 + 1 + 3 + 16), any bit pattern
// valid.
unsafe impl aya::Pod for DnsSent {}

impl DnsSent {
    /// The counters the query was counted under (`flight` is its key).
    pub fn key(&self, flight: &DnsFlight) -> DnsKey {
        DnsKey {
            netns: flight.netns,
            addr: self.resolver,
            family: self.family,
            proto: flight.proto,
            pad: [0; 6],
        }
    }
}

/// Slots of `dns_overflow` (`dns.h`).
const UNCOUNTED_COUNTS: u32 = 0;
const UNCOUNTED_FLIGHTS: u32 = 1;

/// The programs of `dns.bpf.c` and where they attach.
const PROGRAMS: [(&str, CgroupSkbAttachType); 2] = [
    ("dns_egress", CgroupSkbAttachType::Egress),
    ("dns_ingress", CgroupSkbAttachType::Ingress),
];

/// The loaded and attached programs. Dropping it detaches them.
pub struct DnsCounter {
    ebpf: Ebpf,
}

impl DnsCounter {
    /// Loads the programs with `timeout` (an answer later than it is a timeout) and attaches
    /// them to `cgroup` (a cgroup v2 directory: they see the sockets of every process in it
    /// and below), beside whatever else is attached there.
    pub fn load(cgroup: &Path, timeout: Duration) -> Result<Self> {
        let mut counter = Self::load_detached(timeout)?;
        let dir = std::fs::File::open(cgroup)
            .with_context(|| format!("open cgroup {}", cgroup.display()))?;
        for (name, attach) in PROGRAMS {
            let prog: &mut CgroupSkb = counter
                .ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            // A BPF link (Linux 5.7+, what aya makes here) always sits beside the cgroup's
            // other programs; its creation takes no flags (AllowMultiple would be EINVAL).
            prog.attach(dir.as_fd(), attach, CgroupAttachMode::Single)
                .with_context(|| format!("attach {name} to cgroup {}", cgroup.display()))?;
        }
        Ok(counter)
    }

    /// The programs loaded and verified, attached nowhere: they count only the packets given
    /// to [`DnsCounter::run_egress`] and [`DnsCounter::run_ingress`].
    pub fn load_detached(timeout: Duration) -> Result<Self> {
        let timeout_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        // No CO-RE relocation in this object: the kernel's BTF need not be parsed.
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .override_global("timeout_ns", &timeout_ns, true)
            .load(OBJECT)
            .context("load dns.bpf.o")?;
        for (name, _) in PROGRAMS {
            let prog: &mut CgroupSkb = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.load().map_err(|e| {
                // Verifier logs span many lines; one line keeps the log greppable.
                let text = format!("{:#}", anyhow::Error::from(e)).replace('\n', " | ");
                anyhow::anyhow!("cgroup_skb {name}: {text}")
            })?;
        }
        Ok(Self { ebpf })
    }

    /// Runs the egress program once on `frame` (an ethernet frame: the kernel's test run
    /// takes the IP packet after it), as if a local socket sent it; its return value.
    pub fn run_egress(&self, frame: &[u8]) -> Result<u32> {
        self.run(PROGRAMS[0].0, frame)
    }

    /// [`DnsCounter::run_egress`] for the ingress program: as if a local socket received it.
    pub fn run_ingress(&self, frame: &[u8]) -> Result<u32> {
        self.run(PROGRAMS[1].0, frame)
    }

    fn run(&self, name: &str, frame: &[u8]) -> Result<u32> {
        use aya::programs::{TestRun, TestRunOptions};
        let prog: &CgroupSkb = self
            .ebpf
            .program(name)
            .with_context(|| format!("program {name} missing from the object"))?
            .try_into()?;
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        };
        Ok(prog
            .test_run(opts)
            .with_context(|| format!("BPF_PROG_TEST_RUN {name}"))?
            .return_value)
    }

    /// Each program's run time and runs from the kernel's statistics (counted only while
    /// `kernel.bpf_stats_enabled` is 1).
    pub fn program_stats(&self) -> Vec<(String, Duration, u64)> {
        crate::sources::bpf_programs::program_stats(&self.ebpf)
    }

    /// Every key's counters, summed over CPUs, and the map's fill.
    pub fn read(&self) -> Result<(Vec<(DnsKey, DnsCounts)>, BpfMapFill)> {
        let map = self
            .ebpf
            .map("dns_counts")
            .context("map dns_counts missing")?;
        let counts: PerCpuHashMap<_, DnsKey, DnsCounts> = PerCpuHashMap::try_from(map)?;
        let mut out = Vec::new();
        bpf_maps::for_each(counts.map(), Values::PerCpu, |key, values| {
            let mut sum = DnsCounts::default();
            for v in values {
                sum.add(v);
            }
            out.push((key, sum));
        })
        .context("reading map dns_counts")?;
        let lost = self.uncounted(UNCOUNTED_COUNTS)?;
        let fill = BpfMapFill::of(counts.map(), "dns_counts", out.len(), lost);
        Ok((out, fill))
    }

    /// Takes the queries sent before `now - timeout` (monotonic clock, as
    /// `bpf_ktime_get_ns`) out of flight: each one taken here is a timeout (an answer that
    /// comes later finds nothing and is not counted). Returns them, and the flights' fill.
    pub fn expire(&mut self, timeout: Duration) -> Result<(Vec<DnsKey>, BpfMapFill)> {
        let now = monotonic_ns()?;
        let timeout = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        let lost = self.uncounted(UNCOUNTED_FLIGHTS)?;
        let map = self
            .ebpf
            .map_mut("dns_flights")
            .context("map dns_flights missing")?;
        let mut flights: BpfHashMap<_, DnsFlight, DnsSent> = BpfHashMap::try_from(map)?;
        let mut all: Vec<(DnsFlight, DnsSent)> = Vec::new();
        bpf_maps::for_each(flights.map(), Values::Shared, |flight, sent: &[DnsSent]| {
            all.extend(sent.first().map(|s| (flight, *s)));
        })
        .context("reading map dns_flights")?;
        let mut expired = Vec::new();
        for (flight, sent) in &all {
            // Only what this call deletes counts: the answer's program may take it first.
            if now.saturating_sub(sent.at_ns) > timeout && flights.remove(flight).is_ok() {
                expired.push(sent.key(flight));
            }
        }
        let fill = BpfMapFill::of(
            flights.map(),
            "dns_flights",
            all.len() - expired.len(),
            lost,
        );
        Ok((expired, fill))
    }

    /// Removes the entries of `keys` (namespaces that are gone) from the counters' map.
    pub fn remove(&mut self, keys: &[DnsKey]) {
        if let Some(map) = self.ebpf.map_mut("dns_counts")
            && let Ok(mut counts) = PerCpuHashMap::<_, DnsKey, DnsCounts>::try_from(map)
        {
            for k in keys {
                let _ = counts.remove(k);
            }
        }
    }

    /// Events lost because a map was full, summed over CPUs: `slot` says which map.
    fn uncounted(&self, slot: u32) -> Result<u64> {
        let map = self
            .ebpf
            .map("dns_overflow")
            .context("map dns_overflow missing")?;
        let lost: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        Ok(lost.get(&slot, 0)?.iter().sum())
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> Result<u64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .context("clock_gettime(CLOCK_MONOTONIC)")?;
    Ok(u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
        + u64::try_from(t.tv_nsec()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of a C struct of `dns.h`, in order.
    fn c_fields(name: &str) -> Vec<String> {
        let header = include_str!("dns.h");
        let start = header
            .find(&format!("struct {name} {{"))
            .unwrap_or_else(|| panic!("struct {name} in dns.h"));
        let body = &header[start..];
        let body = &body[body.find('{').unwrap_or(0) + 1..body.find("};").unwrap_or(0)];
        body.lines()
            .filter_map(|l| {
                let l = l.split("/*").next()?.trim();
                let decl = l.strip_suffix(';')?;
                let field = decl.split_whitespace().last()?;
                Some(field.split('[').next()?.to_string())
            })
            .collect()
    }

    #[test]
    fn structs_match_the_header() {
        assert_eq!(
            c_fields("dns_key"),
            ["netns", "addr", "family", "proto", "pad"]
        );
        assert_eq!(std::mem::size_of::<DnsKey>(), 32);
        assert_eq!(
            c_fields("dns_counts"),
            [
                "queries",
                "answers",
                "empty",
                "late",
                "malformed",
                "latency",
                "latency_sum_us",
                "expansions"
            ]
        );
        assert_eq!(
            std::mem::size_of::<DnsCounts>(),
            (TYPES + RCODES + 3 + BUCKETS + 2) * 8
        );
        assert_eq!(
            c_fields("dns_sent"),
            ["at_ns", "first_label", "family", "pad", "resolver"]
        );
        assert_eq!(std::mem::size_of::<DnsSent>(), 32);
        assert_eq!(
            c_fields("dns_flight"),
            ["netns", "client_port", "id", "proto", "pad"]
        );
        assert_eq!(std::mem::size_of::<DnsFlight>(), 16);
        let header = include_str!("dns.h");
        for (name, value) in [
            ("DNS_TYPES", TYPES),
            ("DNS_RCODES", RCODES),
            ("DNS_BUCKETS", BUCKETS),
        ] {
            assert!(
                header.contains(&format!("#define {name} {value}")),
                "{name} {value}"
            );
        }
    }
}
