//! The aggregator binary against the AWS emulator under hostile producers and hostile operations:
//! clocks far in the future, a burst out of order (the course's exam), a quiet stream, a stream
//! deleted and re-created, `--initial-position latest` across a crash, a checkpoint started over
//! with Parquet files in the bucket, and a second copy running at the same time.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::{Aggregator, Emulator};
use aws_sdk_kinesis::types::StreamStatus;
use metrics_aggregator::kinesis::sink::{KinesisSink, OutputRecord};
use metrics_pipeline_model::event::{EventTime, MetricAggregate};
use metrics_pipeline_test_support::wait_for;

fn at(text: &str) -> EventTime {
    EventTime::parse_rfc3339(text).unwrap()
}

fn now() -> EventTime {
    EventTime(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64)
}

fn event(component: &str, metric: &str, value: f64, timestamp: EventTime) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "componentName": component, "metricName": metric, "unit": "percent", "value": value, "timestamp": timestamp
    }))
    .unwrap()
}

/// Records with partition keys spread over the shards.
fn records(data: Vec<Vec<u8>>) -> Vec<OutputRecord> {
    data.into_iter().enumerate().map(|(i, data)| OutputRecord { partition_key: format!("key-{i}"), data }).collect()
}

async fn publish(aws: &Emulator, data: Vec<Vec<u8>>) {
    KinesisSink::new(aws.kinesis.clone(), &aws.input).put_all(records(data)).await;
}

/// Every dead letter kept so far: (reason, record as published).
async fn dead_letters(aws: &Emulator) -> Vec<(String, String)> {
    let objects = aws.objects("_aggregator/dead-letters/").await;
    let lines = objects
        .into_values()
        .flat_map(|body| body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect::<Vec<_>>());
    lines
        .map(|line| {
            let letter: serde_json::Value = serde_json::from_slice(&line).unwrap();
            (letter["reason"].as_str().unwrap().to_owned(), letter["data"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

fn counted(latest: &BTreeMap<String, MetricAggregate>) -> u64 {
    latest.values().map(|aggregate| aggregate.count).sum()
}

#[tokio::test]
async fn a_clock_in_the_future_neither_stops_aggregation_nor_moves_the_watermark() {
    let aws = Emulator::new("future", 1).await;
    let mut aggregator = aws.start_aggregator(&["--window", "10s", "--out-of-orderness", "1s", "--idle-timeout", "2s"]);
    aggregator.wait_ready().await;
    let start = now().0;
    let year_9999 = event("user-service", "cpu-usage", 1.0, at("9999-12-31T23:59:59Z"));
    let minutes_ahead = event("user-service", "cpu-usage", 2.0, EventTime(start + 120_000));
    let mut first: Vec<Vec<u8>> = (0..5).map(|i| event("user-service", "cpu-usage", 10.0, EventTime(start - 60_000 + i * 1_000))).collect();
    first.extend([year_9999.clone(), minutes_ahead]);
    publish(&aws, first).await;
    aws.wait_for_aggregates(6, &mut aggregator).await;

    // Events of now, after a record from the year 9999 and one two minutes ahead were read.
    publish(&aws, (0..5).map(|i| event("user-service", "cpu-usage", 20.0, EventTime(start - 20_000 + i * 1_000))).collect()).await;
    let latest = aws.wait_for_aggregates(11, &mut aggregator).await;
    assert_eq!(counted(&latest), 11, "every event within the skew counted once: {latest:?}");
    let letters = dead_letters(&aws).await;
    assert_eq!(letters, [("future_timestamp".to_owned(), String::from_utf8(year_9999).unwrap())], "only the year 9999 is refused");
}

#[tokio::test]
async fn the_exam_out_of_order_events_of_two_services_give_exact_one_minute_aggregates() {
    let aws = Emulator::new("exam", 1).await;
    let user_service =
        [(50.0, "2021-09-09T12:00:00Z"), (43.0, "2021-09-09T11:30:00Z"), (57.0, "2021-09-09T12:30:00Z"), (61.0, "2021-09-09T12:00:30Z")];
    let order_service =
        [(13.0, "2021-09-09T11:00:00Z"), (21.0, "2021-09-09T11:45:00Z"), (8.0, "2021-09-09T10:50:00Z"), (17.0, "2021-09-09T11:00:20Z")];
    // Two producers, each publishing its own events out of order, before the aggregator reads.
    for (component, events) in [("user-service", user_service), ("order-service", order_service)] {
        publish(&aws, events.iter().map(|(value, time)| event(component, "cpu-usage", *value, at(time))).collect()).await;
    }
    // The example's settings (the defaults): 1m windows, 10s out of order, 1m allowed lateness.
    let mut aggregator = aws.start_aggregator(&[]);
    let latest = aws.wait_for_aggregates(8, &mut aggregator).await;
    let mut rows: Vec<String> = latest
        .values()
        .map(|a| {
            format!("{} {} count={} min={} max={} avg={}", a.component_name, a.window_start, a.count, a.min_value, a.max_value, a.avg_value)
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            "order-service 2021-09-09T10:50:00.000Z count=1 min=8 max=8 avg=8",
            "order-service 2021-09-09T11:00:00.000Z count=2 min=13 max=17 avg=15",
            "order-service 2021-09-09T11:45:00.000Z count=1 min=21 max=21 avg=21",
            "user-service 2021-09-09T11:30:00.000Z count=1 min=43 max=43 avg=43",
            "user-service 2021-09-09T12:00:00.000Z count=2 min=50 max=61 avg=55.5",
            "user-service 2021-09-09T12:30:00.000Z count=1 min=57 max=57 avg=57",
        ]
    );
    assert!(dead_letters(&aws).await.is_empty(), "nothing was too late");
}

#[tokio::test]
async fn a_quiet_stream_costs_almost_no_cpu() {
    let aws = Emulator::new("quiet", 2).await;
    let mut aggregator =
        aws.start_aggregator(&["--window", "10s", "--idle-timeout", "2s", "--out-of-orderness", "1s", "--checkpoint-interval", "1s"]);
    aggregator.wait_ready().await;
    publish(&aws, vec![event("user-service", "cpu-usage", 1.0, now())]).await;
    aws.wait_for_aggregates(1, &mut aggregator).await;
    // Past the idle timeout and the checkpoint interval: nothing is due any more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let quiet = Duration::from_secs(5);
    let before = aggregator.cpu_time();
    tokio::time::sleep(quiet).await;
    let used = aggregator.cpu_time() - before;
    println!(
        "CPU time over {quiet:?} of a quiet stream with 2 shards: {used:?} ({:.1} % of a core)",
        used.as_secs_f64() / quiet.as_secs_f64() * 100.0
    );
    assert!(used < quiet / 10, "a quiet stream used {used:?} of CPU in {quiet:?}; its log: {}", aggregator.log.display());
    aggregator.assert_running();
}

#[tokio::test]
async fn a_checkpoint_of_a_deleted_stream_is_not_resumed_on_its_successor() {
    let aws = Emulator::on_kinesis_mock("recreated", 1).await;
    let flags = ["--window", "10s", "--out-of-orderness", "1s", "--idle-timeout", "2s"];
    let old: Vec<Vec<u8>> =
        (0..10).map(|i| event("user-service", "cpu-usage", 1.0, EventTime(at("2021-09-09T12:00:00Z").0 + i * 500))).collect();
    publish(&aws, old).await;
    let mut aggregator = aws.start_aggregator(&flags);
    aws.wait_for_aggregates(10, &mut aggregator).await;
    assert!(aggregator.terminate().success());

    // The pipeline is deleted with `Retain` and created again: same stream name, new stream.
    aws.kinesis.delete_stream().stream_name(&aws.input).send().await.unwrap();
    wait_for("the input stream deleted", Duration::from_secs(10), async || {
        match aws.kinesis.describe_stream_summary().stream_name(&aws.input).send().await {
            Ok(_) => Err("still there".to_owned()),
            Err(_) => Ok(()),
        }
    })
    .await
    .unwrap();
    aws.kinesis.create_stream().stream_name(&aws.input).shard_count(1).send().await.unwrap();
    wait_for("the input stream ACTIVE again", Duration::from_secs(10), async || {
        let described = aws.kinesis.describe_stream_summary().stream_name(&aws.input).send().await.map_err(|e| e.to_string())?;
        let status = described.stream_description_summary().unwrap().stream_status().clone();
        if status == StreamStatus::Active { Ok(()) } else { Err(status.as_str().to_owned()) }
    })
    .await
    .unwrap();
    let new: Vec<Vec<u8>> =
        (0..20).map(|i| event("order-service", "cpu-usage", 2.0, EventTime(at("2021-09-09T13:00:00Z").0 + i * 500))).collect();
    publish(&aws, new).await;

    let mut aggregator = aws.start_aggregator(&flags);
    let latest = aws.wait_for_aggregates(30, &mut aggregator).await;
    let new_stream: u64 = latest.values().filter(|a| a.component_name == "order-service").map(|a| a.count).sum();
    assert_eq!(new_stream, 20, "every record of the new stream, from its start");
    aggregator.wait_ready().await;
    let (_, metrics) = aggregator.get("/metrics");
    assert!(metrics.contains("aggregator_checkpoints_discarded_total{reason=\"stream_recreated\"} 1"), "{metrics}");
}

#[tokio::test]
async fn initial_position_latest_holds_across_a_crash_and_for_quiet_shards() {
    let aws = Emulator::new("latest", 2).await;
    let flags = [
        "--initial-position",
        "latest",
        "--window",
        "10s",
        "--out-of-orderness",
        "1s",
        "--idle-timeout",
        "2s",
        "--checkpoint-interval",
        "500ms",
    ];
    // History on both shards, stamped after what follows so that reading it would count it.
    let history: Vec<Vec<u8>> =
        (0..20).map(|i| event("old-service", "cpu-usage", 1.0, EventTime(at("2021-09-09T13:00:00Z").0 + i * 100))).collect();
    publish(&aws, history).await;

    let mut aggregator = aws.start_aggregator(&flags);
    aggregator.wait_ready().await;
    aggregator.kill_9();
    // Published while no aggregator runs, on one shard only: the other stays quiet.
    let fresh = |i: i64| OutputRecord {
        partition_key: "one-shard".into(),
        data: event("new-service", "cpu-usage", 2.0, EventTime(at("2021-09-09T12:00:00Z").0 + i * 100)),
    };
    KinesisSink::new(aws.kinesis.clone(), &aws.input).put_all((0..10).map(fresh).collect()).await;

    let mut aggregator = aws.start_aggregator(&flags);
    let latest = aws.wait_for_aggregates(10, &mut aggregator).await;
    assert!(latest.values().all(|a| a.component_name == "new-service"), "history was read: {latest:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    aggregator.kill_9();
    KinesisSink::new(aws.kinesis.clone(), &aws.input).put_all((10..20).map(fresh).collect()).await;
    let mut aggregator = aws.start_aggregator(&flags);
    let latest = aws.wait_for_aggregates(20, &mut aggregator).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let latest_after = aws.latest_aggregates().await;
    assert_eq!(counted(&latest_after), 20, "exactly the records published since the first start: {latest:?}");
    assert!(latest_after.values().all(|a| a.component_name == "new-service"), "the quiet shard's history was read: {latest_after:?}");
}

#[tokio::test]
async fn a_checkpoint_started_over_never_overwrites_earlier_parquet_files() {
    let aws = Emulator::new("parquet-names", 1).await;
    let flags =
        ["--window", "10s", "--out-of-orderness", "1s", "--idle-timeout", "2s", "--parquet", "snappy", "--parquet-roll-interval", "1s"];
    let batch = |hour: &str, component: &str| -> Vec<Vec<u8>> {
        (0..20).map(|i| event(component, "cpu-usage", i as f64, EventTime(at(hour).0 + i * 1_000))).collect()
    };
    publish(&aws, batch("2021-09-09T12:00:00Z", "user-service")).await;
    let mut aggregator = aws.start_aggregator(&flags);
    aws.wait_for_aggregates(20, &mut aggregator).await;
    assert!(aggregator.terminate().success());
    let first_run = aws.objects("componentName=").await;
    assert!(!first_run.is_empty());

    // The documented recovery from an unreadable checkpoint: move it away and start over.
    aws.s3.delete_object().bucket(&aws.bucket).key("_aggregator/checkpoint.json").send().await.unwrap();
    publish(&aws, batch("2021-09-09T13:00:00Z", "user-service")).await;
    let mut aggregator = aws.start_aggregator(&flags);
    aws.wait_for_aggregates(40, &mut aggregator).await;
    assert!(aggregator.terminate().success());
    let second_run = aws.objects("componentName=").await;
    for (key, body) in &first_run {
        assert!(second_run.get(key) == Some(body), "{key} was overwritten by the run that started over");
    }
    assert!(second_run.len() > first_run.len(), "the second run wrote files of its own");
}

/// Starts a copy of the aggregator that holds the checkpoint as `identity`.
fn copy(aws: &Emulator, identity: &str) -> Aggregator {
    let flags = ["--window", "10s", "--out-of-orderness", "1s", "--idle-timeout", "2s", "--checkpoint-interval", "500ms"];
    aws.start_aggregator_with_env(&flags, &[("AGGREGATOR_HOLDER_IDENTITY", identity), ("AGGREGATOR_LEASE_DURATION", "3s")])
}

#[tokio::test]
async fn a_second_copy_waits_and_a_copy_that_lost_the_checkpoint_stops() {
    let aws = Emulator::new("fenced", 2).await;
    let batch = |hour: &str| -> Vec<Vec<u8>> {
        (0..40).map(|i| event("user-service", "cpu-usage", i as f64, EventTime(at(hour).0 + i * 250))).collect()
    };
    let mut first = copy(&aws, "pod-a");
    first.wait_ready().await;
    publish(&aws, batch("2021-09-09T12:00:00Z")).await;
    aws.wait_for_aggregates(40, &mut first).await;

    let mut second = copy(&aws, "pod-b");
    wait_for("the second copy to become ready", Duration::from_secs(8), async || {
        second.assert_running();
        match second.get("/readyz") {
            (200, _) => Ok(()),
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await
    .expect_err("a second copy must not run while the first holds the checkpoint");

    // The first copy stalls (a node partition, a long pause): its lease lapses, the second takes over.
    first.signal("STOP");
    second.wait_ready().await;
    publish(&aws, batch("2021-09-09T13:00:00Z")).await;
    let latest = aws.wait_for_aggregates(80, &mut second).await;
    first.signal("CONT");
    let status = first.exited_within(Duration::from_secs(20)).await.expect("the first copy stops once it finds the checkpoint taken");
    assert!(!status.success(), "it stops with an error");
    let log = std::fs::read_to_string(&first.log).unwrap();
    assert!(log.contains("pod-b"), "the first copy says who holds the checkpoint now: {}", first.log.display());

    tokio::time::sleep(Duration::from_secs(2)).await;
    second.assert_running();
    let checkpoint: serde_json::Value =
        serde_json::from_slice(&aws.objects("_aggregator/checkpoint.json").await["_aggregator/checkpoint.json"]).unwrap();
    assert_eq!(checkpoint["lease"]["holder"], "pod-b", "the fenced copy wrote no checkpoint after it was fenced");
    assert_eq!(counted(&aws.latest_aggregates().await), 80, "every event counted once after dedup: {latest:?}");
}

const CHECKPOINT: &str = "_aggregator/checkpoint.json";

async fn stored_checkpoint(aws: &Emulator) -> serde_json::Value {
    serde_json::from_slice(&aws.objects(CHECKPOINT).await[CHECKPOINT]).unwrap()
}

async fn store_checkpoint(aws: &Emulator, checkpoint: &serde_json::Value) {
    let body = serde_json::to_vec(checkpoint).unwrap();
    aws.s3.put_object().bucket(&aws.bucket).key(CHECKPOINT).body(body.into()).send().await.unwrap();
}

#[tokio::test]
async fn a_copy_that_lost_the_checkpoint_publishes_nothing() {
    let aws = Emulator::new("fenced-output", 1).await;
    // Nothing but the flush of fired windows writes the checkpoint in this test.
    let flags = ["--window", "10s", "--out-of-orderness", "1s", "--idle-timeout", "2s", "--checkpoint-interval", "10m"];
    let mut copy = aws.start_aggregator(&[&flags[..], &["--lease-duration", "10m", "--holder-identity", "pod-a"]].concat());
    copy.wait_ready().await;
    copy.signal("STOP");
    // Another copy takes the checkpoint over while this one is paused (its lease lapsed).
    let mut checkpoint = stored_checkpoint(&aws).await;
    checkpoint["lease"]["holder"] = "pod-b".into();
    store_checkpoint(&aws, &checkpoint).await;
    let start = (now().0 - 60_000).div_euclid(10_000) * 10_000;
    publish(&aws, (0..5).map(|i| event("user-service", "cpu-usage", 1.0, EventTime(start + i * 100))).collect()).await;
    copy.signal("CONT");
    let status = copy.exited_within(Duration::from_secs(30)).await.expect("the copy stops once it finds the checkpoint taken");
    assert!(!status.success(), "it stops with an error");
    assert_eq!(
        aws.read_stream(&aws.output).await,
        Vec::<Vec<u8>>::new(),
        "the fenced copy sent the window it fired (log: {})",
        copy.log.display()
    );
}

#[tokio::test]
async fn aggregates_committed_before_a_stop_are_sent_again_byte_for_byte_before_anything_is_read() {
    let aws = Emulator::new("unpublished", 1).await;
    let mut copy = aws.start_aggregator(&[]);
    copy.wait_ready().await;
    assert!(copy.terminate().success());
    // The stop came between the checkpoint and PutRecords: the checkpoint holds the aggregate.
    let aggregate = r#"{"componentName":"user-service","metricName":"cpu-usage","unit":"percent","minValue":0.1,"maxValue":0.30000000000000004,"avgValue":0.2,"count":2,"sum":0.4,"fromTimestamp":"2021-09-09T12:00:00.000Z","toTimestamp":"2021-09-09T12:00:01.000Z","windowStart":"2021-09-09T12:00:00.000Z","windowEnd":"2021-09-09T12:01:00.000Z","windowId":"0123456789abcdef0123456789abcdef","revision":0}"#;
    let mut checkpoint = stored_checkpoint(&aws).await;
    checkpoint["unpublished"] = serde_json::json!([{"partitionKey": "0123456789abcdef0123456789abcdef", "data": aggregate}]);
    store_checkpoint(&aws, &checkpoint).await;
    let mut copy = aws.start_aggregator(&["--checkpoint-interval", "500ms"]);
    copy.wait_ready().await;
    let sent = wait_for("the committed aggregate sent", Duration::from_secs(20), async || {
        let sent = aws.read_stream(&aws.output).await;
        if sent.is_empty() { Err("nothing yet".to_owned()) } else { Ok(sent) }
    })
    .await
    .unwrap();
    assert_eq!(sent, [aggregate.as_bytes().to_vec()], "byte for byte (log: {})", copy.log.display());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(stored_checkpoint(&aws).await.get("unpublished").is_none(), "the next checkpoint no longer holds it");
}

#[tokio::test]
async fn an_output_that_refuses_everything_shows_in_readiness_and_metrics_and_sigterm_keeps_the_aggregates() {
    let aws = Emulator::on_kinesis_mock("refused", 1).await;
    let flags = ["--window", "10s", "--out-of-orderness", "1s", "--idle-timeout", "2s"];
    let mut copy = aws.start_aggregator(&flags);
    copy.wait_ready().await;
    // The output stream is deleted under it (a wrong name, a missing permission: no retry cures it).
    aws.kinesis.delete_stream().stream_name(&aws.output).send().await.unwrap();
    let start = (now().0 - 60_000).div_euclid(10_000) * 10_000;
    publish(&aws, (0..5).map(|i| event("user-service", "cpu-usage", 1.0, EventTime(start + i * 100))).collect()).await;
    let (status, reason) = wait_for("readiness to say the output refuses", Duration::from_secs(30), async || match copy.get("/readyz") {
        (503, body) if body.contains("output stream refuses") => Ok((503, body)),
        (status, body) => Err(format!("{status} {body}")),
    })
    .await
    .unwrap();
    assert!(reason.contains("ResourceNotFoundException"), "{status} {reason}");
    let metrics = copy.get("/metrics").1;
    assert!(metrics.contains(r#"aggregator_put_records_refused_total{code="ResourceNotFoundException"}"#), "{metrics}");
    assert_eq!(copy.get("/healthz").0, 200, "retrying is not a hang");

    let stopped = std::time::Instant::now();
    assert!(copy.terminate().success(), "SIGTERM is seen while the output refuses");
    assert!(stopped.elapsed() < Duration::from_secs(10), "promptly: {:?}", stopped.elapsed());
    let unpublished = stored_checkpoint(&aws).await["unpublished"].clone();
    assert_eq!(unpublished.as_array().map(Vec::len), Some(1), "the checkpoint keeps the aggregate: {unpublished}");

    aws.kinesis.create_stream().stream_name(&aws.output).shard_count(1).send().await.unwrap();
    aws.wait_active(&aws.output).await;
    let mut copy = aws.start_aggregator(&flags);
    let latest = aws.wait_for_aggregates(5, &mut copy).await;
    assert_eq!(latest.len(), 1, "{latest:?}");
}
