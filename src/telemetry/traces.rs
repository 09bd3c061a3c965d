//! Traces of the agent's own work, for seeing inside a slow collection (`docs/tracing.md`).
//!
//! With `OTEL_TRACES_EXPORTER=otlp` every collection is a trace: a `collection` span with
//! `discover`, `assemble` and one `netns` span per namespace under it, and one `probe` span
//! per probe run in that namespace under each `netns` span. The collector creates them with
//! `tracing` macros under [`TARGET`] at TRACE level; `tracing-opentelemetry` turns them into
//! OpenTelemetry spans and the SDK's batch processor exports them over OTLP. Off (the default)
//! no layer enables [`TARGET`], so its callsites are disabled once and for all and cost a
//! level comparison.
//!
//! What is held is bounded: at most the queue size (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2048)
//! of spans wait for export; past it a span is dropped at once. Every span that does not
//! arrive (dropped, or in a failed or timed-out export) is counted in
//! `netexporter_export_failures_total{exporter="otlp",signal="traces"}`; a failing export and
//! an overflowing queue are each logged when they start and when they end. A hung endpoint
//! holds the processor's thread for at most the export timeout per batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, Span, SpanData, SpanExporter,
    SpanProcessor,
};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

use super::export::OtlpProtocol;
use super::export::{self, Delivery, otlp_exporter, signal_url};
use crate::component::SectionError as ConfigError;

/// The `tracing` target of every span and span event meant for trace export.
pub const TARGET: &str = "net_exporter::trace";
/// Spans waiting for export at most, unless `OTEL_BSP_MAX_QUEUE_SIZE` says otherwise.
pub const DEFAULT_QUEUE: usize = 2048;
/// The OTLP exporter's default timeout (OTel specification).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

const TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
const TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
const QUEUE: &str = "OTEL_BSP_MAX_QUEUE_SIZE";

/// Trace export as the environment configures it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceConfig {
    /// Where spans go: for HTTP the full URL, `/v1/traces` included.
    pub endpoint: String,
    /// The variable the endpoint came from (`default` when none), for messages.
    pub endpoint_from: &'static str,
    pub protocol: OtlpProtocol,
    pub timeout: Duration,
    /// Spans waiting for export at most.
    pub queue: usize,
}

impl TraceConfig {
    /// The configuration from the `OTEL_*` variables (`env`: the process environment, or a map
    /// in tests); `Ok(None)` when trace export is off. Empty values count as unset.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, ConfigError> {
        let env = |k: &str| {
            env(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let first = |keys: [&'static str; 2]| keys.into_iter().find_map(|k| Some((k, env(k)?)));

        match env(TRACES_EXPORTER) {
            None => return Ok(None),
            Some(v) if v.eq_ignore_ascii_case("none") => return Ok(None),
            Some(v) if v.eq_ignore_ascii_case("otlp") => {}
            Some(other) => {
                return Err(ConfigError::new(
                    TRACES_EXPORTER,
                    format!("{other:?} is not supported; use otlp or none"),
                ));
            }
        }

        let protocol = match first([TRACES_PROTOCOL, PROTOCOL]) {
            None => OtlpProtocol::HttpProtobuf,
            Some((_, p)) if p == "http/protobuf" => OtlpProtocol::HttpProtobuf,
            Some((_, p)) if p == "grpc" => OtlpProtocol::Grpc,
            Some((field, other)) => {
                return Err(ConfigError::new(
                    field,
                    format!("{other:?} is not supported; use grpc or http/protobuf"),
                ));
            }
        };

        let (endpoint_from, endpoint) = match (env(TRACES_ENDPOINT), env(ENDPOINT)) {
            // The signal's own variable is the full URL, used as it is.
            (Some(e), _) => (TRACES_ENDPOINT, e),
            (None, Some(e)) => (ENDPOINT, e),
            (None, None) => (
                "default",
                match protocol {
                    OtlpProtocol::HttpProtobuf => "http://localhost:4318".to_string(),
                    OtlpProtocol::Grpc => "http://localhost:4317".to_string(),
                },
            ),
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(ConfigError::new(
                endpoint_from,
                format!("{endpoint:?} must start with http:// or https://"),
            ));
        }
        // A base URL gets the signal's path over HTTP; gRPC paths come from the service.
        let endpoint = match (protocol, endpoint_from) {
            (OtlpProtocol::HttpProtobuf, TRACES_ENDPOINT) | (OtlpProtocol::Grpc, _) => endpoint,
            (OtlpProtocol::HttpProtobuf, _) => signal_url(&endpoint, "/v1/traces"),
        };

        let timeout = match first([TRACES_TIMEOUT, TIMEOUT]) {
            None => DEFAULT_TIMEOUT,
            Some((field, ms)) => match ms.parse::<u64>() {
                Ok(0) => return Err(ConfigError::new(field, "must be greater than zero")),
                Ok(ms) => Duration::from_millis(ms),
                Err(_) => {
                    return Err(ConfigError::new(
                        field,
                        format!("{ms:?} is not a number of milliseconds"),
                    ));
                }
            },
        };
        let queue = match env(QUEUE) {
            None => DEFAULT_QUEUE,
            Some(n) => match n.parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(ConfigError::new(
                        QUEUE,
                        format!("{n:?} is not a positive number"),
                    ));
                }
            },
        };
        Ok(Some(Self {
            endpoint,
            endpoint_from,
            protocol,
            timeout,
            queue,
        }))
    }
}

/// The span filter of the OpenTelemetry layer: the agent's trace target, nothing else (the
/// exporters' own `tracing` spans would otherwise be exported, and trace their exports).
pub fn filter() -> Targets {
    Targets::new().with_target(TARGET, tracing::Level::TRACE)
}

/// A running trace pipeline: the tracer provider, its bounded batch processor and exporter.
pub struct Traces {
    provider: SdkTracerProvider,
    failures: Arc<AtomicU64>,
    timeout: Duration,
}

impl Traces {
    /// Builds the exporter and the processor's thread. `runtime`: the agent's runtime, which
    /// the exporter's client needs (built with it entered, and each export polled in it).
    pub fn start(
        cfg: &TraceConfig,
        resource: Resource,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Self, ConfigError> {
        let _entered = runtime.enter();
        // The endpoint is the signal's URL already (see `TraceConfig::from_env`).
        let inner = otlp_exporter!(
            opentelemetry_otlp::SpanExporter::builder(),
            cfg.protocol,
            cfg.endpoint.clone(),
            cfg.endpoint.clone(),
            cfg.timeout
        )
        .map_err(|e| ConfigError::new(cfg.endpoint_from, format!("{:?}: {e}", cfg.endpoint)))?;
        let failures = Arc::new(AtomicU64::new(0));
        let accounting = Arc::new(Accounting::new(
            &cfg.endpoint,
            Arc::clone(&failures),
            cfg.queue,
        ));
        let exporter = Exporter {
            inner,
            accounting: Arc::clone(&accounting),
            timeout: cfg.timeout,
            runtime: runtime.clone(),
        };
        // The SDK reads the other OTEL_BSP_* variables (schedule delay, batch size) itself.
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(cfg.queue)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_span_processor(Bounded {
                inner: processor,
                accounting,
            })
            .build();
        Ok(Self {
            provider,
            failures,
            timeout: cfg.timeout,
        })
    }

    /// Spans lost so far (`netexporter_export_failures_total{signal="traces"}`).
    pub fn failures(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.failures)
    }

    /// The `tracing` layer that makes OpenTelemetry spans of the agent's trace spans, with its
    /// own filter: it sees [`TARGET`] only.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        layer(&self.provider).with_filter(filter())
    }

    /// Exports what is queued; blocks (at most the export timeout and a bit).
    pub fn shutdown(&self) {
        if let Err(e) = self
            .provider
            .shutdown_with_timeout(self.timeout + Duration::from_secs(1))
        {
            tracing::debug!(error = %e, "tracer provider shutdown");
        }
    }
}

/// The layer for `provider`, as the agent configures it: no code location, target or
/// busy/idle attributes (spans are never entered; their names say where they come from).
pub fn layer<S>(
    provider: &SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("net-exporter"))
        .with_location(false)
        .with_target(false)
        .with_tracked_inactivity(false)
}

/// What the processor and the exporter share: the spans in the pipeline's hands and the
/// outage states.
#[derive(Debug)]
struct Accounting {
    delivery: Delivery,
    dropping: AtomicBool,
    epoch: Instant,
    /// When the last span was dropped, in milliseconds since `epoch`.
    last_drop_ms: AtomicU64,
}

/// A queue overflow is over once no span was dropped for this long: at a collection that is
/// just too big for the queue, one collection in a few overflows, and that is one problem.
const QUIET_MS: u64 = 60_000;

impl Accounting {
    fn new(endpoint: &str, failures: Arc<AtomicU64>, queue: usize) -> Self {
        Self {
            delivery: Delivery::new("trace", "otlp", endpoint, failures, queue),
            dropping: AtomicBool::new(false),
            epoch: Instant::now(),
            last_drop_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A span turned away by the queue bound: counted, the overflow said once. It is no
    /// export outage (that would be logged as one).
    fn dropped(&self, now_ms: u64) {
        self.delivery.count(1);
        self.last_drop_ms.store(now_ms, Ordering::Relaxed);
        if !self.dropping.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                queue = self.delivery.admission.capacity,
                "trace queue full: spans are dropped and counted in netexporter_export_failures_total (OTEL_BSP_MAX_QUEUE_SIZE)"
            );
        }
    }

    /// A whole trace ended: the queue overflow is over when no span was dropped for
    /// [`QUIET_MS`] and exports work (during an export outage the queue fills and drains with
    /// each timed-out export: that is the outage, already logged, not a new problem each time).
    fn trace_ended(&self, now_ms: u64) {
        if self.dropping.load(Ordering::Relaxed)
            && now_ms.saturating_sub(self.last_drop_ms.load(Ordering::Relaxed)) >= QUIET_MS
            && !self.delivery.failing()
            && self.dropping.swap(false, Ordering::Relaxed)
        {
            tracing::info!("trace queue no longer full");
        }
    }
}

/// The batch processor behind a queue bound that counts what it turns away.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    accounting: Arc<Accounting>,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        // Children end before their parent: the root ends its trace.
        let root = span.parent_span_id == SpanId::INVALID;
        if self.accounting.delivery.admission.admit() {
            self.inner.on_end(span);
        } else {
            self.accounting.dropped(self.accounting.now_ms());
        }
        if root {
            self.accounting.trace_ended(self.accounting.now_ms());
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, polled in the agent's runtime, bounded in time, its failures counted.
#[derive(Debug)]
struct Exporter {
    inner: opentelemetry_otlp::SpanExporter,
    accounting: Arc<Accounting>,
    timeout: Duration,
    runtime: tokio::runtime::Handle,
}

impl SpanExporter for Exporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        self.accounting.delivery.admission.release(n);
        let r = export::bounded(&self.runtime, self.timeout, self.inner.export(batch)).await;
        self.accounting.delivery.export_done(n, &r);
        r
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Option<TraceConfig>, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TraceConfig::from_env(&move |k| vars.iter().find(|(vk, _)| vk == k).map(|(_, v)| v.clone()))
    }

    fn on(vars: &[(&str, &str)]) -> TraceConfig {
        let mut all = vec![(TRACES_EXPORTER, "otlp")];
        all.extend_from_slice(vars);
        parse(&all).unwrap().unwrap()
    }

    #[test]
    fn off_unless_otlp() {
        assert_eq!(parse(&[]).unwrap(), None);
        assert_eq!(parse(&[(TRACES_EXPORTER, "none")]).unwrap(), None);
        assert_eq!(parse(&[(TRACES_EXPORTER, " ")]).unwrap(), None);
        // The endpoint alone does not turn it on.
        assert_eq!(parse(&[(TRACES_ENDPOINT, "http://c:4318")]).unwrap(), None);
        assert!(parse(&[(TRACES_EXPORTER, "OTLP")]).unwrap().is_some());
    }

    #[test]
    fn defaults_follow_the_otel_specification() {
        let c = on(&[]);
        assert_eq!(c.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(c.endpoint, "http://localhost:4318/v1/traces");
        assert_eq!(c.endpoint_from, "default");
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.queue, 2048);
        let c = on(&[(PROTOCOL, "grpc")]);
        assert_eq!(c.protocol, OtlpProtocol::Grpc);
        assert_eq!(c.endpoint, "http://localhost:4317");
    }

    #[test]
    fn endpoints() {
        // The generic base URL gets the signal's path over HTTP...
        let c = on(&[(ENDPOINT, "https://collector:4318/")]);
        assert_eq!(c.endpoint, "https://collector:4318/v1/traces");
        assert_eq!(c.endpoint_from, ENDPOINT);
        let c = on(&[(ENDPOINT, "http://collector:4318/otlp")]);
        assert_eq!(c.endpoint, "http://collector:4318/otlp/v1/traces");
        // ...not over gRPC.
        let c = on(&[(ENDPOINT, "http://collector:4317"), (PROTOCOL, "grpc")]);
        assert_eq!(c.endpoint, "http://collector:4317");
        // The signal's own variable wins and is used as it is.
        let c = on(&[
            (ENDPOINT, "http://generic:4318"),
            (TRACES_ENDPOINT, "http://traces:9999/custom"),
        ]);
        assert_eq!(c.endpoint, "http://traces:9999/custom");
        assert_eq!(c.endpoint_from, TRACES_ENDPOINT);
    }

    #[test]
    fn signal_variables_win() {
        let c = on(&[
            (PROTOCOL, "http/protobuf"),
            (TRACES_PROTOCOL, "grpc"),
            (TIMEOUT, "2000"),
            (TRACES_TIMEOUT, "500"),
        ]);
        assert_eq!(c.protocol, OtlpProtocol::Grpc);
        assert_eq!(c.timeout, Duration::from_millis(500));
        let c = on(&[(TIMEOUT, "2000"), (QUEUE, "64")]);
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert_eq!(c.queue, 64);
    }

    #[test]
    fn the_queue_turns_away_and_counts_what_it_cannot_hold() {
        let a = Accounting::new("http://c", Arc::new(AtomicU64::new(0)), 2);
        let dropping = || a.dropping.load(Ordering::Relaxed);
        let admit = || a.delivery.admission.admit();
        assert!(admit() && admit() && !admit());
        a.dropped(1_000);
        assert!(dropping());
        // Traces that fit soon after a drop do not end the overflow...
        a.delivery.admission.release(2);
        assert!(admit());
        a.trace_ended(1_000 + QUIET_MS / 2);
        a.dropped(1_000 + QUIET_MS / 2);
        a.trace_ended(1_000 + QUIET_MS);
        assert!(dropping());
        // ...nor do they while exports fail...
        a.delivery.export_done(
            3,
            &Err(opentelemetry_sdk::error::OTelSdkError::Timeout(
                Duration::from_secs(1),
            )),
        );
        assert!(a.delivery.failing());
        a.trace_ended(1_000 + 3 * QUIET_MS);
        assert!(dropping());
        // ...once they work again and nothing was dropped for a while, one does.
        a.delivery.export_done(1, &Ok(()));
        assert!(!a.delivery.failing());
        a.trace_ended(1_000 + 3 * QUIET_MS);
        assert!(!dropping());
        assert_eq!(a.delivery.failures(), 5);
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[(TRACES_EXPORTER, "jaeger")], TRACES_EXPORTER),
            (&[(TRACES_EXPORTER, "otlp,console")], TRACES_EXPORTER),
            (
                &[(TRACES_EXPORTER, "otlp"), (PROTOCOL, "http/json")],
                PROTOCOL,
            ),
            (
                &[
                    (TRACES_EXPORTER, "otlp"),
                    (PROTOCOL, "grpc"),
                    (TRACES_PROTOCOL, "udp"),
                ],
                TRACES_PROTOCOL,
            ),
            (
                &[(TRACES_EXPORTER, "otlp"), (ENDPOINT, "collector:4318")],
                ENDPOINT,
            ),
            (
                &[
                    (TRACES_EXPORTER, "otlp"),
                    (TRACES_ENDPOINT, "grpc://c:4317"),
                ],
                TRACES_ENDPOINT,
            ),
            (&[(TRACES_EXPORTER, "otlp"), (TIMEOUT, "10s")], TIMEOUT),
            (
                &[(TRACES_EXPORTER, "otlp"), (TRACES_TIMEOUT, "0")],
                TRACES_TIMEOUT,
            ),
            (&[(TRACES_EXPORTER, "otlp"), (QUEUE, "0")], QUEUE),
            (&[(TRACES_EXPORTER, "otlp"), (QUEUE, "many")], QUEUE),
        ];
        for (vars, field) in cases {
            let e = parse(vars).expect_err(&format!("{vars:?} should be refused"));
            assert_eq!(e.field, *field, "{vars:?}: {e}");
            assert!(e.to_string().starts_with(&format!("{field}: ")), "{e}");
        }
    }

    /// Keeps every span it is given.
    #[derive(Debug, Clone, Default)]
    struct Keep(Arc<std::sync::Mutex<Vec<SpanData>>>);

    impl SpanExporter for Keep {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    struct NodeOnly;

    impl crate::inventory::Inventory for NodeOnly {
        fn discover(&self) -> anyhow::Result<Vec<crate::inventory::Target>> {
            Ok(vec![crate::inventory::Target {
                inode: 4026531840,
                ns_path: None,
                labels: vec![("k8s_node", "n1".into())],
            }])
        }
    }

    fn attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a opentelemetry::Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    /// One collection of the node alone, over an empty /proc (the file-based probes fail, the
    /// netlink one works), traced through the layer the agent installs.
    #[test]
    fn a_collection_is_a_tree_of_spans_with_errors_on_failed_probes() {
        use opentelemetry::trace::Status;
        use tracing_subscriber::layer::SubscriberExt;

        let procfs = tempfile::tempdir().unwrap();
        let probes = ["netdev", "tcp", "sock"]
            .map(|n| {
                let r = crate::probes::by_name(n).unwrap();
                (r, r.build(None).unwrap().1)
            })
            .into();
        let settings = crate::collector::Settings {
            node: crate::sources::Node::new(
                procfs.path().to_path_buf(),
                "/sys".into(),
                Default::default(),
                false,
            ),
            probes,
            node_name: "itest".into(),
            workers: 1,
            max_series: 1000,
        };
        let collector = crate::collector::Collector::new(settings, Box::new(NodeOnly));

        let keep = Keep::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(keep.clone())
            .build();
        let subscriber =
            tracing_subscriber::registry().with(layer(&provider).with_filter(filter()));
        tracing::subscriber::with_default(subscriber, || {
            collector.collect_blocking();
        });
        let spans = keep.0.lock().unwrap().clone();

        let roots: Vec<&SpanData> = spans
            .iter()
            .filter(|s| s.parent_span_id == SpanId::INVALID)
            .collect();
        assert_eq!(roots.len(), 1, "{spans:#?}");
        let root = roots[0];
        assert_eq!(root.name, "collection");
        assert_eq!(attr(root, "collection"), Some(&1i64.into()));
        assert_eq!(attr(root, "targets"), Some(&1i64.into()));
        assert_eq!(attr(root, "collectors.failed"), Some(&2i64.into()));
        let trace = root.span_context.trace_id();
        assert!(spans.iter().all(|s| s.span_context.trace_id() == trace));
        let children = |parent: &SpanData| -> Vec<SpanData> {
            spans
                .iter()
                .filter(|s| s.parent_span_id == parent.span_context.span_id())
                .cloned()
                .collect()
        };
        let mut names: Vec<String> = children(root).iter().map(|s| s.name.to_string()).collect();
        names.sort();
        assert_eq!(names, ["assemble", "discover", "netns"]);
        let netns = children(root)
            .into_iter()
            .find(|s| s.name == "netns")
            .unwrap();
        assert_eq!(attr(&netns, "netns.node"), Some(&true.into()));
        assert_eq!(attr(&netns, "netns.inode"), Some(&4026531840i64.into()));
        let probes = children(&netns);
        assert_eq!(probes.len(), 3, "{probes:#?}");
        for p in &probes {
            assert_eq!(p.name, "probe");
            let name = attr(p, "probe").map(|v| v.to_string()).unwrap_or_default();
            match name.as_str() {
                "netdev" => {
                    assert_eq!(p.status, Status::Unset);
                    assert!(
                        matches!(attr(p, "series"), Some(opentelemetry::Value::I64(n)) if *n > 0)
                    );
                }
                "tcp" | "sock" => {
                    let Status::Error { description } = &p.status else {
                        panic!("{name} should have failed: {p:#?}");
                    };
                    let file = if name == "tcp" { "snmp" } else { "sockstat" };
                    assert!(description.contains(file), "{description}");
                    let event = p.events.iter().find(|e| e.name == "exception").unwrap();
                    assert!(
                        event
                            .attributes
                            .iter()
                            .any(|kv| kv.key.as_str() == "exception.message")
                    );
                }
                other => panic!("unexpected probe span {other}"),
            }
        }
    }

    /// Off, the subscriber's highest level is the log's: `tracing` turns the trace target's
    /// TRACE callsites away with one comparison against the global level filter. On, the
    /// layer raises it to TRACE for that target alone.
    #[test]
    fn off_the_trace_level_is_above_the_subscribers() {
        use tracing::Subscriber as _;
        use tracing_subscriber::filter::LevelFilter;
        use tracing_subscriber::layer::SubscriberExt;
        let fmt = || {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::sink)
                .with_filter(tracing_subscriber::EnvFilter::new("info"))
        };
        let off = tracing_subscriber::registry()
            .with(fmt())
            .with(None::<&Traces>.map(Traces::layer));
        assert_eq!(off.max_level_hint(), Some(LevelFilter::INFO));
        let provider = SdkTracerProvider::builder().build();
        let on = tracing_subscriber::registry()
            .with(fmt())
            .with(Some(layer(&provider).with_filter(filter())));
        assert_eq!(on.max_level_hint(), Some(LevelFilter::TRACE));
    }
}
