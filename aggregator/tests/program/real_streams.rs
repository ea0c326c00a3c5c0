//! The aggregator binary against what real producers and real streams do and our own publishing
//! does not: records packed by the Kinesis Producer Library (made by AWS Labs' aggregation
//! library, `KPL_PYTHON`), a shard that carries nothing but garbage, and a stream split while
//! events are published, in kinesis-mock (`KINESIS_MOCK_URL`), which reshards as AWS does: a
//! split parent keeps its records and is closed with `ChildShards`. The bucket stays in moto: the
//! aggregator finds Kinesis through `AWS_ENDPOINT_URL_KINESIS`, as the SDK's settings say.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::{Emulator, KplLibrary};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ScalingType};
use metrics_aggregator::kinesis::sink::{KinesisSink, OutputRecord};
use metrics_pipeline_model::event::{EventTime, MetricAggregate};
use metrics_pipeline_test_support::wait_for;

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn event(component: &str, metric: &str, value: f64, at: i64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "componentName": component, "metricName": metric, "unit": "percent", "value": value, "timestamp": EventTime(at)
    }))
    .unwrap()
}

/// Every dead letter kept so far, as JSON.
async fn dead_letters(aws: &Emulator) -> Vec<serde_json::Value> {
    let objects = aws.objects("_aggregator/dead-letters/").await;
    let lines: Vec<Vec<u8>> = objects
        .into_values()
        .flat_map(|body| body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect::<Vec<_>>())
        .collect();
    lines.iter().map(|line| serde_json::from_slice(line).unwrap()).collect()
}

async fn publish(aws: &Emulator, records: Vec<(String, Vec<u8>)>) {
    let records = records.into_iter().map(|(partition_key, data)| OutputRecord { partition_key, data }).collect();
    KinesisSink::new(aws.kinesis.clone(), &aws.input).put_all(records).await;
}

#[tokio::test]
async fn records_packed_by_the_kpl_count_like_plain_ones_and_a_corrupt_one_is_kept() {
    let aws = Emulator::on_kinesis_mock("kpl", 1).await;
    let mut aggregator = aws.start_aggregator(&["--window", "10s", "--out-of-orderness", "1s", "--idle-timeout", "2s"]);
    aggregator.wait_ready().await;
    // 20 keys, 3 events each, one window: 60 user records in aggregates of 12, and one user record
    // inside an aggregate that is not an event.
    let start = (now() - 60_000).div_euclid(10_000) * 10_000;
    let mut user_records: Vec<(String, Vec<u8>)> = (0..60)
        .map(|i| {
            let (component, metric) = (format!("component-{}", i % 4), format!("metric-{}", i / 4 % 5));
            (format!("user-key-{i}"), event(&component, &metric, f64::from(i), start + i64::from(i) * 100))
        })
        .collect();
    user_records.insert(30, ("user-key-bad".to_owned(), b"{not an event".to_vec()));
    let groups: Vec<Vec<(String, Vec<u8>)>> = user_records.chunks(12).map(<[_]>::to_vec).collect();
    let mut library = KplLibrary::start();
    let mut aggregates: Vec<(String, Vec<u8>)> = groups
        .iter()
        .map(|group| {
            let users: Vec<OutputRecord> = group
                .iter()
                .map(|(partition_key, data)| OutputRecord { partition_key: partition_key.clone(), data: data.clone() })
                .collect();
            let aggregate = library.aggregate(&users);
            (aggregate.partition_key, aggregate.data)
        })
        .collect();
    assert_eq!(aggregates.len(), 6);
    assert!(aggregates.iter().all(|(_, data)| data.starts_with(&[0xF3, 0x89, 0x9A, 0xC2])), "the library's format");
    let mut corrupt = aggregates[0].clone();
    *corrupt.1.last_mut().unwrap() ^= 0x01;
    aggregates.push(corrupt);
    publish(&aws, aggregates).await;

    let latest = aws.wait_for_aggregates(60, &mut aggregator).await;
    assert_eq!(latest.len(), 20, "one aggregate per key: {latest:?}");
    assert!(latest.values().all(|aggregate| aggregate.count == 3), "{latest:?}");
    let letters = wait_for("both dead letters", Duration::from_secs(20), async || {
        let letters = dead_letters(&aws).await;
        if letters.len() >= 2 { Ok(letters) } else { Err(format!("{} so far", letters.len())) }
    })
    .await
    .unwrap();
    let mut reasons: Vec<(&str, Option<u64>, &str)> = letters
        .iter()
        .map(|letter| (letter["reason"].as_str().unwrap(), letter["subSequenceNumber"].as_u64(), letter["partitionKey"].as_str().unwrap()))
        .collect();
    reasons.sort();
    let first_key = groups[0][0].0.as_str();
    assert_eq!(reasons, [("kpl_digest_mismatch", None, first_key), ("not_json", Some(6), "user-key-bad")], "{letters:?}");
    let metrics = aggregator.get("/metrics").1;
    assert!(metrics.contains("aggregator_kpl_user_records_total 61"), "every user record unpacked once:\n{metrics}");
}

/// A record for shard `shard` of a 2-shard stream, whatever its partition key says.
fn to_shard(shard: u8, partition_key: &str, data: Vec<u8>) -> PutRecordsRequestEntry {
    // The two shards split the 128-bit hash key range in halves.
    let explicit_hash_key = if shard == 0 { "0".to_owned() } else { (1u128 << 127).to_string() };
    PutRecordsRequestEntry::builder()
        .partition_key(partition_key)
        .explicit_hash_key(explicit_hash_key)
        .data(Blob::new(data))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_shard_that_carries_only_garbage_does_not_stop_the_windows_of_the_others() {
    let aws = Emulator::on_kinesis_mock("garbage", 2).await;
    let mut aggregator = aws.start_aggregator(&["--window", "10s", "--out-of-orderness", "1s", "--idle-timeout", "2s"]);
    aggregator.wait_ready().await;
    let start = (now() - 60_000).div_euclid(10_000) * 10_000;
    let events: Vec<_> =
        (0..10).map(|i| to_shard(0, "good", event("user-service", "cpu-usage", f64::from(i), start + i64::from(i) * 500))).collect();
    aws.kinesis.put_records().stream_name(&aws.input).set_records(Some(events)).send().await.unwrap();
    // A producer with a bug keeps writing to the other shard all along, until the test ends.
    let (kinesis, input) = (aws.kinesis.clone(), aws.input.clone());
    let garbage = tokio::spawn(async move {
        for round in 0.. {
            let record = to_shard(1, "broken", format!("garbage {round}").into_bytes());
            let _ = kinesis.put_records().stream_name(&input).records(record).send().await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let latest = aws.wait_for_aggregates(10, &mut aggregator).await;
    garbage.abort();
    assert_eq!(latest.values().map(|aggregate| (aggregate.count, aggregate.revision)).collect::<Vec<_>>(), [(10, 0)]);
    let letters = dead_letters(&aws).await;
    assert!(!letters.is_empty(), "the garbage is kept");
    assert!(letters.iter().all(|letter| letter["reason"] == "not_json" && letter["shardId"] != "shardId-000000000000"), "{letters:?}");
}

#[tokio::test]
async fn a_stream_split_while_events_are_published_emits_every_window_complete_the_first_time() {
    let aws = Emulator::on_kinesis_mock("split", 1).await;
    let mut aggregator =
        aws.start_aggregator(&["--window", "2s", "--out-of-orderness", "500ms", "--idle-timeout", "3s", "--allowed-lateness", "1m"]);
    aggregator.wait_ready().await;
    // Events in order, each key's on one partition key, for 10 s; the stream splits from 1 shard
    // to 2 after 4 s.
    let mut published = 0u64;
    let began = now();
    let mut split = false;
    while now() - began < 10_000 {
        let at = now();
        let batch = ["user-service", "order-service", "cart-service"]
            .iter()
            .map(|component| (format!("{component}-key"), event(component, "cpu-usage", 1.0, at)))
            .collect::<Vec<_>>();
        published += batch.len() as u64;
        publish(&aws, batch).await;
        if !split && now() - began > 4_000 {
            aws.kinesis
                .update_shard_count()
                .stream_name(&aws.input)
                .target_shard_count(2)
                .scaling_type(ScalingType::UniformScaling)
                .send()
                .await
                .unwrap();
            split = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    aws.wait_active(&aws.input).await;
    let shards = aws.kinesis.list_shards().stream_name(&aws.input).send().await.unwrap();
    assert_eq!(shards.shards().len(), 3, "the parent and its two children");
    aws.wait_for_aggregates(published, &mut aggregator).await;

    // Every emission of a window, by windowId: the first must already hold all of its events.
    let mut emissions: BTreeMap<String, Vec<MetricAggregate>> = BTreeMap::new();
    for data in aws.read_stream(&aws.output).await {
        let aggregate: MetricAggregate = serde_json::from_slice(&data).unwrap();
        emissions.entry(aggregate.window_id.clone()).or_default().push(aggregate);
    }
    let incomplete: Vec<(String, u64, u64)> = emissions
        .values()
        .filter_map(|emitted| {
            let first = emitted.iter().min_by_key(|aggregate| aggregate.revision).unwrap();
            let last = emitted.iter().max_by_key(|aggregate| aggregate.count).unwrap();
            (first.count != last.count).then(|| (format!("{} {}", first.component_name, first.window_start), first.count, last.count))
        })
        .collect();
    assert_eq!(incomplete, [], "windows first emitted with fewer events than they hold (log: {})", aggregator.log.display());
}
