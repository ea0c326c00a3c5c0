use std::borrow::{Borrow, Cow};
use std::collections::BTreeMap;

use metrics_pipeline_model::event::MetricEvent;
use proptest::prelude::*;

use super::*;

const SECOND: i64 = 1_000;
const MINUTE: i64 = 60 * SECOND;

fn time(text: &str) -> EventTime {
    EventTime::parse_rfc3339(text).unwrap()
}

fn event(component: &str, metric: &str, value: f64, at: EventTime) -> MetricEvent<'static> {
    MetricEvent {
        component_name: Cow::Owned(component.into()),
        metric_name: Cow::Owned(metric.into()),
        unit: Cow::Borrowed("percent"),
        value,
        timestamp: at,
    }
}

fn engine_config(window: u64, out_of_orderness: u64, allowed_lateness: u64) -> WindowConfig {
    WindowConfig {
        window: Duration::from_secs(window),
        out_of_orderness: Duration::from_secs(out_of_orderness),
        allowed_lateness: Duration::from_secs(allowed_lateness),
        idle_timeout: Duration::from_secs(out_of_orderness.max(1)),
        max_future_skew: Duration::from_secs(300),
    }
}

fn engine(window: u64, out_of_orderness: u64, allowed_lateness: u64) -> WindowEngine {
    WindowEngine::new(&engine_config(window, out_of_orderness, allowed_lateness))
}

/// An event added as the program adds it: its key encoded first.
trait AddEvent {
    fn add(&mut self, shard: &str, event: &MetricEvent<'_>) -> Admission;
}

impl AddEvent for WindowEngine {
    fn add(&mut self, shard: &str, event: &MetricEvent<'_>) -> Admission {
        let key = MetricKey::new(&event.component_name, &event.metric_name, &event.unit);
        self.add_keyed(shard, &KeyedEvent { key: key.borrow(), value: event.value, timestamp: event.timestamp, arrival: None })
    }
}

#[test]
fn windows_align_to_the_epoch_on_both_sides_of_it() {
    let assigner = WindowAssigner::new(Duration::from_secs(60));
    assert_eq!(assigner.window_start(time("2021-09-09T12:00:59.999Z")), time("2021-09-09T12:00:00Z").0);
    assert_eq!(assigner.window_start(time("2021-09-09T12:01:00Z")), time("2021-09-09T12:01:00Z").0);
    assert_eq!(assigner.window_start(EventTime(-1)), -MINUTE);
    assert_eq!(assigner.window_end(0), MINUTE);
}

#[test]
fn accumulator_tracks_extremes_and_event_time_range() {
    let mut accumulator = Accumulator::new(50.0, EventTime(2_000));
    assert!(accumulator.add(43.0, EventTime(1_000)));
    assert!(accumulator.add(57.0, EventTime(3_000)));
    assert_eq!((accumulator.min_value, accumulator.max_value, accumulator.sum, accumulator.count), (43.0, 57.0, 150.0, 3));
    assert_eq!((accumulator.first_time, accumulator.last_time), (EventTime(1_000), EventTime(3_000)));
}

#[test]
fn watermark_is_the_slowest_active_shard_minus_out_of_orderness() {
    let mut watermarks = Watermarks::new(Duration::from_secs(10));
    assert_eq!(watermarks.current(), None);
    watermarks.register("shard-1");
    watermarks.observe("shard-0", EventTime(100 * SECOND));
    assert_eq!(watermarks.current(), None, "shard-1 has not been read yet");
    watermarks.observe("shard-0", EventTime(100 * SECOND));
    watermarks.observe("shard-1", EventTime(40 * SECOND));
    watermarks.observe("shard-1", EventTime(30 * SECOND));
    assert_eq!(watermarks.current(), Some(30 * SECOND), "shard-1's max is 40s; 40s - 10s");
    watermarks.mark_idle("shard-1");
    assert_eq!(watermarks.current(), Some(90 * SECOND), "an idle shard does not hold the watermark back");
    watermarks.observe("shard-1", EventTime(50 * SECOND));
    assert_eq!(watermarks.current(), Some(40 * SECOND), "data wakes an idle shard");
    watermarks.remove("shard-1");
    assert_eq!(watermarks.current(), Some(90 * SECOND));
}

#[test]
fn the_classic_check_out_of_order_events_aggregate_exactly() {
    let mut engine = engine(86_400, 3_600, 0);
    let events = [
        event("user-service", "cpu-usage", 50.0, time("2021-09-09T12:00:00Z")),
        event("order-service", "ram-usage", 13.0, time("2021-09-09T11:00:00Z")),
        event("user-service", "cpu-usage", 43.0, time("2021-09-09T11:30:00Z")),
        event("order-service", "ram-usage", 17.0, time("2021-09-09T11:45:00Z")),
        event("user-service", "cpu-usage", 57.0, time("2021-09-09T12:30:00Z")),
    ];
    for event in &events {
        assert_eq!(engine.add("shard-0", event), Admission::OnTime);
    }
    let mut out = Vec::new();
    engine.advance(&mut out);
    assert!(out.is_empty(), "the day window is still open");
    engine.fire_all(&mut out);
    out.sort_by(|a, b| a.component_name.cmp(&b.component_name));
    let rows: Vec<_> = out
        .iter()
        .map(|a| {
            (a.component_name.as_str(), a.min_value, a.max_value, a.avg_value, a.from_timestamp.to_string(), a.to_timestamp.to_string())
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("order-service", 13.0, 17.0, 15.0, "2021-09-09T11:00:00.000Z".into(), "2021-09-09T11:45:00.000Z".into()),
            ("user-service", 43.0, 57.0, 50.0, "2021-09-09T11:30:00.000Z".into(), "2021-09-09T12:30:00.000Z".into()),
        ]
    );
    assert_eq!(out[1].window_start.to_string(), "2021-09-09T00:00:00.000Z");
    assert_eq!(out[1].window_end.to_string(), "2021-09-10T00:00:00.000Z");
    assert_eq!((out[1].count, out[1].sum, out[1].revision), (3, 150.0, 0));
}

#[test]
fn a_window_fires_once_the_watermark_passes_its_end() {
    let mut engine = engine(60, 10, 0);
    let noon = time("2021-09-09T12:00:00Z").0;
    let mut out = Vec::new();
    engine.add("s", &event("a", "cpu", 1.0, EventTime(noon + 5 * SECOND)));
    engine.add("s", &event("a", "cpu", 2.0, EventTime(noon + MINUTE + 9 * SECOND)));
    engine.advance(&mut out);
    assert!(out.is_empty(), "watermark 12:00:59 has not passed 12:01");
    assert_eq!(engine.open_windows(), 2);
    engine.add("s", &event("a", "cpu", 3.0, EventTime(noon + MINUTE + 10 * SECOND)));
    engine.advance(&mut out);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].window_start, out[0].count, out[0].max_value), (EventTime(noon), 1, 1.0));
    assert_eq!(engine.open_windows(), 1);
}

#[test]
fn late_events_within_allowed_lateness_re_emit_the_window_with_the_same_id() {
    let mut engine = engine(60, 0, 120);
    let noon = time("2021-09-09T12:00:00Z").0;
    let mut out = Vec::new();
    engine.add("s", &event("a", "cpu", 10.0, EventTime(noon + SECOND)));
    engine.add("s", &event("a", "cpu", 20.0, EventTime(noon + MINUTE)));
    engine.advance(&mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(engine.add("s", &event("a", "cpu", 4.0, EventTime(noon + 30 * SECOND))), Admission::Late);
    assert_eq!(engine.add("s", &event("a", "cpu", 6.0, EventTime(noon + 31 * SECOND))), Admission::Late);
    engine.advance(&mut out);
    assert_eq!(out.len(), 2, "two late events re-emit the window once");
    assert_eq!((out[1].revision, out[1].count, out[1].min_value), (1, 3, 4.0));
    assert_eq!(out[1].window_id, out[0].window_id);
}

#[test]
fn events_later_than_the_allowed_lateness_are_refused_and_not_counted() {
    let mut engine = engine(60, 0, 60);
    let noon = time("2021-09-09T12:00:00Z").0;
    let mut out = Vec::new();
    engine.add("s", &event("a", "cpu", 10.0, EventTime(noon)));
    engine.add("s", &event("a", "cpu", 10.0, EventTime(noon + 3 * MINUTE)));
    engine.advance(&mut out);
    assert_eq!(engine.add("s", &event("a", "cpu", 99.0, EventTime(noon + 30 * SECOND))), Admission::TooLate);
    // A key never seen in that window is just as late.
    assert_eq!(engine.add("s", &event("b", "cpu", 99.0, EventTime(noon + 30 * SECOND))), Admission::TooLate);
    engine.fire_all(&mut out);
    assert!(out.iter().all(|a| a.max_value < 99.0), "{out:?}");
}

#[test]
fn a_slow_shard_holds_windows_open_until_it_catches_up_or_goes_idle() {
    let mut engine = engine(60, 0, 0);
    let noon = time("2021-09-09T12:00:00Z").0;
    let mut out = Vec::new();
    engine.watermarks_mut().register("fast");
    engine.watermarks_mut().register("slow");
    engine.add("fast", &event("a", "cpu", 1.0, EventTime(noon + 5 * MINUTE)));
    engine.advance(&mut out);
    assert!(out.is_empty(), "the slow shard has shown no event time yet");
    engine.add("slow", &event("a", "cpu", 2.0, EventTime(noon)));
    engine.advance(&mut out);
    assert!(out.is_empty());
    engine.watermarks_mut().mark_idle("slow");
    engine.advance(&mut out);
    assert_eq!(out.len(), 1, "the slow shard's window fires once that shard is idle");
    assert_eq!(out[0].window_start, EventTime(noon));
}

#[test]
fn fire_all_emits_every_open_window_and_keeps_them_for_late_events() {
    let mut engine = engine(60, 10, 60);
    let mut out = Vec::new();
    engine.add("s", &event("a", "cpu", 1.0, EventTime(0)));
    engine.add("s", &event("b", "ram", 2.0, EventTime(MINUTE)));
    engine.fire_all(&mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(engine.open_windows(), 0);
    assert_eq!(engine.add("s", &event("a", "cpu", 5.0, EventTime(SECOND))), Admission::Late);
    engine.fire_all(&mut out);
    assert_eq!((out[2].revision, out[2].count), (1, 2));
}

/// (min, max, count, sum, first event time, last event time) of one key and window.
type Summary = (i64, i64, u64, i64, i64, i64);

/// The batch answer: every event grouped by key and window, regardless of arrival order.
#[test]
fn a_restored_engine_continues_exactly_where_the_snapshot_was_taken() {
    let noon = time("2021-09-09T12:00:00Z").0;
    let events: Vec<(&str, MetricEvent<'static>)> = (0..40)
        .map(|i| {
            let shard = if i % 2 == 0 { "s0" } else { "s1" };
            (shard, event(if i % 3 == 0 { "a" } else { "b" }, "cpu", i as f64, EventTime(noon + (i * 7 % 50) * 5 * SECOND)))
        })
        .collect();
    let run = |split: Option<usize>| {
        let mut engine = engine(60, 30, 120);
        let mut out = Vec::new();
        for (index, (shard, event)) in events.iter().enumerate() {
            if split == Some(index) {
                let snapshot: EngineSnapshot = serde_json::from_slice(&serde_json::to_vec(&engine.snapshot()).unwrap()).unwrap();
                engine = WindowEngine::restore(&engine_config(60, 30, 120), snapshot, &mut out);
            }
            engine.add(shard, event);
            engine.advance(&mut out);
        }
        engine.fire_all(&mut out);
        // Keys fire in hash-map order within one firing; that order carries no meaning.
        out.sort_by(|a, b| (&a.window_id, a.revision).cmp(&(&b.window_id, b.revision)));
        out
    };
    let uninterrupted = run(None);
    assert!(uninterrupted.iter().any(|aggregate| aggregate.revision > 0), "the run includes late re-emissions");
    for split in [1, 13, 27, 39] {
        assert_eq!(run(Some(split)), uninterrupted, "snapshot and restore before event {split}");
    }
}

#[test]
fn a_changed_window_length_fires_the_saved_windows_as_they_were() {
    let noon = time("2021-09-09T12:00:00Z").0;
    let mut before = engine(60, 10, 0);
    before.add("s", &event("a", "cpu", 1.0, EventTime(noon + 5 * SECOND)));
    before.add("s", &event("a", "cpu", 3.0, EventTime(noon + 20 * SECOND)));
    let mut out = Vec::new();
    let mut after = WindowEngine::restore(&engine_config(300, 10, 0), before.snapshot(), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].window_start, out[0].window_end, out[0].count), (EventTime(noon), EventTime(noon + MINUTE), 2));
    assert_eq!(after.open_windows(), 0);
    assert_eq!(after.watermark(), Some(noon + 10 * SECOND), "the shard clocks carry over");
    after.add("s", &event("a", "cpu", 5.0, EventTime(noon + 30 * SECOND)));
    after.fire_all(&mut out);
    assert_eq!((out[1].window_start, out[1].window_end), (EventTime(noon), EventTime(noon + 5 * MINUTE)));
}

fn batch(events: &[(usize, i64, i64)], window_ms: i64) -> BTreeMap<(String, i64), Summary> {
    let mut result = BTreeMap::new();
    for &(component, at, value) in events {
        let start = at.div_euclid(window_ms) * window_ms;
        let entry = result.entry((format!("c{component}"), start)).or_insert((i64::MAX, i64::MIN, 0, 0, i64::MAX, i64::MIN));
        entry.0 = entry.0.min(value);
        entry.1 = entry.1.max(value);
        entry.2 += 1;
        entry.3 += value;
        entry.4 = entry.4.min(at);
        entry.5 = entry.5.max(at);
    }
    result
}

proptest! {
    /// Any arrival order within outOfOrderness gives exactly the batch aggregates.
    #[test]
    fn arrival_order_within_out_of_orderness_does_not_change_the_result(
        events in prop::collection::vec((0usize..4, 0i64..600_000, -1000i64..1000, 0i64..=10_000), 1..300),
        shards in 1usize..4,
    ) {
        // Arrival = event time + a delay of at most outOfOrderness (10 s).
        let mut arrivals: Vec<_> = events.iter().enumerate().map(|(i, &(c, at, v, delay))| (at + delay, i, c, at, v)).collect();
        arrivals.sort();
        let mut engine = engine(60, 10, 0);
        let mut out = Vec::new();
        for &(_, index, component, at, value) in &arrivals {
            let shard = format!("shard-{}", index % shards);
            let admission = engine.add(&shard, &event(&format!("c{component}"), "m", value as f64, EventTime(at)));
            prop_assert_eq!(admission, Admission::OnTime);
            engine.advance(&mut out);
        }
        engine.fire_all(&mut out);

        let mut latest: BTreeMap<String, MetricAggregate> = BTreeMap::new();
        for aggregate in out {
            let keep = latest.get(&aggregate.window_id).is_none_or(|seen| seen.revision < aggregate.revision);
            if keep {
                latest.insert(aggregate.window_id.clone(), aggregate);
            }
        }
        let streamed: BTreeMap<_, _> = latest
            .into_values()
            .map(|a| ((a.component_name, a.window_start.0), (a.min_value as i64, a.max_value as i64, a.count, a.sum as i64, a.from_timestamp.0, a.to_timestamp.0)))
            .collect();
        let plain: Vec<_> = events.iter().map(|&(c, at, v, _)| (c, at, v)).collect();
        prop_assert_eq!(streamed, batch(&plain, MINUTE));
    }
}

#[test]
fn keys_keep_their_parts_apart_whatever_they_contain() {
    let key = MetricKey::new("a\0b", "", "µs");
    assert_eq!(key.parts(), ("a\0b", "", "µs"));
    assert_ne!(MetricKey::new("ab", "c", "u"), MetricKey::new("a", "bc", "u"));
    let json = serde_json::to_value(&key).unwrap();
    assert_eq!(json, serde_json::json!({"componentName": "a\0b", "metricName": "", "unit": "µs"}));
    assert_eq!(serde_json::from_value::<MetricKey>(json).unwrap(), key);
}

// Hostile producers, quiet shards and restarts (issue 13).

#[test]
fn a_burst_is_judged_against_the_watermark_of_the_page_before_it() {
    // 12:00 arrives before 11:30 in one page: Flink judges them together, so neither is late.
    let mut engine = engine(60, 10, 60);
    assert_eq!(engine.add("s", &event("a", "cpu", 50.0, time("2021-09-09T12:00:00Z"))), Admission::OnTime);
    assert_eq!(engine.add("s", &event("a", "cpu", 43.0, time("2021-09-09T11:30:00Z"))), Admission::OnTime);
    let mut out = Vec::new();
    engine.fire_all(&mut out);
    assert_eq!(out.len(), 2, "{out:?}");
    // The next page is judged against the watermark the first one left: 11:59:50.
    engine.start_page(time("2026-11-28T12:00:00Z"));
    assert_eq!(engine.add("s", &event("a", "cpu", 40.0, time("2021-09-09T11:31:00Z"))), Admission::TooLate);
    assert_eq!(engine.add("s", &event("a", "cpu", 40.0, time("2021-09-09T12:00:05Z"))), Admission::Late, "re-emits 12:00");
}

#[test]
fn an_overflowing_sum_is_refused_and_every_number_stays_finite() {
    let mut engine = engine(60, 0, 60);
    let noon = time("2021-09-09T12:00:00Z").0;
    assert_eq!(engine.add("s", &event("a", "cpu", 1e308, EventTime(noon))), Admission::OnTime);
    assert_eq!(engine.add("s", &event("a", "cpu", 1e308, EventTime(noon + SECOND))), Admission::SumOverflow);
    assert_eq!(engine.add("s", &event("a", "cpu", -5.0, EventTime(noon + 2 * SECOND))), Admission::OnTime);
    let snapshot: EngineSnapshot =
        serde_json::from_slice(&serde_json::to_vec(&engine.snapshot()).unwrap()).expect("the checkpoint reads back");
    assert_eq!(snapshot, engine.snapshot());
    let mut out = Vec::new();
    engine.fire_all(&mut out);
    assert_eq!((out[0].count, out[0].sum, out[0].min_value, out[0].max_value), (2, 1e308 - 5.0, -5.0, 1e308));
    assert!(out[0].avg_value.is_finite());
    assert_eq!(engine.add("s", &event("a", "cpu", 1e308, EventTime(noon + 3 * SECOND))), Admission::SumOverflow, "fired windows too");
}

#[test]
fn a_clock_far_ahead_is_refused_and_one_within_the_skew_cannot_run_the_watermark_ahead_of_the_wall_clock() {
    let now = time("2026-11-28T12:00:00Z");
    let mut engine = engine(60, 10, 60);
    engine.start_page(now);
    let year_9999 = event("a", "cpu", 1.0, time("9999-12-31T23:59:59Z"));
    assert_eq!(engine.add("s", &year_9999), Admission::AheadOfClock);
    assert_eq!(engine.add("s", &event("a", "cpu", 2.0, EventTime(now.0 + 5 * MINUTE + 1))), Admission::AheadOfClock, "beyond 5m");
    assert_eq!(engine.add("s", &event("a", "cpu", 3.0, EventTime(now.0 + 4 * MINUTE))), Admission::OnTime, "within the skew");
    assert_eq!(engine.watermark(), Some(now.0 - 10 * SECOND), "the shard's clock stops at the wall clock");
    let mut out = Vec::new();
    engine.advance(&mut out);
    engine.start_page(EventTime(now.0 + SECOND));
    assert_eq!(engine.add("s", &event("a", "cpu", 4.0, EventTime(now.0 - 5 * SECOND))), Admission::OnTime, "now is not late");
    engine.fire_all(&mut out);
    assert_eq!(out.iter().map(|a| a.count).sum::<u64>(), 2, "{out:?}");
}

#[test]
fn while_a_backlog_is_read_time_is_judged_against_each_records_arrival() {
    // An hour of backlog read at once (a first start, a restart after downtime): one producer
    // clock 3 minutes fast must neither be judged against the wall clock nor move its shard past
    // the arrival, or every record after it would be too late.
    let arrived = time("2026-11-28T11:00:00Z");
    let now = EventTime(arrived.0 + 60 * MINUTE);
    let mut engine = engine(60, 10, 60);
    let key = MetricKey::new("a", "cpu", "percent");
    let add = |engine: &mut WindowEngine, at: i64, arrival: i64| {
        let event = KeyedEvent { key: key.borrow(), value: 1.0, timestamp: EventTime(at), arrival: Some(EventTime(arrival)) };
        engine.add_keyed("s", &event)
    };
    engine.start_page(now);
    assert_eq!(add(&mut engine, arrived.0 + 3 * MINUTE, arrived.0), Admission::OnTime, "within the skew of its arrival");
    assert_eq!(add(&mut engine, arrived.0 + 6 * MINUTE, arrived.0), Admission::AheadOfClock, "beyond the skew of its arrival");
    assert_eq!(engine.watermark(), Some(arrived.0 - 10 * SECOND), "the shard's clock stops at the record's arrival");
    let mut out = Vec::new();
    engine.advance(&mut out);
    engine.start_page(now);
    assert_eq!(add(&mut engine, arrived.0 - 5 * SECOND, arrived.0 + SECOND), Admission::OnTime, "the next records are not late");
    engine.fire_all(&mut out);
    assert_eq!(out.iter().map(|a| a.count).sum::<u64>(), 2, "{out:?}");
}

#[test]
fn a_purged_window_is_never_reopened_when_shards_go_idle_or_appear() {
    let noon = time("2021-09-09T12:00:00Z").0;
    let mut engine = engine(60, 0, 0);
    let mut out = Vec::new();
    engine.watermarks_mut().register("s0");
    engine.add("s0", &event("a", "cpu", 1.0, EventTime(noon + 5 * SECOND)));
    engine.add("s0", &event("a", "cpu", 2.0, EventTime(noon + 5 * MINUTE)));
    engine.advance(&mut out);
    assert_eq!(out.len(), 1, "the noon window fired and, with no allowed lateness, was forgotten");
    engine.watermarks_mut().mark_idle("s0");
    assert_eq!(engine.add("s0", &event("a", "cpu", 9.0, EventTime(noon + 10 * SECOND))), Admission::TooLate, "all shards idle");
    engine.watermarks_mut().register("s1");
    assert_eq!(engine.add("s0", &event("a", "cpu", 9.0, EventTime(noon + 20 * SECOND))), Admission::TooLate, "a new shard");
    let mut restored = WindowEngine::restore(&engine_config(60, 0, 0), engine.snapshot(), &mut out);
    restored.watermarks_mut().register("s2");
    assert_eq!(restored.add("s0", &event("a", "cpu", 9.0, EventTime(noon + 30 * SECOND))), Admission::TooLate, "after a restart");
    restored.fire_all(&mut out);
    assert_eq!(out.len(), 2, "only the 12:05 window fires besides the first: {out:?}");
}

#[test]
fn window_ids_differ_by_window_length_and_by_names_holding_nul() {
    let noon = time("2021-09-09T12:00:00Z");
    let fired = |window: u64, component: &str, metric: &str| {
        let mut engine = engine(window, 0, 0);
        engine.add("s", &event(component, metric, 1.0, noon));
        let mut out = Vec::new();
        engine.fire_all(&mut out);
        out.remove(0).window_id
    };
    assert_ne!(fired(60, "a", "cpu"), fired(300, "a", "cpu"), "1m and 5m windows starting at noon");
    assert_ne!(fired(60, "a\0b", "c"), fired(60, "a", "b\0c"), "the parts of a key stay apart");
}

/// One step of a random engine history.
#[derive(Clone, Debug)]
enum Step {
    Add { shard: usize, key: usize, at: i64, value: f64 },
    Advance,
    FireAll,
    Idle(usize),
}

/// Steps of a history; `idle` adds marking shards idle, which the checkpoint does not keep (after a
/// restart a shard holds the watermark until it is found idle again), so only the steps after a
/// restore use it.
fn step(idle: u32) -> impl Strategy<Value = Step> {
    let value = prop_oneof![-1e3..1e3f64, Just(1.7e308), Just(-1.7e308), Just(f64::MAX), Just(f64::MIN_POSITIVE)];
    prop_oneof![
        12 => (0usize..3, 0usize..4, -600_000i64..3_600_000, value).prop_map(|(shard, key, at, value)| Step::Add { shard, key, at, value }),
        2 => Just(Step::Advance),
        1 => Just(Step::FireAll),
        idle => (0usize..3).prop_map(Step::Idle),
    ]
}

/// Key names a producer might send, control characters and separators included.
const KEY_NAMES: [(&str, &str, &str); 4] = [("a", "cpu", "%"), ("a\0b", "c", "u"), ("a", "b\0c", "u"), ("line\nfeed", "\u{1}", "µs")];

proptest! {
    /// Whatever happened before, the checkpoint holds the engine's state exactly, and an engine
    /// restored from it goes on as the original does.
    #[test]
    fn every_engine_state_round_trips_through_its_checkpoint(steps in prop::collection::vec(step(0), 1..200), tail in prop::collection::vec(step(2), 0..40)) {
        let config = engine_config(60, 10, 120);
        let base = time("2021-09-09T12:00:00Z").0;
        let apply = |engine: &mut WindowEngine, step: &Step, out: &mut Vec<MetricAggregate>| match *step {
            Step::Add { shard, key, at, value } => {
                let (component, metric, unit) = KEY_NAMES[key];
                let event = MetricEvent { component_name: component.into(), metric_name: metric.into(), unit: unit.into(), value, timestamp: EventTime(base + at) };
                engine.add(&format!("shard-{shard}"), &event);
            }
            Step::Advance => engine.advance(out),
            Step::FireAll => engine.fire_all(out),
            Step::Idle(shard) => engine.watermarks_mut().mark_idle(&format!("shard-{shard}")),
        };
        let mut original = WindowEngine::new(&config);
        let mut out = Vec::new();
        for step in &steps {
            apply(&mut original, step, &mut out);
        }
        let stored = serde_json::to_vec(&original.snapshot()).unwrap();
        let read: EngineSnapshot = serde_json::from_slice(&stored).map_err(|e| TestCaseError::fail(format!("unreadable checkpoint: {e}")))?;
        prop_assert_eq!(&read, &original.snapshot());
        let mut restored = WindowEngine::restore(&config, read, &mut out);
        prop_assert_eq!(restored.snapshot(), original.snapshot());
        let (mut continued, mut resumed) = (Vec::new(), Vec::new());
        for step in &tail {
            apply(&mut original, step, &mut continued);
            apply(&mut restored, step, &mut resumed);
        }
        original.fire_all(&mut continued);
        restored.fire_all(&mut resumed);
        let sorted = |mut aggregates: Vec<MetricAggregate>| {
            aggregates.sort_by(|a, b| (&a.window_id, a.revision).cmp(&(&b.window_id, b.revision)));
            aggregates
        };
        prop_assert_eq!(sorted(continued), sorted(resumed));
        for aggregate in &out {
            prop_assert!([aggregate.min_value, aggregate.max_value, aggregate.avg_value, aggregate.sum].iter().all(|n| n.is_finite()), "{:?}", aggregate);
        }
    }
}

/// A page of events as a test builds it.
struct Page(Vec<(MetricKey, f64, EventTime)>);

impl KeyedPage for Page {
    fn records(&self) -> usize {
        self.0.len()
    }

    fn hashed_events(&self) -> impl Iterator<Item = (usize, u64, KeyedEvent<'_>)> {
        (self.0.iter().enumerate()).map(|(index, (key, value, timestamp))| {
            (index, key_hash(key.borrow()), KeyedEvent { key: key.borrow(), value: *value, timestamp: *timestamp, arrival: None })
        })
    }
}

proptest! {
    /// Aggregating a page on several threads, each over its share of the keys, admits every event
    /// as adding them one by one does, fires the same aggregates and leaves the same checkpoint,
    /// from which any number of partitions goes on alike.
    #[test]
    fn key_partitions_aggregate_as_one_engine_does(
        steps in prop::collection::vec(step(1), 1..300),
        partitions in 2usize..5,
        restart in 0usize..100,
        restored_partitions in 1usize..5,
    ) {
        let config = engine_config(60, 10, 120);
        let base = time("2021-09-09T12:00:00Z").0;
        let wall_clock = EventTime(base + 3_000_000);
        let mut one = WindowEngine::new(&config);
        let mut partitioned = WindowEngine::new(&config).with_key_partitions(partitions);
        partitioned.events_per_thread = 1;
        let (mut one_out, mut partitioned_out) = (Vec::new(), Vec::new());
        let mut steps = steps.iter().peekable();
        let mut round = 0;
        while let Some(step) = steps.next() {
            if round == restart {
                one = WindowEngine::restore(&config, one.snapshot(), &mut one_out);
                partitioned = WindowEngine::restore(&config, partitioned.snapshot(), &mut partitioned_out).with_key_partitions(restored_partitions);
                partitioned.events_per_thread = 1;
            }
            round += 1;
            match *step {
                Step::Add { shard, .. } => {
                    let mut page = Vec::new();
                    let mut next = Some(step);
                    while let Some(&Step::Add { key, at, value, .. }) = next {
                        let (component, metric, unit) = KEY_NAMES[key];
                        // 20 keys, so that every partition gets some.
                        let component = format!("{component}{}", at.rem_euclid(5));
                        page.push((MetricKey::new(&component, metric, unit), value, EventTime(base + at)));
                        next = steps.next_if(|next| matches!(next, Step::Add { shard: same, .. } if *same == shard));
                    }
                    let shard = format!("shard-{shard}");
                    one.start_page(wall_clock);
                    let expected: Vec<(usize, Admission)> = (page.iter().enumerate())
                        .map(|(index, (key, value, timestamp))| (index, one.add_keyed(&shard, &KeyedEvent { key: key.borrow(), value: *value, timestamp: *timestamp, arrival: None })))
                        .filter(|(_, admission)| *admission != Admission::OnTime)
                        .collect();
                    partitioned.start_page(wall_clock);
                    prop_assert_eq!(partitioned.add_page(&shard, &Page(page)), expected);
                }
                Step::Advance => {
                    one.advance(&mut one_out);
                    partitioned.advance(&mut partitioned_out);
                }
                Step::FireAll => {
                    one.fire_all(&mut one_out);
                    partitioned.fire_all(&mut partitioned_out);
                }
                Step::Idle(shard) => {
                    one.watermarks_mut().mark_idle(&format!("shard-{shard}"));
                    partitioned.watermarks_mut().mark_idle(&format!("shard-{shard}"));
                }
            }
            prop_assert_eq!(partitioned.watermark(), one.watermark());
        }
        let sorted = |mut aggregates: Vec<MetricAggregate>| {
            aggregates.sort_by(|a, b| (&a.window_id, a.revision).cmp(&(&b.window_id, b.revision)));
            aggregates
        };
        prop_assert_eq!(sorted(partitioned_out), sorted(one_out));
        prop_assert_eq!(partitioned.open_windows(), one.open_windows());
        prop_assert_eq!(partitioned.snapshot(), one.snapshot());
    }
}

#[test]
fn keys_spread_evenly_over_partitions() {
    for partitions in [2, 3, 8] {
        let mut counts = vec![0usize; partitions];
        for component in 0..100 {
            for metric in 0..10 {
                let key = MetricKey::new(&format!("component-{component}"), &format!("metric-{metric}"), "percent");
                counts[partition_of(key_hash(key.borrow()), partitions)] += 1;
            }
        }
        let fair = 1000 / partitions;
        assert!(counts.iter().all(|count| count.abs_diff(fair) < fair / 5), "{partitions} partitions: {counts:?}");
    }
}
