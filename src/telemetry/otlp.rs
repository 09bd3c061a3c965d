//! OTLP push: at every interval, join (or start) a collection, collect the OTLP reader over it
//! and export. A failed export is counted and logged once per outage, never retried into an
//! unbounded queue: the next interval sends fresh cumulative values anyway.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use opentelemetry_otlp::MetricExporter;
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Telemetry;
use super::export::{OtlpProtocol, check_endpoint, otlp_exporter, signal_url};
use crate::collector::Collector;
use crate::component::SectionError;

/// `otlp:` in the configuration file. The flags `--otlp.*` and the standard `OTEL_*`
/// variables override it.
#[derive(Deserialize, Serialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpOptions {
    /// Where to push metrics (`http://collector:4318`; for HTTP `/v1/metrics` is appended).
    /// None: no push.
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf` [default: http/protobuf].
    pub protocol: Option<OtlpProtocol>,
    /// How often to push, e.g. `15s` [default: 60s].
    #[serde(with = "humantime_serde")]
    #[schemars(with = "Option<crate::component::DurationText>")]
    pub interval: Option<Duration>,
    /// How long one push may take [default: 30s].
    #[serde(with = "humantime_serde")]
    #[schemars(with = "Option<crate::component::DurationText>")]
    pub timeout: Option<Duration>,
}

/// Metrics push, resolved.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub interval: Duration,
    pub timeout: Duration,
}

/// What the command line says about the push (`--otlp.endpoint` also reads
/// `OTEL_EXPORTER_OTLP_ENDPOINT`).
#[derive(Debug, Clone, Default)]
pub struct OtlpFlags {
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    pub interval: Option<String>,
}

impl OtlpConfig {
    /// The push as configured, highest first: flags, the OpenTelemetry variables, the file;
    /// `None` without an endpoint. `env` reads the process environment (a map in tests).
    pub fn resolve(
        flags: &OtlpFlags,
        env: &dyn Fn(&str) -> Option<String>,
        file: OtlpOptions,
    ) -> Result<Option<Self>, SectionError> {
        let (endpoint_field, endpoint) = match (&flags.endpoint, file.endpoint) {
            (Some(e), _) => (
                "--otlp.endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT)",
                e.clone(),
            ),
            (None, Some(e)) => ("otlp.endpoint", e),
            (None, None) => return Ok(None),
        };
        check_endpoint(endpoint_field, &endpoint)?;
        let protocol = if let Some(p) = &flags.protocol {
            OtlpProtocol::parse("--otlp.protocol", p)?
        } else if let Some(p) = env("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL") {
            OtlpProtocol::parse("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", &p)?
        } else if let Some(p) = env("OTEL_EXPORTER_OTLP_PROTOCOL") {
            OtlpProtocol::parse("OTEL_EXPORTER_OTLP_PROTOCOL", &p)?
        } else {
            file.protocol.unwrap_or(OtlpProtocol::HttpProtobuf)
        };
        let interval = if let Some(i) = &flags.interval {
            crate::component::positive_duration("--otlp.interval", i)?
        } else if let Some(ms) = env("OTEL_METRIC_EXPORT_INTERVAL") {
            millis("OTEL_METRIC_EXPORT_INTERVAL", &ms)?
        } else {
            positive("otlp.interval", file.interval)?.unwrap_or(Duration::from_secs(60))
        };
        let timeout = if let Some(ms) = env("OTEL_METRIC_EXPORT_TIMEOUT") {
            millis("OTEL_METRIC_EXPORT_TIMEOUT", &ms)?
        } else {
            positive("otlp.timeout", file.timeout)?.unwrap_or(Duration::from_secs(30))
        };
        Ok(Some(Self {
            endpoint,
            protocol,
            interval,
            timeout,
        }))
    }
}

/// A duration of the file: above zero when set.
pub fn positive(field: &str, d: Option<Duration>) -> Result<Option<Duration>, SectionError> {
    match d {
        Some(d) if d.is_zero() => Err(SectionError::new(field, "must be greater than zero")),
        d => Ok(d),
    }
}

/// The OpenTelemetry variables give durations in milliseconds.
pub fn millis(field: &str, s: &str) -> Result<Duration, SectionError> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err(SectionError::new(field, "must be greater than zero")),
        Ok(ms) => Ok(Duration::from_millis(ms)),
        Err(_) => Err(SectionError::new(
            field,
            format!("{s:?} is not a number of milliseconds"),
        )),
    }
}

/// Builds the exporter; the HTTP endpoint gets the `/v1/metrics` path as the OTel spec says
/// for `OTEL_EXPORTER_OTLP_ENDPOINT`.
pub fn exporter(cfg: &OtlpConfig) -> Result<MetricExporter> {
    otlp_exporter!(
        MetricExporter::builder().with_temporality(Temporality::Cumulative),
        cfg.protocol,
        cfg.endpoint.clone(),
        signal_url(&cfg.endpoint, "/v1/metrics"),
        cfg.timeout
    )
    .with_context(|| format!("OTLP exporter for {}", cfg.endpoint))
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
        telemetry.otlp_arrived(error.is_none());
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
