//! Keys under a hold survive deletion as object lock or a legal hold would keep them:
//! DeleteObjects answers 200 with an AccessDenied per held key (only errors when quiet),
//! DeleteObject answers 403; in versioned buckets per version.

mod common;

use aws_config::SdkConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::operation::delete_objects::DeleteObjectsOutput;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketVersioningStatus, Delete, ObjectIdentifier, VersioningConfiguration};

use metrics_pipeline_aws_proxy::{Outcome, ProxySettings, Rule, Service};

use common::{create_bucket, proxy, unique};

const HELD: &str = "Access Denied because object protected by object lock.";

async fn delete(s3: &Client, bucket: &str, objects: &[(&str, Option<&str>)], quiet: bool) -> DeleteObjectsOutput {
    let objects = objects
        .iter()
        .map(|(key, version)| ObjectIdentifier::builder().key(*key).set_version_id(version.map(str::to_owned)).build().unwrap());
    let request = Delete::builder().set_objects(Some(objects.collect())).quiet(quiet).build().unwrap();
    s3.delete_objects().bucket(bucket).delete(request).send().await.unwrap()
}

fn deleted(output: &DeleteObjectsOutput) -> Vec<&str> {
    output.deleted().iter().filter_map(|deleted| deleted.key()).collect()
}

fn errors(output: &DeleteObjectsOutput) -> Vec<(&str, Option<&str>, &str, &str)> {
    output
        .errors()
        .iter()
        .map(|error| (error.key().unwrap_or(""), error.version_id(), error.code().unwrap_or(""), error.message().unwrap_or("")))
        .collect()
}

async fn keys(s3: &Client, bucket: &str) -> Vec<String> {
    let listed = s3.list_objects_v2().bucket(bucket).send().await.unwrap();
    listed.contents().iter().filter_map(|object| object.key().map(str::to_owned)).collect()
}

async fn bucket_with(config: &SdkConfig, keys: &[&str]) -> String {
    let bucket = unique("held");
    create_bucket(config, &bucket).await;
    let s3 = metrics_pipeline_runtime::sdk::s3_client(config);
    for key in keys {
        s3.put_object().bucket(&bucket).key(*key).body(ByteStream::from_static(b"{}")).send().await.unwrap();
    }
    bucket
}

#[tokio::test]
async fn held_keys_survive_delete_objects_with_an_error_each() {
    let (proxy, config) = proxy(ProxySettings::default()).await;
    let s3 = metrics_pipeline_runtime::sdk::s3_client(&config);
    let bucket = bucket_with(&config, &["keep/1", "keep/2", "held/1", "held/2"]).await;
    proxy.hold_prefix(&bucket, "held/");

    let output = delete(&s3, &bucket, &[("keep/1", None), ("held/1", None), ("held/2", None)], false).await;
    assert_eq!(deleted(&output), ["keep/1"]);
    assert_eq!(errors(&output), [("held/1", None, "AccessDenied", HELD), ("held/2", None, "AccessDenied", HELD)]);
    assert_eq!(keys(&s3, &bucket).await, ["held/1", "held/2", "keep/2"]);

    let quiet = delete(&s3, &bucket, &[("held/1", None), ("keep/2", None)], true).await;
    assert_eq!((deleted(&quiet), errors(&quiet)), (vec![], vec![("held/1", None, "AccessDenied", HELD)]), "quiet: only the errors");

    let only_held = delete(&s3, &bucket, &[("held/2", None)], false).await;
    assert_eq!(errors(&only_held), [("held/2", None, "AccessDenied", HELD)]);

    let single = s3.delete_object().bucket(&bucket).key("held/1").send().await.unwrap_err();
    assert_eq!(single.raw_response().map(|response| response.status().as_u16()), Some(403));
    assert_eq!(single.code(), Some("AccessDenied"));
    assert_eq!(keys(&s3, &bucket).await, ["held/1", "held/2"]);

    let stats = proxy.stats();
    let outcomes = stats.outcomes(Service::S3, "DeleteObjects");
    assert_eq!(
        outcomes,
        [Outcome::Forwarded { status: 200 }, Outcome::Forwarded { status: 200 }, Outcome::Refused { rule: Rule::ObjectHold }]
    );
    let held_keys: Vec<usize> =
        stats.calls.iter().filter(|call| call.is(Service::S3, "DeleteObjects")).map(|call| call.held_keys).collect();
    assert_eq!(held_keys, [2, 1, 1]);

    proxy.release_prefix(&bucket, "held/");
    let released = delete(&s3, &bucket, &[("held/1", None), ("held/2", None)], false).await;
    assert_eq!((deleted(&released), errors(&released).len()), (vec!["held/1", "held/2"], 0));
    s3.delete_bucket().bucket(&bucket).send().await.unwrap();
}

#[tokio::test]
async fn held_versions_survive_in_a_versioned_bucket() {
    let (proxy, config) = proxy(ProxySettings::default()).await;
    let s3 = metrics_pipeline_runtime::sdk::s3_client(&config);
    let bucket = bucket_with(&config, &[]).await;
    let versioning = VersioningConfiguration::builder().status(BucketVersioningStatus::Enabled).build();
    s3.put_bucket_versioning().bucket(&bucket).versioning_configuration(versioning).send().await.unwrap();
    for key in ["held/a", "held/a", "free/b"] {
        s3.put_object().bucket(&bucket).key(key).body(ByteStream::from_static(b"{}")).send().await.unwrap();
    }
    proxy.hold_prefix(&bucket, "held/");

    let versions = || async {
        let listed = s3.list_object_versions().bucket(&bucket).send().await.unwrap();
        listed
            .versions()
            .iter()
            .map(|version| (version.key().unwrap().to_owned(), version.version_id().unwrap().to_owned()))
            .collect::<Vec<_>>()
    };
    let all = versions().await;
    assert_eq!(all.len(), 3);
    let objects: Vec<(&str, Option<&str>)> = all.iter().map(|(key, version)| (key.as_str(), Some(version.as_str()))).collect();
    let output = delete(&s3, &bucket, &objects, false).await;
    assert_eq!(deleted(&output), ["free/b"]);
    let held: Vec<_> = all
        .iter()
        .filter(|(key, _)| key == "held/a")
        .map(|(key, version)| (key.as_str(), Some(version.as_str()), "AccessDenied", HELD))
        .collect();
    assert_eq!(errors(&output), held);
    assert_eq!(versions().await.iter().filter(|(key, _)| key == "held/a").count(), 2, "both versions kept");

    proxy.release_prefix(&bucket, "held/");
    let held_versions: Vec<(&str, Option<&str>)> =
        all.iter().filter(|(key, _)| key == "held/a").map(|(key, version)| (key.as_str(), Some(version.as_str()))).collect();
    assert_eq!(errors(&delete(&s3, &bucket, &held_versions, true).await).len(), 0);
    assert!(versions().await.is_empty());
    s3.delete_bucket().bucket(&bucket).send().await.unwrap();
}
