//! Faults as the AWS SDK sees them, through the proxy to the emulator: each service's own
//! throttling error, 5xx, dropped connections, lost answers, latency; scoped, changed at run
//! time, and repeatable from a seed. The SDK's standard retry makes up to 3 attempts, and the
//! proxy counts each.

mod common;

use std::time::{Duration, Instant};

use aws_sdk_kinesis::config::http::HttpResponse;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;

use metrics_pipeline_aws_proxy::{Fault, FaultSettings, Outcome, ProxySettings, Service};

use common::{proxy, unique, without_retries};

/// What the SDK made of an answer: `ok`, the error code and HTTP status, or `no answer`.
fn seen<T, E: ProvideErrorMetadata>(result: Result<T, SdkError<E, HttpResponse>>) -> String {
    match result {
        Ok(_) => "ok".to_owned(),
        Err(SdkError::DispatchFailure(_)) => "no answer".to_owned(),
        Err(error) => {
            let status = error.raw_response().map_or(0, |response| response.status().as_u16());
            format!("{} {status}", error.code().unwrap_or("?"))
        }
    }
}

fn faults(settings: FaultSettings) -> ProxySettings {
    ProxySettings { faults: settings, ..ProxySettings::default() }
}

#[tokio::test]
async fn every_service_answers_with_its_own_throttling_error() {
    let (proxy, config) = proxy(faults(FaultSettings { throttle_rate: 1.0, ..FaultSettings::none() })).await;
    let config = without_retries(&config);
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let record = PutRecordsRequestEntry::builder().data(Blob::new("{}")).partition_key("k").build().unwrap();
    let answers = [
        (seen(kinesis.list_streams().send().await), "LimitExceededException 400"),
        (seen(kinesis.put_records().stream_name("any").records(record).send().await), "ProvisionedThroughputExceededException 400"),
        (seen(aws_sdk_firehose::Client::new(&config).list_delivery_streams().send().await), "LimitExceededException 400"),
        (seen(aws_sdk_glue::Client::new(&config).get_databases().send().await), "ThrottlingException 400"),
        (seen(metrics_pipeline_runtime::sdk::s3_client(&config).list_buckets().send().await), "SlowDown 503"),
        (seen(aws_sdk_iam::Client::new(&config).list_roles().send().await), "Throttling 400"),
        (seen(aws_sdk_sts::Client::new(&config).get_caller_identity().send().await), "Throttling 400"),
    ];
    for (got, expected) in answers {
        assert_eq!(got, expected);
    }
    let stats = proxy.stats();
    assert_eq!(stats.calls.len(), 7);
    assert!(stats.calls.iter().all(|call| call.outcome == Outcome::Injected { fault: Fault::Throttle }), "{stats:?}");
    let services: Vec<Service> = stats.calls.iter().map(|call| call.service).collect();
    assert_eq!(services, [Service::Kinesis, Service::Kinesis, Service::Firehose, Service::Glue, Service::S3, Service::Iam, Service::Sts]);
}

#[tokio::test]
async fn the_sdk_retries_throttling_and_each_attempt_is_a_call() {
    let scope = vec!["kinesis:ListStreams".parse().unwrap()];
    let (proxy, config) = proxy(faults(FaultSettings { throttle_rate: 1.0, scope, ..FaultSettings::none() })).await;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    assert_eq!(seen(kinesis.list_streams().send().await), "LimitExceededException 400");
    assert_eq!(proxy.stats().calls(Service::Kinesis, "ListStreams"), 3, "standard retry: three attempts");
    assert_eq!(
        seen(kinesis.list_shards().stream_name("absent").send().await),
        "ResourceNotFoundException 400",
        "out of scope: moto answers"
    );
}

#[tokio::test]
async fn server_errors_are_500s_and_503s_in_each_format() {
    let (proxy, config) = proxy(faults(FaultSettings { error_rate: 1.0, seed: 1, ..FaultSettings::none() })).await;
    let config = without_retries(&config);
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let s3 = metrics_pipeline_runtime::sdk::s3_client(&config);
    let iam = aws_sdk_iam::Client::new(&config);
    let mut answers = std::collections::BTreeSet::new();
    for _ in 0..8 {
        answers.insert(seen(kinesis.list_streams().send().await));
        answers.insert(seen(s3.list_buckets().send().await));
        answers.insert(seen(iam.list_roles().send().await));
    }
    let expected = ["InternalError 500", "InternalFailure 500", "ServiceFailure 500", "ServiceUnavailable 503"];
    assert_eq!(answers.into_iter().collect::<Vec<_>>(), expected);
    let summary = proxy.stats().summary();
    assert!(summary.iter().all(|operation| operation.server_errors == 8 && operation.forwarded == 0), "{summary:?}");
}

#[tokio::test]
async fn a_dropped_connection_is_retried_and_never_reaches_the_emulator() {
    let stream = unique("dropped");
    let scope = vec!["kinesis:CreateStream".parse().unwrap()];
    let (proxy, config) = proxy(faults(FaultSettings { drop_rate: 1.0, scope, ..FaultSettings::none() })).await;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    assert_eq!(seen(kinesis.create_stream().stream_name(&stream).shard_count(1).send().await), "no answer");
    assert_eq!(proxy.stats().outcomes(Service::Kinesis, "CreateStream"), [Outcome::Injected { fault: Fault::Drop }; 3]);
    assert_eq!(seen(kinesis.describe_stream_summary().stream_name(&stream).send().await), "ResourceNotFoundException 400");
}

#[tokio::test]
async fn a_lost_answer_leaves_the_request_carried_out() {
    let stream = unique("lost");
    let scope = vec!["kinesis:CreateStream".parse().unwrap()];
    let (proxy, config) = proxy(faults(FaultSettings { lost_answer_rate: 1.0, scope, ..FaultSettings::none() })).await;
    let kinesis = aws_sdk_kinesis::Client::new(&without_retries(&config));
    assert_eq!(seen(kinesis.create_stream().stream_name(&stream).shard_count(1).send().await), "no answer");
    assert_eq!(seen(kinesis.describe_stream_summary().stream_name(&stream).send().await), "ok", "the emulator made it");
    proxy.set_faults(FaultSettings::none()).unwrap();
    assert_eq!(seen(kinesis.create_stream().stream_name(&stream).shard_count(1).send().await), "ResourceInUseException 400");
    kinesis.delete_stream().stream_name(&stream).send().await.unwrap();
}

#[tokio::test]
async fn latency_is_added_to_the_calls_in_scope() {
    let scope = vec!["kinesis:ListStreams".parse().unwrap()];
    let latency = Duration::from_millis(300);
    let (proxy, config) = proxy(faults(FaultSettings { latency, scope, ..FaultSettings::none() })).await;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let started = Instant::now();
    assert_eq!(seen(kinesis.list_streams().send().await), "ok");
    assert!(started.elapsed() >= latency, "{:?}", started.elapsed());
    assert_eq!(seen(kinesis.list_shards().stream_name("absent").send().await), "ResourceNotFoundException 400");
    let delays: Vec<u64> = proxy.stats().calls.iter().map(|call| call.delayed_ms).collect();
    assert_eq!(delays, [300, 0]);
}

#[tokio::test]
async fn faults_change_while_the_proxy_runs() {
    let (proxy, config) = proxy(ProxySettings::default()).await;
    let config = without_retries(&config);
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let s3 = metrics_pipeline_runtime::sdk::s3_client(&config);
    assert_eq!(seen(s3.list_buckets().send().await), "ok");

    proxy.apply_spec("throttle=1,scope=s3").unwrap();
    assert_eq!(seen(s3.list_buckets().send().await), "SlowDown 503");
    assert_eq!(seen(kinesis.list_streams().send().await), "ok");

    proxy.set_faults(FaultSettings::none()).unwrap();
    assert_eq!(seen(s3.list_buckets().send().await), "ok");
    assert!(proxy.set_faults(FaultSettings { throttle_rate: 2.0, ..FaultSettings::none() }).unwrap_err().contains("throttle=2"));
}

#[tokio::test]
async fn the_same_seed_gives_the_same_faults() {
    let settings = FaultSettings { seed: 7, throttle_rate: 0.3, error_rate: 0.1, drop_rate: 0.1, ..FaultSettings::none() };
    let (proxy, config) = proxy(faults(settings.clone())).await;
    let config = without_retries(&config);
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let s3 = metrics_pipeline_runtime::sdk::s3_client(&config);
    // Other operations' calls, interleaved differently each run, do not shift ListStreams' faults.
    let run = async |other_calls_every: usize| {
        let mut answers = Vec::new();
        for i in 0..30 {
            if i % other_calls_every == 0 {
                let _ = s3.list_buckets().send().await;
            }
            answers.push(seen(kinesis.list_streams().send().await));
        }
        answers
    };
    let first = run(2).await;
    proxy.set_faults(settings.clone()).unwrap();
    let again = run(3).await;
    assert_eq!(again, first);
    assert!(first.iter().any(|answer| answer == "ok") && first.iter().any(|answer| answer != "ok"), "{first:?}");

    proxy.set_faults(FaultSettings { seed: 8, ..settings }).unwrap();
    assert_ne!(run(2).await, first);
    let outcomes = proxy.stats().outcomes(Service::Kinesis, "ListStreams");
    assert_eq!(outcomes[..30], outcomes[30..60]);
}
