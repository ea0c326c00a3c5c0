//! What the proxy's integration tests share: a proxy in front of the emulator that
//! `scripts/dev-env up` started, SDK settings pointed at it, names no other test uses.

#![allow(dead_code, reason = "each test file uses its own part of this module")]

use std::sync::atomic::{AtomicU32, Ordering};

use aws_config::SdkConfig;
use aws_config::retry::RetryConfig;

use metrics_pipeline_aws_proxy::{AwsProxy, ProxySettings, emulator_url};

/// A proxy in front of the emulator, and SDK settings that reach the emulator through it.
pub async fn proxy(settings: ProxySettings) -> (AwsProxy, SdkConfig) {
    let emulator = emulator_url().expect("AWS_ENDPOINT_URL is not set: run `scripts/dev-env up` and `. .dev-env/env`, or `scripts/test`");
    let proxy = AwsProxy::start(&emulator, settings).await.expect("starting the proxy");
    let config = proxy.sdk_config().await;
    (proxy, config)
}

/// The same settings with the SDK's retries off: each SDK call is exactly one call.
pub fn without_retries(config: &SdkConfig) -> SdkConfig {
    config.to_builder().retry_config(RetryConfig::disabled()).build()
}

/// A name no other test (or earlier run against the same emulator) uses: lower case, digits, dashes.
pub fn unique(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{what}-{}-{nanos}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Creates `bucket` in the settings' region (outside us-east-1 S3 wants it named).
pub async fn create_bucket(config: &SdkConfig, bucket: &str) {
    let region = config.region().map(ToString::to_string).unwrap_or_default();
    let location = aws_sdk_s3::types::CreateBucketConfiguration::builder().location_constraint(region.as_str().into()).build();
    let s3 = metrics_pipeline_runtime::sdk::s3_client(config);
    s3.create_bucket().bucket(bucket).create_bucket_configuration(location).send().await.expect("creating a bucket");
}

/// A trust policy only Firehose may assume.
pub const FIREHOSE_TRUST: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"firehose.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;

/// A delivery stream's destination: `bucket` written as `role`, compression explicit (moto
/// answers a describe without it that the SDK cannot read).
pub fn s3_destination(role_arn: &str, bucket: &str) -> aws_sdk_firehose::types::ExtendedS3DestinationConfiguration {
    aws_sdk_firehose::types::ExtendedS3DestinationConfiguration::builder()
        .role_arn(role_arn)
        .bucket_arn(format!("arn:aws:s3:::{bucket}"))
        .compression_format(aws_sdk_firehose::types::CompressionFormat::Gzip)
        .build()
        .expect("role and bucket are set")
}
