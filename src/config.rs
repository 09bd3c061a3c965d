//! Configuration: command-line flags, the environment, a YAML file and defaults.
//!
//! Every part of the agent declares its own section of the file next to its code (a serde
//! struct whose doc comments are its documentation); this module only composes them, applies
//! the flags and variables over them and checks the result. It knows no probe or check by
//! name: `probes.NAME` is handed to the probe registered as NAME.
//!
//! Precedence, highest first: a flag (several also read a variable, as `--help` shows), then
//! the standard `OTEL_*` variables, then `--config.file`, then the default. A bad value
//! anywhere is a [`ConfigError`] that names the field and the problem; `main` prints it and
//! exits with 2.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::checks::ChecksOptions;
use crate::collector::{CollectionOptions, Settings};
pub use crate::component::SectionError as ConfigError;
use crate::events::{EventExport, EventSink, EventsOptions};
use crate::http::web_config::{WebConfig, WebOptions};
use crate::inventory::TargetFilter;
use crate::inventory::kubernetes::KubernetesOptions;
use crate::probes::{self, Probe, Registration};
use crate::sources::{Node, SourcesOptions};
use crate::telemetry::otlp::{OtlpConfig, OtlpFlags, OtlpOptions};

/// Command-line flags, named as in Prometheus exporters.
#[derive(Parser, Debug, Default, Clone)]
#[command(
    name = "net-exporter",
    version,
    about = "Network telemetry for a Kubernetes node and every Pod on it"
)]
pub struct Flags {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// YAML configuration file (everything the flags set, plus per-probe and per-check
    /// options; docs/configuration.md).
    #[arg(long = "config.file", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Address to serve /metrics, /healthz and /readyz on [default: :9102].
    #[arg(long = "web.listen-address", value_name = "ADDR")]
    pub listen_address: Option<String>,
    /// Path under which to expose metrics [default: /metrics].
    #[arg(long = "web.telemetry-path", value_name = "PATH")]
    pub telemetry_path: Option<String>,
    /// Web configuration file (Prometheus exporter-toolkit format): TLS and basic auth
    /// [default: none: plain HTTP without authentication]. See docs/web.md.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,
    /// procfs mount point [default: /proc].
    #[arg(long = "path.procfs", value_name = "DIR")]
    pub procfs: Option<PathBuf>,
    /// sysfs mount point [default: /sys].
    #[arg(long = "path.sysfs", value_name = "DIR")]
    pub sysfs: Option<PathBuf>,
    /// Directory of named network namespaces [default: /run/netns].
    #[arg(long = "path.netns", value_name = "DIR")]
    pub netns_dir: Option<PathBuf>,
    /// Node name for the k8s_node label [default: the hostname].
    #[arg(long = "node-name", value_name = "NAME", env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Probes to turn off, comma-separated (e.g. conntrack,qdisc).
    #[arg(
        long = "collector.disable",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    pub disable: Vec<String>,
    /// OTLP endpoint to push metrics to [default: none: no push].
    #[arg(
        long = "otlp.endpoint",
        value_name = "URL",
        env = "OTEL_EXPORTER_OTLP_ENDPOINT"
    )]
    pub otlp_endpoint: Option<String>,
    /// OTLP protocol: grpc or http/protobuf [default: $OTEL_EXPORTER_OTLP_METRICS_PROTOCOL,
    /// $OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf].
    #[arg(long = "otlp.protocol", value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,
    /// OTLP push interval, e.g. 15s [default: $OTEL_METRIC_EXPORT_INTERVAL ms, else 60s].
    #[arg(long = "otlp.interval", value_name = "DURATION")]
    pub otlp_interval: Option<String>,
    /// Log level of the agent's own diagnostics [default: info].
    #[arg(long = "log.level", value_name = "LEVEL")]
    pub log_level: Option<LogLevel>,
    /// Where targets come from [default: auto: Kubernetes when in a cluster or given a
    /// kubeconfig].
    #[arg(long = "mode", value_name = "MODE")]
    pub mode: Option<ModeName>,
    /// kubeconfig file for the Kubernetes mode [default: in-cluster].
    #[arg(long = "kubeconfig", value_name = "FILE", env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Run every configuration check once, print what is wrong, exit 1 if anything is (0 if
    /// nothing is): the first command on a sick node.
    Diagnose {
        /// table, or json (the event JSON lines; with --pod, one JSON report).
        #[arg(long, default_value = "table")]
        output: String,
        /// Instead of the checks: the worst peers of this Pod (NAMESPACE/NAME; standalone, a
        /// netns name; `node` for the node's own namespace), from a live window of the peers
        /// probe.
        #[arg(long, value_name = "NAMESPACE/NAME")]
        pod: Option<String>,
        /// How long --pod watches the Pod's connections.
        #[arg(long, value_name = "DURATION", default_value = "10s")]
        window: String,
        /// How many peers --pod lists at most (table output).
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
}

/// How much the agent says about itself.
#[derive(
    clap::ValueEnum, Deserialize, Serialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

/// Where targets come from.
#[derive(
    clap::ValueEnum, Deserialize, Serialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum ModeName {
    /// Kubernetes when in a cluster (the service account's environment) or given a
    /// kubeconfig, else standalone.
    #[default]
    Auto,
    /// The node and every network namespace on it.
    Standalone,
    /// The node and its Pods, from the API server.
    Kubernetes,
}

/// The configuration file. Unknown fields are errors, so a typo never silently falls back to
/// a default.
#[derive(Deserialize, Serialize, JsonSchema, Debug, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// How /metrics is served.
    pub web: WebOptions,
    /// Where the node's filesystems are (in a container: where the host's are mounted).
    pub paths: PathsOptions,
    /// The `k8s_node` label, and which Pods are this node's [default: $NODE_NAME, else the
    /// hostname].
    pub node_name: Option<String>,
    /// The agent's own log level.
    pub log_level: LogLevel,
    /// Where targets come from.
    pub mode: ModeName,
    /// kubeconfig for the Kubernetes mode [default: $KUBECONFIG, else in-cluster].
    pub kubeconfig: Option<PathBuf>,
    /// How the API server is read (Kubernetes mode).
    pub kubernetes: KubernetesOptions,
    /// Metrics push over OTLP.
    pub otlp: OtlpOptions,
    /// How a collection runs and which namespaces it reads.
    pub collection: CollectionOptions,
    /// Extra OpenTelemetry resource attributes (`OTEL_RESOURCE_ATTRIBUTES` wins over them).
    pub resource_attributes: BTreeMap<String, String>,
    /// The kernel readers that probes share.
    pub sources: SourcesOptions,
    /// Each probe's section, by probe name: `enabled` and the probe's own options.
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub probes: BTreeMap<String, serde_yaml::Value>,
    /// The configuration checks.
    pub checks: ChecksOptions,
    /// Where events go.
    pub events: EventsOptions,
}

/// `paths:` in the configuration file.
#[derive(Deserialize, Serialize, JsonSchema, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PathsOptions {
    /// procfs mount point (`--path.procfs`).
    pub procfs: PathBuf,
    /// sysfs mount point (`--path.sysfs`).
    pub sysfs: PathBuf,
    /// Directory of named network namespaces (`--path.netns`).
    pub netns: PathBuf,
}

impl Default for PathsOptions {
    fn default() -> Self {
        Self {
            procfs: "/proc".into(),
            sysfs: "/sys".into(),
            netns: "/run/netns".into(),
        }
    }
}

impl FileConfig {
    pub fn parse(text: &str) -> Result<Self, serde_yaml::Error> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml::from_str(text)
    }
}

/// Where targets come from, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Standalone,
    /// With this kubeconfig, or the in-cluster configuration when `None`.
    Kubernetes(Option<PathBuf>),
}

/// An enabled probe and its section of the file.
#[derive(Debug, Clone)]
pub struct EnabledProbe {
    pub registration: &'static Registration,
    pub section: Option<serde_yaml::Value>,
}

/// The resolved configuration the agent runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub kubernetes: KubernetesOptions,
    pub checks: ChecksOptions,
    pub event_sinks: Vec<EventSink>,
    pub event_export: EventExport,
    /// Address, path, timeouts, TLS and basic auth of the HTTP endpoint.
    pub web: WebConfig,
    pub procfs: PathBuf,
    pub sysfs: PathBuf,
    pub netns_dir: PathBuf,
    pub node_name: String,
    pub log_level: LogLevel,
    pub workers: usize,
    pub max_series: usize,
    pub targets: TargetFilter,
    pub sources: SourcesOptions,
    /// The enabled probes, in registry order.
    pub probes: Vec<EnabledProbe>,
    pub otlp: Option<OtlpConfig>,
    pub service_name: String,
    /// Resource attributes beyond the ones the agent sets itself.
    pub resource_attributes: BTreeMap<String, String>,
}

impl Config {
    /// Resolves flags, the process environment and the config file.
    pub fn load(flags: &Flags) -> Result<Self, ConfigError> {
        let file = match &flags.config_file {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new(
                        "--config.file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                FileConfig::parse(&text).map_err(|e| {
                    ConfigError::new(format!("config file {}", path.display()), e.to_string())
                })?
            }
        };
        let mut cfg = Self::resolve(flags, &|k| std::env::var(k).ok(), file)?;
        if let Some(path) = cfg.web.config_file.clone() {
            cfg.web.load_file(&path)?;
        }
        Ok(cfg)
    }

    /// Resolves with an explicit environment for the `OTEL_*` variables and
    /// `KUBERNETES_SERVICE_HOST` (tests pass a map; the flags' own variables are read by clap).
    pub fn resolve(
        flags: &Flags,
        env: &dyn Fn(&str) -> Option<String>,
        file: FileConfig,
    ) -> Result<Self, ConfigError> {
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());

        // The components' sections first: a typo in one is named before any other problem.
        let probes = enabled_probes(&flags.disable, &file.probes)?;
        file.checks.build()?;

        let mut web = file.web;
        if let Some(a) = &flags.listen_address {
            web.listen_address = a.clone();
        }
        if let Some(p) = &flags.telemetry_path {
            web.telemetry_path = p.clone();
        }
        if let Some(f) = &flags.web_config_file {
            web.config_file = Some(f.clone());
        }
        let web = web.resolve()?;

        let node_name = flags
            .node_name
            .clone()
            .or(file.node_name)
            .filter(|n| !n.trim().is_empty())
            .or_else(hostname)
            .unwrap_or_else(|| "unknown".into());

        let (workers, max_series, targets) = file.collection.resolve()?;

        let otlp_flags = OtlpFlags {
            endpoint: flags.otlp_endpoint.clone().filter(|e| !e.trim().is_empty()),
            protocol: flags.otlp_protocol.clone(),
            interval: flags.otlp_interval.clone(),
        };
        let otlp = OtlpConfig::resolve(&otlp_flags, &env, file.otlp)?;

        let kubeconfig = flags.kubeconfig.clone().or(file.kubeconfig);
        let mode = match flags.mode.unwrap_or(file.mode) {
            ModeName::Standalone => Mode::Standalone,
            ModeName::Kubernetes => Mode::Kubernetes(kubeconfig),
            ModeName::Auto if kubeconfig.is_some() || env("KUBERNETES_SERVICE_HOST").is_some() => {
                Mode::Kubernetes(kubeconfig)
            }
            ModeName::Auto => Mode::Standalone,
        };

        let service_name = env("OTEL_SERVICE_NAME").unwrap_or_else(|| "net-exporter".into());
        let mut resource_attributes = file.resource_attributes;
        if let Some(list) = env("OTEL_RESOURCE_ATTRIBUTES") {
            for (k, v) in parse_resource_attributes(&list)
                .map_err(|p| ConfigError::new("OTEL_RESOURCE_ATTRIBUTES", p))?
            {
                resource_attributes.insert(k, v);
            }
        }

        let (event_sinks, event_export) = file.events.resolve(otlp.as_ref())?;

        Ok(Self {
            mode,
            kubernetes: file.kubernetes,
            checks: file.checks,
            event_sinks,
            event_export,
            web,
            procfs: flags.procfs.clone().unwrap_or(file.paths.procfs),
            sysfs: flags.sysfs.clone().unwrap_or(file.paths.sysfs),
            netns_dir: flags.netns_dir.clone().unwrap_or(file.paths.netns),
            node_name,
            log_level: flags.log_level.unwrap_or(file.log_level),
            workers,
            max_series,
            targets,
            sources: file.sources,
            probes,
            otlp,
            service_name,
            resource_attributes,
        })
    }

    /// The agent's OpenTelemetry resource.
    pub fn resource(&self) -> opentelemetry_sdk::Resource {
        crate::telemetry::resource(
            &self.service_name,
            &self.node_name,
            &self.resource_attributes,
        )
    }

    /// The node as probes see it.
    pub fn node(&self) -> Node {
        let mut node = Node::new(
            self.procfs.clone(),
            self.sysfs.clone(),
            self.sources.clone(),
            matches!(self.mode, Mode::Kubernetes(_)),
        );
        node.name = self.node_name.clone();
        node
    }

    /// What the collector runs with: the node and the enabled probes, built from their
    /// sections (checked when the configuration was resolved).
    pub fn collector_settings(&self) -> Settings {
        let probes = self
            .probes
            .iter()
            .filter_map(|p| match p.registration.build(p.section.as_ref()) {
                Ok((_, probe)) => Some((p.registration, probe)),
                Err(e) => {
                    tracing::error!(error = %e, "probe left out");
                    None
                }
            })
            .collect::<Vec<(&'static Registration, Box<dyn Probe>)>>();
        Settings {
            node: self.node(),
            probes,
            node_name: self.node_name.clone(),
            workers: self.workers,
            max_series: self.max_series,
        }
    }
}

/// Every probe is on unless its section says `enabled: false` or `--collector.disable` names
/// it; each section is checked by building its probe.
fn enabled_probes(
    disable: &[String],
    sections: &BTreeMap<String, serde_yaml::Value>,
) -> Result<Vec<EnabledProbe>, ConfigError> {
    let unknown = |name: &str| {
        let known: Vec<&str> = probes::PROBES.iter().map(|p| p.name).collect();
        format!("unknown probe {name:?}; known probes: {}", known.join(", "))
    };
    for name in sections.keys() {
        if probes::by_name(name).is_none() {
            return Err(ConfigError::new(format!("probes.{name}"), unknown(name)));
        }
    }
    for name in disable {
        if probes::by_name(name).is_none() {
            return Err(ConfigError::new("--collector.disable", unknown(name)));
        }
    }
    let mut out = Vec::new();
    for registration in probes::PROBES {
        let section = sections.get(registration.name);
        let (enabled, _) = registration.build(section)?;
        if enabled && !disable.iter().any(|d| d == registration.name) {
            out.push(EnabledProbe {
                registration,
                section: section.cloned(),
            });
        }
    }
    Ok(out)
}

/// `key1=value1,key2=value2`, values percent-encoded (the OTel environment variable format).
fn parse_resource_attributes(list: &str) -> Result<Vec<(String, String)>, String> {
    list.split(',')
        .filter(|kv| !kv.trim().is_empty())
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("{kv:?} is not key=value"))?;
            let k = k.trim();
            if k.is_empty() {
                return Err(format!("{kv:?} has an empty key"));
            }
            let v = percent_encoding::percent_decode_str(v.trim()).decode_utf8_lossy();
            Ok((k.to_string(), v.into_owned()))
        })
        .collect()
}

fn hostname() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
}

/// docs/configuration.md: every section of the file, from the structs that declare them
/// (their doc comments), every probe's and every check's options (a test keeps it current).
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "# Configuration\n\nGenerated from the code by `UPDATE_GOLDEN=1 cargo test --test golden docs`; \
         do not edit by hand: the doc comments of each section's struct are the text. \
         Flags and environment variables win over the file (`net-exporter --help`); a bad \
         value anywhere stops the agent with exit status 2 and names the field.\n\n\
         ## The file\n\n",
    );
    let schema = schemars::schema_for!(FileConfig);
    out.push_str(&crate::component::reference("", &schema, None));
    let sections = [
        ("web", schemars::schema_for!(WebOptions)),
        ("paths", schemars::schema_for!(PathsOptions)),
        ("otlp", schemars::schema_for!(OtlpOptions)),
        ("collection", schemars::schema_for!(CollectionOptions)),
        ("sources", schemars::schema_for!(SourcesOptions)),
        ("kubernetes", schemars::schema_for!(KubernetesOptions)),
        ("events", schemars::schema_for!(EventsOptions)),
        ("checks", schemars::schema_for!(ChecksOptions)),
        (
            "checks.node",
            schemars::schema_for!(crate::checks::NodeFacts),
        ),
    ];
    for (name, schema) in &sections {
        out.push_str(&format!("\n## `{name}`\n\n"));
        out.push_str(&crate::component::reference(name, schema, None));
    }
    out.push_str("\n## Probes\n\nEach under `probes.NAME`.\n");
    for p in probes::PROBES {
        out.push_str(&format!("\n### `probes.{}`\n\n", p.name));
        out.push_str(&p.reference());
    }
    out.push_str("\n## Checks\n\nEach under `checks.NAME`.\n");
    for c in crate::checks::CHECKS {
        out.push_str(&format!("\n### `checks.{}`\n\n", c.name));
        out.push_str(&c.reference());
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::telemetry::export::OtlpProtocol;

    fn resolve(flags: &Flags, env: &[(&str, &str)], yaml: &str) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let file = FileConfig::parse(yaml).map_err(|e| ConfigError::new("file", e.to_string()))?;
        Config::resolve(
            flags,
            &move |k| env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.clone()),
            file,
        )
    }

    #[test]
    fn defaults() {
        let c = resolve(&Flags::default(), &[], "").unwrap();
        assert_eq!(c.web.listen_address, ":9102");
        assert_eq!(c.web.telemetry_path, "/metrics");
        assert_eq!(c.procfs, PathBuf::from("/proc"));
        assert_eq!(c.probes.len(), probes::PROBES.len());
        assert!(c.otlp.is_none());
        assert_eq!(c.service_name, "net-exporter");
        assert_eq!(c.log_level, LogLevel::Info);
        assert_eq!(c.mode, Mode::Standalone);
        assert_eq!(
            c.event_export,
            EventExport {
                queue_size: 2048,
                timeout: Duration::from_secs(10)
            }
        );
        assert_eq!(c.event_sinks, [EventSink::Stdout]);
        assert_eq!(c.sources, SourcesOptions::default());
    }

    #[test]
    fn event_export_settings() {
        let c = resolve(
            &Flags::default(),
            &[],
            "events:\n  queue_size: 16\n  export_timeout: 2s\n",
        )
        .unwrap();
        assert_eq!(c.event_export.queue_size, 16);
        assert_eq!(c.event_export.timeout, Duration::from_secs(2));
        for (yaml, want) in [
            ("events:\n  queue_size: 0\n", "events.queue_size"),
            ("events:\n  queue_size: 2000000\n", "events.queue_size"),
            ("events:\n  queue_size: -1\n", "queue_size"),
            ("events:\n  export_timeout: 0s\n", "events.export_timeout"),
            ("events:\n  export_timeout: never\n", "export_timeout"),
            ("events:\n  sinks: [otlp]\n", "events.otlp_endpoint"),
            ("events:\n  sinks: [loki]\n", "events.loki_endpoint"),
            ("events:\n  sinks: [syslog]\n", "unknown variant `syslog`"),
            (
                "events:\n  loki_endpoint: loki:3100\n",
                "events.loki_endpoint",
            ),
        ] {
            let e = resolve(&Flags::default(), &[], yaml)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{yaml:?}: {e:?} should mention {want:?}");
        }
        let c = resolve(
            &Flags::default(),
            &[],
            "otlp:\n  endpoint: http://c:4317\n  protocol: grpc\nevents:\n  sinks: [stdout, otlp]\n",
        )
        .unwrap();
        assert_eq!(
            c.event_sinks,
            [
                EventSink::Stdout,
                EventSink::Otlp {
                    endpoint: "http://c:4317".into(),
                    protocol: OtlpProtocol::Grpc
                }
            ]
        );
    }

    #[test]
    fn precedence_flag_env_file() {
        let yaml = "node_name: from-file\notlp:\n  endpoint: http://file:4318\n  interval: 5s\n";
        let c = resolve(&Flags::default(), &[], yaml).unwrap();
        assert_eq!(c.node_name, "from-file");
        let otlp = c.otlp.unwrap();
        assert_eq!(otlp.endpoint, "http://file:4318");
        assert_eq!(otlp.interval, Duration::from_secs(5));
        assert_eq!(otlp.protocol, OtlpProtocol::HttpProtobuf);

        // NODE_NAME and OTEL_EXPORTER_OTLP_ENDPOINT arrive through their flags (clap reads them).
        let from_env = Flags {
            node_name: Some("from-env".into()),
            otlp_endpoint: Some("http://env:4317".into()),
            ..Flags::default()
        };
        let env = [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "2000"),
        ];
        let c = resolve(&from_env, &env, yaml).unwrap();
        assert_eq!(c.node_name, "from-env");
        let otlp = c.otlp.unwrap();
        assert_eq!(otlp.endpoint, "http://env:4317");
        assert_eq!(otlp.protocol, OtlpProtocol::Grpc);
        assert_eq!(otlp.interval, Duration::from_secs(2));

        let flags = Flags {
            otlp_protocol: Some("http/protobuf".into()),
            otlp_interval: Some("7s".into()),
            listen_address: Some(":9300".into()),
            ..from_env
        };
        let c = resolve(&flags, &env, yaml).unwrap();
        let otlp = c.otlp.unwrap();
        assert_eq!(otlp.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(otlp.interval, Duration::from_secs(7));
        assert_eq!(c.web.listen_address, ":9300");
    }

    #[test]
    fn flags_read_their_variables() {
        let flags = Flags::try_parse_from(["net-exporter"]).unwrap();
        assert_eq!(flags.node_name, std::env::var("NODE_NAME").ok());
        let flags =
            Flags::try_parse_from(["net-exporter", "--node-name=a", "--mode=standalone"]).unwrap();
        assert_eq!(flags.node_name.as_deref(), Some("a"));
        assert_eq!(flags.mode, Some(ModeName::Standalone));
        assert!(Flags::try_parse_from(["net-exporter", "--mode=cluster"]).is_err());
        assert!(Flags::try_parse_from(["net-exporter", "--log.level=loud"]).is_err());
    }

    #[test]
    fn probes_and_options() {
        let yaml =
            "probes:\n  conntrack:\n    enabled: false\n  qdisc:\n    device_prefixes: [veth]\n";
        let flags = Flags {
            disable: vec!["arp".into()],
            ..Flags::default()
        };
        let c = resolve(&flags, &[], yaml).unwrap();
        let names: Vec<&str> = c.probes.iter().map(|p| p.registration.name).collect();
        assert!(!names.contains(&"conntrack"));
        assert!(!names.contains(&"arp"));
        assert!(names.contains(&"qdisc"));
        assert_eq!(c.collector_settings().probes.len(), names.len());
    }

    #[test]
    fn errors_name_the_field() {
        // (flags, environment, YAML, what the error must mention)
        type Case<'a> = (Flags, &'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case] = &[
            (
                Flags::default(),
                &[],
                "probes:\n  nope: {}\n",
                "probes.nope",
            ),
            (
                Flags::default(),
                &[],
                "web:\n  listen_adress: x\n",
                "unknown field `listen_adress`",
            ),
            (
                Flags::default(),
                &[],
                "probes:\n  qdisc:\n    device_prefixes: ['']\n",
                "probes.qdisc: device_prefixes",
            ),
            (
                Flags::default(),
                &[],
                "probes:\n  tcp:\n    device_prefixes: [a]\n",
                "probes.tcp.device_prefixes: unknown field",
            ),
            (
                Flags::default(),
                &[],
                "probes:\n  packetloss:\n    attach: kprobe\n",
                "unknown variant `kprobe`",
            ),
            (
                Flags::default(),
                &[],
                "probes:\n  arp:\n    attach: tp_btf\n",
                "probes.arp.attach: unknown field",
            ),
            (
                Flags::default(),
                &[],
                "probes:\n  arp:\n    interval: 5s\n",
                "probes.arp.interval",
            ),
            (
                Flags::default(),
                &[],
                "sources:\n  socket_path: ebpf\n",
                "unknown variant `ebpf`",
            ),
            (
                Flags::default(),
                &[],
                "collection:\n  workers: 0\n",
                "collection.workers",
            ),
            (
                Flags::default(),
                &[],
                "collection:\n  include_netns: ['[']\n",
                "collection.include_netns",
            ),
            (
                Flags::default(),
                &[],
                "otlp:\n  endpoint: host:4317\n",
                "otlp.endpoint",
            ),
            (
                Flags::default(),
                &[],
                "otlp:\n  endpoint: http://h\n  interval: soon\n",
                "interval",
            ),
            (
                Flags {
                    otlp_endpoint: Some("http://h".into()),
                    ..Flags::default()
                },
                &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
                "",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                Flags {
                    otlp_endpoint: Some("http://h".into()),
                    ..Flags::default()
                },
                &[("OTEL_METRIC_EXPORT_INTERVAL", "1s")],
                "",
                "OTEL_METRIC_EXPORT_INTERVAL",
            ),
            (
                Flags {
                    otlp_endpoint: Some("h:4317".into()),
                    ..Flags::default()
                },
                &[],
                "",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                Flags::default(),
                &[("OTEL_RESOURCE_ATTRIBUTES", "novalue")],
                "",
                "OTEL_RESOURCE_ATTRIBUTES",
            ),
            (
                Flags {
                    listen_address: Some("nohost".into()),
                    ..Flags::default()
                },
                &[],
                "",
                "web.listen-address",
            ),
            (
                Flags {
                    telemetry_path: Some("metrics".into()),
                    ..Flags::default()
                },
                &[],
                "",
                "web.telemetry-path",
            ),
            (
                Flags {
                    disable: vec!["bogus".into()],
                    ..Flags::default()
                },
                &[],
                "",
                "--collector.disable",
            ),
            (Flags::default(), &[], "log_level: loud\n", "log_level"),
            (Flags::default(), &[], "mode: cluster\n", "mode"),
            (Flags::default(), &[], "[1, 2]", "invalid type"),
        ];
        for (flags, env, yaml, want) in cases {
            let e = resolve(flags, env, yaml).expect_err(want).to_string();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
    }

    #[test]
    fn resource_attributes_are_decoded() {
        let c = resolve(
            &Flags::default(),
            &[
                ("OTEL_RESOURCE_ATTRIBUTES", "a=1,b=x%20y"),
                ("OTEL_SERVICE_NAME", "svc"),
            ],
            "resource_attributes:\n  a: file\n  c: file\n",
        )
        .unwrap();
        assert_eq!(c.resource_attributes["a"], "1");
        assert_eq!(c.resource_attributes["b"], "x y");
        assert_eq!(c.resource_attributes["c"], "file");
        assert_eq!(c.service_name, "svc");
    }
}
