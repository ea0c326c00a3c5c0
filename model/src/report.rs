//! What the aggregator reports of the data it moves, beside its checkpoint in the pipeline's
//! bucket, for the operator to show in the pipeline's status: whether data flows, where users
//! already look (`kubectl get metricspipelines`), over no new network path to the pods.

use serde::{Deserialize, Serialize};

/// Where the report is, in the pipeline's bucket (beside `_aggregator/checkpoint.json`).
pub const REPORT_KEY: &str = "_aggregator/report.json";

/// One report: counts since the previous one, and the state now. Times are milliseconds since the
/// epoch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataFlowReport {
    pub written_at_ms: i64,
    /// When the oldest record read since an aggregate last went out was read; none while every
    /// record read has led to an aggregate. How long records have gone unanswered.
    pub unanswered_since_ms: Option<i64>,
    /// The span the counts cover, since the previous report (or the start).
    pub interval_ms: i64,
    /// Records read from the input stream in the span.
    pub records_read: u64,
    /// Records kept in the dead-letter prefix in the span (invalid, too late, too far ahead).
    pub dead_letters: u64,
    /// Aggregates written to the output stream in the span.
    pub aggregates_written: u64,
    /// When an aggregate last reached the output stream, since the start; none yet.
    pub last_aggregate_at_ms: Option<i64>,
    /// Wall clock minus the event-time watermark, in seconds; none before the first event.
    pub watermark_lag_seconds: Option<f64>,
    /// The error code with which the output stream refuses every write, until one goes through.
    pub output_refused: Option<String>,
    /// Since when the output stream has throttled a write the aggregator still waits to make
    /// (none once every write went through): the loop waits with it and reads nothing meanwhile.
    pub output_throttled_since_ms: Option<i64>,
}
