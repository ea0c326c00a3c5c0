//! Kinesis scaling under AWS's rules, which moto does not enforce: the in-process operator
//! reaches AWS through the test proxy, which refuses an UpdateShardCount beyond double or half
//! the open shards and past the daily number of scalings, and keeps a scaled stream UPDATING
//! for a while. A large change is made in steps; a stream that may not be scaled any more today
//! says so in its condition, while the parts that only need it to exist go on.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use metrics_pipeline_api::MetricsPipeline;
use metrics_pipeline_api::pipeline::Phase;
use metrics_pipeline_aws_proxy::{AwsProxy, Outcome, ProxySettings, RuleSettings, Service, emulator_url};
use metrics_pipeline_e2e::emulator_sdk;
use metrics_pipeline_e2e::in_process::{OperatorTest, condition, example_named};
use serde_json::json;

/// A proxy whose scaled and new streams stay UPDATING / CREATING for a second, as on AWS (for
/// minutes there), and which allows `scalings_per_day` scalings per stream.
async fn strict_proxy(scalings_per_day: u32) -> AwsProxy {
    let rules = RuleSettings { scalings_per_day, transition: Duration::from_secs(1), ..RuleSettings::default() };
    let moto = emulator_url().expect("run `. /work/main/.dev-env/env` (AWS_ENDPOINT_URL)");
    AwsProxy::start(&moto, ProxySettings { rules, ..ProxySettings::default() }).await.unwrap()
}

/// A test namespace, the in-process operator reaching AWS through `proxy`, and a Ready pipeline
/// `name` in it made from the minimal example (one shard per stream).
async fn ready_pipeline(proxy: &AwsProxy, prefix: &str, name: &str) -> OperatorTest {
    let test = OperatorTest::start(prefix, Some(proxy.endpoint().to_owned()), Duration::from_secs(3)).await;
    test.apply(&example_named("minimal.yaml", name)).await;
    test.ready(name).await;
    test
}

async fn set_shards(pipelines: &Api<MetricsPipeline>, name: &str, stream: &str, shards: i32) {
    let patch = json!({ "spec": { "streams": { stream: { "shardCount": shards } } } });
    pipelines.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

/// The stream's open shards, asked of the emulator itself.
async fn open_shards(stream: &str) -> i32 {
    let kinesis = aws_sdk_kinesis::Client::new(&emulator_sdk().await);
    kinesis.describe_stream_summary().stream_name(stream).send().await.unwrap().stream_description_summary.unwrap().open_shard_count
}

/// UpdateShardCount calls of `stream` the proxy forwarded (AWS carried them out) and refused.
fn scalings(proxy: &AwsProxy, stream: &str) -> (usize, usize) {
    let stats = proxy.stats();
    let of_stream = |call: &metrics_pipeline_aws_proxy::CallRecord| {
        call.is(Service::Kinesis, "UpdateShardCount") && call.resource.as_deref().is_some_and(|r| r.ends_with(stream))
    };
    let made = stats.count(|call| of_stream(call) && matches!(call.outcome, Outcome::Forwarded { status: 200 }));
    let refused = stats.count(|call| of_stream(call) && matches!(call.outcome, Outcome::Refused { .. }));
    (made, refused)
}

#[tokio::test]
async fn a_stream_scaled_from_one_to_five_shards_gets_there_in_steps() {
    let proxy = strict_proxy(10).await;
    let test = ready_pipeline(&proxy, "strict-scale", "scaled").await;
    let input = format!("{}-scaled-input", test.namespace.name);

    set_shards(&test.pipelines, "scaled", "input", 5).await;
    let status = test
        .wait_for("scaled", "Ready with the input stream at 5 shards", |s| {
            s.observed_generation == Some(2) && s.phase == Some(Phase::Ready)
        })
        .await;
    assert_eq!(condition(&status, "StreamsReady").unwrap().0, "True");
    assert_eq!(open_shards(&input).await, 5);
    // 1 → 2 → 4 → 5: each step at most doubles, and none was refused.
    assert_eq!(scalings(&proxy, &input), (3, 0), "{:#?}", proxy.stats().outcomes(Service::Kinesis, "UpdateShardCount"));

    test.delete_and_check("scaled").await;
    test.finish().await;
}

#[tokio::test]
async fn a_stream_past_its_daily_scalings_says_so_and_the_rest_of_the_pipeline_goes_on() {
    // One scaling a day: 1 → 2 is made, 2 → 4 is refused.
    let proxy = strict_proxy(1).await;
    let test = ready_pipeline(&proxy, "strict-limit", "limited").await;
    let output = format!("{}-limited-output", test.namespace.name);

    // The delivery stream reads the output stream: it must stay in place while that cannot scale.
    set_shards(&test.pipelines, "limited", "output", 4).await;
    let status = test
        .wait_for("limited", "the scaling limit in StreamsReady", |s| {
            s.observed_generation == Some(2)
                && s.conditions.iter().any(|c| c.type_ == "StreamsReady" && c.reason == "ScalingLimitExceeded")
                && ["BucketReady", "CatalogReady", "DeliveryReady", "AggregatorReady"]
                    .iter()
                    .all(|kind| condition(s, kind).is_some_and(|c| c.0 == "True"))
        })
        .await;
    let (_, _, message) = condition(&status, "StreamsReady").unwrap();
    for expected in [output.as_str(), "from 2 towards 4 shards", "per rolling 24-hour period", "spec.streams.output.shardCount"] {
        assert!(message.contains(expected), "the condition names the stream, the limit and the fix ({expected}): {message}");
    }
    assert_eq!(status.phase, Some(Phase::Degraded), "the pipeline works, only not at the shard count asked for");
    assert_eq!(open_shards(&output).await, 2, "the step AWS allowed was made");
    assert_eq!(scalings(&proxy, &output).0, 1);

    test.delete_and_check("limited").await;
    test.finish().await;
}
