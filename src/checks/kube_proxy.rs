//! `KubeProxy` / KubeProxyAbnormal: kube-proxy not running on the node, or its health endpoint
//! (`checks.KubeProxyAbnormal.healthz`, default `http://127.0.0.1:10256/healthz`) not answering 200
//! within 2 s. Services stop working on a node whose kube-proxy is gone or stuck.
//!
//! Runs in Kubernetes mode, or standalone with `standalone: true`; `enabled: false` turns it
//! off (clusters that replace kube-proxy). The process is looked for in the agent's procfs, so
//! the agent needs the host's PID namespace (`hostPID: true`) to see it.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Build, Check, CheckContext, Environment, Problem, processes_named};

pub struct KubeProxyAbnormal {
    options: KubeProxyOptions,
    healthz: hyper::Uri,
}

/// `checks.KubeProxyAbnormal`.
#[derive(Deserialize, Serialize, JsonSchema, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct KubeProxyOptions {
    /// kube-proxy's health endpoint, plain http, expected to answer 200 within 2 s.
    pub healthz: String,
    /// Look in standalone mode too (a node whose kube-proxy the agent should watch without
    /// reading the Kubernetes API). Clusters without kube-proxy set `enabled: false`.
    pub standalone: bool,
}

impl Default for KubeProxyOptions {
    fn default() -> Self {
        Self {
            healthz: "http://127.0.0.1:10256/healthz".into(),
            standalone: false,
        }
    }
}

/// How long the health endpoint has to answer.
pub const HEALTHZ_TIMEOUT: Duration = Duration::from_secs(2);

/// A plain-http URL with a host (the endpoint is kube-proxy's local health port).
pub fn parse_http_url(url: &str) -> Result<hyper::Uri> {
    let uri: hyper::Uri = url.parse().with_context(|| format!("{url:?}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("{url:?}: only http:// URLs are supported");
    }
    if uri.host().is_none_or(str::is_empty) {
        bail!("{url:?}: no host");
    }
    let authority = uri.authority().map_or("", |a| a.as_str());
    let after_host = authority
        .rsplit_once(']')
        .map_or(authority, |(_, rest)| rest);
    if after_host.contains(':') && uri.port_u16().is_none() {
        bail!("{url:?}: the port is not a number");
    }
    Ok(uri)
}

/// The status code of `GET uri`, all within `timeout`. Checks run on blocking threads: the
/// request runs on the agent's runtime, or on one of its own where there is none (tests).
pub fn http_status(uri: &hyper::Uri, timeout: Duration) -> Result<u16> {
    let get = async {
        tokio::time::timeout(timeout, get_status(uri))
            .await
            .map_err(|_| anyhow!("GET {uri}: no answer within {timeout:?}"))?
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.block_on(get),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("a runtime for the request")?
            .block_on(get),
    }
}

async fn get_status(uri: &hyper::Uri) -> Result<u16> {
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().unwrap_or(80);
    // An IPv6 literal keeps its brackets in the URI's host.
    let addr = host.trim_start_matches('[').trim_end_matches(']');
    let stream = tokio::net::TcpStream::connect((addr, port))
        .await
        .with_context(|| format!("connect to {uri}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP handshake with {uri}"))?;
    let conn = tokio::spawn(conn);
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let request = hyper::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, "net-exporter")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .context("build the request")?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("GET {uri}"))?;
    conn.abort();
    Ok(response.status().as_u16())
}

impl Build for KubeProxyAbnormal {
    const NAME: &'static str = "KubeProxyAbnormal";
    const PROBE: &'static str = "KubeProxy";
    const TYPES: &'static [&'static str] = &["KubeProxy"];
    type Options = KubeProxyOptions;

    fn new(options: KubeProxyOptions) -> Result<Self> {
        let healthz = parse_http_url(&options.healthz).context("healthz")?;
        Ok(Self { options, healthz })
    }
}

impl Check for KubeProxyAbnormal {
    fn prerequisites(&self, env: &Environment) -> Result<(), String> {
        if env.kubernetes || self.options.standalone {
            Ok(())
        } else {
            Err("standalone: kube-proxy is looked for in Kubernetes mode (or with `standalone: true`)".into())
        }
    }

    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
        let pids = processes_named(&ctx.procfs, "kube-proxy")
            .with_context(|| format!("list the processes of {}", ctx.procfs.display()))?;
        let failure = if pids.is_empty() {
            Some("no kube-proxy process".to_string())
        } else {
            match http_status(&self.healthz, HEALTHZ_TIMEOUT) {
                Ok(200) => None,
                Ok(code) => Some(format!("health endpoint answered {code}")),
                Err(e) => Some(format!("{e:#}")),
            }
        };
        Ok(failure
            .map(|why| {
                tracing::debug!(reason = %why, "kube-proxy abnormal");
                // The attribute tells which side failed, not the varying details, so that a
                // persisting failure stays one problem for noise control.
                let side = if pids.is_empty() {
                    "process"
                } else {
                    "healthz"
                };
                vec![Problem {
                    kind: "KubeProxy",
                    msg: "kube-proxy looks abnormal, please check it.".into(),
                    object: vec![
                        ("process.executable.name", "kube-proxy".into()),
                        ("failure", side.into()),
                    ],
                }]
            })
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Instant;

    use super::*;

    #[test]
    fn parses_urls() {
        let u = parse_http_url("http://127.0.0.1:10256/healthz").unwrap();
        assert_eq!(
            (u.host(), u.port_u16(), u.path()),
            (Some("127.0.0.1"), Some(10256), "/healthz")
        );
        let u = parse_http_url("http://localhost").unwrap();
        assert_eq!((u.host(), u.port_u16()), (Some("localhost"), None));
        let u = parse_http_url("http://[::1]:10256/healthz").unwrap();
        assert_eq!((u.host(), u.port_u16()), (Some("[::1]"), Some(10256)));
        assert!(parse_http_url("https://127.0.0.1/healthz").is_err());
        assert!(parse_http_url("http://:80/").is_err());
        assert!(parse_http_url("http://h:port/").is_err());
    }

    #[test]
    fn status_of_a_local_server() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for code in ["200 OK", "503 Service Unavailable"] {
                let (mut c, _) = l.accept().unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.ends_with(b"\r\n\r\n") {
                    let n = c.read(&mut buf).unwrap();
                    assert!(n > 0, "request cut short: {req:?}");
                    req.extend_from_slice(&buf[..n]);
                }
                assert!(req.starts_with(b"GET /healthz HTTP/1.1\r\n"), "{req:?}");
                write!(c, "HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n").unwrap();
            }
        });
        let url = parse_http_url(&format!("http://127.0.0.1:{port}/healthz")).unwrap();
        assert_eq!(http_status(&url, HEALTHZ_TIMEOUT).unwrap(), 200);
        assert_eq!(http_status(&url, HEALTHZ_TIMEOUT).unwrap(), 503);
        server.join().unwrap();
        // Nothing listens any more.
        assert!(http_status(&url, HEALTHZ_TIMEOUT).is_err());
    }

    #[test]
    fn a_silent_server_times_out() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = parse_http_url(&format!("http://{}/healthz", l.local_addr().unwrap())).unwrap();
        let t = Instant::now();
        let e = http_status(&url, Duration::from_millis(300)).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(!format!("{e:#}").is_empty());
        drop(l);
    }
}
