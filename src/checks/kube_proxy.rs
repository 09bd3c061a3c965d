//! `KubeProxy` / KubeProxyAbnormal: kube-proxy not running on the node, or its health endpoint
//! (`checks.kube_proxy_healthz`, default `http://127.0.0.1:10256/healthz`) not answering 200
//! within 2 s. Services stop working on a node whose kube-proxy is gone or stuck.
//!
//! Runs in Kubernetes mode, or always with `checks.kube_proxy: true`; `checks.kube_proxy:
//! false` turns it off (clusters that replace kube-proxy). Elsewhere it finds nothing. The
//! process is looked for in the agent's procfs, so the agent needs the host's PID namespace
//! (`hostPID: true`) to see it.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use super::irqbalance::processes_named;
use super::{Check, CheckContext, Problem};

pub struct KubeProxyAbnormal;

/// How long the health endpoint has to answer.
pub const HEALTHZ_TIMEOUT: Duration = Duration::from_secs(2);

/// `http://host[:port][/path]` → (host, port, path). Only plain http: the endpoint is
/// kube-proxy's local health port.
pub fn parse_http_url(url: &str) -> Result<(String, u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("{url:?}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| anyhow!("{url:?}: unclosed [ in the host"))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        bail!("{url:?}: no host");
    }
    let port = match port {
        Some(p) => p
            .parse()
            .map_err(|_| anyhow!("{url:?}: {p:?} is not a port"))?,
        None => 80,
    };
    Ok((host.to_string(), port, path.to_string()))
}

/// The status code of `GET url` (HTTP/1.0), all within `timeout`.
pub fn http_status(url: &str, timeout: Duration) -> Result<u16> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| anyhow!("GET {url}: no answer within {timeout:?}"))
    };
    let (host, port, path) = parse_http_url(url)?;
    let addrs: Vec<_> = (host.as_str(), port)
        .to_socket_addrs()
        .with_context(|| format!("resolve {host}"))?
        .collect();
    let mut last = None;
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, left()?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut s = match (stream, last) {
        (Some(s), _) => s,
        (None, Some(e)) => return Err(e).with_context(|| format!("connect to {url}")),
        (None, None) => bail!("{host}: no address"),
    };
    let host_header = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    s.set_write_timeout(Some(left()?))?;
    // One write: a server that answers after the first segment must see the whole request.
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {host_header}\r\nUser-Agent: net-exporter\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes())
        .with_context(|| format!("send GET {url}"))?;
    // The status line is all that is needed.
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < 4096 {
        s.set_read_timeout(Some(left()?))?;
        let n = s
            .read(&mut buf)
            .with_context(|| format!("read the answer of {url}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default();
    let mut f = line.split_whitespace();
    match (f.next(), f.next().and_then(|c| c.parse::<u16>().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => Ok(code),
        _ => bail!("GET {url}: not an HTTP answer: {line:?}"),
    }
}

impl Check for KubeProxyAbnormal {
    fn name(&self) -> &'static str {
        "KubeProxyAbnormal"
    }

    fn probe(&self) -> &'static str {
        "KubeProxy"
    }

    fn kinds(&self) -> &'static [&'static str] {
        &["KubeProxy"]
    }

    fn run(&self, ctx: &CheckContext) -> Result<Vec<Problem>> {
        let o = &ctx.options;
        if !o.kube_proxy.unwrap_or(ctx.cluster.is_some()) {
            return Ok(Vec::new());
        }
        let pids = processes_named(ctx, "kube-proxy")
            .with_context(|| format!("list the processes of {}", ctx.procfs.display()))?;
        let failure = if pids.is_empty() {
            Some("no kube-proxy process".to_string())
        } else {
            match http_status(&o.kube_proxy_healthz, HEALTHZ_TIMEOUT) {
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
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:10256/healthz").unwrap(),
            ("127.0.0.1".into(), 10256, "/healthz".into())
        );
        assert_eq!(
            parse_http_url("http://localhost").unwrap(),
            ("localhost".into(), 80, "/".into())
        );
        assert_eq!(
            parse_http_url("http://[::1]:10256/healthz").unwrap(),
            ("::1".into(), 10256, "/healthz".into())
        );
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
                assert!(req.starts_with(b"GET /healthz HTTP/1.0\r\n"), "{req:?}");
                write!(c, "HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n").unwrap();
            }
        });
        let url = format!("http://127.0.0.1:{port}/healthz");
        assert_eq!(http_status(&url, HEALTHZ_TIMEOUT).unwrap(), 200);
        assert_eq!(http_status(&url, HEALTHZ_TIMEOUT).unwrap(), 503);
        server.join().unwrap();
        // Nothing listens any more.
        assert!(http_status(&url, HEALTHZ_TIMEOUT).is_err());
    }

    #[test]
    fn a_silent_server_times_out() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/healthz", l.local_addr().unwrap());
        let t = Instant::now();
        let e = http_status(&url, Duration::from_millis(300)).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(!format!("{e:#}").is_empty());
        drop(l);
    }
}
