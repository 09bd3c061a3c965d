//! OTLP push: at every interval, join (or start) a collection, collect the OTLP reader over it
//! and export. A failed export is counted and logged once per outage, never retried into an
//! unbounded queue: the next interval sends fresh cumulative values anyway.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use opentelemetry_otlp::{MetricExporter, WithExportConfig};
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;

use super::Telemetry;
use crate::collector::Collector;
use crate::config::{OtlpConfig, OtlpProtocol};

/// Builds the exporter; the HTTP endpoint gets the `/v1/metrics` path as the OTel spec says
/// for `OTEL_EXPORTER_OTLP_ENDPOINT`.
pub fn exporter(cfg: &OtlpConfig) -> Result<MetricExporter> {
    let built = match cfg.protocol {
        OtlpProtocol::Grpc => MetricExporter::builder()
            .with_tonic()
            .with_endpoint(cfg.endpoint.clone())
            .with_timeout(cfg.timeout)
            .with_temporality(Temporality::Cumulative)
            .build(),
        OtlpProtocol::HttpProtobuf => MetricExporter::builder()
            .with_http()
            .with_endpoint(http_metrics_url(&cfg.endpoint))
            .with_timeout(cfg.timeout)
            .with_temporality(Temporality::Cumulative)
            .build(),
    };
    built.with_context(|| format!("OTLP exporter for {}", cfg.endpoint))
}

fn http_metrics_url(endpoint: &str) -> String {
    if endpoint.ends_with("/v1/metrics") {
        endpoint.to_string()
    } else {
        format!("{}/v1/metrics", endpoint.trim_end_matches('/'))
    }
}

/// Runs until the task is dropped.
pub async fn push_loop(cfg: OtlpConfig, collector: Arc<Collector>, telemetry: Arc<Telemetry>) {
    let exporter = match exporter(&cfg) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "OTLP push is off");
            return;
        }
    };
    tracing::info!(endpoint = %cfg.endpoint, protocol = ?cfg.protocol, interval = ?cfg.interval, "OTLP metrics push on");
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticker.tick().await;
        let snapshot = collector.collect().await;
        let t = Arc::clone(&telemetry);
        let rm = match tokio::task::spawn_blocking(move || t.collect_otlp(snapshot)).await {
            Ok(Some(rm)) => rm,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "OTLP collect panicked");
                continue;
            }
        };
        let result = tokio::time::timeout(cfg.timeout, exporter.export(&rm)).await;
        let error = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {:?}", cfg.timeout)),
        };
        match error {
            Some(e) => {
                telemetry
                    .export_stats
                    .otlp_metrics_failures
                    .fetch_add(1, Ordering::Relaxed);
                if !failing {
                    tracing::warn!(endpoint = %cfg.endpoint, error = %e, "OTLP metrics export failing; counting failures in netexporter_export_failures_total");
                    failing = true;
                }
            }
            None if failing => {
                tracing::info!(endpoint = %cfg.endpoint, "OTLP metrics export recovered");
                failing = false;
            }
            None => {}
        }
    }
}
