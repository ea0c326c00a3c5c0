//! The Glue catalog as Athena reads it, with the operator running in-process against the
//! emulator: partition columns and projection keys lower-case (Athena lower-cases every column
//! name), an old camelCase table migrated, and rows read back through `scripts/query` over
//! registered and projected partitions; a Glue database holding somebody else's table survives
//! the pipeline's deletion; a format change that would mix formats in one prefix is refused
//! with a condition that says how to migrate, and nothing of it is applied.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_firehose::types::CompressionFormat;
use aws_sdk_glue::types::DatabaseInput;
use aws_sdk_glue::types::{Column, PartitionInput, TableInput};
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use metrics_pipeline_api::config::PartitionConfig;
use metrics_pipeline_api::pipeline::{Compression, DeliveryFormat, DeliveryWriter, PartitionMode, Phase};
use metrics_pipeline_api::{MetricsPipeline, MetricsPipelineStatus};
use metrics_pipeline_e2e::delivery::compress;
use metrics_pipeline_e2e::emulator_sdk;
use metrics_pipeline_e2e::in_process::{OperatorTest, condition, delete_and_wait, example_named, wait_for_status};
use metrics_pipeline_e2e::query::select;
use metrics_pipeline_operator::aws::catalog::{TableSpec, desired_table, storage};
use metrics_pipeline_operator::aws::delivery;
use metrics_pipeline_runtime::sdk::s3_client;
use metrics_pipeline_test_support::wait_for;
use serde_json::json;

const TABLE: &str = "metric_aggregates";
const JSON_SERDE: &str = "org.openx.data.jsonserde.JsonSerDe";

/// A paused pipeline (the aggregator is not the subject here) from the minimal example.
fn pipeline(name: &str) -> MetricsPipeline {
    let mut pipeline = example_named("minimal.yaml", name);
    pipeline.spec.aggregator.replicas = 0;
    pipeline
}

/// The status once the operator has reconciled `generation` to an end (Ready or Failed).
async fn settled(pipelines: &Api<MetricsPipeline>, name: &str, generation: i64) -> MetricsPipelineStatus {
    wait_for_status(pipelines, name, &format!("generation {generation} reconciled"), |s| {
        s.observed_generation == Some(generation) && matches!(s.phase, Some(Phase::Ready | Phase::Failed))
    })
    .await
}

/// One JSON-lines aggregate, gzipped, as Firehose writes it under the component's prefix.
async fn put_aggregate(s3: &aws_sdk_s3::Client, bucket: &str, component: &str, metric: &str) {
    let record = json!({
        "componentName": component, "metricName": metric, "unit": "percent", "minValue": 1.0, "maxValue": 3.0, "avgValue": 2.0,
        "count": 2, "sum": 4.0, "fromTimestamp": "2021-09-09T11:30:00.000Z", "toTimestamp": "2021-09-09T11:30:30.000Z",
        "windowStart": "2021-09-09T11:30:00.000Z", "windowEnd": "2021-09-09T11:31:00.000Z", "windowId": "0123456789abcdef", "revision": 0
    });
    let (body, extension) = compress(&CompressionFormat::Gzip, format!("{record}\n").into_bytes()).unwrap();
    let key = format!("componentName={component}/delivery-1-{metric}{extension}");
    s3.put_object().bucket(bucket).key(key).body(body.into()).send().await.unwrap();
}

async fn table(glue: &aws_sdk_glue::Client, database: &str) -> aws_sdk_glue::types::Table {
    try_table(glue, database).await.unwrap()
}

/// The table, or why it cannot be read: the operator migrates a table by deleting it and creating
/// it again, and between the two it is not found.
async fn try_table(glue: &aws_sdk_glue::Client, database: &str) -> Result<aws_sdk_glue::types::Table, String> {
    let found =
        glue.get_table().database_name(database).name(TABLE).send().await.map_err(|error| format!("GetTable {database}: {error}"))?;
    Ok(found.table.expect("GetTable answers with the table"))
}

fn partition_keys(table: &aws_sdk_glue::types::Table) -> Vec<String> {
    table.partition_keys().iter().map(|c| c.name().to_owned()).collect()
}

/// The table as the operator wrote it before partition columns were lower-cased: partition key
/// `componentName`, projection keys and the location template spelled the same way.
fn camel_case_table(found: &aws_sdk_glue::types::Table) -> TableInput {
    let parameters: HashMap<String, String> = found
        .parameters()
        .unwrap()
        .iter()
        .map(|(key, value)| (key.replace("componentname", "componentName"), value.replace("${componentname}", "${componentName}")))
        .collect();
    TableInput::builder()
        .name(TABLE)
        .table_type("EXTERNAL_TABLE")
        .set_parameters(Some(parameters))
        .set_storage_descriptor(found.storage_descriptor().cloned())
        .partition_keys(Column::builder().name("componentName").r#type("string").build().unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn partition_columns_are_lower_case_old_tables_are_migrated_and_both_modes_read_back() {
    let mut test = OperatorTest::start("cat-case", None, Duration::from_secs(2)).await;
    let registered = pipeline("registered");
    let mut projected = pipeline("projected");
    projected.spec.catalog.partitions.mode = PartitionMode::Projected;
    projected.spec.catalog.partitions.components = vec!["user-service".into(), "order-service".into()];
    test.apply(&registered).await;
    test.apply(&projected).await;
    let registered_status = test.ready("registered").await;
    let projected_status = test.ready("projected").await;

    let sdk = emulator_sdk().await;
    let (glue, s3) = (aws_sdk_glue::Client::new(&sdk), s3_client(&sdk));
    let names = |status: &MetricsPipelineStatus| (status.glue_database.clone().unwrap().name, status.bucket.clone().unwrap().name);
    let (registered_db, registered_bucket) = names(&registered_status);
    let (projected_db, projected_bucket) = names(&projected_status);

    // Fresh tables: the partition column as Athena names it, the projection keyed the same way,
    // the S3 prefix (`componentName=`, as Firehose and the aggregator write it) in the template.
    assert_eq!(partition_keys(&table(&glue, &registered_db).await), ["componentname"]);
    let fresh = table(&glue, &projected_db).await;
    assert_eq!(partition_keys(&fresh), ["componentname"]);
    let parameters = fresh.parameters().unwrap();
    assert_eq!(parameters.get("projection.componentname.type").map(String::as_str), Some("enum"), "{parameters:?}");
    assert_eq!(parameters.get("projection.componentname.values").map(String::as_str), Some("user-service,order-service"));
    assert_eq!(parameters["storage.location.template"], format!("s3://{projected_bucket}/componentName=${{componentname}}/"));
    assert!(!parameters.keys().any(|key| key.contains("componentName")), "no camelCase projection key: {parameters:?}");

    // Tables as an older operator left them, one with a partition registered under the old key:
    // the operator recreates them (Glue cannot rename a partition key) and re-registers. It is
    // stopped meanwhile, or it could migrate a table before the old partition is in it.
    test.stop_operator().await;
    for bucket in [&registered_bucket, &projected_bucket] {
        put_aggregate(&s3, bucket, "user-service", "cpu-usage").await;
        put_aggregate(&s3, bucket, "order-service", "ram-usage").await;
    }
    for database in [&registered_db, &projected_db] {
        let old = camel_case_table(&table(&glue, database).await);
        glue.delete_table().database_name(database).name(TABLE).send().await.unwrap();
        glue.create_table().database_name(database).table_input(old).send().await.unwrap();
    }
    let old_partition = PartitionInput::builder()
        .values("user-service")
        .storage_descriptor(storage(DeliveryFormat::Json, format!("s3://{registered_bucket}/componentName=user-service/")))
        .build();
    glue.create_partition().database_name(&registered_db).table_name(TABLE).partition_input(old_partition).send().await.unwrap();
    test.start_operator().await;
    wait_for("both tables migrated to the lower-case partition column", Duration::from_secs(20), async || {
        let registered = partition_keys(&try_table(&glue, &registered_db).await?);
        let projected = try_table(&glue, &projected_db).await?;
        let projection_keys: Vec<&String> = projected.parameters().unwrap().keys().filter(|k| k.starts_with("projection.")).collect();
        let page = (glue.get_partitions().database_name(&registered_db).table_name(TABLE).send().await)
            .map_err(|error| format!("GetPartitions {registered_db}: {error}"))?;
        let mut partitions: Vec<(String, String)> = page
            .partitions()
            .iter()
            .map(|p| (p.values().join(","), p.storage_descriptor().and_then(|s| s.location()).unwrap_or_default().to_owned()))
            .collect();
        partitions.sort();
        let expected = ["order-service", "user-service"].map(|c| (c.to_owned(), format!("s3://{registered_bucket}/componentName={c}/")));
        let migrated = registered == ["componentname"]
            && partition_keys(&projected) == ["componentname"]
            && projection_keys.iter().all(|key| !key.contains("componentName"))
            && partitions == expected;
        if migrated { Ok(()) } else { Err(format!("{registered:?} {:?} {projection_keys:?} {partitions:?}", partition_keys(&projected))) }
    })
    .await
    .unwrap();

    // Read back as Athena reads: the partition column by its lower-case name, both components.
    for database in [&registered_db, &projected_db] {
        let sql = format!("SELECT componentname, metricname FROM {database}.{TABLE} WHERE componentname <> 'x' ORDER BY componentname");
        let rows = select(&sql).await.unwrap_or_else(|error| panic!("{sql}: {error}"));
        let read: Vec<(String, String)> = rows
            .iter()
            .map(|row| (row["componentname"].as_str().unwrap().to_owned(), row["metricname"].as_str().unwrap().to_owned()))
            .collect();
        assert_eq!(read, [("order-service".into(), "ram-usage".into()), ("user-service".into(), "cpu-usage".into())], "{sql}");
    }

    for name in ["registered", "projected"] {
        test.delete_and_check(name).await;
    }
    test.finish().await;
}

/// What Athena does with a table projected under a camelCase key: it names the column
/// `componentname` and finds no `projection.componentname.*`, so the query fails. `scripts/query`
/// must fail the same way, or the tests above could not catch the camelCase key coming back.
#[tokio::test]
async fn a_camel_case_projection_fails_the_query_as_athena_fails_it() {
    let sdk = emulator_sdk().await;
    let (glue, s3) = (aws_sdk_glue::Client::new(&sdk), s3_client(&sdk));
    let bucket = format!("cat-camel-{}", std::process::id());
    let database = bucket.replace('-', "_");
    let region = BucketLocationConstraint::from(sdk.region().unwrap().as_ref());
    let location = CreateBucketConfiguration::builder().location_constraint(region).build();
    s3.create_bucket().bucket(&bucket).create_bucket_configuration(location).send().await.unwrap();
    glue.create_database().database_input(DatabaseInput::builder().name(&database).build().unwrap()).send().await.unwrap();
    let projected = PartitionConfig::Projected(vec!["user-service".into()]);
    let spec = TableSpec {
        database: &database,
        table: TABLE,
        bucket: &bucket,
        format: DeliveryFormat::Json,
        partitions: &projected,
        owner: &metrics_pipeline_e2e::table_owner("t/c"),
    };
    glue.create_table().database_name(&database).table_input(desired_table(&spec)).send().await.unwrap();
    put_aggregate(&s3, &bucket, "user-service", "cpu-usage").await;
    let sql = format!("SELECT metricname FROM {database}.{TABLE}");
    assert_eq!(select(&sql).await.unwrap().len(), 1, "the table as the operator makes it reads");

    let old = camel_case_table(&table(&glue, &database).await);
    glue.delete_table().database_name(&database).name(TABLE).send().await.unwrap();
    glue.create_table().database_name(&database).table_input(old).send().await.unwrap();
    let error = select(&sql).await.unwrap_err().to_string();
    assert!(error.contains("missing projection configuration: ['componentname']"), "{error}");

    glue.delete_table().database_name(&database).name(TABLE).send().await.unwrap();
    glue.delete_database().name(&database).send().await.unwrap();
    for object in s3.list_objects_v2().bucket(&bucket).send().await.unwrap().contents() {
        s3.delete_object().bucket(&bucket).key(object.key().unwrap()).send().await.unwrap();
    }
    s3.delete_bucket().bucket(&bucket).send().await.unwrap();
}

#[tokio::test]
async fn a_glue_database_holding_another_table_survives_the_pipelines_deletion() {
    let test = OperatorTest::start("cat-shared", None, Duration::from_secs(60)).await;
    test.apply(&pipeline("shared")).await;
    let status = test.ready("shared").await;
    let database = status.glue_database.unwrap().name;

    // Someone keeps a table of their own in the pipeline's database.
    let glue = aws_sdk_glue::Client::new(&emulator_sdk().await);
    let theirs = TableInput::builder().name("dashboards").table_type("EXTERNAL_TABLE").build().unwrap();
    glue.create_table().database_name(&database).table_input(theirs).send().await.unwrap();

    delete_and_wait(&test.pipelines, "shared").await;
    assert!(glue.get_table().database_name(&database).name(TABLE).send().await.is_err(), "the pipeline's table is gone");
    let left = glue.get_tables().database_name(&database).send().await.expect("the database survives");
    assert_eq!(left.table_list().iter().map(|t| t.name()).collect::<Vec<_>>(), ["dashboards"], "with the other table in it");
    let events: Api<Event> = Api::namespaced(test.client.clone(), &test.namespace.name);
    let notes: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Deleted"))
        .filter_map(|e| e.note.clone())
        .collect();
    assert!(
        notes.iter().any(|note| note.contains(&format!("kept Glue database {database}")) && note.contains("dashboards")),
        "the deletion says why the database stays: {notes:?}"
    );

    glue.delete_table().database_name(&database).name("dashboards").send().await.unwrap();
    glue.delete_database().name(&database).send().await.unwrap();
    test.finish().await;
}

#[tokio::test]
async fn a_format_change_over_written_objects_is_refused_with_the_migration_and_nothing_of_it_applies() {
    let test = OperatorTest::start("cat-format", None, Duration::from_secs(2)).await;
    let mut spec = pipeline("format");
    test.apply(&spec).await;
    let status = test.ready("format").await;
    let (database, bucket) = (status.glue_database.unwrap().name, status.bucket.unwrap().name);
    let delivery_name = status.delivery_stream.unwrap().name;
    let sdk = emulator_sdk().await;
    let (glue, s3, firehose) = (aws_sdk_glue::Client::new(&sdk), s3_client(&sdk), aws_sdk_firehose::Client::new(&sdk));
    put_aggregate(&s3, &bucket, "user-service", "cpu-usage").await;
    let rows = format!("SELECT metricname FROM {database}.{TABLE}");
    wait_for("the JSON object readable", Duration::from_secs(20), async || {
        let read = select(&rows).await.map_err(|error| error.to_string())?;
        if read.len() == 1 { Ok(()) } else { Err(format!("{read:?}")) }
    })
    .await
    .unwrap();

    // JSON objects are in the prefixes: Parquet there would be unreadable (or the JSON would).
    let refused = |status: &MetricsPipelineStatus, from: &str, to: &str| {
        assert_eq!(status.phase, Some(Phase::Failed), "{status:#?}");
        let (ready, reason, message) = condition(status, "CatalogReady").unwrap();
        assert_eq!((ready, reason), ("False", "UnsafeChange"), "{message}");
        for needed in ["spec.delivery.format", from, to, "deletionPolicy: Retain", "spec.namePrefix"] {
            assert!(message.contains(needed), "the condition names {needed}: {message}");
        }
    };
    spec.spec.delivery.format = DeliveryFormat::Parquet;
    test.apply(&spec).await;
    refused(&settled(&test.pipelines, "format", 2).await, "Json", "Parquet");
    let unchanged = async || {
        let serde = table(&glue, &database).await.storage_descriptor().unwrap().serde_info().unwrap().serialization_library.clone();
        assert_eq!(serde.as_deref(), Some(JSON_SERDE), "the table still reads JSON");
        let description =
            firehose.describe_delivery_stream().delivery_stream_name(&delivery_name).send().await.unwrap().delivery_stream_description;
        let settings = delivery::settings_of(&description.unwrap()).unwrap();
        assert_eq!(settings.parquet, None, "the delivery stream still writes JSON");
        assert_eq!(select(&rows).await.unwrap().len(), 1, "the data reads as before");
    };
    unchanged().await;

    // The aggregator as writer would put its Parquet files beside the JSON: refused as well.
    spec.spec.delivery.writer = DeliveryWriter::Aggregator;
    test.apply(&spec).await;
    refused(&settled(&test.pipelines, "format", 3).await, "Json", "Parquet");
    unchanged().await;

    // Back to JSON it is Ready again; compression is per object (its extension), safe to change.
    spec.spec.delivery.format = DeliveryFormat::Json;
    spec.spec.delivery.writer = DeliveryWriter::Firehose;
    spec.spec.delivery.compression = Compression::Snappy;
    test.apply(&spec).await;
    let status = settled(&test.pipelines, "format", 4).await;
    assert_eq!(status.phase, Some(Phase::Ready), "{status:#?}");
    unchanged().await;

    test.delete_and_check("format").await;
    test.finish().await;
}
