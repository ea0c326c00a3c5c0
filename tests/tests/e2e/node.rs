//! What only a real runtime shows about the aggregator's pod the operator writes: the readiness
//! probe decides when it counts as ready (and the operator's AggregatorReady follows), its log is
//! readable through the API server, its security context is enforced, and a memory limit below
//! its need is an OOM kill that `kubectl describe mp` names, with the field to change; an image
//! no node can pull ends the pipeline Failed within the time limit, in the kubelet's words.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use metrics_pipeline_api::pipeline::Phase;
use metrics_pipeline_api::{MetricsPipeline, MetricsPipelineStatus};
use metrics_pipeline_e2e::in_process::{OperatorTest, condition, example_named, quick_settings, ready_at, wait_for_status_within};
use metrics_pipeline_e2e::quickstart::{example, start_operator};
use metrics_pipeline_e2e::relay::Relay;
use metrics_pipeline_e2e::{FIELD_MANAGER, TestNamespace, install_crd, kube_client, workspace_bin_dir};
use metrics_pipeline_operator::controller::Settings;
use metrics_pipeline_operator::workload::{CONTAINER, aggregator_selector};
use metrics_pipeline_test_support::{terminate, wait_for};
use serde_json::json;

/// A shell for `kubectl exec` into an image that has none (Debian's busybox-static on the node).
const BUSYBOX: &str = "/bin/busybox";

async fn status_where(
    pipelines: &Api<MetricsPipeline>,
    what: &str,
    check: impl Fn(&MetricsPipelineStatus) -> bool,
) -> MetricsPipelineStatus {
    wait_for_status_within(pipelines, "metrics", what, Duration::from_secs(120), check).await
}

async fn aggregator_pod(pods: &Api<Pod>) -> Option<Pod> {
    pods.list(&ListParams::default().labels(&aggregator_selector()))
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|p| p.metadata.deletion_timestamp.is_none())
}

/// `kubectl ARGS...` against the test's cluster: (success, stdout and stderr).
fn kubectl(args: &[&str]) -> (bool, String) {
    let output = Command::new("kubectl").args(args).output().expect("kubectl runs");
    (output.status.success(), format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
}

#[tokio::test]
async fn the_aggregator_pod_is_ready_by_its_probe_logs_runs_confined_and_an_oom_kill_names_the_limit_to_raise() {
    let client = kube_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let namespace = TestNamespace::create(&client, "node").await.unwrap();
    let ns = namespace.name.clone();
    // The aggregator reaches AWS through a relay that starts cut: it runs, but cannot describe its
    // input stream (the first thing it does: the checkpoint is bound to the stream's identity).
    let relay = Relay::start(&std::env::var("AWS_ENDPOINT_URL").unwrap()).await.unwrap();
    let log_dir = std::env::temp_dir().join(format!("metrics-pipeline-{ns}"));
    std::fs::create_dir_all(&log_dir).unwrap();
    let mut operator = start_operator(&workspace_bin_dir().unwrap(), &ns, &log_dir, Some(&relay.endpoint), None).unwrap();
    let pipelines: Api<MetricsPipeline> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pipeline = example().unwrap();
    pipelines.patch("metrics", &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&pipeline)).await.unwrap();

    // Running, and alive by its liveness probe, but not ready: the readiness probe fails until
    // the input stream is described and the checkpoint read, and the operator waits on it.
    let running_unready = wait_for("the aggregator running but not ready", Duration::from_secs(90), async || {
        let pod = aggregator_pod(&pods).await.ok_or("no pod yet")?;
        let status = pod.status.clone().and_then(|s| s.container_statuses).and_then(|s| s.into_iter().next()).ok_or("no container yet")?;
        match status.state.as_ref().and_then(|s| s.running.as_ref()) {
            Some(_) if !status.ready => Ok(pod),
            _ => Err(format!("{status:?}")),
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let pod = pods.get(&running_unready.name_any()).await.unwrap();
    let container = &pod.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0];
    assert_eq!((container.ready, container.restart_count), (false, 0), "two probe periods later: alive, still not ready");
    let status = status_where(&pipelines, "AggregatorReady waiting for the rollout", |s| {
        condition(s, "AggregatorReady").is_some_and(|(ready, _, message)| ready == "False" && message.contains("0/1 ready"))
    })
    .await;
    assert_ne!(status.phase, Some(Phase::Ready));
    let log = pods.logs(&pod.name_any(), &LogParams::default()).await.unwrap();
    assert!(log.contains("cannot describe the input stream yet; retrying"), "the aggregator's own log, through the API server: {log}");

    relay.set_up(true);
    status_where(&pipelines, "Ready once the probe passes", |s| s.phase == Some(Phase::Ready)).await;
    let log = pods.logs(&pod.name_any(), &LogParams::default()).await.unwrap();
    assert!(log.contains("consuming"), "{log}");

    // The pod template the operator wrote, in a pod of the same image whose command is a shell
    // from the node: what it may do is what the aggregator may do.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let template = deployments.get("metrics-aggregator").await.unwrap().spec.unwrap().template;
    let mut spec = template.spec.unwrap();
    let container = &mut spec.containers[0];
    container.command = Some(vec!["/probe/busybox".into(), "sleep".into(), "600".into()]);
    container.args = None;
    (container.readiness_probe, container.liveness_probe) = (None, None);
    container.volume_mounts =
        Some(vec![serde_json::from_value(json!({"name": "busybox", "mountPath": "/probe/busybox", "readOnly": true})).unwrap()]);
    spec.volumes = Some(vec![serde_json::from_value(json!({"name": "busybox", "hostPath": {"path": BUSYBOX, "type": "File"}})).unwrap()]);
    spec.termination_grace_period_seconds = Some(0);
    let probe: Pod = serde_json::from_value(json!({"metadata": {"name": "confinement"}, "spec": spec})).unwrap();
    pods.create(&PostParams::default(), &probe).await.unwrap();
    wait_for("the probe pod running", Duration::from_secs(60), async || {
        let phase = pods.get("confinement").await.map_err(|e| e.to_string())?.status.and_then(|s| s.phase);
        if phase.as_deref() == Some("Running") { Ok(()) } else { Err(format!("{phase:?}")) }
    })
    .await
    .unwrap();
    let exec = |command: &[&str]| {
        let mut args = vec!["exec", "-n", ns.as_str(), "confinement", "-c", CONTAINER, "--", "/probe/busybox"];
        args.extend_from_slice(command);
        kubectl(&args)
    };
    assert_eq!(exec(&["id", "-u"]), (true, "65532\n".into()), "not root");
    assert_eq!(exec(&["id", "-g"]), (true, "65532\n".into()));
    let (written, output) = exec(&["touch", "/home/nonroot/file"]);
    assert!(!written && output.contains("Read-only file system"), "the root filesystem is read-only: {output}");
    let (_, capabilities) = exec(&["grep", "CapEff", "/proc/self/status"]);
    assert!(capabilities.contains("0000000000000000"), "every capability dropped: {capabilities}");
    let (listed, output) = exec(&["ls", "/var/run/secrets/kubernetes.io/serviceaccount"]);
    assert!(!listed, "no Kubernetes token is mounted: {output}");
    pods.delete("confinement", &DeleteParams::default()).await.unwrap();

    // Less memory than the aggregator needs: the kubelet kills it, and the operator says why.
    let mut starved = pipeline.clone();
    let limits = [("memory".to_owned(), Quantity("4Mi".into()))].into();
    starved.spec.aggregator.resources =
        Some(k8s_openapi::api::core::v1::ResourceRequirements { limits: Some(limits), ..Default::default() });
    pipelines.patch("metrics", &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&starved)).await.unwrap();
    let status = status_where(&pipelines, "AggregatorReady False for OOMKilled", |s| {
        condition(s, "AggregatorReady").is_some_and(|(ready, reason, _)| ready == "False" && reason == "OOMKilled")
    })
    .await;
    let (_, _, message) = condition(&status, "AggregatorReady").unwrap();
    assert!(message.contains("4Mi") && message.contains("spec.aggregator.resources.limits.memory"), "{message}");
    assert_eq!(status.phase, Some(Phase::Failed), "the user must raise the limit");
    let (described, description) = kubectl(&["describe", "metricspipeline", "metrics", "-n", &ns]);
    assert!(
        described && description.contains("OOMKilled") && description.contains("spec.aggregator.resources.limits.memory"),
        "{description}"
    );

    // Enough memory again: the rollout finishes.
    pipelines.patch("metrics", &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&pipeline)).await.unwrap();
    status_where(&pipelines, "Ready with the default limit", |s| ready_at(s, 3)).await;

    pipelines.delete("metrics", &DeleteParams::default()).await.unwrap();
    wait_for("the pipeline's deletion", Duration::from_secs(120), async || {
        match pipelines.get_opt("metrics").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(pipeline) => Err(format!("{:?}", pipeline.status.and_then(|s| s.phase))),
        }
    })
    .await
    .unwrap();
    terminate(&mut operator, Duration::from_secs(10)).await;
    namespace.delete().await.unwrap();
}

#[tokio::test]
async fn an_aggregator_image_no_node_can_pull_ends_failed_in_the_kubelets_words_and_is_looked_at_only_at_the_resync() {
    let settings = Settings { pending_timeout: Duration::from_secs(30), resync: Duration::from_secs(600), ..quick_settings() };
    let test = OperatorTest::start_with("pull", None, settings).await;
    let mut pipeline = example_named("minimal.yaml", "unpulled");
    pipeline.spec.aggregator.image = Some("registry.invalid/metrics-aggregator:missing".into());
    test.apply(&pipeline).await;

    let status = test.wait_for("unpulled", "Failed once the time limit passed", |s| s.phase == Some(Phase::Failed)).await;
    let (_, reason, message) = condition(&status, "Ready").unwrap();
    assert_eq!(reason, "Stalled", "{message}");
    assert!(message.starts_with("gave up waiting after 3"), "{message}");
    assert!(["ErrImagePull", "ImagePullBackOff"].iter().any(|cause| message.contains(cause)), "the kubelet's reason: {message}");
    assert!(message.contains("registry.invalid/metrics-aggregator:missing"), "{message}");
    assert!(condition(&status, "DeliveryReady").is_some_and(|(ready, _, _)| ready == "True"), "the AWS parts stay ready");
    let events: Api<Event> = Api::namespaced(test.client.clone(), &test.namespace.name);
    let warning = wait_for("a Warning event naming the cause", Duration::from_secs(10), async || {
        let events = events.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let warning = events.items.into_iter().find(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("Stalled"));
        warning.and_then(|e| e.note).ok_or_else(|| "none yet".to_owned())
    })
    .await
    .unwrap();
    assert!(warning.contains("registry.invalid"), "{warning}");

    // Given up: no look until the resync, however long the pod keeps backing off.
    let calls = test.operator().total_calls();
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(test.operator().total_calls(), calls, "no AWS call while given up");

    test.delete_and_check("unpulled").await;
    test.finish().await;
}
