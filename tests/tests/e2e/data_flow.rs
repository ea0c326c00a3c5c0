//! Whether data flows, where users already look: the aggregator's report beside its checkpoint,
//! judged by the operator into `DataFlowing`, shown by `kubectl get` and `kubectl describe`. A
//! producer that sends only garbage stalls the pipeline (`NoWindowFires`); valid events bring it
//! back to `Flowing`; an output stream the aggregator may not write shows `OutputRefused`.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use metrics_pipeline_api::pipeline::{MetricsPipeline, MetricsPipelineStatus};
use metrics_pipeline_e2e::cluster::CREDENTIALS_SECRET;
use metrics_pipeline_e2e::in_process::{OperatorTest, condition, example_named, wait_for_status_within};
use metrics_pipeline_e2e::{FIELD_MANAGER, emulator_sdk, produce};

/// Windows of 10 s and an idle timeout of 5 s, so that a stall shows within a report or two (the
/// aggregator reports every 30 s).
fn quick_windows(name: &str) -> MetricsPipeline {
    let mut pipeline = example_named("pipeline.yaml", name);
    pipeline.spec.aggregation.window = "10s".into();
    pipeline.spec.aggregation.out_of_orderness = "1s".into();
    pipeline.spec.aggregation.idle_timeout = "5s".into();
    pipeline
}

/// Waits (up to four reports) until `DataFlowing` has `status` and `reason`.
async fn data_flowing(test: &OperatorTest, name: &str, status: &str, reason: &str) -> MetricsPipelineStatus {
    let what = format!("DataFlowing {status} {reason}");
    wait_for_status_within(&test.pipelines, name, &what, Duration::from_secs(150), |shown| {
        condition(shown, "DataFlowing").is_some_and(|(now, why, _)| now == status && why == reason)
    })
    .await
}

fn kubectl(args: &[&str]) -> String {
    let output = std::process::Command::new("kubectl").args(args).output().expect("kubectl (scripts/dev-env puts it on PATH)");
    assert!(output.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn a_producer_of_garbage_stalls_the_pipeline_in_kubectl_get_and_valid_events_make_it_flow() {
    let test = OperatorTest::start("flow", None, Duration::from_secs(5)).await;
    test.apply(&quick_windows("flow")).await;
    let input = test.ready("flow").await.input_stream.unwrap().name;
    let namespace = test.namespace.name.clone();

    // A broken producer: records that are no metric event, until the operator says so.
    let garbage = produce::garbage(input.clone(), Duration::from_secs(2));
    let stalled = data_flowing(&test, "flow", "False", "NoWindowFires").await;
    garbage.abort();
    let (_, _, message) = condition(&stalled, "DataFlowing").unwrap();
    assert!(message.contains("every one went to the dead letters"), "{message}");
    let flow = stalled.data_flow.expect("the report in the status");
    assert!(flow.records_in > 0 && flow.dead_letters > 0 && flow.aggregates_out == 0, "{flow:?}");
    assert_eq!(flow.watermark_lag_seconds, None, "no event, no watermark");

    let listed = kubectl(&["get", "metricspipelines", "-n", &namespace]);
    let header = listed.lines().next().unwrap();
    assert!(header.contains("DATA") && header.contains("LAG (S)"), "{listed}");
    assert!(listed.lines().nth(1).unwrap().contains("NoWindowFires"), "{listed}");
    let described = kubectl(&["describe", "metricspipeline", "flow", "-n", &namespace]);
    assert!(described.contains("DataFlowing") && described.contains("none has led to an aggregate"), "{described}");

    // A fixed producer: windows fire, aggregates go out.
    let events = produce::valid_events(input);
    let flowing = data_flowing(&test, "flow", "True", "Flowing").await;
    events.abort();
    let flow = flowing.data_flow.unwrap();
    assert!(flow.records_in > 0 && flow.last_output_at.is_some(), "{flow:?}");
    assert!(flow.watermark_lag_seconds.is_some_and(|lag| (0..60).contains(&lag)), "{flow:?}");
    test.delete_and_check("flow").await;
    test.finish().await;
}

#[tokio::test]
async fn an_output_stream_the_aggregator_may_not_write_shows_output_refused_until_it_may() {
    let test = OperatorTest::start("refused", None, Duration::from_secs(5)).await;
    // The aggregator's identity in this namespace: an IAM user of its own, whose writes to the
    // output stream an administrator denies (so that no other test's aggregator is touched).
    let iam = aws_sdk_iam::Client::new(&emulator_sdk().await);
    let user = format!("{}-aggregator", test.namespace.name);
    iam.create_user().user_name(&user).send().await.unwrap();
    let policy = |effect: &str, action: &str| {
        serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": effect, "Action": action, "Resource": "*"}]}).to_string()
    };
    iam.put_user_policy().user_name(&user).policy_name("allow").policy_document(policy("Allow", "*")).send().await.unwrap();
    let deny = iam.put_user_policy().user_name(&user).policy_name("deny-output").policy_document(policy("Deny", "kinesis:PutRecords"));
    deny.send().await.unwrap();
    let key = iam.create_access_key().user_name(&user).send().await.unwrap().access_key.unwrap();
    let credentials = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": CREDENTIALS_SECRET},
        "stringData": {"AWS_ACCESS_KEY_ID": key.access_key_id, "AWS_SECRET_ACCESS_KEY": key.secret_access_key}});
    let secrets: Api<Secret> = Api::namespaced(test.client.clone(), &test.namespace.name);
    secrets.patch(CREDENTIALS_SECRET, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(credentials)).await.unwrap();

    test.apply(&quick_windows("refused")).await;
    let status = test.ready("refused").await;
    let events = produce::valid_events(status.input_stream.unwrap().name);
    let refused = data_flowing(&test, "refused", "False", "OutputRefused").await;
    let (_, _, message) = condition(&refused, "DataFlowing").unwrap();
    // moto answers an IAM deny with a bare 403 where AWS names AccessDeniedException.
    assert!(message.contains("AccessDenied") || message.contains("http_403"), "the refusal in AWS's words: {message}");

    // Allowed again: the aggregates waiting in the checkpoint go out.
    iam.delete_user_policy().user_name(&user).policy_name("deny-output").send().await.unwrap();
    data_flowing(&test, "refused", "True", "Flowing").await;
    events.abort();
    test.delete_and_check("refused").await;
    test.finish().await;
}
