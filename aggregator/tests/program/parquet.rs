//! The direct Parquet sink against the AWS emulator: after a kill -9 mid-stream and a restart,
//! every window is in exactly one Parquet row, the rows equal a batch computation, the checkpoint
//! never carried the rows, and no staged rows are left behind.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{Emulator, assert_matches_batch, batch_aggregates};
use metrics_aggregator::generate::{Generator, GeneratorConfig, Metric, PartitionKey, publish};
use metrics_aggregator::kinesis::sink::KinesisSink;
use metrics_aggregator::s3::parquet_files::decode;
use metrics_pipeline_model::event::{EventTime, MetricAggregate, MetricEvent};

#[tokio::test]
async fn a_kill_9_mid_stream_leaves_every_window_in_exactly_one_parquet_row() {
    let aws = Emulator::new("parquet", 2).await;
    let flags = [
        "--window",
        "2s",
        "--out-of-orderness",
        "1s",
        "--idle-timeout",
        "2s",
        "--checkpoint-interval",
        "500ms",
        "--parquet",
        "snappy",
        "--parquet-roll-interval",
        "1s",
    ];
    let mut aggregator = aws.start_aggregator(&flags);
    aggregator.wait_ready().await;
    let config = GeneratorConfig {
        components: ["user-service", "order-service", "cart-service"].map(str::to_owned).to_vec(),
        metrics: vec![Metric { name: "cpu-usage".into(), unit: "percent".into() }, Metric { name: "ram-usage".into(), unit: "MB".into() }],
        start: EventTime::parse_rfc3339("2021-09-09T12:00:00Z").unwrap(),
        step: Duration::from_millis(20),
        jitter: Duration::from_millis(500),
        seed: 42,
    };
    let events: Vec<MetricEvent<'static>> = Generator::new(config.clone()).take(3_000).collect();
    let sink = KinesisSink::new(aws.kinesis.clone(), &aws.input);
    let publishing = tokio::spawn(async move {
        publish(&sink, Generator::new(config), PartitionKey::Component, Some(3_000), Some(600.0), std::future::pending()).await
    });

    tokio::time::sleep(Duration::from_millis(3_000)).await;
    aggregator.kill_9();
    assert!(!parquet_files(&aws).await.is_empty(), "files were written before the kill");
    let checkpoint: serde_json::Value =
        serde_json::from_slice(&aws.objects("_aggregator/checkpoint.json").await.into_values().next().unwrap()).unwrap();
    let files = checkpoint["files"].as_object().expect("the checkpoint keeps the sink's state");
    assert!(
        files.get("inProgress").is_none() && files.get("committing").is_none_or(|roll| roll.get("rows").is_none()),
        "rows waiting for their roll are staged, not in the checkpoint: {files:?}"
    );

    let mut aggregator = aws.start_aggregator(&flags);
    assert_eq!(publishing.await.unwrap(), 3_000);
    aws.wait_for_aggregates(3_000, &mut aggregator).await;
    assert!(aggregator.terminate().success(), "SIGTERM rolls what is left and ends cleanly");
    let staged = aws.objects("_aggregator/parquet-staging/").await;
    assert!(staged.is_empty(), "staged rows are deleted once rolled, and the kill's leftovers by the next start: {:?}", staged.keys());

    let files = parquet_files(&aws).await;
    let mut rows: Vec<MetricAggregate> = Vec::new();
    for (key, body) in files {
        let component = key.strip_prefix("componentName=").and_then(|rest| rest.split_once('/')).unwrap().0.to_owned();
        rows.extend(decode(body, &component).unwrap());
    }
    let mut by_window: BTreeMap<String, MetricAggregate> = BTreeMap::new();
    for row in rows {
        let id = row.window_id.clone();
        assert!(by_window.insert(id.clone(), row).is_none(), "window {id} is in more than one row");
    }
    assert_matches_batch(&by_window, &batch_aggregates(&events, Duration::from_secs(2)));
}

/// Every Parquet object under `componentName=` prefixes.
async fn parquet_files(aws: &Emulator) -> BTreeMap<String, Vec<u8>> {
    aws.objects("componentName=").await.into_iter().filter(|(key, _)| key.ends_with(".parquet")).collect()
}
