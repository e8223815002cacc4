//! `/metrics`, `/healthz`, `/readyz` on `--metrics-addr`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use tracing::info;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Readiness: each flag has one writer (the start sequence or the reconciler).
#[derive(Debug, Default)]
pub struct Ready {
    pub subnet_file: AtomicBool,
    pub rules: AtomicBool,
    pub routes_in_sync: AtomicBool,
}

impl Ready {
    pub fn is_ready(&self) -> bool {
        [&self.subnet_file, &self.rules, &self.routes_in_sync]
            .iter()
            .all(|f| f.load(Ordering::Relaxed))
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    ready: Arc<Ready>,
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    ready: Arc<Ready>,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(AppState { metrics, ready });
    if let Ok(a) = listener.local_addr() {
        info!(addr = %a, "serving metrics");
    }
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
}

async fn metrics_handler(State(s): State<AppState>) -> ([(&'static str, &'static str); 1], String) {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        s.metrics.encode(),
    )
}

async fn ready_handler(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.ready.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
