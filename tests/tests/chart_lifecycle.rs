//! The chart's life on the local cluster with Helm v4's own SDK, as a platform team lives it:
//! install the previous release (its CRD in `crds/`, which Helm never upgrades), move to this one
//! (the CRD a template, so a new spec field stops being pruned), roll back, uninstall and install
//! again, while one pipeline runs throughout and is deleted cleanly at the end.
//!
//! A binary of its own, so it runs alone: it puts the previous release's older CRD on the cluster,
//! which would prune the newer fields of every other test's pipelines.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use metrics_pipeline_api::MetricsPipeline;
use metrics_pipeline_e2e::chart::{self, Revision};
use metrics_pipeline_e2e::in_process::{ready_at, wait_for_status_within};
use metrics_pipeline_e2e::{FIELD_MANAGER, TestNamespace, kube_client, repo_path};
use metrics_pipeline_test_support::wait_for;
use serde_json::json;

/// The previous release: chart 0.1.0, its CRD in `crds/`, without `spec.aggregator.nodeSelector`.
const PREVIOUS_RELEASE: &str = "a17d234";
const CRD: &str = "metricspipelines.pipelines.metrics.dev";

fn revision(revision: u32, status: &str, chart_version: &str) -> Revision {
    Revision { revision, status: status.into(), chart_version: chart_version.into() }
}

/// `version:` of a Chart.yaml.
fn chart_version(chart: &std::path::Path) -> String {
    let chart_yaml = std::fs::read_to_string(chart.join("Chart.yaml")).unwrap();
    chart_yaml.lines().find_map(|line| line.strip_prefix("version: ")).unwrap().trim().to_owned()
}

/// Reading one namespace, granted to the operator's ServiceAccount beside a release's own RBAC.
struct NamespaceReadGrant {
    client: kube::Client,
    name: String,
}

impl NamespaceReadGrant {
    async fn give(client: &kube::Client, release_namespace: &str, watched: &str) -> Self {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), release_namespace);
        let operator = deployments.list(&Default::default()).await.unwrap().items.into_iter().next().expect("the operator's Deployment");
        let account = operator.spec.unwrap().template.spec.unwrap().service_account_name.unwrap();
        let name = format!("{release_namespace}-reads-{watched}");
        let role: ClusterRole = serde_json::from_value(json!({"metadata": {"name": name},
            "rules": [{"apiGroups": [""], "resources": ["namespaces"], "resourceNames": [watched], "verbs": ["get"]}]}))
        .unwrap();
        let binding: ClusterRoleBinding = serde_json::from_value(json!({"metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": release_namespace}]}))
        .unwrap();
        Api::<ClusterRole>::all(client.clone()).create(&Default::default(), &role).await.unwrap();
        Api::<ClusterRoleBinding>::all(client.clone()).create(&Default::default(), &binding).await.unwrap();
        Self { client: client.clone(), name }
    }

    async fn take_back(self) {
        Api::<ClusterRoleBinding>::all(self.client.clone()).delete(&self.name, &DeleteParams::default()).await.unwrap();
        Api::<ClusterRole>::all(self.client).delete(&self.name, &DeleteParams::default()).await.unwrap();
    }
}

#[tokio::test]
async fn the_chart_upgrades_from_its_previous_release_rolls_back_and_uninstalls_without_losing_a_pipeline() {
    let client = kube_client().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let release_namespace = TestNamespace::create(&client, "lifecycle-ops").await.unwrap();
    let watched = TestNamespace::create(&client, "lifecycle-team").await.unwrap();
    let (namespace, release) = (release_namespace.name.as_str(), release_namespace.name.as_str());
    let values = chart::local_values(&watched.name, 1);
    let previous = chart::at_commit(PREVIOUS_RELEASE).unwrap();
    let current = repo_path(chart::CHART);
    let (previous_version, current_version) = (chart_version(&previous), chart_version(&current));
    assert_ne!(previous_version, current_version, "a chart that changes gets a new version");

    // A cluster that runs the previous release, its CRD made by Helm from `crds/`: from no CRD.
    if crds.get_opt(CRD).await.unwrap().is_some() {
        let pipelines_anywhere = Api::<MetricsPipeline>::all(client.clone()).list(&Default::default()).await.unwrap();
        let names: Vec<String> = pipelines_anywhere.iter().map(|p| format!("{}/{}", p.namespace().unwrap(), p.name_any())).collect();
        assert!(names.is_empty(), "this test replaces the CRD, which would delete these pipelines: {names:?}");
        crds.delete(CRD, &DeleteParams::default()).await.unwrap();
    }
    wait_for("the CRD gone", Duration::from_secs(60), async || match crds.get_opt(CRD).await.unwrap() {
        Some(_) => Err("still there".to_owned()),
        None => Ok(()),
    })
    .await
    .unwrap();
    assert_eq!(chart::install(&previous, namespace, release, &values).unwrap(), [revision(1, "deployed", &previous_version)]);
    // This checkout's operator runs under both releases, and reads the watched namespace's
    // allowances, which the previous release's RBAC does not grant: granted here, for the test.
    let grant = NamespaceReadGrant::give(&client, namespace, &watched.name).await;

    // Its CRD prunes a field it does not know: the pipeline runs without its node selector.
    let pipelines: Api<MetricsPipeline> = Api::namespaced(client.clone(), &watched.name);
    let mut example: MetricsPipeline =
        serde_yaml::from_str(&std::fs::read_to_string(repo_path("examples/pipeline.yaml")).unwrap()).unwrap();
    example.spec.aggregator.node_selector = [("kubernetes.io/os".to_owned(), "linux".to_owned())].into();
    let apply = |pipeline: &MetricsPipeline| {
        let (pipelines, pipeline) = (pipelines.clone(), pipeline.clone());
        async move { pipelines.patch("metrics", &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&pipeline)).await.unwrap() }
    };
    let stored = apply(&example).await;
    assert!(stored.spec.aggregator.node_selector.is_empty(), "the previous CRD prunes spec.aggregator.nodeSelector");
    let wait = async |what: &str, generation: i64| {
        wait_for_status_within(&pipelines, "metrics", what, Duration::from_secs(180), |status| ready_at(status, generation)).await
    };
    wait("Ready under the previous release", 1).await;

    // The one-time move of the CRD from `crds/` into the release (docs/user-guide/install.md).
    let adopt = json!({"metadata": {
        "labels": {"app.kubernetes.io/managed-by": "Helm"},
        "annotations": {"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": namespace},
    }});
    crds.patch(CRD, &PatchParams::default(), &Patch::Merge(&adopt)).await.unwrap();
    let history = chart::upgrade(&current, namespace, release, &values).unwrap();
    assert_eq!(history.last(), Some(&revision(2, "deployed", &current_version)));

    // The new field survives now, and reaches the aggregator's pod.
    let stored = apply(&example).await;
    assert_eq!(stored.spec.aggregator.node_selector, example.spec.aggregator.node_selector, "the upgraded CRD keeps the field");
    wait("Ready with the node selector", 2).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &watched.name);
    let aggregator = stored.status.and_then(|status| status.aggregator).map(|aggregator| aggregator.deployment);
    let aggregator = deployments.get(&aggregator.unwrap_or_default()).await.unwrap();
    let pod = aggregator.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.node_selector.unwrap_or_default(), example.spec.aggregator.node_selector);

    // A rollback to the previous release keeps the CRD it never had as a template, field and all.
    let history = chart::rollback(namespace, release, 1).unwrap();
    assert_eq!(history.last(), Some(&revision(3, "deployed", &previous_version)));
    let crd = crds.get(CRD).await.unwrap();
    assert!(serde_json::to_string(&crd.spec).unwrap().contains("nodeSelector"), "the CRD stays as upgraded");
    assert_eq!(pipelines.get("metrics").await.unwrap().spec.aggregator.node_selector, example.spec.aggregator.node_selector);
    let history = chart::upgrade(&current, namespace, release, &values).unwrap();
    assert_eq!(history.last(), Some(&revision(4, "deployed", &current_version)));

    // Uninstalling the operator leaves the CRD, the pipeline and its aggregator running.
    chart::uninstall(namespace, release).unwrap();
    let operators: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    assert!(operators.list(&Default::default()).await.unwrap().items.is_empty(), "the operator is gone");
    assert!(crds.get_opt(CRD).await.unwrap().is_some(), "helm.sh/resource-policy: keep");
    let pipeline = pipelines.get("metrics").await.unwrap();
    assert!(pipeline.metadata.deletion_timestamp.is_none() && pipeline.finalizers().len() == 1);
    assert_eq!(aggregator_replicas(&deployments, &pipeline).await, Some(1), "the aggregator keeps running");

    // Installed again under the same name, the operator takes the pipeline up where it was, with
    // this release's RBAC alone.
    grant.take_back().await;
    assert_eq!(chart::install(&current, namespace, release, &values).unwrap(), [revision(1, "deployed", &current_version)]);
    example.spec.delivery.buffer_interval_seconds = 120;
    apply(&example).await;
    wait("the reinstalled operator reconciles a change", 3).await;

    // Deleted while the operator runs, the pipeline's finalizer cleans up and lets it go.
    pipelines.delete("metrics", &DeleteParams::default()).await.unwrap();
    wait_for("the pipeline deleted", Duration::from_secs(150), async || {
        pipelines.get_opt("metrics").await.unwrap().map_or(Ok(()), |p| Err(format!("{:?}", p.status.and_then(|s| s.phase))))
    })
    .await
    .unwrap();
    chart::uninstall(namespace, release).unwrap();
    watched.delete().await.unwrap();
    release_namespace.delete().await.unwrap();
}

async fn aggregator_replicas(deployments: &Api<Deployment>, pipeline: &MetricsPipeline) -> Option<i32> {
    let name = pipeline.status.as_ref()?.aggregator.as_ref()?.deployment.clone();
    deployments.get(&name).await.ok()?.status?.ready_replicas
}
