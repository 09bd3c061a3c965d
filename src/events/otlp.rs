//! Events as OpenTelemetry log records over OTLP (gRPC or HTTP/protobuf) to a collector, or
//! over OTLP/HTTP to Grafana Loki's native endpoint (`<loki>/otlp/v1/logs`).
//!
//! The SDK's batch processor gives a bounded queue (records beyond it are dropped, never
//! buffered without end) and exports off the checks' path; a failed export counts its records
//! in `netexporter_export_failures_total{exporter,signal="logs"}` and is logged once per outage.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, Result};
use opentelemetry::logs::{AnyValue, LogRecord, Logger, LoggerProvider as _, Severity};
use opentelemetry_otlp::{LogExporter as OtlpExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{
    BatchConfigBuilder, BatchLogProcessor, LogBatch, LogExporter, SdkLogger, SdkLoggerProvider,
};

use super::{Event, Sink};
use crate::config::OtlpProtocol;

/// Records waiting for export at most; past it new ones are dropped.
const QUEUE: usize = 2048;

/// Counts failed exports, and logs the start and end of an outage once each.
#[derive(Debug)]
struct Counting {
    inner: OtlpExporter,
    name: &'static str,
    endpoint: String,
    failures: Arc<AtomicU64>,
    failing: AtomicBool,
    /// The agent's runtime. The batch processor exports from a thread of its own, outside any
    /// tokio runtime; the HTTP client (async reqwest, hyper) needs one for its I/O and timers
    /// and panics without it, which kills the processor's thread: every record after it would
    /// be lost, uncounted.
    runtime: Option<tokio::runtime::Handle>,
}

/// Polls `inner` with `handle`'s runtime entered, so that it may register I/O and timers
/// with it while an executor of another thread drives it.
struct InRuntime<F> {
    handle: Option<tokio::runtime::Handle>,
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for InRuntime<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let _entered = this.handle.as_ref().map(tokio::runtime::Handle::enter);
        this.inner.as_mut().poll(cx)
    }
}

impl LogExporter for Counting {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let n = batch.iter().count() as u64;
        let r = InRuntime {
            handle: self.runtime.clone(),
            inner: Box::pin(self.inner.export(batch)),
        }
        .await;
        match &r {
            Err(e) => {
                self.failures.fetch_add(n, Ordering::Relaxed);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(exporter = self.name, endpoint = %self.endpoint, error = %e, "event export failing; counting lost records in netexporter_export_failures_total");
                }
            }
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(exporter = self.name, endpoint = %self.endpoint, "event export recovered");
                }
            }
        }
        r
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

pub struct OtlpLogs {
    provider: SdkLoggerProvider,
    logger: SdkLogger,
    node: String,
}

impl fmt::Debug for OtlpLogs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OtlpLogs")
    }
}

impl OtlpLogs {
    /// `name`: `otlp` or `loki` (the `exporter` label of the failure counter). For HTTP the
    /// endpoint is the base URL: `/v1/logs` is appended (Loki: `/otlp/v1/logs`) unless present.
    pub fn new(
        name: &'static str,
        endpoint: &str,
        protocol: OtlpProtocol,
        resource: Resource,
        node: &str,
        failures: Arc<AtomicU64>,
    ) -> Result<Self> {
        let inner = match protocol {
            OtlpProtocol::Grpc => OtlpExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.to_string())
                .build(),
            OtlpProtocol::HttpProtobuf => {
                let path = if name == "loki" {
                    "/otlp/v1/logs"
                } else {
                    "/v1/logs"
                };
                let url = if endpoint.ends_with(path) {
                    endpoint.to_string()
                } else {
                    format!("{}{path}", endpoint.trim_end_matches('/'))
                };
                OtlpExporter::builder()
                    .with_http()
                    .with_endpoint(url)
                    .build()
            }
        }
        .with_context(|| format!("{name} log exporter for {endpoint}"))?;
        let exporter = Counting {
            inner,
            name,
            endpoint: endpoint.to_string(),
            failures,
            failing: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::try_current().ok(),
        };
        let processor = BatchLogProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(QUEUE)
                    .with_scheduled_delay(Duration::from_secs(1))
                    .build(),
            )
            .build();
        let provider = SdkLoggerProvider::builder()
            .with_resource(resource)
            .with_log_processor(processor)
            .build();
        let logger = provider.logger("net-exporter");
        Ok(Self {
            provider,
            logger,
            node: node.to_string(),
        })
    }
}

impl Sink for OtlpLogs {
    fn shutdown(&self) {
        // Flushes the batch queue to the endpoint before the agent exits.
        let _ = self.provider.shutdown();
    }

    fn send(&self, e: &Event) {
        let mut r = self.logger.create_log_record();
        let ts = std::time::UNIX_EPOCH
            + Duration::from_nanos(u64::try_from(e.timestamp).unwrap_or(u64::MAX));
        r.set_timestamp(ts);
        r.set_observed_timestamp(ts);
        r.set_severity_number(Severity::Warn);
        r.set_severity_text("WARN");
        r.set_event_name(e.kind);
        r.set_body(AnyValue::from(e.msg.clone()));
        r.add_attribute("event.name", e.kind);
        r.add_attribute("type", e.kind);
        r.add_attribute("probe", e.probe);
        r.add_attribute("k8s.node.name", self.node.clone());
        for (k, v) in &e.object {
            r.add_attribute(*k, v.clone());
        }
        self.logger.emit(r);
    }
}
