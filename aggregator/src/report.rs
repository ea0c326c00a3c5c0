//! The data-flow report ([`metrics_pipeline_model::report`]): every interval, while this copy holds
//! the checkpoint, what it read, dead-lettered and wrote since the last report, written beside the
//! checkpoint for the operator to show in the pipeline's status. A task of its own, so that a
//! loop stuck retrying an output stream that refuses every write still reports the refusal.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics_pipeline_model::event::EventTime;
use metrics_pipeline_model::report::{DataFlowReport, REPORT_KEY};

use crate::s3::bucket::{Bucket, Condition};
use crate::server::Health;

/// The wall clock, as event time.
pub fn wall_clock() -> EventTime {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis());
    EventTime(i64::try_from(millis).unwrap_or(i64::MAX))
}

/// The counters a report takes the difference of.
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    records_read: u64,
    dead_letters: u64,
    aggregates_written: u64,
}

impl Totals {
    fn of(health: &Health) -> Self {
        let metrics = &health.metrics;
        Self {
            records_read: metrics.records_read.get(),
            dead_letters: metrics.dead_letters_written.get(),
            aggregates_written: metrics.aggregates_written.get(),
        }
    }
}

pub struct Reporter {
    bucket: Bucket,
    health: Arc<Health>,
    previous: Totals,
    previous_at_ms: i64,
}

impl Reporter {
    pub fn new(bucket: Bucket, health: Arc<Health>, started: EventTime) -> Self {
        let previous = Totals::of(&health);
        Self { bucket, health, previous, previous_at_ms: started.0 }
    }

    /// Writes a report every `interval` while this copy holds the checkpoint; a copy waiting for
    /// it writes none, so it never hides the writer's. Runs until dropped.
    pub async fn run(mut self, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let report = self.next(wall_clock());
            if self.health.holds_lease() {
                let body = serde_json::to_vec(&report).expect("a report always serializes");
                // Retried until written; the next report waits for it.
                self.bucket.put(REPORT_KEY, body, "application/json", Condition::None).await;
            }
        }
    }

    /// The report of the span since the previous one.
    fn next(&mut self, now: EventTime) -> DataFlowReport {
        let current = Totals::of(&self.health);
        let metrics = &self.health.metrics;
        // A watermark exists once an event was taken into a window.
        let windowed = metrics.open_windows.get() > 0 || current.aggregates_written > 0;
        let report = DataFlowReport {
            written_at_ms: now.0,
            unanswered_since_ms: Some(self.health.unanswered_since_ms.load(Ordering::Relaxed)).filter(|at| *at > 0),
            interval_ms: now.0 - self.previous_at_ms,
            records_read: current.records_read - self.previous.records_read,
            dead_letters: current.dead_letters - self.previous.dead_letters,
            aggregates_written: current.aggregates_written - self.previous.aggregates_written,
            last_aggregate_at_ms: Some(self.health.last_output_ms.load(Ordering::Relaxed)).filter(|at| *at > 0),
            watermark_lag_seconds: windowed.then(|| metrics.watermark_lag_seconds.get()),
            output_refused: self.health.output_refused.lock().expect("never poisoned").clone(),
            output_throttled_since_ms: Some(self.health.output_throttled_since_ms.load(Ordering::Relaxed)).filter(|at| *at > 0),
        };
        (self.previous, self.previous_at_ms) = (current, now.0);
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reporter() -> Reporter {
        let config = aws_sdk_s3::Config::builder().behavior_version(aws_sdk_s3::config::BehaviorVersion::latest()).build();
        let bucket = Bucket::new(aws_sdk_s3::Client::from_conf(config), "b".into());
        Reporter::new(bucket, Arc::new(Health::new(Duration::from_secs(60), Duration::from_secs(60))), EventTime(1_000))
    }

    #[test]
    fn a_report_counts_what_moved_since_the_previous_one() {
        let mut reporter = reporter();
        let quiet = reporter.next(EventTime(31_000));
        assert_eq!((quiet.interval_ms, quiet.records_read, quiet.aggregates_written), (30_000, 0, 0));
        assert_eq!((quiet.watermark_lag_seconds, quiet.last_aggregate_at_ms), (None, None), "nothing read yet: no watermark");

        let metrics = &reporter.health.metrics;
        metrics.records_read.inc_by(20);
        metrics.dead_letters_written.inc_by(20);
        let garbage = reporter.next(EventTime(41_000));
        assert_eq!((garbage.records_read, garbage.dead_letters, garbage.watermark_lag_seconds), (20, 20, None), "no event, no watermark");

        let metrics = &reporter.health.metrics;
        metrics.records_read.inc_by(100);
        metrics.dead_letters_written.inc_by(3);
        metrics.aggregates_written.inc_by(4);
        metrics.watermark_lag_seconds.set(12.5);
        reporter.health.last_output_ms.store(55_000, Ordering::Relaxed);
        let flowing = reporter.next(EventTime(61_000));
        assert_eq!((flowing.interval_ms, flowing.records_read, flowing.dead_letters, flowing.aggregates_written), (20_000, 100, 3, 4));
        assert_eq!((flowing.watermark_lag_seconds, flowing.last_aggregate_at_ms), (Some(12.5), Some(55_000)));

        reporter.health.metrics.records_read.inc_by(50);
        *reporter.health.output_refused.lock().unwrap() = Some("AccessDeniedException: not allowed".into());
        let stalled = reporter.next(EventTime(91_000));
        assert_eq!((stalled.records_read, stalled.aggregates_written), (50, 0));
        assert_eq!(stalled.last_aggregate_at_ms, Some(55_000), "the last aggregate stays when none follows");
        assert_eq!(stalled.output_refused.as_deref(), Some("AccessDeniedException: not allowed"));
        assert_eq!(stalled.unanswered_since_ms, None);
        reporter.health.unanswered_since_ms.store(70_000, Ordering::Relaxed);
        assert_eq!(reporter.next(EventTime(121_000)).unanswered_since_ms, Some(70_000), "records wait for an aggregate since then");
        assert_eq!(reporter.next(EventTime(151_000)).output_throttled_since_ms, None);
        reporter.health.output_throttled_since_ms.store(140_000, Ordering::Relaxed);
        assert_eq!(reporter.next(EventTime(181_000)).output_throttled_since_ms, Some(140_000), "writes waited for since then");
    }
}
