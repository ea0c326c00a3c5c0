//! The pipeline's S3 bucket against an AWS as strict as the real one (the in-process operator
//! through the AWS proxy): a versioned bucket is emptied of every version and delete marker and
//! deleted; objects S3 keeps (object lock, a legal hold) stop the deletion with a condition that
//! names them, without a hot loop, until they are released; a bucket is tagged by the call that
//! creates it, while one made by hand under a pipeline's name is not taken; a bucket the operator
//! may not read is a permissions problem, not another account's.

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, BucketVersioningStatus, CreateBucketConfiguration, VersioningConfiguration};
use kube::api::DeleteParams;
use metrics_pipeline_api::naming::OWNER_TAG;
use metrics_pipeline_api::pipeline::{MetricsPipelineStatus, Phase};
use metrics_pipeline_aws_proxy::{AwsProxy, FaultSettings, ProxySettings, Service, emulator_url};
use metrics_pipeline_e2e::emulator_sdk;
use metrics_pipeline_e2e::in_process::{
    OperatorTest, allow_operator_reading, condition, delete_and_wait, deny_operator_reading, everything_named, example_named,
};
use metrics_pipeline_runtime::sdk::s3_client;
use metrics_pipeline_test_support::wait_for;

/// The operator in a namespace of its own, reaching AWS through a proxy.
struct World {
    test: OperatorTest,
    proxy: AwsProxy,
    /// The emulator, reached directly: what a person or another tool does.
    s3: aws_sdk_s3::Client,
}

impl World {
    async fn start(prefix: &str) -> Self {
        let moto = emulator_url().expect("run `. /work/main/.dev-env/env` (AWS_ENDPOINT_URL)");
        let proxy = AwsProxy::start(&moto, ProxySettings::default()).await.unwrap();
        let test = OperatorTest::start(prefix, Some(proxy.endpoint().to_owned()), Duration::from_secs(60)).await;
        World { test, proxy, s3: s3_client(&emulator_sdk().await) }
    }

    /// Applies the smallest pipeline, its aggregator paused (no pod to wait for), as `name`.
    async fn apply(&self, name: &str, bucket_name: Option<String>) {
        let mut pipeline = example_named("minimal.yaml", name);
        pipeline.spec.aggregator.replicas = 0;
        pipeline.spec.delivery.bucket_name = bucket_name;
        self.test.apply(&pipeline).await;
    }

    async fn put(&self, bucket: &str, key: &str) {
        self.s3.put_object().bucket(bucket).key(key).body(ByteStream::from_static(b"{}")).send().await.unwrap();
    }

    /// Every version and delete marker left in `bucket`, as (key, is a delete marker).
    async fn versions(&self, bucket: &str) -> Vec<(String, bool)> {
        let listed = self.s3.list_object_versions().bucket(bucket).send().await.unwrap();
        let versions = listed.versions().iter().map(|v| (v.key().unwrap_or_default().to_owned(), false));
        let markers = listed.delete_markers().iter().map(|m| (m.key().unwrap_or_default().to_owned(), true));
        let mut all: Vec<_> = versions.chain(markers).collect();
        all.sort();
        all
    }

    /// Nothing of this namespace's pipelines is left in AWS.
    async fn finish(self) {
        assert_eq!(everything_named(&self.test.namespace.name).await, Vec::<String>::new(), "nothing is left behind");
        self.test.finish().await;
    }
}

#[tokio::test]
async fn a_versioned_bucket_is_emptied_of_every_version_and_delete_marker_and_deleted() {
    let world = World::start("strict-versions").await;
    world.apply("versions", None).await;
    let bucket = world.test.ready("versions").await.bucket.unwrap().name;

    // Someone turns versioning on, then objects are overwritten and deleted: versions and delete
    // markers stay, and an object listing (ListObjectsV2) shows only what is current.
    let enabled = VersioningConfiguration::builder().status(BucketVersioningStatus::Enabled).build();
    world.s3.put_bucket_versioning().bucket(&bucket).versioning_configuration(enabled).send().await.unwrap();
    for key in ["aggregates/a.json", "aggregates/a.json", "aggregates/b.json", "aggregates/c.json"] {
        world.put(&bucket, key).await;
    }
    for key in ["aggregates/a.json", "aggregates/c.json"] {
        world.s3.delete_object().bucket(&bucket).key(key).send().await.unwrap();
    }
    let current = world.s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
    assert_eq!(current.key_count(), Some(1), "only b.json is current");
    assert_eq!(world.versions(&bucket).await.len(), 6, "4 versions and 2 delete markers");

    delete_and_wait(&world.test.pipelines, "versions").await;
    world.finish().await;
}

#[tokio::test]
async fn objects_s3_keeps_stop_the_deletion_with_a_condition_naming_them_and_without_a_hot_loop() {
    let world = World::start("strict-held").await;
    world.apply("held", None).await;
    let bucket = world.test.ready("held").await.bucket.unwrap().name;
    world.put(&bucket, "held/2026/part-0.json").await;
    world.put(&bucket, "free/part-1.json").await;
    // Object lock or a legal hold on `held/`: DeleteObjects answers 200 with AccessDenied for it.
    world.proxy.hold_prefix(&bucket, "held/");

    world.test.pipelines.delete("held", &DeleteParams::default()).await.unwrap();
    let delete_objects = || world.proxy.stats().calls(Service::S3, "DeleteObjects");
    wait_for("the deletion to reach the bucket", Duration::from_secs(60), async || match delete_objects() {
        0 => Err("no DeleteObjects yet".to_owned()),
        calls => Ok(calls),
    })
    .await
    .unwrap();
    // However the retries are spaced (1 s in this harness), not the same keys again at once.
    const WINDOW: Duration = Duration::from_secs(5);
    world.proxy.reset_stats();
    tokio::time::sleep(WINDOW).await;
    let calls = delete_objects();
    assert!(calls <= 2 * WINDOW.as_secs() as usize, "{calls} DeleteObjects calls in {WINDOW:?}: a hot loop");

    let held = format!("s3://{bucket}/held/2026/part-0.json");
    let status = world
        .test
        .wait_for("held", "a condition naming the held key", |s| {
            condition(s, "Ready").is_some_and(|(_, _, message)| message.contains(&held))
        })
        .await;
    let (ready, reason, message) = condition(&status, "Ready").unwrap();
    assert_eq!((ready, reason, status.phase), ("False", "AwsRefused", Some(Phase::Deleting)));
    assert!(message.contains("AccessDenied: Access Denied because object protected by object lock."), "{message}");
    assert_eq!(world.versions(&bucket).await, [("held/2026/part-0.json".to_owned(), false)], "all the rest is deleted");

    world.proxy.release_prefix(&bucket, "held/");
    delete_and_wait(&world.test.pipelines, "held").await;
    world.finish().await;
}

#[tokio::test]
async fn a_bucket_is_tagged_in_the_call_that_creates_it_and_one_made_by_hand_is_not_taken() {
    let world = World::start("strict-claim").await;
    // A bucket someone made by hand, untagged, under the name a pipeline asks for.
    let by_hand = format!("{}-by-hand", world.test.namespace.name);
    let location = CreateBucketConfiguration::builder().location_constraint(BucketLocationConstraint::EuWest1).build();
    world.s3.create_bucket().bucket(&by_hand).create_bucket_configuration(location).send().await.unwrap();
    world.apply("by-hand", Some(by_hand.clone())).await;

    // Tagging a bucket afterwards always fails: a bucket needs no tagging, its tags come with
    // CreateBucket, so no bucket of a pipeline is ever seen untagged.
    let scope = ["s3:PutBucketTagging", "s3control:TagResource"].map(|scope| scope.parse().unwrap()).to_vec();
    let tagging = FaultSettings { error_rate: 1.0, scope, ..FaultSettings::none() };
    world.proxy.set_faults(tagging).unwrap();
    world.apply("tagged", None).await;
    let status = world.test.ready("tagged").await;
    let bucket = status.bucket.unwrap().name;
    let tags = world.s3.get_bucket_tagging().bucket(&bucket).send().await.unwrap();
    let owner = tags.tag_set().iter().find(|tag| tag.key() == OWNER_TAG).map(|tag| tag.value().to_owned());
    assert_eq!(owner, Some(format!("{}/tagged", world.test.namespace.name)));
    world.proxy.set_faults(FaultSettings::none()).unwrap();

    let status = world.test.wait_for("by-hand", "NotOwned", |s| s.phase == Some(Phase::Failed)).await;
    let (_, reason, message) = condition(&status, "BucketReady").unwrap();
    assert_eq!(reason, "NotOwned", "{message}");
    assert!(message.contains(&format!("S3 bucket `{by_hand}` already exists and is not this pipeline's")), "{message}");
    assert!(world.s3.get_bucket_tagging().bucket(&by_hand).send().await.is_err(), "the bucket made by hand stays untagged");

    delete_and_wait(&world.test.pipelines, "tagged").await;
    delete_and_wait(&world.test.pipelines, "by-hand").await;
    world.s3.head_bucket().bucket(&by_hand).send().await.expect("the bucket made by hand survives");
    world.s3.delete_bucket().bucket(&by_hand).send().await.unwrap();
    world.finish().await;
}

/// S3 answers HeadBucket with the same 403 for a bucket of another account and for one of this
/// account the operator may not read. The second is a permissions problem to report, never a
/// reason to leave the bucket and its data behind.
#[tokio::test]
async fn a_bucket_the_operator_may_not_read_is_a_permissions_problem_not_another_accounts() {
    let world = World::start("strict-denied").await;
    world.apply("denied", None).await;
    let bucket =
        world.test.wait_for("denied", "the bucket", |s| condition(s, "BucketReady").is_some_and(|(status, _, _)| status == "True")).await;
    let bucket = bucket.bucket.unwrap().name;
    world.put(&bucket, "componentName=a/data.json").await;

    deny_operator_reading(&bucket).await;

    world.apply("sharing", Some(bucket.clone())).await;
    let status = world
        .test
        .wait_for("sharing", "BucketReady refused", |s| condition(s, "BucketReady").is_some_and(|(status, _, _)| status == "False"))
        .await;
    let (_, reason, message) = condition(&status, "BucketReady").unwrap();
    assert_eq!(reason, "AwsRefused", "{message}");
    assert!(
        message.contains(&format!("S3 bucket {bucket} is in this account, but HeadBucket answers 403: allow the operator s3:ListBucket")),
        "{message}"
    );

    world.test.pipelines.delete("denied", &DeleteParams::default()).await.unwrap();
    // Its own reconciles may have found the 403 before the deletion: the deletion's is the one.
    let held = |s: &MetricsPipelineStatus| {
        s.phase == Some(Phase::Deleting) && condition(s, "Ready").is_some_and(|(_, _, message)| message.contains("HeadBucket answers 403"))
    };
    world.test.wait_for("denied", "the deletion held", held).await;
    world.s3.head_bucket().bucket(&bucket).send().await.expect("the bucket and its data stay while the operator cannot see them");

    allow_operator_reading(&bucket).await;
    delete_and_wait(&world.test.pipelines, "denied").await;
    assert!(world.s3.head_bucket().bucket(&bucket).send().await.is_err(), "deleted once the operator may read it");
    delete_and_wait(&world.test.pipelines, "sharing").await;
    world.finish().await;
}
