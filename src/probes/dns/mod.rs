//! `dns`: DNS as each network namespace's sockets see it — queries by type, answers by rcode,
//! answers without records, timeouts, malformed packets and latency — per resolver, counted
//! in the kernel by two `cgroup_skb` programs on the root of the cgroup v2 hierarchy
//! (`dns.bpf.c`, beside this file, says why that hook). User space reads the aggregates once
//! per collection and times out the queries that got no answer; nothing per packet leaves
//! the kernel. Query names never become labels.
//!
//! A resolver is named like a peer (`probes::peers`): `loopback`, a Pod or Service in
//! Kubernetes mode (the cluster DNS Service's ClusterIP is `kube-system/Service/kube-dns`), a
//! configured network, or the address; the resolvers of a namespace past
//! `resolvers_per_namespace` are `other`. `docs/dns.md` has the design and its costs.

pub mod bpf;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::peers::{Directory, NamingVersion, PeersOptions, SYNC_WAIT, ip_of, renamed, resolve};
use super::{Build, Histogram, LabelValue, MetricDef, Probe, Scope, Series};
use crate::inventory::ClusterView;
use crate::inventory::objects::ClusterObjects;
use crate::metrics;
use crate::sources::bpf_programs::BpfMapFill;
use crate::sources::{Collection, Node, TargetSources};
use bpf::{BUCKETS, DnsCounter, DnsCounts, DnsKey};

/// `probes.dns`.
#[derive(Deserialize, Serialize, JsonSchema, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DnsOptions {
    /// A query without an answer this long after it was sent is a timeout (an answer that
    /// comes later is not counted as one). glibc's resolver waits 5 s before it retries.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::component::DurationText")]
    pub timeout: Duration,
    /// Resolvers of one namespace that get series of their own (the first seen, busiest
    /// first); queries to any other are counted under `resolver="other"`.
    pub resolvers_per_namespace: usize,
    /// Named networks: a resolver inside one of a network's CIDRs is counted under the
    /// network's name (`resolver_kind="network"`), e.g. `{upstream: [8.8.8.8/32]}`.
    pub networks: BTreeMap<String, Vec<IpNet>>,
    /// The cgroup v2 directory the programs attach to: they see the sockets of every process
    /// in it and below. Empty: the cgroup v2 root under the node's sysfs (`fs/cgroup`, or
    /// `fs/cgroup/unified` on a hybrid layout), else the first cgroup2 mount in
    /// /proc/self/mountinfo.
    pub cgroup: Option<PathBuf>,
}

impl Default for DnsOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            resolvers_per_namespace: 4,
            networks: BTreeMap::new(),
            cgroup: None,
        }
    }
}

const QUERIES: usize = 0;
const ANSWERS: usize = 1;
const EMPTY: usize = 2;
const TIMEOUTS: usize = 3;
const MALFORMED: usize = 4;
const LATENCY: usize = 5;
const EXPANSIONS: usize = 6;
const UNCOUNTED: usize = 7;
const INFO: usize = 8;

/// The exported buckets, in seconds: twofold from 256 µs to 4.2 s (past the default timeout
/// nothing is an answer), and `+Inf`. The kernel's bucket i holds values up to 2^(i+4) µs:
/// each of these is one of them.
const LATENCY_BOUNDS: [f64; 15] = [
    0.000256, 0.000512, 0.001024, 0.002048, 0.004096, 0.008192, 0.016384, 0.032768, 0.065536,
    0.131072, 0.262144, 0.524288, 1.048576, 2.097152, 4.194304,
];

/// The kernel's buckets as the exported ones: kernel bucket i (up to 2^(i+4) µs) is in the
/// first exported bucket whose bound is at least its own.
fn exported(kernel: &[u64; BUCKETS]) -> Vec<u64> {
    let mut out = vec![0; LATENCY_BOUNDS.len() + 1];
    for (i, n) in kernel.iter().enumerate() {
        out[i.saturating_sub(4).min(LATENCY_BOUNDS.len())] += n;
    }
    out
}

/// Names of the kernel's slots (`dns.h`).
const TYPES: [&str; bpf::TYPES] = ["A", "AAAA", "SRV", "PTR", "other"];
const RCODES: [&str; bpf::RCODES] = ["NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "other"];

const METRICS: &[MetricDef] = metrics![
    counter "netexporter_dns_queries_total" "DNS queries this namespace's sockets sent (UDP or TCP to port 53), by question type (A, AAAA, SRV, PTR, other). Labels: resolver (the server queried, named like a peer: loopback; a Pod, workload or Service in Kubernetes mode; a configured network; the address; other: past probes.dns.resolvers_per_namespace), resolver_kind, protocol (udp, tcp), type. A type's series appears at its first query.",
    counter "netexporter_dns_answers_total" "Answers received within probes.dns.timeout to this namespace's queries, by rcode (NOERROR, NXDOMAIN, SERVFAIL, REFUSED, other). Labels: resolver, resolver_kind, protocol, rcode. An rcode's series appears at its first answer.",
    counter "netexporter_dns_empty_answers_total" "NOERROR answers without a record in their answer section (the name exists, not with that type: an AAAA query for an IPv4-only name). Labels: resolver, resolver_kind, protocol.",
    counter "netexporter_dns_timeouts_total" "Queries without an answer within probes.dns.timeout (never answered, or answered later: not counted as answers). Counted when the timeout has passed, at the first collection after it. Labels: resolver, resolver_kind, protocol.",
    counter "netexporter_dns_malformed_total" "Packets to or from port 53 of this namespace's sockets that are not a well-formed query or answer (shorter than a DNS header, a query whose question does not parse); they change no other series. Labels: resolver, resolver_kind, protocol.",
    histogram(&LATENCY_BOUNDS) "netexporter_dns_latency_seconds" "Time from a query leaving the socket to its answer arriving, of the answers within probes.dns.timeout. Buckets double from 256 us to 4.2 s. Labels: resolver, resolver_kind, protocol.",
    counter "netexporter_dns_search_expansions_total" "NXDOMAIN answers to this namespace for a name whose first label it then resolved (a NOERROR answer) within probes.dns.timeout: the failed tries of search-path expansion (resolv.conf's ndots and search list: api tried as api.NAMESPACE.svc.cluster.local first). An approximation: two different names with the same first label (www.a.example NXDOMAIN, then www.b.example) count too; they are counted under the resolver of the NOERROR. Labels: resolver, resolver_kind, protocol.",
    counter "netexporter_dns_uncounted_total" "Queries and answers not counted because an in-kernel DNS map was full (node only).",
    gauge "netexporter_dns_info" "Always 1 (node only); the label cgroup is the cgroup v2 directory the DNS programs attach to.",
];

pub struct Dns {
    options: DnsOptions,
    /// What resolvers are named by: the peers' rules with this probe's networks.
    naming: PeersOptions,
    loaded: Option<Loaded>,
}

struct Loaded {
    counter: Mutex<DnsCounter>,
    read: Mutex<Read>,
    /// Per namespace inode: what each key is counted under.
    budgets: Mutex<HashMap<u64, Budget>>,
    /// Namespaces as the kernel names them (cookie) and as the agent does (inode), learnt as
    /// they are collected: what lets the keys of a namespace that is gone leave the map.
    cookies: Mutex<HashMap<u64, Seen>>,
    cgroup: PathBuf,
    attached: Instant,
    objects: Option<Arc<ClusterObjects>>,
    /// This node's name: what its own addresses are named.
    node_name: String,
    /// What the names of this collection depend on.
    naming: NamingVersion,
}

/// When a namespace cookie was last collected (or first found in the map), by collection id.
#[derive(Clone, Copy)]
struct Seen {
    inode: Option<u64>,
    collection: u64,
}

/// The maps as of the last collection.
#[derive(Default)]
struct Read {
    error: Option<String>,
    entries: Vec<(DnsKey, DnsCounts)>,
    /// Queries user space timed out, since the start, by key.
    expired: HashMap<DnsKey, u64>,
    fills: Vec<BpfMapFill>,
    directory: Option<Directory>,
    directory_version: Option<u64>,
}

/// What one namespace's keys are counted under, kept while it lives (counters never go
/// back).
#[derive(Default)]
struct Budget {
    /// What each key is counted under: its resolver's name, or `other`.
    buckets: HashMap<DnsKey, (String, &'static str)>,
    named: HashSet<(String, &'static str)>,
    /// The name each key was decided under (also for keys folded into `other`).
    names: HashMap<DnsKey, (String, &'static str)>,
    /// A key whose address came to name another resolver (a Pod IP reused) counts from its
    /// read at the move on: that read, and its timeouts then.
    offsets: HashMap<DnsKey, (DnsCounts, u64)>,
    /// What keys that moved away had counted under a series (name, kind, protocol): kept
    /// while the series has keys, so that it never goes back.
    retired: HashMap<(String, &'static str, &'static str), (DnsCounts, u64)>,
    /// The naming generation the names were last checked against.
    generation: Option<u64>,
}

fn protocol(key: &DnsKey) -> &'static str {
    if key.proto == 6 { "tcp" } else { "udp" }
}

/// Moves the keys whose address names another resolver now than when they were decided,
/// as the peers probe does (`peers::rename_moved`): what a key counted until now stays in
/// its old series, what it counts from now on goes to the new name. An address that names
/// nothing any more keeps its name.
fn rename_moved(
    mine: &[&(DnsKey, DnsCounts)],
    expired: &HashMap<DnsKey, u64>,
    budget: &mut Budget,
    naming: &PeersOptions,
    cluster: Option<&ClusterView>,
    directory: Option<&Directory>,
) {
    for (key, counts) in mine {
        let Some(was) = budget.names.get(key) else {
            continue;
        };
        if !renamed(address(key), was, (naming, cluster, directory)) {
            continue;
        }
        let timeouts = expired.get(key).copied().unwrap_or(0);
        let (base, base_timeouts) = budget.offsets.get(key).copied().unwrap_or_default();
        if let Some((name, kind)) = budget.buckets.remove(key) {
            let retired = budget
                .retired
                .entry((name, kind, protocol(key)))
                .or_default();
            retired.0.add(&counts.since(&base));
            retired.1 += timeouts.saturating_sub(base_timeouts);
        }
        budget.offsets.insert(*key, (*counts, timeouts));
        budget.names.remove(key);
    }
}

/// Collections a namespace's keys stay in the map after it was last collected: a namespace
/// that came and went between two collections leaves nothing behind for good.
const FORGET_AFTER: u64 = 3;

/// The root of the first cgroup2 mount in `mountinfo` (the fifth field of its line).
fn cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (fields, rest) = l.split_once(" - ")?;
        (rest.split_whitespace().next()? == "cgroup2")
            .then(|| fields.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

impl Dns {
    /// Where the programs attach: the configured directory; else the cgroup v2 root under
    /// the node's sysfs (`fs/cgroup` on a unified layout, `fs/cgroup/unified` on a hybrid
    /// one: the directory with `cgroup.controllers`), which works with `--path.sysfs` in a
    /// container; else the first cgroup2 mount of this process.
    fn cgroup(&self, sysfs: &Path) -> Result<PathBuf, String> {
        if let Some(c) = &self.options.cgroup {
            return Ok(c.clone());
        }
        let under_sysfs = ["fs/cgroup", "fs/cgroup/unified"]
            .map(|d| sysfs.join(d))
            .into_iter()
            .find(|d| d.join("cgroup.controllers").exists());
        if let Some(d) = under_sysfs {
            return Ok(d);
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("read /proc/self/mountinfo: {e}"))?;
        cgroup2_root(&mountinfo).ok_or_else(|| {
            format!(
                "no cgroup v2 hierarchy: none under {} and none mounted (/proc/self/mountinfo); \
                 the DNS programs attach to one",
                sysfs.display()
            )
        })
    }
}

fn address(key: &DnsKey) -> IpAddr {
    ip_of(key.family, key.addr)
}

/// One namespace's series from its keys (`mine`), deciding the resolver of each key not seen
/// before (`budget` keeps the decisions); `expired`: the queries user space timed out.
fn series_for(
    mine: &[&(DnsKey, DnsCounts)],
    expired: &HashMap<DnsKey, u64>,
    budget: &mut Budget,
    options: &DnsOptions,
    naming: &PeersOptions,
    view: (Option<&ClusterView>, Option<&Directory>, bool),
    generation: u64,
) -> Vec<Series> {
    let (cluster, directory, wait) = view;
    if budget.generation != Some(generation) {
        budget.generation = Some(generation);
        rename_moved(mine, expired, budget, naming, cluster, directory);
    }
    let mut new: Vec<&&(DnsKey, DnsCounts)> = mine
        .iter()
        .filter(|(k, _)| !budget.buckets.contains_key(k))
        .collect();
    // The busiest first, then by key: the same map gives the same decisions.
    new.sort_by(|(ka, va), (kb, vb)| vb.total_queries().cmp(&va.total_queries()).then(ka.cmp(kb)));
    for (key, _) in new {
        // Undecided keys wait, counting in the kernel, for a later collection.
        let Some(named) = resolve(address(key), naming, cluster, directory, wait) else {
            continue;
        };
        let bucket = if budget.named.contains(&named)
            || budget.named.len() < options.resolvers_per_namespace
        {
            budget.named.insert(named.clone());
            named.clone()
        } else {
            ("other".to_string(), "other")
        };
        budget.buckets.insert(*key, bucket);
        budget.names.insert(*key, named);
    }
    let mut sums: BTreeMap<(&str, &str, &str), (DnsCounts, u64)> = BTreeMap::new();
    for (key, counts) in mine {
        if let Some((name, kind)) = budget.buckets.get(key) {
            let sum = sums.entry((name, kind, protocol(key))).or_default();
            let timeouts = expired.get(key).copied().unwrap_or(0);
            match budget.offsets.get(key) {
                Some((base, base_timeouts)) => {
                    sum.0.add(&counts.since(base));
                    sum.1 += timeouts.saturating_sub(*base_timeouts);
                }
                None => {
                    sum.0.add(counts);
                    sum.1 += timeouts;
                }
            }
        }
    }
    // Few: a linear search (the map's keys borrow from the budget).
    budget
        .retired
        .retain(|(name, kind, proto), (counts, timeouts)| {
            let series = sums
                .iter_mut()
                .find(|((n, k, p), _)| *n == name.as_str() && k == kind && p == proto);
            match series {
                Some((_, sum)) => {
                    sum.0.add(counts);
                    sum.1 += *timeouts;
                    true
                }
                None => false,
            }
        });
    let n = METRICS.len();
    let mut out = Vec::new();
    for ((name, kind, proto), (c, expired)) in sums {
        let labels: Vec<(&'static str, LabelValue)> = vec![
            ("resolver", Arc::<str>::from(name).into()),
            ("resolver_kind", Arc::<str>::from(kind).into()),
            ("network.transport", Arc::<str>::from(proto).into()),
        ];
        let with = |label: &'static str, value: &'static str| {
            let mut l = labels.clone();
            l.push((label, value.into()));
            l
        };
        for (t, v) in TYPES.iter().zip(c.queries) {
            if v > 0 {
                out.push(Series::only(n, QUERIES, v, with("type", t)));
            }
        }
        for (r, v) in RCODES.iter().zip(c.answers) {
            if v > 0 {
                out.push(Series::only(n, ANSWERS, v, with("rcode", r)));
            }
        }
        out.push(Series::only(n, EMPTY, c.empty, labels.clone()));
        out.push(Series::only(n, TIMEOUTS, c.late + expired, labels.clone()));
        out.push(Series::only(n, MALFORMED, c.malformed, labels.clone()));
        out.push(Series::only(n, EXPANSIONS, c.expansions, labels.clone()));
        if c.latency.iter().any(|v| *v > 0) {
            let h = Histogram {
                bounds: &LATENCY_BOUNDS,
                counts: exported(&c.latency),
                sum: c.latency_sum_us as f64 / 1e6,
            };
            out.push(Series::histogram(n, LATENCY, h, labels));
        }
    }
    out
}

impl Build for Dns {
    const NAME: &'static str = "dns";
    const SCOPE: Scope = Scope::Pod;
    const METRICS: &'static [MetricDef] = METRICS;
    type Options = DnsOptions;

    fn new(options: DnsOptions) -> Result<Self> {
        if options.timeout.is_zero() {
            return Err(anyhow!("timeout must be more than 0"));
        }
        let naming = PeersOptions {
            networks: options.networks.clone(),
            ..PeersOptions::default()
        };
        Ok(Self {
            options,
            naming,
            loaded: None,
        })
    }
}

impl Probe for Dns {
    fn prerequisites(&self, node: &Node) -> Result<(), String> {
        let cgroup = self.cgroup(&node.sysfs)?;
        // cgroup.controllers is v2's alone: a v1 hierarchy (which has cgroup.procs too)
        // would only fail later, at attach, with a less telling error.
        if cgroup.join("cgroup.controllers").exists() {
            Ok(())
        } else {
            Err(format!(
                "{} is not a cgroup v2 directory: the DNS programs attach to one",
                cgroup.display()
            ))
        }
    }

    fn start(&mut self, node: &Node) -> Result<()> {
        let cgroup = self.cgroup(&node.sysfs).map_err(|e| anyhow!(e))?;
        let counter = DnsCounter::load(&cgroup, self.options.timeout)?;
        tracing::info!(probe = "dns", cgroup = %cgroup.display(), "DNS counter attached");
        self.loaded = Some(Loaded {
            counter: Mutex::new(counter),
            read: Mutex::new(Read::default()),
            budgets: Mutex::new(HashMap::new()),
            cookies: Mutex::new(HashMap::new()),
            cgroup,
            attached: Instant::now(),
            objects: node.cluster_objects.clone(),
            node_name: node.name.clone(),
            naming: NamingVersion::default(),
        });
        Ok(())
    }

    fn bpf_maps(&self) -> Vec<BpfMapFill> {
        let Some(loaded) = &self.loaded else {
            return Vec::new();
        };
        let read = loaded.read.lock().unwrap_or_else(|e| e.into_inner());
        read.fills.clone()
    }

    /// Times out the queries past the timeout, reads the counters once, and forgets the keys
    /// of namespaces that are gone.
    fn prepare(&self, collection: &Collection) {
        let Some(loaded) = &self.loaded else { return };
        let mut counter = loaded.counter.lock().unwrap_or_else(|e| e.into_inner());
        let mut read = loaded.read.lock().unwrap_or_else(|e| e.into_inner());
        let r = &mut *read;
        Directory::refresh(
            loaded.objects.as_deref(),
            &mut r.directory,
            &mut r.directory_version,
            (&loaded.node_name, collection),
        );
        loaded.naming.directory_changed(r.directory.as_ref());
        // Before the read: a query timed out now is in this collection's series.
        let expired = counter.expire(self.options.timeout);
        let read_now = counter.read();
        let (expired, flights_fill) = match expired {
            Ok(e) => e,
            Err(e) => {
                read.error = Some(format!("{e:#}"));
                return;
            }
        };
        for key in expired {
            *read.expired.entry(key).or_default() += 1;
        }
        let (mut entries, fill) = match read_now {
            Ok(r) => r,
            Err(e) => {
                read.error = Some(format!("{e:#}"));
                return;
            }
        };
        let mut cookies = loaded.cookies.lock().unwrap_or_else(|e| e.into_inner());
        for (k, _) in &entries {
            cookies.entry(k.netns).or_insert(Seen {
                inode: None,
                collection: collection.id,
            });
        }
        // A namespace is gone when discovery no longer finds its inode, or when it was never
        // collected (it came and went between collections) for FORGET_AFTER collections.
        let gone: HashSet<u64> = cookies
            .iter()
            .filter(|(_, s)| match s.inode {
                Some(inode) => collection.is_gone(inode),
                None => collection.complete && collection.id >= s.collection + FORGET_AFTER,
            })
            .map(|(c, _)| *c)
            .collect();
        if !gone.is_empty() {
            let keys: Vec<DnsKey> = entries
                .iter()
                .map(|(k, _)| *k)
                .filter(|k| gone.contains(&k.netns))
                .collect();
            counter.remove(&keys);
            entries.retain(|(k, _)| !gone.contains(&k.netns));
            read.expired.retain(|k, _| !gone.contains(&k.netns));
            cookies.retain(|c, _| !gone.contains(c));
        }
        read.error = None;
        read.entries = entries;
        read.fills = vec![fill, flights_fill];
        loaded
            .budgets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|inode, _| !collection.is_gone(*inode));
    }

    fn collect(&self, src: &mut TargetSources) -> Result<Vec<Series>> {
        let loaded = self
            .loaded
            .as_ref()
            .ok_or_else(|| anyhow!("the DNS counter is not attached"))?;
        let cookie = src.netns_cookie().ok_or_else(|| {
            anyhow!("the namespace has no cookie (SO_NETNS_COOKIE needs Linux 5.14)")
        })?;
        let (inode, is_node) = (src.inode(), src.is_node());
        if let Some(seen) = loaded
            .cookies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&cookie)
        {
            seen.inode = Some(inode);
        }
        let read = loaded.read.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = &read.error {
            return Err(anyhow!("{e}"));
        }
        let mine: Vec<&(DnsKey, DnsCounts)> = read
            .entries
            .iter()
            .filter(|(k, _)| k.netns == cookie)
            .collect();
        let mut budgets = loaded.budgets.lock().unwrap_or_else(|e| e.into_inner());
        let cluster = src.cluster().map(|c| c.as_ref());
        let mut out = series_for(
            &mine,
            &read.expired,
            budgets.entry(inode).or_default(),
            &self.options,
            &self.naming,
            (
                cluster,
                read.directory.as_ref(),
                loaded.attached.elapsed() < SYNC_WAIT,
            ),
            loaded.naming.of(src.cluster()),
        );
        if is_node {
            out.push(Series::only(
                METRICS.len(),
                UNCOUNTED,
                read.fills.iter().map(|f| f.uncounted).sum(),
                Vec::new(),
            ));
            out.push(Series::only(
                METRICS.len(),
                INFO,
                1,
                vec![("cgroup", loaded.cgroup.display().to_string().into())],
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(addr: &str, proto: u8) -> DnsKey {
        let (family, addr) = match addr.parse::<IpAddr>().unwrap() {
            IpAddr::V4(v4) => {
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&v4.octets());
                (4, a)
            }
            IpAddr::V6(v6) => (6, v6.octets()),
        };
        DnsKey {
            netns: 7,
            addr,
            family,
            proto,
            pad: [0; 6],
        }
    }

    fn render(series: &[Series]) -> Vec<String> {
        let mut out: Vec<String> = series
            .iter()
            .map(|s| {
                let labels: Vec<String> =
                    s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let value = match s
                    .values
                    .iter()
                    .enumerate()
                    .find_map(|(i, v)| v.map(|v| (i, v)))
                {
                    Some((i, v)) => format!("{} {v}", METRICS[i].name),
                    None => {
                        let (i, h) = &s.histograms[0];
                        format!("{} {:?} {}", METRICS[*i].name, h.counts, h.sum)
                    }
                };
                format!("{value} {}", labels.join(","))
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn kernel_buckets_fold_into_the_exported_ones() {
        let mut k = [0u64; BUCKETS];
        k[0] = 1; // <= 16 us
        k[4] = 2; // (128, 256] us
        k[5] = 3; // (256, 512] us
        k[18] = 4; // (2.1, 4.2] s
        k[19] = 5; // (4.2, 8.4] s
        k[20] = 6; // beyond
        let e = exported(&k);
        assert_eq!(e.len(), LATENCY_BOUNDS.len() + 1);
        assert_eq!(e[0], 3, "<= 256 us");
        assert_eq!(e[1], 3, "(256, 512] us");
        assert_eq!(e[14], 4, "(2.1, 4.2] s");
        assert_eq!(e[15], 11, "+Inf");
        // Bucket i's bound, 2^(i+4) us, is the bound of the exported bucket it lands in.
        for i in 4..19 {
            let bound = (1u64 << (i + 4)) as f64 / 1e6;
            assert!((LATENCY_BOUNDS[i - 4] - bound).abs() < 1e-9, "{i}");
        }
    }

    #[test]
    fn series_by_resolver_type_and_rcode_with_timeouts_from_both_sides() {
        let mut latency = [0; BUCKETS];
        latency[10] = 8; // (8.192, 16.384] ms
        let c = DnsCounts {
            queries: [5, 3, 0, 1, 0],
            answers: [6, 2, 0, 0, 0],
            empty: 1,
            late: 1,
            latency,
            latency_sum_us: 80_000,
            expansions: 2,
            ..DnsCounts::default()
        };
        let entries = [(key("10.96.0.10", 17), c)];
        let mine: Vec<_> = entries.iter().collect();
        let expired: HashMap<DnsKey, u64> = [(key("10.96.0.10", 17), 2)].into();
        let options = DnsOptions {
            networks: [("cluster-dns".into(), vec!["10.96.0.10/32".parse().unwrap()])].into(),
            ..DnsOptions::default()
        };
        let naming = PeersOptions {
            networks: options.networks.clone(),
            ..PeersOptions::default()
        };
        let mut budget = Budget::default();
        let out = series_for(
            &mine,
            &expired,
            &mut budget,
            &options,
            &naming,
            (None, None, false),
            0,
        );
        let l = "resolver=cluster-dns,resolver_kind=network,network.transport=udp";
        assert_eq!(
            render(&out),
            vec![
                format!("netexporter_dns_answers_total 2 {l},rcode=NXDOMAIN"),
                format!("netexporter_dns_answers_total 6 {l},rcode=NOERROR"),
                format!("netexporter_dns_empty_answers_total 1 {l}"),
                format!(
                    "netexporter_dns_latency_seconds [0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0] 0.08 {l}"
                ),
                format!("netexporter_dns_malformed_total 0 {l}"),
                format!("netexporter_dns_queries_total 1 {l},type=PTR"),
                format!("netexporter_dns_queries_total 3 {l},type=AAAA"),
                format!("netexporter_dns_queries_total 5 {l},type=A"),
                format!("netexporter_dns_search_expansions_total 2 {l}"),
                format!("netexporter_dns_timeouts_total 3 {l}"),
            ]
        );
    }

    #[test]
    fn resolvers_past_the_budget_are_other_and_decisions_stick() {
        let options = DnsOptions {
            resolvers_per_namespace: 1,
            ..DnsOptions::default()
        };
        let naming = PeersOptions::default();
        let queried = |n: u64| DnsCounts {
            queries: [n, 0, 0, 0, 0],
            ..DnsCounts::default()
        };
        let mut budget = Budget::default();
        let first = [
            (key("192.0.2.1", 17), queried(1)),
            (key("192.0.2.2", 17), queried(9)),
        ];
        let mine: Vec<_> = first.iter().collect();
        let out = series_for(
            &mine,
            &HashMap::new(),
            &mut budget,
            &options,
            &naming,
            (None, None, false),
            0,
        );
        let queries: Vec<String> = render(&out)
            .into_iter()
            .filter(|l| l.starts_with("netexporter_dns_queries_total"))
            .collect();
        // The busiest gets the one series of its own; TCP to it shares its name.
        assert_eq!(
            queries,
            vec![
                "netexporter_dns_queries_total 1 resolver=other,resolver_kind=other,network.transport=udp,type=A",
                "netexporter_dns_queries_total 9 resolver=192.0.2.2,resolver_kind=address,network.transport=udp,type=A",
            ]
        );
        let later = [
            (key("192.0.2.1", 17), queried(50)),
            (key("192.0.2.2", 17), queried(9)),
            (key("192.0.2.2", 6), queried(2)),
        ];
        let mine: Vec<_> = later.iter().collect();
        let out = series_for(
            &mine,
            &HashMap::new(),
            &mut budget,
            &options,
            &naming,
            (None, None, false),
            0,
        );
        let queries: Vec<String> = render(&out)
            .into_iter()
            .filter(|l| l.starts_with("netexporter_dns_queries_total"))
            .collect();
        assert_eq!(
            queries,
            vec![
                "netexporter_dns_queries_total 2 resolver=192.0.2.2,resolver_kind=address,network.transport=tcp,type=A",
                "netexporter_dns_queries_total 50 resolver=other,resolver_kind=other,network.transport=udp,type=A",
                "netexporter_dns_queries_total 9 resolver=192.0.2.2,resolver_kind=address,network.transport=udp,type=A",
            ]
        );
    }

    #[test]
    fn the_cgroup2_root_is_found_in_mountinfo() {
        let hybrid = "25 30 0:23 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n\
                      27 25 0:25 / /sys/fs/cgroup/net_cls rw - cgroup cgroup rw,net_cls\n";
        assert_eq!(
            cgroup2_root(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 1 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_root(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_root("garbage\n\n - \n"), None);
        assert_eq!(cgroup2_root(""), None);
    }

    #[test]
    fn the_cgroup2_root_under_sysfs_is_preferred_then_the_configured_one() {
        let sysfs = std::env::temp_dir().join(format!("dns-sysfs-{}", std::process::id()));
        let unified = sysfs.join("fs/cgroup/unified");
        std::fs::create_dir_all(&unified).unwrap();
        std::fs::write(unified.join("cgroup.controllers"), "").unwrap();
        let dns = Dns::new(DnsOptions::default()).unwrap();
        // Hybrid: fs/cgroup is a tmpfs of v1 hierarchies, the v2 root is below it.
        assert_eq!(dns.cgroup(&sysfs), Ok(unified.clone()));
        std::fs::write(sysfs.join("fs/cgroup/cgroup.controllers"), "").unwrap();
        assert_eq!(dns.cgroup(&sysfs), Ok(sysfs.join("fs/cgroup")));
        let configured = Dns::new(DnsOptions {
            cgroup: Some("/elsewhere".into()),
            ..DnsOptions::default()
        })
        .unwrap();
        assert_eq!(configured.cgroup(&sysfs), Ok(PathBuf::from("/elsewhere")));
        let _ = std::fs::remove_dir_all(&sysfs);
    }

    #[test]
    fn a_zero_timeout_is_a_configuration_error() {
        let e = Dns::new(DnsOptions {
            timeout: Duration::ZERO,
            ..DnsOptions::default()
        })
        .err()
        .map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("timeout must be more than 0"));
    }

    /// A resolver Pod replaced by another workload's with the same IP: the queries counted
    /// until the collection that sees it stay with the old resolver (kept while its series
    /// has other keys), those after count under the new; timeouts too. No counter goes back.
    #[test]
    fn a_reused_resolver_address_moves_to_its_new_workload() {
        let pod = |uid: &str, ip: &str, workload: &str| crate::inventory::PodInfo {
            uid: uid.into(),
            namespace: "dns".into(),
            name: uid.into(),
            host_network: false,
            ips: vec![ip.parse().unwrap()],
            excluded: false,
            labels: Default::default(),
            workload: workload.into(),
        };
        let view = |pods| ClusterView {
            pods,
            synced: true,
            ..Default::default()
        };
        let (options, naming) = (DnsOptions::default(), PeersOptions::default());
        let mut budget = Budget::default();
        let (moved, stays) = (key("10.244.1.5", 17), key("10.244.1.6", 17));
        // Each key's cumulative (queries, timeouts).
        let mut collect = |reads: [(u64, u64); 2], v: &ClusterView, generation| {
            let entries: Vec<(DnsKey, DnsCounts)> = [moved, stays]
                .into_iter()
                .zip(reads)
                .map(|(k, (q, _))| {
                    let c = DnsCounts {
                        queries: [q, 0, 0, 0, 0],
                        ..DnsCounts::default()
                    };
                    (k, c)
                })
                .collect();
            let mine: Vec<_> = entries.iter().collect();
            let expired: HashMap<DnsKey, u64> =
                [moved, stays].into_iter().zip(reads.map(|r| r.1)).collect();
            let out = series_for(
                &mine,
                &expired,
                &mut budget,
                &options,
                &naming,
                (Some(v), None, false),
                generation,
            );
            render(&out)
                .into_iter()
                .filter(|l| l.contains("queries") || l.contains("timeouts"))
                .map(|l| {
                    l.replace("netexporter_dns_", "")
                        .replace(",resolver_kind=workload,network.transport=udp", "")
                })
                .collect::<Vec<_>>()
        };
        let a = view(vec![
            pod("a1", "10.244.1.5", "Deployment/a"),
            pod("a2", "10.244.1.6", "Deployment/a"),
        ]);
        assert_eq!(
            collect([(5, 1), (3, 0)], &a, 1),
            [
                "queries_total 8 resolver=dns/Deployment/a,type=A",
                "timeouts_total 1 resolver=dns/Deployment/a",
            ]
        );
        // a1 deleted, its IP given to b1: the first collection that sees it leaves what the
        // key counted until this read with a (7 + 3, 2 timeouts); b counts from here.
        let reused = view(vec![
            pod("b1", "10.244.1.5", "StatefulSet/b"),
            pod("a2", "10.244.1.6", "Deployment/a"),
        ]);
        assert_eq!(
            collect([(7, 2), (3, 0)], &reused, 2),
            [
                "queries_total 10 resolver=dns/Deployment/a,type=A",
                "timeouts_total 0 resolver=dns/StatefulSet/b",
                "timeouts_total 2 resolver=dns/Deployment/a",
            ]
        );
        assert_eq!(
            collect([(9, 3), (4, 0)], &reused, 2),
            [
                "queries_total 11 resolver=dns/Deployment/a,type=A",
                "queries_total 2 resolver=dns/StatefulSet/b,type=A",
                "timeouts_total 1 resolver=dns/StatefulSet/b",
                "timeouts_total 2 resolver=dns/Deployment/a",
            ]
        );
    }
}
