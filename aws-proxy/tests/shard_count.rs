//! UpdateShardCount as AWS limits it and moto does not: at most double or half the open shards
//! per call, and a daily number of scalings per stream; each refusal a LimitExceededException,
//! which the SDK classifies as throttling and retries.

mod common;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::types::ScalingType;

use metrics_pipeline_aws_proxy::{Outcome, ProxySettings, Rule, RuleSettings, Service};

use common::{proxy, unique, without_retries};

/// Scales `stream` to `target`: `Ok` with the open shard count after, or the error code and message.
async fn scale(kinesis: &Client, stream: &str, target: i32) -> Result<i32, (String, String)> {
    let update =
        kinesis.update_shard_count().stream_name(stream).target_shard_count(target).scaling_type(ScalingType::UniformScaling).send().await;
    if let Err(error) = update {
        return Err((error.code().unwrap_or("?").to_owned(), error.message().unwrap_or("").to_owned()));
    }
    let summary = kinesis.describe_stream_summary().stream_name(stream).send().await.unwrap();
    Ok(summary.stream_description_summary().unwrap().open_shard_count())
}

async fn create_stream(kinesis: &Client) -> String {
    let stream = unique("scaled");
    kinesis.create_stream().stream_name(&stream).shard_count(1).send().await.unwrap();
    stream
}

#[tokio::test]
async fn each_scaling_at_most_doubles_or_halves_the_open_shards() {
    let (proxy, config) = proxy(ProxySettings::default()).await;
    let kinesis = Client::new(&without_retries(&config));
    let stream = create_stream(&kinesis).await;

    let refused = |message: &str| Err(("LimitExceededException".to_owned(), message.to_owned()));
    assert_eq!(
        scale(&kinesis, &stream, 4).await,
        refused(
            "UpdateShardCount cannot scale up over double your current open shard count. Current open shard count: 1 Target shard count: 4"
        )
    );
    assert_eq!(scale(&kinesis, &stream, 2).await, Ok(2));
    assert_eq!(scale(&kinesis, &stream, 4).await, Ok(4));
    assert_eq!(
        scale(&kinesis, &stream, 1).await,
        refused(
            "UpdateShardCount cannot scale down below half your current open shard count. Current open shard count: 4 Target shard count: 1"
        )
    );
    assert_eq!(scale(&kinesis, &stream, 2).await, Ok(2));

    let outcomes = proxy.stats().outcomes(Service::Kinesis, "UpdateShardCount");
    let refusal = Outcome::Refused { rule: Rule::ShardCount };
    let forwarded = Outcome::Forwarded { status: 200 };
    assert_eq!(outcomes, [refusal, forwarded, forwarded, refusal, forwarded]);
    kinesis.delete_stream().stream_name(&stream).send().await.unwrap();
}

#[tokio::test]
async fn a_stream_is_scaled_at_most_the_daily_number_of_times() {
    let (proxy, config) =
        proxy(ProxySettings { rules: RuleSettings { scalings_per_day: 2, ..RuleSettings::default() }, ..ProxySettings::default() }).await;
    let kinesis = Client::new(&without_retries(&config));
    let stream = create_stream(&kinesis).await;
    assert_eq!(scale(&kinesis, &stream, 2).await, Ok(2));
    assert_eq!(scale(&kinesis, &stream, 4).await, Ok(4));
    let (code, message) = scale(&kinesis, &stream, 8).await.unwrap_err();
    assert_eq!(code, "LimitExceededException");
    assert!(message.starts_with(&format!(
        "Exceeded the limit of 2 UpdateShardCount calls per rolling 24-hour period for stream {stream} under account "
    )));
    assert!(!message.contains("Rate exceeded"), "a quota, not throttling: {message}");

    let other = create_stream(&kinesis).await;
    assert_eq!(scale(&kinesis, &other, 2).await, Ok(2), "the limit is per stream");

    // The SDK takes LimitExceededException for throttling: three attempts, all refused.
    proxy.reset_stats();
    let retrying = Client::new(&config);
    assert_eq!(scale(&retrying, &stream, 8).await.unwrap_err().0, "LimitExceededException");
    assert_eq!(proxy.stats().outcomes(Service::Kinesis, "UpdateShardCount"), [Outcome::Refused { rule: Rule::ShardCount }; 3]);
    for stream in [stream, other] {
        kinesis.delete_stream().stream_name(&stream).send().await.unwrap();
    }
}
