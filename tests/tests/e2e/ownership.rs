//! What a pipeline owns in AWS is proved by the resources' own tags (its namespace and name, its
//! UID and its cluster's identity), never by its status: two clusters sharing an account never
//! touch each other's resources, a pipeline created again takes over what an earlier one kept
//! only when asked (one deleted with `Orphan` left all of them for it), a status writer cannot
//! hand the operator a bucket, and of two pipelines that name one bucket at once exactly one gets it.

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use kube::api::{Patch, PatchParams};
use metrics_pipeline_api::MetricsPipeline;
use metrics_pipeline_api::naming::{CLUSTER_TAG, OWNER_TAG, PIPELINE_UID_TAG};
use metrics_pipeline_api::pipeline::{AdoptFrom, DeletionPolicy, Phase};
use metrics_pipeline_aws_proxy::{AwsProxy, FaultSettings, ProxySettings, emulator_url};
use metrics_pipeline_e2e::emulator_sdk;
use metrics_pipeline_e2e::in_process::{OperatorTest, condition, delete_and_wait, everything_named, example_named, quick_settings};
use metrics_pipeline_runtime::sdk::s3_client;

/// The smallest pipeline, its aggregator paused (no pod to wait for).
fn paused(name: &str) -> MetricsPipeline {
    let mut pipeline = example_named("minimal.yaml", name);
    pipeline.spec.aggregator.replicas = 0;
    pipeline
}

async fn s3() -> aws_sdk_s3::Client {
    s3_client(&emulator_sdk().await)
}

/// The bucket's tags, by key.
async fn bucket_tags(bucket: &str) -> std::collections::BTreeMap<String, String> {
    let tagging = s3().await.get_bucket_tagging().bucket(bucket).send().await.unwrap();
    tagging.tag_set().iter().map(|tag| (tag.key().to_owned(), tag.value().to_owned())).collect()
}

async fn failed_not_owned(test: &OperatorTest, name: &str) -> String {
    let status = test.wait_for(name, "Failed (NotOwned)", |s| s.phase == Some(Phase::Failed)).await;
    let (_, reason, message) = condition(&status, "Ready").unwrap();
    assert_eq!(reason, "NotOwned", "{message}");
    message.to_owned()
}

#[tokio::test]
async fn two_clusters_sharing_an_account_never_touch_each_others_resources() {
    let mut test = OperatorTest::prepare("own-clusters", None, quick_settings()).await;
    test.cluster = Some("blue".into());
    test.start_operator().await;
    test.apply(&paused("shared")).await;
    let status = test.ready("shared").await;
    let bucket = status.bucket.unwrap().name;
    let tags = bucket_tags(&bucket).await;
    assert_eq!((tags[CLUSTER_TAG].as_str(), tags[OWNER_TAG].as_str()), ("blue", format!("{}/shared", test.namespace.name).as_str()));
    let blue_uid = test.pipelines.get("shared").await.unwrap().metadata.uid.unwrap();
    assert_eq!(tags[PIPELINE_UID_TAG], blue_uid);

    // The same namespace and name in another cluster (here: the same pipeline, seen by an
    // operator with another cluster identity) finds every resource blue's.
    test.stop_operator().await;
    test.cluster = Some("green".into());
    test.start_operator().await;
    let message = failed_not_owned(&test, "shared").await;
    assert!(message.contains("of cluster blue made it"), "{message}");
    assert_eq!(test.operator().mutating_calls(), Vec::<String>::new(), "green changes nothing of blue's");
    delete_and_wait(&test.pipelines, "shared").await;
    let left = everything_named(&test.aws_prefix("shared")).await;
    assert_eq!(left.len(), 6, "green's deletion leaves all of blue's resources: {left:?}");

    // Blue takes them over again by the UID that made them (its pipeline is gone), then deletes them.
    test.stop_operator().await;
    test.cluster = Some("blue".into());
    test.start_operator().await;
    let mut again = paused("shared");
    again.spec.adopt_from = Some(AdoptFrom { pipeline_uid: blue_uid });
    test.apply(&again).await;
    test.ready("shared").await;
    test.delete_and_check("shared").await;
    test.finish().await;
}

#[tokio::test]
async fn a_pipeline_created_again_takes_over_its_retained_bucket_only_when_asked() {
    let test = OperatorTest::start("own-again", None, Duration::from_secs(60)).await;
    let mut retained = paused("again");
    retained.spec.deletion_policy = DeletionPolicy::Retain;
    test.apply(&retained).await;
    let bucket = test.ready("again").await.bucket.unwrap().name;
    let s3 = s3().await;
    s3.put_object().bucket(&bucket).key("componentName=a/old.json").body(ByteStream::from_static(b"{}\n")).send().await.unwrap();
    let earlier = test.pipelines.get("again").await.unwrap().metadata.uid.unwrap();
    delete_and_wait(&test.pipelines, "again").await;

    // Created again under the same name, it is another pipeline: the bucket and the catalog are
    // the earlier one's until the spec says to take them over.
    test.apply(&paused("again")).await;
    let message = failed_not_owned(&test, "again").await;
    assert!(message.contains(&format!("set spec.adoptFrom.pipelineUid to {earlier}")), "{message}");

    let mut adopting = paused("again");
    adopting.spec.adopt_from = Some(AdoptFrom { pipeline_uid: earlier });
    test.apply(&adopting).await;
    test.ready("again").await;
    let uid = test.pipelines.get("again").await.unwrap().metadata.uid.unwrap();
    assert_eq!(bucket_tags(&bucket).await[PIPELINE_UID_TAG], uid, "the bucket is the new pipeline's now");
    s3.head_object().bucket(&bucket).key("componentName=a/old.json").send().await.expect("the data stays");
    test.delete_and_check("again").await;
    test.finish().await;
}

#[tokio::test]
async fn orphan_leaves_every_aws_resource_for_a_new_pipeline_to_adopt() {
    let test = OperatorTest::start("own-orphan", None, Duration::from_secs(60)).await;
    let mut orphaned = paused("orphan");
    orphaned.spec.deletion_policy = DeletionPolicy::Orphan;
    test.apply(&orphaned).await;
    test.ready("orphan").await;
    let earlier = test.pipelines.get("orphan").await.unwrap().metadata.uid.unwrap();
    let mut made = everything_named(&test.aws_prefix("orphan")).await;
    made.sort();
    assert_eq!(made.len(), 6, "two streams, bucket, role, delivery stream, database (with its table): {made:?}");

    delete_and_wait(&test.pipelines, "orphan").await;
    let mut left = everything_named(&test.aws_prefix("orphan")).await;
    left.sort();
    assert_eq!(left, made, "Orphan leaves everything in AWS");

    let mut adopting = paused("orphan");
    adopting.spec.adopt_from = Some(AdoptFrom { pipeline_uid: earlier });
    test.apply(&adopting).await;
    test.ready("orphan").await;
    test.delete_and_check("orphan").await;
    test.finish().await;
}

#[tokio::test]
async fn a_status_writer_cannot_make_the_operator_take_a_bucket() {
    let test = OperatorTest::start("own-status", None, Duration::from_secs(60)).await;
    let s3 = s3().await;
    let foreign = format!("{}-foreign", test.namespace.name);
    let location = CreateBucketConfiguration::builder().location_constraint(BucketLocationConstraint::EuWest1).build();
    s3.create_bucket().bucket(&foreign).create_bucket_configuration(location).send().await.unwrap();
    s3.put_object().bucket(&foreign).key("theirs.json").body(ByteStream::from_static(b"{}\n")).send().await.unwrap();
    let mut pipeline = paused("status");
    pipeline.spec.delivery.bucket_name = Some(foreign.clone());
    test.apply(&pipeline).await;
    failed_not_owned(&test, "status").await;

    // Someone allowed to write the status claims the bucket as being created by the pipeline
    // (what older operators trusted), and a spec change makes the operator look again.
    let claim = serde_json::json!({"status": {"creating": [format!("arn:aws:s3:::{foreign}")]}});
    test.pipelines.patch_status("status", &PatchParams::default(), &Patch::Merge(claim)).await.unwrap();
    pipeline.spec.delivery.buffer_interval_seconds = 90;
    test.apply(&pipeline).await;
    test.wait_for("status", "the change seen", |s| s.observed_generation == Some(2)).await;
    failed_not_owned(&test, "status").await;
    assert!(s3.get_bucket_tagging().bucket(&foreign).send().await.is_err(), "the foreign bucket stays untagged");

    delete_and_wait(&test.pipelines, "status").await;
    s3.head_object().bucket(&foreign).key("theirs.json").send().await.expect("the foreign bucket and its object survive");
    s3.delete_object().bucket(&foreign).key("theirs.json").send().await.unwrap();
    s3.delete_bucket().bucket(&foreign).send().await.unwrap();
    assert_eq!(everything_named(&test.aws_prefix("status")).await, Vec::<String>::new());
    test.finish().await;
}

#[tokio::test]
async fn of_two_pipelines_naming_one_bucket_at_once_exactly_one_gets_it() {
    // CreateBucket takes two seconds: both pipelines find the name free and both create it.
    let slow = FaultSettings { latency: Duration::from_secs(2), scope: vec!["s3:CreateBucket".parse().unwrap()], ..FaultSettings::none() };
    let proxy = AwsProxy::start(&emulator_url().unwrap(), ProxySettings { faults: slow, ..ProxySettings::default() }).await.unwrap();
    let test = OperatorTest::start("own-race", Some(proxy.endpoint().to_owned()), Duration::from_secs(60)).await;
    let bucket = format!("{}-contested", test.namespace.name);
    for name in ["first", "second"] {
        let mut pipeline = paused(name);
        pipeline.spec.delivery.bucket_name = Some(bucket.clone());
        test.apply(&pipeline).await;
    }
    let settled = |s: &metrics_pipeline_api::MetricsPipelineStatus| {
        condition(s, "BucketReady").is_some_and(|(status, reason, _)| status == "True" || reason == "NotOwned")
    };
    let first = test.wait_for("first", "BucketReady settled", settled).await;
    let second = test.wait_for("second", "BucketReady settled", settled).await;
    let ready = |s: &metrics_pipeline_api::MetricsPipelineStatus| condition(s, "BucketReady").unwrap().0 == "True";
    assert!(ready(&first) != ready(&second), "exactly one holds the bucket: {first:#?} {second:#?}");
    let (winner, loser) = if ready(&first) { ("first", &second) } else { ("second", &first) };
    assert_eq!(bucket_tags(&bucket).await[OWNER_TAG], format!("{}/{winner}", test.namespace.name));
    let (_, _, message) = condition(loser, "BucketReady").unwrap();
    assert!(message.contains(&format!("names pipeline `{}/{winner}`", test.namespace.name)), "{message}");

    delete_and_wait(&test.pipelines, if winner == "first" { "second" } else { "first" }).await;
    s3().await.head_bucket().bucket(&bucket).send().await.expect("the loser's deletion leaves the winner's bucket");
    delete_and_wait(&test.pipelines, winner).await;
    assert!(s3().await.head_bucket().bucket(&bucket).send().await.is_err(), "the winner's deletion removes it");
    test.finish().await;
}
