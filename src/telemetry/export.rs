//! What every OTLP exporter shares (metrics, event log records, trace spans): the protocol,
//! the URL of each signal, and, for the SDK's batch pipelines, a bound on what they hold and
//! exports polled in the agent's runtime and bounded in time.
//!
//! The SDK's batch processors export from a thread of their own, outside any tokio runtime;
//! the exporters' clients (reqwest and hyper for HTTP, tonic for gRPC) need one for their I/O
//! and timers and panic without it, which kills the processor's thread: every record after it
//! would be lost, uncounted. So does `tokio::time::timeout`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::component::SectionError;

/// How OTLP is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum OtlpProtocol {
    /// gRPC (port 4317 by convention).
    #[serde(rename = "grpc")]
    Grpc,
    /// Protobuf over HTTP (port 4318 by convention).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpProtocol {
    /// Parses the value of `field` (a flag, variable or file key, named in the error).
    pub fn parse(field: &str, value: &str) -> Result<Self, SectionError> {
        match value.trim() {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            other => Err(SectionError::new(
                field,
                format!("{other:?} is not supported; use grpc or http/protobuf"),
            )),
        }
    }
}

/// Builds the OTLP exporter of one signal: `$builder` (`MetricExporter::builder()`,
/// `SpanExporter::builder()`, ...) to `$endpoint` over gRPC, or to `$http_url` (the signal's
/// URL, see [`signal_url`]) over HTTP/protobuf, each export bounded by `$timeout`. A macro, not
/// a function: each signal's builder is a type of its own, with no trait in common.
macro_rules! otlp_exporter {
    ($builder:expr, $protocol:expr, $endpoint:expr, $http_url:expr, $timeout:expr) => {{
        use opentelemetry_otlp::WithExportConfig as _;
        match $protocol {
            $crate::telemetry::export::OtlpProtocol::Grpc => $builder
                .with_tonic()
                .with_endpoint($endpoint)
                .with_timeout($timeout)
                .build(),
            $crate::telemetry::export::OtlpProtocol::HttpProtobuf => $builder
                .with_http()
                .with_endpoint($http_url)
                .with_timeout($timeout)
                .build(),
        }
    }};
}
pub(crate) use otlp_exporter;

/// An endpoint must be an http(s) URL.
pub fn check_endpoint(field: &str, url: &str) -> Result<(), SectionError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(SectionError::new(
            field,
            format!("{url:?} must start with http:// or https://"),
        ))
    }
}

/// The URL of one signal over OTLP/HTTP: `path` (`/v1/metrics`, `/v1/logs`, Loki's
/// `/otlp/v1/logs`) appended to a base endpoint unless it is there already, as the OTel
/// specification says of `OTEL_EXPORTER_OTLP_ENDPOINT`.
pub fn signal_url(endpoint: &str, path: &str) -> String {
    if endpoint.ends_with(path) {
        endpoint.to_string()
    } else {
        format!("{}{path}", endpoint.trim_end_matches('/'))
    }
}

/// Polls `inner` with `handle`'s runtime entered, so that it may register I/O and timers
/// with it while an executor of another thread drives it.
struct InRuntime<F> {
    handle: tokio::runtime::Handle,
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for InRuntime<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let _entered = this.handle.enter();
        this.inner.as_mut().poll(cx)
    }
}

/// Runs `export` in `runtime` from any thread; an export that takes longer than `timeout`
/// (a collector that accepts and never answers) is abandoned as failed.
pub async fn bounded<F>(
    runtime: &tokio::runtime::Handle,
    timeout: Duration,
    export: F,
) -> OTelSdkResult
where
    F: Future<Output = OTelSdkResult>,
{
    InRuntime {
        handle: runtime.clone(),
        inner: Box::pin(async move {
            tokio::time::timeout(timeout, export)
                .await
                .unwrap_or(Err(OTelSdkError::Timeout(timeout)))
        }),
    }
    .await
}

/// What one OTLP pipeline (event records, trace spans) could not deliver: counted in
/// `netexporter_export_failures_total`, and an outage said once when it starts and once when
/// it ends.
#[derive(Debug)]
pub struct Delivery {
    /// How the log names the pipeline: `event`, `trace`.
    signal: &'static str,
    /// `otlp`, `loki`.
    exporter: &'static str,
    endpoint: String,
    failures: Arc<AtomicU64>,
    failing: AtomicBool,
    /// Items handed to the SDK's batch processor and not yet exported or failed.
    pub admission: Admission,
}

impl Delivery {
    pub fn new(
        signal: &'static str,
        exporter: &'static str,
        endpoint: &str,
        failures: Arc<AtomicU64>,
        queue: usize,
    ) -> Self {
        Self {
            signal,
            exporter,
            endpoint: endpoint.to_string(),
            failures,
            failing: AtomicBool::new(false),
            admission: Admission::new(queue),
        }
    }

    /// Counts `n` items that did not arrive, without a word about the endpoint.
    pub fn count(&self, n: u64) {
        self.failures.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` items did not arrive because of `why`: counted, and the first loss of an outage
    /// logged.
    pub fn lost(&self, n: u64, why: &dyn std::fmt::Display) {
        self.count(n);
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                exporter = self.exporter,
                endpoint = %self.endpoint,
                error = %why,
                "{} export failing; counting lost items in netexporter_export_failures_total",
                self.signal
            );
        }
    }

    /// An export went through: the end of an outage is logged.
    pub fn delivered(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(
                exporter = self.exporter,
                endpoint = %self.endpoint,
                "{} export recovered",
                self.signal
            );
        }
    }

    /// The end of one export of `n` items.
    pub fn export_done(&self, n: usize, result: &OTelSdkResult) {
        match result {
            Err(e) => self.lost(n as u64, e),
            Ok(()) => self.delivered(),
        }
    }

    /// Whether exports fail now.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// Places for at most `capacity` items in a pipeline. Sized like the SDK processor's own
/// queue, it turns items away before the processor would drop them itself, uncounted.
#[derive(Debug)]
pub struct Admission {
    held: AtomicUsize,
    pub(crate) capacity: usize,
}

impl Admission {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            held: AtomicUsize::new(0),
            capacity,
        }
    }

    /// Takes a place for one item; `false` when all are taken.
    pub(crate) fn admit(&self) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p < self.capacity).then_some(p + 1)
            })
            .is_ok()
    }

    /// Gives back `n` places (never below zero).
    pub(crate) fn release(&self, n: usize) {
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_sub(n))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_is_bounded_and_released() {
        let a = Admission::new(3);
        assert!((0..3).all(|_| a.admit()));
        assert!(!a.admit(), "a fourth item is over the capacity");
        a.release(2);
        assert!(a.admit() && a.admit());
        assert!(!a.admit());
        // More released than held (cannot happen, but must not wrap).
        a.release(10);
        assert_eq!(a.held.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_hung_export_times_out_in_the_runtime_from_another_thread() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        // A plain thread polls the export, like the SDK's batch thread.
        let r = futures::executor::block_on(bounded(
            rt.handle(),
            Duration::from_millis(50),
            std::future::pending(),
        ));
        assert!(matches!(r, Err(OTelSdkError::Timeout(_))), "{r:?}");
    }
}
