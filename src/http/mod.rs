//! The HTTP endpoint: `/metrics` (or the configured path), `/healthz`, `/readyz`, served over
//! plain HTTP or TLS, with optional basic auth, gzip and timeouts (`docs/web.md`).
//!
//! Every connection is served by a task of its own, so a slow client holds only its own
//! connection: the request headers must arrive within `web.read_header_timeout` (which also
//! closes idle keep-alive connections and bounds the TLS handshake), and a request must be
//! answered within `web.request_timeout` (else `503`).

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tower_http::CompressionLevel;
use tower_http::compression::CompressionLayer;
use tower_http::timeout::TimeoutLayer;

use crate::collector::Collector;
pub mod web_config;

use crate::component::SectionError as ConfigError;
use crate::telemetry::Telemetry;
use web_config::{ClientAuth, TlsSettings, TlsVersion, WebConfig};

pub struct App {
    pub collector: Arc<Collector>,
    pub telemetry: Arc<Telemetry>,
    /// Set once the first collection has finished.
    pub ready: AtomicBool,
    pub telemetry_path: String,
}

/// The routes. `/healthz` and `/readyz` answer without authentication (kubelet probes carry no
/// credentials); everything else needs it when `auth` is set. Responses are gzip-compressed for
/// clients that accept gzip (Prometheus does), at the fastest level: at 100 namespaces with 50
/// peers each the text is ~4.6 MiB, which the default level took 19 ms to compress (2.2x the
/// render) and the fastest 2.7 ms, for 0.23 MiB instead of 0.14 (`make bench`, exposition).
/// A request that takes longer than `request_timeout` gets a `503`.
pub fn router(app: Arc<App>, auth: Option<Arc<BasicAuth>>, request_timeout: Duration) -> Router {
    let mut protected = Router::new()
        .route(&app.telemetry_path.clone(), get(metrics))
        .route("/", get(index));
    if let Some(auth) = auth {
        protected = protected.route_layer(middleware::from_fn_with_state(auth, require_auth));
    }
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(protected)
        .with_state(app)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            request_timeout,
        ))
        .layer(CompressionLayer::new().quality(CompressionLevel::Fastest))
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let snapshot = app.collector.collect().await;
    app.ready.store(true, Ordering::Relaxed);
    let telemetry = Arc::clone(&app.telemetry);
    match tokio::task::spawn_blocking(move || telemetry.render_prometheus(snapshot)).await {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering /metrics panicked");
            (StatusCode::INTERNAL_SERVER_ERROR, "rendering failed\n").into_response()
        }
    }
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.ready.load(Ordering::Relaxed) {
        "ready\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "first collection not finished\n",
        )
            .into_response()
    }
}

async fn index(State(app): State<Arc<App>>) -> Html<String> {
    Html(format!(
        "<html><head><title>net-exporter</title></head><body><h1>net-exporter</h1>\
         <p><a href=\"{0}\">{0}</a></p></body></html>\n",
        app.telemetry_path
    ))
}

// ---- Basic auth ----

/// The `basic_auth_users` of the web config file. bcrypt is slow on purpose, so checks run on
/// the blocking pool, at most two at a time (a flood of wrong passwords cannot starve the
/// collection), and credentials that passed are remembered by their SHA-256 (as the exporter
/// toolkit does): Prometheus, which sends the same ones at every scrape, costs one bcrypt.
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    verified: Mutex<HashSet<[u8; 32]>>,
    bcrypt_slots: tokio::sync::Semaphore,
}

/// A bcrypt hash of a random password, checked against for unknown users so that they take as
/// long as known ones.
const DUMMY_HASH: &str = "$2b$10$h/uqbka7gpB8x6NT3.VlJusmDUu47wgvhMzS1Ke9iT1cpqGLglS9C";

/// How many verified credentials are remembered before the memory is cleared.
const VERIFIED_MAX: usize = 1024;

impl BasicAuth {
    pub fn new(users: BTreeMap<String, String>) -> Self {
        Self {
            users,
            verified: Mutex::new(HashSet::new()),
            bcrypt_slots: tokio::sync::Semaphore::new(2),
        }
    }

    fn key(user: &str, password: &str, hash: &str) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [user, password, hash] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().into()
    }

    /// Whether `user` with `password` is one of the configured users.
    pub async fn check(&self, user: &str, password: &str) -> bool {
        let (known, hash) = match self.users.get(user) {
            Some(h) => (true, h.as_str()),
            None => (false, DUMMY_HASH),
        };
        let key = Self::key(user, password, hash);
        if known
            && self
                .verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&key)
        {
            return true;
        }
        let Ok(_slot) = self.bcrypt_slots.acquire().await else {
            return false;
        };
        let (password, hash_owned) = (password.to_string(), hash.to_string());
        let ok = tokio::task::spawn_blocking(move || {
            bcrypt::verify(password.as_bytes(), &hash_owned).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if ok && known {
            let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if verified.len() >= VERIFIED_MAX {
                verified.clear();
            }
            verified.insert(key);
        }
        ok && known
    }
}

/// `Authorization: Basic base64(user:password)`.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

async fn require_auth(State(auth): State<Arc<BasicAuth>>, req: Request, next: Next) -> Response {
    if let Some((user, password)) = basic_credentials(req.headers())
        && auth.check(&user, &password).await
    {
        return next.run(req).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"net-exporter\"")],
        "Unauthorized\n",
    )
        .into_response()
}

// ---- TLS ----

fn tls_error(web: &WebConfig, field: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        field: format!("{}: tls_server_config.{field}", web.file_label()),
        problem: problem.into(),
    }
}

/// The certificate chain and key of `cert_file` and `key_file`, checked to belong together.
fn load_certified_key(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, (&'static str, String)> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ("cert_file", format!("{}: {e}", cert_file.display())))?;
    if certs.is_empty() {
        return Err((
            "cert_file",
            format!("{}: no PEM certificate in it", cert_file.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| ("key_file", format!("{}: {e}", key_file.display())))?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| {
        (
            "key_file",
            format!("{} with {}: {e}", key_file.display(), cert_file.display()),
        )
    })
}

/// What identifies a version of a file: changes when it is rewritten or replaced (also through
/// a symlink swap, as Kubernetes updates mounted Secrets).
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Serves the certificate of `cert_file` and `key_file`, and loads them again at the next
/// handshake after either changed (rotation by cert-manager, a renewed Secret). A pair that does
/// not load (say, the certificate written and the key not yet) is logged and the previous one
/// kept.
#[derive(Debug)]
struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Mutex<((Stamp, Stamp), Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let now = (stamp(&self.cert_file), stamp(&self.key_file));
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if now != current.0 {
            current.0 = now;
            match load_certified_key(&self.cert_file, &self.key_file, &self.provider) {
                Ok(k) => {
                    tracing::info!(cert_file = %self.cert_file.display(), "TLS certificate reloaded");
                    current.1 = Arc::new(k);
                }
                Err((_, e)) => {
                    tracing::warn!(error = %e, "TLS certificate changed but does not load; serving the previous one");
                }
            }
        }
        Some(Arc::clone(&current.1))
    }
}

/// The TLS acceptor of `tls_server_config`; errors name the field.
fn tls_acceptor(web: &WebConfig, tls: &TlsSettings) -> Result<TlsAcceptor, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = load_certified_key(&tls.cert_file, &tls.key_file, &provider)
        .map_err(|(field, e)| tls_error(web, field, e))?;
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (tls.min_version..=tls.max_version).contains(v))
    .map(|(_, p)| p)
    .collect();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(|e| tls_error(web, "min_version", e.to_string()))?;
    let builder = match (tls.client_auth, &tls.client_ca_file) {
        (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
        (auth, Some(ca_file)) => {
            let mut roots = rustls::RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(ca_file)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    tls_error(web, "client_ca_file", format!("{}: {e}", ca_file.display()))
                })?;
            let (added, _) = roots.add_parsable_certificates(cas);
            if added == 0 {
                return Err(tls_error(
                    web,
                    "client_ca_file",
                    format!("{}: no usable CA certificate in it", ca_file.display()),
                ));
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            if auth == ClientAuth::VerifyIfGiven {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|e| tls_error(web, "client_ca_file", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let resolver = ReloadingCert {
        cert_file: tls.cert_file.clone(),
        key_file: tls.key_file.clone(),
        provider,
        current: Mutex::new(((stamp(&tls.cert_file), stamp(&tls.key_file)), Arc::new(key))),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

// ---- Serving ----

/// How connections are served, from the `web:` settings and the web config file.
pub struct Server {
    read_header_timeout: Duration,
    request_timeout: Duration,
    max_connections: usize,
    tls: Option<TlsAcceptor>,
    auth: Option<Arc<BasicAuth>>,
}

impl Server {
    /// Loads the TLS certificate and key: a file that does not load is a configuration error.
    pub fn new(web: &WebConfig) -> Result<Self, ConfigError> {
        let tls = web.tls.as_ref().map(|t| tls_acceptor(web, t)).transpose()?;
        let auth = (!web.basic_auth_users.is_empty())
            .then(|| Arc::new(BasicAuth::new(web.basic_auth_users.clone())));
        Ok(Self {
            read_header_timeout: web.read_header_timeout,
            request_timeout: web.request_timeout,
            max_connections: web.max_connections,
            tls,
            auth,
        })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn has_auth(&self) -> bool {
        self.auth.is_some()
    }

    /// Serves `app` on `listener` until `shutdown` completes, then lets the requests in flight
    /// finish (for at most the request timeout).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        app: Arc<App>,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let service =
            TowerToHyperService::new(router(app, self.auth.clone(), self.request_timeout));
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.read_header_timeout);
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        // A place per connection: at the cap, the loop stops accepting and new clients wait in
        // the kernel's backlog until a connection closes (the header timeout closes idle ones).
        let slots = Arc::new(tokio::sync::Semaphore::new(self.max_connections));
        let mut at_cap_logged = false;
        loop {
            let slot = match Arc::clone(&slots).try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    if !at_cap_logged {
                        tracing::warn!(
                            max_connections = self.max_connections,
                            "connection limit reached: new connections wait until one closes (web.max_connections)"
                        );
                        at_cap_logged = true;
                    }
                    tokio::select! {
                        slot = Arc::clone(&slots).acquire_owned() => match slot {
                            Ok(slot) => slot,
                            Err(_) => break, // never closed
                        },
                        () = &mut shutdown => break,
                    }
                }
            };
            if slots.available_permits() > self.max_connections / 2 {
                at_cap_logged = false;
            }
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let (http, service, watcher) = (http.clone(), service.clone(), graceful.watcher());
            let tls = self.tls.clone();
            let handshake_timeout = self.read_header_timeout;
            tokio::spawn(async move {
                let _slot = slot;
                let result = match tls {
                    None => {
                        watcher
                            .watch(http.serve_connection(TokioIo::new(stream), service))
                            .await
                    }
                    Some(acceptor) => {
                        let stream =
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!("TLS handshake timed out");
                                    return;
                                }
                            };
                        watcher
                            .watch(http.serve_connection(TokioIo::new(stream), service))
                            .await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
        drop(listener);
        if tokio::time::timeout(self.request_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the request timeout; closing them");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dummy_hash_is_a_bcrypt_hash() {
        assert!(DUMMY_HASH.parse::<bcrypt::HashParts>().is_ok());
        assert!(!bcrypt::verify("", DUMMY_HASH).unwrap());
    }

    #[test]
    fn basic_credentials_are_parsed() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            basic_credentials(&h)
        };
        // "prom:s3:cret"
        assert_eq!(
            with("Basic cHJvbTpzMzpjcmV0"),
            Some(("prom".into(), "s3:cret".into()))
        );
        assert_eq!(
            with("basic  cHJvbTpzMzpjcmV0 "),
            Some(("prom".into(), "s3:cret".into()))
        );
        assert_eq!(with("Bearer cHJvbTpzMzpjcmV0"), None);
        assert_eq!(with("Basic !!!"), None);
        // No colon.
        assert_eq!(with("Basic cHJvbQ=="), None);
        assert_eq!(basic_credentials(&HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn basic_auth_checks_and_remembers() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let auth = BasicAuth::new([("prom".to_string(), hash)].into());
        assert!(auth.check("prom", "pw").await);
        assert_eq!(auth.verified.lock().unwrap().len(), 1);
        assert!(auth.check("prom", "pw").await);
        assert!(!auth.check("prom", "wrong").await);
        assert!(!auth.check("other", "pw").await);
        assert!(!auth.check("", "").await);
        assert_eq!(auth.verified.lock().unwrap().len(), 1);
    }
}
