//! The README's quickstart as a test: the operator process provisions the example pipeline,
//! the node runs the aggregator Deployment it wrote as a pod of this checkout's image, generated
//! out-of-order metrics go in, and the Glue table returns, per component, exactly the windows a
//! batch computation over the same events gives; the pod's log is readable through the API. The same for both Parquet paths: Firehose's conversion, and the
//! aggregator's own Parquet files.

use std::collections::BTreeMap;

use metrics_pipeline_api::MetricsPipeline;
use metrics_pipeline_api::pipeline::{Compression, DeliveryFormat, DeliveryWriter};
use metrics_pipeline_e2e::quickstart::{self, COMPONENTS};
use metrics_pipeline_e2e::{TestNamespace, kube_client};
use metrics_pipeline_model::event::{EventTime, MetricAggregate};

/// (metric, unit, window start) → (min, max, count, first time, last time), over one-minute windows.
type Expected = BTreeMap<(String, String, i64), (f64, f64, u64, i64, i64)>;

#[tokio::test]
async fn the_quickstart_turns_generated_metrics_into_the_aggregates_athena_reads() {
    run_and_check(quickstart::example().unwrap()).await;
}

#[tokio::test]
async fn parquet_converted_by_firehose_reads_back_the_same_windows() {
    let mut pipeline = quickstart::example().unwrap();
    pipeline.spec.delivery.format = DeliveryFormat::Parquet;
    pipeline.spec.delivery.compression = Compression::Snappy;
    run_and_check(pipeline).await;
}

#[tokio::test]
async fn parquet_written_by_the_aggregator_reads_back_the_same_windows() {
    let mut pipeline = quickstart::example().unwrap();
    pipeline.spec.delivery.format = DeliveryFormat::Parquet;
    pipeline.spec.delivery.writer = DeliveryWriter::Aggregator;
    run_and_check(pipeline).await;
}

/// Runs `pipeline` as the quickstart does and checks every window of the table.
async fn run_and_check(pipeline: MetricsPipeline) {
    let client = kube_client().await.unwrap();
    let namespace = TestNamespace::create(&client, "quickstart").await.unwrap();
    let log_dir = std::env::temp_dir().join(format!("metrics-pipeline-{}", namespace.name));
    let outcome = quickstart::run(&client, &namespace.name, &pipeline, &log_dir, &|line| println!("{line}")).await.unwrap();

    let mut expected: BTreeMap<String, Expected> = BTreeMap::new();
    for event in &outcome.events {
        let window = event.timestamp.0.div_euclid(60_000) * 60_000;
        let key = (event.metric_name.to_string(), event.unit.to_string(), window);
        let (value, time) = (event.value, event.timestamp.0);
        expected
            .entry(event.component_name.to_string())
            .or_default()
            .entry(key)
            .and_modify(|(min, max, count, first, last)| {
                *min = min.min(value);
                *max = max.max(value);
                *count += 1;
                *first = (*first).min(time);
                *last = (*last).max(time);
            })
            .or_insert((value, value, 1, time, time));
    }
    let actual = |rows: &[MetricAggregate]| -> Expected {
        rows.iter()
            .map(|r| {
                (
                    (r.metric_name.clone(), r.unit.clone(), r.window_start.0),
                    (r.min_value, r.max_value, r.count, r.from_timestamp.0, r.to_timestamp.0),
                )
            })
            .collect()
    };
    for component in COMPONENTS {
        let rows = &outcome.rows[component];
        assert!(rows.iter().all(|row| row.component_name == component), "the partition holds only {component}");
        assert!(rows.iter().all(|row| row.window_end == EventTime(row.window_start.0 + 60_000)), "one-minute windows");
        assert_eq!(actual(rows), expected[component], "{component}: every window as a batch computation gives it");
    }
    assert_eq!(outcome.events.len(), 720);
    assert!(outcome.aggregator_log.contains("consuming"), "the aggregator's log through the API server: {}", outcome.aggregator_log);
    namespace.delete().await.unwrap();
}
