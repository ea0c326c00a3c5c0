//! The delivery stream as AWS runs it, through the AWS proxy: a new delivery stream is CREATING
//! for a while and reads its source only from when it is ACTIVE, so the aggregator must not
//! write before then (at the first creation and at a recreate); and a role IAM has not propagated
//! yet is refused with each of Firehose's messages in turn, which the pipeline waits out without
//! ever failing; and a deletion keeps the delivery stream until Firehose has had its buffer
//! interval for the last aggregate on the output stream, for AWS deletes a delivery stream with
//! what it buffered. (A delivery stream that failed to be created is tested in the operator's unit
//! tests, `aws::delivery`: neither moto nor the proxy makes one fail.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use metrics_pipeline_api::MetricsPipelineStatus;
use metrics_pipeline_api::pipeline::Phase;
use metrics_pipeline_aws_proxy::{AwsProxy, Outcome, ProxySettings, Rule, RuleSettings, Service, emulator_url};
use metrics_pipeline_e2e::emulator_sdk;
use metrics_pipeline_e2e::in_process::{OperatorTest, condition, delete_and_wait, everything_named, example, example_named};
use metrics_pipeline_test_support::wait_for;
use serde_json::json;

const PIPELINE: &str = "metrics";

/// The operator in its own namespace, reaching AWS through a proxy enforcing `rules`.
struct Setup {
    test: OperatorTest,
    proxy: AwsProxy,
}

impl Setup {
    async fn start(prefix: &str, rules: RuleSettings, resync: Duration) -> Setup {
        let moto = emulator_url().expect("run `. /work/main/.dev-env/env` (or `scripts/dev-env up`) first");
        let proxy = AwsProxy::start(&moto, ProxySettings { rules, ..ProxySettings::default() }).await.unwrap();
        let test = OperatorTest::start(prefix, Some(proxy.endpoint().to_owned()), resync).await;
        test.apply(&example("pipeline.yaml")).await;
        Setup { test, proxy }
    }

    async fn finish(self) {
        delete_and_wait(&self.test.pipelines, PIPELINE).await;
        self.test.finish().await;
    }

    fn delivery_stream(&self) -> String {
        format!("{}-{PIPELINE}-delivery", self.test.namespace.name)
    }

    async fn phase(&self) -> Option<Phase> {
        self.test.pipelines.get(PIPELINE).await.unwrap().status.and_then(|status| status.phase)
    }
}

/// What a writer of the output stream and its reader look like at one moment: the delivery
/// stream's status as AWS (the proxy) reports it, and the aggregator Deployment's replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Sample {
    delivery: String,
    replicas: i32,
}

impl Sample {
    /// The aggregator may write while nothing reads the output stream.
    fn loses_records(&self) -> bool {
        self.replicas > 0 && self.delivery != "ACTIVE"
    }
}

/// Samples the delivery stream and the aggregator until `done` says so, keeping each change.
async fn record_until(setup: &Setup, firehose: &aws_sdk_firehose::Client, done: impl Fn(&Sample, Option<Phase>) -> bool) -> Vec<Sample> {
    let deployments: Api<Deployment> = Api::namespaced(setup.test.client.clone(), &setup.test.namespace.name);
    let mut samples: Vec<Sample> = Vec::new();
    let outcome = wait_for("the samples to reach their end", Duration::from_secs(120), async || {
        let described = firehose.describe_delivery_stream().delivery_stream_name(setup.delivery_stream()).send().await;
        let delivery = match described {
            Ok(output) => output.delivery_stream_description.map(|d| d.delivery_stream_status().as_str().to_owned()).unwrap_or_default(),
            Err(_) => "absent".to_owned(),
        };
        let deployment = deployments.get_opt("metrics-aggregator").await.map_err(|error| error.to_string())?;
        let replicas = deployment.and_then(|d| d.spec).and_then(|spec| spec.replicas).unwrap_or(0);
        let sample = Sample { delivery, replicas };
        if samples.last() != Some(&sample) {
            samples.push(sample.clone());
        }
        if done(&sample, setup.phase().await) { Ok(()) } else { Err(format!("{samples:?}")) }
    })
    .await;
    outcome.unwrap();
    samples
}

#[tokio::test]
async fn the_aggregator_writes_nothing_before_the_delivery_stream_reads_the_output_stream() {
    let rules = RuleSettings { transition: Duration::from_secs(5), ..RuleSettings::default() };
    let setup = Setup::start("strict-order", rules, Duration::from_secs(2)).await;
    let firehose = aws_sdk_firehose::Client::new(&setup.proxy.sdk_config().await);

    // First creation: the streams, then the delivery stream, are CREATING for 5 s each.
    let ready = |sample: &Sample, phase: Option<Phase>| phase == Some(Phase::Ready) && sample.delivery == "ACTIVE" && sample.replicas == 1;
    let created = record_until(&setup, &firehose, ready).await;
    assert!(created.iter().any(|sample| sample.delivery == "CREATING"), "the proxy made the delivery stream CREATING: {created:?}");
    assert!(!created.iter().any(Sample::loses_records), "the aggregator ran before the delivery stream read: {created:?}");

    // Recreate: the delivery stream disappears (as if deleted by hand); the operator makes it
    // again, and the aggregator must pause until the new one is ACTIVE.
    let direct = aws_sdk_firehose::Client::new(&emulator_sdk().await);
    direct.delete_delivery_stream().delivery_stream_name(setup.delivery_stream()).send().await.unwrap();
    let recreated = record_until(&setup, &firehose, ready).await;
    // Until the operator's next look the aggregator still runs with nothing reading: that gap
    // is the deletion's, not the operator's. From its recreate on, nothing runs until ACTIVE.
    let paused = recreated.iter().position(|sample| sample.delivery == "CREATING" && sample.replicas == 0);
    let paused = paused.unwrap_or_else(|| panic!("the aggregator was not paused while the delivery stream was recreated: {recreated:?}"));
    assert!(
        !recreated[paused..].iter().any(Sample::loses_records),
        "the aggregator ran before the new delivery stream read: {recreated:?}"
    );

    // Back from the aggregator as writer (Parquet files of its own, no delivery stream) to
    // Firehose: the aggregator switches to the output stream only once Firehose reads it.
    let writer = |writer: &str| json!({ "spec": { "delivery": { "format": "Parquet", "writer": writer } } });
    let pipelines = &setup.test.pipelines;
    pipelines.patch(PIPELINE, &PatchParams::default(), &Patch::Merge(&writer("Aggregator"))).await.unwrap();
    setup
        .test
        .wait_for(PIPELINE, "the delivery stream gone for the aggregator as writer", |s| {
            s.observed_generation == Some(2) && condition(s, "DeliveryReady").is_some_and(|c| c.0 == "True")
        })
        .await;
    pipelines.patch(PIPELINE, &PatchParams::default(), &Patch::Merge(&writer("Firehose"))).await.unwrap();
    let switched = record_until(&setup, &firehose, ready).await;
    let paused = switched.iter().position(|sample| sample.replicas == 0);
    let paused = paused.unwrap_or_else(|| panic!("the aggregator was not paused while the delivery stream was made: {switched:?}"));
    assert!(switched[paused..].iter().any(|sample| sample.delivery == "CREATING"), "{switched:?}");
    assert!(!switched[paused..].iter().any(Sample::loses_records), "the aggregator wrote before Firehose read: {switched:?}");
    setup.finish().await;
}

#[tokio::test]
async fn a_role_iam_has_not_propagated_yet_is_waited_out_without_the_pipeline_failing() {
    let rules = RuleSettings { iam_propagation: Duration::from_secs(8), ..RuleSettings::default() };
    // A long resync: a pipeline that failed would stay Failed for a while.
    let setup = Setup::start("strict-iam", rules, Duration::from_secs(300)).await;
    // Every status the API server stores, as its watch delivers them: no phase goes unseen.
    let seen: Arc<Mutex<Vec<MetricsPipelineStatus>>> = Arc::default();
    let record = seen.clone();
    let watch = watcher(setup.test.pipelines.clone(), watcher::Config::default().fields(&format!("metadata.name={PIPELINE}")));
    let watching = tokio::spawn(watch.applied_objects().for_each(move |pipeline| {
        if let Some(status) = pipeline.ok().and_then(|pipeline| pipeline.status) {
            record.lock().unwrap().push(status);
        }
        std::future::ready(())
    }));
    let status = wait_for("Ready or Failed", Duration::from_secs(120), async || {
        let status = setup.test.pipelines.get(PIPELINE).await.map_err(|error| error.to_string())?.status.unwrap_or_default();
        match status.phase {
            Some(Phase::Ready | Phase::Failed) => Ok(status),
            phase => Err(format!("{phase:?}")),
        }
    })
    .await
    .unwrap();
    watching.abort();
    let seen = seen.lock().unwrap().clone();
    let refusals = setup.proxy.stats().count(|call| {
        call.is(Service::Firehose, "CreateDeliveryStream") && call.outcome == Outcome::Refused { rule: Rule::IamPropagation }
    });
    assert!(refusals >= 2, "the proxy refused the new role with more than one of Firehose's messages: {refusals}");
    let phases: Vec<Option<Phase>> = seen.iter().map(|status| status.phase).collect();
    assert_eq!(status.phase, Some(Phase::Ready), "phases: {phases:?}; conditions: {:#?}", status.conditions);
    assert!(!phases.contains(&Some(Phase::Failed)), "{phases:?}");
    // Meanwhile DeliveryReady said what it waited for, naming the role.
    let role = format!("{}-{PIPELINE}-firehose", setup.test.namespace.name);
    let messages: Vec<&str> =
        seen.iter().flat_map(|status| &status.conditions).filter(|c| c.type_ == "DeliveryReady").map(|c| c.message.as_str()).collect();
    assert!(messages.iter().any(|m| m.contains("waiting for IAM") && m.contains(&role)), "{messages:#?}");
    setup.finish().await;
}

#[tokio::test]
async fn a_deletion_waits_until_firehose_has_had_its_buffer_interval_for_the_last_aggregate() {
    let test = OperatorTest::start("drain", None, Duration::from_secs(60)).await;
    let mut pipeline = example_named("minimal.yaml", "drain");
    // The test writes the aggregator's last aggregate itself.
    pipeline.spec.aggregator.replicas = 0;
    test.apply(&pipeline).await;
    let status = test.ready("drain").await;
    let (output, delivery) = (status.output_stream.unwrap().name, status.delivery_stream.unwrap().name);
    let sdk = emulator_sdk().await;
    let record = aws_sdk_kinesis::primitives::Blob::new(br#"{"componentName":"c","metricName":"m","count":1}"#.to_vec());
    aws_sdk_kinesis::Client::new(&sdk).put_record().stream_name(&output).partition_key("c").data(record).send().await.unwrap();
    let written = std::time::Instant::now();

    test.pipelines.delete("drain", &Default::default()).await.unwrap();
    let status = test
        .wait_for("drain", "the deletion waiting for Firehose", |s| {
            condition(s, "Ready").is_some_and(|(_, _, message)| message.contains("to deliver what it buffered"))
        })
        .await;
    let (_, _, message) = condition(&status, "Ready").unwrap();
    assert!(message.contains(&delivery) && message.contains("buffer interval of 60 s"), "{message}");
    let firehose = aws_sdk_firehose::Client::new(&sdk);
    assert!(firehose.describe_delivery_stream().delivery_stream_name(&delivery).send().await.is_ok(), "still delivering");

    delete_and_wait(&test.pipelines, "drain").await;
    assert!(written.elapsed() >= Duration::from_secs(60), "gone only after a buffer interval: {:?}", written.elapsed());
    assert_eq!(everything_named(&test.aws_prefix("drain")).await, Vec::<String>::new());
    test.finish().await;
}
