//! The IAM policies the chart ships (charts/metrics-pipeline-operator/iam/) allow exactly what the
//! programs do: the operator and the aggregator run through the AWS proxy, which records every
//! call; each call is mapped to the IAM actions AWS authorizes it with, and the union must equal
//! the shipped document's actions. A missing action fails (the program would be refused on AWS),
//! and so does a superfluous one (a permission nothing uses), each named in the message.
//!
//! The lifecycle here makes every call the operator has: create, drift repair, shard, retention
//! and capacity changes, a buffering change, a partitions mode change, removing the expiry, and
//! delete. Where the emulator enforces IAM (`scripts/dev-env` with `DEV_ENV_IAM` on), the
//! programs also run with the credentials of users holding these documents, so a refusal shows.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use kube::api::Api;
use metrics_aggregator::generate::{Generator, GeneratorConfig, Metric, PartitionKey, publish};
use metrics_aggregator::kinesis::sink::KinesisSink;
use metrics_pipeline_api::{MetricsPipeline, MetricsPipelineStatus};
use metrics_pipeline_aws_proxy::{AwsProxy, ProxySettings, Service, emulator_url};
use metrics_pipeline_e2e::emulator_sdk;
use metrics_pipeline_e2e::in_process::{
    OperatorTest, allow_operator_reading, condition, delete_and_wait, deny_operator_reading, example, wait_for_status,
};
use metrics_pipeline_e2e::{repo_path, workspace_bin_dir};
use metrics_pipeline_model::event::EventTime;
use metrics_pipeline_runtime::sdk::s3_client;
use metrics_pipeline_test_support::{Identity, free_port, terminate, wait_for};
use serde_json::{Value, json};

const OPERATOR_POLICY: &str = "charts/metrics-pipeline-operator/iam/operator-policy.json";
const AGGREGATOR_POLICY: &str = "charts/metrics-pipeline-operator/iam/aggregator-policy.json";

/// The IAM actions AWS authorizes each call with, from the Service Authorization Reference and
/// each API reference's "Permissions" section. Where they differ from the operation's name, or a
/// call needs more than one, the comment says why.
const AUTHORIZED_BY: &[(Service, &str, &[&str])] = &[
    // Kinesis: tags given to CreateStream are authorized as AddTagsToStream too.
    (Service::Kinesis, "CreateStream", &["kinesis:CreateStream", "kinesis:AddTagsToStream"]),
    (Service::Kinesis, "AddTagsToStream", &["kinesis:AddTagsToStream"]),
    (Service::Kinesis, "ListTagsForStream", &["kinesis:ListTagsForStream"]),
    (Service::Kinesis, "RemoveTagsFromStream", &["kinesis:RemoveTagsFromStream"]),
    (Service::Kinesis, "DescribeStreamSummary", &["kinesis:DescribeStreamSummary"]),
    (Service::Kinesis, "UpdateShardCount", &["kinesis:UpdateShardCount"]),
    (Service::Kinesis, "UpdateStreamMode", &["kinesis:UpdateStreamMode"]),
    (Service::Kinesis, "IncreaseStreamRetentionPeriod", &["kinesis:IncreaseStreamRetentionPeriod"]),
    (Service::Kinesis, "DecreaseStreamRetentionPeriod", &["kinesis:DecreaseStreamRetentionPeriod"]),
    (Service::Kinesis, "DeleteStream", &["kinesis:DeleteStream"]),
    (Service::Kinesis, "ListShards", &["kinesis:ListShards"]),
    (Service::Kinesis, "GetShardIterator", &["kinesis:GetShardIterator"]),
    (Service::Kinesis, "GetRecords", &["kinesis:GetRecords"]),
    (Service::Kinesis, "PutRecords", &["kinesis:PutRecords"]),
    // S3: bucket operations are authorized by actions of other names.
    (Service::S3, "HeadBucket", &["s3:ListBucket"]),
    (Service::S3, "ListObjectsV2", &["s3:ListBucket"]),
    (Service::S3, "ListObjectVersions", &["s3:ListBucketVersions"]),
    (Service::S3, "GetBucketVersioning", &["s3:GetBucketVersioning"]),
    // Tags given to CreateBucket need s3:TagResource too.
    (Service::S3, "CreateBucket", &["s3:CreateBucket", "s3:TagResource"]),
    (Service::S3, "DeleteBucket", &["s3:DeleteBucket"]),
    (Service::S3, "GetBucketTagging", &["s3:GetBucketTagging"]),
    // S3 Control tags a bucket key by key, authorized on the bucket's ARN.
    (Service::S3Control, "TagResource", &["s3:TagResource"]),
    (Service::S3Control, "UntagResource", &["s3:UntagResource"]),
    (Service::S3, "GetPublicAccessBlock", &["s3:GetBucketPublicAccessBlock"]),
    (Service::S3, "PutPublicAccessBlock", &["s3:PutBucketPublicAccessBlock"]),
    (Service::S3, "GetBucketEncryption", &["s3:GetEncryptionConfiguration"]),
    (Service::S3, "PutBucketEncryption", &["s3:PutEncryptionConfiguration"]),
    (Service::S3, "GetBucketLifecycleConfiguration", &["s3:GetLifecycleConfiguration"]),
    (Service::S3, "PutBucketLifecycleConfiguration", &["s3:PutLifecycleConfiguration"]),
    (Service::S3, "DeleteBucketLifecycle", &["s3:PutLifecycleConfiguration"]),
    // Each key of a batch is authorized as a DeleteObject, or as a DeleteObjectVersion when the
    // batch names its version, as the operator's always does (every version must go).
    (Service::S3, "DeleteObjects", &["s3:DeleteObjectVersion"]),
    // Without s3:ListBucket a missing key is 403, not 404: a first start would read "no
    // checkpoint yet" as a refusal.
    (Service::S3, "GetObject", &["s3:GetObject", "s3:ListBucket"]),
    (Service::S3, "PutObject", &["s3:PutObject"]),
    (Service::S3, "DeleteObject", &["s3:DeleteObject"]),
    (Service::S3, "ListBuckets", &["s3:ListAllMyBuckets"]),
    (Service::S3, "ListObjectsV2", &["s3:ListBucket"]),
    // IAM: tags given to CreateRole are authorized as TagRole too.
    (Service::Iam, "CreateRole", &["iam:CreateRole", "iam:TagRole"]),
    (Service::Iam, "GetRole", &["iam:GetRole"]),
    (Service::Iam, "TagRole", &["iam:TagRole"]),
    (Service::Iam, "UntagRole", &["iam:UntagRole"]),
    (Service::Iam, "UpdateAssumeRolePolicy", &["iam:UpdateAssumeRolePolicy"]),
    (Service::Iam, "GetRolePolicy", &["iam:GetRolePolicy"]),
    (Service::Iam, "PutRolePolicy", &["iam:PutRolePolicy"]),
    (Service::Iam, "ListRolePolicies", &["iam:ListRolePolicies"]),
    (Service::Iam, "ListAttachedRolePolicies", &["iam:ListAttachedRolePolicies"]),
    (Service::Iam, "DeleteRolePolicy", &["iam:DeleteRolePolicy"]),
    (Service::Iam, "DeleteRole", &["iam:DeleteRole"]),
    // Firehose: naming a role passes it (iam:PassRole); tags at creation are TagDeliveryStream.
    (Service::Firehose, "CreateDeliveryStream", &["firehose:CreateDeliveryStream", "firehose:TagDeliveryStream", "iam:PassRole"]),
    (Service::Firehose, "TagDeliveryStream", &["firehose:TagDeliveryStream"]),
    (Service::Firehose, "UntagDeliveryStream", &["firehose:UntagDeliveryStream"]),
    (Service::Firehose, "UpdateDestination", &["firehose:UpdateDestination", "iam:PassRole"]),
    (Service::Firehose, "DescribeDeliveryStream", &["firehose:DescribeDeliveryStream"]),
    (Service::Firehose, "ListTagsForDeliveryStream", &["firehose:ListTagsForDeliveryStream"]),
    (Service::Firehose, "DeleteDeliveryStream", &["firehose:DeleteDeliveryStream"]),
    (Service::Glue, "GetDatabase", &["glue:GetDatabase"]),
    (Service::Glue, "CreateDatabase", &["glue:CreateDatabase"]),
    (Service::Glue, "UpdateDatabase", &["glue:UpdateDatabase"]),
    (Service::Glue, "DeleteDatabase", &["glue:DeleteDatabase"]),
    (Service::Glue, "GetTable", &["glue:GetTable"]),
    (Service::Glue, "GetTables", &["glue:GetTables"]),
    (Service::Glue, "CreateTable", &["glue:CreateTable"]),
    (Service::Glue, "UpdateTable", &["glue:UpdateTable"]),
    (Service::Glue, "DeleteTable", &["glue:DeleteTable"]),
    (Service::Glue, "GetPartitions", &["glue:GetPartitions"]),
    (Service::Glue, "BatchCreatePartition", &["glue:BatchCreatePartition"]),
    // Glue's tagging calls on a database need glue:GetDatabase besides their own action.
    (Service::Glue, "GetTags", &["glue:GetTags", "glue:GetDatabase"]),
    (Service::Glue, "TagResource", &["glue:TagResource", "glue:GetDatabase"]),
    (Service::Glue, "UntagResource", &["glue:UntagResource", "glue:GetDatabase"]),
    // STS GetCallerIdentity needs no permission.
    (Service::Sts, "GetCallerIdentity", &[]),
];

/// The actions a shipped document allows.
fn allowed_actions(document: &str) -> BTreeSet<String> {
    let policy: Value = serde_json::from_str(&std::fs::read_to_string(repo_path(document)).unwrap()).unwrap();
    let statements = policy["Statement"].as_array().unwrap_or_else(|| panic!("{document} has statements"));
    let mut actions = BTreeSet::new();
    for statement in statements {
        assert_eq!(statement["Effect"], "Allow", "{document}: only Allow statements");
        match &statement["Action"] {
            Value::String(action) => actions.insert(action.clone()),
            Value::Array(list) => list.iter().all(|action| actions.insert(action.as_str().unwrap().to_owned())),
            other => panic!("{document}: Action is {other}"),
        };
    }
    assert!(actions.iter().all(|action| !action.contains('*')), "{document}: no wildcard actions: {actions:?}");
    actions
}

/// Compares what the calls the proxy saw need with what `document` allows; every difference is
/// named.
fn assert_exactly_what_is_needed(proxy: &AwsProxy, document: &str) {
    let mut needed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut unknown = BTreeSet::new();
    for call in proxy.stats().calls.iter().filter(|call| call.service != Service::Other) {
        match AUTHORIZED_BY.iter().find(|(service, operation, _)| *service == call.service && *operation == call.operation) {
            Some((_, _, actions)) => {
                for action in *actions {
                    needed.entry((*action).to_owned()).or_default().insert(format!("{}.{}", call.service, call.operation));
                }
            }
            None => {
                unknown.insert(format!("{}.{}", call.service, call.operation));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "calls with no IAM actions in AUTHORIZED_BY (look them up in the Service Authorization Reference): {unknown:?}"
    );
    let allowed = allowed_actions(document);
    let missing: Vec<String> = needed
        .iter()
        .filter(|(action, _)| !allowed.contains(*action))
        .map(|(action, calls)| format!("{action} (for {})", calls.iter().cloned().collect::<Vec<_>>().join(", ")))
        .collect();
    let superfluous: Vec<&String> = allowed.iter().filter(|action| !needed.contains_key(*action)).collect();
    assert!(
        missing.is_empty() && superfluous.is_empty(),
        "{document} does not hold exactly what the program needs.\n  missing (AWS would refuse): {missing:?}\n  superfluous (nothing calls for it): {superfluous:?}"
    );
}

/// The example pipeline with `changes` applied to its spec (top-level keys of the spec replaced).
fn pipeline_with(changes: Value) -> MetricsPipeline {
    let mut pipeline = serde_json::to_value(example("pipeline.yaml")).unwrap();
    for (key, value) in changes.as_object().unwrap() {
        pipeline["spec"][key] = value.clone();
    }
    serde_json::from_value(pipeline).unwrap()
}

const AWS_PARTS: [&str; 4] = ["StreamsReady", "BucketReady", "DeliveryReady", "CatalogReady"];

/// Waits until the operator has acted on `generation` and every AWS part is as specified (the
/// aggregator's pods need a node, which this test does not).
async fn wait_for_aws_parts(pipelines: &Api<MetricsPipeline>, generation: i64) -> MetricsPipelineStatus {
    wait_for_status(pipelines, "metrics", &format!("generation {generation} provisioned"), |status| {
        status.observed_generation == Some(generation)
            && AWS_PARTS.iter().all(|part| status.conditions.iter().any(|c| c.type_ == *part && c.status == "True"))
    })
    .await
}

#[tokio::test]
async fn the_operator_policy_allows_exactly_what_the_operator_calls() {
    let proxy = AwsProxy::start(&emulator_url().unwrap(), ProxySettings::default()).await.unwrap();
    let mut test = OperatorTest::start("lp-operator", Some(proxy.endpoint().to_owned()), Duration::from_secs(2)).await;

    // Created, with an expiry, registered partitions and the user's tags.
    let mut delivery = serde_json::to_value(&example("pipeline.yaml").spec.delivery).unwrap();
    delivery["expireAfterDays"] = json!(7);
    let tags = json!({"team": "metrics", "cost-center": "observability"});
    test.apply(&pipeline_with(json!({"delivery": delivery.clone(), "tags": tags}))).await;
    let status = wait_for_aws_parts(&test.pipelines, 1).await;

    // The first object of a component gets its partition registered; drift is repaired.
    let sdk = emulator_sdk().await;
    let (s3, iam, glue) = (s3_client(&sdk), aws_sdk_iam::Client::new(&sdk), aws_sdk_glue::Client::new(&sdk));
    let bucket = status.bucket.as_ref().unwrap().name.clone();
    let role = status.firehose_role.as_ref().unwrap().name.clone();
    let database = status.glue_database.as_ref().unwrap().name.clone();
    let object = s3.put_object().bucket(&bucket).key("componentName=user-service/part-0.json").body(ByteStream::from_static(b"{}\n"));
    object.send().await.unwrap();
    s3.delete_public_access_block().bucket(&bucket).send().await.unwrap();
    s3.delete_bucket_encryption().bucket(&bucket).send().await.unwrap();
    let policies = iam.list_role_policies().role_name(&role).send().await.unwrap();
    for policy in policies.policy_names() {
        iam.delete_role_policy().role_name(&role).policy_name(policy).send().await.unwrap();
    }
    let anyone = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]});
    iam.update_assume_role_policy().role_name(&role).policy_document(anyone.to_string()).send().await.unwrap();
    wait_for("the drift repaired and the partition registered", Duration::from_secs(60), async || {
        let encrypted = s3.get_bucket_encryption().bucket(&bucket).send().await.is_ok();
        let blocked = s3.get_public_access_block().bucket(&bucket).send().await.is_ok();
        let policies = iam.list_role_policies().role_name(&role).send().await.map_err(|e| e.to_string())?.policy_names().len();
        let trust = iam.get_role().role_name(&role).send().await.map_err(|e| e.to_string())?.role.unwrap().assume_role_policy_document;
        let trusted = trust.is_some_and(|document| document.contains("firehose"));
        let partitions = glue.get_partitions().database_name(&database).table_name("metric_aggregates").send().await;
        let registered = partitions.map_err(|e| e.to_string())?.partitions().len();
        let seen = (encrypted, blocked, policies, trusted, registered);
        if seen == (true, true, 1, true, 1) { Ok(()) } else { Err(format!("{seen:?}")) }
    })
    .await
    .unwrap();

    // Shards, retention up, capacity mode, buffering, partitions mode, expiry removed.
    delivery["bufferIntervalSeconds"] = json!(120);
    delivery.as_object_mut().unwrap().remove("expireAfterDays");
    let streams = json!({
        "input": {"capacityMode": "Provisioned", "shardCount": 2, "retentionHours": 48},
        "output": {"capacityMode": "OnDemand"},
    });
    let catalog = json!({"table": "metric_aggregates", "partitions": {"mode": "Projected", "components": ["user-service"]}});
    // One tag changed, one dropped: tagged and untagged everywhere.
    let tags = json!({"team": "platform"});
    test.apply(&pipeline_with(json!({"streams": streams, "delivery": delivery.clone(), "catalog": catalog.clone(), "tags": tags}))).await;
    wait_for_aws_parts(&test.pipelines, 2).await;
    // Retention down again.
    let streams = json!({
        "input": {"capacityMode": "Provisioned", "shardCount": 2, "retentionHours": 24},
        "output": {"capacityMode": "OnDemand"},
    });
    let latest = json!({"streams": streams, "delivery": delivery, "catalog": catalog});
    test.apply(&pipeline_with(latest.clone())).await;
    wait_for_aws_parts(&test.pipelines, 3).await;

    // A bucket it may not read: of another account, or of this one (ListBuckets says which).
    let unreadable = format!("{}-unreadable", test.namespace.name);
    let location = CreateBucketConfiguration::builder().location_constraint(BucketLocationConstraint::EuWest1).build();
    s3.create_bucket().bucket(&unreadable).create_bucket_configuration(location).send().await.unwrap();
    deny_operator_reading(&unreadable).await;
    let mut other = pipeline_with(json!({"delivery": {"bucketName": unreadable}}));
    other.metadata.name = Some("unreadable".into());
    test.apply(&other).await;
    wait_for_status(&test.pipelines, "unreadable", "BucketReady refused", |s| {
        condition(s, "BucketReady").is_some_and(|(_, _, message)| message.contains("HeadBucket answers 403"))
    })
    .await;
    allow_operator_reading(&unreadable).await;

    // Kept with Retain, then taken over by the pipeline created again (retagged).
    let mut retained = latest.clone();
    retained["deletionPolicy"] = json!("Retain");
    test.apply(&pipeline_with(retained)).await;
    wait_for_aws_parts(&test.pipelines, 4).await;
    let earlier = test.pipelines.get("metrics").await.unwrap().metadata.uid.unwrap();
    delete_and_wait(&test.pipelines, "metrics").await;
    let mut adopting = latest;
    adopting["adoptFrom"] = json!({"pipelineUid": earlier});
    test.apply(&pipeline_with(adopting)).await;
    wait_for_aws_parts(&test.pipelines, 1).await;

    delete_and_wait(&test.pipelines, "metrics").await;
    delete_and_wait(&test.pipelines, "unreadable").await;
    s3.delete_bucket().bucket(&unreadable).send().await.unwrap();
    test.stop_operator().await;
    assert_exactly_what_is_needed(&proxy, OPERATOR_POLICY);
    test.finish().await;
}

/// Reads every record of `stream` through the tests' own client (the emulator directly).
async fn records_on(kinesis: &aws_sdk_kinesis::Client, stream: &str) -> usize {
    let mut count = 0;
    let shards = kinesis.list_shards().stream_name(stream).send().await.unwrap();
    for shard in shards.shards() {
        let iterator = kinesis.get_shard_iterator().stream_name(stream).shard_id(shard.shard_id());
        let iterator = iterator.shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon).send().await.unwrap();
        let page = kinesis.get_records().shard_iterator(iterator.shard_iterator().unwrap()).send().await.unwrap();
        count += page.records().len();
    }
    count
}

#[tokio::test]
async fn the_aggregator_policy_allows_exactly_what_the_aggregator_calls() {
    let sdk = emulator_sdk().await;
    let (kinesis, s3) = (aws_sdk_kinesis::Client::new(&sdk), s3_client(&sdk));
    let unique = format!("lp-aggregator-{}", std::process::id());
    let (input, output, bucket) = (format!("{unique}-input"), format!("{unique}-output"), format!("{unique}-bucket"));
    for stream in [&input, &output] {
        kinesis.create_stream().stream_name(stream).shard_count(1).send().await.unwrap();
    }
    let region = sdk.region().unwrap().to_string();
    let location = aws_sdk_s3::types::CreateBucketConfiguration::builder()
        .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(region.as_str()))
        .build();
    s3.create_bucket().bucket(&bucket).create_bucket_configuration(location).send().await.unwrap();
    wait_for("the streams ACTIVE", Duration::from_secs(30), async || {
        for stream in [&input, &output] {
            let summary = kinesis.describe_stream_summary().stream_name(stream).send().await.map_err(|e| e.to_string())?;
            let status = summary.stream_description_summary.unwrap().stream_status;
            if status != aws_sdk_kinesis::types::StreamStatus::Active {
                return Err(format!("{stream} {status}"));
            }
        }
        Ok(())
    })
    .await
    .unwrap();

    // Events an hour old (every window closes at once) and one that is no event (a dead letter).
    let start = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64 - 3_600_000;
    let generator = Generator::new(GeneratorConfig {
        components: vec!["user-service".into()],
        metrics: vec![Metric { name: "cpu-usage".into(), unit: "percent".into() }],
        start: EventTime(start),
        step: Duration::from_secs(10),
        jitter: Duration::ZERO,
        seed: 1,
    });
    let sink = KinesisSink::new(kinesis.clone(), input.clone());
    publish(&sink, generator, PartitionKey::Component, Some(30), None, std::future::pending()).await;
    kinesis
        .put_record()
        .stream_name(&input)
        .partition_key("x")
        .data(aws_sdk_kinesis::primitives::Blob::new(b"not an event".to_vec()))
        .send()
        .await
        .unwrap();

    // The aggregator as the Deployment runs it (writer: Aggregator adds the Parquet files),
    // through the proxy, with its own identity when the emulator enforces IAM.
    let proxy = AwsProxy::start(&emulator_url().unwrap(), ProxySettings::default()).await.unwrap();
    let listen = format!("127.0.0.1:{}", free_port().unwrap());
    let log = std::env::temp_dir().join(format!("{unique}.log"));
    let mut aggregator = tokio::process::Command::new(workspace_bin_dir().unwrap().join("metrics-aggregator"))
        .args(["run", "--input-stream", &input, "--output-stream", &output, "--bucket", &bucket, "--listen", &listen])
        .args([
            "--window",
            "1m",
            "--out-of-orderness",
            "1s",
            "--idle-timeout",
            "1s",
            "--poll-interval",
            "200ms",
            "--checkpoint-interval",
            "1s",
        ])
        .args(["--parquet", "snappy", "--parquet-roll-interval", "1s"])
        .env("AWS_ENDPOINT_URL", proxy.endpoint())
        .envs(Identity::Aggregator.env().into_iter().flatten())
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log_name = log.display().to_string();
    wait_for(
        &format!("aggregates, Parquet files, a dead letter and a checkpoint (log: {log_name})"),
        Duration::from_secs(60),
        async || {
            let keys: Vec<String> = (s3.list_objects_v2().bucket(&bucket).send().await.map_err(|e| e.to_string())?.contents().iter())
                .filter_map(|object| object.key().map(str::to_owned))
                .collect();
            let written = |prefix: &str| keys.iter().any(|key| key.starts_with(prefix));
            let seen = (
                records_on(&kinesis, &output).await > 0,
                written("componentName=user-service/"),
                written("_aggregator/dead-letters/"),
                written("_aggregator/checkpoint.json"),
            );
            if seen == (true, true, true, true) { Ok(()) } else { Err(format!("{seen:?}")) }
        },
    )
    .await
    .unwrap();
    terminate(&mut aggregator, Duration::from_secs(20)).await.expect("the aggregator stops on SIGTERM");

    assert_exactly_what_is_needed(&proxy, AGGREGATOR_POLICY);
    for stream in [&input, &output] {
        kinesis.delete_stream().stream_name(stream).send().await.unwrap();
    }
}
