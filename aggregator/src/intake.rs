//! What the loop does with what it read, without I/O: each GetRecords page into the window engine
//! and the dead letters, each shard's activity (caught up, idle, answering), and firing windows.

use std::collections::HashMap;
use std::time::Duration;

use metrics_pipeline_model::event::{EventTime, MetricAggregate};
use tokio::time::Instant;

use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::get_records::InputRecord;
use crate::metrics::Metrics;
use crate::source::{Poll, ShardBatch};
use crate::window::{Admission, KeyedPage, WindowEngine};

/// A shard that has not answered GetRecords for this long is not being read: not ready.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

pub struct Intake {
    pub engine: WindowEngine,
    pub dead_letters: DeadLetters,
    /// Aggregates fired and not yet written.
    pub output: Vec<MetricAggregate>,
    /// Something the checkpoint does not have yet: records taken, shards started or drained.
    pub changed: bool,
    idle_timeout: Duration,
    shards: HashMap<String, ShardActivity>,
}

/// How a shard's reading goes.
#[derive(Clone, Copy, Debug)]
struct ShardActivity {
    /// Since when every answer was empty with `MillisBehindLatest` 0; `None` while records come,
    /// while the shard is behind, and after a throttled or failed call: such a shard is never idle.
    caught_up_since: Option<Instant>,
    /// The last GetRecords answer; `None` until the first.
    last_answer: Option<Instant>,
}

impl ShardActivity {
    fn idle(&self, now: Instant, idle_timeout: Duration) -> bool {
        self.caught_up_since.is_some_and(|since| now.duration_since(since) >= idle_timeout)
    }
}

impl Intake {
    pub fn new(engine: WindowEngine, idle_timeout: Duration) -> Self {
        let (dead_letters, output, shards) = (DeadLetters::default(), Vec::new(), HashMap::new());
        Self { engine, dead_letters, output, changed: false, idle_timeout, shards }
    }

    pub fn start_shards(&mut self, shards: &[String]) {
        for shard in shards {
            self.engine.watermarks_mut().register(shard);
            self.shards.insert(shard.clone(), ShardActivity { caught_up_since: None, last_answer: None });
            self.changed = true;
        }
    }

    /// Shard clocks restored from a checkpoint for shards no longer read (trimmed from the
    /// stream) would hold the watermark forever.
    pub fn forget_unread_shards(&mut self) {
        let unread: Vec<String> =
            self.engine.watermarks_mut().snapshot().into_keys().filter(|shard| !self.shards.contains_key(shard)).collect();
        for shard in unread {
            self.engine.watermarks_mut().remove(&shard);
        }
    }

    /// Shards that appeared, the pages one poll brought (read at `wall_clock`), then the shards
    /// that finished: a closed shard's last page must not bring its clock back.
    pub fn take_poll(&mut self, poll: &Poll, now: Instant, wall_clock: EventTime, metrics: &Metrics) {
        self.start_shards(&poll.started);
        metrics.get_records_throttled.inc_by(poll.throttled);
        for batch in &poll.batches {
            if let Some(activity) = self.shards.get_mut(&batch.shard) {
                let caught_up = batch.records.is_empty() && batch.millis_behind_latest.unwrap_or(0) == 0;
                activity.caught_up_since = caught_up.then(|| activity.caught_up_since.unwrap_or(now));
                activity.last_answer = Some(now);
            }
            self.take_batch(batch, wall_clock, metrics);
        }
        for shard in &poll.unanswered {
            if let Some(activity) = self.shards.get_mut(shard) {
                activity.caught_up_since = None;
            }
        }
        for shard in &poll.drained {
            self.engine.watermarks_mut().remove(shard);
            self.shards.remove(shard);
            self.changed = true;
        }
        metrics.shards.set(self.shards.len() as i64);
    }

    fn take_batch(&mut self, batch: &ShardBatch, wall_clock: EventTime, metrics: &Metrics) {
        if let Some(behind) = batch.millis_behind_latest {
            metrics.millis_behind_latest.get_or_create(&Metrics::label("shard", batch.shard.clone())).set(behind);
        }
        if batch.records.is_empty() {
            return;
        }
        tracing::debug!(shard = %batch.shard, records = batch.records.len(), millis_behind_latest = ?batch.millis_behind_latest, "read records");
        self.changed = true;
        metrics.records_read.inc_by(batch.records.len() as u64);
        self.engine.start_page(wall_clock);
        debug_assert_eq!(batch.records.len(), batch.events.records(), "a page is decoded record by record");
        let mut not_on_time = self.engine.add_page(&batch.shard, &batch.events).into_iter().peekable();
        for (index, (record, event)) in batch.records.iter().zip(batch.events.events()).enumerate() {
            let reason = match event {
                Ok(_) => match not_on_time.next_if(|(at, _)| *at == index).map_or(Admission::OnTime, |(_, admission)| admission) {
                    Admission::OnTime => continue,
                    Admission::Late => {
                        metrics.events_late.get_or_create(&Metrics::label("outcome", "reemitted")).inc();
                        continue;
                    }
                    Admission::TooLate => {
                        metrics.events_late.get_or_create(&Metrics::label("outcome", "dead_lettered")).inc();
                        "too_late".to_owned()
                    }
                    refused @ (Admission::AheadOfClock | Admission::SumOverflow) => {
                        let reason = if refused == Admission::AheadOfClock { "future_timestamp" } else { "sum_overflow" };
                        metrics.records_invalid.get_or_create(&Metrics::label("reason", reason)).inc();
                        reason.to_owned()
                    }
                },
                Err(reason) => {
                    metrics.records_invalid.get_or_create(&Metrics::label("reason", reason.label())).inc();
                    reason.label()
                }
            };
            tracing::debug!(shard = %batch.shard, sequence_number = record.sequence_number, %reason, "record kept as a dead letter");
            self.dead_letters.push(dead_letter(reason, &batch.shard, &record));
        }
    }

    /// Shards caught up and quiet for the idle timeout stop holding the watermark; when every
    /// shard is, every open window fires (as at end of input); then whatever the watermark has
    /// passed fires.
    pub fn fire_due_windows(&mut self, now: Instant, wall_clock: EventTime, metrics: &Metrics) {
        let mut all_idle = true;
        for (shard, activity) in &self.shards {
            if activity.idle(now, self.idle_timeout) {
                self.engine.watermarks_mut().mark_idle(shard);
            } else {
                self.engine.watermarks_mut().mark_active(shard);
                all_idle = false;
            }
        }
        let before = self.output.len();
        if all_idle && self.engine.open_windows() > 0 {
            tracing::debug!(
                open_windows = self.engine.open_windows(),
                "every shard caught up and quiet for the idle timeout: firing every open window"
            );
            self.engine.fire_all(&mut self.output);
        }
        self.engine.advance(&mut self.output);
        if self.output.len() > before {
            tracing::debug!(aggregates = self.output.len() - before, watermark = ?self.engine.watermark().map(EventTime), "windows fired");
        }
        metrics.open_windows.set(self.engine.open_windows() as i64);
        if let Some(watermark) = self.engine.watermark() {
            metrics.watermark_lag_seconds.set((wall_clock.0 - watermark) as f64 / 1000.0);
        }
    }

    /// Whether every shard is being read: each has answered GetRecords, and lately.
    pub fn reading(&self, now: Instant) -> bool {
        self.shards.values().all(|activity| activity.last_answer.is_some_and(|last| now.duration_since(last) < ANSWER_WITHIN))
    }
}

fn dead_letter(reason: String, shard: &str, record: &InputRecord<'_>) -> DeadLetter {
    DeadLetter::new(reason, shard, record.sequence_number, record.partition_key, record.data)
}

#[cfg(test)]
mod tests {
    use metrics_pipeline_model::aggregation::WindowConfig;

    use super::*;
    use crate::decode::DecodedPage;
    use crate::get_records::Records;

    const NOON: i64 = 1_631_188_800_000;

    fn intake() -> Intake {
        let config = WindowConfig {
            window: Duration::from_secs(60),
            out_of_orderness: Duration::from_secs(1),
            allowed_lateness: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
            max_future_skew: Duration::from_secs(300),
        };
        Intake::new(WindowEngine::new(&config), config.idle_timeout)
    }

    fn page(shard: &str, times: &[i64], millis_behind_latest: i64) -> ShardBatch {
        let mut records = Records::default();
        for (i, at) in times.iter().enumerate() {
            let data = format!(r#"{{"componentName":"c","metricName":"m","unit":"u","value":1,"timestamp":{}}}"#, NOON + at);
            records.push(&i.to_string(), "k", data.as_bytes());
        }
        let events = DecodedPage::of(records.iter().map(|record| record.data));
        ShardBatch { shard: shard.into(), records, events, millis_behind_latest: Some(millis_behind_latest) }
    }

    fn poll(batches: Vec<ShardBatch>) -> Poll {
        Poll { batches, ..Poll::default() }
    }

    #[test]
    fn a_closed_shards_last_page_does_not_hold_the_watermark() {
        let (mut intake, metrics, now, wall_clock) = (intake(), Metrics::default(), Instant::now(), EventTime(NOON + 3_600_000));
        intake.start_shards(&["parent".into(), "other".into()]);
        intake.take_poll(&poll(vec![page("other", &[300_000], 0)]), now, wall_clock, &metrics);
        let mut last = poll(vec![page("parent", &[200_000], 0)]);
        last.drained.push("parent".into());
        intake.take_poll(&last, now, wall_clock, &metrics);
        intake.fire_due_windows(now, wall_clock, &metrics);
        assert_eq!(intake.engine.watermark(), Some(NOON + 299_000), "only the open shard holds the watermark");
        assert!(!intake.engine.watermarks_mut().snapshot().contains_key("parent"), "the drained shard is forgotten");
    }

    #[test]
    fn a_lagging_throttled_or_failing_shard_is_never_idle() {
        let (mut intake, metrics, start, wall_clock) = (intake(), Metrics::default(), Instant::now(), EventTime(NOON + 3_600_000));
        intake.start_shards(&["fast".into(), "slow".into()]);
        intake.take_poll(&poll(vec![page("fast", &[600_000], 0), page("slow", &[0], 5_000)]), start, wall_clock, &metrics);
        let mut now = start;
        for answer in 0..40 {
            now += Duration::from_secs(1);
            // The slow shard answers empty pages while behind, then is throttled, then fails.
            let slow = match answer {
                0..20 => poll(vec![page("fast", &[], 0), page("slow", &[], 5_000)]),
                _ => Poll { batches: vec![page("fast", &[], 0)], unanswered: vec!["slow".into()], ..Poll::default() },
            };
            intake.take_poll(&slow, now, wall_clock, &metrics);
            intake.fire_due_windows(now, wall_clock, &metrics);
        }
        assert!(intake.output.is_empty(), "the lagging shard holds the noon window open: {:?}", intake.output);
        assert_eq!(intake.engine.watermark(), Some(NOON - 1_000));
        // Once it has caught up and stayed quiet for the idle timeout, it is idle.
        for _ in 0..31 {
            now += Duration::from_secs(1);
            intake.take_poll(&poll(vec![page("fast", &[], 0), page("slow", &[], 0)]), now, wall_clock, &metrics);
            intake.fire_due_windows(now, wall_clock, &metrics);
        }
        assert_eq!(intake.output.len(), 2, "every shard quiet: everything fires");
    }

    #[test]
    fn readiness_means_every_shard_answers() {
        let (mut intake, metrics, start) = (intake(), Metrics::default(), Instant::now());
        intake.start_shards(&["a".into(), "b".into()]);
        assert!(!intake.reading(start), "no shard has answered yet");
        intake.take_poll(&poll(vec![page("a", &[], 0), page("b", &[], 0)]), start, EventTime(NOON), &metrics);
        assert!(intake.reading(start));
        let later = start + ANSWER_WITHIN;
        intake.take_poll(
            &Poll { batches: vec![page("a", &[], 0)], unanswered: vec!["b".into()], ..Poll::default() },
            later,
            EventTime(NOON),
            &metrics,
        );
        assert!(!intake.reading(later), "shard b has not answered for {ANSWER_WITHIN:?}");
        intake.take_poll(&poll(vec![page("b", &[], 0)]), later, EventTime(NOON), &metrics);
        assert!(intake.reading(later));
    }
}
