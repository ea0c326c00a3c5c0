//! The reconcile flow against a mocked API server: each test states the exact requests it
//! expects, in order, and answers them. No AWS is reached: these paths never need it.

use http::{Method, Request, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::client::Body;
use metrics_pipeline_api::pipeline::{CapacityMode, DeletionPolicy};
use metrics_pipeline_api::{MetricsPipeline, MetricsPipelineSpec};
use serde_json::{Value, json};
use tower_test::mock::{Handle, pair};

use super::provision::{OutputReader, output_reader};
use super::*;
use crate::status::{Part, PartState};

type ApiServer = Handle<Request<Body>, Response<Body>>;

fn context(default_region: Option<&str>) -> (Arc<Context>, ApiServer) {
    let (service, handle) = pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let sdk = aws_config::SdkConfig::builder().behavior_version(aws_config::BehaviorVersion::latest()).build();
    let target = AwsTarget { account_id: "123456789012".into(), default_region: default_region.map(str::to_owned) };
    let calls = AwsCalls::default();
    let metrics = Arc::new(Metrics::new(&calls));
    let account = AwsAccount::new(sdk, target, calls, Memory::for_resync(Settings::default().resync));
    (Arc::new(Context::new(client, account, "c-1".into(), metrics, Settings::default())), handle)
}

fn pipeline(spec: MetricsPipelineSpec, finalizer: bool, deleting: bool) -> Arc<MetricsPipeline> {
    let mut pipeline = MetricsPipeline::new("test", spec);
    pipeline.metadata.namespace = Some("default".into());
    pipeline.metadata.uid = Some("1b4d2c7e-0000-4000-8000-000000000000".into());
    pipeline.metadata.generation = Some(1);
    pipeline.metadata.resource_version = Some("1".into());
    if finalizer {
        pipeline.metadata.finalizers = Some(vec![FINALIZER.into()]);
    }
    if deleting {
        pipeline.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
    }
    Arc::new(pipeline)
}

/// `spec: {}` with every default filled in, as the API server stores it.
fn default_spec() -> MetricsPipelineSpec {
    serde_json::from_value(json!({})).unwrap()
}

const PIPELINE_PATH: &str = "/apis/pipelines.metrics.dev/v1alpha1/namespaces/default/metricspipelines/test";
const NAMESPACE_PATH: &str = "/api/v1/namespaces/default";

/// The pipeline's namespace, with `annotations`.
fn namespace(annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default", "annotations": annotations}})
}

/// Takes the next request, checks method and path, answers `response`; returns the JSON body.
async fn expect(api: &mut ApiServer, method: Method, path: &str, response: Value) -> Value {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), api.next_request())
        .await
        .unwrap_or_else(|_| panic!("no {method} {path} within 5 s"))
        .expect("the client is alive");
    assert_eq!((request.method(), request.uri().path()), (&method, path), "query: {:?}", request.uri().query());
    let query = request.uri().query().unwrap_or_default().to_owned();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&response).unwrap())).unwrap());
    let mut body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !query.is_empty() {
        body["__query"] = Value::String(query);
    }
    body
}

#[tokio::test]
async fn a_new_pipeline_first_gets_the_finalizer() {
    let (context, mut api) = context(Some("eu-west-1"));
    let fresh = pipeline(default_spec(), false, false);
    let stored = serde_json::to_value(&*fresh).unwrap();
    let mut answer = stored.clone();
    answer["metadata"]["finalizers"] = json!([FINALIZER]);
    let server = tokio::spawn(async move {
        expect(&mut api, Method::GET, PIPELINE_PATH, stored).await;
        expect(&mut api, Method::PATCH, PIPELINE_PATH, answer).await
    });

    let action = reconcile(fresh, context).await.unwrap();
    let patch = server.await.unwrap();
    assert_eq!(action, Action::await_change(), "the finalizer's own watch event brings the next reconcile");
    let operations = patch.as_array().expect("a JSON patch");
    assert!(
        operations.iter().any(|op| op["op"] == "add" && op["path"].as_str().is_some_and(|p| p.starts_with("/metadata/finalizers"))),
        "{patch}"
    );
}

#[tokio::test]
async fn an_invalid_spec_is_reported_in_status_and_as_an_event_without_touching_aws() {
    let (context, mut api) = context(Some("eu-west-1"));
    let mut spec = default_spec();
    spec.streams.input.capacity_mode = CapacityMode::OnDemand;
    spec.streams.input.shard_count = Some(2);
    let invalid = pipeline(spec, true, false);
    let answer = serde_json::to_value(&*invalid).unwrap();
    let server = tokio::spawn(async move {
        expect(&mut api, Method::GET, PIPELINE_PATH, answer.clone()).await;
        expect(&mut api, Method::GET, NAMESPACE_PATH, namespace(json!({}))).await;
        let status = expect(&mut api, Method::PATCH, &format!("{PIPELINE_PATH}/status"), answer).await;
        let event = expect(&mut api, Method::POST, "/apis/events.k8s.io/v1/namespaces/default/events", json!({})).await;
        (status, event)
    });

    let action = reconcile(invalid, context.clone()).await.unwrap();
    let (status, event) = server.await.unwrap();
    let resync = context.settings.resync;
    // `Action` keeps its delay private; its Debug shows it (`Action { requeue_after: Some(279.7s) }`).
    let next = Duration::from_secs_f64(format!("{action:?}").split(['(', 's']).find_map(|part| part.parse().ok()).unwrap());
    assert!(resync.mul_f64(0.9) <= next && next <= resync.mul_f64(1.1), "terminal: looked at again at the resync ({next:?}), not sooner");
    assert!(status["__query"].as_str().unwrap().contains("fieldManager=metrics-pipeline-operator"), "server-side apply: {status}");
    assert_eq!(status["status"]["phase"], "Failed");
    let ready = status["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("InvalidSpec")));
    assert!(ready["message"].as_str().unwrap().contains("spec.streams.input.shardCount"), "{ready}");
    assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("InvalidSpec")));
    assert!(!context.metrics.encode().contains("metrics_pipeline_operator_aws_calls_total{"), "no AWS call");
}

/// The status of a pipeline whose resources were made in account 999999999999.
fn made_in_another_account() -> Value {
    json!({"identity": {"accountId": "999999999999", "region": "eu-west-1", "namePrefix": "default-test",
        "inputStream": "default-test-input", "outputStream": "default-test-output", "bucket": "default-test-1",
        "firehoseRole": "default-test-firehose", "deliveryStream": "default-test-delivery", "glueDatabase": "default_test",
        "glueTable": "metric_aggregates"}})
}

#[tokio::test]
async fn an_operator_in_another_account_than_the_pipelines_resources_touches_nothing_and_says_which_account() {
    let (context, mut api) = context(Some("eu-west-1"));
    let moved = pipeline(default_spec(), true, false);
    let mut answer = serde_json::to_value(&*moved).unwrap();
    answer["status"] = made_in_another_account();
    let server = tokio::spawn(async move {
        expect(&mut api, Method::GET, PIPELINE_PATH, answer.clone()).await;
        expect(&mut api, Method::GET, NAMESPACE_PATH, namespace(json!({}))).await;
        let status = expect(&mut api, Method::PATCH, &format!("{PIPELINE_PATH}/status"), answer).await;
        expect(&mut api, Method::POST, "/apis/events.k8s.io/v1/namespaces/default/events", json!({})).await;
        status
    });

    reconcile(moved, context.clone()).await.unwrap();
    let status = server.await.unwrap();
    assert_eq!(status["status"]["phase"], "Failed");
    assert_eq!(status["status"]["identity"]["accountId"], "999999999999", "the record stays as it was");
    let kept = status["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "IdentityKept").unwrap().clone();
    assert_eq!((kept["status"].as_str(), kept["reason"].as_str()), (Some("False"), Some("IdentityChangeRefused")));
    assert!(
        kept["message"].as_str().unwrap().contains("in account 999999999999, and the operator now works in account 123456789012"),
        "{kept}"
    );
    assert!(!context.metrics.encode().contains("metrics_pipeline_operator_aws_calls_total{"), "no AWS call");
}

#[tokio::test]
async fn a_malformed_namespace_annotation_stops_the_pipeline_naming_it_for_an_administrator() {
    let (context, mut api) = context(Some("eu-west-1"));
    let stopped = pipeline(default_spec(), true, false);
    let answer = serde_json::to_value(&*stopped).unwrap();
    let server = tokio::spawn(async move {
        expect(&mut api, Method::GET, PIPELINE_PATH, answer.clone()).await;
        let annotations = json!({"pipelines.metrics.dev/aws-role-arn": "team-a"});
        expect(&mut api, Method::GET, NAMESPACE_PATH, namespace(annotations)).await;
        let status = expect(&mut api, Method::PATCH, &format!("{PIPELINE_PATH}/status"), answer).await;
        expect(&mut api, Method::POST, "/apis/events.k8s.io/v1/namespaces/default/events", json!({})).await;
        status
    });

    reconcile(stopped, context.clone()).await.unwrap();
    let status = server.await.unwrap();
    assert_eq!(status["status"]["phase"], "Failed");
    let ready = status["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
    assert_eq!(ready["reason"], "NamespacePolicyInvalid");
    assert!(ready["message"].as_str().unwrap().contains("`team-a` is not an IAM role ARN; an administrator must correct it"), "{ready}");
    assert!(!context.metrics.encode().contains("metrics_pipeline_operator_aws_calls_total{"), "no AWS call");
}

#[tokio::test]
async fn deleting_a_pipeline_that_never_had_a_region_releases_the_finalizer() {
    let (context, mut api) = context(None);
    let deleting = pipeline(default_spec(), true, true);
    let stored = serde_json::to_value(&*deleting).unwrap();
    let mut answer = stored.clone();
    answer["metadata"]["finalizers"] = json!([]);
    let server = tokio::spawn(async move {
        expect(&mut api, Method::GET, PIPELINE_PATH, stored).await;
        expect(&mut api, Method::PATCH, PIPELINE_PATH, answer).await
    });

    let action = reconcile(deleting, context).await.unwrap();
    let patch = server.await.unwrap();
    assert_eq!(action, Action::await_change());
    let operations = patch.as_array().expect("a JSON patch");
    assert!(operations.iter().any(|op| op["op"] == "remove"), "the finalizer is removed: {patch}");
}

#[tokio::test]
async fn a_reconcile_acts_on_the_pipeline_as_stored_when_its_turn_comes_not_as_it_was_queued() {
    let (context, mut api) = context(None);
    let queued = pipeline(default_spec(), true, false);
    // Deleted while the reconcile waited for its turn.
    let stored = serde_json::to_value(&*pipeline(default_spec(), true, true)).unwrap();
    let mut released = stored.clone();
    released["metadata"]["finalizers"] = json!([]);
    let server = tokio::spawn(async move {
        expect(&mut api, Method::GET, PIPELINE_PATH, stored).await;
        expect(&mut api, Method::PATCH, PIPELINE_PATH, released).await
    });

    let action = reconcile(queued, context).await.unwrap();
    let patch = server.await.unwrap();
    assert_eq!(action, Action::await_change());
    let operations = patch.as_array().expect("the finalizer's patch, not a status written for the spec as it was");
    assert!(operations.iter().any(|op| op["op"] == "remove"), "{patch}");
}

/// Takes the next request, checks its method and that its path starts with `prefix`, answers 404.
async fn expect_missing(api: &mut ApiServer, method: Method, prefix: &str) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), api.next_request())
        .await
        .unwrap_or_else(|_| panic!("no {method} {prefix}… within 5 s"))
        .expect("the client is alive");
    assert!(request.method() == method && request.uri().path().starts_with(prefix), "{} {}", request.method(), request.uri());
    let missing = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404});
    send.send_response(Response::builder().status(404).body(Body::from(serde_json::to_vec(&missing).unwrap())).unwrap());
}

#[tokio::test]
async fn an_orphaning_deletion_goes_through_whichever_account_the_operator_is_in_now() {
    let (context, mut api) = context(Some("eu-west-1"));
    let mut spec = default_spec();
    spec.deletion_policy = DeletionPolicy::Orphan;
    let deleting = pipeline(spec, true, true);
    let mut answer = serde_json::to_value(&*deleting).unwrap();
    answer["status"] = made_in_another_account();
    let server = tokio::spawn(async move {
        expect(&mut api, Method::GET, PIPELINE_PATH, answer.clone()).await;
        expect_missing(&mut api, Method::GET, "/apis/apps/v1/namespaces/default/deployments/").await;
        expect_missing(&mut api, Method::GET, "/api/v1/namespaces/default/serviceaccounts/").await;
        let event = expect(&mut api, Method::POST, "/apis/events.k8s.io/v1/namespaces/default/events", json!({})).await;
        answer["metadata"]["finalizers"] = json!([]);
        expect(&mut api, Method::PATCH, PIPELINE_PATH, answer).await;
        event
    });

    let action = reconcile(deleting, context.clone()).await.expect("nothing in AWS is touched, so no account is needed");
    let event = server.await.unwrap();
    assert_eq!(action, Action::await_change());
    assert!(event["note"].as_str().unwrap().contains("deletionPolicy: Orphan"), "{event}");
    assert!(!context.metrics.encode().contains("metrics_pipeline_operator_aws_calls_total{"), "no AWS call");
}

#[test]
fn retries_back_off_exponentially_with_jitter_up_to_the_cap() {
    let (base, cap) = (Duration::from_secs(5), Duration::from_secs(300));
    let waits = |jitter: f64| (1..=9).map(|failures| backoff(failures, base, cap, jitter).as_secs_f64()).collect::<Vec<_>>();
    // Without jitter half the doubled wait, with the most jitter all of it.
    assert_eq!(waits(0.0), [2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 150.0, 150.0, 150.0]);
    assert_eq!(waits(1.0), [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0]);
    assert_eq!(backoff(2, base, cap, 0.5), Duration::from_millis(7_500));
    assert_eq!(backoff(u32::MAX, base, cap, 1.0), cap, "no overflow after many failures");
}

#[test]
fn the_aggregator_runs_only_once_the_delivery_stream_reads_and_is_left_alone_while_that_is_unknown() {
    use crate::error::{AwsError, AwsErrorKind};
    let creating = PartState::Pending("Firehose delivery stream p is CREATING".into());
    assert_eq!(output_reader(&creating), OutputReader::NotYet("Firehose delivery stream p is CREATING".into()));
    assert_eq!(output_reader(&PartState::Ready("it writes to the bucket".into())), OutputReader::Reading);
    let throttled = PartState::Failed(AwsError::new("describing p", AwsErrorKind::Throttled, None, "Rate exceeded").into());
    assert_eq!(output_reader(&throttled), OutputReader::Unknown);
    let update_refused = PartState::Degraded(AwsError::new("updating p", AwsErrorKind::Busy, None, "not ACTIVE").into());
    assert_eq!(output_reader(&update_refused), OutputReader::Reading, "the stream reads as it stands");
}

#[tokio::test]
async fn only_changes_a_reconcile_acts_on_wake_one() {
    let version = |generation: i64, status: &str, finalizer: bool, deleting: bool| {
        let mut pipeline = (*pipeline(default_spec(), finalizer, deleting)).clone();
        pipeline.metadata.generation = Some(generation);
        pipeline.status = Some(
            serde_json::from_value(json!({"conditions": [{"type": "Ready", "status": status, "reason": "R",
            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}))
            .unwrap(),
        );
        pipeline.metadata.labels = Some([("edited".to_owned(), status.to_owned())].into());
        pipeline
    };
    let events = [
        watcher::Event::Init,
        watcher::Event::InitApply(version(1, "False", false, false)),
        watcher::Event::InitDone,
        watcher::Event::Apply(version(1, "False", true, false)),
        watcher::Event::Apply(version(1, "True", true, false)),
        watcher::Event::Apply(version(2, "True", true, false)),
        watcher::Event::Apply(version(2, "Unknown", true, false)),
        watcher::Event::Apply(version(3, "Unknown", true, true)),
        watcher::Event::Delete(version(3, "Unknown", true, true)),
    ];
    let woken: Vec<_> = changes(futures::stream::iter(events.map(Ok)), reconcile_inputs)
        .map(|pipeline| {
            let pipeline = pipeline.unwrap();
            (pipeline.metadata.generation.unwrap(), pipeline.metadata.finalizers.is_some(), pipeline.metadata.deletion_timestamp.is_some())
        })
        .collect()
        .await;
    assert_eq!(
        woken,
        [(1, false, false), (1, true, false), (2, true, false), (3, true, true), (3, true, true)],
        "first sight, the finalizer, a spec change, the deletion and its end; never a status or label write"
    );
}

#[tokio::test]
async fn a_part_stuck_all_along_is_given_up_on_whatever_the_others_do_and_a_changed_spec_starts_afresh() {
    let (context, _api) = context(Some("eu-west-1"));
    let mut waiting = (*pipeline(default_spec(), true, false)).clone();
    let moment = Duration::from_millis(50);
    context.still_waiting(&waiting, vec![Part::Streams, Part::Delivery]);
    tokio::time::sleep(moment).await;
    assert!(context.still_waiting(&waiting, vec![Part::Streams, Part::Delivery]).0 >= moment, "the same parts: the clock runs on");
    // The streams came up and the aggregator now waits too: the delivery, stuck all along, keeps its time.
    assert!(context.still_waiting(&waiting, vec![Part::Delivery, Part::Aggregator]).0 >= moment);
    // The delivery came up: the aggregator has waited only since it started waiting.
    assert!(context.still_waiting(&waiting, vec![Part::Aggregator]).0 < moment);
    tokio::time::sleep(moment).await;
    waiting.metadata.generation = Some(2);
    assert!(context.still_waiting(&waiting, vec![Part::Aggregator]).0 < moment, "a changed spec is waited for afresh");
    context.retry_after(&waiting);
    let draining = context.draining_for(&waiting);
    tokio::time::sleep(moment).await;
    assert!(context.draining_for(&waiting) >= draining + moment, "the drain's clock runs from its first look");
    context.done_waiting(&waiting);
    context.succeeded(&waiting);
    assert!(context.tracks.lock().unwrap().is_empty(), "nothing kept of a pipeline with nothing to remember");
}
