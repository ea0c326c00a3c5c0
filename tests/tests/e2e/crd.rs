//! The MetricsPipeline CRD against a real kube-apiserver (v1.20): installation, defaulting,
//! printer columns, and refusal of invalid resources.

use std::process::Command;

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use metrics_pipeline_api::config::AwsTarget;
use metrics_pipeline_api::validation::validate;
use metrics_pipeline_api::{MetricsPipeline, MetricsPipelineSpec};
use metrics_pipeline_e2e::in_process::example;
use metrics_pipeline_e2e::{FIELD_MANAGER, TestNamespace, install_crd, kube_client};
use serde_json::json;

async fn setup(prefix: &str) -> (Api<MetricsPipeline>, TestNamespace) {
    let client = kube_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let namespace = TestNamespace::create(&client, prefix).await.unwrap();
    (Api::namespaced(client, &namespace.name), namespace)
}

#[tokio::test]
async fn example_applies_and_reads_back_with_defaults_filled_in() {
    let (pipelines, namespace) = setup("crd-example").await;
    pipelines.patch("metrics", &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(example("pipeline.yaml"))).await.unwrap();

    let stored = pipelines.get("metrics").await.unwrap();
    // The example leaves the output stream's retention out; the API server fills it in.
    assert_eq!(stored.spec.streams.output.retention_hours, 24);
    assert_eq!(stored.spec.streams.input.shard_count, Some(1));
    assert_eq!(stored.spec.aggregation.window, "1m");

    let minimal = pipelines.create(&PostParams::default(), &example("minimal.yaml")).await.unwrap();
    let raw = serde_json::to_value(&minimal.spec).unwrap();
    assert_eq!(
        raw["aggregation"],
        json!({"window": "1m", "outOfOrderness": "10s", "allowedLateness": "1m", "idleTimeout": "30s", "maxFutureSkew": "5m"})
    );
    assert_eq!(
        raw["delivery"],
        json!({"bufferIntervalSeconds": 60, "bufferSizeMiB": 64, "format": "Json", "writer": "Firehose", "compression": "Gzip"})
    );
    assert_eq!(raw["streams"]["input"], json!({"capacityMode": "Provisioned", "retentionHours": 24}));
    assert_eq!(raw["deletionPolicy"], "Delete");
    assert_eq!(raw["catalog"], json!({"partitions": {"mode": "Registered"}}));
    assert_eq!(raw["aggregator"], json!({"replicas": 1, "logLevel": "info"}));

    // Every example, as the API server stores it, passes the operator's validation too.
    let target = AwsTarget { account_id: "123456789012".into(), default_region: Some("eu-west-1".into()) };
    for file in ["pipeline.yaml", "on-demand-retain.yaml"] {
        let pipeline = example(file);
        let name = pipeline.metadata.name.clone().unwrap();
        pipelines.patch(&name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(pipeline)).await.unwrap();
    }
    for stored in pipelines.list(&Default::default()).await.unwrap() {
        let config = validate(&stored, &target);
        assert!(config.is_ok(), "{:?} should be valid: {:?}", stored.metadata.name, config.err());
    }
    namespace.delete().await.unwrap();
}

#[tokio::test]
async fn kubectl_get_shows_the_printer_columns() {
    let (pipelines, namespace) = setup("crd-columns").await;
    pipelines.create(&PostParams::default(), &example("minimal.yaml")).await.unwrap();
    let status = json!({
        "apiVersion": "pipelines.metrics.dev/v1alpha1", "kind": "MetricsPipeline",
        "status": {
            "phase": "Ready",
            "conditions": [{"type": "Ready", "status": "True", "reason": "AllPartsReady", "message": "every part is ready",
                            "lastTransitionTime": "2021-09-09T12:00:00Z"},
                           {"type": "DataFlowing", "status": "True", "reason": "Flowing", "message": "records in, aggregates out",
                            "lastTransitionTime": "2021-09-09T12:00:00Z"}],
            "dataFlow": {"reportedAt": "2021-09-09T12:00:00Z", "intervalSeconds": 30, "recordsIn": 1200, "deadLetters": 0,
                         "aggregatesOut": 40, "watermarkLagSeconds": 12},
            "inputStream": {"name": "ns-minimal-input"},
            "outputStream": {"name": "ns-minimal-output"},
            "bucket": {"name": "ns-minimal-0123456789ab"}
        }
    });
    pipelines.patch_status("minimal", &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(status)).await.unwrap();

    let output = Command::new("kubectl").args(["get", "mp", "-n", &namespace.name]).output().expect("kubectl runs");
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let header: Vec<&str> = table.lines().next().unwrap().split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
    assert_eq!(header, ["NAME", "READY", "PHASE", "DATA", "LAG (S)", "INPUT STREAM", "OUTPUT STREAM", "BUCKET", "AGE"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..8], ["minimal", "True", "Ready", "Flowing", "12", "ns-minimal-input", "ns-minimal-output", "ns-minimal-0123456789ab"]);
    namespace.delete().await.unwrap();
}

/// Creates a pipeline whose spec is the minimal example's with `spec_patch` merged in, and
/// returns the API server's refusal message.
async fn refusal(pipelines: &Api<DynamicObject>, spec_patch: serde_json::Value) -> String {
    let mut pipeline = serde_json::to_value(example("minimal.yaml")).unwrap();
    json_merge(&mut pipeline["spec"], spec_patch);
    let object: DynamicObject = serde_json::from_value(pipeline.clone()).unwrap();
    match pipelines.create(&PostParams::default(), &object).await {
        Ok(_) => panic!("the API server accepted {pipeline}"),
        Err(error) => error.to_string(),
    }
}

fn json_merge(target: &mut serde_json::Value, patch: serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(target), serde_json::Value::Object(patch)) => {
            for (key, value) in patch {
                json_merge(target.entry(key).or_insert(serde_json::Value::Null), value);
            }
        }
        (target, patch) => *target = patch,
    }
}

#[tokio::test]
async fn the_api_server_refuses_what_the_schema_forbids() {
    let (pipelines, namespace) = setup("crd-invalid").await;
    let pipelines: Api<DynamicObject> =
        Api::namespaced_with(pipelines.into_client(), &namespace.name, &ApiResource::erase::<MetricsPipeline>(&()));
    let cases = [
        (json!({"streams": {"input": {"shardCount": 0}}}), "spec.streams.input.shardCount"),
        (json!({"aggregation": {"window": "1 minute"}}), "spec.aggregation.window"),
        (json!({"delivery": {"bucketName": "My_Bucket"}}), "spec.delivery.bucketName"),
        (json!({"delivery": {"bufferSizeMiB": 5}}), "spec.delivery.bufferSizeMiB"),
        (json!({"delivery": {"bufferIntervalSeconds": 30}}), "spec.delivery.bufferIntervalSeconds"),
        (json!({"deletionPolicy": "Keep"}), "spec.deletionPolicy"),
        (json!({"aggregator": {"replicas": 3}}), "spec.aggregator.replicas"),
    ];
    for (patch, field) in cases {
        let message = refusal(&pipelines, patch.clone()).await;
        assert!(message.contains(field), "refusing {patch} should name {field}: {message}");
    }
    namespace.delete().await.unwrap();
}

#[tokio::test]
async fn cross_field_rules_the_schema_cannot_express_are_reported_by_validate() {
    let (pipelines, namespace) = setup("crd-crossfield").await;
    let mut pipeline = example("minimal.yaml");
    let spec: &mut MetricsPipelineSpec = &mut pipeline.spec;
    spec.streams.input.capacity_mode = metrics_pipeline_api::pipeline::CapacityMode::OnDemand;
    spec.streams.input.shard_count = Some(2);
    spec.aggregation.out_of_orderness = "2m".into();
    // The API server takes it: each field is fine on its own.
    let stored = pipelines.create(&PostParams::default(), &pipeline).await.unwrap();

    let target = AwsTarget { account_id: "123456789012".into(), default_region: Some("eu-west-1".into()) };
    let errors = validate(&stored, &target).unwrap_err().to_string();
    assert!(errors.contains("spec.streams.input.shardCount: applies only to capacityMode: Provisioned"), "{errors}");
    assert!(errors.contains("spec.aggregation.idleTimeout: `30s` is shorter than outOfOrderness `2m`"), "{errors}");
    namespace.delete().await.unwrap();
}

#[tokio::test]
async fn a_misspelt_toleration_reaches_the_operator_which_refuses_it_by_name() {
    let (pipelines, namespace) = setup("crd-tolerations").await;
    let mut pipeline = example("minimal.yaml");
    // Pruned, `effct` would leave a toleration of every effect, NoExecute included.
    pipeline.spec.aggregator.tolerations = vec![json!({"key": "dedicated", "operator": "Exists", "effct": "NoSchedule"})];
    let stored = pipelines.create(&PostParams::default(), &pipeline).await.unwrap();
    assert_eq!(stored.spec.aggregator.tolerations, pipeline.spec.aggregator.tolerations, "kept as written");
    let target = AwsTarget { account_id: "123456789012".into(), default_region: Some("eu-west-1".into()) };
    let errors = validate(&stored, &target).expect_err("the operator refuses it").0;
    assert_eq!(errors[0].field, "spec.aggregator.tolerations[0]", "{errors:?}");
    assert!(errors[0].message.contains("`effct`"), "{errors:?}");
    namespace.delete().await.unwrap();
}
