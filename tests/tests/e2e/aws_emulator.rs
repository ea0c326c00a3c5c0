//! The shared AWS SDK settings (one TLS stack, default credential chain, `AWS_ENDPOINT_URL`)
//! reach the emulator that `scripts/dev-env up` starts.

use metrics_pipeline_e2e::emulator_sdk;
use metrics_pipeline_runtime::sdk::sdk_config;

#[tokio::test]
async fn the_sdk_reaches_the_emulator_with_the_test_credentials() {
    assert!(
        std::env::var_os("AWS_ENDPOINT_URL").is_some(),
        "AWS_ENDPOINT_URL is not set: run `scripts/dev-env up` and `. .dev-env/env`, or run the tests with `scripts/test`"
    );
    let config = emulator_sdk().await;
    assert_eq!(config.region().map(|r| r.as_ref()), std::env::var("AWS_REGION").ok().as_deref());

    let identity = aws_sdk_sts::Client::new(&config).get_caller_identity().send().await.unwrap();
    let account = identity.account().unwrap();
    assert!(account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()), "{account}");

    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let stream = format!("emulator-check-{}", std::process::id());
    kinesis.create_stream().stream_name(&stream).shard_count(1).send().await.unwrap();
    let description = kinesis.describe_stream_summary().stream_name(&stream).send().await.unwrap();
    let summary = description.stream_description_summary().unwrap();
    assert_eq!(summary.stream_name(), stream);
    assert!(summary.stream_arn().contains(&format!(":{account}:stream/{stream}")), "{}", summary.stream_arn());
    kinesis.delete_stream().stream_name(&stream).send().await.unwrap();
}

#[tokio::test]
async fn an_explicit_region_overrides_the_environment() {
    let config = sdk_config(Some("ap-southeast-2".into())).await;
    assert_eq!(config.region().map(|r| r.as_ref()), Some("ap-southeast-2"));
}
