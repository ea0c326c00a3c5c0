//! Whether data flows, where users already look: the aggregator's report beside its checkpoint
//! ([`metrics_pipeline_model::report`]), read from the pipeline's bucket, becomes the status's
//! `dataFlow` and its `DataFlowing` condition. Resources in place say nothing of a pipeline whose
//! records all go to the dead letters, or whose output stream refuses every write.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use metrics_pipeline_api::pipeline::DataFlowStatus;
use metrics_pipeline_model::aggregation::WindowConfig;
use metrics_pipeline_model::report::{DataFlowReport, REPORT_KEY};

use crate::aws::AwsClients;
use crate::error::{AwsResultExt, Error};

/// The condition's type.
pub const DATA_FLOWING: &str = "DataFlowing";

/// A report is a few hundred bytes.
const MAX_REPORT_BYTES: i64 = 64 * 1024;

/// How soon a pipeline whose data stopped flowing is looked at again (its resync may be minutes).
pub const LOOK_AT_A_STALL: Duration = Duration::from_secs(60);

/// Characters of the output stream's refusal the condition shows.
const REFUSAL_SHOWN: usize = 300;

/// A report this much older than its own interval means the aggregator stopped reporting.
const STALE_AFTER_INTERVALS: i64 = 4;

/// The aggregator's last report in `bucket`; none before its first. The error says why it could
/// not be read, for the condition.
pub async fn read(clients: &AwsClients, bucket: &str) -> Result<Option<DataFlowReport>, String> {
    let location = format!("s3://{bucket}/{REPORT_KEY}");
    let answer = clients.s3.get_object().bucket(bucket).key(REPORT_KEY).send().await;
    let found = answer.absent_on(&["NoSuchKey"], || format!("reading the aggregator's report {location}"));
    let Some(object) = found.map_err(|error: Error| error.to_string())? else { return Ok(None) };
    // The aggregator's credentials may write under `_aggregator/`: never read a planted giant.
    if object.content_length.unwrap_or_default() > MAX_REPORT_BYTES {
        return Err(format!(
            "{location} is {} bytes, not the aggregator's report (at most {MAX_REPORT_BYTES})",
            object.content_length.unwrap_or_default()
        ));
    }
    let body = object.body.collect().await.map_err(|error| format!("reading the aggregator's report {location}: {error}"))?;
    serde_json::from_slice(&body.into_bytes()).map(Some).map_err(|error| format!("{location} is not the aggregator's report: {error}"))
}

/// The condition when the report could not be read.
pub fn unreadable(why: String) -> Judgement {
    Judgement { flowing: None, reason: "ReportUnreadable", message: why }
}

/// What the condition says: `None` for Unknown.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    pub flowing: Option<bool>,
    pub reason: &'static str,
    pub message: String,
}

/// The report as the status shows it.
pub fn status(report: &DataFlowReport) -> DataFlowStatus {
    DataFlowStatus {
        reported_at: time(report.written_at_ms),
        interval_seconds: report.interval_ms / 1000,
        records_in: report.records_read,
        dead_letters: report.dead_letters,
        aggregates_out: report.aggregates_written,
        last_output_at: report.last_aggregate_at_ms.map(time),
        watermark_lag_seconds: report.watermark_lag_seconds.map(|lag| lag.round() as i64),
    }
}

fn time(ms: i64) -> Time {
    Time(jiff::Timestamp::from_millisecond(ms).unwrap_or_default())
}

/// Whether data flows, judged from the aggregator's last report at `now_ms`: records that arrive
/// must come out as aggregates within a window's time (the window, the out-of-orderness the
/// watermark waits for, and a report's interval for the flush), and the output stream must take
/// them.
pub fn judge(report: Option<&DataFlowReport>, windowing: &WindowConfig, now_ms: i64) -> Judgement {
    let Some(report) = report else {
        return Judgement { flowing: None, reason: "NoReport", message: "the aggregator has not reported yet".into() };
    };
    let interval = report.interval_ms.max(1_000);
    let age = now_ms.saturating_sub(report.written_at_ms);
    if age > STALE_AFTER_INTERVALS * interval {
        return Judgement {
            flowing: None,
            reason: "ReportStale",
            message: format!(
                "the aggregator's last report is {} old (it reports every {}): is it running? see AggregatorReady",
                seconds(age),
                seconds(interval)
            ),
        };
    }
    let span = seconds(report.interval_ms);
    let counts = format!(
        "{} records in, {} dead letters, {} aggregates out in the last {span}",
        report.records_read, report.dead_letters, report.aggregates_written
    );
    if let Some(refusal) = &report.output_refused {
        // The SDK's account of a failed call may run to kilobytes (the whole answer).
        let refusal: String = match refusal.char_indices().nth(REFUSAL_SHOWN) {
            Some((cut, _)) => format!("{}…", &refusal[..cut]),
            None => refusal.clone(),
        };
        return Judgement {
            flowing: Some(false),
            reason: "OutputRefused",
            message: format!("the output stream refuses every write ({refusal}); the aggregates wait in the checkpoint; {counts}"),
        };
    }
    // Throttled for longer than a report's span: the loop waits for those writes and reads nothing
    // meanwhile, which would otherwise look like a quiet stream or a stuck watermark.
    let throttled_for = report.output_throttled_since_ms.map(|since| report.written_at_ms.saturating_sub(since));
    if let Some(waited) = throttled_for.filter(|waited| *waited > interval) {
        return Judgement {
            flowing: Some(false),
            reason: "OutputThrottled",
            message: format!(
                "the output stream has throttled the aggregates' writes for {}: the aggregator waits for them and reads \
                 nothing meanwhile; give the output stream more shards (spec.streams.output.shardCount); {counts}",
                seconds(waited)
            ),
        };
    }
    // An event waits for the watermark (out-of-orderness) to pass its window's end, or for the
    // idle timeout on a shard that went quiet; then for a flush, at most a report's interval.
    let answer_within =
        duration_ms(windowing.window) + duration_ms(windowing.out_of_orderness).max(duration_ms(windowing.idle_timeout)) + interval;
    let unanswered_for = report.unanswered_since_ms.map(|since| report.written_at_ms.saturating_sub(since));
    if let Some(waited) = unanswered_for.filter(|waited| report.records_read > 0 && *waited > answer_within) {
        let why = if report.watermark_lag_seconds.is_none() {
            "no record was a metric event, every one went to the dead letters: see the dead-letter prefix for why"
        } else {
            "the event-time watermark does not pass a window's end, or every event came later than allowedLateness: see the \
             watermark's lag and the dead letters"
        };
        return Judgement {
            flowing: Some(false),
            reason: "NoWindowFires",
            message: format!(
                "records arrive but none has led to an aggregate for {} (windows of {}): {why}; {counts}",
                seconds(waited),
                seconds(duration_ms(windowing.window))
            ),
        };
    }
    if report.records_read == 0 {
        return Judgement { flowing: None, reason: "NoInput", message: format!("no records arrived in the last {span}") };
    }
    let lag = report.watermark_lag_seconds.map(|lag| format!("; the watermark trails the clock by {lag:.0}s")).unwrap_or_default();
    Judgement { flowing: Some(true), reason: "Flowing", message: format!("{counts}{lag}") }
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn seconds(ms: i64) -> String {
    format!("{}s", ms / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000;

    fn windowing() -> WindowConfig {
        WindowConfig {
            window: Duration::from_secs(60),
            out_of_orderness: Duration::from_secs(10),
            allowed_lateness: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
            max_future_skew: Duration::from_secs(300),
        }
    }

    /// A report written at 10 minutes, covering the 30 s before; records unanswered since
    /// `unanswered_since_ms`.
    fn report(records: u64, dead_letters: u64, aggregates: u64, unanswered_since_ms: Option<i64>) -> DataFlowReport {
        DataFlowReport {
            written_at_ms: 10 * MINUTE,
            unanswered_since_ms,
            interval_ms: 30_000,
            records_read: records,
            dead_letters,
            aggregates_written: aggregates,
            last_aggregate_at_ms: Some(10 * MINUTE - 5_000),
            watermark_lag_seconds: Some(12.4),
            output_refused: None,
            output_throttled_since_ms: None,
        }
    }

    #[test]
    fn an_output_throttling_every_write_for_longer_than_a_report_is_named_not_taken_for_a_quiet_stream() {
        // The loop waits for its writes: nothing read, records unanswered for minutes.
        let blocked = DataFlowReport { output_throttled_since_ms: Some(7 * MINUTE), ..report(0, 0, 0, Some(6 * MINUTE)) };
        let judged = judge(Some(&blocked), &windowing(), 10 * MINUTE);
        assert_eq!((judged.flowing, judged.reason), (Some(false), "OutputThrottled"), "{judged:?}");
        assert!(judged.message.starts_with("the output stream has throttled the aggregates' writes for 180s"), "{}", judged.message);
        assert!(judged.message.contains("spec.streams.output.shardCount"), "{}", judged.message);
        // Throttled for a moment within the span: retried, and the data flows.
        let moment = DataFlowReport { output_throttled_since_ms: Some(10 * MINUTE - 2_000), ..report(1200, 0, 40, None) };
        assert_eq!(judge(Some(&moment), &windowing(), 10 * MINUTE).reason, "Flowing");
    }

    #[test]
    fn records_in_and_aggregates_out_flow() {
        let judged = judge(Some(&report(1200, 3, 40, Some(10 * MINUTE - 2_000))), &windowing(), 10 * MINUTE + 5_000);
        assert_eq!((judged.flowing, judged.reason), (Some(true), "Flowing"));
        assert_eq!(
            judged.message,
            "1200 records in, 3 dead letters, 40 aggregates out in the last 30s; the watermark trails the clock by 12s"
        );
    }

    #[test]
    fn a_long_window_between_aggregates_is_not_a_stall() {
        let hourly = WindowConfig { window: Duration::from_secs(3600), ..windowing() };
        let judged = judge(Some(&report(1200, 0, 0, Some(0))), &hourly, 10 * MINUTE);
        assert_eq!(judged.flowing, Some(true), "{judged:?}");
    }

    #[test]
    fn a_sparse_producer_whose_batches_fire_their_windows_is_not_a_stall() {
        // A batch every five minutes: the last aggregate is minutes old, but the new records
        // arrived seconds ago and their windows fire once the shard goes idle.
        let batch = DataFlowReport { last_aggregate_at_ms: Some(5 * MINUTE), ..report(60, 0, 0, Some(10 * MINUTE - 10_000)) };
        assert_eq!(judge(Some(&batch), &windowing(), 10 * MINUTE).reason, "Flowing");
    }

    #[test]
    fn records_that_all_go_to_the_dead_letters_stall_the_pipeline() {
        let garbage = DataFlowReport { watermark_lag_seconds: None, last_aggregate_at_ms: None, ..report(500, 500, 0, Some(0)) };
        let judged = judge(Some(&garbage), &windowing(), 10 * MINUTE);
        assert_eq!((judged.flowing, judged.reason), (Some(false), "NoWindowFires"));
        assert!(judged.message.contains("for 600s") && judged.message.contains("dead-letter prefix"), "{judged:?}");
        let stuck_watermark = judge(Some(&report(500, 0, 0, Some(7 * MINUTE))), &windowing(), 10 * MINUTE);
        assert_eq!(stuck_watermark.reason, "NoWindowFires");
        assert!(stuck_watermark.message.contains("for 180s") && stuck_watermark.message.contains("watermark"), "{stuck_watermark:?}");
    }

    #[test]
    fn records_have_a_window_s_time_to_be_answered() {
        // 60 s window + 30 s idle timeout + 30 s interval.
        assert_eq!(judge(Some(&report(500, 0, 0, Some(10 * MINUTE - 110_000))), &windowing(), 10 * MINUTE).reason, "Flowing");
        assert_eq!(judge(Some(&report(500, 0, 0, Some(10 * MINUTE - 130_000))), &windowing(), 10 * MINUTE).reason, "NoWindowFires");
    }

    #[test]
    fn an_output_stream_that_refuses_every_write_stops_the_flow() {
        let refused = DataFlowReport { output_refused: Some("AccessDeniedException: not authorized".into()), ..report(100, 0, 0, Some(0)) };
        let judged = judge(Some(&refused), &windowing(), 10 * MINUTE);
        assert_eq!((judged.flowing, judged.reason), (Some(false), "OutputRefused"));
        assert!(judged.message.contains("AccessDeniedException: not authorized"), "{judged:?}");
        let verbose = DataFlowReport { output_refused: Some("http_403: ".to_owned() + &"<xml>".repeat(1000)), ..refused };
        assert!(judge(Some(&verbose), &windowing(), 10 * MINUTE).message.len() < 500, "kept short");
    }

    #[test]
    fn a_quiet_stream_a_missing_and_a_stale_report_are_unknown() {
        assert_eq!(judge(Some(&report(0, 0, 0, None)), &windowing(), 10 * MINUTE).reason, "NoInput");
        assert_eq!(judge(None, &windowing(), 10 * MINUTE).reason, "NoReport");
        let stale = judge(Some(&report(100, 0, 5, None)), &windowing(), 13 * MINUTE);
        assert_eq!((stale.flowing, stale.reason), (None, "ReportStale"));
    }

    #[test]
    fn the_status_shows_the_report_in_whole_seconds() {
        let shown = status(&report(1200, 3, 40, None));
        assert_eq!((shown.records_in, shown.dead_letters, shown.aggregates_out, shown.interval_seconds), (1200, 3, 40, 30));
        assert_eq!(shown.watermark_lag_seconds, Some(12));
        assert_eq!(shown.reported_at.0.as_millisecond(), 10 * MINUTE);
    }
}
