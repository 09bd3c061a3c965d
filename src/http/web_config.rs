//! How `/metrics` is served: the `web:` section (address, path, timeouts, connection limit)
//! and the web configuration file in the Prometheus exporter toolkit's format (TLS, basic
//! auth), read and checked at start so that a bad file stops the agent with a clear message.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::component::SectionError as ConfigError;

/// `web:` in the configuration file; the flags `--web.listen-address`, `--web.telemetry-path`
/// and `--web.config.file` override the first three.
#[derive(Deserialize, Serialize, JsonSchema, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct WebOptions {
    /// Address to serve /metrics, /healthz and /readyz on: `:PORT` (every address),
    /// `HOST:PORT` or `[V6]:PORT`.
    pub listen_address: String,
    /// Path under which metrics are served.
    pub telemetry_path: String,
    /// The web configuration file (TLS, basic auth; see docs/web.md). None: plain HTTP
    /// without authentication.
    pub config_file: Option<PathBuf>,
    /// Time a client has to send its request headers; also how long an idle keep-alive
    /// connection stays open.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::component::DurationText")]
    pub read_header_timeout: Duration,
    /// Time a request may take from its headers to its response.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::component::DurationText")]
    pub request_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog until one closes, so that
    /// a flood of idle clients cannot take the descriptors the namespaces need.
    pub max_connections: usize,
}

impl Default for WebOptions {
    fn default() -> Self {
        Self {
            listen_address: ":9102".into(),
            telemetry_path: "/metrics".into(),
            config_file: None,
            read_header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 256,
        }
    }
}

impl WebOptions {
    /// Checks the values; `flag` names how the first two were set in errors.
    pub fn resolve(self) -> Result<WebConfig, ConfigError> {
        parse_listen_address(&self.listen_address)
            .map_err(|p| ConfigError::new("web.listen-address", p))?;
        let path = &self.telemetry_path;
        if !path.starts_with('/') || path == "/healthz" || path == "/readyz" {
            return Err(ConfigError::new(
                "web.telemetry-path",
                format!("{path:?} must start with '/' and not be /healthz or /readyz"),
            ));
        }
        for (field, d) in [
            ("web.read_header_timeout", self.read_header_timeout),
            ("web.request_timeout", self.request_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::new(field, "must be greater than zero"));
            }
        }
        match self.max_connections {
            0 => {
                return Err(ConfigError::new(
                    "web.max_connections",
                    "must be greater than zero",
                ));
            }
            n if n > 65_536 => {
                return Err(ConfigError::new(
                    "web.max_connections",
                    format!("{n} is more than the 65536 allowed"),
                ));
            }
            _ => {}
        }
        Ok(WebConfig {
            listen_address: self.listen_address,
            telemetry_path: self.telemetry_path,
            read_header_timeout: self.read_header_timeout,
            request_timeout: self.request_timeout,
            max_connections: self.max_connections,
            config_file: self.config_file,
            tls: None,
            basic_auth_users: BTreeMap::new(),
        })
    }
}

/// How the HTTP endpoint serves: address and path, timeouts, and TLS and basic auth from the
/// web config file.
#[derive(Debug, Clone)]
pub struct WebConfig {
    pub listen_address: String,
    pub telemetry_path: String,
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
    /// The socket addresses to bind, from `:PORT`, `HOST:PORT` or `[V6]:PORT`.
    pub fn listen_addrs(&self) -> Result<Vec<SocketAddr>, String> {
        parse_listen_address(&self.listen_address)
    }

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
            ConfigError::new(
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
                        ConfigError::new(
                            format!("{label}: {field}"),
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
        serde_yaml::from_str(text).map_err(|e| ConfigError::new("", e.to_string()))?
    };
    for (user, hash) in &file.basic_auth_users {
        let field = format!("basic_auth_users.{user}");
        if user.is_empty() || user.contains(':') {
            return Err(ConfigError::new(
                &field,
                "a user name must be non-empty and without ':'",
            ));
        }
        if hash.parse::<bcrypt::HashParts>().is_err() {
            return Err(ConfigError::new(
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
            return Err(ConfigError::new(field, "must not be empty"));
        }
    }
    let client_auth = match t.client_auth_type.as_deref().unwrap_or("NoClientCert") {
        "" | "NoClientCert" => ClientAuth::None,
        "VerifyClientCertIfGiven" => ClientAuth::VerifyIfGiven,
        "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerify,
        other @ ("RequestClientCert" | "RequireAnyClientCert") => {
            return Err(ConfigError::new(
                "tls_server_config.client_auth_type",
                format!(
                    "{other} (client certificates accepted unverified) is not supported; \
                     use VerifyClientCertIfGiven or RequireAndVerifyClientCert"
                ),
            ));
        }
        other => {
            return Err(ConfigError::new(
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
            return Err(ConfigError::new(
                "tls_server_config.client_ca_file",
                "set without a client_auth_type that verifies client certificates",
            ));
        }
        (ClientAuth::VerifyIfGiven | ClientAuth::RequireAndVerify, None) => {
            return Err(ConfigError::new(
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
        Some(old @ ("TLS10" | "TLS11")) => Err(ConfigError::new(
            field,
            format!("{old} is not supported (TLS 1.2 and 1.3 are): use TLS12 or TLS13"),
        )),
        Some(other) => Err(ConfigError::new(
            field,
            format!("{other:?} is not TLS12 or TLS13"),
        )),
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
        return Err(ConfigError::new(
            "tls_server_config.min_version",
            "is above max_version",
        ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        let c = WebOptions::default().resolve().unwrap();
        assert_eq!(c.read_header_timeout, Duration::from_secs(10));
        assert_eq!(c.request_timeout, Duration::from_secs(30));
        assert_eq!(c.max_connections, 256);
        assert_eq!(c.config_file, None);
        assert!(c.tls.is_none() && c.basic_auth_users.is_empty());
        let yaml = "read_header_timeout: 2s\nrequest_timeout: 1m\nmax_connections: 8\nconfig_file: /etc/web.yml\n";
        let o: WebOptions = serde_yaml::from_str(yaml).unwrap();
        let c = o.resolve().unwrap();
        assert_eq!(c.max_connections, 8);
        assert_eq!(c.read_header_timeout, Duration::from_secs(2));
        assert_eq!(c.request_timeout, Duration::from_secs(60));
        assert_eq!(c.config_file, Some(PathBuf::from("/etc/web.yml")));
        for (yaml, field) in [
            ("read_header_timeout: soon\n", "read_header_timeout"),
            ("request_timeout: 0s\n", "web.request_timeout"),
            ("max_connections: 0\n", "web.max_connections"),
            ("max_connections: 100000\n", "web.max_connections"),
            ("request_timeot: 1s\n", "unknown field `request_timeot`"),
            ("listen_address: nohost\n", "web.listen-address"),
            ("telemetry_path: metrics\n", "web.telemetry-path"),
        ] {
            let e = serde_yaml::from_str::<WebOptions>(yaml)
                .map_err(|e| e.to_string())
                .and_then(|o| o.resolve().map_err(|e| e.to_string()))
                .unwrap_err();
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
}
