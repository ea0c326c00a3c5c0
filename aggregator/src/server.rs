//! `/healthz`, `/readyz` and `/metrics` on one port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// What the probes and the scrape read.
pub struct Health {
    pub metrics: Metrics,
    /// Set while this copy holds the checkpoint and every shard answers GetRecords.
    pub ready: AtomicBool,
}

pub async fn serve(address: SocketAddr, health: Arc<Health>) -> std::io::Result<()> {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(health);
    let listener = tokio::net::TcpListener::bind(address).await?;
    tracing::info!(%address, "serving /healthz, /readyz and /metrics");
    axum::serve(listener, router).await
}

async fn ready(State(health): State<Arc<Health>>) -> impl IntoResponse {
    if health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not consuming: taking the checkpoint (another copy may hold it), listing shards, or a shard does not answer",
        )
    }
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], health.metrics.encode())
}
