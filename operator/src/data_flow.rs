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
    let age = now_ms - report.written_at_ms;
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
    let fire_within = duration_ms(windowing.window) + duration_ms(windowing.out_of_orderness) + interval;
    let silent_since = report.last_aggregate_at_ms.unwrap_or(report.started_at_ms);
    if report.records_read > 0 && report.written_at_ms - silent_since > fire_within {
        let since = match report.last_aggregate_at_ms {
            Some(_) => format!("for {}", seconds(report.written_at_ms - silent_since)),
            None => format!("since the aggregator started {} ago", seconds(report.written_at_ms - silent_since)),
        };
        let why = if report.watermark_lag_seconds.is_none() {
            "no record was a metric event, every one went to the dead letters: see the dead-letter prefix for why"
        } else {
            "the event-time watermark does not pass a window's end: are the events' timestamps in the past?"
        };
        return Judgement {
            flowing: Some(false),
            reason: "NoWindowFires",
            message: format!(
                "records arrive but no window has fired {since} (windows of {}): {why}; {counts}",
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

    /// A report written at 10 minutes of a copy started at 0, covering the 30 s before.
    fn report(records: u64, dead_letters: u64, aggregates: u64, last_aggregate_at_ms: Option<i64>) -> DataFlowReport {
        DataFlowReport {
            written_at_ms: 10 * MINUTE,
            started_at_ms: 0,
            interval_ms: 30_000,
            records_read: records,
            dead_letters,
            aggregates_written: aggregates,
            last_aggregate_at_ms,
            watermark_lag_seconds: Some(12.4),
            output_refused: None,
        }
    }

    #[test]
    fn records_in_and_aggregates_out_flow() {
        let judged = judge(Some(&report(1200, 3, 40, Some(10 * MINUTE))), &windowing(), 10 * MINUTE + 5_000);
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
    fn records_that_all_go_to_the_dead_letters_stall_the_pipeline() {
        let garbage = DataFlowReport { watermark_lag_seconds: None, ..report(500, 500, 0, None) };
        let judged = judge(Some(&garbage), &windowing(), 10 * MINUTE);
        assert_eq!((judged.flowing, judged.reason), (Some(false), "NoWindowFires"));
        assert!(
            judged.message.contains("since the aggregator started 600s ago") && judged.message.contains("dead-letter prefix"),
            "{judged:?}"
        );
        let stuck_watermark = judge(Some(&report(500, 0, 0, Some(2 * MINUTE))), &windowing(), 10 * MINUTE);
        assert_eq!(stuck_watermark.reason, "NoWindowFires");
        assert!(stuck_watermark.message.contains("for 480s") && stuck_watermark.message.contains("watermark"), "{stuck_watermark:?}");
    }

    #[test]
    fn a_fresh_start_has_a_window_s_time_before_it_is_judged_stalled() {
        let started = DataFlowReport { started_at_ms: 10 * MINUTE - 90_000, ..report(500, 0, 0, None) };
        assert_eq!(judge(Some(&started), &windowing(), 10 * MINUTE).reason, "Flowing");
    }

    #[test]
    fn an_output_stream_that_refuses_every_write_stops_the_flow() {
        let refused = DataFlowReport { output_refused: Some("AccessDeniedException: not authorized".into()), ..report(100, 0, 0, None) };
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
        let stale = judge(Some(&report(100, 0, 5, Some(10 * MINUTE))), &windowing(), 13 * MINUTE);
        assert_eq!((stale.flowing, stale.reason), (None, "ReportStale"));
    }

    #[test]
    fn the_status_shows_the_report_in_whole_seconds() {
        let shown = status(&report(1200, 3, 40, Some(10 * MINUTE)));
        assert_eq!((shown.records_in, shown.dead_letters, shown.aggregates_out, shown.interval_seconds), (1200, 3, 40, 30));
        assert_eq!(shown.watermark_lag_seconds, Some(12));
        assert_eq!(shown.reported_at.0.as_millisecond(), 10 * MINUTE);
    }
}
