//! What the loop does with what it read, without I/O: each GetRecords page into the window engine
//! and the dead letters, each shard's activity (caught up, idle, answering), and firing windows.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use metrics_pipeline_model::event::{EventTime, MetricAggregate};
use tokio::time::Instant;

use crate::engine::window::{Admission, WindowEngine};
use crate::kinesis::decode::UserRecord;
use crate::kinesis::source::{Poll, ShardBatch, ShardInfo};
use crate::metrics::{ErrorCode, Late, LateOutcome, Metrics, NotCounted, Shard};
use crate::s3::dead_letter::{DeadLetter, DeadLetters};

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
    /// Shards read to their end whose children are not being read yet: their clocks stay, as a
    /// floor under the watermark, until a child starts (a reshard must not fire windows early).
    drained_awaiting_children: BTreeSet<String>,
}

/// How a shard's reading goes.
#[derive(Clone, Copy, Debug)]
struct ShardActivity {
    /// The last event counted from the shard, or when reading it started: idleness is decided by
    /// counted events, as Flink's is, so a shard whose records are all dead letters goes idle like
    /// a silent one.
    last_counted: Instant,
    /// Whether its last GetRecords answer said nothing is behind (`MillisBehindLatest` 0); not
    /// while it is behind, nor after a throttled or failed call: such a shard is never idle.
    caught_up: bool,
    /// The last GetRecords answer; `None` until the first.
    last_answer: Option<Instant>,
}

impl ShardActivity {
    fn idle(&self, now: Instant, idle_timeout: Duration) -> bool {
        self.caught_up && now.duration_since(self.last_counted) >= idle_timeout
    }
}

impl Intake {
    pub fn new(engine: WindowEngine, idle_timeout: Duration) -> Self {
        let (dead_letters, output, shards) = (DeadLetters::default(), Vec::new(), HashMap::new());
        Self { engine, dead_letters, output, changed: false, idle_timeout, shards, drained_awaiting_children: BTreeSet::new() }
    }

    /// Shards that start being read at `now`; a drained parent's clock leaves with its first child.
    pub fn start_shards(&mut self, shards: &[ShardInfo], now: Instant) {
        for shard in shards {
            self.engine.watermarks_mut().register(&shard.id);
            self.shards.insert(shard.id.clone(), ShardActivity { last_counted: now, caught_up: false, last_answer: None });
            self.changed = true;
        }
        self.release_parents(shards);
    }

    /// Children take over from their drained parents: a child that has seen nothing yet starts
    /// from its parents' clock (a key's events continue in it), and the parents' clocks go.
    fn release_parents(&mut self, children: &[ShardInfo]) {
        let watermarks = self.engine.watermarks_mut();
        for child in children {
            let parents: Vec<&str> =
                child.parents.iter().filter(|parent| self.drained_awaiting_children.contains(*parent)).map(String::as_str).collect();
            watermarks.hand_over(&parents, &child.id);
        }
        for parent in children.iter().flat_map(|child| &child.parents) {
            if self.drained_awaiting_children.remove(parent) {
                watermarks.remove(parent);
            }
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
    /// that finished: a closed shard's last page must not bring its clock back, and its clock
    /// stays until a child of it is read (children named by its last answer start in this poll).
    pub fn take_poll(&mut self, poll: &Poll, now: Instant, wall_clock: EventTime, metrics: &Metrics) {
        self.start_shards(&poll.started, now);
        metrics.get_records_throttled.inc_by(poll.throttled);
        for batch in &poll.batches {
            let counted = self.take_batch(batch, wall_clock, metrics);
            if let Some(activity) = self.shards.get_mut(&batch.shard) {
                activity.caught_up = batch.millis_behind_latest.unwrap_or(0) == 0;
                activity.last_answer = Some(now);
                if counted {
                    activity.last_counted = now;
                }
            }
        }
        for shard in &poll.unanswered {
            if let Some(activity) = self.shards.get_mut(shard) {
                activity.caught_up = false;
            }
        }
        for code in &poll.errors {
            metrics.get_records_errors.get_or_create(&ErrorCode(code.clone())).inc();
        }
        metrics.shards_reset_to_trim_horizon.inc_by(poll.reset.len() as u64);
        // Gone past retention: nothing more will come from them, so they hold nothing back.
        for shard in &poll.vanished {
            self.shards.remove(shard);
            self.drained_awaiting_children.remove(shard);
            self.engine.watermarks_mut().remove(shard);
            metrics.forget_shard(shard);
            self.changed = true;
        }
        for shard in &poll.drained {
            self.shards.remove(shard);
            self.drained_awaiting_children.insert(shard.clone());
            metrics.forget_shard(shard);
            self.changed = true;
        }
        // Children that the drained shards' last answers named started in this poll.
        self.release_parents(&poll.started);
        metrics.shards.set(self.shards.len() as i64);
    }

    /// Takes one page; whether it counted any event.
    fn take_batch(&mut self, batch: &ShardBatch, wall_clock: EventTime, metrics: &Metrics) -> bool {
        let _shard = tracing::debug_span!("shard", shard = %batch.shard).entered();
        if let Some(behind) = batch.millis_behind_latest {
            metrics.millis_behind_latest.get_or_create(&Shard(batch.shard.clone())).set(behind);
        }
        if batch.records.is_empty() {
            return false;
        }
        tracing::debug!(records = batch.records.len(), millis_behind_latest = ?batch.millis_behind_latest, "read records");
        self.changed = true;
        metrics.records_read.inc_by(batch.records.len() as u64);
        metrics.shard_records_read.get_or_create(&Shard(batch.shard.clone())).inc_by(batch.records.len() as u64);
        metrics.kpl_user_records.inc_by(batch.events.packed_records() as u64);
        self.engine.start_page(wall_clock);
        let mut not_on_time = self.engine.add_page(&batch.shard, &batch.events).into_iter().peekable();
        let mut counted = false;
        for (index, record) in batch.events.user_records(&batch.records).enumerate() {
            let reason = match record.event {
                Ok(_) => match not_on_time.next_if(|(at, _)| *at == index).map_or(Admission::OnTime, |(_, admission)| admission) {
                    Admission::OnTime => {
                        counted = true;
                        continue;
                    }
                    Admission::Late => {
                        metrics.events_late.get_or_create(&Late(LateOutcome::Reemitted)).inc();
                        counted = true;
                        continue;
                    }
                    Admission::TooLate => {
                        metrics.events_late.get_or_create(&Late(LateOutcome::DeadLettered)).inc();
                        "too_late".to_owned()
                    }
                    refused @ (Admission::AheadOfClock | Admission::SumOverflow) => {
                        let reason = if refused == Admission::AheadOfClock { "future_timestamp" } else { "sum_overflow" };
                        metrics.records_invalid.get_or_create(&NotCounted(reason.to_owned())).inc();
                        reason.to_owned()
                    }
                },
                Err(reason) => {
                    let reason = reason.label();
                    metrics.records_invalid.get_or_create(&NotCounted(reason.clone())).inc();
                    reason
                }
            };
            tracing::debug!(
                sequence_number = record.sequence_number, sub_sequence_number = ?record.sub_sequence_number, %reason,
                "record kept as a dead letter"
            );
            self.dead_letters.push(dead_letter(reason, &batch.shard, &record));
            metrics.shard_dead_letters.get_or_create(&Shard(batch.shard.clone())).inc();
        }
        counted
    }

    /// Shards caught up and quiet for the idle timeout stop holding the watermark; when every
    /// shard is, every open window fires (as at end of input); then whatever the watermark has
    /// passed fires.
    pub fn fire_due_windows(&mut self, now: Instant, wall_clock: EventTime, metrics: &Metrics) {
        // No shard being read (between a reshard's parent and its children) is not "all idle".
        let mut all_idle = !self.shards.is_empty() && self.drained_awaiting_children.is_empty();
        let mut idle_shards = 0;
        for (shard, activity) in &self.shards {
            let idle = activity.idle(now, self.idle_timeout);
            if idle {
                self.engine.watermarks_mut().mark_idle(shard);
                idle_shards += 1;
            } else {
                self.engine.watermarks_mut().mark_active(shard);
                all_idle = false;
            }
            let label = Shard(shard.clone());
            metrics.shard_idle.get_or_create(&label).set(i64::from(idle));
            if let Some(clock) = self.engine.watermarks_mut().clock(shard) {
                metrics.shard_event_time_lag_seconds.get_or_create(&label).set((wall_clock.0 - clock) as f64 / 1000.0);
            }
        }
        metrics.idle_shards.set(idle_shards);
        let before = self.output.len();
        // Late events for fired windows count too: with every shard idle the watermark may be
        // unknown, and only firing re-emits them.
        if all_idle && self.engine.has_unemitted() {
            tracing::debug!(
                open_windows = self.engine.open_windows(),
                "every shard caught up and quiet for the idle timeout: firing every open window and every changed fired one"
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

fn dead_letter(reason: String, shard: &str, record: &UserRecord<'_>) -> DeadLetter {
    DeadLetter::new(reason, shard, record.sequence_number, record.partition_key, record.data).packed_at(record.sub_sequence_number)
}

#[cfg(test)]
mod tests {
    use metrics_pipeline_model::aggregation::WindowConfig;

    use super::*;
    use crate::kinesis::decode::DecodedPage;
    use crate::kinesis::get_records::{InputRecord, Records};

    const NOON: i64 = 1_631_188_800_000;

    fn engine_config() -> WindowConfig {
        WindowConfig {
            window: Duration::from_secs(60),
            out_of_orderness: Duration::from_secs(1),
            allowed_lateness: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
            max_future_skew: Duration::from_secs(300),
        }
    }

    fn intake() -> Intake {
        let config = engine_config();
        Intake::new(WindowEngine::new(&config), config.idle_timeout)
    }

    fn page(shard: &str, times: &[i64], millis_behind_latest: i64) -> ShardBatch {
        let data =
            times.iter().map(|at| format!(r#"{{"componentName":"c","metricName":"m","unit":"u","value":1,"timestamp":{}}}"#, NOON + at));
        page_of(shard, data.collect(), millis_behind_latest)
    }

    fn page_of(shard: &str, data: Vec<String>, millis_behind_latest: i64) -> ShardBatch {
        let mut records = Records::default();
        for (i, data) in data.iter().enumerate() {
            records.push(InputRecord { sequence_number: &i.to_string(), partition_key: "k", data: data.as_bytes(), arrival: None });
        }
        let events = DecodedPage::of(&records);
        ShardBatch { shard: shard.into(), records, events, millis_behind_latest: Some(millis_behind_latest) }
    }

    fn poll(batches: Vec<ShardBatch>) -> Poll {
        Poll { batches, ..Poll::default() }
    }

    fn shard(id: &str, parents: &[&str]) -> ShardInfo {
        ShardInfo { id: id.into(), parents: parents.iter().map(|parent| parent.to_string()).collect() }
    }

    fn counts(output: &[MetricAggregate]) -> Vec<(i64, u64, u32)> {
        output.iter().map(|aggregate| (aggregate.window_start.0 - NOON, aggregate.count, aggregate.revision)).collect()
    }

    #[test]
    fn a_reshard_fires_nothing_early_the_parents_clock_stays_until_its_children_are_read() {
        let (mut intake, metrics, mut now, wall_clock) = (intake(), Metrics::default(), Instant::now(), EventTime(NOON + 3_600_000));
        intake.start_shards(&[shard("parent", &[])], now);
        intake.take_poll(&poll(vec![page("parent", &[10_000, 20_000], 0)]), now, wall_clock, &metrics);
        // The parent's last page; its children are not listed yet (ListShards comes later).
        let mut last = poll(vec![page("parent", &[30_000], 0)]);
        last.drained.push("parent".into());
        intake.take_poll(&last, now, wall_clock, &metrics);
        for _ in 0..40 {
            now += Duration::from_secs(1);
            intake.take_poll(&Poll::default(), now, wall_clock, &metrics);
            intake.fire_due_windows(now, wall_clock, &metrics);
        }
        assert_eq!(counts(&intake.output), [], "no shard is read for a moment: that is not every shard idle");
        assert_eq!(intake.engine.watermark(), Some(NOON + 29_000), "the drained parent's clock is a floor");
        let mut children = poll(vec![page("left", &[40_000], 0), page("right", &[50_000, 70_000], 0)]);
        children.started = vec![shard("left", &["parent"]), shard("right", &["parent"])];
        intake.take_poll(&children, now, wall_clock, &metrics);
        intake.fire_due_windows(now, wall_clock, &metrics);
        assert!(!intake.engine.watermarks_mut().snapshot().contains_key("parent"), "the parent leaves once its children are read");
        assert!(!metrics.encode().contains(r#"shard="parent""#), "and its series are dropped:\n{}", metrics.encode());
        assert_eq!(counts(&intake.output), [], "the left child holds the noon window open");
        intake.take_poll(&poll(vec![page("left", &[65_000], 0)]), now, wall_clock, &metrics);
        intake.fire_due_windows(now, wall_clock, &metrics);
        assert_eq!(counts(&intake.output), [(0, 5, 0)], "the window's first emission is complete");
    }

    #[test]
    fn children_named_by_a_drained_shards_last_answer_take_over_in_the_same_poll() {
        let (mut intake, metrics, now, wall_clock) = (intake(), Metrics::default(), Instant::now(), EventTime(NOON + 3_600_000));
        intake.start_shards(&[shard("parent", &[])], now);
        let mut last = poll(vec![page("parent", &[30_000], 0)]);
        last.drained.push("parent".into());
        last.started = vec![shard("child", &["parent"])];
        intake.take_poll(&last, now, wall_clock, &metrics);
        intake.fire_due_windows(now, wall_clock, &metrics);
        let clocks = intake.engine.watermarks_mut().snapshot();
        assert_eq!(
            clocks.into_iter().collect::<Vec<_>>(),
            [("child".to_owned(), Some(NOON + 30_000))],
            "the child starts from its parent's clock"
        );
        assert_eq!(intake.engine.watermark(), Some(NOON + 29_000), "the watermark never goes back");
        assert_eq!(counts(&intake.output), []);
    }

    #[test]
    fn after_a_restart_a_late_event_is_reemitted_once_every_shard_is_idle_with_no_watermark_known() {
        let (mut intake, metrics, mut now, wall_clock) = (intake(), Metrics::default(), Instant::now(), EventTime(NOON + 3_600_000));
        let shards = [shard("quiet", &[]), shard("busy", &[])];
        let mut idle_for = |intake: &mut Intake, batches: Vec<ShardBatch>| {
            intake.start_shards(&shards, now);
            intake.take_poll(&poll(batches), now, wall_clock, &metrics);
            for _ in 0..31 {
                now += Duration::from_secs(1);
                intake.take_poll(&poll(vec![page("quiet", &[], 0), page("busy", &[], 0)]), now, wall_clock, &metrics);
                intake.fire_due_windows(now, wall_clock, &metrics);
            }
        };
        // Both shards go idle in the same poll: the quiet one never showed where its time is.
        idle_for(&mut intake, vec![page("busy", &[0], 0)]);
        assert_eq!((counts(&intake.output), intake.engine.watermark()), (vec![(0, 1, 0)], None));
        let config = engine_config();
        let mut restarted = Intake::new(WindowEngine::restore(&config, intake.engine.snapshot(), &mut Vec::new()), config.idle_timeout);
        idle_for(&mut restarted, vec![page("busy", &[1_000], 0)]);
        assert_eq!(counts(&restarted.output), [(0, 2, 1)], "the late event is re-emitted");
    }

    #[test]
    fn a_shard_gone_from_the_stream_no_longer_holds_the_watermark() {
        let (mut intake, metrics, now, wall_clock) = (intake(), Metrics::default(), Instant::now(), EventTime(NOON + 3_600_000));
        intake.start_shards(&[shard("live", &[]), shard("expired", &[])], now);
        intake.take_poll(&poll(vec![page("live", &[10_000, 70_000], 0)]), now, wall_clock, &metrics);
        // The expired shard fails every call (its data is past retention) and never shows a time.
        let failing = Poll { unanswered: vec!["expired".into()], errors: vec!["ResourceNotFoundException".into()], ..Poll::default() };
        intake.take_poll(&failing, now, wall_clock, &metrics);
        intake.fire_due_windows(now, wall_clock, &metrics);
        assert_eq!(counts(&intake.output), [], "a failing shard is never idle");
        intake.take_poll(&Poll { vanished: vec!["expired".into()], ..Poll::default() }, now, wall_clock, &metrics);
        intake.fire_due_windows(now, wall_clock, &metrics);
        assert_eq!(counts(&intake.output), [(0, 1, 0)], "once gone from the listing it holds nothing back");
        assert!(metrics.encode().contains(r#"aggregator_get_records_errors_total{code="ResourceNotFoundException"} 1"#));
    }

    #[test]
    fn a_shard_of_only_dead_letters_goes_idle_like_a_silent_one() {
        // A producer with a bug on one shard: it keeps answering records, none of them an event.
        let (mut intake, metrics, start, wall_clock) = (intake(), Metrics::default(), Instant::now(), EventTime(NOON + 3_600_000));
        intake.start_shards(&[shard("good", &[]), shard("garbage", &[])], start);
        intake.take_poll(&poll(vec![page("good", &[0, 10_000], 0)]), start, wall_clock, &metrics);
        let mut now = start;
        for _ in 0..31 {
            now += Duration::from_secs(1);
            let answers = poll(vec![page("good", &[], 0), page_of("garbage", vec!["not json".into(), "{}".into()], 0)]);
            intake.take_poll(&answers, now, wall_clock, &metrics);
            intake.fire_due_windows(now, wall_clock, &metrics);
        }
        assert_eq!(counts(&intake.output), [(0, 2, 0)], "both shards idle: the open window fires");
        assert_eq!(intake.dead_letters.len(), 62, "and every garbage record is kept");
    }

    #[test]
    fn a_lagging_throttled_or_failing_shard_is_never_idle() {
        let (mut intake, metrics, start, wall_clock) = (intake(), Metrics::default(), Instant::now(), EventTime(NOON + 3_600_000));
        intake.start_shards(&[shard("fast", &[]), shard("slow", &[])], start);
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
        intake.start_shards(&[shard("a", &[]), shard("b", &[])], start);
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
