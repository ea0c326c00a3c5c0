//! Creating and scaling take time on AWS, none on moto: through the proxy a new or scaled
//! stream and a new delivery stream report CREATING or UPDATING for a while, and changes made
//! before they are ACTIVE are refused with ResourceInUseException.

mod common;

use std::time::Duration;

use aws_sdk_firehose::types::{CompressionFormat, DeliveryStreamType, ExtendedS3DestinationUpdate};
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::types::ScalingType;

use metrics_pipeline_aws_proxy::{ProxySettings, RuleSettings};
use metrics_pipeline_test_support::wait_for;

use common::{FIREHOSE_TRUST, create_bucket, proxy, s3_destination, unique};

const TRANSITION: Duration = Duration::from_millis(1500);

fn slow_transitions() -> ProxySettings {
    ProxySettings { rules: RuleSettings { transition: TRANSITION, ..RuleSettings::default() }, ..ProxySettings::default() }
}

#[tokio::test]
async fn a_new_or_scaled_stream_is_not_active_at_once() {
    let (_proxy, config) = proxy(slow_transitions()).await;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = unique("transition");
    let status = async || {
        let summary = kinesis.describe_stream_summary().stream_name(&stream).send().await.map_err(|error| format!("{error:?}"))?;
        Ok::<_, String>(summary.stream_description_summary().map(|summary| summary.stream_status().as_str().to_owned()).unwrap_or_default())
    };
    let scale = |target| {
        kinesis.update_shard_count().stream_name(&stream).target_shard_count(target).scaling_type(ScalingType::UniformScaling).send()
    };
    let active = async || match status().await? {
        status if status == "ACTIVE" => Ok(()),
        other => Err(other),
    };

    kinesis.create_stream().stream_name(&stream).shard_count(1).send().await.unwrap();
    assert_eq!(status().await.unwrap(), "CREATING");
    let refused = scale(2).await.unwrap_err();
    assert_eq!(refused.code(), Some("ResourceInUseException"));
    assert!(refused.message().unwrap().ends_with("not ACTIVE, instead in state CREATING"), "{refused:?}");

    wait_for("the stream to be ACTIVE", TRANSITION * 4, async || active().await).await.unwrap();
    scale(2).await.unwrap();
    assert_eq!(status().await.unwrap(), "UPDATING");
    let described = kinesis.describe_stream().stream_name(&stream).send().await.unwrap();
    assert_eq!(described.stream_description().map(|description| description.stream_status().as_str()), Some("UPDATING"));
    assert_eq!(scale(4).await.unwrap_err().code(), Some("ResourceInUseException"));
    wait_for("the stream to be ACTIVE again", TRANSITION * 4, async || active().await).await.unwrap();
    kinesis.delete_stream().stream_name(&stream).send().await.unwrap();
}

#[tokio::test]
async fn a_new_delivery_stream_is_creating_for_a_while() {
    let (_proxy, config) = proxy(slow_transitions()).await;
    let (iam, firehose) = (aws_sdk_iam::Client::new(&config), aws_sdk_firehose::Client::new(&config));
    let (name, bucket) = (unique("transition"), unique("transition-bucket"));
    create_bucket(&config, &bucket).await;
    let role = iam.create_role().role_name(&name).assume_role_policy_document(FIREHOSE_TRUST).send().await.unwrap().role.unwrap();
    let destination = s3_destination(role.arn(), &bucket);
    firehose
        .create_delivery_stream()
        .delivery_stream_name(&name)
        .delivery_stream_type(DeliveryStreamType::DirectPut)
        .extended_s3_destination_configuration(destination)
        .send()
        .await
        .unwrap();

    let describe = async || {
        let described =
            firehose.describe_delivery_stream().delivery_stream_name(&name).send().await.map_err(|error| format!("{error:?}"))?;
        described.delivery_stream_description.ok_or_else(|| "no description".to_owned())
    };
    let creating = describe().await.unwrap();
    assert_eq!(creating.delivery_stream_status().as_str(), "CREATING");
    let update = |version: String, destination: String| {
        let change = ExtendedS3DestinationUpdate::builder().compression_format(CompressionFormat::Snappy).build();
        firehose
            .update_destination()
            .delivery_stream_name(&name)
            .current_delivery_stream_version_id(version)
            .destination_id(destination)
            .extended_s3_destination_update(change)
            .send()
    };
    let destination_id = creating.destinations()[0].destination_id().to_owned();
    let refused = update(creating.version_id().to_owned(), destination_id.clone()).await.unwrap_err();
    assert_eq!(aws_sdk_firehose::error::ProvideErrorMetadata::code(&refused), Some("ResourceInUseException"));

    let active = wait_for("the delivery stream to be ACTIVE", TRANSITION * 4, async || {
        let described = describe().await?;
        if described.delivery_stream_status().as_str() == "ACTIVE" {
            Ok(described)
        } else {
            Err(described.delivery_stream_status().as_str().to_owned())
        }
    })
    .await
    .unwrap();
    update(active.version_id().to_owned(), destination_id).await.unwrap();

    firehose.delete_delivery_stream().delivery_stream_name(&name).send().await.unwrap();
    iam.delete_role().role_name(&name).send().await.unwrap();
    metrics_pipeline_runtime::sdk::s3_client(&config).delete_bucket().bucket(&bucket).send().await.unwrap();
}
