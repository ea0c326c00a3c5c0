//! The aggregator's loop: poll the input shards, decode, window, fire, and flush — aggregates to
//! the output stream, dead letters and then the checkpoint to the bucket.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_kinesis::types::Record;
use metrics_pipeline_model::aggregation::WindowConfig;
use metrics_pipeline_model::event::{EventTime, MetricAggregate};
use tokio::time::Instant;

use crate::bucket::Bucket;
use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::decode::decode;
use crate::metrics::Metrics;
use crate::parquet_files::{ParquetFiles, ParquetSettings};
use crate::server::Health;
use crate::sink::{Backoff, KinesisSink, OutputRecord};
use crate::source::{InitialPosition, KinesisSource, Poll, ShardBatch};
use crate::window::{Admission, WindowEngine};

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
    pub initial_position: InitialPosition,
    /// Also write the aggregates as Parquet files into the bucket (the direct sink).
    pub parquet: Option<ParquetSettings>,
}

/// Runs until `shutdown` resolves, then flushes and checkpoints. Open windows stay open in the
/// checkpoint: the next start continues them rather than firing them early.
pub async fn run(
    config: AggregatorConfig,
    kinesis: aws_sdk_kinesis::Client,
    bucket: Bucket,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let checkpoints = CheckpointStore::new(bucket.clone(), config.checkpoint_key.clone());
    let loaded = until_stopped("read the checkpoint", &mut shutdown, async || checkpoints.load(&config.input_stream).await).await;
    let Some(stored) = loaded else { return Ok(()) };
    let mut aggregator = Aggregator::resume(config, kinesis, bucket, checkpoints, health, stored?).await;
    let listed = until_stopped("list the input stream's shards", &mut shutdown, async || {
        aggregator.source.discover().await.map_err(|error| aws_sdk_kinesis::error::DisplayErrorContext(error).to_string())
    })
    .await;
    let Some(started) = listed else { return Ok(()) };
    aggregator.start_shards(&started);
    aggregator.forget_unread_shards();
    aggregator.health.ready.store(true, Ordering::Relaxed);
    tracing::info!(stream = %aggregator.config.input_stream, shards = started.len(), "consuming");

    loop {
        let poll = tokio::select! {
            biased;
            () = &mut shutdown => break,
            poll = aggregator.source.poll(aggregator.next_checkpoint) => poll,
        };
        aggregator.take_poll(&poll);
        aggregator.fire_due_windows();
        if aggregator.flush_due() {
            aggregator.flush().await;
        }
    }
    tracing::info!("shutting down: flushing and checkpointing");
    if let Some(files) = &mut aggregator.files {
        files.roll();
    }
    aggregator.flush().await;
    Ok(())
}

/// Retries `attempt` with backoff until it succeeds; `None` when `shutdown` came first.
async fn until_stopped<T, E: std::fmt::Display>(
    what: &str,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    mut attempt: impl AsyncFnMut() -> Result<T, E>,
) -> Option<T> {
    let mut backoff = Backoff::default();
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(error) => tracing::warn!(%error, "cannot {what} yet; retrying"),
        }
        tokio::select! {
            () = shutdown.as_mut() => return None,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

struct Aggregator {
    config: AggregatorConfig,
    engine: WindowEngine,
    source: KinesisSource,
    sink: KinesisSink,
    bucket: Bucket,
    checkpoints: CheckpointStore,
    dead_letters: DeadLetters,
    files: Option<ParquetFiles>,
    /// Aggregates fired and not yet written.
    output: Vec<MetricAggregate>,
    /// Something the checkpoint does not have yet: records taken, shards started or drained.
    changed: bool,
    last_record: Instant,
    shard_last_record: HashMap<String, Instant>,
    next_checkpoint: Instant,
    health: Arc<Health>,
}

impl Aggregator {
    /// The aggregator as the checkpoint left it, or fresh on a first start.
    async fn resume(
        config: AggregatorConfig,
        kinesis: aws_sdk_kinesis::Client,
        bucket: Bucket,
        checkpoints: CheckpointStore,
        health: Arc<Health>,
        stored: Option<Checkpoint>,
    ) -> Self {
        let mut output = Vec::new();
        let (engine, position, files) = match stored {
            Some(checkpoint) => {
                tracing::info!(
                    location = %checkpoints.location(),
                    written_at = %checkpoint.written_at,
                    shards = checkpoint.position.shards.len(),
                    open_windows = checkpoint.engine.open.len(),
                    "resuming from checkpoint"
                );
                (WindowEngine::restore(&config.windowing, checkpoint.engine, &mut output), Some(checkpoint.position), checkpoint.files)
            }
            None => {
                tracing::info!(location = %checkpoints.location(), initial_position = ?config.initial_position, "no checkpoint: first start");
                (WindowEngine::new(&config.windowing), None, None)
            }
        };
        let mut files = config.parquet.clone().map(|settings| ParquetFiles::restore(settings, files.unwrap_or_default()));
        if let Some(files) = &mut files {
            // A roll the last checkpoint recorded may not have been written before the stop.
            let written = files.commit(&bucket).await;
            tracing::debug!(files = written, "Parquet files of the last checkpoint's roll written");
        }
        let source =
            KinesisSource::new(kinesis.clone(), config.input_stream.clone(), config.poll_interval, position, config.initial_position);
        Self {
            last_record: Instant::now(),
            next_checkpoint: Instant::now() + config.checkpoint_interval,
            changed: !output.is_empty(),
            sink: KinesisSink::new(kinesis, config.output_stream.clone()),
            config,
            engine,
            source,
            bucket,
            checkpoints,
            dead_letters: DeadLetters::default(),
            files,
            output,
            shard_last_record: HashMap::new(),
            health,
        }
    }

    /// Shards that appeared or finished, and the records one poll brought.
    fn take_poll(&mut self, poll: &Poll) {
        self.start_shards(&poll.started);
        for shard in &poll.drained {
            self.engine.watermarks_mut().remove(shard);
            self.shard_last_record.remove(shard);
            self.changed = true;
        }
        self.health.metrics.get_records_throttled.inc_by(poll.throttled);
        for batch in &poll.batches {
            self.take_batch(batch);
        }
    }

    fn start_shards(&mut self, shards: &[String]) {
        for shard in shards {
            self.engine.watermarks_mut().register(shard);
            self.shard_last_record.insert(shard.clone(), Instant::now());
            self.changed = true;
        }
        self.health.metrics.shards.set(self.source.shard_count() as i64);
    }

    /// Shard clocks restored from a checkpoint for shards no longer read (trimmed from the
    /// stream) would hold the watermark forever.
    fn forget_unread_shards(&mut self) {
        let unread: Vec<String> =
            self.engine.watermarks_mut().snapshot().into_keys().filter(|shard| !self.shard_last_record.contains_key(shard)).collect();
        for shard in unread {
            self.engine.watermarks_mut().remove(&shard);
        }
    }

    fn take_batch(&mut self, batch: &ShardBatch) {
        let metrics = &self.health.metrics;
        if let Some(behind) = batch.millis_behind_latest {
            metrics.millis_behind_latest.get_or_create(&Metrics::label("shard", batch.shard.clone())).set(behind);
        }
        if batch.records.is_empty() {
            return;
        }
        tracing::debug!(shard = %batch.shard, records = batch.records.len(), millis_behind_latest = ?batch.millis_behind_latest, "read records");
        let now = Instant::now();
        self.last_record = now;
        self.shard_last_record.insert(batch.shard.clone(), now);
        self.changed = true;
        metrics.records_read.inc_by(batch.records.len() as u64);
        for record in &batch.records {
            let reason = match decode(record.data.as_ref()) {
                Ok(event) => match self.engine.add(&batch.shard, &event) {
                    Admission::OnTime => continue,
                    Admission::Late => {
                        metrics.events_late.get_or_create(&Metrics::label("outcome", "reemitted")).inc();
                        continue;
                    }
                    Admission::TooLate => {
                        metrics.events_late.get_or_create(&Metrics::label("outcome", "dead_lettered")).inc();
                        "too_late".to_owned()
                    }
                },
                Err(reason) => {
                    metrics.records_invalid.get_or_create(&Metrics::label("reason", reason.label())).inc();
                    reason.label()
                }
            };
            tracing::debug!(shard = %batch.shard, sequence_number = record.sequence_number(), %reason, "record kept as a dead letter");
            self.dead_letters.push(dead_letter(reason, &batch.shard, record));
        }
    }

    /// Idle shards stop holding the watermark; after `idleTimeout` without any record every open
    /// window fires; then whatever the watermark has passed fires.
    fn fire_due_windows(&mut self) {
        let now = Instant::now();
        let idle_timeout = self.config.windowing.idle_timeout;
        for (shard, last) in &self.shard_last_record {
            if now.duration_since(*last) >= idle_timeout {
                self.engine.watermarks_mut().mark_idle(shard);
            }
        }
        let before = self.output.len();
        if now.duration_since(self.last_record) >= idle_timeout && self.engine.open_windows() > 0 {
            tracing::debug!(
                open_windows = self.engine.open_windows(),
                ?idle_timeout,
                "no records for the idle timeout: firing every open window"
            );
            self.engine.fire_all(&mut self.output);
        }
        self.engine.advance(&mut self.output);
        if self.output.len() > before {
            tracing::debug!(aggregates = self.output.len() - before, watermark = ?self.engine.watermark().map(EventTime), "windows fired");
        }
        let metrics = &self.health.metrics;
        metrics.open_windows.set(self.engine.open_windows() as i64);
        if let Some(watermark) = self.engine.watermark() {
            metrics.watermark_lag_seconds.set((wall_clock().0 - watermark) as f64 / 1000.0);
        }
    }

    fn flush_due(&self) -> bool {
        !self.output.is_empty()
            || self.dead_letters.bytes() > MAX_HELD_DEAD_LETTER_BYTES
            || ((self.changed || !self.dead_letters.is_empty()) && Instant::now() >= self.next_checkpoint)
            || self.files.as_ref().is_some_and(ParquetFiles::roll_due)
    }

    /// Writes fired aggregates and dead letters, then the checkpoint that covers them: a crash
    /// before the checkpoint replays them, with the same window ids.
    async fn flush(&mut self) {
        let metrics = &self.health.metrics;
        if let Some(files) = &mut self.files {
            files.add(&self.output);
            if files.roll_due() {
                files.roll();
            }
        }
        if !self.output.is_empty() {
            let records: Vec<OutputRecord> = self.output.drain(..).map(|aggregate| OutputRecord::from_aggregate(&aggregate)).collect();
            let count = records.len() as u64;
            self.sink.put_all(records).await;
            metrics.aggregates_written.inc_by(count);
            tracing::debug!(aggregates = count, stream = %self.config.output_stream, "aggregates written");
        }
        if !self.dead_letters.is_empty() {
            let count = self.dead_letters.len() as u64;
            self.dead_letters.write(&self.bucket, &self.config.dead_letter_prefix).await;
            metrics.dead_letters_written.inc_by(count);
            tracing::debug!(records = count, prefix = %self.config.dead_letter_prefix, "dead letters written");
        }
        let files = self.files.as_ref().map(|files| files.state().clone());
        let checkpoint =
            Checkpoint::new(&self.config.input_stream, wall_clock(), self.source.position().clone(), self.engine.snapshot(), files);
        self.checkpoints.save(&checkpoint).await;
        metrics.checkpoints_written.inc();
        tracing::debug!(location = %self.checkpoints.location(), open_windows = checkpoint.engine.open.len(), "checkpoint written");
        if let Some(files) = &mut self.files {
            let written = files.commit(&self.bucket).await;
            metrics.parquet_files_written.inc_by(written as u64);
        }
        self.changed = false;
        self.next_checkpoint = Instant::now() + self.config.checkpoint_interval;
    }
}

fn dead_letter(reason: String, shard: &str, record: &Record) -> DeadLetter {
    DeadLetter::new(reason, shard, record.sequence_number(), record.partition_key().unwrap_or_default(), record.data.as_ref())
}

fn wall_clock() -> EventTime {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis());
    EventTime(i64::try_from(millis).unwrap_or(i64::MAX))
}
