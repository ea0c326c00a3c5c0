//! The delivery stand-in against a delivery stream configured exactly as the operator builds it:
//! records land under `componentName=<name>/`, newline-delimited and gzipped; a record the JQ
//! query cannot key lands under the error prefix.

use aws_sdk_firehose::types::{DeliveryStreamType, KinesisStreamSourceConfiguration};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use metrics_pipeline_api::config::DeliveryConfig;
use metrics_pipeline_api::pipeline::{Compression, DeliveryFormat, DeliveryWriter};
use metrics_pipeline_e2e::delivery::DeliveryStandIn;
use metrics_pipeline_e2e::query::gunzip;
use metrics_pipeline_operator::aws::delivery::{Connections, desired, destination_configuration};
use metrics_pipeline_runtime::sdk::{s3_client, sdk_config};

#[tokio::test]
async fn records_land_per_component_and_unkeyable_ones_under_the_error_prefix() {
    let sdk = sdk_config(None).await;
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
    let role = "arn:aws:iam::123456789012:role/standin";
    let bucket_arn = format!("arn:aws:s3:::{unique}");
    let connections = Connections {
        output_stream_arn: &stream_arn,
        role_arn: role,
        bucket_arn: &bucket_arn,
        glue_database: "d",
        glue_table: "t",
        region: &region,
    };
    let settings = desired(&config, &connections);
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

    let user_key = delivered.keys().find(|key| key.starts_with("componentName=user-service/")).unwrap();
    assert!(user_key.ends_with(".gz"));
    let body = s3.get_object().bucket(&unique).key(user_key).send().await.unwrap().body.collect().await.unwrap().to_vec();
    assert_eq!(gunzip(&body).unwrap(), format!("{}\n{}\n", records[0], records[2]), "newline-delimited, in order");
    let error_key = delivered.keys().find(|key| key.starts_with("errors/")).unwrap();
    let body = s3.get_object().bucket(&unique).key(error_key).send().await.unwrap().body.collect().await.unwrap().to_vec();
    let failed: serde_json::Value = serde_json::from_str(gunzip(&body).unwrap().trim()).unwrap();
    assert_eq!(failed["errorCode"], "DynamicPartitioning.MetadataExtractionFailed");
    assert_eq!(aws_smithy_types::base64::decode(failed["rawData"].as_str().unwrap()).unwrap(), records[3].as_bytes());

    assert!(stand_in.deliver().await.unwrap().is_empty(), "a second buffer delivers only what is new");
}
