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
    /// Records an OTLP/Loki sink holds while its endpoint is slow or down [default: 2048];
    /// past it new records are dropped and counted.
    pub queue_size: Option<usize>,
    /// How long one export may take before it counts as failed [default: 10s].
    pub export_timeout: Option<String>,
}

/// How the OTLP and Loki event sinks buffer and give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventExport {
    pub queue_size: usize,
    pub timeout: Duration,
}

impl Default for EventExport {
    fn default() -> Self {
        Self {
            queue_size: 2048,
            timeout: Duration::from_secs(10),
        }
    }
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
    /// The web configuration file (TLS, basic auth), as `--web.config.file`.
    pub config_file: Option<PathBuf>,
    /// Time a client has to send its request headers, e.g. `10s` [default: 10s]; also how long
    /// an idle keep-alive connection stays open.
    pub read_header_timeout: Option<String>,
    /// Time a request may take from its headers to its response, e.g. `30s` [default: 30s].
    pub request_timeout: Option<String>,
    /// Connections served at once [default: 256]; more wait in the listen backlog until one
    /// closes, so that a flood of idle clients cannot take the descriptors the namespaces need.
    pub max_connections: Option<usize>,
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
    /// Ceiling on the series of one collection [default: 60000, enough for 250 Pods with
    /// their interfaces several times over]; namespaces past it are left out, counted and
    /// logged once.
    pub max_series: Option<usize>,
    /// Standalone: only namespaces whose name matches one of these patterns (`*` matches
    /// anything) [default: all].
    pub include_netns: Vec<String>,
    /// Standalone: namespaces whose name matches one of these are left out.
    pub exclude_netns: Vec<String>,
    /// Kubernetes: only Pods matching this label selector (`app=web,tier!=db`) [default: all].
    /// A Pod annotated `net-exporter.io/exclude: "true"` is left out either way.
    pub pod_label_selector: Option<String>,
}

/// Which namespaces a collection reads, and how much it may produce.
#[derive(Debug, Clone, Default)]
pub struct CollectionConfig {
    pub max_series: usize,
    pub include_netns: Vec<String>,
    pub exclude_netns: Vec<String>,
    pub pod_label_selector: Option<String>,
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

impl CollectionConfig {
    /// Whether a standalone namespace called `name` is read.
    pub fn wants_netns(&self, name: &str) -> bool {
        (self.include_netns.is_empty() || self.include_netns.iter().any(|p| glob_match(p, name)))
            && !self.exclude_netns.iter().any(|p| glob_match(p, name))
    }
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
    pub event_export: EventExport,
    pub listen_address: String,
    pub telemetry_path: String,
    /// Timeouts, TLS and basic auth of the HTTP endpoint.
    pub web: WebConfig,
    pub procfs: PathBuf,
    pub sysfs: PathBuf,
    pub netns_dir: PathBuf,
    pub node_name: String,
    pub log_level: String,
    pub workers: usize,
    pub collection: CollectionConfig,
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
        let mut cfg = Self::resolve(flags, &|k| std::env::var(k).ok(), file)?;
        if let Some(path) = cfg.web.config_file.clone() {
            cfg.web.load_file(&path)?;
        }
        Ok(cfg)
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

        let web = WebConfig {
            read_header_timeout: match &file.web.read_header_timeout {
                Some(t) => parse_duration("web.read_header_timeout", t)?,
                None => Duration::from_secs(10),
            },
            request_timeout: match &file.web.request_timeout {
                Some(t) => parse_duration("web.request_timeout", t)?,
                None => Duration::from_secs(30),
            },
            max_connections: match file.web.max_connections {
                None => 256,
                Some(0) => return Err(err("web.max_connections", "must be greater than zero")),
                Some(n) if n > 65_536 => {
                    return Err(err(
                        "web.max_connections",
                        format!("{n} is more than the 65536 allowed"),
                    ));
                }
                Some(n) => n,
            },
            config_file: flags
                .web_config_file
                .clone()
                .or(file.web.config_file.clone()),
            tls: None,
            basic_auth_users: BTreeMap::new(),
        };

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

        let collection = CollectionConfig {
            max_series: match file.collection.max_series {
                Some(0) => return Err(err("collection.max_series", "must be at least 1")),
                Some(n) => n,
                None => 60_000,
            },
            include_netns: file.collection.include_netns.clone(),
            exclude_netns: file.collection.exclude_netns.clone(),
            pod_label_selector: file.collection.pod_label_selector.clone(),
        };
        if let Some(sel) = &collection.pod_label_selector {
            crate::inventory::LabelSelector::parse(sel)
                .map_err(|p| err("collection.pod_label_selector", p))?;
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
        let event_export = resolve_event_export(&file.events)?;

        Ok(Self {
            mode,
            checks: file.checks,
            event_sinks,
            event_export,
            listen_address,
            telemetry_path,
            web,
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
            collection,
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

/// How the HTTP endpoint serves: timeouts, and TLS and basic auth from the web config file.
#[derive(Debug, Clone)]
pub struct WebConfig {
    pub read_header_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    /// `--web.config.file` (or `web.config_file`); [`Config::load`] reads it into `tls` and
    /// `basic_auth_users`.
    pub config_file: Option<PathBuf>,
    pub tls: Option<TlsSettings>,
    /// User name -> bcrypt hash; empty: no authentication.
    pub basic_auth_users: BTreeMap<String, String>,
}

/// `tls_server_config` of the web config file, checked; paths made absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_auth: ClientAuth,
    pub client_ca_file: Option<PathBuf>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
}

/// The `client_auth_type`s that are supported (the ones that verify what they accept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `NoClientCert` (the default).
    None,
    /// `VerifyClientCertIfGiven`.
    VerifyIfGiven,
    /// `RequireAndVerifyClientCert`.
    RequireAndVerify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// The web configuration file, in the format of the Prometheus exporter toolkit
/// (`--web.config.file`). Unknown fields are errors.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfigFile {
    pub tls_server_config: Option<TlsServerConfigFile>,
    /// User name -> bcrypt hash of the password.
    pub basic_auth_users: BTreeMap<String, String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct TlsServerConfigFile {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default)]
    pub client_auth_type: Option<String>,
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    #[serde(default)]
    pub min_version: Option<String>,
    #[serde(default)]
    pub max_version: Option<String>,
}

impl WebConfig {
    /// How errors about the web config file name it: `web config file PATH`.
    pub fn file_label(&self) -> String {
        match &self.config_file {
            Some(p) => format!("web config file {}", p.display()),
            None => "web config file".into(),
        }
    }

    /// Reads the web config file at `path` into `tls` and `basic_auth_users`. Relative paths in
    /// it are relative to its directory; the certificate, key and CA files must be readable.
    pub fn load_file(&mut self, path: &std::path::Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            err(
                "--web.config.file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let label = format!("web config file {}", path.display());
        let (tls, users) = parse_web_config(&text, dir).map_err(|e| ConfigError {
            field: if e.field.is_empty() {
                label.clone()
            } else {
                format!("{label}: {}", e.field)
            },
            problem: e.problem,
        })?;
        if let Some(t) = &tls {
            let files = [
                ("tls_server_config.cert_file", Some(&t.cert_file)),
                ("tls_server_config.key_file", Some(&t.key_file)),
                (
                    "tls_server_config.client_ca_file",
                    t.client_ca_file.as_ref(),
                ),
            ];
            for (field, file) in files {
                if let Some(f) = file {
                    std::fs::File::open(f).map_err(|e| {
                        err(
                            &format!("{label}: {field}"),
                            format!("cannot read {}: {e}", f.display()),
                        )
                    })?;
                }
            }
        }
        self.tls = tls;
        self.basic_auth_users = users;
        Ok(())
    }
}

/// Parses and checks a web config file's text; paths are resolved against `dir`. Errors name
/// the field inside the file (an empty field for YAML errors, whose message names it).
pub fn parse_web_config(
    text: &str,
    dir: &std::path::Path,
) -> Result<(Option<TlsSettings>, BTreeMap<String, String>), ConfigError> {
    let file: WebConfigFile = if text.trim().is_empty() {
        WebConfigFile::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| err("", e.to_string()))?
    };
    for (user, hash) in &file.basic_auth_users {
        let field = format!("basic_auth_users.{user}");
        if user.is_empty() || user.contains(':') {
            return Err(err(&field, "a user name must be non-empty and without ':'"));
        }
        if hash.parse::<bcrypt::HashParts>().is_err() {
            return Err(err(
                &field,
                "not a bcrypt hash (make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)",
            ));
        }
    }
    let Some(t) = file.tls_server_config else {
        return Ok((None, file.basic_auth_users));
    };
    let abs = |p: &PathBuf| {
        if p.is_absolute() {
            p.clone()
        } else {
            dir.join(p)
        }
    };
    for (field, p) in [
        ("tls_server_config.cert_file", &t.cert_file),
        ("tls_server_config.key_file", &t.key_file),
    ] {
        if p.as_os_str().is_empty() {
            return Err(err(field, "must not be empty"));
        }
    }
    let client_auth = match t.client_auth_type.as_deref().unwrap_or("NoClientCert") {
        "" | "NoClientCert" => ClientAuth::None,
        "VerifyClientCertIfGiven" => ClientAuth::VerifyIfGiven,
        "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerify,
        other @ ("RequestClientCert" | "RequireAnyClientCert") => {
            return Err(err(
                "tls_server_config.client_auth_type",
                format!(
                    "{other} (client certificates accepted unverified) is not supported; \
                     use VerifyClientCertIfGiven or RequireAndVerifyClientCert"
                ),
            ));
        }
        other => {
            return Err(err(
                "tls_server_config.client_auth_type",
                format!(
                    "{other:?} is not one of NoClientCert, VerifyClientCertIfGiven, \
                     RequireAndVerifyClientCert"
                ),
            ));
        }
    };
    let client_ca_file = t
        .client_ca_file
        .as_ref()
        .filter(|p| !p.as_os_str().is_empty());
    match (client_auth, client_ca_file) {
        (ClientAuth::None, Some(_)) => {
            return Err(err(
                "tls_server_config.client_ca_file",
                "set without a client_auth_type that verifies client certificates",
            ));
        }
        (ClientAuth::VerifyIfGiven | ClientAuth::RequireAndVerify, None) => {
            return Err(err(
                "tls_server_config.client_ca_file",
                "client_auth_type verifies client certificates: it needs client_ca_file",
            ));
        }
        _ => {}
    }
    let version = |field: &str, v: Option<&str>, default: TlsVersion| match v {
        None | Some("") => Ok(default),
        Some("TLS12") => Ok(TlsVersion::Tls12),
        Some("TLS13") => Ok(TlsVersion::Tls13),
        Some(old @ ("TLS10" | "TLS11")) => Err(err(
            field,
            format!("{old} is not supported (TLS 1.2 and 1.3 are): use TLS12 or TLS13"),
        )),
        Some(other) => Err(err(field, format!("{other:?} is not TLS12 or TLS13"))),
    };
    let min_version = version(
        "tls_server_config.min_version",
        t.min_version.as_deref(),
        TlsVersion::Tls12,
    )?;
    let max_version = version(
        "tls_server_config.max_version",
        t.max_version.as_deref(),
        TlsVersion::Tls13,
    )?;
    if min_version > max_version {
        return Err(err("tls_server_config.min_version", "is above max_version"));
    }
    Ok((
        Some(TlsSettings {
            cert_file: abs(&t.cert_file),
            key_file: abs(&t.key_file),
            client_auth,
            client_ca_file: client_ca_file.map(abs),
            min_version,
            max_version,
        }),
        file.basic_auth_users,
    ))
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

fn resolve_event_export(file: &EventsFile) -> Result<EventExport, ConfigError> {
    let default = EventExport::default();
    let queue_size = match file.queue_size {
        None => default.queue_size,
        Some(0) => return Err(err("events.queue_size", "must be greater than zero")),
        Some(n) if n > 1 << 20 => {
            return Err(err(
                "events.queue_size",
                format!("{n} records is more than the 1048576 allowed"),
            ));
        }
        Some(n) => n,
    };
    let timeout = match &file.export_timeout {
        None => default.timeout,
        Some(t) => parse_duration("events.export_timeout", t)?,
    };
    Ok(EventExport {
        queue_size,
        timeout,
    })
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
    fn web_timeouts_and_config_file() {
        let c = resolve(&Flags::default(), &[], "").unwrap();
        assert_eq!(c.web.read_header_timeout, Duration::from_secs(10));
        assert_eq!(c.web.request_timeout, Duration::from_secs(30));
        assert_eq!(c.web.max_connections, 256);
        assert_eq!(c.web.config_file, None);
        assert!(c.web.tls.is_none() && c.web.basic_auth_users.is_empty());
        let yaml = "web:\n  read_header_timeout: 2s\n  request_timeout: 1m\n  max_connections: 8\n  config_file: /etc/web.yml\n";
        let c = resolve(&Flags::default(), &[], yaml).unwrap();
        assert_eq!(c.web.max_connections, 8);
        assert_eq!(c.web.read_header_timeout, Duration::from_secs(2));
        assert_eq!(c.web.request_timeout, Duration::from_secs(60));
        assert_eq!(c.web.config_file, Some(PathBuf::from("/etc/web.yml")));
        let flags = Flags {
            web_config_file: Some("/flag/web.yml".into()),
            ..Flags::default()
        };
        let c = resolve(&flags, &[], yaml).unwrap();
        assert_eq!(c.web.config_file, Some(PathBuf::from("/flag/web.yml")));
        for (yaml, field) in [
            (
                "web:\n  read_header_timeout: soon\n",
                "web.read_header_timeout",
            ),
            ("web:\n  request_timeout: 0s\n", "web.request_timeout"),
            ("web:\n  max_connections: 0\n", "web.max_connections"),
            ("web:\n  max_connections: 100000\n", "web.max_connections"),
            (
                "web:\n  request_timeot: 1s\n",
                "unknown field `request_timeot`",
            ),
        ] {
            let e = resolve(&Flags::default(), &[], yaml)
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{e:?} should mention {field:?}");
        }
    }

    /// A bcrypt hash of "pw" (cost 4).
    const HASH: &str = "$2b$04$.xtZFRwgO8JtbRfGtP1YQ.SjSawFrhBxc0fPihu/FKbzED6VWWuM.";

    #[test]
    fn web_config_file() {
        let dir = std::path::Path::new("/etc/net-exporter");
        let (tls, users) = parse_web_config("", dir).unwrap();
        assert!(tls.is_none() && users.is_empty());

        let text = format!(
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: /abs/tls.key\n  \
             client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n  \
             min_version: TLS13\nbasic_auth_users:\n  prom: '{HASH}'\n"
        );
        let (tls, users) = parse_web_config(&text, dir).unwrap();
        assert_eq!(
            tls,
            Some(TlsSettings {
                cert_file: "/etc/net-exporter/tls.crt".into(),
                key_file: "/abs/tls.key".into(),
                client_auth: ClientAuth::VerifyIfGiven,
                client_ca_file: Some("/etc/net-exporter/ca.crt".into()),
                min_version: TlsVersion::Tls13,
                max_version: TlsVersion::Tls13,
            })
        );
        assert_eq!(users.get("prom").map(String::as_str), Some(HASH));
        assert!(bcrypt::verify("pw", HASH).unwrap());

        let (tls, _) =
            parse_web_config("tls_server_config:\n  cert_file: c\n  key_file: k\n", dir).unwrap();
        let tls = tls.unwrap();
        assert_eq!(tls.client_auth, ClientAuth::None);
        assert_eq!(
            (tls.min_version, tls.max_version),
            (TlsVersion::Tls12, TlsVersion::Tls13)
        );

        let tls = "tls_server_config:\n  cert_file: c\n  key_file: k\n";
        // (file text, what the error must mention)
        let cases: &[(String, &str)] = &[
            ("tls_config: {}\n".into(), "unknown field `tls_config`"),
            (format!("{tls}  cert: x\n"), "unknown field `cert`"),
            (
                "tls_server_config:\n  cert_file: c\n".into(),
                "missing field `key_file`",
            ),
            (
                "tls_server_config:\n  cert_file: ''\n  key_file: k\n".into(),
                "tls_server_config.cert_file",
            ),
            (
                format!("{tls}  client_auth_type: RequestClientCert\n"),
                "tls_server_config.client_auth_type",
            ),
            (
                format!("{tls}  client_auth_type: Sometimes\n"),
                "tls_server_config.client_auth_type",
            ),
            (
                format!("{tls}  client_auth_type: RequireAndVerifyClientCert\n"),
                "tls_server_config.client_ca_file",
            ),
            (
                format!("{tls}  client_ca_file: ca.crt\n"),
                "tls_server_config.client_ca_file",
            ),
            (
                format!("{tls}  min_version: TLS11\n"),
                "tls_server_config.min_version",
            ),
            (
                format!("{tls}  max_version: TLS14\n"),
                "tls_server_config.max_version",
            ),
            (
                format!("{tls}  min_version: TLS13\n  max_version: TLS12\n"),
                "tls_server_config.min_version",
            ),
            (
                "basic_auth_users:\n  prom: secret\n".into(),
                "basic_auth_users.prom",
            ),
            (
                format!("basic_auth_users:\n  'a:b': '{HASH}'\n"),
                "basic_auth_users.a:b",
            ),
            (
                "basic_auth_users:\n  prom:\n".into(),
                "basic_auth_users.prom",
            ),
        ];
        for (text, want) in cases {
            let e = parse_web_config(text, dir).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e:?} should mention {want:?}");
        }
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
        assert_eq!(
            c.event_export,
            EventExport {
                queue_size: 2048,
                timeout: Duration::from_secs(10)
            }
        );
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
            (
                "events:\n  export_timeout: never\n",
                "events.export_timeout",
            ),
        ] {
            let e = resolve(&Flags::default(), &[], yaml)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{yaml:?}: {e:?} should mention {want:?}");
        }
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
    fn namespace_patterns() {
        assert!(glob_match("pod-*", "pod-1"));
        assert!(glob_match("*-test", "a-test"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxcyyb"));
        assert!(glob_match("exact", "exact") && !glob_match("exact", "exactly"));
        assert!(glob_match("*", "anything"));
        let c = CollectionConfig {
            include_netns: vec!["app-*".into()],
            exclude_netns: vec!["app-skip*".into()],
            ..Default::default()
        };
        assert!(c.wants_netns("app-1") && !c.wants_netns("app-skip-2") && !c.wants_netns("other"));
        assert!(CollectionConfig::default().wants_netns("x"));
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
