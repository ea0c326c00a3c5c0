//! A migration the way a user makes one. A stack built by hand, as the CloudFormation seed made it
//! (the streams, a bucket carrying the stack's `aws:cloudformation:` tags, a Firehose delivery
//! stream with JQ partitioning and a role of its own, a Glue table keyed `componentName`), holds
//! delivered history while producers write. A pipeline
//! naming it in `spec.adopt` first only compares: every difference is listed and nothing is
//! changed or tagged. Confirmed, it takes the stack over while the producers go on, its
//! aggregator starting where the old job stopped; the history and the new aggregates are then
//! queried together through the Glue table, no object lost and every record after the switch
//! counted exactly once.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use aws_sdk_firehose::types::{DeliveryStreamType, KinesisStreamSourceConfiguration};
use aws_sdk_glue::types::{Column, DatabaseInput};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::ShardIteratorType;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use aws_sdk_s3control::types::Tag;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use metrics_pipeline_api::config::{DeliveryConfig, PartitionConfig};
use metrics_pipeline_api::namespace::ADOPTION_ANNOTATION;
use metrics_pipeline_api::naming::OWNER_TAG;
use metrics_pipeline_api::pipeline::{AdoptSpec, Compression, DeletionPolicy, DeliveryFormat, DeliveryWriter, Phase};
use metrics_pipeline_e2e::delivery::DeliveryStandIn;
use metrics_pipeline_e2e::in_process::{OperatorTest, delete_and_wait, example_named};
use metrics_pipeline_e2e::produce::valid_events;
use metrics_pipeline_e2e::query::select;
use metrics_pipeline_e2e::{emulator_sdk, table_owner};
use metrics_pipeline_model::event::EventTime;
use metrics_pipeline_operator::aws::catalog::{TableSpec, desired_table};
use metrics_pipeline_operator::aws::delivery::{Connections, desired, destination_configuration};
use metrics_pipeline_runtime::sdk::{s3_client, s3_control_client};
use metrics_pipeline_test_support::wait_for;

/// The names of the hand-built stack.
struct Legacy {
    input: String,
    output: String,
    bucket: String,
    role: String,
    delivery: String,
    database: String,
    table: String,
}

impl Legacy {
    fn named(stack: &str) -> Self {
        Self {
            input: format!("{stack}-metrics"),
            output: format!("{stack}-aggregates"),
            bucket: format!("{stack}-archive"),
            role: format!("{stack}-firehose-role"),
            delivery: format!("{stack}-to-s3"),
            database: stack.replace('-', "_"),
            table: "aggregates".into(),
        }
    }

    fn adopt(&self, read_input_from: &str) -> AdoptSpec {
        AdoptSpec {
            input_stream: Some(self.input.clone()),
            output_stream: Some(self.output.clone()),
            bucket: Some(self.bucket.clone()),
            firehose_role: Some(self.role.clone()),
            delivery_stream: Some(self.delivery.clone()),
            glue_database: Some(self.database.clone()),
            glue_table: Some(self.table.clone()),
            read_input_from: Some(read_input_from.to_owned()),
            confirmed: false,
        }
    }

    /// The bucket's tags before the migration, which it keeps.
    fn stack_tags(&self) -> Vec<(String, String)> {
        let stack_id = "arn:aws:cloudformation:eu-west-1:123456789012:stack/seed/9b1d5c70-0000-11ef-8d3e-0a1b2c3d4e5f";
        let tags = [
            ("cost-center", "observability"),
            ("aws:cloudformation:stack-name", "seed"),
            ("aws:cloudformation:stack-id", stack_id),
            ("aws:cloudformation:logical-id", "ArchiveBucket"),
        ];
        tags.map(|(key, value)| (key.to_owned(), value.to_owned())).to_vec()
    }

    /// Builds the stack through the AWS APIs as the seed's template did: uncompressed JSON, a role
    /// Firehose may assume without the operator's confused-deputy condition, a table keyed
    /// `componentName`, nothing tagged but the bucket: a cost tag, and the system tags
    /// CloudFormation puts on a bucket it makes, which S3's PutBucketTagging can neither keep nor
    /// drop. Only CloudFormation may set `aws:` tags on AWS; the emulator lets the test set them
    /// through S3 Control (its CloudFormation does not tag buckets).
    async fn build(&self, sdk: &aws_config::SdkConfig) {
        let kinesis = aws_sdk_kinesis::Client::new(sdk);
        for stream in [&self.input, &self.output] {
            kinesis.create_stream().stream_name(stream).shard_count(1).send().await.unwrap();
        }
        let described = kinesis.describe_stream_summary().stream_name(&self.output).send().await.unwrap();
        let output_arn = described.stream_description_summary.unwrap().stream_arn;
        let region = sdk.region().unwrap().to_string();
        let s3 = s3_client(sdk);
        let location = CreateBucketConfiguration::builder().location_constraint(BucketLocationConstraint::from(region.as_str())).build();
        s3.create_bucket().bucket(&self.bucket).create_bucket_configuration(location).send().await.unwrap();
        let stack_tags = self.stack_tags().into_iter().map(|(key, value)| Tag::builder().key(key).value(value).build().unwrap());
        let account = aws_sdk_sts::Client::new(sdk).get_caller_identity().send().await.unwrap().account.unwrap();
        let tagging = s3_control_client(sdk).tag_resource().account_id(account).resource_arn(format!("arn:aws:s3:::{}", self.bucket));
        tagging.set_tags(Some(stack_tags.collect())).send().await.unwrap();

        let iam = aws_sdk_iam::Client::new(sdk);
        let trust = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Principal": {"Service": "firehose.amazonaws.com"}, "Action": "sts:AssumeRole"}]});
        let role = iam.create_role().role_name(&self.role).assume_role_policy_document(trust.to_string()).send().await.unwrap();
        let role_arn = role.role.unwrap().arn;
        let grants = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Action": ["kinesis:*", "s3:*"], "Resource": "*"}]});
        let policy = iam.put_role_policy().role_name(&self.role).policy_name("seed-delivery").policy_document(grants.to_string());
        policy.send().await.unwrap();

        let glue = aws_sdk_glue::Client::new(sdk);
        glue.create_database().database_input(DatabaseInput::builder().name(&self.database).build().unwrap()).send().await.unwrap();
        let spec = TableSpec {
            database: &self.database,
            table: &self.table,
            bucket: &self.bucket,
            format: DeliveryFormat::Json,
            partitions: &PartitionConfig::Registered,
            owner: &table_owner("seed/stack"),
        };
        let mut table = desired_table(&spec);
        table.partition_keys = Some(vec![Column::builder().name("componentName").r#type("string").build().unwrap()]);
        table.parameters = Some(HashMap::from([("classification".to_owned(), "json".to_owned())]));
        glue.create_table().database_name(&self.database).table_input(table).send().await.unwrap();

        let config = DeliveryConfig {
            buffer_interval_seconds: 60,
            buffer_size_mib: 64,
            format: DeliveryFormat::Json,
            writer: DeliveryWriter::Firehose,
            compression: Compression::Uncompressed,
            expire_after_days: None,
        };
        let bucket_arn = format!("arn:aws:s3:::{}", self.bucket);
        let connections = Connections {
            output_stream_arn: &output_arn,
            role_arn: &role_arn,
            bucket_arn: &bucket_arn,
            glue_database: &self.database,
            glue_table: &self.table,
            region: &region,
        };
        let source = KinesisStreamSourceConfiguration::builder().kinesis_stream_arn(&output_arn).role_arn(&role_arn).build().unwrap();
        aws_sdk_firehose::Client::new(sdk)
            .create_delivery_stream()
            .delivery_stream_name(&self.delivery)
            .delivery_stream_type(DeliveryStreamType::KinesisStreamAsSource)
            .kinesis_stream_source_configuration(source)
            .extended_s3_destination_configuration(destination_configuration(&desired(&config, &connections)))
            .send()
            .await
            .unwrap();
    }
}

/// Every object key in `bucket`.
async fn keys(s3: &aws_sdk_s3::Client, bucket: &str) -> BTreeSet<String> {
    let listed = s3.list_objects_v2().bucket(bucket).send().await.unwrap();
    listed.contents().iter().filter_map(|object| object.key()).map(str::to_owned).collect()
}

/// Records in the one shard of `stream` that arrived at or after `from`.
async fn records_since(kinesis: &aws_sdk_kinesis::Client, stream: &str, from: EventTime) -> usize {
    let shards = kinesis.list_shards().stream_name(stream).send().await.unwrap();
    let shard = shards.shards()[0].shard_id().to_owned();
    let at = aws_smithy_types::DateTime::from_millis(from.0);
    let iterator = kinesis.get_shard_iterator().stream_name(stream).shard_id(shard).shard_iterator_type(ShardIteratorType::AtTimestamp);
    let mut next = iterator.timestamp(at).send().await.unwrap().shard_iterator;
    let mut count = 0;
    while let Some(iterator) = next.take() {
        let page = kinesis.get_records().shard_iterator(iterator).send().await.unwrap();
        count += page.records().len();
        if page.records().is_empty() {
            break;
        }
        next = page.next_shard_iterator;
    }
    count
}

#[tokio::test]
async fn a_hand_built_stack_is_compared_then_adopted_while_producers_write_and_its_history_stays_queryable() {
    let test = OperatorTest::start("adopt-seed", None, Duration::from_secs(3)).await;
    // An administrator lets the namespace take over what was made by hand.
    let namespaces: Api<Namespace> = Api::all(test.client.clone());
    let allow = serde_json::json!({"metadata": {"annotations": {ADOPTION_ANNOTATION: "true"}}});
    namespaces.patch(&test.namespace.name, &PatchParams::default(), &Patch::Merge(allow)).await.unwrap();
    let sdk = emulator_sdk().await;
    let (kinesis, s3) = (aws_sdk_kinesis::Client::new(&sdk), s3_client(&sdk));
    let legacy = Legacy::named(&format!("seed-{}", std::process::id()));
    legacy.build(&sdk).await;

    // The old job's aggregates, delivered by Firehose: the history.
    for (component, metric, unit, min, max, avg) in
        [("user-service", "cpu-usage", "percent", 43.0, 57.0, 50.0), ("order-service", "ram-usage", "MB", 8.0, 21.0, 14.0)]
    {
        let aggregate = serde_json::json!({"componentName": component, "metricName": metric, "unit": unit, "minValue": min,
            "maxValue": max, "avgValue": avg, "fromTimestamp": "2021-09-09T11:30:00.000Z", "toTimestamp": "2021-09-09T12:30:00.000Z"});
        let data = Blob::new(serde_json::to_vec(&aggregate).unwrap());
        kinesis.put_record().stream_name(&legacy.output).partition_key(component).data(data).send().await.unwrap();
    }
    let mut firehose = DeliveryStandIn::load(&sdk, &legacy.delivery).await.unwrap();
    assert_eq!(firehose.deliver().await.unwrap().len(), 2, "one object per component");
    let history = keys(&s3, &legacy.bucket).await;

    // Producers write throughout; the old job stops at the cutover, which the aggregator starts from.
    let producer = valid_events(legacy.input.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cutover = EventTime(jiff::Timestamp::now().as_millisecond());

    let mut pipeline = example_named("minimal.yaml", "migrated");
    pipeline.spec.deletion_policy = DeletionPolicy::Orphan;
    (pipeline.spec.aggregation.window, pipeline.spec.aggregation.out_of_orderness) = ("10s".into(), "1s".into());
    pipeline.spec.aggregation.idle_timeout = "3s".into();
    pipeline.spec.adopt = Some(legacy.adopt(&cutover.to_string()));
    test.apply(&pipeline).await;
    let status = test.wait_for("migrated", "the comparison", |s| s.phase == Some(Phase::Observing) && !s.drift.is_empty()).await;
    let drift = status.drift.join("\n");
    for named in [
        format!("Kinesis stream {}", legacy.input),
        format!("Kinesis stream {}", legacy.output),
        format!("S3 bucket {}", legacy.bucket),
        format!("Glue database {}", legacy.database),
        format!("IAM role {}", legacy.role),
        format!("Firehose delivery stream {}", legacy.delivery),
    ] {
        assert!(
            drift.contains(&format!("{named}: would be tagged as this pipeline's (adopted, as spec.adopt names it)")),
            "{named}:\n{drift}"
        );
    }
    for difference in [
        format!(
            "Glue table {}.{}: its partition keys are [componentName string], not [componentname string]",
            legacy.database, legacy.table
        ),
        format!("Firehose delivery stream {}: the compression is UNCOMPRESSED, the operator sets GZIP", legacy.delivery),
        format!("IAM role {}: its trust policy is not the one", legacy.role),
        format!("IAM role {}: its inline policy", legacy.role),
    ] {
        assert!(drift.contains(&difference), "{difference}:\n{drift}");
    }
    assert_eq!(status.identity, None, "nothing made, so the adopted names may still be corrected");
    assert_eq!(test.operator().mutating_calls(), Vec::<String>::new(), "comparing changes nothing");
    let tags = kinesis.list_tags_for_stream().stream_name(&legacy.input).send().await.unwrap();
    assert!(tags.tags().iter().all(|tag| tag.key() != OWNER_TAG), "not tagged before the adoption is confirmed");

    // Confirmed: tagged, brought to the spec, and the aggregator takes over from the cutover.
    pipeline.spec.adopt.as_mut().unwrap().confirmed = true;
    test.apply(&pipeline).await;
    let status = test.ready("migrated").await;
    assert_eq!(status.identity.map(|identity| identity.input_stream), Some(legacy.input.clone()));
    let tagging = s3.get_bucket_tagging().bucket(&legacy.bucket).send().await.unwrap();
    let bucket_tags: BTreeSet<(String, String)> =
        tagging.tag_set().iter().map(|tag| (tag.key().to_owned(), tag.value().to_owned())).collect();
    let kept = legacy.stack_tags().into_iter().filter(|tag| !bucket_tags.contains(tag)).collect::<Vec<_>>();
    assert!(kept.is_empty(), "the bucket lost {kept:?} of its stack's tags: {bucket_tags:?}");
    assert!(bucket_tags.iter().any(|(key, _)| key == OWNER_TAG), "{bucket_tags:?}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    producer.abort();

    // The aggregates go out through the same delivery stream, now as the operator set it, and
    // the catalog (recreated under the key Athena finds, its partitions registered again from the
    // bucket) shows the history and the new aggregates together.
    firehose.reload(&sdk).await.unwrap();
    let database = &legacy.database;
    let sql = format!(
        "SELECT metricName AS metric, count(*) AS windows, sum(coalesce(\"count\", 0)) AS events FROM {database}.{} GROUP BY metric ORDER BY metric",
        legacy.table
    );
    let rows = wait_for("every event after the cutover aggregated and queryable beside the history", Duration::from_secs(90), async || {
        // Counted each time: a put the producer had sent when it was stopped may land late.
        let after_cutover = records_since(&kinesis, &legacy.input, cutover).await;
        firehose.deliver().await.map_err(|error| error.to_string())?;
        let rows = select(&sql).await.map_err(|error| error.to_string())?;
        let events = rows.iter().find(|row| row["metric"] == "latency").and_then(|row| row["events"].as_f64()).unwrap_or(0.0);
        match events as usize {
            0 => Err(format!("none of {after_cutover} events yet: {rows:?}")),
            events if events == after_cutover => Ok((rows, after_cutover)),
            events => Err(format!("{events} of {after_cutover} events: {rows:?}")),
        }
    })
    .await
    .unwrap();
    let (rows, after_cutover) = rows;
    let history_rows: Vec<(&str, f64)> = rows
        .iter()
        .filter(|row| row["metric"] != "latency")
        .map(|row| (row["metric"].as_str().unwrap(), row["windows"].as_f64().unwrap()))
        .collect();
    assert_eq!(history_rows, [("cpu-usage", 1.0), ("ram-usage", 1.0)], "the history, once each");
    let now = keys(&s3, &legacy.bucket).await;
    assert!(history.is_subset(&now), "no object lost: {:?}", history.difference(&now).collect::<Vec<_>>());
    assert!(
        records_since(&kinesis, &legacy.input, EventTime(0)).await > after_cutover,
        "what came before the cutover is still in the stream"
    );

    delete_and_wait(&test.pipelines, "migrated").await;
    assert!(s3.head_bucket().bucket(&legacy.bucket).send().await.is_ok(), "deletionPolicy: Orphan keeps the adopted stack");
    test.finish().await;
}
