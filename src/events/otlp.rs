//! Events as OpenTelemetry log records over OTLP (gRPC or HTTP/protobuf) to a collector, or
//! over OTLP/HTTP to Grafana Loki's native endpoint (`<loki>/otlp/v1/logs`).
//!
//! The SDK's batch processor exports off the checks' path, from a thread of its own. What a
//! sink holds is bounded: at most `events.queue_size` records wait or are being sent; past
//! that a new record is dropped at once. Every record that does not arrive (dropped, or in a
//! failed or timed-out export) is counted in
//! `netexporter_export_failures_total{exporter,signal="logs"}`; an outage is logged when it
//! starts and when it ends, once each. A hung endpoint holds the processor for at most
//! `events.export_timeout` per batch.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::{Context, Result};
use opentelemetry::logs::{AnyValue, LogRecord, Logger, LoggerProvider as _, Severity};
use opentelemetry_otlp::LogExporter as OtlpExporter;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{
    BatchConfigBuilder, BatchLogProcessor, LogBatch, LogExporter, SdkLogger, SdkLoggerProvider,
};

use super::{Event, EventExport, Sink};
use crate::telemetry::export::{self, Delivery, OtlpProtocol, otlp_exporter, signal_url};

/// Bounds each export in time and accounts for its records.
#[derive(Debug)]
struct Counting {
    inner: OtlpExporter,
    accounting: Arc<Delivery>,
    timeout: Duration,
    /// The agent's runtime, which the export runs in (see `telemetry::export`).
    runtime: tokio::runtime::Handle,
}

impl LogExporter for Counting {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let n = batch.iter().count();
        let r = export::bounded(&self.runtime, self.timeout, self.inner.export(batch)).await;
        self.accounting.admission.release(n);
        self.accounting.export_done(n, &r);
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
    accounting: Arc<Delivery>,
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
        limits: EventExport,
        failures: Arc<AtomicU64>,
    ) -> Result<Self> {
        let runtime = tokio::runtime::Handle::try_current()
            .with_context(|| format!("{name} log exporter needs the agent's async runtime"))?;
        // Loki takes OTLP/HTTP under its own path.
        let path = if name == "loki" {
            "/otlp/v1/logs"
        } else {
            "/v1/logs"
        };
        let inner = otlp_exporter!(
            OtlpExporter::builder(),
            protocol,
            endpoint.to_string(),
            signal_url(endpoint, path),
            limits.timeout
        )
        .with_context(|| format!("{name} log exporter for {endpoint}"))?;
        let accounting = Arc::new(Delivery::new(
            "event",
            name,
            endpoint,
            failures,
            limits.queue_size,
        ));
        let exporter = Counting {
            inner,
            accounting: Arc::clone(&accounting),
            timeout: limits.timeout,
            runtime,
        };
        // The processor's queue is as large as the admission limit, so it never drops a
        // record itself (its drops would go uncounted).
        let processor = BatchLogProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(limits.queue_size)
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
            accounting,
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
        if !self.accounting.admission.admit() {
            self.accounting.lost(
                1,
                &format_args!(
                    "{} records waiting for the endpoint; dropping new ones",
                    self.accounting.admission.capacity
                ),
            );
            return;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn accounting(capacity: usize) -> Delivery {
        Delivery::new(
            "event",
            "otlp",
            "http://127.0.0.1:1",
            Arc::default(),
            capacity,
        )
    }

    #[test]
    fn losses_are_counted_and_the_outage_flag_follows_exports() {
        let a = accounting(1);
        a.lost(5, &"down");
        a.lost(1, &"full");
        assert_eq!(a.failures(), 6);
        assert!(a.failing());
        a.delivered();
        assert!(!a.failing());
        a.lost(2, &"down again");
        assert_eq!(a.failures(), 8);
        assert!(a.failing(), "a new outage");
    }
}
