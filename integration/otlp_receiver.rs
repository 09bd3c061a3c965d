//! An OTLP receiver built on the official protobuf definitions, for every signal the agent
//! sends: gRPC (`MetricsService`, `LogsService`, `TraceService` on one port) or HTTP/protobuf
//! (`POST /v1/metrics`, `/v1/logs`, `/v1/traces`, and Grafana Loki's `/otlp/v1/logs`). It keeps
//! what arrives, decoded, and describes every request it refuses.
//!
//! It can also be a black hole: a listener that accepts connections and never reads or
//! answers, which is what a hung collector looks like to the agent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    /// The value of `--otlp.protocol` / `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn flag(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// The gRPC path of the logs service, as `LogsReceived::path` shows it.
pub const GRPC_LOGS_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// A logs request that arrived: the path it came to (Loki's differs) and its content type.
#[derive(Clone, Debug)]
pub struct LogsReceived {
    pub path: String,
    pub content_type: Option<String>,
    pub request: ExportLogsServiceRequest,
}

#[derive(Default)]
struct Inbox {
    metrics: Mutex<Vec<ExportMetricsServiceRequest>>,
    logs: Mutex<Vec<LogsReceived>>,
    traces: Mutex<Vec<ExportTraceServiceRequest>>,
    refused: Mutex<Vec<String>>,
}

/// A receiver on a loopback port, served by its own tokio runtime; dropping it drops the
/// runtime, which stops the server and closes the port (and, for a black hole, every
/// connection it holds).
pub struct OtlpReceiver {
    pub port: u16,
    inbox: Arc<Inbox>,
    _rt: tokio::runtime::Runtime,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

impl OtlpReceiver {
    /// A receiver on a free port.
    pub fn start(protocol: Protocol) -> Self {
        Self::start_on(protocol, 0).expect("bind an OTLP receiver on a free port")
    }

    /// A receiver on `port` (0: a free one); fails when the port is taken.
    pub fn start_on(protocol: Protocol, port: u16) -> std::io::Result<Self> {
        let rt = runtime();
        let listener = rt.block_on(tokio::net::TcpListener::bind(SocketAddr::from((
            [127, 0, 0, 1],
            port,
        ))))?;
        let port = listener.local_addr()?.port();
        let inbox = Arc::new(Inbox::default());
        match protocol {
            Protocol::Grpc => {
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                rt.spawn(
                    tonic::transport::Server::builder()
                        .add_service(MetricsServiceServer::new(Grpc(Arc::clone(&inbox))))
                        .add_service(LogsServiceServer::new(Grpc(Arc::clone(&inbox))))
                        .add_service(TraceServiceServer::new(Grpc(Arc::clone(&inbox))))
                        .serve_with_incoming(incoming),
                );
            }
            Protocol::HttpProtobuf => {
                let app = axum::Router::new()
                    .fallback(http)
                    .with_state(Arc::clone(&inbox));
                rt.spawn(async move { axum::serve(listener, app).await });
            }
        }
        Ok(Self {
            port,
            inbox,
            _rt: rt,
        })
    }

    /// A listener on `port` that accepts every connection and holds it open without reading
    /// or writing a byte, until dropped.
    pub fn black_hole_on(port: u16) -> std::io::Result<Self> {
        let rt = runtime();
        let listener = rt.block_on(tokio::net::TcpListener::bind(SocketAddr::from((
            [127, 0, 0, 1],
            port,
        ))))?;
        let port = listener.local_addr()?.port();
        rt.spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        Ok(Self {
            port,
            inbox: Arc::default(),
            _rt: rt,
        })
    }

    /// The base URL: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn metrics(&self) -> Vec<ExportMetricsServiceRequest> {
        self.inbox.metrics.lock().unwrap().clone()
    }

    pub fn metrics_count(&self) -> usize {
        self.inbox.metrics.lock().unwrap().len()
    }

    pub fn logs(&self) -> Vec<LogsReceived> {
        self.inbox.logs.lock().unwrap().clone()
    }

    pub fn traces(&self) -> Vec<ExportTraceServiceRequest> {
        self.inbox.traces.lock().unwrap().clone()
    }

    /// Every request refused, described (wrong path, content type or encoding, undecodable).
    pub fn refused(&self) -> Vec<String> {
        self.inbox.refused.lock().unwrap().clone()
    }
}

/// Log records in `requests` whose path is `path`.
pub fn log_record_count(requests: &[LogsReceived], path: &str) -> usize {
    requests
        .iter()
        .filter(|r| r.path == path)
        .flat_map(|r| &r.request.resource_logs)
        .flat_map(|rl| &rl.scope_logs)
        .map(|sl| sl.log_records.len())
        .sum()
}

struct Grpc(Arc<Inbox>);

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.metrics.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let content_type = request
            .metadata()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        self.0.logs.lock().unwrap().push(LogsReceived {
            path: GRPC_LOGS_PATH.to_string(),
            content_type,
            request: request.into_inner(),
        });
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.traces.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// `POST /v1/{metrics,logs,traces}` or `/otlp/v1/logs` with `Content-Type:
/// application/x-protobuf`, uncompressed (the agent compresses nothing by default); 200 with
/// an empty response. Everything else is recorded and refused.
async fn http(
    axum::extract::State(inbox): axum::extract::State<Arc<Inbox>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let header_of = |h: header::HeaderName| {
        headers
            .get(h)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let content_type = header_of(header::CONTENT_TYPE);
    let refuse = |status: StatusCode, why: String| {
        inbox
            .refused
            .lock()
            .unwrap()
            .push(format!("{method} {uri}: {why}"));
        (status, why).into_response()
    };
    if method != axum::http::Method::POST {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "not POST".into());
    }
    if content_type.as_deref() != Some("application/x-protobuf") {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type {content_type:?}"),
        );
    }
    if let Some(e) = header_of(header::CONTENT_ENCODING) {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding {e:?}"),
        );
    }
    let ok = |response: Vec<u8>| {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            response,
        )
            .into_response()
    };
    let undecodable = |e: prost::DecodeError| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("not an export request: {e}"),
        )
    };
    match uri.path() {
        "/v1/metrics" => match ExportMetricsServiceRequest::decode(body) {
            Ok(r) => {
                inbox.metrics.lock().unwrap().push(r);
                ok(ExportMetricsServiceResponse::default().encode_to_vec())
            }
            Err(e) => undecodable(e),
        },
        path @ ("/v1/logs" | "/otlp/v1/logs") => match ExportLogsServiceRequest::decode(body) {
            Ok(request) => {
                inbox.logs.lock().unwrap().push(LogsReceived {
                    path: path.to_string(),
                    content_type,
                    request,
                });
                ok(ExportLogsServiceResponse::default().encode_to_vec())
            }
            Err(e) => undecodable(e),
        },
        "/v1/traces" => match ExportTraceServiceRequest::decode(body) {
            Ok(r) => {
                inbox.traces.lock().unwrap().push(r);
                ok(ExportTraceServiceResponse::default().encode_to_vec())
            }
            Err(e) => undecodable(e),
        },
        other => refuse(StatusCode::NOT_FOUND, format!("no OTLP path {other}")),
    }
}
