//! `/healthz`, `/readyz` and `/metrics` on one port. Both probes follow what the loop does, not
//! a flag it promises to keep: liveness fails when the loop has not been heard from for the stall
//! timeout (a hang no retry ends), readiness names what is missing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_pipeline_runtime::metrics::OPENMETRICS_CONTENT_TYPE;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// What the probes and the scrape read; the loop writes it.
pub struct Health {
    pub metrics: Metrics,
    /// Set while this copy holds the checkpoint and every shard answers GetRecords.
    pub reading: AtomicBool,
    /// A refusal of the output stream that retrying will not cure, until a write goes through.
    pub output_refused: Mutex<Option<String>>,
    /// Since when (ms since the epoch) the output stream has throttled a write still waited for;
    /// 0: none is.
    pub output_throttled_since_ms: AtomicI64,
    /// No checkpoint written for this long: not ready (the lease would lapse too).
    checkpoint_within: Duration,
    /// No sign of the loop for this long: not live.
    stall_timeout: Duration,
    started: Instant,
    /// Since `started`, in milliseconds: the loop's last sign of life, and its last checkpoint.
    last_beat_ms: AtomicU64,
    last_checkpoint_ms: AtomicU64,
    checkpoint_written: AtomicBool,
    /// When aggregates last reached the output stream (ms since the epoch), for the data-flow
    /// report; 0: not yet.
    pub last_output_ms: AtomicI64,
    /// When the oldest record read since then was read; 0: none waits.
    pub unanswered_since_ms: AtomicI64,
}

impl Health {
    /// `checkpoint_within`: the lease's duration (the loop writes at least every third of it).
    pub fn new(checkpoint_within: Duration, stall_timeout: Duration) -> Self {
        Self {
            metrics: Metrics::default(),
            reading: AtomicBool::new(false),
            output_refused: Mutex::new(None),
            output_throttled_since_ms: AtomicI64::new(0),
            checkpoint_within,
            stall_timeout,
            started: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            last_checkpoint_ms: AtomicU64::new(0),
            checkpoint_written: AtomicBool::new(false),
            last_output_ms: AtomicI64::new(0),
            unanswered_since_ms: AtomicI64::new(0),
        }
    }

    fn since_start(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn age(&self, at_ms: &AtomicU64) -> Duration {
        Duration::from_millis(self.since_start().saturating_sub(at_ms.load(Ordering::Relaxed)))
    }

    /// The loop (or a wait or retry of it) is alive.
    pub fn beat(&self) {
        self.last_beat_ms.store(self.since_start(), Ordering::Relaxed);
    }

    /// Whether this copy holds the checkpoint's lease: it took it, and has written within the
    /// lease's duration (a loop blocked longer may have lost it to another copy).
    pub fn holds_lease(&self) -> bool {
        self.metrics.lease_held.get() == 1 && self.age(&self.last_checkpoint_ms) < self.checkpoint_within
    }

    /// A checkpoint was written (which also renews the lease).
    pub fn checkpointed(&self, bytes: usize, took: Duration) {
        self.last_checkpoint_ms.store(self.since_start(), Ordering::Relaxed);
        self.checkpoint_written.store(true, Ordering::Relaxed);
        self.metrics.checkpoint_bytes.set(bytes as i64);
        self.metrics.checkpoint_write_seconds.set(took.as_secs_f64());
        self.beat();
    }

    /// `None` while live; why not, otherwise.
    pub fn stalled(&self) -> Option<String> {
        let quiet = self.age(&self.last_beat_ms);
        (quiet >= self.stall_timeout).then(|| format!("the loop has not made progress for {}s", quiet.as_secs()))
    }

    /// `None` when ready; what is missing, otherwise.
    pub fn not_ready(&self) -> Option<String> {
        if let Some(stalled) = self.stalled() {
            return Some(stalled);
        }
        if let Some(refused) = self.output_refused.lock().expect("never poisoned").as_ref() {
            return Some(format!("the output stream refuses records: {refused}"));
        }
        if !self.checkpoint_written.load(Ordering::Relaxed) {
            return Some("no checkpoint written yet: taking it (another copy may hold it)".into());
        }
        let age = self.age(&self.last_checkpoint_ms);
        if age >= self.checkpoint_within {
            return Some(format!("no checkpoint written for {}s", age.as_secs()));
        }
        if !self.reading.load(Ordering::Relaxed) {
            return Some("not reading: listing shards, or a shard has not answered GetRecords for 30s".into());
        }
        None
    }
}

pub async fn serve(address: SocketAddr, health: Arc<Health>) -> std::io::Result<()> {
    let router = Router::new().route("/healthz", get(live)).route("/readyz", get(ready)).route("/metrics", get(metrics)).with_state(health);
    let listener = tokio::net::TcpListener::bind(address).await?;
    tracing::info!(%address, "serving /healthz, /readyz and /metrics");
    axum::serve(listener, router).await
}

async fn live(State(health): State<Arc<Health>>) -> impl IntoResponse {
    match health.stalled() {
        None => (StatusCode::OK, "ok".to_owned()),
        Some(stalled) => (StatusCode::INTERNAL_SERVER_ERROR, stalled),
    }
}

async fn ready(State(health): State<Arc<Health>>) -> impl IntoResponse {
    match health.not_ready() {
        None => (StatusCode::OK, "ready".to_owned()),
        Some(missing) => (StatusCode::SERVICE_UNAVAILABLE, missing),
    }
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    if health.checkpoint_written.load(Ordering::Relaxed) {
        health.metrics.checkpoint_age_seconds.set(health.age(&health.last_checkpoint_ms).as_secs_f64());
    }
    ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], health.metrics.encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn readiness_and_liveness_follow_what_the_loop_does() {
        let health = Health::new(Duration::from_secs(60), Duration::from_secs(180));
        health.beat();
        assert_eq!(health.not_ready().as_deref(), Some("no checkpoint written yet: taking it (another copy may hold it)"));
        health.checkpointed(1_000, Duration::from_millis(20));
        assert!(health.not_ready().unwrap().starts_with("not reading"));
        health.reading.store(true, Ordering::Relaxed);
        assert_eq!(health.not_ready(), None);
        *health.output_refused.lock().unwrap() = Some("AccessDeniedException: not allowed".into());
        assert_eq!(health.not_ready().as_deref(), Some("the output stream refuses records: AccessDeniedException: not allowed"));
        *health.output_refused.lock().unwrap() = None;
        tokio::time::advance(Duration::from_secs(61)).await;
        health.beat();
        assert_eq!(health.not_ready().as_deref(), Some("no checkpoint written for 61s"), "the loop goes on, the checkpoint does not");
        assert_eq!(health.stalled(), None);
        tokio::time::advance(Duration::from_secs(180)).await;
        assert_eq!(health.stalled().as_deref(), Some("the loop has not made progress for 180s"));
        assert_eq!(health.not_ready().as_deref(), Some("the loop has not made progress for 180s"));
    }
}
