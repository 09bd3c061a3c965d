//! Configuration: command-line flags, the environment, a YAML file and defaults.
//!
//! Precedence, highest first: a flag, then an environment variable (`NODE_NAME`, the standard
//! `OTEL_*` variables), then `--config.file`, then the default. A bad value anywhere is a
//! [`ConfigError`] that names the field and the problem; `main` prints it and exits with 2.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::probes;
pub use crate::probes::packetloss::AttachMode;
pub use crate::sources::socket_storage::SocketPath;

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
    /// YAML configuration file (everything the flags set, plus per-probe options).
    #[arg(long = "config.file", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Address to serve /metrics, /healthz and /readyz on [default: :9102].
    #[arg(long = "web.listen-address", value_name = "ADDR")]
    pub listen_address: Option<String>,
    /// Path under which to expose metrics [default: /metrics].
    #[arg(long = "web.telemetry-path", value_name = "PATH")]
    pub telemetry_path: Option<String>,
    /// procfs mount point [default: /proc].
    #[arg(long = "path.procfs", value_name = "DIR")]
    pub procfs: Option<PathBuf>,
    /// sysfs mount point [default: /sys].
    #[arg(long = "path.sysfs", value_name = "DIR")]
    pub sysfs: Option<PathBuf>,
    /// Directory of named network namespaces [default: /run/netns].
    #[arg(long = "path.netns", value_name = "DIR")]
    pub netns_dir: Option<PathBuf>,
    /// Node name for the k8s_node label [default: $NODE_NAME, else the hostname].
    #[arg(long = "node-name", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Probes to turn off, comma-separated (e.g. conntrack,qdisc).
    #[arg(
        long = "collector.disable",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    pub disable: Vec<String>,
    /// OTLP endpoint to push metrics to [default: $OTEL_EXPORTER_OTLP_ENDPOINT; none: no push].
    #[arg(long = "otlp.endpoint", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// OTLP protocol: grpc or http/protobuf [default: $OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf].
    #[arg(long = "otlp.protocol", value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,
    /// OTLP push interval, e.g. 15s [default: $OTEL_METRIC_EXPORT_INTERVAL ms, else 60s].
    #[arg(long = "otlp.interval", value_name = "DURATION")]
    pub otlp_interval: Option<String>,
    /// Log level of the agent's own diagnostics (error, warn, info, debug, trace) [default: info].
    #[arg(long = "log.level", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// auto (Kubernetes when in a cluster or given a kubeconfig), standalone or kubernetes [default: auto].
    #[arg(long = "mode", value_name = "MODE")]
    pub mode: Option<String>,
    /// kubeconfig file for the Kubernetes mode [default: $KUBECONFIG, else in-cluster].
    #[arg(long = "kubeconfig", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Run every configuration check once, print what is wrong, exit 1 if anything is (0 if
    /// nothing is): the first command on a sick node.
    Diagnose {
        /// table, or json (the event JSON lines).
        #[arg(long, default_value = "table")]
        output: String,
    },
}

/// The YAML file. Unknown fields are errors, so a typo never silently falls back to a default.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub web: WebFile,
    pub paths: PathsFile,
    pub node_name: Option<String>,
    pub log_level: Option<String>,
    pub mode: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    pub otlp: OtlpFile,
    pub collection: CollectionFile,
    /// Extra OpenTelemetry resource attributes.
    pub resource_attributes: BTreeMap<String, String>,
    /// Per-probe settings, by probe name.
    pub probes: BTreeMap<String, ProbeFile>,
    /// The configuration checks.
    pub checks: crate::checks::CheckOptions,
    /// Where events go.
    pub events: EventsFile,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
pub struct EventsFile {
    /// Any of stdout, otlp, loki [default: stdout].
    pub sinks: Option<Vec<String>>,
    /// OTLP logs endpoint and protocol [default: the metrics' OTLP endpoint and protocol].
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: Option<String>,
    /// Grafana Loki's base URL (`http://loki:3100`); `/otlp/v1/logs` is appended.
    pub loki_endpoint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSink {
    Stdout,
    Otlp {
        endpoint: String,
        protocol: OtlpProtocol,
    },
    Loki {
        endpoint: String,
    },
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
pub struct WebFile {
    pub listen_address: Option<String>,
    pub telemetry_path: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PathsFile {
    pub procfs: Option<PathBuf>,
    pub sysfs: Option<PathBuf>,
    pub netns: Option<PathBuf>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpFile {
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CollectionFile {
    /// Threads that read namespaces in parallel [default: the number of CPUs, at most 4].
    pub workers: Option<usize>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeFile {
    pub enabled: Option<bool>,
    /// qdisc: device name prefixes whose root qdiscs are summed.
    pub device_prefixes: Option<Vec<String>>,
    /// packetloss: where to attach (auto, tp_btf, raw_tracepoint, tracepoint, tracepoint_nobtf).
    pub attach: Option<AttachMode>,
    /// packetloss: the kernel BTF to read drop reasons and relocate the program with.
    pub btf_path: Option<PathBuf>,
    /// podip: host-local IPAM's directory (one folder per network, one file per address).
    pub ipam_dir: Option<PathBuf>,
    /// tcpsummary (and sockbacklog): `auto`, `bpf` (socket storage) or `sock_diag`.
    pub socket_path: Option<SocketPath>,
}

/// Options probes read; each probe uses its own.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub device_prefixes: Vec<String>,
    pub attach: AttachMode,
    pub btf_path: PathBuf,
    pub ipam_dir: PathBuf,
    pub socket_path: SocketPath,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            device_prefixes: vec!["cali".into(), "eth".into()],
            attach: AttachMode::Auto,
            btf_path: "/sys/kernel/btf/vmlinux".into(),
            ipam_dir: "/var/lib/cni/networks".into(),
            socket_path: SocketPath::Auto,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

#[derive(Debug, Clone)]
pub struct OtlpConfig {
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub interval: Duration,
    pub timeout: Duration,
}

/// Where targets come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Standalone,
    /// With this kubeconfig, or the in-cluster configuration when `None`.
    Kubernetes(Option<PathBuf>),
}

/// The resolved configuration the agent runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub checks: crate::checks::CheckOptions,
    pub event_sinks: Vec<EventSink>,
    pub listen_address: String,
    pub telemetry_path: String,
    pub procfs: PathBuf,
    pub sysfs: PathBuf,
    pub netns_dir: PathBuf,
    pub node_name: String,
    pub log_level: String,
    pub workers: usize,
    /// Names of the enabled probes, in registry order.
    pub probes: Vec<&'static str>,
    pub probe_options: ProbeOptions,
    pub otlp: Option<OtlpConfig>,
    pub service_name: String,
    /// Resource attributes beyond the ones the agent sets itself.
    pub resource_attributes: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

fn err(field: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        problem: problem.into(),
    }
}

impl Config {
    /// Resolves flags, the process environment and the config file.
    pub fn load(flags: &Flags) -> Result<Self, ConfigError> {
        let file = match &flags.config_file {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    err(
                        "--config.file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                FileConfig::parse(&text)
                    .map_err(|e| err(&format!("config file {}", path.display()), e.to_string()))?
            }
        };
        Self::resolve(flags, &|k| std::env::var(k).ok(), file)
    }

    /// Resolves with an explicit environment (tests pass a map).
    pub fn resolve(
        flags: &Flags,
        env: &dyn Fn(&str) -> Option<String>,
        file: FileConfig,
    ) -> Result<Self, ConfigError> {
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());

        let listen_address = flags
            .listen_address
            .clone()
            .or(file.web.listen_address)
            .unwrap_or_else(|| ":9102".into());
        parse_listen_address(&listen_address).map_err(|p| err("web.listen-address", p))?;

        let telemetry_path = flags
            .telemetry_path
            .clone()
            .or(file.web.telemetry_path)
            .unwrap_or_else(|| "/metrics".into());
        if !telemetry_path.starts_with('/')
            || telemetry_path == "/healthz"
            || telemetry_path == "/readyz"
        {
            return Err(err(
                "web.telemetry-path",
                format!("{telemetry_path:?} must start with '/' and not be /healthz or /readyz"),
            ));
        }

        let node_name = flags
            .node_name
            .clone()
            .or_else(|| env("NODE_NAME"))
            .or(file.node_name)
            .or_else(hostname)
            .unwrap_or_else(|| "unknown".into());

        let log_level = flags
            .log_level
            .clone()
            .or(file.log_level)
            .unwrap_or_else(|| "info".into());
        if !["error", "warn", "info", "debug", "trace"].contains(&log_level.as_str()) {
            return Err(err(
                "log.level",
                format!("{log_level:?} is not one of error, warn, info, debug, trace"),
            ));
        }

        let workers = match file.collection.workers {
            Some(0) => return Err(err("collection.workers", "must be at least 1")),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
        };

        // Probes: all on by default; the file and --collector.disable turn them off.
        for name in file.probes.keys() {
            if probes::by_name(name).is_none() {
                return Err(err(&format!("probes.{name}"), unknown_probe(name)));
            }
        }
        for name in &flags.disable {
            if probes::by_name(name).is_none() {
                return Err(err("--collector.disable", unknown_probe(name)));
            }
        }
        let enabled: Vec<&'static str> = probes::PROBES
            .iter()
            .map(|p| p.name())
            .filter(|n| !flags.disable.iter().any(|d| d == n))
            .filter(|n| file.probes.get(*n).and_then(|p| p.enabled).unwrap_or(true))
            .collect();
        let defaults = ProbeOptions::default();
        let device_prefixes = file
            .probes
            .get("qdisc")
            .and_then(|p| p.device_prefixes.clone())
            .unwrap_or(defaults.device_prefixes);
        if device_prefixes.iter().any(|p| p.is_empty()) {
            return Err(err(
                "probes.qdisc.device_prefixes",
                "an empty prefix would select every device",
            ));
        }
        for (name, p) in &file.probes {
            let misplaced = [
                ("device_prefixes", p.device_prefixes.is_some(), "qdisc"),
                ("attach", p.attach.is_some(), "packetloss"),
                ("btf_path", p.btf_path.is_some(), "packetloss"),
                ("ipam_dir", p.ipam_dir.is_some(), "podip"),
                ("socket_path", p.socket_path.is_some(), "tcpsummary"),
            ];
            for (field, set, owner) in misplaced {
                if set && name != owner {
                    return Err(err(
                        &format!("probes.{name}.{field}"),
                        format!("only the {owner} probe takes {field}"),
                    ));
                }
            }
        }
        let packetloss = file.probes.get("packetloss");
        let attach = packetloss.and_then(|p| p.attach).unwrap_or(defaults.attach);
        let btf_path = packetloss
            .and_then(|p| p.btf_path.clone())
            .unwrap_or(defaults.btf_path);

        let otlp = resolve_otlp(flags, &env, file.otlp)?;

        let kubeconfig = flags
            .kubeconfig
            .clone()
            .or_else(|| env("KUBECONFIG").map(PathBuf::from))
            .or(file.kubeconfig);
        let mode_name = flags
            .mode
            .clone()
            .or(file.mode)
            .unwrap_or_else(|| "auto".into());
        let mode = match mode_name.as_str() {
            "standalone" => Mode::Standalone,
            "kubernetes" => Mode::Kubernetes(kubeconfig),
            // In a cluster (the service account's environment) or pointed at one.
            "auto" if kubeconfig.is_some() || env("KUBERNETES_SERVICE_HOST").is_some() => {
                Mode::Kubernetes(kubeconfig)
            }
            "auto" => Mode::Standalone,
            other => {
                return Err(err(
                    "mode",
                    format!("{other:?} is not one of auto, standalone, kubernetes"),
                ));
            }
        };

        let service_name = env("OTEL_SERVICE_NAME").unwrap_or_else(|| "net-exporter".into());
        let mut resource_attributes = file.resource_attributes;
        if let Some(list) = env("OTEL_RESOURCE_ATTRIBUTES") {
            for (k, v) in
                parse_resource_attributes(&list).map_err(|p| err("OTEL_RESOURCE_ATTRIBUTES", p))?
            {
                resource_attributes.insert(k, v);
            }
        }

        file.checks.validate().map_err(|p| err("checks", p))?;
        let event_sinks = resolve_sinks(&file.events, otlp.as_ref())?;

        Ok(Self {
            mode,
            checks: file.checks,
            event_sinks,
            listen_address,
            telemetry_path,
            procfs: flags
                .procfs
                .clone()
                .or(file.paths.procfs)
                .unwrap_or_else(|| "/proc".into()),
            sysfs: flags
                .sysfs
                .clone()
                .or(file.paths.sysfs)
                .unwrap_or_else(|| "/sys".into()),
            netns_dir: flags
                .netns_dir
                .clone()
                .or(file.paths.netns)
                .unwrap_or_else(|| "/run/netns".into()),
            node_name,
            log_level,
            workers,
            probes: enabled,
            probe_options: ProbeOptions {
                device_prefixes,
                attach,
                btf_path,
                ipam_dir: file
                    .probes
                    .get("podip")
                    .and_then(|p| p.ipam_dir.clone())
                    .unwrap_or(defaults.ipam_dir),
                socket_path: file
                    .probes
                    .get("tcpsummary")
                    .and_then(|p| p.socket_path)
                    .unwrap_or(defaults.socket_path),
            },
            otlp,
            service_name,
            resource_attributes,
        })
    }

    /// The socket addresses to bind, from `:PORT`, `HOST:PORT` or `[V6]:PORT`.
    pub fn listen_addrs(&self) -> Result<Vec<SocketAddr>, String> {
        parse_listen_address(&self.listen_address)
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

fn unknown_probe(name: &str) -> String {
    let known: Vec<&str> = probes::PROBES.iter().map(|p| p.name()).collect();
    format!("unknown probe {name:?}; known probes: {}", known.join(", "))
}

fn resolve_otlp(
    flags: &Flags,
    env: &dyn Fn(&str) -> Option<String>,
    file: OtlpFile,
) -> Result<Option<OtlpConfig>, ConfigError> {
    let (endpoint_field, endpoint) = if let Some(e) = flags.otlp_endpoint.clone() {
        ("--otlp.endpoint", e)
    } else if let Some(e) = env("OTEL_EXPORTER_OTLP_ENDPOINT") {
        ("OTEL_EXPORTER_OTLP_ENDPOINT", e)
    } else if let Some(e) = file.endpoint {
        ("otlp.endpoint", e)
    } else {
        return Ok(None);
    };
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(err(
            endpoint_field,
            format!("{endpoint:?} must start with http:// or https://"),
        ));
    }

    let (protocol_field, protocol) = if let Some(p) = flags.otlp_protocol.clone() {
        ("--otlp.protocol", p)
    } else if let Some(p) = env("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL") {
        ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", p)
    } else if let Some(p) = env("OTEL_EXPORTER_OTLP_PROTOCOL") {
        ("OTEL_EXPORTER_OTLP_PROTOCOL", p)
    } else {
        (
            "otlp.protocol",
            file.protocol.unwrap_or_else(|| "http/protobuf".into()),
        )
    };
    let protocol = match protocol.as_str() {
        "grpc" => OtlpProtocol::Grpc,
        "http/protobuf" => OtlpProtocol::HttpProtobuf,
        other => {
            return Err(err(
                protocol_field,
                format!("{other:?} is not supported; use grpc or http/protobuf"),
            ));
        }
    };

    let interval = if let Some(i) = &flags.otlp_interval {
        parse_duration("--otlp.interval", i)?
    } else if let Some(ms) = env("OTEL_METRIC_EXPORT_INTERVAL") {
        parse_millis("OTEL_METRIC_EXPORT_INTERVAL", &ms)?
    } else if let Some(i) = &file.interval {
        parse_duration("otlp.interval", i)?
    } else {
        Duration::from_secs(60)
    };
    let timeout = if let Some(ms) = env("OTEL_METRIC_EXPORT_TIMEOUT") {
        parse_millis("OTEL_METRIC_EXPORT_TIMEOUT", &ms)?
    } else if let Some(t) = &file.timeout {
        parse_duration("otlp.timeout", t)?
    } else {
        Duration::from_secs(30)
    };
    Ok(Some(OtlpConfig {
        endpoint,
        protocol,
        interval,
        timeout,
    }))
}

fn resolve_sinks(
    file: &EventsFile,
    metrics_otlp: Option<&OtlpConfig>,
) -> Result<Vec<EventSink>, ConfigError> {
    let names = file.sinks.clone().unwrap_or_else(|| vec!["stdout".into()]);
    let mut out = Vec::new();
    for n in names {
        out.push(match n.as_str() {
            "stdout" => EventSink::Stdout,
            "otlp" => {
                let endpoint = file
                    .otlp_endpoint
                    .clone()
                    .or_else(|| metrics_otlp.map(|o| o.endpoint.clone()))
                    .ok_or_else(|| {
                        err(
                            "events.otlp_endpoint",
                            "the otlp sink needs an endpoint (or an OTLP endpoint for metrics)",
                        )
                    })?;
                let protocol = match file.otlp_protocol.as_deref() {
                    None => metrics_otlp.map_or(OtlpProtocol::HttpProtobuf, |o| o.protocol),
                    Some("grpc") => OtlpProtocol::Grpc,
                    Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
                    Some(other) => {
                        return Err(err(
                            "events.otlp_protocol",
                            format!("{other:?} is not grpc or http/protobuf"),
                        ));
                    }
                };
                EventSink::Otlp { endpoint, protocol }
            }
            "loki" => EventSink::Loki {
                endpoint: file.loki_endpoint.clone().ok_or_else(|| {
                    err("events.loki_endpoint", "the loki sink needs loki_endpoint")
                })?,
            },
            other => {
                return Err(err(
                    "events.sinks",
                    format!("unknown sink {other:?}; use stdout, otlp, loki"),
                ));
            }
        });
    }
    for (field, url) in [
        ("events.otlp_endpoint", &file.otlp_endpoint),
        ("events.loki_endpoint", &file.loki_endpoint),
    ] {
        if let Some(u) = url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(err(
                field,
                format!("{u:?} must start with http:// or https://"),
            ));
        }
    }
    Ok(out)
}

fn parse_duration(field: &str, s: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        err(
            field,
            format!("{s:?} is not a duration (e.g. 15s, 1m): {e}"),
        )
    })?;
    if d.is_zero() {
        return Err(err(field, "must be greater than zero"));
    }
    Ok(d)
}

fn parse_millis(field: &str, s: &str) -> Result<Duration, ConfigError> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err(err(field, "must be greater than zero")),
        Ok(ms) => Ok(Duration::from_millis(ms)),
        Err(_) => Err(err(field, format!("{s:?} is not a number of milliseconds"))),
    }
}

fn parse_listen_address(s: &str) -> Result<Vec<SocketAddr>, String> {
    let with_host = if s.starts_with(':') {
        format!("[::]{s}")
    } else {
        s.to_string()
    };
    let addrs: Vec<SocketAddr> = with_host
        .to_socket_addrs()
        .map_err(|e| format!("{s:?} is not HOST:PORT or :PORT ({e})"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{s:?} resolves to no address"));
    }
    Ok(addrs)
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
            Ok((k.to_string(), percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hostname() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(flags: &Flags, env: &[(&str, &str)], yaml: &str) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let file = FileConfig::parse(yaml).map_err(|e| err("file", e.to_string()))?;
        Config::resolve(
            flags,
            &move |k| env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.clone()),
            file,
        )
    }

    #[test]
    fn defaults() {
        let c = resolve(&Flags::default(), &[], "").unwrap();
        assert_eq!(c.listen_address, ":9102");
        assert_eq!(c.telemetry_path, "/metrics");
        assert_eq!(c.procfs, PathBuf::from("/proc"));
        assert_eq!(c.probe_options.device_prefixes, vec!["cali", "eth"]);
        assert_eq!(c.probes.len(), probes::PROBES.len());
        assert!(c.otlp.is_none());
        assert_eq!(c.service_name, "net-exporter");
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

        let env = [
            ("NODE_NAME", "from-env"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "2000"),
        ];
        let c = resolve(&Flags::default(), &env, yaml).unwrap();
        assert_eq!(c.node_name, "from-env");
        let otlp = c.otlp.unwrap();
        assert_eq!(otlp.endpoint, "http://env:4317");
        assert_eq!(otlp.protocol, OtlpProtocol::Grpc);
        assert_eq!(otlp.interval, Duration::from_secs(2));

        let flags = Flags {
            node_name: Some("from-flag".into()),
            otlp_endpoint: Some("http://flag:4318".into()),
            ..Flags::default()
        };
        let c = resolve(&flags, &env, yaml).unwrap();
        assert_eq!(c.node_name, "from-flag");
        assert_eq!(c.otlp.unwrap().endpoint, "http://flag:4318");
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
        assert!(!c.probes.contains(&"conntrack"));
        assert!(!c.probes.contains(&"arp"));
        assert!(c.probes.contains(&"qdisc"));
        assert_eq!(c.probe_options.device_prefixes, vec!["veth"]);
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
                "device_prefixes",
            ),
            (
                Flags::default(),
                &[],
                "probes:\n  tcp:\n    device_prefixes: [a]\n",
                "probes.tcp.device_prefixes",
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
                "probes.arp.attach",
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
                "otlp:\n  endpoint: host:4317\n",
                "otlp.endpoint",
            ),
            (
                Flags::default(),
                &[],
                "otlp:\n  endpoint: http://h\n  interval: soon\n",
                "otlp.interval",
            ),
            (
                Flags::default(),
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                ],
                "",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                Flags::default(),
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h"),
                    ("OTEL_METRIC_EXPORT_INTERVAL", "1s"),
                ],
                "",
                "OTEL_METRIC_EXPORT_INTERVAL",
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
            (
                Flags {
                    log_level: Some("loud".into()),
                    ..Flags::default()
                },
                &[],
                "",
                "log.level",
            ),
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
