//! The aggregator binary against the AWS emulator: exact aggregates of out-of-order events,
//! several shards, a kill -9 in the middle, and bad records kept as dead letters.

use std::time::Duration;

use crate::support::{Emulator, assert_matches_batch, batch_aggregates};
use metrics_aggregator::generate::{Generator, GeneratorConfig, Metric, PartitionKey, publish};
use metrics_aggregator::kinesis::sink::{KinesisSink, OutputRecord};
use metrics_pipeline_model::event::{EventTime, MetricAggregate, MetricEvent};
use metrics_pipeline_test_support::wait_for;

fn at(text: &str) -> EventTime {
    EventTime::parse_rfc3339(text).unwrap()
}

fn event_json(component: &str, metric: &str, unit: &str, value: f64, timestamp: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "componentName": component, "metricName": metric, "unit": unit, "value": value, "timestamp": timestamp
    }))
    .unwrap()
}

fn records(data: Vec<Vec<u8>>) -> Vec<OutputRecord> {
    data.into_iter().enumerate().map(|(i, data)| OutputRecord { partition_key: format!("key-{i}"), data }).collect()
}

fn generator(components: &[&str], jitter: Duration, step: Duration) -> GeneratorConfig {
    GeneratorConfig {
        components: components.iter().map(|name| name.to_string()).collect(),
        metrics: vec![Metric { name: "cpu-usage".into(), unit: "percent".into() }, Metric { name: "ram-usage".into(), unit: "MB".into() }],
        start: at("2021-09-09T12:00:00Z"),
        step,
        jitter,
        seed: 42,
    }
}

#[tokio::test]
async fn the_classic_check_out_of_order_events_give_exact_aggregates() {
    let aws = Emulator::new("classic", 1).await;
    let published = vec![
        event_json("user-service", "cpu-usage", "percent", 50.0, "2021-09-09T12:00:00.000Z"),
        event_json("order-service", "ram-usage", "MB", 13.0, "2021-09-09T11:00:00.000Z"),
        event_json("user-service", "cpu-usage", "percent", 43.0, "2021-09-09T11:30:00.000Z"),
        event_json("user-service", "ram-usage", "MB", 512.0, "2021-09-09T12:10:00.000Z"),
        event_json("order-service", "cpu-usage", "percent", 20.0, "2021-09-09T12:05:00.000Z"),
        event_json("user-service", "cpu-usage", "percent", 57.0, "2021-09-09T12:30:00.000Z"),
        event_json("order-service", "ram-usage", "MB", 21.0, "2021-09-09T11:45:00.000Z"),
        event_json("order-service", "cpu-usage", "percent", 30.0, "2021-09-09T11:55:00.000Z"),
        event_json("user-service", "ram-usage", "MB", 768.0, "2021-09-09T11:50:00.000Z"),
        event_json("order-service", "ram-usage", "MB", 8.0, "2021-09-09T10:50:00.000Z"),
        event_json("order-service", "cpu-usage", "percent", 10.0, "2021-09-09T12:15:00.000Z"),
    ];
    KinesisSink::new(aws.kinesis.clone(), &aws.input).put_all(records(published)).await;
    // One window over the whole day holds every event above, however out of order; the idle
    // timeout fires it once the burst has been read.
    let mut aggregator = aws.start_aggregator(&["--window", "1d", "--out-of-orderness", "1s", "--idle-timeout", "2s"]);
    let latest = aws.wait_for_aggregates(11, &mut aggregator).await;

    let mut rows: Vec<String> = latest
        .values()
        .map(|a: &MetricAggregate| {
            format!(
                "{} {} {} min={} max={} avg={} count={} from={} to={}",
                a.component_name, a.metric_name, a.unit, a.min_value, a.max_value, a.avg_value, a.count, a.from_timestamp, a.to_timestamp
            )
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            "order-service cpu-usage percent min=10 max=30 avg=20 count=3 from=2021-09-09T11:55:00.000Z to=2021-09-09T12:15:00.000Z",
            "order-service ram-usage MB min=8 max=21 avg=14 count=3 from=2021-09-09T10:50:00.000Z to=2021-09-09T11:45:00.000Z",
            "user-service cpu-usage percent min=43 max=57 avg=50 count=3 from=2021-09-09T11:30:00.000Z to=2021-09-09T12:30:00.000Z",
            "user-service ram-usage MB min=512 max=768 avg=640 count=2 from=2021-09-09T11:50:00.000Z to=2021-09-09T12:10:00.000Z",
        ]
    );
    for aggregate in latest.values() {
        assert_eq!((aggregate.window_start, aggregate.window_end), (at("2021-09-09T00:00:00Z"), at("2021-09-10T00:00:00Z")));
        assert_eq!(aggregate.revision, 0, "nothing arrived after its window fired");
    }
    assert!(aggregator.terminate().success(), "SIGTERM ends the aggregator cleanly");
}

#[tokio::test]
async fn four_shards_carrying_the_same_keys_aggregate_like_a_batch() {
    let aws = Emulator::new("shards", 4).await;
    let mut aggregator = aws.start_aggregator(&["--window", "10s", "--out-of-orderness", "2s", "--idle-timeout", "3s"]);
    aggregator.wait_ready().await;
    let config = generator(&["user-service", "order-service"], Duration::from_secs(2), Duration::from_millis(100));
    let events: Vec<MetricEvent<'static>> = Generator::new(config.clone()).take(4_000).collect();
    let sink = KinesisSink::new(aws.kinesis.clone(), &aws.input);
    let published = publish(&sink, Generator::new(config), PartitionKey::Random, Some(4_000), None, std::future::pending()).await;
    assert_eq!(published, 4_000);

    let latest = aws.wait_for_aggregates(4_000, &mut aggregator).await;
    assert_matches_batch(&latest, &batch_aggregates(&events, Duration::from_secs(10)));
    let (status, metrics) = aggregator.get("/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("aggregator_records_read_total 4000"), "{metrics}");
    assert!(metrics.contains("aggregator_shards 4"), "{metrics}");
}

#[tokio::test]
async fn a_kill_9_and_restart_counts_every_event_exactly_once_after_dedup() {
    let aws = Emulator::new("restart", 2).await;
    let flags = ["--window", "2s", "--out-of-orderness", "1s", "--idle-timeout", "2s", "--checkpoint-interval", "500ms"];
    let mut aggregator = aws.start_aggregator(&flags);
    aggregator.wait_ready().await;
    let config = generator(&["user-service", "order-service", "cart-service"], Duration::from_millis(500), Duration::from_millis(20));
    let events: Vec<MetricEvent<'static>> = Generator::new(config.clone()).take(3_000).collect();
    let sink = KinesisSink::new(aws.kinesis.clone(), &aws.input);
    let publishing = tokio::spawn(async move {
        publish(&sink, Generator::new(config), PartitionKey::Component, Some(3_000), Some(600.0), std::future::pending()).await
    });

    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let before_kill = aws.latest_aggregates().await;
    aggregator.kill_9();
    assert!(!before_kill.is_empty(), "windows fired before the kill");
    let checkpoint = aws.objects("_aggregator/checkpoint.json").await;
    assert_eq!(checkpoint.len(), 1, "a checkpoint was written before the kill");

    let mut aggregator = aws.start_aggregator(&flags);
    assert_eq!(publishing.await.unwrap(), 3_000);
    let latest = aws.wait_for_aggregates(3_000, &mut aggregator).await;
    assert_matches_batch(&latest, &batch_aggregates(&events, Duration::from_secs(2)));
    let (_, metrics) = aggregator.get("/metrics");
    let read_after_restart: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("aggregator_records_read_total "))
        .and_then(|count| count.parse().ok())
        .expect("the records-read counter");
    assert!(read_after_restart < 3_000, "the restart resumed from the checkpoint instead of rereading everything");
    assert!(aggregator.terminate().success(), "SIGTERM ends the aggregator cleanly");
}

#[tokio::test]
async fn bad_records_never_stop_the_stream_and_all_are_kept_as_dead_letters() {
    let aws = Emulator::new("bad", 1).await;
    let good = |value, timestamp| event_json("user-service", "cpu-usage", "percent", value, timestamp);
    let oversized = format!("{{\"pad\":\"{}\"}}", "x".repeat(70 * 1024)).into_bytes();
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("not_json", b"cpu=50 at noon".to_vec()),
        ("missing_value", br#"{"componentName":"user-service","metricName":"cpu-usage","unit":"percent","timestamp":"2021-09-09T12:00:03Z"}"#.to_vec()),
        ("wrong_type_value", br#"{"componentName":"user-service","metricName":"cpu-usage","unit":"percent","value":"50","timestamp":"2021-09-09T12:00:03Z"}"#.to_vec()),
        ("non_finite_value", br#"{"componentName":"user-service","metricName":"cpu-usage","unit":"percent","value":1e999,"timestamp":"2021-09-09T12:00:03Z"}"#.to_vec()),
        ("bad_timestamp", br#"{"componentName":"user-service","metricName":"cpu-usage","unit":"percent","value":5,"timestamp":"yesterday"}"#.to_vec()),
        ("bad_component_name", br#"{"componentName":"user/service","metricName":"cpu-usage","unit":"percent","value":5,"timestamp":"2021-09-09T12:00:03Z"}"#.to_vec()),
        ("oversized", oversized),
        ("not_json", vec![0xff, 0xfe, 0x00]),
    ];
    let mut published = vec![good(10.0, "2021-09-09T12:00:01Z"), good(20.0, "2021-09-09T12:00:02Z")];
    published.extend(bad.iter().map(|(_, data)| data.clone()));
    published.push(good(30.0, "2021-09-09T12:00:40Z"));
    KinesisSink::new(aws.kinesis.clone(), &aws.input).put_all(records(published)).await;

    let flags = ["--window", "10s", "--out-of-orderness", "2s", "--allowed-lateness", "1s", "--idle-timeout", "2s"];
    let mut aggregator = aws.start_aggregator(&flags);
    aws.wait_for_aggregates(3, &mut aggregator).await;
    // An hour behind the watermark the pages before left: beyond the allowed lateness, so not
    // counted but kept.
    let too_late = good(99.0, "2021-09-09T11:00:00Z");
    KinesisSink::new(aws.kinesis.clone(), &aws.input).put_all(records(vec![too_late.clone()])).await;
    let latest = aws.wait_for_aggregates(3, &mut aggregator).await;
    let mut summary: Vec<(i64, u64, f64, f64)> = latest.values().map(|a| (a.window_start.0, a.count, a.min_value, a.max_value)).collect();
    summary.sort_by_key(|row| row.0);
    assert_eq!(summary, [(at("2021-09-09T12:00:00Z").0, 2, 10.0, 20.0), (at("2021-09-09T12:00:40Z").0, 1, 30.0, 30.0)]);

    let kept = wait_for("every bad record kept as a dead letter", Duration::from_secs(20), async || {
        let kept: Vec<serde_json::Value> = aws
            .objects("_aggregator/dead-letters/")
            .await
            .into_values()
            .flat_map(|body| {
                body.split(|byte| *byte == b'\n')
                    .filter(|line| !line.is_empty())
                    .map(|line| serde_json::from_slice::<serde_json::Value>(line).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        if kept.len() > bad.len() { Ok(kept) } else { Err(format!("{} kept", kept.len())) }
    })
    .await
    .unwrap();
    let mut expected: Vec<(String, Vec<u8>)> = bad.iter().map(|(reason, data)| (reason.to_string(), data.clone())).collect();
    expected.push(("too_late".into(), too_late));
    // One object per shard and flush, named by its first sequence number, which moto does not
    // pad to a fixed width as Kinesis does: put the letters in stream order.
    let mut kept = kept;
    kept.sort_by_key(|letter| letter["sequenceNumber"].as_str().unwrap().parse::<u128>().unwrap());
    let actual: Vec<(String, Vec<u8>)> = kept
        .iter()
        .map(|letter| {
            let data = match (letter.get("data"), letter.get("dataBase64")) {
                (Some(text), None) => text.as_str().unwrap().as_bytes().to_vec(),
                (None, Some(encoded)) => aws_smithy_types::base64::decode(encoded.as_str().unwrap()).unwrap(),
                other => panic!("a dead letter holds the record once: {other:?}"),
            };
            (letter["reason"].as_str().unwrap().to_owned(), data)
        })
        .collect();
    assert_eq!(actual, expected, "every bad record kept whole, in order, with its reason");

    let (_, metrics) = aggregator.get("/metrics");
    for line in [
        "aggregator_records_invalid_total{reason=\"not_json\"} 2",
        "aggregator_records_invalid_total{reason=\"oversized\"} 1",
        "aggregator_events_late_total{outcome=\"dead_lettered\"} 1",
        "aggregator_dead_letters_written_total 9",
    ] {
        assert!(metrics.contains(line), "/metrics lacks `{line}`:\n{metrics}");
    }
    assert_eq!(aggregator.get("/healthz").0, 200);
}
