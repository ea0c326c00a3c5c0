//! The window engine: event-time tumbling windows per (componentName, metricName, unit), with
//! per-shard watermarks, allowed lateness and end-of-input firing. Pure: no I/O, no clocks (the
//! caller hands in the wall clock of each page).
//!
//! Each piece is its own type: [`WindowAssigner`] places an event, [`Accumulator`] folds values,
//! [`Watermarks`] tracks event-time progress per shard, [`WindowEngine`] ties them together and
//! spreads the windows over key partitions that aggregate a page in parallel, the way Flink
//! shuffles by key: one watermark judges every partition, so they fire alike, and the checkpoint,
//! taken between pages, holds all of them.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::time::Duration;

use hashbrown::HashMap;
use metrics_pipeline_model::aggregation::WindowConfig;
use metrics_pipeline_model::event::{EventTime, MetricAggregate, window_id};
use serde::{Deserialize, Serialize};

/// Places event times into epoch-aligned tumbling windows.
#[derive(Clone, Copy, Debug)]
pub struct WindowAssigner {
    length_ms: i64,
}

impl WindowAssigner {
    pub fn new(length: Duration) -> Self {
        let length_ms = millis(length).max(1);
        Self { length_ms }
    }

    /// Start of the window holding `time` (floor, so negative times work too).
    pub fn window_start(&self, time: EventTime) -> i64 {
        time.0.div_euclid(self.length_ms) * self.length_ms
    }

    pub fn window_end(&self, start: i64) -> i64 {
        start + self.length_ms
    }
}

/// min / max / count / sum of values and the earliest and latest event time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Accumulator {
    #[serde(with = "exact_number")]
    pub min_value: f64,
    #[serde(with = "exact_number")]
    pub max_value: f64,
    #[serde(with = "exact_number")]
    pub sum: f64,
    pub count: u64,
    pub first_time: EventTime,
    pub last_time: EventTime,
}

impl Accumulator {
    pub fn new(value: f64, time: EventTime) -> Self {
        Self { min_value: value, max_value: value, sum: value, count: 1, first_time: time, last_time: time }
    }

    /// Adds one value, unless the sum would no longer be a finite number: then nothing changes
    /// and it returns `false`, so every stored and emitted number stays finite.
    #[must_use]
    pub fn add(&mut self, value: f64, time: EventTime) -> bool {
        let sum = self.sum + value;
        if !sum.is_finite() {
            return false;
        }
        self.sum = sum;
        self.min_value = self.min_value.min(value);
        self.max_value = self.max_value.max(value);
        self.count += 1;
        self.first_time = self.first_time.min(time);
        self.last_time = self.last_time.max(time);
        true
    }
}

/// Numbers in the checkpoint as their shortest exact text (`"917.0110808952484"`, `"1e308"`):
/// serde_json reads some plain numbers back a unit in the last place off (exact reading is its
/// `float_roundtrip` feature, which would slow down the parse of every record), and a restored
/// state must be the state that was stored. Plain numbers, as older checkpoints hold, are read too.
mod exact_number {
    use std::fmt;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{value:?}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        deserializer.deserialize_any(ExactNumber)
    }

    struct ExactNumber;

    impl Visitor<'_> for ExactNumber {
        type Value = f64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a finite number, or one as text")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<f64, E> {
            text.parse::<f64>().ok().filter(|value| value.is_finite()).ok_or_else(|| E::invalid_value(de::Unexpected::Str(text), &self))
        }

        fn visit_f64<E: de::Error>(self, value: f64) -> Result<f64, E> {
            Ok(value)
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<f64, E> {
            Ok(value as f64)
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<f64, E> {
            Ok(value as f64)
        }
    }
}

/// Event-time progress: per shard, the latest event time seen minus the out-of-orderness bound;
/// overall, the minimum over shards that are not idle, so a slow shard holds windows open and a
/// quiet one does not.
#[derive(Clone, Debug)]
pub struct Watermarks {
    out_of_orderness_ms: i64,
    /// By shard id: the loop marks every shard idle or active after each poll, which a scan of
    /// every shard per lookup would make quadratic in shards.
    shards: HashMap<Box<str>, ShardClock>,
}

#[derive(Clone, Copy, Debug)]
struct ShardClock {
    /// `None` until the shard's first event: until then it holds the watermark back entirely.
    max_event_time: Option<i64>,
    idle: bool,
}

impl ShardClock {
    const UNSEEN: Self = Self { max_event_time: None, idle: false };
}

impl Watermarks {
    pub fn new(out_of_orderness: Duration) -> Self {
        Self { out_of_orderness_ms: millis(out_of_orderness), shards: HashMap::new() }
    }

    /// A shard about to be read: no window fires before it has shown where its event time is.
    pub fn register(&mut self, shard: &str) {
        self.shards.entry_ref(shard).or_insert(ShardClock::UNSEEN);
    }

    pub fn observe(&mut self, shard: &str, time: EventTime) {
        let clock = self.shards.entry_ref(shard).or_insert(ShardClock::UNSEEN);
        clock.max_event_time = Some(clock.max_event_time.map_or(time.0, |max| max.max(time.0)));
        clock.idle = false;
    }

    /// A shard with nothing to read no longer holds the watermark back, until it sees data again.
    pub fn mark_idle(&mut self, shard: &str) {
        if let Some(clock) = self.shards.get_mut(shard) {
            clock.idle = true;
        }
    }

    /// A shard found behind, or not known to be caught up, holds the watermark again.
    pub fn mark_active(&mut self, shard: &str) {
        if let Some(clock) = self.shards.get_mut(shard) {
            clock.idle = false;
        }
    }

    /// A child shard that has seen no event yet starts from the clock of its `parents`, the
    /// slowest of them for a merge: its keys' events continue where theirs stopped.
    pub fn hand_over(&mut self, parents: &[&str], child: &str) {
        let Some(floor) = parents.iter().map(|parent| self.shards.get(*parent).and_then(|clock| clock.max_event_time)).min().flatten()
        else {
            return;
        };
        if let Some(clock) = self.shards.get_mut(child).filter(|clock| clock.max_event_time.is_none()) {
            clock.max_event_time = Some(floor);
        }
    }

    /// The latest event time counted from `shard`, if any.
    pub fn clock(&self, shard: &str) -> Option<i64> {
        self.shards.get(shard).and_then(|clock| clock.max_event_time)
    }

    /// A shard that is closed for good (resharded, fully read) is forgotten.
    pub fn remove(&mut self, shard: &str) {
        self.shards.remove(shard);
    }

    /// Every shard's clock, for the checkpoint. Idleness is not kept: after a restart a shard
    /// holds the watermark until it has shown data or gone idle again.
    pub fn snapshot(&self) -> BTreeMap<String, Option<i64>> {
        self.shards.iter().map(|(shard, clock)| (shard.to_string(), clock.max_event_time)).collect()
    }

    fn restore(&mut self, clocks: BTreeMap<String, Option<i64>>) {
        for (shard, max_event_time) in clocks {
            self.shards.insert(shard.into(), ShardClock { max_event_time, idle: false });
        }
    }

    /// `None` while an active shard has seen no event yet, or when no shard is active.
    pub fn current(&self) -> Option<i64> {
        let mut active = self.shards.values().filter(|clock| !clock.idle).peekable();
        active.peek()?;
        active.map(|clock| clock.max_event_time.map(|max| max.saturating_sub(self.out_of_orderness_ms))).min().flatten()
    }
}

/// What happened to one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Counted in a window that has not fired yet.
    OnTime,
    /// Counted in a window that already fired: it is re-emitted with the next revision.
    Late,
    /// Later than the allowed lateness: not counted; the caller keeps it in the dead-letter prefix.
    TooLate,
    /// Stamped later than its record's arrival (capped by the page's wall clock) plus the maximum
    /// future skew: not counted, kept.
    AheadOfClock,
    /// Would take its window's sum beyond what a 64-bit float holds (±1.8e308): not counted, kept.
    SumOverflow,
}

impl Admission {
    /// Counted in a window: the event moves its shard's clock.
    fn counted(self) -> bool {
        matches!(self, Self::OnTime | Self::Late)
    }
}

/// The aggregation key (componentName, metricName, unit) in one allocation: each part prefixed
/// by its length, so no two keys encode alike, and a lookup hashes and compares one byte string
/// behind one pointer instead of three.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "KeyFields", into = "KeyFields")]
pub struct MetricKey(Box<[u8]>);

impl MetricKey {
    pub fn new(component_name: &str, metric_name: &str, unit: &str) -> Self {
        let mut encoded = Vec::new();
        Self::append(&mut encoded, component_name, metric_name, unit);
        Self(encoded.into())
    }

    /// Appends the key's encoding to `buffer`, to look a key up without allocating.
    pub fn append(buffer: &mut Vec<u8>, component_name: &str, metric_name: &str, unit: &str) {
        for part in [component_name, metric_name, unit] {
            // Parts come from records of at most 64 KiB, far below u32::MAX.
            buffer.extend_from_slice(&(part.len() as u32).to_le_bytes());
            buffer.extend_from_slice(part.as_bytes());
        }
    }

    /// (componentName, metricName, unit).
    pub fn parts(&self) -> (&str, &str, &str) {
        let mut rest = &self.0[..];
        let mut next = || {
            let (length, tail) = rest.split_at(4);
            let length = u32::from_le_bytes(length.try_into().expect("four bytes")) as usize;
            let (part, tail) = tail.split_at(length);
            rest = tail;
            std::str::from_utf8(part).expect("keys are built from strings")
        };
        (next(), next(), next())
    }
}

/// A valid event as the engine takes it: its key encoded as [`MetricKey`] encodes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KeyedEvent<'a> {
    pub key: &'a [u8],
    pub value: f64,
    pub timestamp: EventTime,
    /// When Kinesis took its record (`ApproximateArrivalTimestamp`), if known.
    pub arrival: Option<EventTime>,
}

impl std::borrow::Borrow<[u8]> for MetricKey {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

/// How a key reads in the checkpoint.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyFields {
    component_name: String,
    metric_name: String,
    unit: String,
}

impl From<KeyFields> for MetricKey {
    fn from(fields: KeyFields) -> Self {
        Self::new(&fields.component_name, &fields.metric_name, &fields.unit)
    }
}

impl From<MetricKey> for KeyFields {
    fn from(key: MetricKey) -> Self {
        let (component_name, metric_name, unit) = key.parts();
        Self { component_name: component_name.into(), metric_name: metric_name.into(), unit: unit.into() }
    }
}

/// The engine's state as the checkpoint stores it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineSnapshot {
    /// The window length the state was built with.
    pub window_ms: i64,
    /// Latest event time per shard (`null`: registered, nothing seen yet).
    pub watermarks: BTreeMap<String, Option<i64>>,
    /// The watermark as far as it ever got (`null`: never known); it never goes back.
    #[serde(default)]
    pub watermark: Option<i64>,
    pub open: Vec<WindowSnapshot>,
    pub fired: Vec<WindowSnapshot>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowSnapshot {
    pub start: EventTime,
    #[serde(flatten)]
    pub key: MetricKey,
    #[serde(flatten)]
    pub accumulator: Accumulator,
    pub revision: u32,
    /// Changed by a late event and not yet re-emitted.
    pub dirty: bool,
}

#[derive(Clone, Copy, Debug)]
struct FiredWindow {
    accumulator: Accumulator,
    revision: u32,
    /// Changed by a late event since it was last emitted.
    dirty: bool,
}

/// Tumbling event-time windows for every key, fired by the watermark.
pub struct WindowEngine {
    assigner: WindowAssigner,
    allowed_lateness_ms: i64,
    max_future_skew_ms: i64,
    watermarks: Watermarks,
    /// The watermark as far as it ever got. Lateness and forgetting are judged against it, so
    /// neither idle shards, new shards nor a restart can reopen a window that was forgotten.
    settled: Option<i64>,
    /// `settled` as the previous page left it: the events of one page are judged together.
    judged_against: Option<i64>,
    /// The current page's wall clock; `None` before the first page (no bound).
    wall_clock: Option<i64>,
    /// The windows, spread over partitions by the hash of their key ([`key_hash`]) so that the
    /// events of a page are aggregated on several cores at once; one partition by default.
    partitions: Vec<KeyPartition>,
    /// A page is aggregated on at most one thread per this many of its records and per partition
    /// (fewer when the partitions do not share out evenly): starting a thread costs more than a
    /// small page's work.
    events_per_thread: usize,
}

/// Starting a thread costs about as much as aggregating a few hundred events.
const EVENTS_PER_THREAD: usize = 1_000;

/// The hash that places a key in its partition: fixed, so the reading threads
/// ([`crate::kinesis::decode::DecodedPage`]) and the engine agree on it.
pub fn key_hash(key: &[u8]) -> u64 {
    foldhash::fast::FixedState::default().hash_one(key)
}

/// The partition of a key with hash `hash` among `partitions`.
pub fn partition_of(hash: u64, partitions: usize) -> usize {
    ((u128::from(hash) * partitions as u128) >> 64) as usize
}

/// A page of records as [`WindowEngine::add_page`] takes it; built on the thread that read the
/// page ([`crate::kinesis::decode::DecodedPage`]), key hashes included.
pub trait KeyedPage: Sync {
    /// How many user records the page holds, valid or not.
    fn records(&self) -> usize;

    /// The valid events in the page's order, each with its record's index in the page and the
    /// [`key_hash`] of its key.
    fn hashed_events(&self) -> impl Iterator<Item = (usize, u64, KeyedEvent<'_>)>;
}

/// The windows of the keys one partition holds. Every partition is judged against the same
/// watermark, which only the engine moves, so partitions never disagree on what has fired.
#[derive(Default)]
struct KeyPartition {
    /// Open windows by start, then by key; tumbling windows share boundaries across keys, so
    /// firing pops whole entries off the front.
    open: BTreeMap<i64, HashMap<MetricKey, Accumulator>>,
    /// Fired windows kept for late events until the watermark passes end + allowed lateness.
    fired: BTreeMap<i64, HashMap<MetricKey, FiredWindow>>,
    dirty: Vec<(i64, MetricKey)>,
}

/// What an event of the current page is judged by: the same for every partition.
#[derive(Clone, Copy)]
struct Judge {
    assigner: WindowAssigner,
    allowed_lateness_ms: i64,
    max_future_skew_ms: i64,
    judged_against: Option<i64>,
    wall_clock: Option<i64>,
}

impl Judge {
    /// What an event's time is bounded by: its record's arrival in the stream, capped by the
    /// page's wall clock. While a backlog is read the arrival is long before the wall clock, so a
    /// producer clock minutes fast is judged against when its record came, and a replay is judged
    /// as the first reading was.
    fn reference(&self, event: &KeyedEvent<'_>) -> Option<i64> {
        match (event.arrival, self.wall_clock) {
            (Some(arrival), Some(now)) => Some(arrival.0.min(now)),
            (arrival, now) => arrival.map(|arrival| arrival.0).or(now),
        }
    }

    /// The time an admitted event moves its shard's clock to: never past its [`Self::reference`].
    fn clock_time(&self, event: &KeyedEvent<'_>) -> i64 {
        let time = event.timestamp.0;
        self.reference(event).map_or(time, |reference| time.min(reference))
    }
}

impl KeyPartition {
    /// Counts `event` in its window; shard clocks are the engine's to move.
    fn admit(&mut self, judge: &Judge, event: &KeyedEvent<'_>) -> Admission {
        if judge.reference(event).is_some_and(|reference| event.timestamp.0 > reference.saturating_add(judge.max_future_skew_ms)) {
            return Admission::AheadOfClock;
        }
        let start = judge.assigner.window_start(event.timestamp);
        let key = event.key;
        // Most events land in a window that is open already: probe that first. A key is never
        // both open and fired in one window, so the order of the probes does not matter.
        if let Some(accumulator) = self.open.get_mut(&start).and_then(|windows| windows.get_mut(key)) {
            if accumulator.add(event.value, event.timestamp) { Admission::OnTime } else { Admission::SumOverflow }
        } else if let Some(window) = self.fired.get_mut(&start).and_then(|windows| windows.get_mut(key)) {
            if !window.accumulator.add(event.value, event.timestamp) {
                Admission::SumOverflow
            } else {
                if !window.dirty {
                    window.dirty = true;
                    self.dirty.push((start, MetricKey(key.into())));
                }
                Admission::Late
            }
        } else if judge
            .judged_against
            .is_some_and(|watermark| judge.assigner.window_end(start).saturating_add(judge.allowed_lateness_ms) <= watermark)
        {
            Admission::TooLate
        } else {
            self.open.entry(start).or_default().insert(MetricKey(key.into()), Accumulator::new(event.value, event.timestamp));
            Admission::OnTime
        }
    }

    fn advance(&mut self, assigner: WindowAssigner, allowed_lateness_ms: i64, watermark: i64, out: &mut Vec<MetricAggregate>) {
        while let Some(entry) = self.open.first_entry() {
            if assigner.window_end(*entry.key()) > watermark {
                break;
            }
            let (start, windows) = entry.remove_entry();
            self.fire(assigner, start, windows, out);
        }
        self.emit_dirty(assigner, out);
        while let Some(entry) = self.fired.first_entry() {
            if assigner.window_end(*entry.key()).saturating_add(allowed_lateness_ms) > watermark {
                break;
            }
            entry.remove();
        }
    }

    fn fire_all(&mut self, assigner: WindowAssigner, out: &mut Vec<MetricAggregate>) {
        while let Some((start, windows)) = self.open.pop_first() {
            self.fire(assigner, start, windows, out);
        }
        self.emit_dirty(assigner, out);
    }

    fn fire(&mut self, assigner: WindowAssigner, start: i64, windows: HashMap<MetricKey, Accumulator>, out: &mut Vec<MetricAggregate>) {
        let fired = self.fired.entry(start).or_default();
        for (key, accumulator) in windows {
            out.push(aggregate(&key, start, assigner.window_end(start), &accumulator, 0));
            fired.insert(key, FiredWindow { accumulator, revision: 0, dirty: false });
        }
    }

    fn emit_dirty(&mut self, assigner: WindowAssigner, out: &mut Vec<MetricAggregate>) {
        for (start, key) in self.dirty.drain(..) {
            let Some(window) = self.fired.get_mut(&start).and_then(|windows| windows.get_mut(&key)) else { continue };
            window.revision += 1;
            window.dirty = false;
            out.push(aggregate(&key, start, assigner.window_end(start), &window.accumulator, window.revision));
        }
    }
}

impl WindowEngine {
    /// Takes the pipeline's validated `spec.aggregation`; the idle timeout is the caller's to
    /// apply, through [`Self::fire_all`].
    pub fn new(config: &WindowConfig) -> Self {
        Self {
            assigner: WindowAssigner::new(config.window),
            allowed_lateness_ms: millis(config.allowed_lateness),
            max_future_skew_ms: millis(config.max_future_skew),
            watermarks: Watermarks::new(config.out_of_orderness),
            settled: None,
            judged_against: None,
            wall_clock: None,
            partitions: vec![KeyPartition::default()],
            events_per_thread: EVENTS_PER_THREAD,
        }
    }

    /// The same engine with its windows spread over `partitions` key partitions (at least one),
    /// aggregated in parallel by [`Self::add_page`]. How many changes nothing else: the
    /// checkpoint holds the windows, not their partitions.
    pub fn with_key_partitions(mut self, partitions: usize) -> Self {
        // A restored engine has one partition: a one-partition pod moves nothing at start-up.
        if self.partitions.len() == partitions.max(1) {
            return self;
        }
        let old = std::mem::replace(&mut self.partitions, (0..partitions.max(1)).map(|_| KeyPartition::default()).collect());
        for partition in old {
            for (start, windows) in partition.open {
                for (key, accumulator) in windows {
                    self.partition_mut(&key.0).open.entry(start).or_default().insert(key, accumulator);
                }
            }
            for (start, windows) in partition.fired {
                for (key, fired) in windows {
                    self.partition_mut(&key.0).fired.entry(start).or_default().insert(key, fired);
                }
            }
            for (start, key) in partition.dirty {
                self.partition_mut(&key.0).dirty.push((start, key));
            }
        }
        self
    }

    fn partition_mut(&mut self, key: &[u8]) -> &mut KeyPartition {
        let index = partition_of(key_hash(key), self.partitions.len());
        &mut self.partitions[index]
    }

    fn judge(&self) -> Judge {
        Judge {
            assigner: self.assigner,
            allowed_lateness_ms: self.allowed_lateness_ms,
            max_future_skew_ms: self.max_future_skew_ms,
            judged_against: self.judged_against,
            wall_clock: self.wall_clock,
        }
    }

    /// Everything needed to continue after a restart exactly where this engine is: open and fired
    /// windows with their revisions, every shard's clock and the watermark; in a stable order.
    pub fn snapshot(&self) -> EngineSnapshot {
        let window = |start: i64, key: &MetricKey, accumulator: Accumulator, revision: u32, dirty: bool| WindowSnapshot {
            start: EventTime(start),
            key: key.clone(),
            accumulator,
            revision,
            dirty,
        };
        let by_key = |mut windows: Vec<WindowSnapshot>| {
            windows.sort_by(|a, b| (a.start, &a.key).cmp(&(b.start, &b.key)));
            windows
        };
        EngineSnapshot {
            window_ms: self.assigner.length_ms,
            watermarks: self.watermarks.snapshot(),
            watermark: self.settled,
            open: by_key(
                (self.partitions.iter().flat_map(|partition| &partition.open))
                    .flat_map(|(start, windows)| windows.iter().map(|(key, acc)| window(*start, key, *acc, 0, false)))
                    .collect(),
            ),
            fired: by_key(
                (self.partitions.iter().flat_map(|partition| &partition.fired))
                    .flat_map(|(start, windows)| {
                        windows.iter().map(|(key, fired)| window(*start, key, fired.accumulator, fired.revision, fired.dirty))
                    })
                    .collect(),
            ),
        }
    }

    /// An engine continuing from `snapshot`. When the window length changed since, the saved
    /// windows cannot continue under the new length: they fire into `out` as they are (fired
    /// ones re-emit only if changed) and the new engine keeps just the shard clocks.
    pub fn restore(config: &WindowConfig, snapshot: EngineSnapshot, out: &mut Vec<MetricAggregate>) -> Self {
        let mut engine = Self::new(config);
        if snapshot.window_ms != engine.assigner.length_ms {
            let previous = WindowConfig { window: Duration::from_millis(snapshot.window_ms.unsigned_abs()), ..*config };
            let mut previous = Self::restore(&previous, snapshot, out);
            previous.fire_all(out);
            engine.watermarks.restore(previous.watermarks.snapshot());
            (engine.settled, engine.judged_against) = (previous.settled, previous.settled);
            return engine;
        }
        engine.watermarks.restore(snapshot.watermarks);
        (engine.settled, engine.judged_against) = (snapshot.watermark, snapshot.watermark);
        let windows = &mut engine.partitions[0];
        for window in snapshot.open {
            windows.open.entry(window.start.0).or_default().insert(window.key, window.accumulator);
        }
        for window in snapshot.fired {
            if window.dirty {
                windows.dirty.push((window.start.0, window.key.clone()));
            }
            let fired = FiredWindow { accumulator: window.accumulator, revision: window.revision, dirty: window.dirty };
            windows.fired.entry(window.start.0).or_default().insert(window.key, fired);
        }
        engine
    }

    pub fn watermarks_mut(&mut self) -> &mut Watermarks {
        &mut self.watermarks
    }

    /// The watermark: never behind where it once was.
    pub fn watermark(&self) -> Option<i64> {
        match (self.settled, self.watermarks.current()) {
            (Some(settled), Some(current)) => Some(settled.max(current)),
            (settled, current) => settled.or(current),
        }
    }

    fn settle(&mut self) -> Option<i64> {
        self.settled = self.watermark();
        self.settled
    }

    /// Starts a page of events (one GetRecords answer) read at `wall_clock`: they are judged
    /// together, against the watermark as the pages before left it, as Flink's periodic
    /// watermarks do; an event stamped beyond its record's arrival (at most `wall_clock`) plus the
    /// maximum future skew is refused, and no shard's clock moves past that arrival.
    pub fn start_page(&mut self, wall_clock: EventTime) {
        self.judged_against = self.settle();
        self.wall_clock = Some(wall_clock.0);
    }

    /// Whether anything waits to be emitted: an open window, or a fired one a late event changed.
    pub fn has_unemitted(&self) -> bool {
        self.partitions.iter().any(|partition| !partition.open.is_empty() || !partition.dirty.is_empty())
    }

    /// Number of windows (key × window) still open.
    pub fn open_windows(&self) -> usize {
        self.partitions.iter().flat_map(|partition| partition.open.values()).map(HashMap::len).sum()
    }

    /// Adds one valid event read from `shard`, its key encoded as [`MetricKey`] encodes it, and
    /// moves that shard's clock; windows fire only in [`Self::advance`] and [`Self::fire_all`].
    pub fn add_keyed(&mut self, shard: &str, event: &KeyedEvent<'_>) -> Admission {
        let judge = self.judge();
        let admission = self.partition_mut(event.key).admit(&judge, event);
        if admission.counted() {
            self.watermarks.observe(shard, EventTime(judge.clock_time(event)));
        }
        admission
    }

    /// Adds the valid events of one page read from `shard`, as [`Self::add_keyed`] would one by one,
    /// the key partitions shared among threads when the page is large. Returns the admission of
    /// every event that was not on time, by its index in the page, in the page's order.
    pub fn add_page(&mut self, shard: &str, page: &impl KeyedPage) -> Vec<(usize, Admission)> {
        let (judge, total) = (self.judge(), self.partitions.len());
        let threads = (page.records() / self.events_per_thread).clamp(1, total);
        let shares = if threads == 1 {
            vec![admit_share(&judge, page, &mut self.partitions, 0, total)]
        } else {
            let per_thread = total.div_ceil(threads);
            std::thread::scope(|scope| {
                let mut chunks = self.partitions.chunks_mut(per_thread).enumerate();
                let (_, own) = chunks.next().expect("at least one partition");
                let others: Vec<_> = chunks
                    .map(|(chunk, partitions)| scope.spawn(move || admit_share(&judge, page, partitions, chunk * per_thread, total)))
                    .collect();
                let mut shares = vec![admit_share(&judge, page, own, 0, total)];
                shares.extend(others.into_iter().map(|thread| thread.join().expect("aggregating never panics")));
                shares
            })
        };
        let latest = shares.iter().filter_map(|(_, latest)| *latest).max();
        if let Some(latest) = latest {
            self.watermarks.observe(shard, EventTime(latest));
        }
        let mut not_on_time: Vec<_> = shares.into_iter().flat_map(|(not_on_time, _)| not_on_time).collect();
        not_on_time.sort_unstable_by_key(|(index, _)| *index);
        not_on_time
    }

    /// Fires every open window whose end the watermark has passed, re-emits fired windows that
    /// late events changed, and forgets fired windows past their allowed lateness.
    pub fn advance(&mut self, out: &mut Vec<MetricAggregate>) {
        let Some(watermark) = self.settle() else { return };
        self.judged_against = Some(watermark);
        for partition in &mut self.partitions {
            partition.advance(self.assigner, self.allowed_lateness_ms, watermark, out);
        }
    }

    /// Fires every open window now, as at end of input (the idle timeout), and re-emits changed
    /// fired ones. Fired windows stay for late events until the watermark passes them.
    pub fn fire_all(&mut self, out: &mut Vec<MetricAggregate>) {
        for partition in &mut self.partitions {
            partition.fire_all(self.assigner, out);
        }
    }
}

/// One thread's share of a page: the events whose key is in `partitions`, which are partitions
/// `first..` of `total`. Returns the admission of each of them that was not on time, by index
/// in the page, and the latest clock time of those counted.
fn admit_share(
    judge: &Judge,
    page: &impl KeyedPage,
    partitions: &mut [KeyPartition],
    first: usize,
    total: usize,
) -> (Vec<(usize, Admission)>, Option<i64>) {
    let (mut not_on_time, mut latest) = (Vec::new(), None);
    for (index, hash, event) in page.hashed_events() {
        let Some(partition) = partition_of(hash, total).checked_sub(first).and_then(|own| partitions.get_mut(own)) else { continue };
        let admission = partition.admit(judge, &event);
        if admission.counted() {
            latest = latest.max(Some(judge.clock_time(&event)));
        }
        if admission != Admission::OnTime {
            not_on_time.push((index, admission));
        }
    }
    (not_on_time, latest)
}

/// Event time is counted in milliseconds; durations beyond `i64` saturate.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn aggregate(key: &MetricKey, start: i64, end: i64, accumulator: &Accumulator, revision: u32) -> MetricAggregate {
    let (component_name, metric_name, unit) = key.parts();
    MetricAggregate {
        component_name: component_name.to_owned(),
        metric_name: metric_name.to_owned(),
        unit: unit.to_owned(),
        min_value: accumulator.min_value,
        max_value: accumulator.max_value,
        avg_value: accumulator.sum / accumulator.count as f64,
        count: accumulator.count,
        sum: accumulator.sum,
        from_timestamp: accumulator.first_time,
        to_timestamp: accumulator.last_time,
        window_start: EventTime(start),
        window_end: EventTime(end),
        window_id: window_id(component_name, metric_name, unit, EventTime(start), EventTime(end)),
        revision,
    }
}

#[cfg(test)]
mod tests;
