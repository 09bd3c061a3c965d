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

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use opentelemetry::{KeyValue, StringValue, Value};
use tracing::Level;
use tracing::field::Empty;

use crate::config::{Config, ProbeOptions};
use crate::inventory::{Inventory, Target};
use crate::probes::{self, Probe, Scope};
use crate::sources::TargetSources;
use crate::sources::netns::NetnsSession;
use crate::telemetry::traces::TARGET as TRACE;

/// Name under which namespace discovery and entering report, beside the probes.
pub const NETNS_COLLECTOR: &str = "netns";

/// A series ready to be observed: its full attribute set and its values.
#[derive(Debug, Clone)]
pub struct ObservedSeries {
    pub attrs: Vec<KeyValue>,
    pub values: Vec<Option<u64>>,
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
    pub collectors: Vec<CollectorStatus>,
    /// Attributes every node-level self-metric carries (`k8s_node`).
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
}

/// Reads what a probe saw in one target.
struct TargetResult {
    target: Target,
    session: Option<NetnsSession>,
    session_error: Option<String>,
    /// Per enabled probe (same order as `Collector::probes`): `None` when not applicable.
    results: Vec<Option<(anyhow::Result<Vec<probes::Series>>, Duration)>>,
}

type SharedCollection = Shared<BoxFuture<'static, Arc<Snapshot>>>;
/// A target waiting for a worker, with its session from the previous collection if any.
type WorkItem = Mutex<Option<(Target, Option<NetnsSession>)>>;

pub struct Collector {
    inventory: Box<dyn Inventory>,
    /// Enabled probes with their index in `PROBES`.
    probes: Vec<(usize, &'static dyn Probe)>,
    options: ProbeOptions,
    procfs: PathBuf,
    node_name: String,
    workers: usize,
    max_series: usize,
    sessions: Mutex<HashMap<u64, NetnsSession>>,
    collections: std::sync::atomic::AtomicU64,
    state: Mutex<State>,
    inflight: Mutex<Option<SharedCollection>>,
}

#[derive(Default)]
struct State {
    series_dropped_total: u64,
    over_ceiling: bool,
    errors_total: HashMap<&'static str, u64>,
    /// Last error logged per collector, so that a persisting problem is logged once.
    last_error: HashMap<&'static str, String>,
}

impl Collector {
    pub fn new(cfg: &Config, inventory: Box<dyn Inventory>) -> Self {
        // Probes that read the Kubernetes view do not exist outside a cluster.
        let in_cluster = inventory.cluster().is_some();
        let probes = probes::PROBES
            .iter()
            .enumerate()
            .filter(|(_, p)| cfg.probes.contains(&p.name()))
            .filter(|(_, p)| in_cluster || !p.needs_cluster())
            .map(|(i, p)| (i, *p))
            .collect();
        Self {
            inventory,
            probes,
            options: cfg.probe_options.clone(),
            procfs: cfg.procfs.clone(),
            node_name: cfg.node_name.clone(),
            workers: cfg.workers,
            max_series: cfg.collection.max_series,
            sessions: Mutex::new(HashMap::new()),
            collections: std::sync::atomic::AtomicU64::new(0),
            state: Mutex::new(State::default()),
            inflight: Mutex::new(None),
        }
    }

    /// Where targets come from (the checks look at the same namespaces).
    pub fn inventory(&self) -> &dyn Inventory {
        self.inventory.as_ref()
    }

    /// The enabled probes, with their index in [`probes::PROBES`].
    pub fn probes(&self) -> &[(usize, &'static dyn Probe)] {
        &self.probes
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

        // Sessions of namespaces that are gone are closed now, which also releases the
        // namespace itself (an open session pins it).
        let mut sessions =
            std::mem::take(&mut *self.sessions.lock().unwrap_or_else(|e| e.into_inner()));
        let live: HashSet<u64> = targets.iter().map(|t| t.inode).collect();
        sessions.retain(|ino, _| live.contains(ino));

        let cluster = self.inventory.cluster();
        let work: Vec<WorkItem> = targets
            .into_iter()
            .map(|t| {
                let s = sessions.remove(&t.inode);
                Mutex::new(Some((t, s)))
            })
            .collect();
        let results: Mutex<Vec<(usize, TargetResult)>> = Mutex::new(Vec::with_capacity(work.len()));
        // The node's namespace first, alone: probes with node-wide state (which devices are
        // veths to which Pod) set it there before any Pod is read.
        let mut first = 0;
        let node_first = work.first().is_some_and(|slot| {
            let item = slot.lock().unwrap_or_else(|e| e.into_inner());
            item.as_ref().is_some_and(|(t, _)| t.is_node())
        });
        if node_first
            && let Some(slot) = work.first()
            && let Some((target, session)) = slot.lock().unwrap_or_else(|e| e.into_inner()).take()
        {
            let r = self.read_target(target, session, collection, cluster.as_ref(), &span);
            results
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((0, r));
            first = 1;
        }
        let next = AtomicUsize::new(first);
        let workers = self.workers.clamp(1, work.len().max(1));
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(slot) = work.get(i) else { break };
                        let Some((target, session)) =
                            slot.lock().unwrap_or_else(|e| e.into_inner()).take()
                        else {
                            continue;
                        };
                        let r =
                            self.read_target(target, session, collection, cluster.as_ref(), &span);
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
        // Without a full discovery the live set is unknown: keep every probe's state.
        if discovery_error.is_none() {
            for (_, probe) in &self.probes {
                probe.after_collection(&live);
            }
        }

        let assemble_span = tracing::span!(target: TRACE, parent: &span, Level::TRACE, "assemble");
        let snapshot = self.assemble(
            results.into_iter().map(|(_, r)| r),
            discovery_error,
            discover_time,
        );
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
            ..snapshot
        }
    }

    /// Reads every applicable probe in one target; `parent`: the collection's span.
    fn read_target(
        &self,
        target: Target,
        session: Option<NetnsSession>,
        collection: u64,
        cluster: Option<&Arc<crate::inventory::ClusterView>>,
        parent: &tracing::Span,
    ) -> TargetResult {
        let span = tracing::span!(
            target: TRACE,
            parent: parent,
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
            results: Vec::with_capacity(self.probes.len()),
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
            let mut src = TargetSources::new(&mut session, &self.procfs, is_node);
            src.inode = result.target.inode;
            src.collection = collection;
            src.cluster = cluster.cloned();
            for (_, probe) in &self.probes {
                if (probe.scope() == Scope::Node && !is_node)
                    || (probe.needs_cluster() && cluster.is_none())
                {
                    result.results.push(None);
                    continue;
                }
                let probe_span = tracing::span!(
                    target: TRACE,
                    parent: &span,
                    Level::TRACE,
                    "probe",
                    probe = probe.name(),
                    series = Empty,
                );
                let t = Instant::now();
                let r = probe.collect(&mut src, &self.options);
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
        results: impl Iterator<Item = TargetResult>,
        discovery_error: Option<String>,
        discover_time: Duration,
    ) -> Snapshot {
        let mut series: Vec<Vec<ObservedSeries>> = vec![Vec::new(); probes::PROBES.len()];
        let mut durations = vec![Duration::ZERO; self.probes.len()];
        let mut failures: Vec<Vec<String>> = vec![Vec::new(); self.probes.len()];
        let mut netns_failures: Vec<String> = discovery_error.into_iter().collect();
        let mut sessions = HashMap::new();
        let mut targets = 0;
        let node_attrs = vec![KeyValue::new("k8s_node", self.node_name.clone())];
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
            let base: Vec<KeyValue> = r
                .target
                .labels
                .iter()
                .map(|(k, v)| {
                    KeyValue::new(
                        *k,
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
                .map(|s| s.values.iter().flatten().count())
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
                let (global, probe) = self.probes[j];
                match res {
                    Ok(list) => {
                        let attrs_base = if probe.scope() == Scope::Node {
                            &node_attrs
                        } else {
                            &base
                        };
                        series[global].extend(list.into_iter().map(|s| {
                            let mut attrs = attrs_base.clone();
                            if let Some((k, v)) = s.label {
                                attrs.push(KeyValue::new(k, v));
                            }
                            ObservedSeries {
                                attrs,
                                values: s.values,
                            }
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
        let mut collectors = Vec::with_capacity(self.probes.len() + 1);
        collectors.push(state.record(NETNS_COLLECTOR, discover_time, &netns_failures));
        for (j, (_, probe)) in self.probes.iter().enumerate() {
            collectors.push(state.record(probe.name(), durations[j], &failures[j]));
        }
        Snapshot {
            series,
            collectors,
            node_attrs,
            targets,
            series_count: series_total as u64,
            series_dropped_total: state.series_dropped_total,
            cluster: None,
            collections_total: 0,
            started: None,
        }
    }

    fn failed_snapshot(&self) -> Snapshot {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let failed = ["collection panicked".to_string()];
        let mut collectors = vec![state.record(NETNS_COLLECTOR, Duration::ZERO, &failed)];
        for (_, p) in &self.probes {
            collectors.push(state.record(p.name(), Duration::ZERO, &failed));
        }
        Snapshot {
            series: vec![Vec::new(); probes::PROBES.len()],
            collectors,
            node_attrs: vec![KeyValue::new("k8s_node", self.node_name.clone())],
            targets: 0,
            series_count: 0,
            series_dropped_total: state.series_dropped_total,
            cluster: None,
            collections_total: self.collections.fetch_add(1, Ordering::Relaxed) + 1,
            started: None,
        }
    }
}

impl State {
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
    list.iter().map(|s| s.values.iter().flatten().count()).sum()
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
