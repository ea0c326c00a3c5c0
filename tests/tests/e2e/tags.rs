//! The user's tags (`spec.tags`) on every AWS resource a pipeline makes, for cost allocation:
//! put on at creation, changed and removed with the spec, beside the operator's ownership tags
//! and whatever tags others set, which stay; a steady state changes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use metrics_pipeline_api::MetricsPipeline;
use metrics_pipeline_api::naming::OWNER_TAG;
use metrics_pipeline_api::pipeline::MetricsPipelineStatus;
use metrics_pipeline_e2e::emulator_sdk;
use metrics_pipeline_e2e::in_process::{OperatorTest, example_named, ready_at};
use metrics_pipeline_runtime::sdk::s3_client;

fn tagged(tags: &[(&str, &str)]) -> MetricsPipeline {
    let mut pipeline = example_named("minimal.yaml", "costed");
    pipeline.spec.aggregator.replicas = 0;
    pipeline.spec.tags = tags.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect();
    pipeline
}

/// The tags of every taggable resource of the pipeline, by resource.
async fn tags_of_every_resource(status: &MetricsPipelineStatus) -> BTreeMap<String, BTreeMap<String, String>> {
    let sdk = emulator_sdk().await;
    let name = |reference: &Option<metrics_pipeline_api::pipeline::AwsResourceRef>| reference.as_ref().unwrap().name.clone();
    let mut found = BTreeMap::new();
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    for stream in [name(&status.input_stream), name(&status.output_stream)] {
        let tags = kinesis.list_tags_for_stream().stream_name(&stream).send().await.unwrap();
        found.insert(stream, tags.tags().iter().map(|tag| (tag.key().to_owned(), tag.value().unwrap_or_default().to_owned())).collect());
    }
    let bucket = name(&status.bucket);
    let tagging = s3_client(&sdk).get_bucket_tagging().bucket(&bucket).send().await.unwrap();
    found.insert(bucket, tagging.tag_set().iter().map(|tag| (tag.key().to_owned(), tag.value().to_owned())).collect());
    let role = name(&status.firehose_role);
    let described = aws_sdk_iam::Client::new(&sdk).get_role().role_name(&role).send().await.unwrap().role.unwrap();
    found.insert(role, described.tags().iter().map(|tag| (tag.key().to_owned(), tag.value().to_owned())).collect());
    let delivery = name(&status.delivery_stream);
    let firehose = aws_sdk_firehose::Client::new(&sdk);
    let tags = firehose.list_tags_for_delivery_stream().delivery_stream_name(&delivery).send().await.unwrap();
    found.insert(delivery, tags.tags().iter().map(|tag| (tag.key().to_owned(), tag.value().unwrap_or_default().to_owned())).collect());
    let database = status.glue_database.as_ref().unwrap();
    let tags = aws_sdk_glue::Client::new(&sdk).get_tags().resource_arn(database.arn.clone().unwrap()).send().await.unwrap();
    found.insert(database.name.clone(), tags.tags.unwrap_or_default().into_iter().collect());
    found
}

#[tokio::test]
async fn spec_tags_reach_every_resource_follow_the_spec_and_leave_other_tags_alone() {
    let test = OperatorTest::start("tags", None, Duration::from_secs(2)).await;
    test.apply(&tagged(&[("team", "metrics"), ("cost-center", "observability")])).await;
    let status = test.ready("costed").await;
    for (resource, tags) in tags_of_every_resource(&status).await {
        assert_eq!(
            (tags.get("team").map(String::as_str), tags.get("cost-center").map(String::as_str)),
            (Some("metrics"), Some("observability")),
            "{resource}: {tags:?}"
        );
    }
    // Someone else's tag on the bucket, which a retag must leave (S3's PutBucketTagging would
    // replace the whole set; the operator tags key by key).
    let s3 = s3_client(&emulator_sdk().await);
    let bucket = status.bucket.clone().unwrap().name;
    let mut by_hand: Vec<_> = s3.get_bucket_tagging().bucket(&bucket).send().await.unwrap().tag_set().to_vec();
    by_hand.push(aws_sdk_s3::types::Tag::builder().key("backup").value("daily").build().unwrap());
    let tagging = aws_sdk_s3::types::Tagging::builder().set_tag_set(Some(by_hand)).build().unwrap();
    s3.put_bucket_tagging().bucket(&bucket).tagging(tagging).send().await.unwrap();

    // One value changed, one key dropped.
    test.apply(&tagged(&[("team", "platform")])).await;
    let status = test.wait_for("costed", "Ready at generation 2", |s| ready_at(s, 2)).await;
    assert_eq!(status.tag_keys, ["team"]);
    for (resource, tags) in tags_of_every_resource(&status).await {
        assert_eq!(tags.get("team").map(String::as_str), Some("platform"), "{resource}: {tags:?}");
        assert!(!tags.contains_key("cost-center"), "{resource}: {tags:?}");
        if resource != status.glue_database.as_ref().unwrap().name {
            assert!(tags.contains_key(OWNER_TAG), "the ownership tags stay: {resource}: {tags:?}");
        }
    }
    let tags = s3.get_bucket_tagging().bucket(&bucket).send().await.unwrap();
    assert!(tags.tag_set().iter().any(|tag| tag.key() == "backup"), "another's tag stays: {:?}", tags.tag_set());

    // Steady: resyncs read, and change nothing.
    let mutating = test.operator().mutating_calls();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(test.operator().mutating_calls(), mutating, "tags as the spec asks are not written again");
    test.delete_and_check("costed").await;
    test.finish().await;
}
