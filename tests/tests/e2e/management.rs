//! Management policies, as an operator of a stack would use them: observing what exists and what
//! the spec would change without a single mutating AWS call (counted by the operator's own AWS
//! metrics), bringing it to the spec once allowed, never deleting under `NoDelete`, and a pause
//! that stops every reconcile until the annotation goes.

use aws_sdk_kinesis::types::StreamSummary;
use kube::api::{Patch, PatchParams};
use metrics_pipeline_api::MetricsPipeline;
use metrics_pipeline_api::pipeline::{ManagementPolicy, PAUSED_ANNOTATION, Phase};
use metrics_pipeline_e2e::emulator_sdk;
use metrics_pipeline_e2e::in_process::{
    OperatorTest, condition, delete_and_wait, everything_named, example_named, quick_settings, ready_at,
};

/// The smallest pipeline, its aggregator paused (no pod to wait for), under `policy`.
fn managed(name: &str, policy: ManagementPolicy) -> MetricsPipeline {
    let mut pipeline = example_named("minimal.yaml", name);
    pipeline.spec.aggregator.replicas = 0;
    pipeline.spec.management_policy = policy;
    pipeline
}

async fn retention_hours(stream: &str) -> i32 {
    let kinesis = aws_sdk_kinesis::Client::new(&emulator_sdk().await);
    let summary = kinesis.describe_stream_summary().stream_name(stream).send().await.unwrap().stream_description_summary.unwrap();
    summary.retention_period_hours
}

#[tokio::test]
async fn observe_only_reports_every_difference_and_changes_nothing_until_allowed_and_no_delete_keeps_everything() {
    let test = OperatorTest::start_with("mgmt-observe", None, quick_settings()).await;
    let prefix = test.aws_prefix("watched");

    // Nothing there yet: every part is reported missing, and nothing is made.
    test.apply(&managed("watched", ManagementPolicy::ObserveOnly)).await;
    let status = test.wait_for("watched", "Observing", |s| s.phase == Some(Phase::Observing)).await;
    let missing: Vec<&str> =
        status.drift.iter().filter(|line| line.ends_with(": missing (would be created)")).map(String::as_str).collect();
    assert_eq!(missing.len(), 7, "streams, bucket, database, table, role and delivery stream: {:#?}", status.drift);
    assert_eq!(condition(&status, "Ready").map(|(ready, reason, _)| (ready, reason)), Some(("False", "Drift")));
    assert_eq!(test.operator().mutating_calls(), Vec::<String>::new(), "observing makes nothing");
    assert_eq!(everything_named(&prefix).await, Vec::<String>::new());

    // Allowed to manage, the operator makes the pipeline.
    test.apply(&managed("watched", ManagementPolicy::Full)).await;
    let status = test.ready("watched").await;
    let bucket = status.bucket.unwrap().name;

    // Observed only from now on (once that is in force, nothing repairs the bucket), someone
    // opens the bucket by hand and the spec asks for more retention.
    let mut observed = managed("watched", ManagementPolicy::ObserveOnly);
    test.apply(&observed).await;
    test.wait_for("watched", "Observing", |s| s.phase == Some(Phase::Observing) && s.observed_generation == Some(3)).await;
    let s3 = aws_sdk_s3::Client::new(&emulator_sdk().await);
    let mutating_before = test.operator().mutating_calls();
    s3.delete_public_access_block().bucket(&bucket).send().await.unwrap();
    observed.spec.streams.input.retention_hours = 48;
    test.apply(&observed).await;
    let status =
        test.wait_for("watched", "the drift of both", |s| s.phase == Some(Phase::Observing) && s.observed_generation == Some(4)).await;
    assert_eq!(
        status.drift,
        [
            format!("Kinesis stream {prefix}-input: retention is 24 hours, the spec asks 48 (retentionHours)"),
            format!("S3 bucket {bucket}: public access is not blocked in all four ways (the operator blocks it)"),
        ]
    );
    assert_eq!(test.operator().mutating_calls(), mutating_before, "observing changes nothing");
    assert_eq!(retention_hours(&format!("{prefix}-input")).await, 24);

    // NoDelete brings both to the spec (creating and changing is allowed), and then keeps every
    // AWS resource when the pipeline is deleted.
    let mut kept = observed.clone();
    kept.spec.management_policy = ManagementPolicy::NoDelete;
    test.apply(&kept).await;
    test.wait_for("watched", "Ready under NoDelete", |s| ready_at(s, 5)).await;
    assert_eq!(retention_hours(&format!("{prefix}-input")).await, 48);
    s3.get_public_access_block().bucket(&bucket).send().await.expect("blocked again");
    delete_and_wait(&test.pipelines, "watched").await;
    let left = everything_named(&prefix).await;
    let kinesis = aws_sdk_kinesis::Client::new(&emulator_sdk().await);
    let streams = kinesis.list_streams().send().await.unwrap();
    let names: Vec<&str> = streams.stream_summaries().iter().map(StreamSummary::stream_name).collect();
    assert!(names.contains(&format!("{prefix}-input").as_str()) && names.contains(&format!("{prefix}-output").as_str()), "{left:#?}");
    assert!(left.iter().any(|found| found.contains(&bucket)), "the bucket stays: {left:#?}");
    assert!(!test.operator().mutating_calls().iter().any(|call| call.contains(".Delete")), "{:#?}", test.operator().mutating_calls());
    test.finish().await;
}

#[tokio::test]
async fn a_paused_pipeline_is_not_reconciled_until_the_annotation_goes() {
    let test = OperatorTest::start_with("mgmt-pause", None, quick_settings()).await;
    let stream = format!("{}-input", test.aws_prefix("held"));
    test.apply(&managed("held", ManagementPolicy::Full)).await;
    test.ready("held").await;

    let annotate = |value: Option<&str>| {
        let patch = serde_json::json!({"metadata": {"annotations": {PAUSED_ANNOTATION: value}}});
        let pipelines = test.pipelines.clone();
        async move { pipelines.patch("held", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap() }
    };
    annotate(Some("true")).await;
    test.wait_for("held", "Paused", |s| s.phase == Some(Phase::Paused)).await;
    let calls = test.operator().total_calls();

    // A spec change is seen (the status names its generation) and not acted on.
    let mut more = managed("held", ManagementPolicy::Full);
    more.spec.streams.input.retention_hours = 48;
    test.apply(&more).await;
    let status =
        test.wait_for("held", "Paused at generation 2", |s| s.phase == Some(Phase::Paused) && s.observed_generation == Some(2)).await;
    let (_, reason, message) = condition(&status, "Ready").unwrap();
    assert_eq!(reason, "Paused", "{message}");
    assert_eq!(test.operator().total_calls(), calls, "no AWS call while paused");
    assert_eq!(retention_hours(&stream).await, 24);

    annotate(None).await;
    test.wait_for("held", "Ready again", |s| s.phase == Some(Phase::Ready)).await;
    assert_eq!(retention_hours(&stream).await, 48, "the change waited for the pause to end");
    test.delete_and_check("held").await;
    test.finish().await;
}
