//! One collection: discover the targets, read every enabled probe in every target (in
//! parallel over targets), and return a [`Snapshot`] that the telemetry callbacks read.
//!
//! Concurrent requests (scrapes, the OTLP push) coalesce: a request that arrives while a
//! collection runs waits for that one instead of starting another.
//!
//! Each collection is also a tree of `tracing` spans under [`TRACE`] (`collection` >
//! `discover`, `netns` > `probe`, `assemble`), exported when trace export is on
//! (`docs/tracing.md`); off, they are disabled callsites. They are parented explicitly: the
//! collection runs on a blocking thread and scoped workers, and no span is ever entered.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use opentelemetry::{KeyValue, StringValue, Value};
use tracing::Level;
use tracing::field::Empty;

use crate::inventory::{ClusterView, Inventory, Target};
use crate::probes::{self, Probe, Registration, Scope};
use crate::sources::collection::NodeSocket;
use crate::sources::netns::NetnsSession;
use crate::sources::{Collection, Node, TargetSources};

/// The attribute naming the node on every series: its semantic-convention name (OTLP); the
/// Prometheus format calls it `k8s_node`.
pub const NODE_ATTRIBUTE: &str = "k8s.node.name";

/// The `tracing` target of a collection's spans (`docs/tracing.md`).
pub const TRACE: &str = "net_exporter::trace";

/// Name under which namespace discovery and entering report, beside the probes.
pub const NETNS_COLLECTOR: &str = "netns";

/// A series ready to be observed: its attributes (its target's, shared by the target's
/// series, then its own labels) and its values.
#[derive(Debug, Clone)]
pub struct ObservedSeries {
    /// The target's (`k8s.pod.name`, `netns` ...; the node's name for node-scope metrics).
    pub base: Arc<[KeyValue]>,
    /// The probe's labels of the series.
    pub labels: probes::Labels,
    pub values: Vec<Option<u64>>,
    pub histograms: Vec<(usize, probes::Histogram)>,
}

impl ObservedSeries {
    /// A series whose attributes are all in `attrs` (tests, benchmarks).
    pub fn with_attrs(
        attrs: Vec<KeyValue>,
        values: Vec<Option<u64>>,
        histograms: Vec<(usize, probes::Histogram)>,
    ) -> Self {
        Self {
            base: attrs.into(),
            labels: probes::Labels::default(),
            values,
            histograms,
        }
    }

    /// Every attribute as OpenTelemetry has them: the target's, then the series' own.
    pub fn attrs(&self) -> Vec<KeyValue> {
        let own = self
            .labels
            .iter()
            .map(|(k, v)| KeyValue::new(*k, v.clone()));
        self.base.iter().cloned().chain(own).collect()
    }

    /// The value of attribute `key` (a target's or the series' own), if it has it.
    pub fn attr(&self, key: &str) -> Option<String> {
        let base = self.base.iter().find(|kv| kv.key.as_str() == key);
        base.map(|kv| kv.value.as_str().into_owned()).or_else(|| {
            let own = self.labels.iter().find(|(k, _)| *k == key);
            own.map(|(_, v)| v.as_str().to_string())
        })
    }
}

/// How one collector (a probe, or namespace discovery) did in one collection.
#[derive(Debug, Clone)]
pub struct CollectorStatus {
    pub name: &'static str,
    pub success: bool,
    /// Time spent in this collector, summed over targets.
    pub duration: Duration,
    /// Failures since the agent started (a failure = one target where it failed).
    pub errors_total: u64,
}

/// The result of one collection.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Series by probe, indexed like [`probes::PROBES`]; disabled probes have none.
    pub series: Vec<Vec<ObservedSeries>>,
    /// How each collector did; unavailable probes are not collectors and are not listed.
    pub collectors: Vec<CollectorStatus>,
    /// Every enabled probe, and why it is unavailable on this node (`None`: available).
    pub availability: Vec<(&'static str, Option<String>)>,
    /// Attributes every node-level self-metric carries (`k8s.node.name`: `k8s_node` in the
    /// Prometheus format).
    pub node_attrs: Vec<KeyValue>,
    pub targets: u64,
    /// Series (data points) of the last collection, and those left out past the ceiling since
    /// the agent started.
    pub series_count: u64,
    pub series_dropped_total: u64,
    /// The Kubernetes view used (Kubernetes mode only).
    pub cluster: Option<Arc<crate::inventory::ClusterView>>,
    /// Collections run since the agent started, this one included.
    pub collections_total: u64,
    pub started: Option<Instant>,
    /// The BPF programs the agent holds, as the kernel accounts them, and whether the kernel
    /// counts their runs now (`kernel.bpf_stats_enabled`).
    pub bpf_programs: Vec<crate::sources::bpf_programs::BpfProgram>,
    pub bpf_stats_enabled: Option<bool>,
    /// The fill of the agent's BPF maps that can fill up, as this collection read them.
    pub bpf_maps: Vec<crate::sources::bpf_programs::BpfMapFill>,
}

/// Reads what a probe saw in one target.
struct TargetResult {
    target: Target,
    session: Option<NetnsSession>,
    session_error: Option<String>,
    /// Per enabled probe (same order as `Collector::probes`): `None` when not applicable
    /// (unavailable, or node-scope in a Pod's namespace).
    results: Vec<Option<(anyhow::Result<Vec<probes::Series>>, Duration)>>,
}

type SharedCollection = Shared<BoxFuture<'static, Arc<Snapshot>>>;
/// A target waiting for a worker, with its session from the previous collection if any.
type WorkItem = Mutex<Option<(Target, Option<NetnsSession>)>>;

pub struct Collector {
    inventory: Box<dyn Inventory>,
    node: Node,
    /// The enabled probes. Locked for a whole collection: collections never overlap.
    probes: Mutex<Vec<Slot>>,
    /// Indices in `PROBES` of the enabled probes, in order.
    enabled: Vec<usize>,
    procfs: PathBuf,
    node_name: String,
    workers: usize,
    max_series: usize,
    sessions: Mutex<HashMap<u64, NetnsSession>>,
    node_socket: NodeSocket,
    collections: std::sync::atomic::AtomicU64,
    state: Mutex<State>,
    inflight: Mutex<Option<SharedCollection>>,
}

/// `collection:` in the configuration file: how a collection runs and which namespaces it
/// reads.
#[derive(
    serde::Deserialize, serde::Serialize, schemars::JsonSchema, Debug, Clone, PartialEq, Eq,
)]
#[serde(deny_unknown_fields, default)]
pub struct CollectionOptions {
    /// Threads that read namespaces in parallel [default: the number of CPUs, at most 4].
    pub workers: Option<usize>,
    /// Ceiling on the series of one collection, enough for 250 Pods with their interfaces
    /// several times over; namespaces past it are left out whole, counted and logged once.
    pub max_series: usize,
    /// Standalone: only namespaces whose name matches one of these shell-style patterns
    /// (`*`, `?`, `[abc]`) [default: all].
    pub include_netns: Vec<String>,
    /// Standalone: namespaces whose name matches one of these are left out.
    pub exclude_netns: Vec<String>,
    /// Kubernetes: only Pods matching this label selector (`app=web,tier!=db`) [default:
    /// all]. A Pod annotated `net-exporter.io/exclude: "true"` is left out either way.
    pub pod_label_selector: Option<String>,
}

impl Default for CollectionOptions {
    fn default() -> Self {
        Self {
            workers: None,
            max_series: 60_000,
            include_netns: Vec::new(),
            exclude_netns: Vec::new(),
            pod_label_selector: None,
        }
    }
}

impl CollectionOptions {
    /// Threads, series ceiling and target filter, checked.
    pub fn resolve(
        &self,
    ) -> Result<(usize, usize, crate::inventory::TargetFilter), crate::component::SectionError>
    {
        use crate::component::SectionError;
        let workers = match self.workers {
            Some(0) => {
                return Err(SectionError::new(
                    "collection.workers",
                    "must be at least 1",
                ));
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
        };
        if self.max_series == 0 {
            return Err(SectionError::new(
                "collection.max_series",
                "must be at least 1",
            ));
        }
        let filter = crate::inventory::TargetFilter::new(
            &self.include_netns,
            &self.exclude_netns,
            self.pod_label_selector.as_deref(),
        )
        .map_err(|(field, problem)| SectionError::new(field, problem))?;
        Ok((workers, self.max_series, filter))
    }
}

/// What the collector needs besides the inventory.
pub struct Settings {
    pub node: Node,
    /// The enabled probes, built from their options, in registry order.
    pub probes: Vec<(&'static Registration, Box<dyn Probe>)>,
    pub node_name: String,
    pub workers: usize,
    pub max_series: usize,
}

/// An enabled probe and where it stands on this node.
struct Slot {
    /// Its index in `PROBES`.
    index: usize,
    registration: &'static Registration,
    probe: Box<dyn Probe>,
    status: Status,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Status {
    /// Its prerequisites were not asked yet.
    New,
    /// This node lacks what it needs; asked again at each collection.
    Unavailable(String),
    Started,
    /// Its setup failed: it fails at every collection with this error.
    Failed(String),
}

impl Slot {
    /// Asks the prerequisites of a probe not yet started, and starts it when they hold. Says
    /// so in the log when where it stands changes.
    fn settle(&mut self, node: &Node) {
        if !matches!(self.status, Status::New | Status::Unavailable(_)) {
            return;
        }
        let name = self.registration.name;
        match self.probe.prerequisites(node) {
            Err(why) => {
                if self.status != Status::Unavailable(why.clone()) {
                    tracing::info!(probe = name, reason = %why, "probe unavailable on this node");
                    self.status = Status::Unavailable(why);
                }
            }
            Ok(()) => {
                if matches!(self.status, Status::Unavailable(_)) {
                    tracing::info!(probe = name, "probe available now");
                }
                self.status = match self.probe.start(node) {
                    Ok(()) => Status::Started,
                    Err(e) => {
                        // Verifier logs span many lines; one line keeps the log greppable.
                        let e = format!("{e:#}").replace('\n', " | ");
                        tracing::warn!(probe = name, error = %e, "probe could not start; it fails at every collection");
                        Status::Failed(e)
                    }
                };
            }
        }
    }

    /// Whether the probe has a say in this collection (it is available).
    fn available(&self) -> bool {
        matches!(self.status, Status::Started | Status::Failed(_))
    }
}

#[derive(Default)]
struct State {
    series_dropped_total: u64,
    over_ceiling: bool,
    errors_total: HashMap<&'static str, u64>,
    /// Last error logged per collector, so that a persisting problem is logged once.
    last_error: HashMap<&'static str, String>,
    /// The names of the agent's BPF programs, by program id.
    bpf_names: std::collections::BTreeMap<u32, String>,
}

impl Collector {
    pub fn new(settings: Settings, inventory: Box<dyn Inventory>) -> Self {
        let slots: Vec<Slot> = settings
            .probes
            .into_iter()
            .map(|(registration, probe)| Slot {
                index: probes::PROBES
                    .iter()
                    .position(|p| std::ptr::eq(p, registration))
                    .unwrap_or(0),
                registration,
                probe,
                status: Status::New,
            })
            .collect();
        Self {
            inventory,
            procfs: settings.node.procfs.clone(),
            node: settings.node,
            enabled: slots.iter().map(|s| s.index).collect(),
            probes: Mutex::new(slots),
            node_name: settings.node_name,
            workers: settings.workers,
            max_series: settings.max_series,
            sessions: Mutex::new(HashMap::new()),
            node_socket: NodeSocket::default(),
            collections: std::sync::atomic::AtomicU64::new(0),
            state: Mutex::new(State::default()),
            inflight: Mutex::new(None),
        }
    }

    /// Starts every probe whose prerequisites hold (loading the BPF programs), ahead of the
    /// first collection: at start-up, before the rest of the agent (its telemetry pipelines,
    /// its server) takes its memory, so that the loaders' transient parses of the kernel's
    /// BTF (`sources::kernel_btf`) raise the process' peak as little as they can; the freed heap
    /// is handed back at once. Probes left unavailable are asked again at each collection.
    pub fn start_probes(&self) {
        let mut slots = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        for slot in slots.iter_mut() {
            slot.settle(&self.node);
        }
        drop(slots);
        release_freed_memory();
    }

    /// Where targets come from (the checks look at the same namespaces).
    pub fn inventory(&self) -> &dyn Inventory {
        self.inventory.as_ref()
    }

    /// The enabled probes, as indices in [`probes::PROBES`].
    pub fn enabled(&self) -> &[usize] {
        &self.enabled
    }

    /// A fresh snapshot: joins the collection in flight, or starts one.
    pub async fn collect(self: &Arc<Self>) -> Arc<Snapshot> {
        let fut = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            match inflight.as_ref() {
                Some(f) if f.peek().is_none() => f.clone(),
                _ => {
                    let me = Arc::clone(self);
                    let f = async move {
                        let me2 = Arc::clone(&me);
                        match tokio::task::spawn_blocking(move || me2.collect_blocking()).await {
                            Ok(s) => Arc::new(s),
                            Err(e) => {
                                tracing::error!(error = %e, "collection panicked");
                                Arc::new(me.failed_snapshot())
                            }
                        }
                    }
                    .boxed()
                    .shared();
                    *inflight = Some(f.clone());
                    f
                }
            }
        };
        fut.await
    }

    /// Runs one collection on the calling thread (and `workers` scoped threads).
    pub fn collect_blocking(&self) -> Snapshot {
        let started = Instant::now();
        let collection = self.collections.load(Ordering::Relaxed) + 1;
        let span = tracing::span!(
            target: TRACE,
            parent: None,
            Level::TRACE,
            "collection",
            collection = collection as i64,
            targets = Empty,
            series = Empty,
            "collectors.failed" = Empty,
        );
        let discover_span = tracing::span!(
            target: TRACE,
            parent: &span,
            Level::TRACE,
            "discover",
            targets = Empty
        );
        let discover_start = Instant::now();
        let (targets, discovery_error) = match self.inventory.discover() {
            Ok(t) => (t, None),
            Err(e) => (
                vec![Target {
                    inode: 0,
                    ns_path: None,
                    labels: vec![("k8s_node", self.node_name.clone())],
                }],
                Some(format!(
                    "namespace discovery failed, reading the node only: {e:#}"
                )),
            ),
        };
        let discover_time = discover_start.elapsed();
        if let Some(e) = &discovery_error {
            tracing::event!(target: TRACE, parent: &discover_span, Level::TRACE, error = %e);
        }
        discover_span.record("targets", targets.len() as i64);
        drop(discover_span);

        // Collections never overlap (concurrent requests share one): the probes are this
        // collection's until it ends.
        let mut slots = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        for slot in slots.iter_mut() {
            slot.settle(&self.node);
        }
        let shared = Collection::new(
            collection,
            targets
                .iter()
                .map(|t| (t.inode, t.ns_path.clone()))
                .collect(),
            discovery_error.is_none(),
            Arc::clone(&self.node_socket),
        );
        for slot in slots.iter().filter(|s| s.status == Status::Started) {
            slot.probe.prepare(&shared);
        }

        // Sessions of namespaces that are gone are closed now, which also releases the
        // namespace itself (an open session pins it).
        let mut sessions =
            std::mem::take(&mut *self.sessions.lock().unwrap_or_else(|e| e.into_inner()));
        sessions.retain(|ino, _| shared.is_live(*ino));

        let cluster = self.inventory.cluster();
        let work: Vec<WorkItem> = targets
            .into_iter()
            .map(|t| {
                let s = sessions.remove(&t.inode);
                Mutex::new(Some((t, s)))
            })
            .collect();
        let results: Mutex<Vec<(usize, TargetResult)>> = Mutex::new(Vec::with_capacity(work.len()));
        let next = AtomicUsize::new(0);
        let workers = self.workers.clamp(1, work.len().max(1));
        let reading = Reading {
            slots: &slots,
            collection: &shared,
            cluster: cluster.as_ref(),
            parent: &span,
        };
        // The workers report their spans where the calling thread does (the global subscriber
        // in the agent, a scoped one in tests).
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    let _dispatch = tracing::dispatcher::set_default(&dispatch);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(slot) = work.get(i) else { break };
                        let Some((target, session)) =
                            slot.lock().unwrap_or_else(|e| e.into_inner()).take()
                        else {
                            continue;
                        };
                        let r = self.read_target(target, session, &reading);
                        results
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((i, r));
                    }
                });
            }
        });
        let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
        results.sort_by_key(|(i, _)| *i);

        let assemble_span = tracing::span!(target: TRACE, parent: &span, Level::TRACE, "assemble");
        let snapshot = self.assemble(
            &slots,
            results.into_iter().map(|(_, r)| r),
            discovery_error,
            discover_time,
        );
        let mut bpf_maps: Vec<_> = slots.iter().flat_map(|s| s.probe.bpf_maps()).collect();
        if let Some(summaries) = self.node.socket_summaries_in_use() {
            bpf_maps.extend(summaries.bpf_maps());
        }
        drop(slots);
        drop(assemble_span);
        release_freed_memory();
        if !span.is_disabled() {
            span.record("targets", snapshot.targets as i64);
            span.record("series", snapshot.series_count as i64);
            let failed = snapshot.collectors.iter().filter(|c| !c.success).count();
            span.record("collectors.failed", failed as i64);
        }
        Snapshot {
            started: Some(started),
            cluster,
            collections_total: self.collections.fetch_add(1, Ordering::Relaxed) + 1,
            bpf_programs: self
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .bpf_programs(),
            bpf_stats_enabled: crate::sources::bpf_programs::stats_enabled(),
            bpf_maps,
            ..snapshot
        }
    }

    /// Reads every applicable probe in one target.
    fn read_target(
        &self,
        target: Target,
        session: Option<NetnsSession>,
        reading: &Reading,
    ) -> TargetResult {
        let span = tracing::span!(
            target: TRACE,
            parent: reading.parent,
            Level::TRACE,
            "netns",
            netns = Empty,
            "netns.inode" = target.inode as i64,
            "netns.node" = target.is_node(),
            "netns.session_opened" = session.is_none(),
            "netns.vanished" = Empty,
            "k8s.namespace.name" = Empty,
            "k8s.pod.name" = Empty,
            series = Empty,
        );
        if !span.is_disabled() {
            for (k, v) in &target.labels {
                let field = match *k {
                    "netns" => "netns",
                    "k8s_namespace" => "k8s.namespace.name",
                    "k8s_pod" => "k8s.pod.name",
                    _ => continue,
                };
                span.record(field, v.as_str());
            }
        }
        let mut result = TargetResult {
            results: Vec::with_capacity(reading.slots.len()),
            session: None,
            session_error: None,
            target,
        };
        let session = match session {
            Some(s) => Ok(s),
            None => match &result.target.ns_path {
                None => Ok(NetnsSession::open_own(&self.procfs)),
                Some(path) => NetnsSession::open_in(path, &self.procfs),
            },
        };
        let mut session = match session {
            Ok(s) => s,
            Err(e) => {
                let vanished = e
                    .root_cause()
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound);
                if vanished {
                    // It went away between discovery and now: not a failure, and it has no
                    // series in this collection.
                    tracing::debug!(target_labels = ?result.target.labels, "namespace vanished");
                    span.record("netns.vanished", true);
                } else {
                    let e = format!("{e:#}");
                    tracing::event!(target: TRACE, parent: &span, Level::TRACE, error = %e);
                    result.session_error = Some(e);
                }
                return result;
            }
        };
        let mut series = 0usize;
        {
            let is_node = result.target.is_node();
            let mut src = TargetSources::new(&mut session, &self.procfs, is_node)
                .with_inode(result.target.inode)
                .in_collection(reading.collection)
                .with_cluster(reading.cluster.cloned());
            for slot in reading.slots {
                if !slot.available() || (slot.registration.scope == Scope::Node && !is_node) {
                    result.results.push(None);
                    continue;
                }
                let probe_span = tracing::span!(
                    target: TRACE,
                    parent: &span,
                    Level::TRACE,
                    "probe",
                    probe = slot.registration.name,
                    series = Empty,
                );
                let t = Instant::now();
                let r = match &slot.status {
                    Status::Failed(e) => Err(anyhow::anyhow!("{e}")),
                    _ => slot.probe.collect(&mut src),
                };
                let took = t.elapsed();
                if !probe_span.is_disabled() {
                    match &r {
                        Ok(list) => {
                            let n = count_values(list);
                            series += n;
                            probe_span.record("series", n as i64);
                        }
                        Err(e) => {
                            let e = format!("{e:#}");
                            tracing::event!(target: TRACE, parent: &probe_span, Level::TRACE, error = %e);
                        }
                    }
                }
                drop(probe_span);
                result.results.push(Some((r, took)));
            }
        }
        span.record("series", series as i64);
        result.session = Some(session);
        result
    }

    fn assemble(
        &self,
        slots: &[Slot],
        results: impl Iterator<Item = TargetResult>,
        discovery_error: Option<String>,
        discover_time: Duration,
    ) -> Snapshot {
        let mut series: Vec<Vec<ObservedSeries>> = vec![Vec::new(); probes::PROBES.len()];
        let mut durations = vec![Duration::ZERO; slots.len()];
        let mut failures: Vec<Vec<String>> = vec![Vec::new(); slots.len()];
        let mut netns_failures: Vec<String> = discovery_error.into_iter().collect();
        let mut sessions = HashMap::new();
        let mut targets = 0;
        let node_attrs: Arc<[KeyValue]> =
            Arc::from([KeyValue::new(NODE_ATTRIBUTE, self.node_name.clone())]);
        let (mut series_total, mut dropped, mut dropped_targets) = (0usize, 0usize, 0usize);

        for r in results {
            targets += 1;
            let who = r
                .target
                .labels
                .iter()
                .find(|(k, _)| *k == "netns")
                .map_or_else(|| "node".to_string(), |(_, v)| v.clone());
            if let Some(e) = r.session_error {
                netns_failures.push(format!("{who}: {e}"));
            }
            // Shared label values: one allocation per target, not per series.
            let base: Arc<[KeyValue]> = r
                .target
                .labels
                .iter()
                .map(|(k, v)| {
                    KeyValue::new(
                        probes::attribute_name(k),
                        Value::String(StringValue::from(Arc::<str>::from(v.as_str()))),
                    )
                })
                .collect();
            // The series ceiling: a namespace whose series would pass it is left out whole
            // (never half a namespace); the node's own is always kept.
            let count: usize = r
                .results
                .iter()
                .flatten()
                .filter_map(|(res, _)| res.as_ref().ok())
                .flatten()
                .map(|s| s.points())
                .sum();
            if !r.target.is_node() && series_total + count > self.max_series {
                dropped += count;
                dropped_targets += 1;
                if let Some(s) = r.session {
                    sessions.insert(r.target.inode, s);
                }
                continue;
            }
            series_total += count;
            for (j, res) in r.results.into_iter().enumerate() {
                let Some((res, took)) = res else { continue };
                durations[j] += took;
                let slot = &slots[j];
                match res {
                    Ok(list) => {
                        let attrs_base = if slot.registration.scope == Scope::Node {
                            &node_attrs
                        } else {
                            &base
                        };
                        series[slot.index].extend(list.into_iter().map(|s| ObservedSeries {
                            base: Arc::clone(attrs_base),
                            labels: s.labels,
                            values: s.values,
                            histograms: s.histograms,
                        }));
                    }
                    Err(e) => failures[j].push(format!("{who}: {e:#}")),
                }
            }
            if let Some(s) = r.session {
                sessions.insert(r.target.inode, s);
            }
        }
        *self.sessions.lock().unwrap_or_else(|e| e.into_inner()) = sessions;

        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.series_dropped_total += dropped as u64;
        match (dropped_targets > 0, state.over_ceiling) {
            (true, false) => tracing::warn!(
                ceiling = self.max_series,
                namespaces = dropped_targets,
                series = dropped,
                "series ceiling reached: namespaces past it are left out (collection.max_series)"
            ),
            (false, true) => tracing::info!("back under the series ceiling"),
            _ => {}
        }
        state.over_ceiling = dropped_targets > 0;
        let mut collectors = Vec::with_capacity(slots.len() + 1);
        collectors.push(state.record(NETNS_COLLECTOR, discover_time, &netns_failures));
        for (j, slot) in slots.iter().enumerate() {
            if slot.available() {
                collectors.push(state.record(slot.registration.name, durations[j], &failures[j]));
            }
        }
        Snapshot {
            series,
            collectors,
            availability: availability(slots),
            node_attrs: node_attrs.to_vec(),
            targets,
            series_count: series_total as u64,
            series_dropped_total: state.series_dropped_total,
            cluster: None,
            collections_total: 0,
            started: None,
            bpf_programs: Vec::new(),
            bpf_stats_enabled: None,
            bpf_maps: Vec::new(),
        }
    }

    fn failed_snapshot(&self) -> Snapshot {
        let slots = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let failed = ["collection panicked".to_string()];
        let mut collectors = vec![state.record(NETNS_COLLECTOR, Duration::ZERO, &failed)];
        for slot in slots.iter().filter(|s| s.available()) {
            collectors.push(state.record(slot.registration.name, Duration::ZERO, &failed));
        }
        Snapshot {
            series: vec![Vec::new(); probes::PROBES.len()],
            collectors,
            availability: availability(&slots),
            node_attrs: vec![KeyValue::new(NODE_ATTRIBUTE, self.node_name.clone())],
            targets: 0,
            series_count: 0,
            series_dropped_total: state.series_dropped_total,
            cluster: None,
            collections_total: self.collections.fetch_add(1, Ordering::Relaxed) + 1,
            started: None,
            bpf_programs: state.bpf_programs(),
            bpf_stats_enabled: crate::sources::bpf_programs::stats_enabled(),
            bpf_maps: Vec::new(),
        }
    }
}

/// What every target of one collection reads with.
struct Reading<'a> {
    slots: &'a [Slot],
    collection: &'a Collection,
    cluster: Option<&'a Arc<ClusterView>>,
    /// The collection's span.
    parent: &'a tracing::Span,
}

/// Each enabled probe, and why it is unavailable (`None`: available).
fn availability(slots: &[Slot]) -> Vec<(&'static str, Option<String>)> {
    slots
        .iter()
        .map(|s| {
            let why = match &s.status {
                Status::Unavailable(why) => Some(why.clone()),
                Status::New => Some("not checked yet".into()),
                Status::Started | Status::Failed(_) => None,
            };
            (s.registration.name, why)
        })
        .collect()
}

impl State {
    /// The agent's BPF programs as the kernel accounts them, names kept across collections.
    fn bpf_programs(&mut self) -> Vec<crate::sources::bpf_programs::BpfProgram> {
        crate::sources::bpf_programs::ours(&mut self.bpf_names)
    }

    /// Counts failures, logs a problem when it first appears or changes and when it clears.
    fn record(
        &mut self,
        name: &'static str,
        duration: Duration,
        failures: &[String],
    ) -> CollectorStatus {
        let total = self.errors_total.entry(name).or_insert(0);
        *total += failures.len() as u64;
        let errors_total = *total;
        match failures.first() {
            Some(first) => {
                let changed = self.last_error.get(name) != Some(first);
                if changed {
                    tracing::warn!(
                        collector = name,
                        failures = failures.len(),
                        error = %first,
                        "collector failed; its series are left out until it recovers"
                    );
                    self.last_error.insert(name, first.clone());
                }
            }
            None => {
                if self.last_error.remove(name).is_some() {
                    tracing::info!(collector = name, "collector recovered");
                }
            }
        }
        CollectorStatus {
            name,
            success: failures.is_empty(),
            duration,
            errors_total,
        }
    }
}

/// Data points (values present) of a probe's series, as `netexporter_series` counts them
/// (for the spans).
fn count_values(list: &[probes::Series]) -> usize {
    list.iter().map(|s| s.points()).sum()
}

/// Returns the heap memory a collection freed to the kernel. Without it, glibc keeps it:
/// namespace churn (3,000 namespaces in a minute, `integration/churn.rs`) left the agent's RSS
/// 26 MiB above its level before; a trim costs well under a millisecond here.
pub fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
