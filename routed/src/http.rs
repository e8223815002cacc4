//! `/metrics`, `/healthz`, `/readyz` on `--metrics-addr`.
//!
//! The server is bounded so that no client can take what routing needs: at most
//! [`MAX_CONNECTIONS`] connections are open at once (further ones wait in the kernel's
//! accept queue, costing us no fd), a request's headers must arrive within
//! [`HEADER_TIMEOUT`], no connection lives longer than [`CONNECTION_LIFETIME`], and there
//! is no keep-alive (a scrape is one request). About a thousand idle connections held on
//! `/metrics` once used every fd, and new leases were no longer routed.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tracing::{info, warn};

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

/// Connections served at once; Prometheus and the kubelet's probes need a handful.
pub const MAX_CONNECTIONS: usize = 64;
/// Prometheus and probes send their request at once; an idle connection loses its slot.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);

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
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        // A slot first, then accept: while all are taken, new connections stay queued in
        // the kernel and cost this process nothing.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on accept.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        conns.spawn(one_connection(stream, app.clone(), permit));
        while conns.try_join_next().is_some() {}
    }
    // Stop with the daemon: connections in flight are dropped, their fds closed.
    conns.shutdown().await;
}

async fn one_connection(stream: TcpStream, app: Router, _slot: OwnedSemaphorePermit) {
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count())
            .unwrap_or(0)
    }

    async fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    // Loopback only, in whatever namespace the test runs in.
    #[tokio::test]
    async fn idle_connections_are_bounded_and_time_out() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sd = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            Metrics::new(),
            Arc::new(Ready::default()),
            sd.clone(),
        ));
        let before = open_fds();
        let mut idle = Vec::new();
        for _ in 0..200 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let grown = open_fds() - before;
        assert!(
            grown <= 200 + MAX_CONNECTIONS + 8,
            "the server holds at most {MAX_CONNECTIONS} connections, fds grew by {grown}"
        );
        // Idle connections lose their slot after the header timeout, 64 at a time in accept
        // order; then the scrape queued behind them is served.
        let t = std::time::Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(20), get(addr, "/metrics"))
            .await
            .expect("served within the timeouts")
            .unwrap();
        assert!(answer.contains("hostgw_peers"), "{answer}");
        let rounds = 200 / MAX_CONNECTIONS as u32 + 1;
        assert!(
            t.elapsed() < HEADER_TIMEOUT * (rounds + 2),
            "{:?}",
            t.elapsed()
        );
        sd.cancel();
        server.await.unwrap();
    }
}
