//! Prometheus metrics of the aggregator, served on `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A series keyed by one label, as a type: what the value is, not a name and a string anyone
/// could misspell.
macro_rules! label {
    ($(#[$doc:meta])* $name:ident($value:ty) = $key:literal, $text:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Hash, PartialEq, Eq)]
        pub struct $name(pub $value);

        impl EncodeLabelSet for $name {
            fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
                let text: fn(&$value) -> &str = $text;
                ($key, text(&self.0)).encode(encoder.encode_label())
            }
        }
    };
}

label!(
    /// An input shard's series.
    Shard(String) = "shard", String::as_str
);
label!(
    /// Calls that failed, by the error code AWS answered (or the kind of failure when none did).
    ErrorCode(String) = "code", String::as_str
);
label!(
    /// Records not counted, by why: an `InvalidReason`'s label, or how the engine refused the event.
    NotCounted(String) = "reason", String::as_str
);
label!(
    /// What became of an event for a window already fired.
    Late(LateOutcome) = "outcome", |outcome| match outcome {
        LateOutcome::Reemitted => "reemitted",
        LateOutcome::DeadLettered => "dead_lettered",
    }
);
label!(
    /// Why a stored checkpoint was not resumed from.
    Discarded(DiscardReason) = "reason", |reason| match reason {
        DiscardReason::StreamRecreated => "stream_recreated",
    }
);

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum LateOutcome {
    /// Within the allowed lateness: its window is sent again, revised.
    Reemitted,
    /// Later: kept as a dead letter.
    DeadLettered,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DiscardReason {
    /// It was written for an earlier stream of the same name.
    StreamRecreated,
}

pub struct Metrics {
    registry: Registry,
    pub records_read: Counter,
    pub shard_records_read: Family<Shard, Counter>,
    pub shard_dead_letters: Family<Shard, Counter>,
    pub shard_event_time_lag_seconds: Family<Shard, Gauge<f64, AtomicU64>>,
    pub shard_idle: Family<Shard, Gauge>,
    pub kpl_user_records: Counter,
    pub records_invalid: Family<NotCounted, Counter>,
    pub events_late: Family<Late, Counter>,
    pub aggregates_written: Counter,
    pub dead_letters_written: Counter,
    pub parquet_files_written: Counter,
    pub parquet_staging_missing: Counter,
    pub checkpoints_written: Counter,
    pub checkpoints_discarded: Family<Discarded, Counter>,
    pub get_records_throttled: Counter,
    pub get_records_errors: Family<ErrorCode, Counter>,
    pub put_records_refused: Family<ErrorCode, Counter>,
    pub checkpoint_bytes: Gauge,
    pub checkpoint_write_seconds: Gauge<f64, AtomicU64>,
    pub checkpoint_age_seconds: Gauge<f64, AtomicU64>,
    pub lease_held: Gauge,
    pub shards_reset_to_trim_horizon: Counter,
    pub open_windows: Gauge,
    pub shards: Gauge,
    pub idle_shards: Gauge,
    pub watermark_lag_seconds: Gauge<f64, AtomicU64>,
    pub millis_behind_latest: Family<Shard, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut metrics = Self {
            registry: Registry::with_prefix("aggregator"),
            records_read: Counter::default(),
            shard_records_read: Family::default(),
            shard_dead_letters: Family::default(),
            shard_event_time_lag_seconds: Family::default(),
            shard_idle: Family::default(),
            kpl_user_records: Counter::default(),
            records_invalid: Family::default(),
            events_late: Family::default(),
            aggregates_written: Counter::default(),
            dead_letters_written: Counter::default(),
            parquet_files_written: Counter::default(),
            parquet_staging_missing: Counter::default(),
            checkpoints_written: Counter::default(),
            checkpoints_discarded: Family::default(),
            get_records_throttled: Counter::default(),
            get_records_errors: Family::default(),
            put_records_refused: Family::default(),
            checkpoint_bytes: Gauge::default(),
            checkpoint_write_seconds: Gauge::default(),
            checkpoint_age_seconds: Gauge::default(),
            lease_held: Gauge::default(),
            shards_reset_to_trim_horizon: Counter::default(),
            open_windows: Gauge::default(),
            shards: Gauge::default(),
            idle_shards: Gauge::default(),
            watermark_lag_seconds: Gauge::default(),
            millis_behind_latest: Family::default(),
        };
        let registry = &mut metrics.registry;
        registry.register("records_read", "Records read from the input stream", metrics.records_read.clone());
        registry.register("shard_records_read", "Records read, by shard", metrics.shard_records_read.clone());
        registry.register("shard_dead_letters", "User records kept as dead letters, by shard", metrics.shard_dead_letters.clone());
        registry.register(
            "shard_event_time_lag_seconds",
            "Wall clock minus the latest event time counted from each shard: the largest among shards not idle holds the watermark",
            metrics.shard_event_time_lag_seconds.clone(),
        );
        registry.register("shard_idle", "1 while a shard does not hold the watermark (idle)", metrics.shard_idle.clone());
        registry.register(
            "kpl_user_records",
            "User records unpacked from KPL aggregated records (each counted or dead-lettered on its own)",
            metrics.kpl_user_records.clone(),
        );
        registry.register(
            "records_invalid",
            "Records not counted, by reason: not metric events, stamped beyond the future skew, overflowing their window's sum (kept as dead letters)",
            metrics.records_invalid.clone(),
        );
        registry.register(
            "events_late",
            "Events for fired windows: reemitted (within allowedLateness) or dead_lettered (later)",
            metrics.events_late.clone(),
        );
        registry.register("aggregates_written", "Aggregates written to the output stream", metrics.aggregates_written.clone());
        registry.register("dead_letters_written", "Records written to the dead-letter prefix", metrics.dead_letters_written.clone());
        registry.register("parquet_files_written", "Parquet files written by the direct sink", metrics.parquet_files_written.clone());
        registry.register(
            "parquet_staging_missing",
            "Staged Parquet rows the checkpoint names but the bucket no longer holds, at a start (their rows are in no file)",
            metrics.parquet_staging_missing.clone(),
        );
        registry.register("checkpoints_written", "Checkpoints stored", metrics.checkpoints_written.clone());
        registry.register(
            "checkpoints_discarded",
            "Stored checkpoints not resumed, by reason (stream_recreated: of an earlier stream of the same name)",
            metrics.checkpoints_discarded.clone(),
        );
        registry.register("get_records_throttled", "GetRecords calls refused for throughput", metrics.get_records_throttled.clone());
        registry.register(
            "get_records_errors",
            "GetShardIterator and GetRecords calls that failed, by error code (throttling is get_records_throttled)",
            metrics.get_records_errors.clone(),
        );
        registry.register(
            "put_records_refused",
            "Output records refused by PutRecords (an entry or the whole call), by error code; each is retried",
            metrics.put_records_refused.clone(),
        );
        registry.register("checkpoint_bytes", "Size of the last checkpoint written", metrics.checkpoint_bytes.clone());
        registry.register("checkpoint_write_seconds", "How long the last checkpoint write took", metrics.checkpoint_write_seconds.clone());
        registry.register(
            "checkpoint_age_seconds",
            "Time since this copy last wrote the checkpoint",
            metrics.checkpoint_age_seconds.clone(),
        );
        registry.register("lease_held", "1 while this copy holds the checkpoint's lease", metrics.lease_held.clone());
        registry.register(
            "shards_reset_to_trim_horizon",
            "Shards whose checkpointed position was past the stream's retention, read again from its oldest record",
            metrics.shards_reset_to_trim_horizon.clone(),
        );
        registry.register("open_windows", "Windows (key x window) not fired yet", metrics.open_windows.clone());
        registry.register("shards", "Input shards being read", metrics.shards.clone());
        registry.register(
            "idle_shards",
            "Input shards not holding the watermark: caught up and without a counted event for the idle timeout",
            metrics.idle_shards.clone(),
        );
        registry.register("watermark_lag_seconds", "Wall clock minus the event-time watermark", metrics.watermark_lag_seconds.clone());
        registry.register(
            "millis_behind_latest",
            "How far each shard's reading trails its newest record",
            metrics.millis_behind_latest.clone(),
        );
        metrics
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    /// A shard no longer read (drained, or gone from the stream) leaves no series behind.
    pub fn forget_shard(&self, shard: &str) {
        let label = Shard(shard.to_owned());
        self.millis_behind_latest.remove(&label);
        self.shard_records_read.remove(&label);
        self.shard_dead_letters.remove(&label);
        self.shard_event_time_lag_seconds.remove(&label);
        self.shard_idle.remove(&label);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_the_shipped_alerts_and_dashboard_query_is_one_the_aggregator_exposes() {
        let metrics = Metrics::default();
        // A family shows only once it has a series: one of each.
        let shard = Shard("shardId-000000000000".into());
        metrics.shard_records_read.get_or_create(&shard).inc();
        metrics.shard_dead_letters.get_or_create(&shard).inc();
        metrics.shard_event_time_lag_seconds.get_or_create(&shard).set(0.0);
        metrics.shard_idle.get_or_create(&shard).set(0);
        metrics.millis_behind_latest.get_or_create(&shard).set(0);
        metrics.records_invalid.get_or_create(&NotCounted("not_json".into())).inc();
        metrics.events_late.get_or_create(&Late(LateOutcome::DeadLettered)).inc();
        metrics.checkpoints_discarded.get_or_create(&Discarded(DiscardReason::StreamRecreated)).inc();
        metrics.get_records_errors.get_or_create(&ErrorCode("timeout".into())).inc();
        metrics.put_records_refused.get_or_create(&ErrorCode("ProvisionedThroughputExceededException".into())).inc();
        let exposed = metrics_pipeline_test_support::exposed_series(&metrics.encode());
        let queried = metrics_pipeline_test_support::shipped_queries_of("aggregator_");
        assert!(queried.len() >= 10, "{queried:?}");
        let missing: Vec<_> = queried.difference(&exposed).collect();
        assert!(missing.is_empty(), "queried but never exposed: {missing:?}; exposed: {exposed:?}");
    }
}
