//! `peers`: whom each network namespace's TCP connections are with, and how they end, counted
//! in the kernel by an eBPF program on `sock:inet_sock_set_state` (`peers.bpf.c`, beside this
//! file) by namespace, role, port and peer address. User space reads the aggregates once per
//! collection; nothing per connection leaves the kernel.
//!
//! Per target: `netexporter_peer_connections_total` and, for each reason a connection failed
//! for, `netexporter_peer_connection_failures_total`, labelled with the role (`client`: this
//! namespace connected; `server`: it accepted), the port (the remote port of a client, the
//! local listening port of a server), the peer and the peer's kind:
//!
//! - `loopback`: an address of the namespace's own loopback;
//! - `workload` / `pod` (Kubernetes mode): a Pod of this node, or a backend listed in an
//!   EndpointSlice; `service`: a Service's ClusterIP (or the Service a backend serves, when
//!   its Pod's name does not say its workload);
//! - `node`: an address of this node's own namespace (its interfaces: the kubelet, a
//!   hostNetwork Pod, a node-local cache); the peer is the node's name;
//! - `network`: an address inside one of the configured `networks` (the peer is its name);
//! - `external` (Kubernetes mode, with `cluster_networks`): an address outside the cluster;
//! - `address`: any other address (the peer is the address itself);
//! - `other`: the peers past `peers_per_namespace` in that namespace, one series per role.
//!
//! Which peer a key is counted under is decided the first time the key is seen and kept while
//! its namespace lives, so that every series is a counter that never goes back (the budget is
//! spent on the busiest peers of the first collection that sees them, then first come).
//!
//! Beside the counters: connect-latency and RTT histograms per (role, peer), counted into log2
//! buckets in the kernel and folded here into fourfold ones; and, from a sampling iterator
//! (`iter/tcp`) run within a time budget per collection, after the maps are read, in the
//! namespaces that may hold open connections (not those where the last walk found none and
//! no connection opened since), an RTT sample of every open connection and the bytes it moved
//! so far (read by the next collection). Each listening port's accept queue and drops come
//! from the collection's LISTEN-only sock_diag dump (`listeners.rs`). `docs/peers.md` has the
//! design and its costs.

pub mod bpf;
pub mod listeners;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
// The maps keyed by the kernel's peer keys are looked up several times per key per collection
// (~5,000 keys at 100 namespaces x 50 peers): std's SipHash was ~8 % of a scrape there.
// foldhash is hashbrown's own default, seeded per process (keys that remote peers choose
// cannot be made to collide ahead of time).
use foldhash::{HashMap, HashMapExt, HashSet};
use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Build, Histogram, LabelValue, Labels, MetricDef, Probe, Scope, Series};
use crate::inventory::ClusterView;
use crate::inventory::objects::{self, ClusterObjects};
use crate::metrics;
use crate::sources::bpf_programs::BpfMapFill;
use crate::sources::{Collection, Node, TargetSources};
use bpf::{
    BUCKETS, BackendCounts, BackendKey, CLIENT, PeerCounter, PeerCounts, PeerKey, PeerTiming,
};
use listeners::Listener;

/// `probes.peers`.
#[derive(Deserialize, Serialize, JsonSchema, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PeersOptions {
    /// Peers of one namespace that get series of their own: the busiest of the first
    /// collection that sees them, then first come. Connections with any other peer are
    /// counted under `peer="other"`. Bounds the series of a namespace.
    pub peers_per_namespace: usize,
    /// Named networks: a peer address inside one of a network's CIDRs is counted under the
    /// network's name (`peer_kind="network"`), e.g. `{vpc: [10.0.0.0/16], dns: [10.96.0.10/32]}`.
    /// Where several hold it, the narrowest CIDR wins.
    pub networks: BTreeMap<String, Vec<IpNet>>,
    /// Kubernetes mode: name a peer that is a Pod of this node by the Pod itself
    /// (`NAMESPACE/NAME`, `peer_kind="pod"`) instead of its workload
    /// (`NAMESPACE/Deployment/NAME`, `peer_kind="workload"`). More series: a Deployment's
    /// replicas each get their own.
    pub pod_names: bool,
    /// Peers of one namespace whose connect latency and RTT get histograms of their own (per
    /// role and peer, not per port): the first named peers, busiest first. The others' are
    /// counted under `peer="other"`. A histogram is 12 data points.
    pub histogram_peers: usize,
    /// Listening ports of one namespace with accept-queue series of their own (the first
    /// seen); the others are summed under `port="other"`.
    pub listeners_per_namespace: usize,
    /// Kubernetes mode: the cluster's own address ranges (Pod, Service and Node CIDRs). A peer
    /// address outside all of them that no Pod, Service or configured network names is
    /// counted as `peer="external"`; inside them it stays an address (a Pod of another node
    /// that backs no Service). Empty: no address is called external.
    pub cluster_networks: Vec<IpNet>,
    /// Time a collection may spend sampling open connections (`iter/tcp`, one walk of the
    /// node's TCP hash per namespace, ~2 ms here): the namespaces that may hold open
    /// connections take turns, each collection going on where the last stopped.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::component::DurationText")]
    pub sample_budget: Duration,
    /// Follow connections to a translated address (a Service's ClusterIP, DNAT by
    /// kube-proxy) to the backend conntrack sent them to
    /// (`netexporter_peer_backend_connections_total`). Costs one short BPF program run per
    /// packet queued to a device.
    pub follow_translations: bool,
}

impl Default for PeersOptions {
    fn default() -> Self {
        Self {
            peers_per_namespace: 20,
            networks: BTreeMap::new(),
            pod_names: false,
            histogram_peers: 3,
            listeners_per_namespace: 16,
            cluster_networks: Vec::new(),
            sample_budget: Duration::from_millis(25),
            follow_translations: true,
        }
    }
}

const CONNECTIONS: usize = 0;
const FAILURES: usize = 1;
const RETRANSMITS: usize = 2;
const RESETS: usize = 3;
const BYTES: usize = 4;
const UNCOUNTED: usize = 5;
const CONNECT_LATENCY: usize = 6;
const RTT: usize = 7;
const ACCEPT_QUEUE: usize = 8;
const ACCEPT_QUEUE_LIMIT: usize = 9;
const LISTEN_DROPS: usize = 10;
const BACKEND_CONNECTIONS: usize = 11;
const BACKEND_FAILURES: usize = 12;
const INFO: usize = 13;

/// The exported buckets, in seconds: 4^(j+3) microseconds, 64 µs to 4.2 s, and `+Inf` (12
/// data points a histogram). The kernel counts finer ones (2^(i+4) µs, `peers.h`), two of which
/// make one of these: the layout can change here without touching the BPF program.
const LATENCY_BOUNDS: [f64; 9] = [
    0.000064, 0.000256, 0.001024, 0.004096, 0.016384, 0.065536, 0.262144, 1.048576, 4.194304,
];

/// The kernel's buckets folded into the exported ones: kernel bucket i (up to 2^(i+4) µs) is in
/// the first exported bucket whose bound is at least its own.
fn exported(kernel: &[u64; BUCKETS]) -> Vec<u64> {
    let mut out = vec![0; LATENCY_BOUNDS.len() + 1];
    for (i, n) in kernel.iter().enumerate() {
        let j = i.saturating_sub(1) / 2;
        out[j.min(LATENCY_BOUNDS.len())] += n;
    }
    out
}

const METRICS: &[MetricDef] = metrics![
    counter "netexporter_peer_connections_total" "TCP connections opened with a peer (SYN_SENT or SYN_RECV to ESTABLISHED). Labels: role (client: this namespace connected; server: it accepted), port (the remote port of a client, the local listening port of a server), peer, peer_kind (loopback; workload or pod: a Pod of this node or a Service's backend, Kubernetes mode; service: a Service's ClusterIP; node: an address of a node, named after it: this node's own namespace, or, Kubernetes mode, another Node's InternalIP or ExternalIP; network; external: outside probes.peers.cluster_networks; address; other).",
    counter "netexporter_peer_connection_failures_total" "TCP connections with a peer that failed, by reason: refused (RST answering the SYN), timeout (SYN retries exhausted), reset (RST received on an opened connection), other (an ICMP error, closed while connecting). Labels: those of netexporter_peer_connections_total, and reason. A reason's series appears at its first failure.",
    counter "netexporter_peer_retransmits_total" "TCP segments retransmitted to a peer (the sockets' own total_retrans, as nstat's TcpRetransSegs counts them), counted as they happen. Labels: those of netexporter_peer_connections_total. Appears at the first retransmit.",
    counter "netexporter_peer_resets_total" "TCP RSTs sent to (direction=transmit) and received from (direction=receive) a peer on a connection's socket; RSTs answering packets that found no socket (a closed port) are not per peer. Labels: those of netexporter_peer_connections_total, and direction. Appears at the first RST.",
    counter "netexporter_peer_bytes_total" "TCP payload bytes sent to (direction=transmit: acknowledged by the peer, tcp_sock.bytes_acked) and received from (direction=receive: in order, tcp_sock.bytes_received) a peer, counted when a connection retransmits, at each collection while it is open, and when it closes. Labels: those of netexporter_peer_connections_total, and direction.",
    counter "netexporter_peer_uncounted_total" "Connection events and latency samples not counted because an in-kernel peer map was full (node only).",
    histogram(&LATENCY_BOUNDS) "netexporter_peer_connect_latency_seconds" "Time from a client's SYN to ESTABLISHED (SYN retransmits included), per connection opened. Buckets grow fourfold from 64 us to 4.2 s. Labels: role (client), peer, peer_kind; the peers past probes.peers.histogram_peers are peer=other.",
    histogram(&LATENCY_BOUNDS) "netexporter_peer_rtt_seconds" "Smoothed round-trip time (the socket's srtt, as ss -ti shows it) of connections with a peer: one sample per open connection per collection, and one when a connection closes. Buckets grow fourfold from 64 us to 4.2 s. Labels: role, peer, peer_kind; the peers past probes.peers.histogram_peers are peer=other.",
    gauge "netexporter_listener_accept_queue" "Connections that completed the handshake and wait for accept() on a listening port (ss -ltn's Recv-Q), read at each collection. Labels: port (the ports past probes.peers.listeners_per_namespace are summed under other).",
    gauge "netexporter_listener_accept_queue_limit" "The accept queue's limit of a listening port (listen()'s backlog, capped by net.core.somaxconn; ss -ltn's Send-Q). Labels: port.",
    counter "netexporter_listener_drops_total" "SYNs and handshakes a listening port dropped (its listeners' sk_drops: a full accept queue, as nstat's TcpExtListenOverflows counts, and other listen drops, TcpExtListenDrops). A listener that closes leaves its drops in the count while the port has another; a port without listeners at a collection ends its series, which starts again from zero. Labels: port.",
    counter "netexporter_peer_backend_connections_total" "TCP connections a client in this namespace opened to an address that conntrack translated (a Service's ClusterIP, by kube-proxy's DNAT rules), by the backend they were sent to; also counted in netexporter_peer_connections_total under the address connected to. Labels: port, peer, peer_kind (the address connected to, as in netexporter_peer_connections_total), backend, backend_kind (the address translated to, named like a peer; other: past probes.peers.peers_per_namespace).",
    counter "netexporter_peer_backend_connection_failures_total" "TCP connections to a translated address that failed, by backend and reason: refused, timeout, other (as in netexporter_peer_connection_failures_total). Labels: those of netexporter_peer_backend_connections_total, and reason. A reason's series appears at its first failure.",
    gauge "netexporter_peers_info" "Always 1 (node only); the label translations tells whether connections to a translated address are followed to their backend: conntrack (from the packets' conntrack entries), off (probes.peers.follow_translations is false), or unavailable (the kernel has no connection tracking or refused the program; the agent's log says why).",
];

pub struct Peers {
    options: PeersOptions,
    loaded: Option<Loaded>,
}

/// The attached program and what it has counted.
struct Loaded {
    counter: Mutex<PeerCounter>,
    /// Written by `prepare`, read by every namespace's collection at once.
    read: RwLock<Read>,
    /// Each namespace's, locked only by its own collection.
    budgets: Mutex<HashMap<u64, Arc<Mutex<Budget>>>>,
    /// When the counter was attached: addresses wait for the Kubernetes view only so long.
    attached: Instant,
    /// Kubernetes mode: the Services and EndpointSlices that name other addresses.
    objects: Option<Arc<ClusterObjects>>,
    /// This node's name: what its own addresses are named.
    node_name: String,
    /// What the names of this collection depend on.
    naming: NamingVersion,
    /// How connections to translated addresses are followed to their backends:
    /// `conntrack`, `off`, or `unavailable`.
    translations: &'static str,
}

/// A number that changes whenever what names addresses may have (the Pods of the cluster
/// view, the directory's content, this node's addresses): the peers' and dns' keys check
/// their names again only then.
#[derive(Default)]
pub(crate) struct NamingVersion {
    /// The cluster view of this collection (held: its address cannot be reused meanwhile)
    /// and the fingerprint of the Pods it names.
    cluster_seen: Mutex<Option<(Arc<ClusterView>, u64)>>,
    /// The directory's, set at each collection's preparation.
    directory: std::sync::atomic::AtomicU64,
}

impl NamingVersion {
    /// At each collection's preparation, from its directory.
    pub(crate) fn directory_changed(&self, directory: Option<&Directory>) {
        let mut node: Vec<&IpAddr> = directory
            .and_then(|d| d.node.as_ref())
            .map(|(_, a)| a.iter().collect())
            .unwrap_or_default();
        node.sort();
        let content = directory.map(|d| (d.listed, d.content));
        let version = fingerprint(&(content, node));
        (self.directory).store(version, std::sync::atomic::Ordering::Relaxed);
    }

    /// The version for a namespace's collection (the cluster view's fingerprint is computed
    /// once per view: every namespace of a collection shares it).
    pub(crate) fn of(&self, cluster: Option<&Arc<ClusterView>>) -> u64 {
        let directory = self.directory.load(std::sync::atomic::Ordering::Relaxed);
        let Some(cluster) = cluster else {
            return fingerprint(&(0u64, directory));
        };
        let mut seen = self.cluster_seen.lock().unwrap_or_else(|e| e.into_inner());
        let pods = match &*seen {
            Some((held, version)) if Arc::ptr_eq(held, cluster) => *version,
            _ => {
                let pods: Vec<_> = (cluster.pods.iter())
                    .map(|p| (&p.uid, &p.ips, &p.workload, p.host_network))
                    .collect();
                let version = fingerprint(&pods);
                *seen = Some((Arc::clone(cluster), version));
                version
            }
        };
        fingerprint(&(pods, directory))
    }
}

/// A hash of `v` (for telling whether something changed, not kept anywhere).
fn fingerprint(v: &impl std::hash::Hash) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(v)
}

/// What the cluster's Services, EndpointSlices and Nodes say an address is: a Service's
/// ClusterIP, a backend Pod (of any node), or a Node.
#[derive(Default)]
pub(crate) struct Directory {
    by_addr: HashMap<IpAddr, Named>,
    /// Whether the Services and EndpointSlices were listed (Kubernetes mode): until then an
    /// address that may be one of theirs waits.
    listed: bool,
    /// This node: its name and the addresses of its own namespace.
    node: Option<(String, HashSet<IpAddr>)>,
    /// A number that changes with what `by_addr` names.
    content: u64,
}

/// A directory entry: a Service, a Node, or a backend Pod's workload and the Pod itself.
struct Named {
    workload: String,
    pod: Option<String>,
    kind: &'static str,
}

impl Directory {
    pub(crate) fn new(objects: &objects::Directory) -> Self {
        let mut by_addr = HashMap::new();
        for svc in &objects.services {
            let (ns, name) = (
                svc.metadata.namespace.as_deref().unwrap_or_default(),
                svc.metadata.name.as_deref().unwrap_or_default(),
            );
            let spec = svc.spec.as_ref();
            let ips = spec
                .and_then(|s| s.cluster_ips.clone())
                .or_else(|| spec.and_then(|s| s.cluster_ip.clone()).map(|ip| vec![ip]))
                .unwrap_or_default();
            for ip in ips.iter().filter_map(|ip| ip.parse::<IpAddr>().ok()) {
                by_addr.insert(
                    ip,
                    Named {
                        workload: format!("{ns}/Service/{name}"),
                        pod: None,
                        kind: "service",
                    },
                );
            }
        }
        // Every Pod (`kubernetes.watch_all_pods`), by its controller: before the backends,
        // whose workload is only guessed from their names. A finished Pod's address is back in
        // the pool; a hostNetwork Pod's is its node's.
        for pod in objects.pods.iter().filter(|p| !p.host_network) {
            for ip in &pod.ips {
                by_addr.insert(
                    *ip,
                    Named {
                        workload: format!("{}/{}", pod.namespace, pod.workload),
                        pod: Some(format!("{}/{}", pod.namespace, pod.name)),
                        kind: "workload",
                    },
                );
            }
        }
        // Before the backends: a hostNetwork Pod's endpoint address is its node's, and names
        // the node, not that Pod's workload.
        for node in &objects.nodes {
            let name = node.metadata.name.clone().unwrap_or_default();
            let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
            for a in addresses.into_iter().flatten() {
                if matches!(a.type_.as_str(), "InternalIP" | "ExternalIP")
                    && let Ok(ip) = a.address.parse::<IpAddr>()
                {
                    by_addr.entry(ip).or_insert_with(|| Named {
                        workload: name.clone(),
                        pod: None,
                        kind: "node",
                    });
                }
            }
        }
        for slice in &objects.slices {
            let ns = slice.metadata.namespace.as_deref().unwrap_or_default();
            let service = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
                .cloned()
                .unwrap_or_default();
            for ep in &slice.endpoints {
                let pod = ep
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.name.clone());
                let named = || match pod.as_deref().and_then(workload_of_pod_name) {
                    Some(w) => Named {
                        workload: format!("{ns}/{w}"),
                        pod: pod.as_ref().map(|p| format!("{ns}/{p}")),
                        kind: "workload",
                    },
                    // Named by the Service it backs: no series per replica.
                    None => Named {
                        workload: format!("{ns}/Service/{service}"),
                        pod: pod.as_ref().map(|p| format!("{ns}/{p}")),
                        kind: "service",
                    },
                };
                for addr in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                    by_addr.entry(addr).or_insert_with(named);
                }
            }
        }
        // What it names, whatever the order of the map: a watch event that changed no name
        // (a Node's status, an EndpointSlice's readiness) leaves it, and the keys unchecked.
        let content = by_addr.iter().fold(0u64, |acc, (addr, n)| {
            acc.wrapping_add(fingerprint(&(addr, &n.workload, &n.pod, n.kind)))
        });
        Self {
            by_addr,
            listed: true,
            node: None,
            content,
        }
    }
}

impl Directory {
    /// Rebuilds `directory` from the watched objects when a watch event changed the Services
    /// or EndpointSlices since `version` (a large cluster's directory costs milliseconds to
    /// build). The version is read before the objects: a change in between is seen again at
    /// the next collection, never missed.
    /// And names this node (`name`) by the addresses of its own namespace, read now: a
    /// namespace's connections to the node (its kubelet, a hostNetwork Pod, a node-local
    /// cache) are the node's, in both modes. Other nodes are named from the Node watch.
    pub(crate) fn refresh(
        objects: Option<&ClusterObjects>,
        directory: &mut Option<Directory>,
        version: &mut Option<u64>,
        node: (&str, &Collection),
    ) {
        if let Some(objects) = objects {
            let now = objects.directory_version();
            if *version != Some(now)
                && let Some(listed) = objects.directory_listed()
            {
                *directory = Some(Directory::new(&listed));
                *version = Some(now);
            }
        }
        let (name, collection) = node;
        let d = directory.get_or_insert_with(Directory::default);
        match collection.node_addresses() {
            Ok(addrs) => {
                let addrs = addrs.iter().filter(|a| !a.is_loopback()).copied().collect();
                d.node = Some((name.to_string(), addrs));
            }
            // Kept as last read: a failed dump names nothing new wrongly.
            Err(e) => tracing::debug!(error = %format!("{e:#}"), "node addresses"),
        }
    }
}

/// The workload of a Pod known only by its name (an EndpointSlice names its backends, not
/// their owners): `NAME-<pod-template-hash>-<5>` is a Deployment's, `NAME-<ordinal>` a
/// StatefulSet's. `None` when the name says neither.
fn workload_of_pod_name(pod: &str) -> Option<String> {
    const SAFE: &str = "bcdfghjklmnpqrstvwxz2456789"; // the alphabet of generated names
    let generated = |s: &str, lens: std::ops::RangeInclusive<usize>| {
        lens.contains(&s.len()) && s.chars().all(|c| SAFE.contains(c))
    };
    let mut parts = pod.rsplitn(3, '-');
    if let (Some(suffix), Some(hash), Some(name)) = (parts.next(), parts.next(), parts.next())
        && generated(suffix, 5..=5)
        && generated(hash, 6..=10)
    {
        return Some(format!("Deployment/{name}"));
    }
    match pod.rsplit_once('-') {
        Some((name, ordinal))
            if !name.is_empty()
                && !ordinal.is_empty()
                && ordinal.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Some(format!("StatefulSet/{name}"))
        }
        _ => None,
    }
}

/// How long after the counter is attached an address that may be a Pod waits for the
/// Kubernetes view to sync before it is named as an address for good: where the API cannot
/// be reached, connections are still counted (under their addresses), not held back.
pub(crate) const SYNC_WAIT: Duration = Duration::from_secs(60);

/// The map as of the last collection.
#[derive(Default)]
struct Read {
    /// Why this collection's counts could not be read, if they could not.
    error: Option<String>,
    entries: Vec<(PeerKey, PeerCounts)>,
    timings: HashMap<PeerKey, PeerTiming>,
    /// Clients' connections to translated addresses, by backend.
    backends: Vec<(BackendKey, BackendCounts)>,
    /// The maps' fill as the last read found them (their uncounted events included).
    fills: Vec<BpfMapFill>,
    /// Kubernetes mode: what the Services and EndpointSlices name, once both are listed, and
    /// the version of the watched objects it was built from.
    directory: Option<Directory>,
    directory_version: Option<u64>,
    /// Open connections the last walk of each namespace sampled, by inode.
    walks: HashMap<u64, usize>,
    /// The peer map's uncounted events at the last read: once there are any, connections may
    /// have opened uncounted, and namespaces are walked as they were before the counts of
    /// closed connections told which hold open ones (`Walk::needed`).
    uncounted: u64,
    /// The namespace sampled last: the next collection starts after it.
    cursor: u64,
    /// The last error of sampling a namespace's open connections, said once until it changes.
    sample_error: Option<String>,
}

/// A namespace's connections with a role as just read, summed over its keys: those opened and
/// those of them closed since.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Walk {
    opened: u64,
    closed: u64,
}

impl Walk {
    /// Whether the sampling iterator has something to find in the namespace: it holds an open
    /// connection with a role (more opened than closed; a connection that opens after the read
    /// is sampled by the next collection, or at its close). Once the map has lost events
    /// (`uncounted`) an open or a close may have gone uncounted: then also a namespace never
    /// walked, or whose last walk found open connections (`last`).
    fn needed(&self, uncounted: bool, last: Option<usize>) -> bool {
        self.opened != self.closed || (uncounted && last.is_none_or(|n| n > 0))
    }
}

/// The series a key is counted under.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Bucket {
    role: &'static str,
    /// `None` for `other`.
    port: Option<u16>,
    peer: String,
    kind: &'static str,
}

impl Bucket {
    /// Shared by the bucket's series: cloning them costs no allocation.
    fn labels(&self) -> Vec<(&'static str, LabelValue)> {
        let mut l = Vec::with_capacity(6);
        l.push(("role", self.role.into()));
        if let Some(p) = self.port {
            l.push(("server.port", Arc::<str>::from(p.to_string()).into()));
        }
        let peer = LabelValue::from(Arc::<str>::from(self.peer.as_str()));
        l.push(("peer", peer.clone()));
        l.push(("peer_kind", self.kind.into()));
        if self.kind == "address" {
            // OTLP only: the Prometheus format has it as `peer` already.
            l.push(("network.peer.address", peer));
        }
        l
    }
}

/// What one namespace's keys are counted under, kept while the namespace lives so that the
/// counters never go back.
#[derive(Default)]
struct Budget {
    /// What each key was decided under, by key: one lookup a key and collection.
    keys: HashMap<PeerKey, KeyState>,
    /// Every bucket a key of the namespace was counted under, by its id (the index), with its
    /// labels, made once: a collection sums into a vector by id, and its series clone the
    /// labels (no string compares, no label values made anew).
    bucket_list: Vec<BucketLabels>,
    /// The ids by bucket, in the buckets' order (role, port, peer): the series' order, the
    /// same whatever order the buckets came in.
    bucket_ids: BTreeMap<Bucket, usize>,
    /// What keys that moved away had counted under a bucket (by id): kept in its series while
    /// the bucket has keys, so that it never goes back.
    retired: HashMap<usize, PeerCounts>,
    retired_timed: HashMap<usize, PeerTiming>,
    /// The naming generation the names were last checked against.
    generation: Option<u64>,
    /// Peers with series of their own: (peer, kind).
    named: HashSet<(String, &'static str)>,
    /// Peers with histograms of their own.
    timed: HashSet<(String, &'static str)>,
    /// Listening ports with series of their own.
    ports: HashSet<u16>,
    /// Each listener last sampled (by socket cookie): its port's series (`None`: `other`) and
    /// its drops then.
    listeners: HashMap<u64, (Option<u16>, u32)>,
    /// The drops of listeners that closed, kept in their port's series while it has
    /// listeners: a port's or `other`'s sum of several listeners never goes back when one
    /// of them closes.
    retired_drops: HashMap<Option<u16>, u64>,
    /// What each backend key is counted under.
    backends: HashMap<BackendKey, BackendBucket>,
    /// (peer, backend) pairs with series of their own, each as (name, kind).
    backend_pairs: HashSet<[(String, &'static str); 2]>,
    /// The (peer, backend) names each backend key was decided under; its offset and the
    /// retired counts once it moved, as for the peers' keys.
    backend_names: HashMap<BackendKey, [(String, &'static str); 2]>,
    backend_offsets: HashMap<BackendKey, BackendCounts>,
    backend_retired: HashMap<BackendBucket, BackendCounts>,
    backend_generation: Option<u64>,
}

/// A peer key's decisions.
#[derive(Default)]
struct KeyState {
    /// Its buckets and the name they were decided under; `None` until decided, and again
    /// after it moved to another name (decided anew at the next collection).
    decided: Option<Decided>,
    /// A key that moved to another name (its address reused by another Pod, or named only
    /// later) counts from its read at the move on: that read.
    offset: Option<(PeerCounts, PeerTiming)>,
}

struct Decided {
    /// The ids (in `Budget::bucket_list`) of its counters' bucket and its histograms' (the
    /// bucket without the port, or `other`).
    bucket: usize,
    timed: usize,
    /// The name it was decided under (also for keys folded into `other`).
    name: (String, &'static str),
}

/// A bucket and the label sets of its series: its own, and with each direction.
struct BucketLabels {
    labels: Labels,
    transmit: Labels,
    receive: Labels,
}

impl Budget {
    /// The id of `bucket`, made the first time it is seen.
    fn bucket_id(&mut self, bucket: Bucket) -> usize {
        if let Some(id) = self.bucket_ids.get(&bucket) {
            return *id;
        }
        let labels = bucket.labels();
        let with = |value: &'static str| {
            let mut l = labels.clone();
            l.push(("direction", value.into()));
            Labels::from(l)
        };
        let (transmit, receive) = (with("transmit"), with("receive"));
        let labels = Labels::from(labels);
        let id = self.bucket_list.len();
        self.bucket_ids.insert(bucket, id);
        self.bucket_list.push(BucketLabels {
            labels,
            transmit,
            receive,
        });
        id
    }
}

/// The series a backend key is counted under: a named (address connected to, backend) pair,
/// or `other` (both names, no port).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct BackendBucket {
    port: Option<u16>,
    peer: String,
    kind: &'static str,
    backend: String,
    backend_kind: &'static str,
}

impl BackendBucket {
    fn labels(&self) -> Vec<(&'static str, LabelValue)> {
        let mut l = Vec::with_capacity(7);
        l.push(("role", "client".into()));
        if let Some(p) = self.port {
            l.push(("server.port", Arc::<str>::from(p.to_string()).into()));
        }
        l.push(("peer", Arc::<str>::from(self.peer.as_str()).into()));
        l.push(("peer_kind", self.kind.into()));
        l.push(("backend", Arc::<str>::from(self.backend.as_str()).into()));
        l.push(("backend_kind", self.backend_kind.into()));
        l
    }
}

/// A backend key's translated address, in the family of the address connected to.
fn backend_address(key: &BackendKey) -> IpAddr {
    address(&PeerKey {
        addr: key.backend,
        ..key.peer
    })
}

/// Adds what keys that moved away had counted to their old buckets' `sums`: kept while a
/// bucket has keys (its series never goes back), forgotten once it has none (its series ends).
fn add_retired<B: Eq + std::hash::Hash, C>(
    retired: &mut HashMap<B, C>,
    sums: &mut impl Sums<B, C>,
    add: fn(&mut C, &C),
) {
    retired.retain(|b, r| match sums.sum_of(b) {
        Some(s) => {
            add(s, r);
            true
        }
        None => false,
    });
}

/// A collection's sums by bucket: the backends' by bucket, the peers' by bucket id.
trait Sums<B, C> {
    /// The sum of bucket `b`, if it has keys this collection.
    fn sum_of(&mut self, b: &B) -> Option<&mut C>;
}

impl<B: Ord, C> Sums<B, C> for BTreeMap<&B, C> {
    fn sum_of(&mut self, b: &B) -> Option<&mut C> {
        self.get_mut(b)
    }
}

impl<C> Sums<usize, C> for Vec<Option<C>> {
    fn sum_of(&mut self, b: &usize) -> Option<&mut C> {
        self.get_mut(*b)?.as_mut()
    }
}

/// [`rename_moved`] for the backend keys: a key moves when the address connected to or the
/// backend comes to name something else.
fn rename_moved_backends(
    mine: &[&(BackendKey, BackendCounts)],
    budget: &mut Budget,
    options: &PeersOptions,
    cluster: Option<&ClusterView>,
    directory: Option<&Directory>,
) {
    let view = (options, cluster, directory);
    for (key, counts) in mine {
        let Some([peer, backend]) = budget.backend_names.get(key) else {
            continue;
        };
        if !renamed(address(&key.peer), peer, view) && !renamed(backend_address(key), backend, view)
        {
            continue;
        }
        let base = budget.backend_offsets.get(key).copied().unwrap_or_default();
        if let Some(b) = budget.backends.remove(key) {
            budget
                .backend_retired
                .entry(b)
                .or_default()
                .add(&counts.since(&base));
        }
        budget.backend_offsets.insert(*key, *counts);
        budget.backend_names.remove(key);
    }
}

/// One namespace's series of connections to translated addresses, by backend, deciding the
/// bucket of each key not seen before like [`series_for`] does (the busiest first; pairs past
/// `peers_per_namespace` are `other`).
fn backend_series(
    mine: &[&(BackendKey, BackendCounts)],
    budget: &mut Budget,
    options: &PeersOptions,
    cluster: Option<&ClusterView>,
    directory: Option<&Directory>,
    wait: bool,
    generation: u64,
) -> Vec<Series> {
    if budget.backend_generation != Some(generation) {
        budget.backend_generation = Some(generation);
        rename_moved_backends(mine, budget, options, cluster, directory);
    }
    let mut new: Vec<&&(BackendKey, BackendCounts)> = mine
        .iter()
        .filter(|(k, _)| !budget.backends.contains_key(k))
        .collect();
    let events = |c: &BackendCounts| c.opened + c.refused + c.timeout + c.other;
    new.sort_by(|(ka, va), (kb, vb)| events(vb).cmp(&events(va)).then(ka.cmp(kb)));
    for (key, _) in new {
        let (Some((peer, kind)), Some((backend, backend_kind))) = (
            resolve(address(&key.peer), options, cluster, directory, wait),
            resolve(backend_address(key), options, cluster, directory, wait),
        ) else {
            continue;
        };
        let pair = [(peer.clone(), kind), (backend.clone(), backend_kind)];
        budget.backend_names.insert(*key, pair.clone());
        let bucket = if budget.backend_pairs.contains(&pair)
            || budget.backend_pairs.len() < options.peers_per_namespace
        {
            budget.backend_pairs.insert(pair);
            BackendBucket {
                port: Some(key.peer.port),
                peer,
                kind,
                backend,
                backend_kind,
            }
        } else {
            BackendBucket {
                port: None,
                peer: "other".into(),
                kind: "other",
                backend: "other".into(),
                backend_kind: "other",
            }
        };
        budget.backends.insert(*key, bucket);
    }
    let mut sums: BTreeMap<&BackendBucket, BackendCounts> = BTreeMap::new();
    for (key, counts) in mine {
        if let Some(b) = budget.backends.get(key) {
            let c = (budget.backend_offsets.get(key)).map_or(*counts, |o| counts.since(o));
            sums.entry(b).or_default().add(&c);
        }
    }
    add_retired(&mut budget.backend_retired, &mut sums, BackendCounts::add);
    let n = METRICS.len();
    let mut out = Vec::new();
    for (bucket, c) in sums {
        let labels = bucket.labels();
        out.push(Series::only(
            n,
            BACKEND_CONNECTIONS,
            c.opened,
            labels.clone(),
        ));
        for (reason, v) in [
            ("refused", c.refused),
            ("timeout", c.timeout),
            ("other", c.other),
        ] {
            if v > 0 {
                let mut l = labels.clone();
                l.push(("reason", reason.into()));
                out.push(Series::only(n, BACKEND_FAILURES, v, l));
            }
        }
    }
    out
}

/// The accept-queue series of one namespace's listeners, summed per port (a port may have a
/// listener per family or address); ports past the budget are summed under `other`. The
/// drops of a listener that closed stay in its series while the series lives.
fn listener_series(listeners: &[Listener], budget: &mut Budget, limit: usize) -> Vec<Series> {
    let mut by_port: BTreeMap<Option<u16>, (u64, u64, u64)> = BTreeMap::new();
    let mut ports: Vec<u16> = listeners.iter().map(|l| l.port).collect();
    ports.sort_unstable();
    for p in ports {
        if !budget.ports.contains(&p) && budget.ports.len() < limit {
            budget.ports.insert(p);
        }
    }
    let mut sampled = HashMap::with_capacity(listeners.len());
    for l in listeners {
        let port = budget.ports.contains(&l.port).then_some(l.port);
        let sum = by_port.entry(port).or_default();
        sum.0 += u64::from(l.queue);
        sum.1 += u64::from(l.limit);
        sum.2 += u64::from(l.drops);
        sampled.insert(l.cookie, (port, l.drops));
    }
    for (cookie, (port, drops)) in std::mem::replace(&mut budget.listeners, sampled) {
        if !budget.listeners.contains_key(&cookie) {
            *budget.retired_drops.entry(port).or_default() += u64::from(drops);
        }
    }
    budget
        .retired_drops
        .retain(|port, _| by_port.contains_key(port));
    let n = METRICS.len();
    let mut out = Vec::new();
    for (port, (queue, limit, drops)) in by_port {
        let label = (
            "server.port",
            port.map_or("other".into(), |p| p.to_string().into()),
        );
        let mut values = vec![None; n];
        values[ACCEPT_QUEUE] = Some(queue);
        values[ACCEPT_QUEUE_LIMIT] = Some(limit);
        values[LISTEN_DROPS] = Some(drops + budget.retired_drops.get(&port).copied().unwrap_or(0));
        out.push(Series::labelled(label, values));
    }
    out
}

/// The peer's address.
fn address(key: &PeerKey) -> IpAddr {
    ip_of(key.family, key.addr)
}

/// An address as the BPF programs keep it (family 4 or 6, network order, IPv4 in the first 4
/// bytes); an IPv4-mapped IPv6 address (a dual-stack socket) as IPv4.
pub(crate) fn ip_of(family: u8, addr: [u8; 16]) -> IpAddr {
    if family == 4 {
        let [a, b, c, d, ..] = addr;
        return IpAddr::V4(Ipv4Addr::new(a, b, c, d));
    }
    let v6 = Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The peer (name, kind) of an address: loopback; in Kubernetes mode a Pod of this node (its
/// workload, or itself with `pod_names`); a configured network; else the address itself.
/// `None` when `wait`ing for a Kubernetes view that is not yet synced and the address is none
/// of the others: it may be a Pod not known yet, and a decision is kept for good.
pub(crate) fn resolve(
    addr: IpAddr,
    options: &PeersOptions,
    cluster: Option<&ClusterView>,
    directory: Option<&Directory>,
    wait: bool,
) -> Option<(String, &'static str)> {
    if addr.is_loopback() {
        return Some(("loopback".into(), "loopback"));
    }
    if let Some(pod) = cluster.and_then(|c| {
        c.pods
            .iter()
            .find(|p| !p.host_network && p.ips.contains(&addr))
    }) {
        return Some(if options.pod_names {
            (format!("{}/{}", pod.namespace, pod.name), "pod")
        } else {
            (format!("{}/{}", pod.namespace, pod.workload), "workload")
        });
    }
    if let Some((name, _)) = directory
        .and_then(|d| d.node.as_ref())
        .filter(|(_, addrs)| addrs.contains(&addr))
    {
        return Some((name.clone(), "node"));
    }
    if let Some(named) = directory.and_then(|d| d.by_addr.get(&addr)) {
        return Some(match (&named.pod, options.pod_names) {
            (Some(pod), true) => (pod.clone(), "pod"),
            _ => (named.workload.clone(), named.kind),
        });
    }
    let narrowest = options
        .networks
        .iter()
        .flat_map(|(name, nets)| nets.iter().map(move |n| (n, name)))
        .filter(|(n, _)| n.contains(&addr))
        .max_by_key(|(n, _)| n.prefix_len());
    if let Some((_, name)) = narrowest {
        return Some((name.clone(), "network"));
    }
    // A Kubernetes address waits while the view or the directory is not in yet.
    let kubernetes = cluster.is_some();
    if wait
        && kubernetes
        && (cluster.is_some_and(|c| !c.synced) || !directory.is_some_and(|d| d.listed))
    {
        return None;
    }
    if kubernetes
        && !options.cluster_networks.is_empty()
        && !options.cluster_networks.iter().any(|n| n.contains(&addr))
    {
        return Some(("external".into(), "external"));
    }
    Some((addr.to_string(), "address"))
}

/// Moves the keys whose address now names another Pod, Service, node or network than the one
/// they were decided under (a Pod IP reused by another workload; an address named only
/// later): what a key counted until now stays in its old series (`retired`), what it counts
/// from now on goes to the new name (`offsets`), so that no counter goes back. An address
/// that names nothing any more (its Pod deleted, the IP not reused) keeps its name: its
/// connections were that Pod's.
fn rename_moved(
    mine: &[&(PeerKey, PeerCounts)],
    timings: &HashMap<PeerKey, PeerTiming>,
    budget: &mut Budget,
    options: &PeersOptions,
    cluster: Option<&ClusterView>,
    directory: Option<&Directory>,
) {
    for (key, counts) in mine {
        let Some(state) = budget.keys.get_mut(key) else {
            continue;
        };
        let Some(was) = &state.decided else { continue };
        if !renamed(address(key), &was.name, (options, cluster, directory)) {
            continue;
        }
        let timing = timings.get(key).copied().unwrap_or_default();
        let (base, base_timing) = state.offset.unwrap_or_default();
        budget
            .retired
            .entry(was.bucket)
            .or_default()
            .add(&counts.since(&base));
        budget
            .retired_timed
            .entry(was.timed)
            .or_default()
            .add(&timing.since(&base_timing));
        state.offset = Some((*counts, timing));
        state.decided = None;
    }
}

/// Whether `addr`, decided as `was`, names something else now: another Pod, Service, node
/// or network. An address that names nothing any more (its Pod deleted, the IP not reused)
/// keeps its name: its connections were that Pod's.
pub(crate) fn renamed(
    addr: IpAddr,
    was: &(String, &'static str),
    (options, cluster, directory): (&PeersOptions, Option<&ClusterView>, Option<&Directory>),
) -> bool {
    resolve(addr, options, cluster, directory, false)
        .is_some_and(|now| now != *was && !matches!(now.1, "address" | "external"))
}

/// One namespace's series from the map's entries of that namespace (`mine`), deciding the
/// bucket of each key not seen before (`budget` keeps the decisions).
#[allow(clippy::too_many_arguments)]
fn series_for(
    mine: &[&(PeerKey, PeerCounts)],
    timings: &HashMap<PeerKey, PeerTiming>,
    budget: &mut Budget,
    options: &PeersOptions,
    cluster: Option<&ClusterView>,
    directory: Option<&Directory>,
    wait: bool,
    generation: u64,
) -> Vec<Series> {
    if budget.generation != Some(generation) {
        budget.generation = Some(generation);
        rename_moved(mine, timings, budget, options, cluster, directory);
    }
    // Each key's buckets, one lookup a key; the keys not decided yet apart.
    let mut counted: Vec<(usize, usize, &(PeerKey, PeerCounts), bool)> =
        Vec::with_capacity(mine.len());
    let mut new: Vec<&(PeerKey, PeerCounts)> = Vec::new();
    for entry in mine {
        match budget.keys.get(&entry.0) {
            Some(KeyState {
                decided: Some(d),
                offset,
            }) => counted.push((d.bucket, d.timed, entry, offset.is_some())),
            _ => new.push(entry),
        }
    }
    // The busiest first, then by key: the same map gives the same decisions.
    new.sort_by(|(ka, va), (kb, vb)| vb.events().cmp(&va.events()).then(ka.cmp(kb)));
    for entry in new {
        let key = &entry.0;
        let role = if key.role == CLIENT {
            "client"
        } else {
            "server"
        };
        // Undecided keys wait, counting in the kernel, for a later collection.
        let Some((peer, kind)) = resolve(address(key), options, cluster, directory, wait) else {
            continue;
        };
        let named = (peer.clone(), kind);
        let named_now = named.clone();
        let other = Bucket {
            role,
            port: None,
            peer: "other".into(),
            kind: "other",
        };
        let mut timed = other.clone();
        let bucket =
            if budget.named.contains(&named) || budget.named.len() < options.peers_per_namespace {
                budget.named.insert(named.clone());
                if budget.timed.contains(&named) || budget.timed.len() < options.histogram_peers {
                    budget.timed.insert(named);
                    timed = Bucket {
                        role,
                        port: None,
                        peer: peer.clone(),
                        kind,
                    };
                }
                Bucket {
                    role,
                    port: Some(key.port),
                    peer,
                    kind,
                }
            } else {
                other
            };
        let (bucket, timed) = (budget.bucket_id(bucket), budget.bucket_id(timed));
        let state = budget.keys.entry(*key).or_default();
        state.decided = Some(Decided {
            bucket,
            timed,
            name: named_now,
        });
        counted.push((bucket, timed, entry, state.offset.is_some()));
    }
    let mut sums: Vec<Option<PeerCounts>> = vec![None; budget.bucket_list.len()];
    let mut timed: Vec<Option<PeerTiming>> = vec![None; budget.bucket_list.len()];
    for (bucket, timed_bucket, (key, counts), moved) in counted {
        let offset = if moved {
            budget.keys.get(key).and_then(|s| s.offset.as_ref())
        } else {
            None
        };
        let c = offset.map_or(*counts, |(o, _)| counts.since(o));
        sums[bucket].get_or_insert_default().add(&c);
        if let Some(t) = timings.get(key) {
            let t = offset.map_or(*t, |(_, o)| t.since(o));
            timed[timed_bucket].get_or_insert_default().add(&t);
        }
    }
    add_retired(&mut budget.retired, &mut sums, PeerCounts::add);
    add_retired(&mut budget.retired_timed, &mut timed, PeerTiming::add);
    let n = METRICS.len();
    let mut out = Vec::new();
    for &id in budget.bucket_ids.values() {
        let (Some(Some(t)), Some(b)) = (timed.get(id), budget.bucket_list.get(id)) else {
            continue;
        };
        for (metric, counts, sum_us) in [
            (CONNECT_LATENCY, &t.connect, t.connect_sum_us),
            (RTT, &t.rtt, t.rtt_sum_us),
        ] {
            if counts.iter().any(|n| *n > 0) {
                let h = Histogram {
                    bounds: &LATENCY_BOUNDS,
                    counts: exported(counts),
                    sum: sum_us as f64 / 1e6,
                };
                out.push(Series::histogram(n, metric, h, b.labels.clone()));
            }
        }
    }
    for &id in budget.bucket_ids.values() {
        let (Some(Some(c)), Some(b)) = (sums.get(id), budget.bucket_list.get(id)) else {
            continue;
        };
        out.push(Series::only(n, CONNECTIONS, c.opened, b.labels.clone()));
        for (reason, v) in [
            ("refused", c.refused),
            ("timeout", c.timeout),
            ("reset", c.reset),
            ("other", c.other),
        ] {
            if v > 0 {
                let mut l = Vec::with_capacity(b.labels.len() + 1);
                l.extend_from_slice(&b.labels);
                l.push(("reason", reason.into()));
                out.push(Series::only(n, FAILURES, v, l));
            }
        }
        if c.retransmits > 0 {
            out.push(Series::only(
                n,
                RETRANSMITS,
                c.retransmits,
                b.labels.clone(),
            ));
        }
        for (labels, resets, bytes) in [
            (&b.transmit, c.resets_sent, c.bytes_sent),
            (&b.receive, c.resets_received, c.bytes_received),
        ] {
            if resets > 0 {
                out.push(Series::only(n, RESETS, resets, labels.clone()));
            }
            out.push(Series::only(n, BYTES, bytes, labels.clone()));
        }
    }
    out
}

impl Build for Peers {
    const NAME: &'static str = "peers";
    const SCOPE: Scope = Scope::Pod;
    const METRICS: &'static [MetricDef] = METRICS;
    type Options = PeersOptions;

    fn new(options: PeersOptions) -> Result<Self> {
        Ok(Self {
            options,
            loaded: None,
        })
    }
}

impl Probe for Peers {
    fn prerequisites(&self, node: &Node) -> Result<(), String> {
        let btf = &node.options.btf_path;
        if btf.exists() {
            Ok(())
        } else {
            Err(format!(
                "no kernel BTF ({}): the peer counter cannot attach",
                btf.display()
            ))
        }
    }

    fn start(&mut self, node: &Node) -> Result<()> {
        let counter = PeerCounter::load(&node.kernel_btf, self.options.follow_translations)?;
        tracing::info!(probe = "peers", "peer counter attached");
        if self.options.follow_translations
            && let Some(e) = counter.translations_error()
        {
            tracing::warn!(
                probe = "peers",
                error = %e,
                "connections to translated addresses (ClusterIPs) are counted by the address \
                 only, not by backend"
            );
        }
        let translations = match counter.translations_error() {
            None => "conntrack",
            Some(_) if !self.options.follow_translations => "off",
            Some(_) => "unavailable",
        };
        self.loaded = Some(Loaded {
            translations,
            counter: Mutex::new(counter),
            read: RwLock::new(Read::default()),
            budgets: Mutex::new(HashMap::new()),
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
        let read = loaded.read.read().unwrap_or_else(|e| e.into_inner());
        read.fills.clone()
    }

    /// Reads the map once, and forgets what belongs to namespaces that are gone: their keys
    /// leave the map, their budgets go.
    fn prepare(&self, collection: &Collection) {
        let Some(loaded) = &self.loaded else { return };
        let mut counter = loaded.counter.lock().unwrap_or_else(|e| e.into_inner());
        let mut read = loaded.read.write().unwrap_or_else(|e| e.into_inner());
        let r = &mut *read;
        Directory::refresh(
            loaded.objects.as_deref(),
            &mut r.directory,
            &mut r.directory_version,
            (&loaded.node_name, collection),
        );
        loaded.naming.directory_changed(r.directory.as_ref());
        let gone = |k: &PeerKey| k.netns != 0 && collection.is_gone(u64::from(k.netns));
        match counter.read().and_then(|r| Ok((r, counter.timings()?))) {
            Ok(((mut entries, peers_fill), (mut timings, timings_fill))) => {
                let mut gone_keys: Vec<PeerKey> =
                    entries.iter().map(|(k, _)| *k).filter(gone).collect();
                gone_keys.extend(timings.iter().map(|(k, _)| *k).filter(gone));
                if !gone_keys.is_empty() {
                    counter.remove(&gone_keys);
                    let gone_keys: HashSet<PeerKey> = gone_keys.into_iter().collect();
                    entries.retain(|(k, _)| !gone_keys.contains(k));
                    timings.retain(|(k, _)| !gone_keys.contains(k));
                }
                read.error = None;
                // By namespace, so that each namespace's collection finds its own in a range.
                entries.sort_unstable_by_key(|(k, _)| k.netns);
                read.entries = entries;
                // Refilled in place: a fresh map of ~10,000 timings (~250 bytes each) was a
                // fresh mapping's page faults at every collection.
                read.timings.clear();
                read.timings.extend(timings);
                read.fills = vec![peers_fill, timings_fill];
            }
            Err(e) => read.error = Some(format!("{e:#}")),
        }
        match counter.backends() {
            Ok((mut backends, fill)) => {
                let gone: Vec<BackendKey> = backends
                    .iter()
                    .map(|(k, _)| *k)
                    .filter(|k| gone(&k.peer))
                    .collect();
                if !gone.is_empty() {
                    counter.remove_backends(&gone);
                    let gone: HashSet<BackendKey> = gone.into_iter().collect();
                    backends.retain(|(k, _)| !gone.contains(k));
                }
                backends.sort_unstable_by_key(|(k, _)| k.peer.netns);
                read.backends = backends;
                if read.error.is_none() {
                    read.fills.push(fill);
                }
            }
            Err(e) => {
                read.error.get_or_insert(format!("{e:#}"));
            }
        }
        // After the read, from its keys (a second walk of the map only for them would cost as
        // many syscalls as there are keys): what the walks add to the maps (RTT samples,
        // bytes) is read by the next collection.
        let mut connections: HashMap<u64, Walk> = HashMap::new();
        for (k, c) in &read.entries {
            let w = connections.entry(u64::from(k.netns)).or_default();
            w.opened += c.opened;
            w.closed += c.closed;
        }
        let uncounted = read.fills.first().map_or(0, |f| f.uncounted);
        if uncounted != read.uncounted {
            // Connections may have opened uncounted: walk every namespace again.
            read.uncounted = uncounted;
            read.walks.clear();
        }
        sample_namespaces(
            &mut counter,
            &mut read,
            collection,
            &connections,
            self.options.sample_budget,
        );
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
            .ok_or_else(|| anyhow!("the peer counter is not attached"))?;
        let (inode, is_node) = (src.inode(), src.is_node());
        let read = loaded.read.read().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = &read.error {
            return Err(anyhow!("{e}"));
        }
        let mine: Vec<&(PeerKey, PeerCounts)> =
            of_namespace(&read.entries, inode, is_node, |k| k.netns).collect();
        let generation = loaded.naming.of(src.cluster());
        let budget = Arc::clone(
            loaded
                .budgets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(inode)
                .or_default(),
        );
        let mut budget = budget.lock().unwrap_or_else(|e| e.into_inner());
        let cluster = src.cluster().map(|c| c.as_ref());
        let mut out = series_for(
            &mine,
            &read.timings,
            &mut budget,
            &self.options,
            cluster,
            read.directory.as_ref(),
            loaded.attached.elapsed() < SYNC_WAIT,
            generation,
        );
        let backends: Vec<&(BackendKey, BackendCounts)> =
            of_namespace(&read.backends, inode, is_node, |k| k.peer.netns).collect();
        out.extend(backend_series(
            &backends,
            &mut budget,
            &self.options,
            cluster,
            read.directory.as_ref(),
            loaded.attached.elapsed() < SYNC_WAIT,
            generation,
        ));
        let listeners = listeners::parse(&src.tcp_listeners()?)?;
        out.extend(listener_series(
            &listeners,
            &mut budget,
            self.options.listeners_per_namespace,
        ));
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
                vec![("translations", loaded.translations.into())],
            ));
        }
        Ok(out)
    }
}

/// The entries of namespace `inode` in `entries` (sorted by namespace), and for the node's
/// own also those of namespace 0 (counted where the namespace was not known).
fn of_namespace<K, V>(
    entries: &[(K, V)],
    inode: u64,
    is_node: bool,
    netns: impl Fn(&K) -> u32,
) -> impl Iterator<Item = &(K, V)> {
    let range = |n: u64| {
        let start = entries.partition_point(|(k, _)| u64::from(netns(k)) < n);
        let end = entries.partition_point(|(k, _)| u64::from(netns(k)) <= n);
        &entries[start..end]
    };
    let unknown = if is_node && inode != 0 { range(0) } else { &[] };
    range(inode).iter().chain(unknown)
}

/// Runs the sampling iterator in the namespaces of this collection that hold open
/// connections with a role (`connections`: each namespace's, as just read; see
/// `Walk::needed`), taking turns within `budget`: an RTT sample of each open connection, and
/// the bytes and retransmits it has so far. At least one namespace is sampled per collection
/// when any needs it. A namespace that vanished since discovery is skipped.
fn sample_namespaces(
    counter: &mut PeerCounter,
    read: &mut Read,
    collection: &Collection,
    connections: &HashMap<u64, Walk>,
    budget: Duration,
) {
    read.walks.retain(|inode, _| !collection.is_gone(*inode));
    let uncounted = read.uncounted > 0;
    let mut turn: Vec<&(u64, Option<std::path::PathBuf>)> = collection
        .namespaces
        .iter()
        .filter(|(inode, _)| {
            connections
                .get(inode)
                .is_some_and(|w| w.needed(uncounted, read.walks.get(inode).copied()))
        })
        .collect();
    turn.sort_by_key(|(inode, _)| *inode);
    let start = turn.partition_point(|(inode, _)| *inode <= read.cursor);
    turn.rotate_left(start);
    let began = Instant::now();
    let mut error = None;
    for (i, (inode, path)) in turn.into_iter().enumerate() {
        if i > 0 && began.elapsed() >= budget {
            break;
        }
        read.cursor = *inode;
        let result = match path {
            None => counter.sample(None),
            Some(p) => match std::fs::File::open(p) {
                Ok(ns) => counter.sample(Some(&ns)),
                Err(_) => continue, // gone since discovery
            },
        };
        match result {
            Ok(open) => {
                read.walks.insert(*inode, open);
            }
            Err(e) => error = Some(format!("{e:#}")),
        }
    }
    if error.is_some() && error != read.sample_error {
        tracing::warn!(
            probe = "peers",
            error = error.as_deref().unwrap_or_default(),
            "sampling a namespace's sockets failed: there, RTT and bytes are counted at close only"
        );
    }
    read.sample_error = error;
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpf::SERVER;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    fn directory(
        service: Service,
        slice: EndpointSlice,
        node: Option<k8s_openapi::api::core::v1::Node>,
    ) -> Directory {
        Directory::new(&objects::Directory {
            services: vec![Arc::new(service)],
            slices: vec![Arc::new(slice)],
            nodes: node.into_iter().map(Arc::new).collect(),
            pods: Vec::new(),
        })
    }

    fn key(role: u8, port: u16, addr: &str) -> PeerKey {
        let ip: IpAddr = addr.parse().unwrap();
        let (family, addr) = match ip {
            IpAddr::V4(v4) => {
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&v4.octets());
                (4, a)
            }
            IpAddr::V6(v6) => (6, v6.octets()),
        };
        PeerKey {
            netns: 1,
            port,
            role,
            family,
            addr,
        }
    }

    fn opened(n: u64) -> PeerCounts {
        PeerCounts {
            opened: n,
            ..Default::default()
        }
    }

    fn render(series: &[Series]) -> Vec<String> {
        series
            .iter()
            .map(|s| {
                let labels: Vec<String> =
                    s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let (i, v) = s
                    .values
                    .iter()
                    .enumerate()
                    .find_map(|(i, v)| v.map(|v| (i, v)))
                    .unwrap();
                format!("{} {} {v}", METRICS[i].name, labels.join(","))
            })
            .collect()
    }

    #[test]
    fn addresses_resolve_to_loopback_networks_or_themselves() {
        let nets: BTreeMap<String, Vec<IpNet>> = [
            ("vpc".to_string(), vec!["10.0.0.0/8".parse().unwrap()]),
            ("dns".to_string(), vec!["10.96.0.10/32".parse().unwrap()]),
        ]
        .into();
        let options = PeersOptions {
            networks: nets,
            ..Default::default()
        };
        let r =
            |a: &str| resolve(address(&key(CLIENT, 53, a)), &options, None, None, true).unwrap();
        assert_eq!(r("127.0.0.1"), ("loopback".into(), "loopback"));
        assert_eq!(r("::1"), ("loopback".into(), "loopback"));
        assert_eq!(r("10.1.2.3"), ("vpc".into(), "network"));
        assert_eq!(r("10.96.0.10"), ("dns".into(), "network"));
        assert_eq!(r("::ffff:10.96.0.10"), ("dns".into(), "network"));
        assert_eq!(r("192.0.2.7"), ("192.0.2.7".into(), "address"));
        assert_eq!(r("2001:db8::7"), ("2001:db8::7".into(), "address"));
    }

    #[test]
    fn peers_past_the_budget_are_other_and_decisions_stick() {
        let options = PeersOptions {
            peers_per_namespace: 2,
            ..Default::default()
        };
        let mut budget = Budget::default();
        let e1 = [
            (key(CLIENT, 80, "192.0.2.1"), opened(5)),
            (key(CLIENT, 443, "192.0.2.1"), opened(1)),
            (key(CLIENT, 80, "192.0.2.2"), opened(9)),
            (key(CLIENT, 80, "192.0.2.3"), opened(2)),
            (
                key(SERVER, 8080, "192.0.2.4"),
                PeerCounts {
                    opened: 3,
                    reset: 1,
                    ..Default::default()
                },
            ),
        ];
        let mine: Vec<&(PeerKey, PeerCounts)> = e1.iter().collect();
        let connections = |series: &[Series]| -> Vec<String> {
            render(series)
                .into_iter()
                .filter(|l| l.starts_with("netexporter_peer_connection"))
                .collect()
        };
        assert_eq!(
            connections(&series_for(
                &mine,
                &HashMap::new(),
                &mut budget,
                &options,
                None,
                None,
                false,
                0
            )),
            [
                "netexporter_peer_connections_total role=client,peer=other,peer_kind=other 2",
                "netexporter_peer_connections_total role=client,server.port=80,peer=192.0.2.1,peer_kind=address,network.peer.address=192.0.2.1 5",
                "netexporter_peer_connections_total role=client,server.port=80,peer=192.0.2.2,peer_kind=address,network.peer.address=192.0.2.2 9",
                "netexporter_peer_connections_total role=client,server.port=443,peer=192.0.2.1,peer_kind=address,network.peer.address=192.0.2.1 1",
                "netexporter_peer_connections_total role=server,peer=other,peer_kind=other 3",
                "netexporter_peer_connection_failures_total role=server,peer=other,peer_kind=other,reason=reset 1",
            ]
        );
        // Later, 192.0.2.3 gets busier than everyone: it stays in `other`, whose counter
        // only grows; a new port of a named peer is that peer's.
        let e2 = [
            (key(CLIENT, 80, "192.0.2.1"), opened(5)),
            (key(CLIENT, 443, "192.0.2.1"), opened(1)),
            (key(CLIENT, 80, "192.0.2.2"), opened(9)),
            (key(CLIENT, 80, "192.0.2.3"), opened(50)),
            (key(CLIENT, 22, "192.0.2.2"), opened(1)),
        ];
        let mine: Vec<&(PeerKey, PeerCounts)> = e2.iter().collect();
        let got = connections(&series_for(
            &mine,
            &HashMap::new(),
            &mut budget,
            &options,
            None,
            None,
            false,
            0,
        ));
        assert!(
            got.contains(
                &"netexporter_peer_connections_total role=client,peer=other,peer_kind=other 50"
                    .to_string()
            ),
            "{got:#?}"
        );
        assert!(got.contains(&"netexporter_peer_connections_total role=client,server.port=22,peer=192.0.2.2,peer_kind=address,network.peer.address=192.0.2.2 1".to_string()), "{got:#?}");
    }

    #[test]
    fn translated_connections_are_named_by_service_and_backend_and_fold_past_the_budget() {
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "shop", "name": "api"},
            "spec": {"clusterIP": "10.96.0.10"}
        }))
        .unwrap();
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "shop", "name": "api-x1", "labels": {"kubernetes.io/service-name": "api"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.244.7.5"], "targetRef": {"kind": "Pod", "name": "api-7c9d8f6b5d-x2x9k"}},
                {"addresses": ["10.244.7.6"], "targetRef": {"kind": "Pod", "name": "api-7c9d8f6b5d-b2b9k"}}
            ]
        }))
        .unwrap();
        let dir = directory(service, slice, None);
        let view = ClusterView {
            synced: true,
            ..Default::default()
        };
        let backend = |to: &str, port: u16| {
            let to = key(CLIENT, 0, to);
            BackendKey {
                peer: key(CLIENT, 80, "10.96.0.10"),
                backend: to.addr,
                backend_port: port,
                pad: [0; 6],
            }
        };
        let counts = |opened, refused| BackendCounts {
            opened,
            refused,
            ..Default::default()
        };
        // Two replicas of one Deployment: one series, their sum.
        let entries = [
            (backend("10.244.7.5", 8080), counts(3, 0)),
            (backend("10.244.7.6", 8080), counts(2, 1)),
            (backend("10.244.9.9", 8080), counts(1, 0)),
        ];
        let mine: Vec<_> = entries.iter().collect();
        let options = PeersOptions {
            peers_per_namespace: 1,
            ..Default::default()
        };
        let mut budget = Budget::default();
        let out = render(&backend_series(
            &mine,
            &mut budget,
            &options,
            Some(&view),
            Some(&dir),
            true,
            0,
        ));
        let labels = "role=client,server.port=80,peer=shop/Service/api,peer_kind=service,backend=shop/Deployment/api,backend_kind=workload";
        let other = "role=client,peer=other,peer_kind=other,backend=other,backend_kind=other";
        assert_eq!(
            out,
            [
                format!("netexporter_peer_backend_connections_total {other} 1"),
                format!("netexporter_peer_backend_connections_total {labels} 5"),
                format!(
                    "netexporter_peer_backend_connection_failures_total {labels},reason=refused 1"
                ),
            ]
        );
        // Decisions stick: the pair past the budget stays other when it is the busiest.
        let entries = [
            (backend("10.244.7.5", 8080), counts(3, 0)),
            (backend("10.244.9.9", 8080), counts(100, 0)),
        ];
        let mine: Vec<_> = entries.iter().collect();
        let out = render(&backend_series(
            &mine,
            &mut budget,
            &options,
            Some(&view),
            Some(&dir),
            true,
            0,
        ));
        assert_eq!(
            out,
            [
                format!("netexporter_peer_backend_connections_total {other} 100"),
                format!("netexporter_peer_backend_connections_total {labels} 3"),
            ]
        );
        // The backend 10.244.7.6 reused by a Pod of another workload (this node's, so the
        // cluster view names it): its key moves; the Deployment's series keeps what it had.
        let reused = ClusterView {
            synced: true,
            pods: vec![crate::inventory::PodInfo {
                uid: "u".into(),
                namespace: "shop".into(),
                name: "cache-0".into(),
                host_network: false,
                ips: vec!["10.244.7.6".parse().unwrap()],
                excluded: false,
                labels: Default::default(),
                workload: "StatefulSet/cache".into(),
            }],
            ..Default::default()
        };
        let mut budget = Budget::default();
        let run = |entries: &[(BackendKey, BackendCounts)],
                   view: &ClusterView,
                   generation,
                   budget: &mut Budget| {
            let mine: Vec<_> = entries.iter().collect();
            let options = PeersOptions::default();
            render(&backend_series(
                &mine,
                budget,
                &options,
                Some(view),
                Some(&dir),
                true,
                generation,
            ))
        };
        let first = [
            (backend("10.244.7.5", 8080), counts(3, 0)),
            (backend("10.244.7.6", 8080), counts(2, 0)),
        ];
        assert_eq!(
            run(&first, &view, 1, &mut budget),
            [format!(
                "netexporter_peer_backend_connections_total {labels} 5"
            )]
        );
        let later = [
            (backend("10.244.7.5", 8080), counts(3, 0)),
            (backend("10.244.7.6", 8080), counts(4, 0)),
        ];
        let cache = "role=client,server.port=80,peer=shop/Service/api,peer_kind=service,backend=shop/StatefulSet/cache,backend_kind=workload";
        assert_eq!(
            run(&later, &reused, 2, &mut budget),
            [
                format!("netexporter_peer_backend_connections_total {labels} 7"),
                format!("netexporter_peer_backend_connections_total {cache} 0"),
            ]
        );
        let after = [
            (backend("10.244.7.5", 8080), counts(3, 0)),
            (backend("10.244.7.6", 8080), counts(5, 0)),
        ];
        assert_eq!(
            run(&after, &reused, 2, &mut budget),
            [
                format!("netexporter_peer_backend_connections_total {labels} 7"),
                format!("netexporter_peer_backend_connections_total {cache} 1"),
            ]
        );
    }

    /// With every Pod watched: a Pod of another node by its controller, before what its
    /// name or the Service it backs say; not a hostNetwork one, not a finished one.
    #[test]
    fn pods_of_other_nodes_are_named_by_their_controller_when_every_pod_is_watched() {
        let pod = |name: &str, ip: &str, owner: Option<(&str, &str)>, extra: serde_json::Value| {
            let mut j = serde_json::json!({
                "metadata": {"namespace": "batch", "name": name, "uid": name},
                "spec": {"containers": []},
                "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
            });
            if let Some((kind, owner)) = owner {
                j["metadata"]["ownerReferences"] = serde_json::json!([
                    {"apiVersion": "apps/v1", "kind": kind, "name": owner, "uid": "u", "controller": true}
                ]);
            }
            json_merge(&mut j, extra);
            let pod = serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(j).unwrap();
            Arc::new(crate::inventory::kubernetes::pod_info(&pod).unwrap())
        };
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "batch", "name": "q-x1", "labels": {"kubernetes.io/service-name": "q"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.7.9"], "targetRef": {"kind": "Pod", "name": "handmade"}}]
        }))
        .unwrap();
        let dir = Directory::new(&objects::Directory {
            services: Vec::new(),
            slices: vec![Arc::new(slice)],
            nodes: Vec::new(),
            pods: vec![
                pod(
                    "worker-x2x9k",
                    "10.244.7.5",
                    Some(("DaemonSet", "worker")),
                    serde_json::json!({}),
                ),
                pod(
                    "handmade",
                    "10.244.7.9",
                    Some(("Job", "reindex-29170680")),
                    serde_json::json!({}),
                ),
                pod(
                    "agent",
                    "10.0.1.7",
                    Some(("DaemonSet", "agent")),
                    serde_json::json!({"spec": {"hostNetwork": true}}),
                ),
                pod(
                    "done",
                    "10.244.7.8",
                    Some(("Job", "once")),
                    serde_json::json!({"status": {"phase": "Succeeded"}}),
                ),
            ],
        });
        let view = ClusterView {
            synced: true,
            ..Default::default()
        };
        let options = PeersOptions::default();
        let r = |a: &str| resolve(a.parse().unwrap(), &options, Some(&view), Some(&dir), true);
        assert_eq!(
            r("10.244.7.5"),
            Some(("batch/DaemonSet/worker".into(), "workload"))
        );
        // The Pod's controller, not the Service its EndpointSlice names it by.
        assert_eq!(
            r("10.244.7.9"),
            Some(("batch/CronJob/reindex".into(), "workload"))
        );
        assert_eq!(r("10.0.1.7"), Some(("10.0.1.7".into(), "address")));
        assert_eq!(r("10.244.7.8"), Some(("10.244.7.8".into(), "address")));
    }

    fn json_merge(into: &mut serde_json::Value, from: serde_json::Value) {
        match (into, from) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    json_merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    #[test]
    fn services_and_backends_of_other_nodes_are_named_and_the_rest_is_external() {
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "shop", "name": "api"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"]}
        }))
        .unwrap();
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "shop", "name": "api-x1", "labels": {"kubernetes.io/service-name": "api"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.244.7.5"], "targetRef": {"kind": "Pod", "name": "api-7c9d8f6b5d-x2x9k"}},
                {"addresses": ["10.244.8.6"], "targetRef": {"kind": "Pod", "name": "db-0"}},
                {"addresses": ["10.244.9.7"], "targetRef": {"kind": "Pod", "name": "handmade"}},
                {"addresses": ["10.0.1.7"], "targetRef": {"kind": "Pod", "name": "agent-x7k2p"}}
            ]
        }))
        .unwrap();
        // Another node; a hostNetwork Pod on it backs the Service from the node's address.
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n2"},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "10.0.1.7"},
                {"type": "ExternalIP", "address": "203.0.113.7"},
                {"type": "Hostname", "address": "n2"}
            ]}
        }))
        .unwrap();
        let dir = directory(service, slice, Some(node));
        let view = ClusterView {
            synced: true,
            ..Default::default()
        };
        let options = PeersOptions {
            cluster_networks: vec!["10.0.0.0/8".parse().unwrap()],
            ..Default::default()
        };
        let r = |a: &str, o: &PeersOptions| {
            resolve(a.parse().unwrap(), o, Some(&view), Some(&dir), true).unwrap()
        };
        assert_eq!(
            r("10.96.0.10", &options),
            ("shop/Service/api".into(), "service")
        );
        assert_eq!(
            r("10.244.7.5", &options),
            ("shop/Deployment/api".into(), "workload")
        );
        assert_eq!(
            r("10.244.8.6", &options),
            ("shop/StatefulSet/db".into(), "workload")
        );
        assert_eq!(
            r("10.244.9.7", &options),
            ("shop/Service/api".into(), "service")
        );
        let by_pod = PeersOptions {
            pod_names: true,
            ..options.clone()
        };
        assert_eq!(r("10.244.9.7", &by_pod), ("shop/handmade".into(), "pod"));
        // Another node by its internal and external addresses, also where a hostNetwork Pod
        // backs a Service from it.
        assert_eq!(r("10.0.1.7", &options), ("n2".into(), "node"));
        assert_eq!(r("203.0.113.7", &options), ("n2".into(), "node"));
        // Inside the cluster's ranges but unknown: an address; outside: external.
        assert_eq!(r("10.244.3.3", &options), ("10.244.3.3".into(), "address"));
        assert_eq!(r("198.51.100.1", &options), ("external".into(), "external"));
        assert_eq!(
            r("198.51.100.1", &PeersOptions::default()),
            ("198.51.100.1".into(), "address")
        );
        // Until the directory is listed, a Kubernetes address waits.
        assert_eq!(
            resolve(
                "198.51.100.1".parse().unwrap(),
                &options,
                Some(&view),
                None,
                true
            ),
            None
        );
        let unlisted = Directory::default();
        assert_eq!(
            resolve(
                "198.51.100.1".parse().unwrap(),
                &options,
                Some(&view),
                Some(&unlisted),
                true
            ),
            None
        );
        // This node's own addresses are the node, after Pods and Services (a hostNetwork Pod
        // has the node's address), before networks.
        let mut dir = dir;
        dir.node = Some((
            "n1".into(),
            HashSet::from_iter(["10.0.0.4".parse().unwrap(), "fd00::4".parse().unwrap()]),
        ));
        let with_net = PeersOptions {
            networks: [("vpc".to_string(), vec!["10.0.0.0/16".parse().unwrap()])].into(),
            ..options.clone()
        };
        let r = |a: &str, o: &PeersOptions| {
            resolve(a.parse().unwrap(), o, Some(&view), Some(&dir), true).unwrap()
        };
        assert_eq!(r("10.0.0.4", &with_net), ("n1".into(), "node"));
        assert_eq!(r("fd00::4", &with_net), ("n1".into(), "node"));
        assert_eq!(r("10.0.0.5", &with_net), ("vpc".into(), "network"));
        assert_eq!(
            r("10.96.0.10", &with_net),
            ("shop/Service/api".into(), "service")
        );
        assert_eq!(
            workload_of_pod_name("web-5d8f7c9b4-abcde"),
            None,
            "vowels are never generated"
        );
        assert_eq!(
            workload_of_pod_name("web-5d8f7c9b4-zxcvb"),
            Some("Deployment/web".into())
        );
        assert_eq!(
            workload_of_pod_name("kafka-12"),
            Some("StatefulSet/kafka".into())
        );
    }

    #[test]
    fn kernel_buckets_fold_into_the_exported_ones() {
        for (j, b) in LATENCY_BOUNDS.iter().enumerate() {
            assert_eq!(*b, f64::from(1u32 << (2 * j + 6)) / 1e6);
        }
        // Each kernel bucket lands in the exported bucket that holds its whole range.
        let kernel_bound = |i: usize| f64::from(1u32 << (i + 4)) / 1e6;
        for i in 0..BUCKETS {
            let mut one = [0u64; BUCKETS];
            one[i] = 1;
            let j = exported(&one).iter().position(|n| *n == 1).unwrap();
            if i + 1 < BUCKETS {
                let upper = LATENCY_BOUNDS.get(j).copied().unwrap_or(f64::INFINITY);
                let lower = if j == 0 { 0.0 } else { LATENCY_BOUNDS[j - 1] };
                assert!(
                    kernel_bound(i) <= upper && kernel_bound(i) > lower,
                    "{i} -> {j}"
                );
            } else {
                assert_eq!(j, LATENCY_BOUNDS.len(), "the kernel's +Inf is +Inf");
            }
        }
        assert_eq!(METRICS[CONNECT_LATENCY].bounds, &LATENCY_BOUNDS);
        assert_eq!(METRICS[RTT].kind, crate::probes::Kind::Histogram);
    }

    #[test]
    fn histograms_sum_the_keys_of_a_peer_and_appear_once_observed() {
        let mut t1 = PeerTiming::default();
        t1.connect[3] = 2;
        t1.connect_sum_us = 250;
        t1.rtt[2] = 1;
        t1.rtt_sum_us = 50;
        let mut t2 = PeerTiming::default();
        t2.rtt[2] = 4;
        t2.rtt_sum_us = 200;
        let e = [
            (key(CLIENT, 80, "192.0.2.1"), opened(9)),
            (key(CLIENT, 81, "192.0.2.1"), opened(2)),
            (key(SERVER, 8080, "192.0.2.1"), opened(4)),
            (key(CLIENT, 443, "192.0.2.9"), opened(1)),
        ];
        let timings: HashMap<PeerKey, PeerTiming> =
            HashMap::from_iter([(e[0].0, t1), (e[1].0, t1), (e[2].0, t2), (e[3].0, t2)]);
        let mine: Vec<&(PeerKey, PeerCounts)> = e.iter().collect();
        let options = PeersOptions {
            histogram_peers: 1,
            ..Default::default()
        };
        let out = series_for(
            &mine,
            &timings,
            &mut Budget::default(),
            &options,
            None,
            None,
            false,
            0,
        );
        let histograms: Vec<(String, usize, u64, f64)> = out
            .iter()
            .flat_map(|s| {
                s.histograms.iter().map(move |(i, h)| {
                    assert_eq!(s.label("server.port"), None, "histograms are per peer");
                    (
                        format!("{}:{}", s.label("role").unwrap(), s.label("peer").unwrap()),
                        *i,
                        h.count(),
                        h.sum,
                    )
                })
            })
            .collect();
        // The busiest peer's ports add up; the peer past the budget is `other`.
        assert_eq!(
            histograms,
            [
                ("client:192.0.2.1".to_string(), CONNECT_LATENCY, 4, 0.0005),
                ("client:192.0.2.1".to_string(), RTT, 2, 0.0001),
                ("client:other".to_string(), RTT, 4, 0.0002),
                ("server:192.0.2.1".to_string(), RTT, 4, 0.0002),
            ]
        );
    }

    #[test]
    fn a_namespace_finds_its_keys_and_the_node_also_those_of_no_namespace() {
        let entries: Vec<(u32, char)> = vec![(0, 'a'), (3, 'b'), (5, 'c'), (5, 'd'), (7, 'e')];
        let of = |inode, is_node| -> String {
            of_namespace(&entries, inode, is_node, |k| *k)
                .map(|(_, v)| *v)
                .collect()
        };
        assert_eq!(of(5, false), "cd");
        assert_eq!(of(3, true), "ba");
        assert_eq!(of(3, false), "b");
        assert_eq!(of(4, false), "");
        assert_eq!(of(7, false), "e");
        assert_eq!(of(u64::from(u32::MAX) + 1, false), "");
    }

    #[test]
    fn a_namespace_is_walked_only_while_it_holds_open_connections() {
        let w = |opened, closed| Walk { opened, closed };
        // Connections open now: walk, whatever the last walk found.
        assert!(w(7, 5).needed(false, Some(0)));
        assert!(w(7, 5).needed(false, None));
        // All closed: nothing to sample, even just after connections opened and closed.
        assert!(!w(7, 7).needed(false, None));
        assert!(!w(7, 7).needed(false, Some(3)));
        // More closed than opened: an open went uncounted; one may still be open.
        assert!(w(3, 4).needed(false, Some(0)));
        // The map lost events: a namespace not walked yet, or whose last walk found open
        // connections, is walked, however its counts look.
        assert!(w(7, 7).needed(true, None));
        assert!(w(7, 7).needed(true, Some(2)));
        assert!(!w(7, 7).needed(true, Some(0)));
    }

    #[test]
    fn listeners_sum_per_port_and_ports_past_the_budget_are_other() {
        let l = |cookie, port, queue, drops| Listener {
            port,
            queue,
            limit: 128,
            drops,
            cookie,
        };
        let mut budget = Budget::default();
        let render = |series: Vec<Series>| -> Vec<String> {
            series
                .iter()
                .map(|s| {
                    let v: Vec<String> = s.values.iter().flatten().map(|v| v.to_string()).collect();
                    format!("{} {}", s.label("server.port").unwrap(), v.join(" "))
                })
                .collect()
        };
        let first = [
            l(1, 8080, 1, 0),
            l(2, 8080, 2, 5),
            l(3, 22, 0, 0),
            l(4, 9090, 0, 1),
            l(5, 9091, 0, 2),
        ];
        assert_eq!(
            render(listener_series(&first, &mut budget, 2)),
            ["other 0 256 3", "22 0 128 0", "8080 3 256 5"]
        );
        // A port seen first keeps its series; a new one is other. A listener that closed
        // (2 of 8080, 4 of other) leaves its drops in its series: neither goes back.
        let later = [
            l(1, 8080, 0, 1),
            l(3, 22, 0, 0),
            l(6, 1, 4, 0),
            l(5, 9091, 0, 2),
        ];
        assert_eq!(
            render(listener_series(&later, &mut budget, 2)),
            ["other 4 256 3", "22 0 128 0", "8080 0 128 6"]
        );
        // A port whose listeners were all replaced keeps its series and its count; a series
        // without listeners ends (opened again later, it starts from zero).
        let last = [l(7, 8080, 0, 0)];
        assert_eq!(
            render(listener_series(&last, &mut budget, 2)),
            ["8080 0 128 6"]
        );
        assert!(render(listener_series(&[], &mut budget, 2)).is_empty());
        assert!(budget.retired_drops.is_empty() && budget.listeners.is_empty());
    }

    #[test]
    fn retransmits_and_resets_appear_when_counted_bytes_always() {
        let options = PeersOptions::default();
        let e = [
            (key(CLIENT, 80, "192.0.2.1"), opened(1)),
            (
                key(SERVER, 8080, "192.0.2.2"),
                PeerCounts {
                    opened: 2,
                    retransmits: 3,
                    resets_sent: 1,
                    bytes_sent: 1000,
                    bytes_received: 20,
                    ..Default::default()
                },
            ),
        ];
        let mine: Vec<&(PeerKey, PeerCounts)> = e.iter().collect();
        assert_eq!(
            render(&series_for(
                &mine,
                &HashMap::new(),
                &mut Budget::default(),
                &options,
                None,
                None,
                false,
                0
            )),
            [
                "netexporter_peer_connections_total role=client,server.port=80,peer=192.0.2.1,peer_kind=address,network.peer.address=192.0.2.1 1",
                "netexporter_peer_bytes_total role=client,server.port=80,peer=192.0.2.1,peer_kind=address,network.peer.address=192.0.2.1,direction=transmit 0",
                "netexporter_peer_bytes_total role=client,server.port=80,peer=192.0.2.1,peer_kind=address,network.peer.address=192.0.2.1,direction=receive 0",
                "netexporter_peer_connections_total role=server,server.port=8080,peer=192.0.2.2,peer_kind=address,network.peer.address=192.0.2.2 2",
                "netexporter_peer_retransmits_total role=server,server.port=8080,peer=192.0.2.2,peer_kind=address,network.peer.address=192.0.2.2 3",
                "netexporter_peer_resets_total role=server,server.port=8080,peer=192.0.2.2,peer_kind=address,network.peer.address=192.0.2.2,direction=transmit 1",
                "netexporter_peer_bytes_total role=server,server.port=8080,peer=192.0.2.2,peer_kind=address,network.peer.address=192.0.2.2,direction=transmit 1000",
                "netexporter_peer_bytes_total role=server,server.port=8080,peer=192.0.2.2,peer_kind=address,network.peer.address=192.0.2.2,direction=receive 20",
            ]
        );
    }

    #[test]
    fn pods_of_the_node_are_their_workloads_and_unknown_addresses_wait_for_the_view() {
        let pod = |name: &str, ip: &str, host_network: bool| crate::inventory::PodInfo {
            uid: name.into(),
            namespace: "shop".into(),
            name: name.into(),
            host_network,
            ips: vec![ip.parse().unwrap()],
            excluded: false,
            labels: Default::default(),
            workload: "Deployment/web".into(),
        };
        let mut view = ClusterView {
            pods: vec![
                pod("web-1", "10.244.0.5", false),
                pod("proxy", "192.0.2.10", true),
            ],
            synced: true,
            ..Default::default()
        };
        let options = PeersOptions::default();
        let listed = Directory {
            listed: true,
            ..Directory::default()
        };
        let r = |a: &str, view: &ClusterView, o: &PeersOptions| {
            resolve(a.parse().unwrap(), o, Some(view), Some(&listed), true)
        };
        assert_eq!(
            r("10.244.0.5", &view, &options),
            Some(("shop/Deployment/web".into(), "workload"))
        );
        let by_pod = PeersOptions {
            pod_names: true,
            ..Default::default()
        };
        assert_eq!(
            r("10.244.0.5", &view, &by_pod),
            Some(("shop/web-1".into(), "pod"))
        );
        // A hostNetwork Pod's address is its node's: not the Pod's.
        assert_eq!(
            r("192.0.2.10", &view, &options),
            Some(("192.0.2.10".into(), "address"))
        );
        view.synced = false;
        assert_eq!(
            r("192.0.2.99", &view, &options),
            None,
            "may be a Pod not known yet"
        );
        // Past the wait (an API that cannot be reached): an address, counted.
        assert_eq!(
            resolve(
                "192.0.2.99".parse().unwrap(),
                &options,
                Some(&view),
                None,
                false
            ),
            Some(("192.0.2.99".into(), "address"))
        );
        assert_eq!(
            r("127.0.0.1", &view, &options),
            Some(("loopback".into(), "loopback"))
        );
    }

    /// A Pod IP reused by another workload: what the key counted before stays with the old
    /// workload, what it counts after goes to the new one; neither series goes back. A Pod
    /// deleted without reuse keeps its name.
    #[test]
    fn a_reused_address_moves_to_its_new_workload_and_no_counter_goes_back() {
        let pod = |uid: &str, ip: &str, workload: &str| crate::inventory::PodInfo {
            uid: uid.into(),
            namespace: "shop".into(),
            name: uid.into(),
            host_network: false,
            ips: vec![ip.parse().unwrap()],
            excluded: false,
            labels: Default::default(),
            workload: workload.into(),
        };
        let view = |pods: Vec<crate::inventory::PodInfo>| ClusterView {
            pods,
            synced: true,
            ..Default::default()
        };
        let listed = Directory {
            listed: true,
            ..Directory::default()
        };
        let options = PeersOptions::default();
        let mut budget = Budget::default();
        // A key's cumulative reads: connections opened, RTT samples and their sum (us).
        type Read = (PeerKey, u64, u64, u64);
        let mut collect = |reads: &[Read], v: &ClusterView, generation| {
            let entries: Vec<(PeerKey, PeerCounts)> =
                reads.iter().map(|(k, n, ..)| (*k, opened(*n))).collect();
            let mine: Vec<_> = entries.iter().collect();
            let timings: HashMap<PeerKey, PeerTiming> = (reads.iter())
                .map(|(k, _, samples, sum)| {
                    let mut t = PeerTiming::default();
                    t.rtt[3] = *samples;
                    t.rtt_sum_us = *sum;
                    (*k, t)
                })
                .collect();
            let out = series_for(
                &mine,
                &timings,
                &mut budget,
                &options,
                Some(v),
                Some(&listed),
                false,
                generation,
            );
            let (timed, plain): (Vec<Series>, Vec<Series>) =
                out.into_iter().partition(|s| !s.histograms.is_empty());
            let mut lines: Vec<String> = render(&plain)
                .into_iter()
                .filter_map(|l| {
                    let l = l.strip_prefix(
                        "netexporter_peer_connections_total role=client,server.port=80,peer=shop/",
                    )?;
                    Some(l.replace(",peer_kind=workload", ""))
                })
                .collect();
            lines.extend(timed.iter().filter_map(|s| {
                let (_, h) = s.histograms.first()?;
                let peer = &s.labels.iter().find(|(k, _)| *k == "peer")?.1;
                Some(format!("rtt {peer} {} {}", h.count(), h.sum))
            }));
            lines.sort();
            lines
        };
        let (a, b) = (key(CLIENT, 80, "10.244.1.5"), key(CLIENT, 80, "10.244.1.6"));
        let both_a = view(vec![
            pod("a1", "10.244.1.5", "Deployment/a"),
            pod("a2", "10.244.1.6", "Deployment/a"),
        ]);
        assert_eq!(
            collect(&[(a, 3, 1, 100), (b, 1, 1, 100)], &both_a, 1),
            ["Deployment/a 4", "rtt shop/Deployment/a 2 0.0002"]
        );
        // a1 deleted, its IP given to b1 of Deployment/b. The collection that first sees the
        // new name moves the key: what it counted until this read stays with a.
        let reused = view(vec![
            pod("b1", "10.244.1.5", "Deployment/b"),
            pod("a2", "10.244.1.6", "Deployment/a"),
        ]);
        assert_eq!(
            collect(&[(a, 5, 2, 400), (b, 1, 1, 100)], &reused, 2),
            [
                "Deployment/a 6",
                "Deployment/b 0",
                "rtt shop/Deployment/a 3 0.0005"
            ]
        );
        // From then on the key counts for b; a keeps what it had, plus its other key's.
        assert_eq!(
            collect(&[(a, 7, 3, 700), (b, 2, 2, 300)], &reused, 2),
            [
                "Deployment/a 7",
                "Deployment/b 2",
                "rtt shop/Deployment/a 4 0.0007",
                "rtt shop/Deployment/b 1 0.0003"
            ]
        );
        // a2 deleted, its address not reused: its key keeps naming a (its connections were
        // a2's); a checked naming (generation 3) changes nothing else.
        let gone = view(vec![pod("b1", "10.244.1.5", "Deployment/b")]);
        assert_eq!(
            collect(&[(a, 8, 3, 700), (b, 3, 2, 300)], &gone, 3),
            [
                "Deployment/a 8",
                "Deployment/b 3",
                "rtt shop/Deployment/a 4 0.0007",
                "rtt shop/Deployment/b 1 0.0003"
            ]
        );
        // b1 deleted and its address given back to a Pod of a: the key moves back; a's
        // series never goes back (what a had from the key is still in it), b's has no key
        // left and goes.
        let back = view(vec![pod("a3", "10.244.1.5", "Deployment/a")]);
        assert_eq!(
            collect(&[(a, 9, 3, 700), (b, 3, 2, 300)], &back, 4),
            ["Deployment/a 8", "rtt shop/Deployment/a 4 0.0007"]
        );
    }
}
