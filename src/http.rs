//! The HTTP endpoint: `/metrics` (or the configured path), `/healthz`, `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use crate::collector::Collector;
use crate::telemetry::Telemetry;

pub struct App {
    pub collector: Arc<Collector>,
    pub telemetry: Arc<Telemetry>,
    /// Set once the first collection has finished.
    pub ready: AtomicBool,
    pub telemetry_path: String,
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(&app.telemetry_path.clone(), get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/", get(index))
        .with_state(app)
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
