//! The operator against the real API server and the AWS emulator: a pipeline from the example
//! becomes Ready with every AWS object as specified, steady state mutates nothing, drift is
//! repaired within one resync, deletion leaves nothing, an invalid spec creates nothing, and an
//! AWS outage gives a retryable condition and then recovery.

use std::time::Duration;

use aws_sdk_kinesis::types::StreamStatus;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use metrics_pipeline_api::pipeline::Phase;
use metrics_pipeline_e2e::FIELD_MANAGER;
use metrics_pipeline_e2e::delivery::DeliveryStandIn;
use metrics_pipeline_e2e::emulator_sdk;
use metrics_pipeline_e2e::in_process::{OperatorTest, condition, delete_and_wait, everything_named, example, example_named, ready_at};
use metrics_pipeline_e2e::query::{Format, query};
use metrics_pipeline_e2e::relay::Relay;
use metrics_pipeline_operator::aws::delivery;
use metrics_pipeline_operator::controller::FINALIZER;
use metrics_pipeline_runtime::sdk::s3_client;
use metrics_pipeline_test_support::wait_for;

#[tokio::test]
async fn the_example_pipeline_becomes_ready_stays_put_heals_and_leaves_nothing_behind() {
    let test = OperatorTest::start("op-example", None, Duration::from_secs(3)).await;

    test.apply(&example("pipeline.yaml")).await;
    let status = test.ready("metrics").await;
    let prefix = test.aws_prefix("metrics");
    assert_eq!(condition(&status, "Ready").map(|c| c.0), Some("True"));
    for part in ["StreamsReady", "BucketReady", "DeliveryReady", "CatalogReady", "AggregatorReady"] {
        let condition = status.conditions.iter().find(|c| c.type_ == part).unwrap_or_else(|| panic!("{part} missing"));
        assert_eq!(condition.status, "True", "{part}: {}", condition.message);
    }
    let refs = [
        &status.input_stream,
        &status.output_stream,
        &status.bucket,
        &status.firehose_role,
        &status.delivery_stream,
        &status.glue_database,
        &status.glue_table,
    ];
    for reference in refs {
        let reference = reference.as_ref().expect("every part is named in the status");
        assert!(reference.arn.as_deref().is_some_and(|arn| arn.starts_with("arn:aws:")), "{reference:?} has an ARN");
    }
    assert_eq!(status.input_stream.as_ref().unwrap().name, format!("{prefix}-input"));
    let pipeline = test.pipelines.get("metrics").await.unwrap();
    assert!(pipeline.finalizers().contains(&FINALIZER.to_owned()));

    // The aggregator runs (the node reports its pod ready) from objects the pipeline owns.
    let aggregator = status.aggregator.as_ref().expect("the aggregator in status");
    assert_eq!((aggregator.deployment.as_str(), aggregator.ready_replicas), ("metrics-aggregator", 1));
    let deployments: Api<Deployment> = Api::namespaced(test.client.clone(), &test.namespace.name);
    let deployment = deployments.get("metrics-aggregator").await.unwrap();
    let owner = &deployment.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("MetricsPipeline", pipeline.uid().unwrap().as_str(), Some(true))
    );
    let service_accounts: Api<ServiceAccount> = Api::namespaced(test.client.clone(), &test.namespace.name);
    assert!(service_accounts.get_opt("metrics-aggregator").await.unwrap().is_some());

    // Every AWS object reads back as specified.
    let sdk = emulator_sdk().await;
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    for stream in [format!("{prefix}-input"), format!("{prefix}-output")] {
        let summary = kinesis.describe_stream_summary().stream_name(&stream).send().await.unwrap().stream_description_summary.unwrap();
        assert_eq!((summary.stream_status, summary.open_shard_count, summary.retention_period_hours), (StreamStatus::Active, 1, 24));
        let tags = kinesis.list_tags_for_stream().stream_name(&stream).send().await.unwrap();
        let owner = tags.tags().iter().find(|t| t.key() == "metrics.dev/pipeline").and_then(|t| t.value());
        assert_eq!(owner, Some(format!("{}/metrics", test.namespace.name).as_str()));
    }
    let s3 = s3_client(&sdk);
    let bucket = &status.bucket.as_ref().unwrap().name;
    let block = s3.get_public_access_block().bucket(bucket).send().await.unwrap().public_access_block_configuration.unwrap();
    assert_eq!(
        (block.block_public_acls(), block.ignore_public_acls(), block.block_public_policy(), block.restrict_public_buckets()),
        (Some(true), Some(true), Some(true), Some(true))
    );
    assert!(s3.get_bucket_encryption().bucket(bucket).send().await.unwrap().server_side_encryption_configuration.is_some());
    let firehose = aws_sdk_firehose::Client::new(&sdk);
    let delivery_name = format!("{prefix}-delivery");
    let description =
        firehose.describe_delivery_stream().delivery_stream_name(&delivery_name).send().await.unwrap().delivery_stream_description.unwrap();
    let settings = delivery::settings_of(&description).expect("a Kinesis-sourced extended S3 delivery stream");
    assert_eq!(settings.source_stream_arn, status.output_stream.as_ref().unwrap().arn.clone().unwrap());
    assert_eq!(settings.bucket_arn, status.bucket.as_ref().unwrap().arn.clone().unwrap());
    assert_eq!(settings.role_arn, status.firehose_role.as_ref().unwrap().arn.clone().unwrap());
    assert_eq!((settings.prefix.as_str(), settings.error_prefix.as_str()), (delivery::PREFIX, delivery::ERROR_PREFIX));
    assert_eq!((settings.buffer_interval_seconds, settings.buffer_size_mib), (60, 64));
    assert_eq!(settings.compression, aws_sdk_firehose::types::CompressionFormat::Gzip);
    assert!(settings.dynamic_partitioning);
    let glue = aws_sdk_glue::Client::new(&sdk);
    let database = &status.glue_database.as_ref().unwrap().name;
    let table = glue.get_table().database_name(database).name("metric_aggregates").send().await.unwrap().table.unwrap();
    assert_eq!(table.partition_keys().iter().map(|c| c.name()).collect::<Vec<_>>(), ["componentname"]);
    assert_eq!(table.storage_descriptor().unwrap().location(), Some(format!("s3://{bucket}/").as_str()));
    let iam = aws_sdk_iam::Client::new(&sdk);
    let policy = iam
        .get_role_policy()
        .role_name(format!("{prefix}-firehose"))
        .policy_name(format!("{prefix}-firehose-delivery"))
        .send()
        .await
        .unwrap();
    assert!(policy.policy_document().contains(&format!("{prefix}-output")), "the role's policy names the output stream");

    // Data through the delivery stand-in: aggregates on the output stream land per component,
    // each component's first object gets its Glue partition within a resync, and scripts/query
    // reads the rows back through the table.
    let aggregates = [
        ("user-service", "cpu-usage", "percent", 43.0, 57.0, 50.0, 3, "2021-09-09T11:30:00.000Z", "2021-09-09T12:30:00.000Z"),
        ("order-service", "ram-usage", "MB", 8.0, 21.0, 14.0, 3, "2021-09-09T10:50:00.000Z", "2021-09-09T11:45:00.000Z"),
        ("user-service", "ram-usage", "MB", 512.0, 768.0, 640.0, 2, "2021-09-09T11:50:00.000Z", "2021-09-09T12:10:00.000Z"),
    ];
    for (component, metric, unit, min, max, avg, count, from, to) in aggregates {
        let record = serde_json::json!({
            "componentName": component, "metricName": metric, "unit": unit, "minValue": min, "maxValue": max, "avgValue": avg,
            "count": count, "sum": avg * count as f64, "fromTimestamp": from, "toTimestamp": to,
            "windowStart": "2021-09-09T00:00:00.000Z", "windowEnd": "2021-09-10T00:00:00.000Z", "windowId": "0123456789abcdef", "revision": 0
        });
        let data = aws_sdk_kinesis::primitives::Blob::new(serde_json::to_vec(&record).unwrap());
        kinesis.put_record().stream_name(format!("{prefix}-output")).partition_key(component).data(data).send().await.unwrap();
    }
    let mut stand_in = DeliveryStandIn::load(&sdk, &delivery_name).await.unwrap();
    assert_eq!(stand_in.deliver().await.unwrap().len(), 2, "one object per component");
    wait_for("both partitions registered", Duration::from_secs(10), async || {
        let page = glue.get_partitions().database_name(database).table_name("metric_aggregates").send().await.unwrap();
        let mut partitions: Vec<String> = page.partitions().iter().map(|p| p.values().join(",")).collect();
        partitions.sort();
        if partitions == ["order-service", "user-service"] { Ok(()) } else { Err(format!("{partitions:?}")) }
    })
    .await
    .unwrap();
    let sql = format!(
        "SELECT componentName, metricName, unit, minValue, maxValue, fromTimestamp, toTimestamp FROM {database}.metric_aggregates \
         WHERE componentName = 'user-service' ORDER BY metricName"
    );
    let table = query(&sql, Format::Table).await.unwrap();
    println!("{sql}\n{table}");
    let lines: Vec<&str> = table.lines().skip(2).collect();
    assert_eq!(
        lines,
        [
            "user-service  | cpu-usage  | percent | 43.0     | 57.0     | 2021-09-09 11:30:00.000 | 2021-09-09 12:30:00.000",
            "user-service  | ram-usage  | MB      | 512.0    | 768.0    | 2021-09-09 11:50:00.000 | 2021-09-09 12:10:00.000",
        ]
    );

    // Steady state: resyncs read, and change nothing.
    let (calls_before, mutating_before) = (test.operator().total_calls(), test.operator().mutating_calls());
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(test.operator().total_calls() > calls_before, "resyncs ran");
    assert_eq!(test.operator().mutating_calls(), mutating_before, "a steady-state reconcile makes no mutating AWS call");

    // Drift: what is deleted or changed by hand is put back within a resync or two (3 s each).
    deployments.delete("metrics-aggregator", &DeleteParams::default()).await.unwrap();
    firehose.delete_delivery_stream().delivery_stream_name(&delivery_name).send().await.unwrap();
    glue.delete_table().database_name(database).name("metric_aggregates").send().await.unwrap();
    kinesis.increase_stream_retention_period().stream_name(format!("{prefix}-input")).retention_period_hours(48).send().await.unwrap();
    wait_for("the delivery stream, table and Deployment recreated and the retention restored", Duration::from_secs(10), async || {
        let delivery = firehose.describe_delivery_stream().delivery_stream_name(&delivery_name).send().await.is_ok();
        let table = glue.get_table().database_name(database).name("metric_aggregates").send().await.is_ok();
        let input = kinesis
            .describe_stream_summary()
            .stream_name(format!("{prefix}-input"))
            .send()
            .await
            .unwrap()
            .stream_description_summary
            .unwrap();
        let aggregator = deployments.get_opt("metrics-aggregator").await.unwrap().is_some_and(|d| d.metadata.deletion_timestamp.is_none());
        let repaired = [delivery, table, input.retention_period_hours == 24, aggregator];
        if repaired.iter().all(|ok| *ok) { Ok(()) } else { Err(format!("{repaired:?}")) }
    })
    .await
    .unwrap();

    // Deletion removes every AWS object, then the resource.
    assert!(!everything_named(&prefix).await.is_empty());
    delete_and_wait(&test.pipelines, "metrics").await;
    assert_eq!(everything_named(&prefix).await, Vec::<String>::new(), "nothing left in any service");
    assert!(deployments.get_opt("metrics-aggregator").await.unwrap().is_none(), "the aggregator stopped before its streams went");
    assert!(service_accounts.get_opt("metrics-aggregator").await.unwrap().is_none());
    test.finish().await;
}

#[tokio::test]
async fn an_invalid_spec_gets_a_terminal_condition_naming_the_field_and_creates_nothing() {
    let test = OperatorTest::start("op-invalid", None, Duration::from_secs(60)).await;

    let mut pipeline = example_named("minimal.yaml", "broken");
    pipeline.spec.streams.input.capacity_mode = metrics_pipeline_api::pipeline::CapacityMode::OnDemand;
    pipeline.spec.streams.input.shard_count = Some(2);
    // The API server would refuse this key only when the ServiceAccount is applied, after AWS.
    pipeline.spec.aggregator.service_account_annotations.insert("team owner".into(), "shop".into());
    test.apply(&pipeline).await;
    let status = test.wait_for("broken", "the Failed phase", |s| s.phase == Some(Phase::Failed)).await;
    let (ready, reason, message) = condition(&status, "Ready").unwrap();
    assert_eq!((ready, reason), ("False", "InvalidSpec"));
    assert!(message.contains("spec.streams.input.shardCount"), "{message}");
    assert!(message.contains("spec.aggregator.serviceAccountAnnotations[team owner]"), "{message}");
    assert_eq!(test.operator().mutating_calls(), Vec::<String>::new(), "nothing was created");
    assert_eq!(everything_named(&test.aws_prefix("broken")).await, Vec::<String>::new());

    test.pipelines.delete("broken", &DeleteParams::default()).await.unwrap();
    test.finish().await;
}

#[tokio::test]
async fn an_aws_outage_is_a_retryable_condition_and_the_pipeline_recovers() {
    let emulator = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let relay = Relay::start(&emulator).await.unwrap();
    let test = OperatorTest::start("op-outage", Some(relay.endpoint.clone()), Duration::from_secs(60)).await;

    // AWS unreachable from the first call: retryable, still provisioning.
    let mut pipeline = example_named("minimal.yaml", "outage");
    // Paused: the aggregator is not this test's subject (the quickstart test runs it).
    pipeline.spec.aggregator.replicas = 0;
    test.apply(&pipeline).await;
    let status = test.wait_for("outage", "a retryable condition", |s| condition(s, "Ready").is_some_and(|c| c.1 == "AwsUnavailable")).await;
    assert_eq!(status.phase, Some(Phase::Provisioning));
    assert!(condition(&status, "Ready").unwrap().2.contains("could not be reached"), "{:?}", condition(&status, "Ready"));
    relay.set_up(true);
    test.wait_for("outage", "recovery to Ready", |s| s.phase == Some(Phase::Ready)).await;

    // AWS gone after the pipeline was Ready: Degraded, and Ready again once it is back.
    relay.set_up(false);
    pipeline.spec.delivery.buffer_interval_seconds = 120;
    test.apply(&pipeline).await;
    test.wait_for("outage", "the Degraded phase", |s| s.phase == Some(Phase::Degraded)).await;
    relay.set_up(true);
    test.wait_for("outage", "recovery to Ready", |s| ready_at(s, 2)).await;
    let firehose = aws_sdk_firehose::Client::new(&emulator_sdk().await);
    let delivery = format!("{}-outage-delivery", test.namespace.name);
    let description =
        firehose.describe_delivery_stream().delivery_stream_name(&delivery).send().await.unwrap().delivery_stream_description.unwrap();
    assert_eq!(delivery::settings_of(&description).unwrap().buffer_interval_seconds, 120, "the spec change went through UpdateDestination");

    test.delete_and_check("outage").await;
    test.finish().await;
}

#[tokio::test]
async fn retain_keeps_bucket_and_catalog_and_removes_the_rest() {
    let test = OperatorTest::start("op-retain", None, Duration::from_secs(60)).await;

    // The production-leaning example, with names of its own so that runs never collide.
    let mut pipeline = example("on-demand-retain.yaml");
    pipeline.spec.aggregator.replicas = 0;
    let prefix = test.namespace.name.clone();
    let database = prefix.replace('-', "_");
    pipeline.spec.name_prefix = Some(prefix.clone());
    pipeline.spec.catalog.database = Some(database.clone());
    test.pipelines.patch("shop-metrics", &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&pipeline)).await.unwrap();
    let status = test.wait_for("shop-metrics", "Ready", |s| s.phase == Some(Phase::Ready)).await;

    let sdk = emulator_sdk().await;
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    let input =
        kinesis.describe_stream_summary().stream_name(format!("{prefix}-input")).send().await.unwrap().stream_description_summary.unwrap();
    assert_eq!(input.stream_mode_details.map(|m| m.stream_mode), Some(aws_sdk_kinesis::types::StreamMode::OnDemand));
    assert_eq!(input.retention_period_hours, 168, "the retention change followed the creation");
    let bucket = status.bucket.unwrap().name;
    let s3 = s3_client(&sdk);
    let lifecycle = s3.get_bucket_lifecycle_configuration().bucket(&bucket).send().await.unwrap();
    assert_eq!(lifecycle.rules().iter().filter_map(|r| r.expiration().and_then(|e| e.days())).collect::<Vec<_>>(), [400]);
    let glue = aws_sdk_glue::Client::new(&sdk);
    let table = glue.get_table().database_name(&database).name("metric_aggregates").send().await.unwrap().table.unwrap();
    let parameters = table.parameters().unwrap();
    assert_eq!(parameters["projection.componentname.values"], "user-service,order-service,payment-service");

    delete_and_wait(&test.pipelines, "shop-metrics").await;
    let mut left = everything_named(&prefix).await;
    left.sort();
    assert_eq!(left, [format!("bucket {bucket}"), format!("glue database {database}")], "Retain keeps exactly the data and the catalog");
    assert!(glue.get_table().database_name(&database).name("metric_aggregates").send().await.is_ok(), "the table stays too");

    glue.delete_table().database_name(&database).name("metric_aggregates").send().await.unwrap();
    glue.delete_database().name(&database).send().await.unwrap();
    s3.delete_bucket().bucket(&bucket).send().await.unwrap();
    test.finish().await;
}

#[tokio::test]
async fn a_resource_someone_else_owns_is_never_taken_over() {
    let test = OperatorTest::start("op-taken", None, Duration::from_secs(60)).await;
    let kinesis = aws_sdk_kinesis::Client::new(&emulator_sdk().await);
    let foreign = format!("{}-taken-input", test.namespace.name);
    kinesis.create_stream().stream_name(&foreign).shard_count(1).send().await.unwrap();

    let pipeline = example_named("minimal.yaml", "taken");
    test.apply(&pipeline).await;
    let status = test.wait_for("taken", "the Failed phase", |s| s.phase == Some(Phase::Failed)).await;
    let streams = status.conditions.iter().find(|c| c.type_ == "StreamsReady").unwrap();
    assert_eq!((streams.status.as_str(), streams.reason.as_str()), ("False", "NotOwned"));
    assert!(
        streams.message.contains(&format!("Kinesis stream `{foreign}` already exists and is not this pipeline's")),
        "{}",
        streams.message
    );

    // Refused for good, it is looked at again at the resync, not whenever someone writes to its
    // status or metadata: those writes change nothing a reconcile acts on.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settled = test.operator().reconciles();
    let merge = |value: serde_json::Value| Patch::Merge(value);
    let params = PatchParams::default();
    for round in 0..3 {
        let note = serde_json::json!({"status": {"conditions": [{"type": "Audited", "status": "True", "reason": "Audit",
            "message": format!("round {round}"), "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
        test.pipelines.patch_status("taken", &params, &merge(note)).await.unwrap();
        let label = serde_json::json!({"metadata": {"labels": {"audited": format!("r{round}")}}});
        test.pipelines.patch("taken", &params, &merge(label)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(test.operator().reconciles(), settled, "status and label writes wake no reconcile");

    delete_and_wait(&test.pipelines, "taken").await;
    assert!(
        kinesis.describe_stream_summary().stream_name(&foreign).send().await.is_ok(),
        "the foreign stream survives the pipeline's deletion"
    );
    kinesis.delete_stream().stream_name(&foreign).send().await.unwrap();
    assert_eq!(everything_named(&test.aws_prefix("taken")).await, Vec::<String>::new());
    test.finish().await;
}

#[tokio::test]
async fn switching_to_the_aggregator_as_writer_removes_firehose_and_makes_the_table_parquet() {
    let test = OperatorTest::start("op-writer", None, Duration::from_secs(3)).await;
    let mut pipeline = example_named("minimal.yaml", "writer");
    pipeline.spec.aggregator.replicas = 0;
    test.apply(&pipeline).await;
    let status = test.wait_for("writer", "Ready with Firehose", |s| s.phase == Some(Phase::Ready)).await;
    let delivery_name = status.delivery_stream.expect("Firehose by default").name;

    pipeline.spec.delivery.format = metrics_pipeline_api::pipeline::DeliveryFormat::Parquet;
    pipeline.spec.delivery.writer = metrics_pipeline_api::pipeline::DeliveryWriter::Aggregator;
    test.apply(&pipeline).await;
    let status = test.wait_for("writer", "Ready without Firehose", |s| ready_at(s, 2)).await;
    assert_eq!((&status.delivery_stream, &status.firehose_role), (&None, &None), "the status names no Firehose parts");
    let delivery = status.conditions.iter().find(|c| c.type_ == "DeliveryReady").unwrap();
    assert!(delivery.message.contains("the aggregator writes Parquet files"), "{}", delivery.message);
    let sdk = emulator_sdk().await;
    let firehose = aws_sdk_firehose::Client::new(&sdk);
    assert!(firehose.describe_delivery_stream().delivery_stream_name(&delivery_name).send().await.is_err(), "the delivery stream is gone");
    let glue = aws_sdk_glue::Client::new(&sdk);
    let table =
        glue.get_table().database_name(&status.glue_database.unwrap().name).name("metric_aggregates").send().await.unwrap().table.unwrap();
    let serde = table.storage_descriptor().and_then(|s| s.serde_info()).and_then(|s| s.serialization_library()).map(str::to_owned);
    assert_eq!(serde.as_deref(), Some("org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"));
    let deployments: Api<Deployment> = Api::namespaced(test.client.clone(), &test.namespace.name);
    let container = deployments.get("writer-aggregator").await.unwrap().spec.unwrap().template.spec.unwrap().containers[0].clone();
    assert!(
        container.env.unwrap().iter().any(|var| var.name == "AGGREGATOR_PARQUET" && var.value.as_deref() == Some("gzip")),
        "the aggregator writes the files"
    );

    test.delete_and_check("writer").await;
    test.finish().await;
}

#[tokio::test]
async fn a_renamed_or_moved_pipeline_keeps_its_resources_and_its_deletion_leaves_nothing() {
    let test = OperatorTest::start("op-rename", None, Duration::from_secs(60)).await;
    let mut pipeline = example_named("minimal.yaml", "rename");
    pipeline.spec.aggregator.replicas = 0;
    test.apply(&pipeline).await;
    let identity = test.ready("rename").await.identity.expect("the identity is recorded");

    let renamed = format!("{}-renamed", test.namespace.name);
    pipeline.spec.name_prefix = Some(renamed.clone());
    pipeline.spec.region = Some("us-east-1".into());
    test.apply(&pipeline).await;
    let status = test
        .wait_for("rename", "the move refused", |s| {
            s.observed_generation == Some(2) && condition(s, "IdentityKept").is_some_and(|(status, _, _)| status == "False")
        })
        .await;
    let (_, reason, message) = condition(&status, "IdentityKept").unwrap();
    assert_eq!(reason, "IdentityChangeRefused", "{message}");
    for field in ["spec.namePrefix (from", "spec.region (from `eu-west-1` to `us-east-1`)"] {
        assert!(message.contains(field), "{field}: {message}");
    }
    assert_eq!((status.phase, status.identity.as_ref()), (Some(Phase::Degraded), Some(&identity)), "it goes on where it is");
    assert_eq!(everything_named(&renamed).await, Vec::<String>::new(), "no second stack under the new prefix");
    let us_east = aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::config::Builder::from(&emulator_sdk().await).region(aws_sdk_kinesis::config::Region::new("us-east-1")).build(),
    );
    let listed = us_east.list_streams().send().await.unwrap().stream_names;
    assert!(
        listed.iter().all(|name| !name.starts_with(&renamed) && !name.starts_with(&identity.name_prefix)),
        "none in the new region: {listed:?}"
    );

    test.delete_and_check("rename").await;
    assert_eq!(everything_named(&renamed).await, Vec::<String>::new());
    test.finish().await;
}
