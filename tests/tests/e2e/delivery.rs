//! The delivery stand-in against a delivery stream configured exactly as the operator builds it:
//! records land under `componentName=<name>/`, newline-delimited and gzipped, and read back
//! through the operator's Glue table with `scripts/query`; a record the JQ query cannot key lands
//! under the error prefix; a record written before the delivery stream was created is not delivered.

use aws_sdk_firehose::types::{DeliveryStreamType, KinesisStreamSourceConfiguration};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use metrics_pipeline_api::config::{DeliveryConfig, PartitionConfig};
use metrics_pipeline_api::pipeline::{Compression, DeliveryFormat, DeliveryWriter};
use metrics_pipeline_e2e::delivery::DeliveryStandIn;
use metrics_pipeline_e2e::emulator_sdk;
use metrics_pipeline_e2e::pipe_through;
use metrics_pipeline_e2e::query::{Format, query};
use metrics_pipeline_operator::aws::catalog::{TableSpec, desired_table};
use metrics_pipeline_operator::aws::delivery::{Connections, desired, destination_configuration};
use metrics_pipeline_runtime::sdk::s3_client;

#[tokio::test]
async fn records_land_per_component_and_unkeyable_ones_under_the_error_prefix() {
    let sdk = emulator_sdk().await;
    let unique = format!("standin-{}", std::process::id());
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    kinesis.create_stream().stream_name(&unique).shard_count(1).send().await.unwrap();
    let stream_arn =
        kinesis.describe_stream_summary().stream_name(&unique).send().await.unwrap().stream_description_summary.unwrap().stream_arn;
    let s3 = s3_client(&sdk);
    let region = sdk.region().unwrap().to_string();
    let location = CreateBucketConfiguration::builder().location_constraint(BucketLocationConstraint::from(region.as_str())).build();
    s3.create_bucket().bucket(&unique).create_bucket_configuration(location).send().await.unwrap();

    let config = DeliveryConfig {
        buffer_interval_seconds: 60,
        buffer_size_mib: 64,
        format: DeliveryFormat::Json,
        writer: DeliveryWriter::Firehose,
        compression: Compression::Gzip,
        expire_after_days: None,
    };
    // The operator's table over the bucket, its partitions projected over the two components.
    let database = unique.replace('-', "_");
    let partitions = PartitionConfig::Projected(vec!["user-service".into(), "order-service".into()]);
    let spec = TableSpec {
        database: &database,
        table: "t",
        bucket: &unique,
        format: config.format,
        partitions: &partitions,
        owner: &metrics_pipeline_e2e::table_owner("test/standin"),
    };
    let glue = aws_sdk_glue::Client::new(&sdk);
    glue.create_database()
        .database_input(aws_sdk_glue::types::DatabaseInput::builder().name(&database).build().unwrap())
        .send()
        .await
        .unwrap();
    glue.create_table().database_name(&database).table_input(desired_table(&spec)).send().await.unwrap();

    let role = "arn:aws:iam::123456789012:role/standin";
    let bucket_arn = format!("arn:aws:s3:::{unique}");
    let connections = Connections {
        output_stream_arn: &stream_arn,
        role_arn: role,
        bucket_arn: &bucket_arn,
        glue_database: &database,
        glue_table: "t",
        region: &region,
    };
    let settings = desired(&config, &connections);
    // Written before the delivery stream exists: Firehose starts at LATEST, so it is never delivered.
    let early = r#"{"componentName":"user-service","metricName":"before-the-delivery-stream","minValue":1.0}"#;
    kinesis.put_record().stream_name(&unique).partition_key("k").data(Blob::new(early)).send().await.unwrap();
    // CreateTimestamp has millisecond precision: the record must be at least a millisecond older.
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    let source = KinesisStreamSourceConfiguration::builder().kinesis_stream_arn(&stream_arn).role_arn(role).build().unwrap();
    aws_sdk_firehose::Client::new(&sdk)
        .create_delivery_stream()
        .delivery_stream_name(&unique)
        .delivery_stream_type(DeliveryStreamType::KinesisStreamAsSource)
        .kinesis_stream_source_configuration(source)
        .extended_s3_destination_configuration(destination_configuration(&settings))
        .send()
        .await
        .unwrap();

    let records = [
        r#"{"componentName":"user-service","metricName":"cpu-usage","minValue":43.0}"#,
        r#"{"componentName":"order-service","metricName":"ram-usage","minValue":8.0}"#,
        r#"{"componentName":"user-service","metricName":"ram-usage","minValue":512.0}"#,
        r#"{"metricName":"orphan"}"#,
    ];
    for record in records {
        kinesis.put_record().stream_name(&unique).partition_key("k").data(Blob::new(record)).send().await.unwrap();
    }
    let mut stand_in = DeliveryStandIn::load(&sdk, &unique).await.unwrap();
    let delivered = stand_in.deliver().await.unwrap();
    let prefixes: Vec<(&str, usize)> = delivered.iter().map(|(key, count)| (key.rsplit_once('/').unwrap().0, *count)).collect();
    assert_eq!(prefixes, [("componentName=order-service", 1), ("componentName=user-service", 2), ("errors/processing-failed", 1)]);

    assert!(delivered.keys().all(|key| key.ends_with(".gz")), "{delivered:?}");
    let sql = format!("SELECT componentName, metricName, minValue FROM {database}.t ORDER BY componentName, metricName");
    let table = query(&sql, Format::Table).await.unwrap();
    assert_eq!(
        table.lines().skip(2).collect::<Vec<_>>(),
        ["order-service | ram-usage  | 8.0", "user-service  | cpu-usage  | 43.0", "user-service  | ram-usage  | 512.0"],
        "{sql}\n{table}"
    );
    // The error output is no table's: its record is read here, as a user reads it to replay it.
    let error_key = delivered.keys().find(|key| key.starts_with("errors/")).unwrap();
    let body = s3.get_object().bucket(&unique).key(error_key).send().await.unwrap().body.collect().await.unwrap().to_vec();
    let failed: serde_json::Value = serde_json::from_slice(&pipe_through("gzip", &["-dc"], &body).unwrap()).unwrap();
    assert_eq!(failed["errorCode"], "DynamicPartitioning.MetadataExtractionFailed");
    assert_eq!(aws_smithy_types::base64::decode(failed["rawData"].as_str().unwrap()).unwrap(), records[3].as_bytes());

    assert!(stand_in.deliver().await.unwrap().is_empty(), "a second buffer delivers only what is new");
}
