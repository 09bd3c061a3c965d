//! How a collection becomes telemetry. `/metrics` renders the probes' series straight from the
//! [`Snapshot`] (`prometheus::probe_families`) and the agent's own metrics from a small
//! MeterProvider; the OTLP push has a MeterProvider of its own whose observable instruments
//! read the current snapshot, the probes' included. Each export sets the snapshot, collects its
//! reader and encodes the result; the kernel is never read from a callback.

pub mod export;
pub mod histograms;
pub mod otlp;
pub mod prometheus;
pub mod traces;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{AsyncInstrument, Meter, MeterProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{
    InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Stream, Temporality,
};

use crate::collector::Snapshot;
use crate::probes::{self, Kind, MetricDef};

/// Series ceilings per instrument of the OTLP push (the SDK's default is 2000; past the
/// ceiling it folds series into one `otel.metric.overflow` series; `/metrics` has no such
/// ceiling, only `collection.max_series`). The SDK preallocates each instrument's map to its
/// ceiling, so they are sized to what a family can reach: Pod-scope families have one series
/// per namespace (4000 namespaces), netdev one per interface of every namespace, the peers',
/// listeners' and DNS resolvers' families many per namespace (docs/peers.md's arithmetic:
/// ~39,000 at a 250-Pod node's defaults).
pub const POD_SERIES_LIMIT: usize = 4_000;
pub const NETDEV_SERIES_LIMIT: usize = 16_000;
pub const PEER_SERIES_LIMIT: usize = 65_536;

/// The OTLP push's series ceiling of the instrument `name`.
fn series_limit(name: &str) -> usize {
    if name.starts_with("netexporter_netdev_") {
        NETDEV_SERIES_LIMIT
    } else if [
        "netexporter_peer_",
        "netexporter_listener_",
        "netexporter_dns_",
    ]
    .iter()
    .any(|p| name.starts_with(p))
    {
        PEER_SERIES_LIMIT
    } else {
        POD_SERIES_LIMIT
    }
}

/// Exporter failure counts, shown as `netexporter_export_failures_total`.
#[derive(Default, Debug)]
pub struct ExportStats {
    pub otlp_metrics_failures: AtomicU64,
    /// Event records that could not be exported (shared with the log sinks).
    pub otlp_logs_failures: Arc<AtomicU64>,
    pub loki_logs_failures: Arc<AtomicU64>,
    /// Spans that could not be exported (shared with the trace pipeline); `None`, and no
    /// series, while trace export is off.
    pub otlp_traces_failures: Option<Arc<AtomicU64>>,
}

/// What the events pipeline tells the metrics (`events::Events` implements it): telemetry
/// sits below events, which export through its OTLP plumbing.
pub trait EventStats: Send + Sync {
    /// Events emitted since start, by type.
    fn emitted(&self) -> Vec<(&'static str, u64)>;
    /// Each check that ran: whether it could run at its last run, and the problems it found.
    fn checks(&self) -> Vec<(&'static str, bool, u64)>;
    /// Each enabled check, and why it does not apply on this node (`None`: it does).
    fn check_availability(&self) -> Vec<(&'static str, Option<String>)>;
}

/// A `ManualReader` shared between the MeterProvider and the exporter that collects it.
#[derive(Debug, Clone)]
pub struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline)
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

pub struct Telemetry {
    /// The agent's own metrics for `/metrics`.
    provider: SdkMeterProvider,
    prometheus: SharedReader,
    /// Everything, for the OTLP push (when on).
    otlp: Option<(SdkMeterProvider, SharedReader)>,
    current: Arc<RwLock<Arc<Snapshot>>>,
    /// The kernel's histograms over OTLP (OTLP push on and a histogram metric enabled).
    histograms: Option<histograms::Replay>,
    /// Serializes "set the snapshot, collect a reader" so that callbacks of one collect all
    /// see the same snapshot.
    gate: Mutex<()>,
    /// What the next `/metrics` text is expected to take (the last one's size and a margin).
    exposition_size: AtomicUsize,
    pub export_stats: Arc<ExportStats>,
}

impl Telemetry {
    /// `enabled`: indices into [`probes::PROBES`] of the probes to register instruments for;
    /// `otlp_push`: whether a second provider is wanted for the OTLP push.
    pub fn new(
        resource: Resource,
        otlp_push: bool,
        enabled: &[usize],
        events: Option<Arc<dyn EventStats>>,
        export_stats: Arc<ExportStats>,
    ) -> Self {
        // LowMemory: the observable instruments cumulative, the synchronous histograms (the
        // kernel's, replayed for OTLP) delta; see `histograms`.
        let reader = || {
            SharedReader(Arc::new(
                ManualReader::builder()
                    .with_temporality(Temporality::LowMemory)
                    .build(),
            ))
        };
        let current = Arc::new(RwLock::new(Arc::new(Snapshot::default())));
        let prometheus = reader();
        let provider = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(prometheus.clone())
            .build();
        let meter = provider.meter("net-exporter");
        register_self_instruments(&meter, &current, &export_stats);
        if let Some(events) = &events {
            register_event_instruments(&meter, &current, Arc::clone(events));
        }
        let mut histograms = None;
        let otlp = otlp_push.then(|| {
            let otlp = reader();
            let provider = SdkMeterProvider::builder()
                .with_resource(resource)
                .with_reader(otlp.clone())
                .with_view(|i: &opentelemetry_sdk::metrics::Instrument| {
                    Stream::builder()
                        .with_cardinality_limit(series_limit(i.name()))
                        .build()
                        .ok()
                })
                .build();
            let meter = provider.meter("net-exporter");
            histograms = histograms::Replay::new(&meter, enabled);
            register_probe_instruments(&meter, &current, enabled);
            register_self_instruments(&meter, &current, &export_stats);
            if let Some(events) = events {
                register_event_instruments(&meter, &current, events);
            }
            (provider, otlp)
        });
        let telemetry = Self {
            provider,
            prometheus,
            otlp,
            current,
            histograms,
            gate: Mutex::new(()),
            exposition_size: AtomicUsize::new(0),
            export_stats,
        };
        // The SDK makes each instrument's first table at its series ceiling (4,000 or more
        // slots, ~256 KiB and up) and the first observations scatter over all its pages: at
        // 100 namespaces the first scrape made ~33 MiB resident for a moment, the agent's
        // memory peak (a collect drains an observable instrument's table and regrows it from
        // empty, so later collects never do). One collect now, before anything is observed,
        // drains them while their pages are still untouched.
        let empty = Arc::new(Snapshot::default());
        telemetry.collect(&telemetry.prometheus, Arc::clone(&empty));
        if let Some((_, otlp)) = &telemetry.otlp {
            telemetry.collect(otlp, empty);
        }
        telemetry
    }

    /// Renders `snapshot` in the text exposition format: the probes' series from the snapshot
    /// itself, the agent's own from the Prometheus reader collected over it.
    pub fn render_prometheus(&self, snapshot: Arc<Snapshot>) -> String {
        let rm = self.collect(&self.prometheus, Arc::clone(&snapshot));
        let capacity = self.exposition_size.load(Ordering::Relaxed);
        let text = prometheus::encode(&rm, &prometheus::probe_families(&snapshot), capacity);
        // A little over the last text's size: the next one is written without growing.
        self.exposition_size
            .store(text.len() + text.len() / 8, Ordering::Relaxed);
        text
    }

    /// Collects the OTLP reader over `snapshot` (`None` when OTLP push is off). Tell
    /// [`Telemetry::otlp_arrived`] how the push went.
    pub fn collect_otlp(&self, snapshot: Arc<Snapshot>) -> Option<ResourceMetrics> {
        let (_, reader) = self.otlp.as_ref()?;
        if let Some(h) = &self.histograms {
            h.record(&snapshot);
        }
        Some(self.collect(reader, snapshot))
    }

    /// Whether the push of the last [`Telemetry::collect_otlp`] arrived: histogram values that
    /// did not are sent again with the next push.
    pub fn otlp_arrived(&self, ok: bool) {
        if let Some(h) = &self.histograms {
            h.arrived(ok);
        }
    }

    fn collect(&self, reader: &SharedReader, snapshot: Arc<Snapshot>) -> ResourceMetrics {
        let gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        let previous = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|e| e.into_inner()),
            snapshot,
        );
        let mut rm = ResourceMetrics::default();
        if let Err(e) = reader.collect(&mut rm) {
            tracing::warn!(error = %e, "OpenTelemetry collect failed");
        }
        drop(gate);
        // Released with no lock held: the last reference to a snapshot of ~40,000 series
        // takes milliseconds to free, during which a push or a scrape would have waited.
        drop(previous);
        rm
    }

    pub fn shutdown(&self) {
        let otlp = self.otlp.as_ref().map(|(p, _)| p);
        for provider in std::iter::once(&self.provider).chain(otlp) {
            if let Err(e) = provider.shutdown() {
                tracing::debug!(error = %e, "meter provider shutdown");
            }
        }
    }
}

/// The agent's OpenTelemetry resource: its service, version and node, and the configured
/// attributes.
pub fn resource(
    service_name: &str,
    node_name: &str,
    attributes: &std::collections::BTreeMap<String, String>,
) -> Resource {
    let mut attrs = vec![
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("k8s.node.name", node_name.to_string()),
        KeyValue::new("host.name", node_name.to_string()),
    ];
    attrs.extend(
        attributes
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
    );
    Resource::builder_empty()
        .with_attributes(attrs)
        .with_service_name(service_name.to_string())
        .build()
}

fn read(current: &RwLock<Arc<Snapshot>>) -> Arc<Snapshot> {
    current.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn register_probe_instruments(
    meter: &Meter,
    current: &Arc<RwLock<Arc<Snapshot>>>,
    enabled: &[usize],
) {
    for &p in enabled {
        let probe = &probes::PROBES[p];
        for (m, def) in probe.metrics.iter().enumerate() {
            let current = Arc::clone(current);
            let observe = move |obs: &dyn AsyncInstrument<u64>| {
                let snap = read(&current);
                for s in snap.series.get(p).into_iter().flatten() {
                    if let Some(Some(v)) = s.values.get(m) {
                        obs.observe(*v, &s.attrs());
                    }
                }
            };
            match def.kind {
                Kind::Counter => {
                    meter
                        .u64_observable_counter(def.name)
                        .with_description(def.help)
                        .with_callback(observe)
                        .build();
                }
                Kind::Gauge => {
                    meter
                        .u64_observable_gauge(def.name)
                        .with_description(def.help)
                        .with_callback(observe)
                        .build();
                }
                // Not observable: see `histograms`.
                Kind::Histogram => {}
            }
        }
    }
}

/// The agent's own metrics, beside the probes'. Listed once here for registration and for
/// docs/metrics.md.
pub const SELF_METRICS: &[MetricDef] = crate::metrics![
    gauge "netexporter_scrape_collector_duration_seconds" "Time a collector spent in the last collection, summed over network namespaces. Labels: collector.",
    gauge "netexporter_scrape_collector_success" "1 if a collector succeeded in every network namespace in the last collection, else 0. Labels: collector.",
    counter "netexporter_scrape_collector_errors_total" "Failures of a collector, one per network namespace where it failed. Labels: collector.",
    gauge "netexporter_probe_available" "1 if an enabled probe can run on this node, 0 if the node lacks what it needs (label reason says what; asked again at each collection). Labels: probe, reason.",
    gauge "netexporter_targets" "Network namespaces read in the last collection, the node's own included.",
    counter "netexporter_collections_total" "Collections run; concurrent scrapes and pushes share one, so this can grow slower than the scrapes.",
    gauge "netexporter_build_info" "Always 1; the labels tell the version of the agent. Labels: version.",
    counter "netexporter_export_failures_total" "Exports that failed, by exporter and signal. Labels: exporter, signal.",
    gauge "netexporter_kubernetes_api_up" "Kubernetes mode: 1 while the watches of the node's Pods and Node are connected, 0 while the agent serves its last known view.",
    gauge "netexporter_kubernetes_pods" "Kubernetes mode: Pods of this node known from the API server.",
    gauge "netexporter_series" "Series (data points) of the last collection.",
    counter "netexporter_series_dropped_total" "Series left out because a collection passed collection.max_series (whole namespaces are left out).",
    counter "netexporter_events" "Events emitted, by type (label type).",
    gauge "netexporter_check_success" "1 if a configuration check could run at its last run, else 0 (label check).",
    gauge "netexporter_check_problems" "Problems a configuration check found at its last run (label check).",
    counter "netexporter_bpf_program_runs_total" "Runs of each BPF program the agent loaded, from the kernel's program statistics (bpftool prog show's run_cnt); they count only while kernel.bpf_stats_enabled is 1. Labels: program.",
    counter "netexporter_bpf_program_run_seconds_total" "Time each BPF program the agent loaded has run, from the kernel's program statistics (bpftool prog show's run_time_ns); counted only while kernel.bpf_stats_enabled is 1. Labels: program.",
    counter "netexporter_bpf_program_recursion_misses_total" "Runs of each BPF program the agent loaded that the kernel skipped because the program was already running on that CPU (bpftool prog show's recursion_misses; always counted, kernels 5.12 and later): each is an event the program never saw, so its counters are short by as many. Labels: program.",
    gauge "netexporter_bpf_stats_enabled" "1 while the kernel counts BPF program runs and run time (sysctl kernel.bpf_stats_enabled; costs every BPF program on the node two clock reads per run, so the operator chooses), else 0. Present while the agent holds BPF programs.",
    gauge "netexporter_bpf_map_entries" "Entries in each of the agent's BPF maps that can fill up, as the last collection read them. Labels: map.",
    gauge "netexporter_bpf_map_max_entries" "Capacity of each of the agent's BPF maps that can fill up (its max_entries in the kernel). Labels: map.",
    counter "netexporter_bpf_map_uncounted_total" "Events the agent's BPF programs could not count because the map was full, since the map was created (the program goes on; nothing else is lost). Labels: map.",
    gauge "netexporter_check_available" "1 if an enabled configuration check applies on this node, 0 if not (label reason says why, e.g. a Kubernetes check standalone). Labels: check, reason.",
];

fn map_attrs(snap: &Snapshot, m: &crate::sources::bpf_programs::BpfMapFill) -> Vec<KeyValue> {
    let mut a = snap.node_attrs.clone();
    a.push(KeyValue::new("map", m.map));
    a
}

fn program_attrs(snap: &Snapshot, p: &crate::sources::bpf_programs::BpfProgram) -> Vec<KeyValue> {
    let mut a = snap.node_attrs.clone();
    a.push(KeyValue::new("program", p.name.clone()));
    a
}

fn register_event_instruments(
    meter: &Meter,
    current: &Arc<RwLock<Arc<Snapshot>>>,
    events: Arc<dyn EventStats>,
) {
    let c = Arc::clone(current);
    let e = Arc::clone(&events);
    let def = self_metric("netexporter_events");
    meter
        .u64_observable_counter(def.name)
        .with_description(def.help)
        .with_callback(move |obs| {
            let snap = read(&c);
            for (kind, n) in e.emitted() {
                let mut a = snap.node_attrs.clone();
                a.push(KeyValue::new("type", kind));
                obs.observe(n, &a);
            }
        })
        .build();
    let c = Arc::clone(current);
    let e = Arc::clone(&events);
    let def = self_metric("netexporter_check_available");
    meter
        .u64_observable_gauge(def.name)
        .with_description(def.help)
        .with_callback(move |obs| {
            let snap = read(&c);
            for (check, why) in e.check_availability() {
                let mut a = snap.node_attrs.clone();
                a.push(KeyValue::new("check", check));
                match why {
                    None => obs.observe(1, &a),
                    Some(why) => {
                        a.push(KeyValue::new("reason", why));
                        obs.observe(0, &a);
                    }
                }
            }
        })
        .build();
    for (name, pick) in [
        ("netexporter_check_success", 0usize),
        ("netexporter_check_problems", 1usize),
    ] {
        let c = Arc::clone(current);
        let e = Arc::clone(&events);
        let def = self_metric(name);
        meter
            .u64_observable_gauge(def.name)
            .with_description(def.help)
            .with_callback(move |obs| {
                let snap = read(&c);
                for (check, ok, problems) in e.checks() {
                    let mut a = snap.node_attrs.clone();
                    a.push(KeyValue::new("check", check));
                    obs.observe(if pick == 0 { u64::from(ok) } else { problems }, &a);
                }
            })
            .build();
    }
}

/// A callback that observes values of one snapshot.
type ObserveSnapshot = Box<dyn Fn(&Snapshot, &dyn AsyncInstrument<u64>) + Send + Sync>;

fn self_metric(name: &str) -> &'static MetricDef {
    SELF_METRICS
        .iter()
        .find(|m| m.name == name)
        .unwrap_or(&SELF_METRICS[0])
}

fn register_self_instruments(
    meter: &Meter,
    current: &Arc<RwLock<Arc<Snapshot>>>,
    export_stats: &Arc<ExportStats>,
) {
    let collector_attrs = |snap: &Snapshot, name: &'static str| {
        let mut a = snap.node_attrs.clone();
        a.push(KeyValue::new("collector", name));
        a
    };
    let gauge = |name: &'static str, f: ObserveSnapshot| {
        let c = Arc::clone(current);
        let def = self_metric(name);
        meter
            .u64_observable_gauge(def.name)
            .with_description(def.help)
            .with_callback(move |obs| f(&read(&c), obs))
            .build();
    };
    let counter = |name: &'static str, f: ObserveSnapshot| {
        let c = Arc::clone(current);
        let def = self_metric(name);
        meter
            .u64_observable_counter(def.name)
            .with_description(def.help)
            .with_callback(move |obs| f(&read(&c), obs))
            .build();
    };

    let c = Arc::clone(current);
    let def = self_metric("netexporter_scrape_collector_duration_seconds");
    meter
        .f64_observable_gauge(def.name)
        .with_description(def.help)
        .with_callback(move |obs| {
            let snap = read(&c);
            for st in &snap.collectors {
                obs.observe(st.duration.as_secs_f64(), &collector_attrs(&snap, st.name));
            }
        })
        .build();
    let c = Arc::clone(current);
    let def = self_metric("netexporter_bpf_program_run_seconds_total");
    meter
        .f64_observable_counter(def.name)
        .with_description(def.help)
        .with_callback(move |obs| {
            let snap = read(&c);
            for p in &snap.bpf_programs {
                obs.observe(p.run_time_ns as f64 / 1e9, &program_attrs(&snap, p));
            }
        })
        .build();
    counter(
        "netexporter_bpf_program_runs_total",
        Box::new(|snap, obs| {
            for p in &snap.bpf_programs {
                obs.observe(p.runs, &program_attrs(snap, p));
            }
        }),
    );
    counter(
        "netexporter_bpf_program_recursion_misses_total",
        Box::new(|snap, obs| {
            for p in &snap.bpf_programs {
                if let Some(misses) = p.recursion_misses {
                    obs.observe(misses, &program_attrs(snap, p));
                }
            }
        }),
    );
    gauge(
        "netexporter_bpf_map_entries",
        Box::new(|snap, obs| {
            for m in &snap.bpf_maps {
                obs.observe(m.entries, &map_attrs(snap, m));
            }
        }),
    );
    gauge(
        "netexporter_bpf_map_max_entries",
        Box::new(|snap, obs| {
            for m in &snap.bpf_maps {
                obs.observe(m.max_entries, &map_attrs(snap, m));
            }
        }),
    );
    counter(
        "netexporter_bpf_map_uncounted_total",
        Box::new(|snap, obs| {
            for m in &snap.bpf_maps {
                obs.observe(m.uncounted, &map_attrs(snap, m));
            }
        }),
    );
    gauge(
        "netexporter_bpf_stats_enabled",
        Box::new(|snap, obs| {
            // Only beside programs of the agent's own: it is their statistics it qualifies.
            if let (Some(on), false) = (snap.bpf_stats_enabled, snap.bpf_programs.is_empty()) {
                obs.observe(u64::from(on), &snap.node_attrs);
            }
        }),
    );
    gauge(
        "netexporter_scrape_collector_success",
        Box::new(move |snap, obs| {
            for st in &snap.collectors {
                obs.observe(u64::from(st.success), &collector_attrs(snap, st.name));
            }
        }),
    );
    gauge(
        "netexporter_probe_available",
        Box::new(|snap, obs| {
            for (probe, why) in &snap.availability {
                let mut a = snap.node_attrs.clone();
                a.push(KeyValue::new("probe", *probe));
                match why {
                    None => obs.observe(1, &a),
                    Some(why) => {
                        a.push(KeyValue::new("reason", why.clone()));
                        obs.observe(0, &a);
                    }
                }
            }
        }),
    );
    counter(
        "netexporter_scrape_collector_errors_total",
        Box::new(move |snap, obs| {
            for st in &snap.collectors {
                obs.observe(st.errors_total, &collector_attrs(snap, st.name));
            }
        }),
    );
    gauge(
        "netexporter_targets",
        Box::new(|snap, obs| obs.observe(snap.targets, &snap.node_attrs)),
    );
    counter(
        "netexporter_collections_total",
        Box::new(|snap, obs| obs.observe(snap.collections_total, &snap.node_attrs)),
    );
    gauge(
        "netexporter_build_info",
        Box::new(|snap, obs| {
            let mut a = snap.node_attrs.clone();
            a.push(KeyValue::new("version", env!("CARGO_PKG_VERSION")));
            obs.observe(1, &a);
        }),
    );
    gauge(
        "netexporter_series",
        Box::new(|snap, obs| obs.observe(snap.series_count, &snap.node_attrs)),
    );
    counter(
        "netexporter_series_dropped_total",
        Box::new(|snap, obs| obs.observe(snap.series_dropped_total, &snap.node_attrs)),
    );
    gauge(
        "netexporter_kubernetes_api_up",
        Box::new(|snap, obs| {
            if let Some(c) = &snap.cluster {
                obs.observe(u64::from(c.api_up), &snap.node_attrs);
            }
        }),
    );
    gauge(
        "netexporter_kubernetes_pods",
        Box::new(|snap, obs| {
            if let Some(c) = &snap.cluster {
                obs.observe(c.pods.len() as u64, &snap.node_attrs);
            }
        }),
    );
    let stats = Arc::clone(export_stats);
    counter(
        "netexporter_export_failures_total",
        Box::new(move |snap, obs| {
            let mut a = snap.node_attrs.clone();
            a.push(KeyValue::new("exporter", "otlp"));
            a.push(KeyValue::new("signal", "metrics"));
            obs.observe(stats.otlp_metrics_failures.load(Ordering::Relaxed), &a);
            for (exporter, n) in [
                ("otlp", &stats.otlp_logs_failures),
                ("loki", &stats.loki_logs_failures),
            ] {
                let mut a = snap.node_attrs.clone();
                a.push(KeyValue::new("exporter", exporter));
                a.push(KeyValue::new("signal", "logs"));
                obs.observe(n.load(Ordering::Relaxed), &a);
            }
            if let Some(n) = &stats.otlp_traces_failures {
                let mut a = snap.node_attrs.clone();
                a.push(KeyValue::new("exporter", "otlp"));
                a.push(KeyValue::new("signal", "traces"));
                obs.observe(n.load(Ordering::Relaxed), &a);
            }
        }),
    );
}
