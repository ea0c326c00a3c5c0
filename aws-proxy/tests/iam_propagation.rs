//! IAM propagation: Firehose refuses a role for a while after it was created or its policy
//! changed, with each of the messages Firehose gives in turn, then accepts it.

mod common;

use std::time::{Duration, Instant};

use aws_sdk_firehose::error::ProvideErrorMetadata;
use aws_sdk_firehose::types::{DeliveryStreamType, ExtendedS3DestinationUpdate, KinesisStreamSourceConfiguration};

use metrics_pipeline_aws_proxy::{Outcome, ProxySettings, Rule, RuleSettings, Service};
use metrics_pipeline_test_support::wait_for;

use common::{FIREHOSE_TRUST, create_bucket, proxy, s3_destination, unique};

const POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:PutObject","Resource":"*"}]}"#;

#[tokio::test]
async fn firehose_refuses_a_new_role_until_iam_has_propagated_it() {
    let propagation = Duration::from_secs(3);
    let settings =
        ProxySettings { rules: RuleSettings { iam_propagation: propagation, ..RuleSettings::default() }, ..ProxySettings::default() };
    let (proxy, config) = proxy(settings).await;
    let (iam, kinesis, firehose) =
        (aws_sdk_iam::Client::new(&config), aws_sdk_kinesis::Client::new(&config), aws_sdk_firehose::Client::new(&config));
    let s3 = metrics_pipeline_runtime::sdk::s3_client(&config);
    let (name, bucket) = (unique("propagation"), unique("propagation-bucket"));
    create_bucket(&config, &bucket).await;
    kinesis.create_stream().stream_name(&name).shard_count(1).send().await.unwrap();
    let stream_arn =
        kinesis.describe_stream_summary().stream_name(&name).send().await.unwrap().stream_description_summary.unwrap().stream_arn;

    let role_created = Instant::now();
    let role = iam.create_role().role_name(&name).assume_role_policy_document(FIREHOSE_TRUST).send().await.unwrap().role.unwrap();
    let create = || {
        let source = KinesisStreamSourceConfiguration::builder().kinesis_stream_arn(&stream_arn).role_arn(role.arn()).build().unwrap();
        let destination = s3_destination(role.arn(), &bucket);
        firehose
            .create_delivery_stream()
            .delivery_stream_name(&name)
            .delivery_stream_type(DeliveryStreamType::KinesisStreamAsSource)
            .kinesis_stream_source_configuration(source)
            .extended_s3_destination_configuration(destination)
            .send()
    };
    let mut messages = Vec::new();
    for _ in 0..4 {
        let error = create().await.unwrap_err();
        assert_eq!(error.code(), Some("InvalidArgumentException"));
        messages.push(error.message().unwrap_or("").to_owned());
    }
    assert_eq!(messages[0], format!("Firehose is unable to assume role {}. Please check the role provided.", role.arn()));
    assert_eq!(messages[1], format!("Role {} is not authorized to perform: kinesis:DescribeStream on resource {stream_arn}.", role.arn()));
    assert!(messages[2].starts_with("Access was denied when calling Glue."), "{}", messages[2]);
    assert!(messages[3].starts_with("Verify that the IAM role has access"), "{}", messages[3]);

    wait_for("the delivery stream to be created", Duration::from_secs(10), async || create().await.map_err(|error| format!("{error:?}")))
        .await
        .unwrap();
    assert!(role_created.elapsed() >= propagation);

    // A policy change starts the wait again, for UpdateDestination as well.
    iam.put_role_policy().role_name(&name).policy_name("delivery").policy_document(POLICY).send().await.unwrap();
    let described =
        firehose.describe_delivery_stream().delivery_stream_name(&name).send().await.unwrap().delivery_stream_description.unwrap();
    let update = || {
        let destination = ExtendedS3DestinationUpdate::builder().role_arn(role.arn()).build();
        firehose
            .update_destination()
            .delivery_stream_name(&name)
            .current_delivery_stream_version_id(described.version_id())
            .destination_id(described.destinations()[0].destination_id())
            .extended_s3_destination_update(destination)
            .send()
    };
    let error = update().await.unwrap_err();
    assert_eq!((error.code(), error.message()), (Some("InvalidArgumentException"), Some(messages[0].as_str())));
    wait_for("the destination to be updated", Duration::from_secs(10), async || update().await.map_err(|error| format!("{error:?}")))
        .await
        .unwrap();

    let refused = |operation| {
        proxy
            .stats()
            .outcomes(Service::Firehose, operation)
            .into_iter()
            .filter(|outcome| *outcome == Outcome::Refused { rule: Rule::IamPropagation })
            .count()
    };
    assert!(refused("CreateDeliveryStream") >= 4 && refused("UpdateDestination") >= 1);

    firehose.delete_delivery_stream().delivery_stream_name(&name).send().await.unwrap();
    iam.delete_role_policy().role_name(&name).policy_name("delivery").send().await.unwrap();
    iam.delete_role().role_name(&name).send().await.unwrap();
    kinesis.delete_stream().stream_name(&name).send().await.unwrap();
    s3.delete_bucket().bucket(&bucket).send().await.unwrap();
}
