//! The chaos run: the aggregator binary against the emulators (the streams in kinesis-mock, which
//! reshards as AWS does; the bucket in moto), its AWS calls through proxies that throttle, fail,
//! drop and lose answers, while a producer sends a seeded mix of normal and hostile records over
//! three shards, some of them packed by the KPL (AWS Labs' aggregation library, `KPL_PYTHON`) and
//! some stamped minutes ahead, and a broken producer writes nothing but garbage to the lowest
//! hash keys, which no other record uses (a garbage-only shard); the input is split to six shards and merged back to three while it
//! runs; the aggregator is killed with SIGKILL at random points and restarted, a second copy is
//! started once, and the copy holding the checkpoint is once stopped (SIGSTOP) past its lease so
//! that the other takes over and it is fenced. Each copy aggregates with another number of key
//! partitions (`--threads` 1 to 4) than the one before it.
//!
//! At the end: the output stream and the Parquet files, each after the documented dedup, equal a
//! batch computation over the valid, in-time records exactly (sums as exactly as serde_json reads
//! them back: within 2 units in the last place); no window and revision was sent with two
//! contents; every refused record (a KPL user record on its own) is a dead letter with its
//! reason, and nothing else is; no Parquet file was overwritten (the bucket keeps versions: each
//! file has one); every copy's peak memory stayed within the Deployment's limit.
//!
//! `CHAOS_SEED` picks the run (default 1); the same seed gives the same records and the same
//! schedule of kills (the emulator's timing varies).

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_kinesis::types::{ScalingType, ShardIteratorType};
use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
use metrics_aggregator::kinesis::kpl;
use metrics_aggregator::kinesis::sink::{KinesisSink, OutputRecord};
use metrics_aggregator::s3::parquet_files::decode;
use metrics_pipeline_aws_proxy::{AwsProxy, FaultSettings, Outcome, ProxySettings};
use metrics_pipeline_model::event::{EventTime, MetricAggregate, deduplicate};
use metrics_pipeline_test_support::wait_for;
use support::{Aggregator, Emulator, KplLibrary};

const SHARDS: i32 = 3;
const WINDOW_MS: i64 = 5_000;
/// Half the Deployment's default memory limit (512 MiB): three shards at this rate need far less,
/// and a leak shows well before the limit would.
const MEMORY_LIMIT: u64 = 256 * 1024 * 1024;
const PRODUCE_FOR: Duration = Duration::from_secs(60);

/// What a published record is, and so what the aggregator must make of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Normal,
    /// A sentinel value (1.7e308): counted, unless it would overflow its window's sum.
    Sentinel,
    FarFuture,
    FarPast,
    ControlCharacterName,
    NonFinite,
    Oversized,
    NotUtf8,
    /// Stamped three minutes ahead of its arrival (within the future skew): counted, and must
    /// not make the records after it late.
    FastClock,
    /// From the broken producer, on the garbage-only shard.
    Garbage,
}

/// What the broken producer writes: never JSON, unique by `n`.
fn garbage(n: u64) -> Vec<u8> {
    format!("garbage {n}").into_bytes()
}

/// A small seeded random sequence (xorshift64*), the same on every machine.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// One record of `kind`; `n` makes every record's bytes unique. Normal metric names carry
/// control characters too: they are valid, and must keep their windows apart.
fn record(kind: Kind, n: u64, random: &mut Random, hostile: bool) -> OutputRecord {
    let component = format!("service-{}", random.below(4));
    let metric = ["cpu-usage", "ram\u{0}usage", "tab\tlatency"][random.below(3) as usize];
    let at = |millis: i64| EventTime(millis).to_string();
    let json = |component: &str, value: serde_json::Value, timestamp: String| {
        let event = serde_json::json!({"componentName": component, "metricName": metric, "unit": "ms", "value": value, "timestamp": timestamp, "n": n});
        serde_json::to_vec(&event).unwrap()
    };
    let normal_time = now() - random.below(2_000) as i64;
    let (partition_key, data) = match kind {
        Kind::Normal => (component.clone(), json(&component, (random.below(10_000) as f64 / 100.0).into(), at(normal_time))),
        Kind::Sentinel => ("sentinel".into(), json("sentinel", 1.7e308.into(), at(normal_time))),
        Kind::FarFuture => (component.clone(), json(&component, 1.0.into(), "9999-12-31T23:59:59Z".into())),
        Kind::FarPast => (component.clone(), json(&component, 1.0.into(), at(978_307_200_000))),
        Kind::ControlCharacterName => ("bad".into(), json("service\u{7}1", 1.0.into(), at(normal_time))),
        Kind::NonFinite => {
            let text = format!(
                r#"{{"componentName":"{component}","metricName":"m","unit":"ms","value":1e999,"timestamp":"{}","n":{n}}}"#,
                at(normal_time)
            );
            (component.clone(), text.into_bytes())
        }
        Kind::Oversized => (component.clone(), format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(70 * 1024)).into_bytes()),
        Kind::NotUtf8 => (component.clone(), [&[0xff, 0xfe][..], &n.to_le_bytes()].concat()),
        Kind::FastClock => (component.clone(), json(&component, 1.0.into(), at(now() + 180_000))),
        Kind::Garbage => unreachable!("the broken producer writes its garbage itself"),
    };
    assert!(hostile || kind == Kind::Normal);
    OutputRecord { partition_key, data }
}

fn pick_kind(random: &mut Random, hostile: bool) -> Kind {
    if !hostile {
        return Kind::Normal;
    }
    match random.below(100) {
        0..78 => Kind::Normal,
        78..80 => Kind::FastClock,
        80..86 => Kind::Sentinel,
        86..89 => Kind::FarFuture,
        89..92 => Kind::FarPast,
        92..94 => Kind::ControlCharacterName,
        94..96 => Kind::NonFinite,
        96..98 => Kind::Oversized,
        _ => Kind::NotUtf8,
    }
}

/// Where a user record was read: shard, sequence number, and its place in a KPL aggregate.
type Place = (String, String, Option<u64>);

/// Every record of the input stream: (shard, sequence number, data), each shard in order, a
/// parent before its children.
async fn read_input(aws: &Emulator) -> Vec<(String, String, Vec<u8>)> {
    let shards = aws.kinesis.list_shards().stream_name(&aws.input).send().await.unwrap();
    let mut read = Vec::new();
    for shard in shards.shards() {
        let request = aws.kinesis.get_shard_iterator().stream_name(&aws.input).shard_id(shard.shard_id());
        let mut iterator = request.shard_iterator_type(ShardIteratorType::TrimHorizon).send().await.unwrap().shard_iterator.unwrap();
        loop {
            let page = aws.kinesis.get_records().shard_iterator(&iterator).limit(10_000).send().await.unwrap();
            if page.records().is_empty() {
                break;
            }
            let records =
                page.records().iter().map(|r| (shard.shard_id().to_owned(), r.sequence_number().to_owned(), r.data().as_ref().to_vec()));
            read.extend(records);
            // A closed shard's last page has no next iterator.
            let Some(next) = page.next_shard_iterator() else { break };
            iterator = next.to_owned();
        }
    }
    read
}

/// (component, metric, unit, window start) → (count, min, max, sum, first time, last time).
type Batch = BTreeMap<(String, String, String, i64), (u64, f64, f64, f64, i64, i64)>;

/// The user records of the input: a KPL aggregate's, each with its place in it, or the record.
fn user_records(read: &[(String, String, Vec<u8>)]) -> Vec<(Place, &[u8])> {
    let mut users = Vec::new();
    for (shard, sequence, data) in read {
        if !kpl::is_aggregated(data) {
            users.push(((shard.clone(), sequence.clone(), None), &data[..]));
            continue;
        }
        let packed = kpl::unpack(data).expect("the library's aggregates are valid");
        users.extend(
            packed.into_iter().enumerate().map(|(sub, user)| ((shard.clone(), sequence.clone(), Some(sub as u64)), &data[user.data])),
        );
    }
    users
}

/// The batch computation, in stream order: normal records and sentinels count; a sentinel that
/// would overflow its window's sum is refused. Returns the windows and the expected reason of
/// every refused user record, by where it was read.
fn expected(read: &[(String, String, Vec<u8>)], kinds: &HashMap<Vec<u8>, Kind>) -> (Batch, BTreeMap<Place, String>) {
    let (mut windows, mut refused) = (Batch::new(), BTreeMap::new());
    for (place, data) in user_records(read) {
        let kind = kinds.get(data).copied().unwrap_or_else(|| {
            assert!(data.starts_with(b"garbage "), "a record nobody published");
            Kind::Garbage
        });
        let reason = match kind {
            Kind::Normal | Kind::Sentinel | Kind::FastClock => {
                let event: serde_json::Value = serde_json::from_slice(data).unwrap();
                let time = EventTime::parse_rfc3339(event["timestamp"].as_str().unwrap()).unwrap().0;
                let value = event["value"].as_f64().unwrap();
                let key = (
                    event["componentName"].as_str().unwrap().to_owned(),
                    event["metricName"].as_str().unwrap().to_owned(),
                    "ms".to_owned(),
                    time.div_euclid(WINDOW_MS) * WINDOW_MS,
                );
                let window = windows.entry(key).or_insert((0, f64::MAX, f64::MIN, 0.0, i64::MAX, i64::MIN));
                if !(window.3 + value).is_finite() {
                    refused.insert(place, "sum_overflow".to_owned());
                    continue;
                }
                *window =
                    (window.0 + 1, window.1.min(value), window.2.max(value), window.3 + value, window.4.min(time), window.5.max(time));
                continue;
            }
            Kind::FarFuture => "future_timestamp",
            Kind::FarPast => "too_late",
            Kind::ControlCharacterName => "bad_component_name",
            Kind::NonFinite => "non_finite_value",
            Kind::Oversized => "oversized",
            Kind::NotUtf8 | Kind::Garbage => "not_json",
        };
        refused.insert(place, reason.to_owned());
    }
    (windows, refused)
}

fn summary(aggregates: impl IntoIterator<Item = MetricAggregate>) -> Batch {
    deduplicate(aggregates)
        .into_values()
        .map(|a| {
            let key = (a.component_name, a.metric_name, a.unit, a.window_start.0);
            (key, (a.count, a.min_value, a.max_value, a.sum, a.from_timestamp.0, a.to_timestamp.0))
        })
        .collect()
}

/// Equal windows: count, extremes and times exactly; the sums within the rounding of adding the
/// window's values in another order (a split or merge while records flow, or a replay after a
/// kill, hands a window its events in another order than the batch computation's, and floating
/// point addition is not associative: 365.68000000000006 against 365.6799999999999 for seven
/// latencies), far below what one event more or less would change.
fn same_window(a: &(u64, f64, f64, f64, i64, i64), b: &(u64, f64, f64, f64, i64, i64)) -> bool {
    let rounding = 2.0 * a.0.max(1) as f64 * f64::EPSILON * a.3.abs().max(b.3.abs());
    let sums = (a.3 - b.3).abs() <= rounding;
    (a.0, a.1, a.2, a.4, a.5) == (b.0, b.1, b.2, b.4, b.5) && sums
}

fn same_windows(a: &Batch, b: &Batch) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|((key_a, a), (key_b, b))| key_a == key_b && same_window(a, b))
}

/// Every dead letter kept, once per user record, with its reason.
async fn dead_letters(aws: &Emulator) -> BTreeMap<Place, String> {
    let mut letters = BTreeMap::new();
    for body in aws.objects("_aggregator/dead-letters/").await.into_values() {
        for line in body.split(|b| *b == b'\n').filter(|line| !line.is_empty()) {
            let letter: serde_json::Value = serde_json::from_slice(line).unwrap();
            let (shard, sequence) = (letter["shardId"].as_str().unwrap().to_owned(), letter["sequenceNumber"].as_str().unwrap().to_owned());
            let key = (shard, sequence, letter["subSequenceNumber"].as_u64());
            let reason = letter["reason"].as_str().unwrap().to_owned();
            let previous = letters.insert(key.clone(), reason.clone());
            assert!(previous.is_none_or(|previous| previous == reason), "{key:?} kept with two reasons");
        }
    }
    letters
}

/// The copies of the aggregator this run started, by identity.
struct Copies<'a> {
    aws: &'a Emulator,
    /// In front of moto (the bucket) and of kinesis-mock (the streams).
    proxy: &'a AwsProxy,
    kinesis_proxy: &'a AwsProxy,
    running: Vec<(String, Aggregator)>,
    peak_memory: u64,
    started: u32,
}

impl Copies<'_> {
    fn start(&mut self, identity: &str) {
        self.reap();
        // Each copy spreads the windows it resumes over another number of key partitions.
        let threads = (self.started % 4 + 1).to_string();
        let flags = [
            "--threads",
            &threads,
            "--window",
            "5s",
            "--out-of-orderness",
            "2s",
            "--allowed-lateness",
            "10m",
            "--idle-timeout",
            "3s",
            "--checkpoint-interval",
            "1s",
            "--parquet",
            "snappy",
            "--parquet-roll-interval",
            "2s",
        ];
        let env = [
            ("AWS_ENDPOINT_URL", self.proxy.endpoint()),
            ("AWS_ENDPOINT_URL_KINESIS", self.kinesis_proxy.endpoint()),
            ("AGGREGATOR_HOLDER_IDENTITY", identity),
            ("AGGREGATOR_LEASE_DURATION", "3s"),
        ];
        self.running.push((identity.to_owned(), self.aws.start_aggregator_with_env(&flags, &env)));
        self.started += 1;
    }

    /// Forgets copies that exited (a fenced copy does).
    fn reap(&mut self) {
        self.running.retain_mut(|(_, copy)| copy.exited_now().is_none());
    }

    fn note_memory(&mut self) {
        for (_, copy) in &self.running {
            if let Some(peak) = copy.peak_resident_bytes() {
                self.peak_memory = self.peak_memory.max(peak);
            }
        }
    }

    async fn holder(&self) -> Option<String> {
        let checkpoint = self.aws.objects("_aggregator/checkpoint.json").await.remove("_aggregator/checkpoint.json")?;
        let checkpoint: serde_json::Value = serde_json::from_slice(&checkpoint).ok()?;
        checkpoint["lease"]["holder"].as_str().map(str::to_owned)
    }

    fn find(&mut self, identity: &str) -> Option<&mut Aggregator> {
        self.running.iter_mut().find(|(name, _)| name == identity).map(|(_, copy)| copy)
    }
}

#[tokio::test]
async fn chaos_the_output_equals_a_batch_computation_over_the_valid_in_time_records() {
    let seed: u64 = std::env::var("CHAOS_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(1);
    let mut random = Random(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let aws = Emulator::on_kinesis_mock("chaos", SHARDS).await;
    let versioning = VersioningConfiguration::builder().status(BucketVersioningStatus::Enabled).build();
    aws.s3.put_bucket_versioning().bucket(&aws.bucket).versioning_configuration(versioning).send().await.unwrap();
    let faults =
        FaultSettings { seed, throttle_rate: 0.04, error_rate: 0.03, drop_rate: 0.01, lost_answer_rate: 0.01, ..FaultSettings::none() };
    let moto = std::env::var("AWS_ENDPOINT_URL").expect("run `scripts/dev-env up` and `. .dev-env/env`");
    let kinesis_mock = std::env::var("KINESIS_MOCK_URL").expect("run `scripts/dev-env up` and `. .dev-env/env`");
    let proxy = AwsProxy::start(&moto, ProxySettings { faults: faults.clone(), ..ProxySettings::default() }).await.unwrap();
    let kinesis_proxy = AwsProxy::start(&kinesis_mock, ProxySettings { faults, ..ProxySettings::default() }).await.unwrap();
    let mut copies = Copies { aws: &aws, proxy: &proxy, kinesis_proxy: &kinesis_proxy, running: Vec::new(), peak_memory: 0, started: 0 };
    let sink = KinesisSink::new(aws.kinesis.clone(), &aws.input);
    let mut library = KplLibrary::start();
    let mut kinds: HashMap<Vec<u8>, Kind> = HashMap::new();
    let mut n = 0;
    let mut publish = async |random: &mut Random, hostile: bool, kinds: &mut HashMap<Vec<u8>, Kind>| {
        let mut batch: Vec<OutputRecord> = (0..10)
            .map(|_| {
                n += 1;
                let kind = pick_kind(random, hostile);
                let record = record(kind, n, random, hostile);
                kinds.insert(record.data.clone(), kind);
                record
            })
            .collect();
        // A KPL producer packs some of them: the same user records, counted on their own.
        // Sentinels stay on their own partition key: which of them overflows depends on their order.
        if hostile && random.below(3) == 0 && batch[4..].iter().all(|record| record.partition_key != "sentinel") {
            let packed = batch.split_off(4);
            batch.push(library.aggregate(&packed));
        }
        sink.put_all(batch).await;
    };

    // The broken producer writes to the lowest hash keys (the partition keys of every other record
    // hash above the middle of the range) until the end, so one shard never carries an event:
    // it must go idle like a quiet one, or no window would fire.
    let (kinesis, input) = (aws.kinesis.clone(), aws.input.clone());
    let broken_producer = tokio::spawn(async move {
        for n in 0.. {
            let entry = aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                .partition_key("broken")
                .explicit_hash_key("0")
                .data(aws_sdk_kinesis::primitives::Blob::new(garbage(n)))
                .build()
                .unwrap();
            // What does not make it into the stream is not there to count.
            let _ = kinesis.put_records().stream_name(&input).records(entry).send().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });

    // Normal records only until a checkpoint holds a watermark: from then on, far-past records
    // are too late whichever copy reads them.
    copies.start("pod-a");
    wait_for("a checkpoint with a watermark", Duration::from_secs(60), async || {
        publish(&mut random, false, &mut kinds).await;
        let checkpoint = aws.objects("_aggregator/checkpoint.json").await;
        let watermark = checkpoint
            .values()
            .next()
            .and_then(|body| serde_json::from_slice::<serde_json::Value>(body).ok())
            .map(|c| c["engine"]["watermark"].clone());
        if watermark.as_ref().is_some_and(|w| !w.is_null()) { Ok(()) } else { Err(format!("{watermark:?}")) }
    })
    .await
    .unwrap();

    // The schedule has its own random sequence: how many records go out between steps varies.
    let mut schedule = Random(seed.wrapping_mul(0xbf58_476d_1ce4_e5b9) | 1);
    let (second_copy_at, stall_at) = (2 + schedule.below(3), 5 + schedule.below(3));
    // The input splits to six shards and merges back to three while records flow.
    let (split_at, merge_at) = (1 + schedule.below(2), 4 + schedule.below(4));
    let reshard = async |shards: i32| {
        let request = aws.kinesis.update_shard_count().stream_name(&aws.input).target_shard_count(shards);
        request.scaling_type(ScalingType::UniformScaling).send().await.unwrap();
    };
    let started = tokio::time::Instant::now();
    let mut step = 0;
    while started.elapsed() < PRODUCE_FOR {
        let next_action = tokio::time::Instant::now() + Duration::from_millis(4_000 + schedule.below(5_000));
        while tokio::time::Instant::now() < next_action {
            publish(&mut random, true, &mut kinds).await;
            copies.note_memory();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        step += 1;
        copies.reap();
        let holder = copies.holder().await.unwrap_or_else(|| "pod-a".into());
        if step == split_at || step == merge_at {
            let shards = if step == split_at { 2 * SHARDS } else { SHARDS };
            println!("step {step}: the input reshards to {shards} shards");
            aws.wait_active(&aws.input).await;
            reshard(shards).await;
        }
        if step == second_copy_at {
            println!("step {step}: a second copy starts beside {holder}");
            copies.start(if holder == "pod-a" { "pod-b" } else { "pod-a" });
        } else if step == stall_at {
            if let Some(copy) = copies.find(&holder) {
                println!("step {step}: {holder} stalls past its lease");
                copy.signal("STOP");
                tokio::time::sleep(Duration::from_secs(6)).await;
                copy.signal("CONT");
            }
        } else if copies.find(&holder).is_some() {
            println!("step {step}: SIGKILL {holder}, restarted");
            copies.note_memory();
            // Dropping a copy kills it with SIGKILL.
            copies.running.retain(|(name, _)| *name != holder);
            copies.start(&holder);
        }
        if copies.running.is_empty() {
            copies.start("pod-a");
        }
    }

    // Every copy goes on until the output is complete.
    aws.wait_active(&aws.input).await;
    let read = read_input(&aws).await;
    let (windows, _) = expected(&read, &kinds);
    let output = wait_for("the output to equal the batch computation", Duration::from_secs(120), async || {
        copies.reap();
        copies.note_memory();
        if copies.running.is_empty() {
            copies.start("pod-a");
        }
        let output = summary(aws.read_stream(&aws.output).await.into_iter().map(|data| serde_json::from_slice(&data).unwrap()));
        let counted: u64 = output.values().map(|window| window.0).sum();
        if same_windows(&output, &windows) {
            return Ok(output);
        }
        let differing: Vec<_> = windows
            .iter()
            .filter(|(key, window)| !output.get(*key).is_some_and(|seen| same_window(seen, window)))
            .map(|(key, window)| (key, window, output.get(key)))
            .take(3)
            .collect();
        let extra: Vec<_> = output.keys().filter(|key| !windows.contains_key(*key)).take(3).collect();
        Err(format!(
            "{counted} of {} events counted; differing (expected, output): {differing:?}; not expected: {extra:?}",
            windows.values().map(|w| w.0).sum::<u64>()
        ))
    })
    .await
    .unwrap();
    let mut contents: BTreeMap<(String, u32), BTreeSet<Vec<u8>>> = BTreeMap::new();
    for data in aws.read_stream(&aws.output).await {
        let aggregate: MetricAggregate = serde_json::from_slice(&data).unwrap();
        contents.entry((aggregate.window_id, aggregate.revision)).or_default().insert(data);
    }
    let twice: Vec<_> = contents.iter().filter(|(_, sent)| sent.len() > 1).take(3).collect();
    assert!(twice.is_empty(), "a window and revision sent with two contents: {twice:?}");

    broken_producer.abort();
    let _ = broken_producer.await;
    let read = read_input(&aws).await;
    let (_, refused) = expected(&read, &kinds);
    let letters = wait_for("every refused record kept", Duration::from_secs(60), async || {
        copies.reap();
        if copies.running.is_empty() {
            copies.start("pod-a");
        }
        let letters = dead_letters(&aws).await;
        if letters == refused { Ok(letters) } else { Err(format!("{} dead letters of {} refused records", letters.len(), refused.len())) }
    })
    .await
    .unwrap();
    for (identity, mut copy) in copies.running.drain(..) {
        copy.signal("TERM");
        let stopped = copy.exited_within(Duration::from_secs(60)).await;
        assert!(
            stopped.is_some_and(|status| status.success()),
            "{identity} did not stop cleanly on SIGTERM: {stopped:?}; its log: {}",
            copy.log.display()
        );
    }

    assert_eq!(dead_letters(&aws).await, letters, "every refused record is a dead letter with its reason, and nothing else is");
    let versions = aws.s3.list_object_versions().bucket(&aws.bucket).prefix("componentName=").send().await.unwrap();
    let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
    for version in versions.versions() {
        *per_key.entry(version.key().unwrap().to_owned()).or_default() += 1;
    }
    assert!(per_key.values().all(|versions| *versions == 1), "a Parquet file was overwritten: {per_key:?}");
    let mut rows = Vec::new();
    for (key, body) in aws.objects("componentName=").await {
        let component = key.strip_prefix("componentName=").and_then(|rest| rest.split_once('/')).unwrap().0.to_owned();
        rows.extend(decode(body, &component).unwrap());
    }
    assert!(same_windows(&summary(rows), &windows), "the Parquet files after dedup equal the batch computation");
    assert!(copies.peak_memory < MEMORY_LIMIT, "a copy peaked at {} MiB", copies.peak_memory >> 20);

    let counts = |kind: Kind| kinds.values().filter(|k| **k == kind).count();
    let broken = read.iter().filter(|(_, _, data)| data.starts_with(b"garbage ")).count();
    let packed = read.iter().filter(|(_, _, data)| kpl::is_aggregated(data)).count();
    println!(
        "chaos seed {seed}: {} records, {packed} of them KPL aggregates, {} user records ({} normal, {} fast clock, {} sentinel, {} far future, \
         {} far past, {} bad names, {} non-finite, {} oversized, {} not UTF-8) and {broken} from the broken producer; {} shards carried records; {} windows, {} events counted, \
         {} dead letters ({} sum overflows); {} aggregator starts; {} Parquet files, none overwritten; peak memory {} MiB; AWS calls \
         through the proxies: {}, {} of them faults",
        read.len(),
        kinds.len(),
        counts(Kind::Normal),
        counts(Kind::FastClock),
        counts(Kind::Sentinel),
        counts(Kind::FarFuture),
        counts(Kind::FarPast),
        counts(Kind::ControlCharacterName),
        counts(Kind::NonFinite),
        counts(Kind::Oversized),
        counts(Kind::NotUtf8),
        read.iter().map(|(shard, _, _)| shard).collect::<BTreeSet<_>>().len(),
        output.len(),
        output.values().map(|w| w.0).sum::<u64>(),
        letters.len(),
        letters.values().filter(|reason| *reason == "sum_overflow").count(),
        copies.started,
        per_key.len(),
        copies.peak_memory >> 20,
        proxy.stats().calls.len() + kinesis_proxy.stats().calls.len(),
        proxy.stats().count(|call| matches!(call.outcome, Outcome::Injected { .. }))
            + kinesis_proxy.stats().count(|call| matches!(call.outcome, Outcome::Injected { .. })),
    );
}
