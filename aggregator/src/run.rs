//! The aggregator's loop: take the checkpoint, poll the input shards, decode, window, fire, and
//! flush: dead letters, then the checkpoint holding the fired aggregates, then the aggregates to
//! the output stream (commit, then publish).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_kinesis::error::{DisplayErrorContext, SdkError};
use aws_sdk_kinesis::operation::describe_stream_summary::DescribeStreamSummaryError;
use aws_smithy_types::date_time::ConversionError;
use metrics_pipeline_model::aggregation::WindowConfig;
use metrics_pipeline_model::event::{EventTime, MetricAggregate};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::engine::window::WindowEngine;
use crate::intake::Intake;
use crate::kinesis::sink::{Delivery, KinesisSink, OutputRecord};
use crate::kinesis::source::{InitialPosition, KinesisSource, StreamPosition};
use crate::metrics::{DiscardReason, Discarded, Metrics};
use crate::report::{Reporter, wall_clock};
use crate::s3::bucket::Bucket;
use crate::s3::checkpoint::{Checkpoint, CheckpointStore, Fenced, Lease, StreamIdentity, UnusableCheckpoint};
use crate::s3::parquet_files::{FilesState, ParquetFiles, ParquetSettings};
use crate::server::Health;

/// Dead letters held in memory before a flush is forced.
const MAX_HELD_DEAD_LETTER_BYTES: usize = 4 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct AggregatorConfig {
    pub input_stream: String,
    pub output_stream: String,
    pub windowing: WindowConfig,
    /// Object key of the checkpoint in the bucket.
    pub checkpoint_key: String,
    /// Key prefix of dead-letter objects in the bucket, ending in `/`.
    pub dead_letter_prefix: String,
    /// How often a caught-up shard is polled (never more than 5 times a second).
    pub poll_interval: Duration,
    /// Longest time between checkpoints while records flow but no window fires.
    pub checkpoint_interval: Duration,
    /// How often the data-flow report is written beside the checkpoint.
    pub report_interval: Duration,
    pub initial_position: InitialPosition,
    /// On a first start, where to read from instead of `initial_position`.
    pub read_input_from: Option<EventTime>,
    /// Also write the aggregates as Parquet files into the bucket (the direct sink).
    pub parquet: Option<ParquetSettings>,
    /// Who this copy is in the checkpoint's lease: the pod's name.
    pub holder: String,
    /// How long the checkpoint stays this copy's without a write; it writes at least every third.
    pub lease_duration: Duration,
    /// Key partitions of the window engine: a large page is aggregated on up to this many threads.
    pub key_partitions: usize,
}

/// Why the aggregator stopped before `shutdown`. Neither is retried: resuming from an unusable
/// checkpoint would be wrong, and a copy another has taken the checkpoint from must write no more.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    UnusableCheckpoint(#[from] UnusableCheckpoint),
    #[error(transparent)]
    Fenced(#[from] Fenced),
}

/// Runs until `shutdown` resolves, then flushes, checkpoints and releases the checkpoint. Open
/// windows stay open in the checkpoint: the next start continues them rather than firing them
/// early. Fails when the stored checkpoint must not be resumed from, or another copy took the
/// checkpoint over.
pub async fn run(
    config: AggregatorConfig,
    kinesis: aws_sdk_kinesis::Client,
    bucket: Bucket,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let reporter = Reporter::new(bucket.clone(), health.clone(), wall_clock());
    let reporting = tokio::spawn(reporter.run(config.report_interval));
    let result = run_until_stopped(config, kinesis, bucket, health, shutdown).await;
    reporting.abort();
    result
}

async fn run_until_stopped(
    config: AggregatorConfig,
    kinesis: aws_sdk_kinesis::Client,
    bucket: Bucket,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    // Also seen where the loop is not waiting for it: a write to an output that refuses
    // everything gives up, its records safe in the checkpoint.
    let (stop, stopping) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        stop.send_replace(true);
    });
    let mut watching = stopping.clone();
    let shutdown = async move {
        let _ = watching.wait_for(|stopping| *stopping).await;
    };
    tokio::pin!(shutdown);
    let stream = config.input_stream.clone();
    let described =
        until_stopped("describe the input stream", &health, &mut shutdown, async || stream_identity(&kinesis, &stream).await).await;
    let Some(identity) = described else { return Ok(()) };
    let mut checkpoints = CheckpointStore::new(bucket.clone(), config.checkpoint_key.clone());
    let stored = match take_checkpoint(&mut checkpoints, &config, &health, &mut shutdown).await {
        CheckpointWait::Resume(checkpoint) => Some(*checkpoint),
        CheckpointWait::FirstStart => None,
        CheckpointWait::Unusable(unusable) => return Err(unusable.into()),
        CheckpointWait::Stopped => return Ok(()),
    };
    let mut aggregator = Aggregator::resume(config, kinesis, bucket, checkpoints, (health, stopping), identity, stored).await;
    // This copy's first write takes the checkpoint, and makes a first start's position durable
    // before anything is read.
    aggregator.flush().await?;
    if let Some(files) = &aggregator.files {
        files.sweep(&aggregator.bucket).await;
    }
    let listed =
        until_stopped("list the input stream's shards", &aggregator.health, &mut shutdown, async || aggregator.source.discover().await)
            .await;
    let Some((started, _)) = listed else { return Ok(aggregator.release().await?) };
    aggregator.intake.start_shards(&started, Instant::now());
    aggregator.intake.forget_unread_shards();
    aggregator.health.metrics.shards.set(started.len() as i64);
    tracing::info!(stream = %aggregator.config.input_stream, shards = started.len(), threads = aggregator.config.key_partitions, "consuming");

    loop {
        let poll = tokio::select! {
            biased;
            () = &mut shutdown => break,
            poll = aggregator.source.poll(aggregator.next_due()) => poll,
        };
        let (now, wall_clock, metrics) = (Instant::now(), wall_clock(), &aggregator.health.metrics);
        aggregator.health.beat();
        aggregator.intake.take_poll(&poll, now, wall_clock, metrics);
        if poll.batches.iter().any(|batch| !batch.records.is_empty()) {
            // Kept from the first record read until an aggregate goes out.
            let _ = aggregator.health.unanswered_since_ms.compare_exchange(0, wall_clock.0, Ordering::Relaxed, Ordering::Relaxed);
        }
        aggregator.intake.fire_due_windows(now, wall_clock, metrics);
        aggregator.health.reading.store(aggregator.intake.reading(now), Ordering::Relaxed);
        if aggregator.flush_due() {
            aggregator.flush().await?;
        }
    }
    tracing::info!("shutting down: flushing, checkpointing and releasing the checkpoint");
    Ok(aggregator.release().await?)
}

/// Retries `attempt` with backoff until it succeeds; `None` when `shutdown` came first.
async fn until_stopped<T, E: std::error::Error>(
    what: &str,
    health: &Health,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    mut attempt: impl AsyncFnMut() -> Result<T, E>,
) -> Option<T> {
    let mut backoff = Backoff::default();
    loop {
        health.beat();
        match attempt().await {
            Ok(value) => return Some(value),
            Err(error) => tracing::warn!(error = %DisplayErrorContext(&error), "cannot {what} yet; retrying"),
        }
        tokio::select! {
            () = shutdown.as_mut() => return None,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Why the input stream's identity (which stream of its name it is) cannot be read yet; retried.
#[derive(Debug, thiserror::Error)]
enum DescribeError {
    #[error("DescribeStreamSummary failed")]
    Call(#[source] Box<SdkError<DescribeStreamSummaryError>>),
    #[error("DescribeStreamSummary described nothing")]
    Empty,
    #[error("DescribeStreamSummary gave a creation time out of range")]
    CreationTime(#[from] ConversionError),
}

async fn stream_identity(kinesis: &aws_sdk_kinesis::Client, stream: &str) -> Result<StreamIdentity, DescribeError> {
    let described =
        kinesis.describe_stream_summary().stream_name(stream).send().await.map_err(|error| DescribeError::Call(error.into()))?;
    let summary = described.stream_description_summary.ok_or(DescribeError::Empty)?;
    let created = summary.stream_creation_timestamp.to_millis()?;
    Ok(StreamIdentity { arn: summary.stream_arn, created: EventTime(created) })
}

/// How waiting to take the checkpoint ended.
enum CheckpointWait {
    /// This copy writes the checkpoint from now on, resuming from what it stored.
    Resume(Box<Checkpoint>),
    /// There is no checkpoint yet.
    FirstStart,
    /// The stored checkpoint must not be resumed from: the start fails.
    Unusable(UnusableCheckpoint),
    /// `shutdown` came first.
    Stopped,
}

/// Waits until this copy may take the checkpoint (see [`crate::s3::checkpoint`]) and returns it, or
/// until `shutdown`. While another copy holds it, this one writes nothing and is not ready.
async fn take_checkpoint(
    checkpoints: &mut CheckpointStore,
    config: &AggregatorConfig,
    health: &Health,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> CheckpointWait {
    let mut last_seen: Option<(String, Instant)> = None;
    loop {
        let reading = until_stopped("read the checkpoint", health, shutdown, async || checkpoints.read(&config.input_stream).await);
        let Some(read) = reading.await else { return CheckpointWait::Stopped };
        let Some((checkpoint, etag)) = read else { return CheckpointWait::FirstStart };
        let checkpoint = match checkpoint {
            Ok(checkpoint) => checkpoint,
            Err(unusable) => return CheckpointWait::Unusable(unusable),
        };
        let unchanged_since = last_seen.as_ref().filter(|(seen, _)| *seen == etag).map_or_else(Instant::now, |(_, since)| *since);
        let Some(lease) = checkpoint.lease.clone().filter(|lease| !lease.lets(&config.holder, unchanged_since.elapsed())) else {
            checkpoints.take(Some(etag));
            return CheckpointWait::Resume(Box::new(checkpoint));
        };
        if last_seen.is_none() {
            tracing::info!(location = %checkpoints.location(), holder = %lease.holder, "another copy holds the checkpoint: waiting until it stops");
        }
        last_seen = Some((etag, unchanged_since));
        tokio::select! {
            () = shutdown.as_mut() => return CheckpointWait::Stopped,
            () = tokio::time::sleep(Duration::from_millis(lease.duration_ms / 4).max(Duration::from_millis(200))) => {}
        }
    }
}

struct Aggregator {
    config: AggregatorConfig,
    /// Random per process start: names the files and dead letters this run writes.
    run: String,
    identity: StreamIdentity,
    intake: Intake,
    source: KinesisSource,
    sink: KinesisSink,
    bucket: Bucket,
    checkpoints: CheckpointStore,
    files: Option<ParquetFiles>,
    /// Fired aggregates in the last checkpoint and not yet written to the output stream: sent
    /// after the checkpoint that holds them, and again after a restart, byte for byte.
    unpublished: Vec<OutputRecord>,
    /// Turns true on SIGTERM: a write to an output that refuses everything gives up then.
    stopping: watch::Receiver<bool>,
    next_checkpoint: Instant,
    /// When the lease must be written again, changed or not.
    renew_lease: Instant,
    health: Arc<Health>,
}

impl Aggregator {
    /// The aggregator as the checkpoint left it, or fresh on a first start.
    async fn resume(
        config: AggregatorConfig,
        kinesis: aws_sdk_kinesis::Client,
        bucket: Bucket,
        checkpoints: CheckpointStore,
        (health, stopping): (Arc<Health>, watch::Receiver<bool>),
        identity: StreamIdentity,
        mut stored: Option<Checkpoint>,
    ) -> Self {
        let run = format!("{:016x}", rand::random::<u64>());
        // Committed before the stop, perhaps not all sent: sent again first.
        let unpublished = stored.as_mut().map(|checkpoint| std::mem::take(&mut checkpoint.unpublished)).unwrap_or_default();
        let mut output = Vec::new();
        let (engine, position, files) = resumed_state(&config, &checkpoints, &identity, &health.metrics, stored, &mut output);
        let mut files = match config.parquet.clone() {
            Some(settings) => Some(ParquetFiles::resume(settings, files.unwrap_or_default(), &run, &bucket, &health.metrics).await),
            None => None,
        };
        if let Some(files) = &mut files {
            // A roll the last checkpoint recorded may not have been written before the stop.
            let written = files.commit(&bucket).await;
            tracing::debug!(files = written, "Parquet files of the last checkpoint's roll written");
        }
        let source = KinesisSource::new(kinesis.clone(), config.input_stream.clone(), config.poll_interval, position);
        let mut intake = Intake::new(engine.with_key_partitions(config.key_partitions), config.windowing.idle_timeout);
        intake.changed = !output.is_empty();
        intake.output = output;
        Self {
            next_checkpoint: Instant::now() + config.checkpoint_interval,
            renew_lease: Instant::now(),
            sink: KinesisSink::new(kinesis, config.output_stream.clone()),
            config,
            run,
            identity,
            intake,
            source,
            bucket,
            checkpoints,
            files,
            unpublished,
            stopping,
            health,
        }
    }

    /// The next time something is due without new records: a checkpoint of what changed, the
    /// lease's renewal, a Parquet roll. Never in the past unless it is due now, so a quiet stream
    /// sleeps between polls.
    fn next_due(&self) -> Instant {
        let pending = self.intake.changed || !self.intake.output.is_empty() || !self.intake.dead_letters.is_empty();
        let checkpoint = pending.then_some(self.next_checkpoint);
        let roll = self.files.as_ref().and_then(ParquetFiles::roll_at);
        [checkpoint, roll].into_iter().flatten().fold(self.renew_lease, Instant::min)
    }

    fn flush_due(&self) -> bool {
        flush_due(&self.intake.output, !self.unpublished.is_empty(), self.intake.dead_letters.bytes(), Instant::now() >= self.next_due())
    }

    /// Writes dead letters, then the checkpoint (which renews the lease) holding the fired
    /// aggregates, then the aggregates: one `windowId` and `revision` never carry two contents,
    /// since what is sent was committed first and a restart sends it again as it was, and a copy
    /// the checkpoint was taken from learns it before it sends anything.
    async fn flush(&mut self) -> Result<(), Fenced> {
        let lease = Lease { holder: self.config.holder.clone(), duration_ms: self.config.lease_duration.as_millis() as u64 };
        self.write(Some(lease)).await
    }

    /// The last flush: the checkpoint is left free for the next copy to take at once.
    async fn release(&mut self) -> Result<(), Fenced> {
        self.write(None).await
    }

    async fn write(&mut self, lease: Option<Lease>) -> Result<(), Fenced> {
        let metrics = &self.health.metrics;
        let output = std::mem::take(&mut self.intake.output);
        if let Some(files) = &mut self.files {
            files.add(&output);
            files.stage(&self.bucket).await;
            // A release rolls what waits, so a stopped pipeline's files are complete.
            if files.roll_due() || lease.is_none() {
                files.roll();
            }
        }
        self.unpublished.extend(output.iter().map(OutputRecord::from_aggregate));
        if !self.intake.dead_letters.is_empty() {
            let count = self.intake.dead_letters.len() as u64;
            self.intake.dead_letters.write(&self.bucket, &self.config.dead_letter_prefix, &self.run).await;
            metrics.dead_letters_written.inc_by(count);
            tracing::debug!(records = count, prefix = %self.config.dead_letter_prefix, "dead letters written");
        }
        let checkpoint = Checkpoint {
            version: crate::s3::checkpoint::FORMAT_VERSION,
            stream: self.config.input_stream.clone(),
            stream_identity: Some(self.identity.clone()),
            written_at: wall_clock(),
            lease,
            position: self.source.position().clone(),
            engine: self.intake.engine.snapshot(),
            files: self.files.as_ref().map(|files| files.state().clone()),
            unpublished: std::mem::take(&mut self.unpublished),
        };
        let began = Instant::now();
        let saved = self.checkpoints.save(&checkpoint).await;
        metrics.lease_held.set(i64::from(saved.is_ok() && checkpoint.lease.is_some()));
        let bytes = saved?;
        self.health.checkpointed(bytes, began.elapsed());
        metrics.checkpoints_written.inc();
        tracing::debug!(location = %self.checkpoints.location(), bytes, open_windows = checkpoint.engine.open.len(), "checkpoint written");
        self.unpublished = checkpoint.unpublished;
        let sent = !self.unpublished.is_empty();
        if sent {
            let count = self.unpublished.len() as u64;
            let delivery = Delivery { health: &self.health, stopping: self.stopping.clone() };
            if self.sink.deliver(self.unpublished.clone(), &delivery).await {
                self.unpublished.clear();
                self.health.metrics.aggregates_written.inc_by(count);
                self.health.last_output_ms.store(wall_clock().0, Ordering::Relaxed);
                self.health.unanswered_since_ms.store(0, Ordering::Relaxed);
                tracing::debug!(aggregates = count, stream = %self.config.output_stream, "aggregates written");
            } else {
                tracing::warn!(
                    aggregates = count,
                    "stopping before every aggregate was written: the checkpoint holds them for the next start"
                );
            }
        }
        if let Some(files) = &mut self.files {
            let written = files.commit(&self.bucket).await;
            metrics.parquet_files_written.inc_by(written as u64);
        }
        // Once sent, the checkpoint need not hold them: the next one says so.
        self.intake.changed = sent && self.unpublished.is_empty();
        self.next_checkpoint = Instant::now() + self.config.checkpoint_interval;
        self.renew_lease = Instant::now() + self.config.lease_duration / 3;
        Ok(())
    }
}

/// Whether to flush now: a window's first emission goes out at once; revisions (late events)
/// wait for the checkpoint that is due anyway, so a trickle of late events does not rewrite the
/// whole checkpoint once per event.
fn flush_due(output: &[MetricAggregate], unpublished: bool, dead_letter_bytes: usize, checkpoint_due: bool) -> bool {
    output.iter().any(|aggregate| aggregate.revision == 0)
        || unpublished
        || dead_letter_bytes > MAX_HELD_DEAD_LETTER_BYTES
        || checkpoint_due
}

/// The engine, position and Parquet state to continue from: the checkpoint's, unless there is
/// none or it belongs to an earlier stream of the same name (deleted and created again), whose
/// sequence numbers mean nothing here; fired windows of a changed window length go to `output`.
fn resumed_state(
    config: &AggregatorConfig,
    checkpoints: &CheckpointStore,
    identity: &StreamIdentity,
    metrics: &Metrics,
    stored: Option<Checkpoint>,
    output: &mut Vec<MetricAggregate>,
) -> (WindowEngine, StreamPosition, Option<FilesState>) {
    let first_start = || match config.read_input_from {
        Some(from) => StreamPosition::starting_at(from),
        None => StreamPosition::first_start(config.initial_position, wall_clock()),
    };
    let location = checkpoints.location();
    match stored {
        Some(checkpoint) if checkpoint.stream_identity.as_ref().is_none_or(|stored| stored == identity) => {
            let (shards, open_windows) = (checkpoint.position.shards.len(), checkpoint.engine.open.len());
            tracing::info!(%location, written_at = %checkpoint.written_at, shards, open_windows, "resuming from checkpoint");
            (WindowEngine::restore(&config.windowing, checkpoint.engine, output), checkpoint.position, checkpoint.files)
        }
        Some(checkpoint) => {
            let created = checkpoint.stream_identity.map(|stored| stored.created.to_string()).unwrap_or_default();
            tracing::warn!(
                %location, checkpoint_stream_created = %created, stream_created = %identity.created,
                "the checkpoint belongs to an earlier stream of this name (deleted and created again): starting over from {:?}",
                config.initial_position
            );
            metrics.checkpoints_discarded.get_or_create(&Discarded(DiscardReason::StreamRecreated)).inc();
            (WindowEngine::new(&config.windowing), first_start(), checkpoint.files)
        }
        None => {
            tracing::info!(%location, initial_position = ?config.initial_position, "no checkpoint: first start");
            (WindowEngine::new(&config.windowing), first_start(), None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aggregate(revision: u32) -> MetricAggregate {
        let mut aggregate: MetricAggregate = serde_json::from_value(serde_json::json!({
            "componentName": "c", "metricName": "m", "unit": "u", "minValue": 1.0, "maxValue": 1.0, "avgValue": 1.0, "count": 1,
            "sum": 1.0, "fromTimestamp": "2021-09-09T12:00:00.000Z", "toTimestamp": "2021-09-09T12:00:00.000Z",
            "windowStart": "2021-09-09T12:00:00.000Z", "windowEnd": "2021-09-09T12:01:00.000Z", "windowId": "00", "revision": 0
        }))
        .unwrap();
        aggregate.revision = revision;
        aggregate
    }

    #[test]
    fn first_emissions_flush_at_once_and_revisions_wait_for_the_checkpoint() {
        assert!(flush_due(&[aggregate(1), aggregate(0)], false, 0, false), "a window's first emission");
        assert!(!flush_due(&[aggregate(1), aggregate(2)], false, 0, false), "revisions only: with the next checkpoint");
        assert!(flush_due(&[aggregate(1)], false, 0, true));
        assert!(flush_due(&[], false, MAX_HELD_DEAD_LETTER_BYTES + 1, false), "dead letters piling up");
        assert!(!flush_due(&[], false, 0, false));
    }
}
