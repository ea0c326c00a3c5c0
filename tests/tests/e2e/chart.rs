//! The Helm chart, rendered and linted by Helm's own SDK and applied to the real API server: the operator runs
//! as the chart's Deployment, real pods of this checkout's image on the node, each with the token
//! the kubelet mounts for the chart's ServiceAccount, so its RBAC is proven sufficient for a whole
//! pipeline lifecycle; a SubjectAccessReview shows it is nothing broader. With two replicas, one
//! leads and the other takes over when its pod is deleted.

use std::time::Duration;

use futures::AsyncReadExt;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use metrics_pipeline_api::MetricsPipeline;
use metrics_pipeline_e2e::in_process::{ready_at, wait_for_status};
use metrics_pipeline_e2e::{FIELD_MANAGER, TestNamespace, chart, kube_client, repo_path};
use metrics_pipeline_test_support::wait_for;
use serde_json::json;

const OPERATOR_PODS: &str = "app.kubernetes.io/name=metrics-pipeline-operator";

#[test]
fn values_the_schema_refuses_are_named() {
    let refused = chart::render("ops", "mp", &json!({"replicas": 9, "region": "Europe", "irsaRoleArn": "my-role", "logFormat": "xml"}))
        .unwrap_err()
        .to_string();
    for field in ["replicas", "region", "irsaRoleArn", "logFormat"] {
        assert!(refused.contains(field), "{field} is named: {refused}");
    }
    let unknown = chart::render("ops", "mp", &json!({"replica": 2})).unwrap_err().to_string();
    assert!(unknown.contains("replica"), "a misspelt value is refused: {unknown}");
}

#[test]
fn the_chart_passes_helm_lint_strict() {
    let findings = chart::lint(&chart::local_values("pipelines", 2)).unwrap();
    assert!(!findings.contains("[2]") && !findings.contains("[3]"), "{findings}");
}

#[test]
fn an_all_digit_image_tag_is_taken_as_written() {
    // What `--set image.tag=1234567` (a short commit id) or `tag: 1234567` in a values file give.
    let rendered =
        chart::render("ops", "mp", &json!({"image": {"repository": "registry.example/metrics-pipeline-operator", "tag": 1234567}}))
            .unwrap();
    assert!(rendered.contains("image: registry.example/metrics-pipeline-operator:1234567"), "{rendered}");
    assert!(rendered.contains(r#"value: "registry.example/metrics-aggregator:1234567""#), "{rendered}");
}

/// The rendered documents of `kind`.
fn documents<'a>(rendered: &'a str, kind: &str) -> Vec<&'a str> {
    rendered.split("\n---\n").filter(|document| document.lines().any(|line| line == format!("kind: {kind}"))).collect()
}

#[test]
fn a_release_named_after_the_project_names_its_objects_once() {
    let rendered = chart::render("ops", "metrics-pipeline", &json!({})).unwrap();
    let deployment = documents(&rendered, "Deployment").concat();
    assert!(deployment.contains("  name: metrics-pipeline-operator\n"), "{deployment}");
    assert!(!rendered.contains("metrics-pipeline-metrics-pipeline"), "{rendered}");
    let overridden = chart::render("ops", "metrics-pipeline", &json!({"fullnameOverride": "pipelines"})).unwrap();
    assert!(documents(&overridden, "Deployment").concat().contains("  name: pipelines\n"), "{overridden}");
}

#[test]
fn a_service_account_made_elsewhere_is_used_by_name_and_never_created() {
    let rendered = chart::render("ops", "mp", &json!({"serviceAccount": {"create": false, "name": "platform-operator"}})).unwrap();
    assert!(documents(&rendered, "ServiceAccount").is_empty(), "{rendered}");
    assert!(rendered.contains("serviceAccountName: platform-operator"), "{rendered}");
    for binding in ["ClusterRoleBinding", "RoleBinding"] {
        assert!(documents(&rendered, binding).concat().contains("name: platform-operator"), "{binding}: {rendered}");
    }
    let unnamed = chart::render("ops", "mp", &json!({"serviceAccount": {"create": false}})).unwrap_err().to_string();
    assert!(unnamed.contains("serviceAccount.name"), "{unnamed}");
}

#[test]
fn no_region_is_chosen_for_the_user() {
    let rendered = chart::render("ops", "mp", &json!({})).unwrap();
    let deployment = documents(&rendered, "Deployment").concat();
    assert!(!deployment.contains("AWS_REGION"), "no silent default region: {deployment}");
    let chosen = chart::render("ops", "mp", &json!({"region": "eu-central-1"})).unwrap();
    assert!(chosen.contains(r#"{name: AWS_REGION, value: "eu-central-1"}"#), "{chosen}");
}

#[test]
fn prometheus_finds_the_operator_the_aggregators_and_the_alerts_when_asked_to() {
    let plain = chart::render("ops", "mp", &json!({})).unwrap();
    assert_eq!(documents(&plain, "Service").len(), 1, "a metrics Service by default: {plain}");
    for kind in ["ServiceMonitor", "PodMonitor", "PrometheusRule"] {
        assert!(documents(&plain, kind).is_empty(), "{kind} needs the Prometheus Operator's CRDs: off by default");
    }
    let monitored = json!({"watchNamespace": "team-a", "metrics": {"serviceMonitor": {"enabled": true, "labels": {"release": "kube-prometheus"}}, "podMonitor": {"enabled": true}, "prometheusRule": {"enabled": true}}});
    let rendered = chart::render("ops", "mp", &monitored).unwrap();
    assert!(documents(&rendered, "ServiceMonitor").concat().contains("release: kube-prometheus"), "{rendered}");
    let pods = documents(&rendered, "PodMonitor").concat();
    assert!(pods.contains("app.kubernetes.io/name: metrics-aggregator") && pods.contains(r#"matchNames: ["team-a"]"#), "{pods}");
    let rules = documents(&rendered, "PrometheusRule").concat();
    let shipped = std::fs::read_to_string(repo_path("charts/metrics-pipeline-operator/rules/alerts.yaml")).unwrap();
    let alerts = |text: &str| {
        text.lines().filter(|line| line.trim_start().starts_with("- alert: ") || line.trim_start().starts_with("alert: ")).count()
    };
    assert_eq!(alerts(&rules), alerts(&shipped), "every shipped alert: {rules}");
    assert_eq!(alerts(&shipped), 11);
    let unscraped = chart::render("ops", "mp", &json!({"metrics": {"prometheusRule": {"enabled": true}}})).unwrap_err().to_string();
    assert!(unscraped.contains("metrics.serviceMonitor.enabled"), "alerts on series nobody scrapes: {unscraped}");
}

#[test]
fn the_crd_is_upgraded_with_the_release_and_outlives_it() {
    let crd = |values: serde_json::Value| documents(&chart::render("ops", "mp", &values).unwrap(), "CustomResourceDefinition").concat();
    let rendered: serde_json::Value = serde_yaml::from_str(&crd(json!({}))).unwrap();
    assert_eq!(rendered["metadata"]["annotations"]["helm.sh/resource-policy"], "keep", "helm uninstall must not delete every pipeline");
    assert_eq!(rendered["metadata"]["labels"]["app.kubernetes.io/managed-by"], "Helm");
    let generated: serde_json::Value = serde_yaml::from_str(&metrics_pipeline_api::crd::crd_yaml()).unwrap();
    // Helm writes a whole bound as `1` where the generated YAML has `1.0`: the same number.
    let (rendered_spec, generated_spec) = (rendered["spec"].to_string(), generated["spec"].to_string());
    assert_eq!(
        rendered_spec,
        generated_spec.replace(".0,", ",").replace(".0}", "}"),
        "the template is the CRD generated from the Rust types"
    );
    assert!(!crd(json!({"crds": {"keep": false}})).contains("resource-policy"));
    assert!(crd(json!({"crds": {"install": false}})).is_empty(), "a CRD managed elsewhere is left alone");
}

#[test]
fn watching_one_namespace_grants_nothing_cluster_wide_but_reading_that_namespace_and_the_cluster_identity() {
    let rules_of = |rendered: &str, kind: &str| -> Vec<serde_json::Value> {
        documents(rendered, kind).iter().map(|document| serde_yaml::from_str(document).unwrap()).collect()
    };
    let everywhere = chart::render("ops", "mp", &json!({})).unwrap();
    let cluster_roles = rules_of(&everywhere, "ClusterRole");
    assert_eq!(cluster_roles.len(), 1);
    assert!(cluster_roles[0]["rules"].to_string().contains("metricspipelines"), "{everywhere}");

    let namespaces =
        |names: serde_json::Value| json!([{"apiGroups": [""], "resources": ["namespaces"], "resourceNames": names, "verbs": ["get"]}]);
    let one = chart::render("ops", "mp", &json!({"watchNamespace": "team-a"})).unwrap();
    let cluster_roles = rules_of(&one, "ClusterRole");
    assert_eq!(cluster_roles.len(), 1);
    assert_eq!(
        cluster_roles[0]["rules"],
        namespaces(json!(["team-a", "kube-system"])),
        "the watched namespace's annotations, and the kube-system namespace's UID (the default cluster identity)"
    );
    let roles = rules_of(&one, "Role");
    let pipelines = roles.iter().find(|role| role["metadata"]["namespace"] == "team-a").expect("a Role in the watched namespace");
    assert!(pipelines["rules"].to_string().contains("metricspipelines"), "{one}");
    assert!(rules_of(&one, "RoleBinding").iter().any(|binding| binding["metadata"]["namespace"] == "team-a"), "{one}");

    let sealed = chart::render("ops", "mp", &json!({"watchNamespace": "team-a", "clusterId": "prod-eu-1"})).unwrap();
    assert_eq!(rules_of(&sealed, "ClusterRole")[0]["rules"], namespaces(json!(["team-a"])), "with clusterId set, the namespace alone");
}

#[test]
fn pod_labels_cannot_take_the_selector_labels() {
    let refused = chart::render("ops", "mp", &json!({"podLabels": {"app.kubernetes.io/name": "other"}})).unwrap_err().to_string();
    assert!(refused.contains("podLabels"), "{refused}");
}

#[test]
fn the_dashboard_is_grafana_json_whose_every_query_names_series_that_exist() {
    assert!(documents(&chart::render("ops", "mp", &json!({})).unwrap(), "ConfigMap").is_empty(), "off by default");
    let rendered = chart::render("ops", "mp", &json!({"metrics": {"dashboard": {"enabled": true, "namespace": "grafana"}}})).unwrap();
    let config_map: serde_json::Value = serde_yaml::from_str(&documents(&rendered, "ConfigMap").concat()).unwrap();
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1", "the label Grafana's dashboard sidecar looks for");
    assert_eq!(config_map["metadata"]["namespace"], "grafana");
    let dashboard: serde_json::Value = serde_json::from_str(config_map["data"]["metrics-pipeline.json"].as_str().unwrap()).unwrap();
    // Every series it names is one the programs expose: their own unit tests check it.
    let panels = dashboard["panels"].as_array().unwrap();
    let queries: Vec<&str> = panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().into_iter().flatten())
        .filter_map(|target| target["expr"].as_str())
        .collect();
    // A pipeline's story: what comes in, what is refused, how far behind, what goes out, and the operator.
    for story in [
        "aggregator_records_read_total",
        "aggregator_shard_dead_letters_total",
        "aggregator_watermark_lag_seconds",
        "aggregator_aggregates_written_total",
        "aggregator_put_records_refused_total",
        "aggregator_checkpoint_age_seconds",
        "metrics_pipeline_operator_reconciles_total",
        "metrics_pipeline_operator_aws_attempt_errors_total",
    ] {
        assert!(queries.iter().any(|query| query.contains(story)), "the dashboard shows {story}: {queries:?}");
    }
}

#[test]
fn two_replicas_keep_one_through_a_drain_on_different_nodes() {
    let single = chart::render("ops", "mp", &json!({})).unwrap();
    assert!(documents(&single, "PodDisruptionBudget").is_empty() && !single.contains("topologySpreadConstraints"), "{single}");
    let pair = chart::render("ops", "mp", &json!({"replicas": 2})).unwrap();
    assert!(documents(&pair, "PodDisruptionBudget").concat().contains("minAvailable: 1"), "{pair}");
    assert!(pair.contains("topologyKey: kubernetes.io/hostname"), "{pair}");
}

#[test]
fn private_registries_extra_env_and_pod_labels_reach_the_pod() {
    let values = json!({"imagePullSecrets": [{"name": "registry-keys"}], "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}], "podLabels": {"team": "platform"}, "priorityClassName": "system-cluster-critical"});
    let rendered = chart::render("ops", "mp", &values).unwrap();
    for expected in [
        "- name: registry-keys",
        "- name: HTTPS_PROXY",
        "value: http://proxy:3128",
        "team: platform",
        "priorityClassName: \"system-cluster-critical\"",
    ] {
        assert!(rendered.contains(expected), "{expected}: {rendered}");
    }
}

#[test]
fn the_irsa_role_lands_on_the_service_account_and_the_aggregator_image_follows_the_operators() {
    let rendered = chart::render("ops", "mp", &json!({"irsaRoleArn": "arn:aws:iam::123456789012:role/operator", "image": {"repository": "registry.example/team/metrics-pipeline-operator", "tag": "1.2.3"}})).unwrap();
    assert!(rendered.contains("eks.amazonaws.com/role-arn: arn:aws:iam::123456789012:role/operator"), "{rendered}");
    assert!(rendered.contains("image: registry.example/team/metrics-pipeline-operator:1.2.3"));
    assert!(rendered.contains(r#"{name: AGGREGATOR_IMAGE, value: "registry.example/team/metrics-aggregator:1.2.3"}"#), "{rendered}");
}

#[test]
fn the_aggregators_get_their_own_credentials_secret_or_the_operators() {
    let own = chart::render(
        "ops",
        "mp-credentials",
        &json!({"awsCredentialsSecret": "operator-keys", "aggregatorCredentialsSecret": "aggregator-keys"}),
    )
    .unwrap();
    assert!(own.contains(r#"- secretRef: {name: "operator-keys"}"#), "{own}");
    assert!(own.contains(r#"{name: AGGREGATOR_CREDENTIALS_SECRET, value: "aggregator-keys"}"#), "{own}");
    let shared = chart::render("ops", "mp-credentials", &json!({"awsCredentialsSecret": "operator-keys"})).unwrap();
    assert!(shared.contains(r#"{name: AGGREGATOR_CREDENTIALS_SECRET, value: "operator-keys"}"#), "{shared}");
    let irsa = chart::render("ops", "mp-credentials", &json!({})).unwrap();
    assert!(!irsa.contains("AGGREGATOR_CREDENTIALS_SECRET") && !irsa.contains("secretRef"), "{irsa}");
}

/// The shared poll, for checks with nothing to report until they succeed.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    wait_for(what, Duration::from_secs(60), async || check().await.ok_or_else(|| "not yet".to_owned())).await.unwrap()
}

async fn lease_holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases
        .get_opt(name)
        .await
        .unwrap()
        .and_then(|lease| lease.spec)
        .and_then(|spec| spec.holder_identity)
        .filter(|holder| !holder.is_empty())
}

async fn allowed(client: &Client, user: &str, namespace: &str, verb: &str, group: &str, resource: &str) -> bool {
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "spec": {"user": user, "groups": ["system:serviceaccounts"], "resourceAttributes": {"namespace": namespace, "verb": verb, "group": group, "resource": resource}}
    }))
    .unwrap();
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    reviews.create(&PostParams::default(), &review).await.unwrap().status.unwrap().allowed
}

#[tokio::test]
async fn the_chart_installs_an_operator_whose_rbac_runs_a_pipeline_and_whose_replicas_elect_one_leader() {
    let client = kube_client().await.unwrap();
    let release_namespace = TestNamespace::create(&client, "chart-ops").await.unwrap();
    let watched = TestNamespace::create(&client, "chart-team").await.unwrap();
    let release = release_namespace.name.clone();
    let manifests = chart::render(&release_namespace.name, &release, &chart::local_values(&watched.name, 2)).unwrap();
    let applied = chart::apply(&client, &manifests).await.unwrap();
    let kinds: Vec<String> = applied.iter().map(|o| o.types.as_ref().unwrap().kind.clone()).collect();
    assert_eq!(
        kinds,
        [
            "PodDisruptionBudget",
            "ServiceAccount",
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "Role",
            "RoleBinding",
            "RoleBinding",
            "Service",
            "Deployment"
        ],
        "in Helm's install order; watching one namespace, the pipelines' grants are a Role there and only reading kube-system \
         is cluster-wide"
    );

    // The chart's Deployment runs, both replicas, with the chart's ServiceAccount token.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &release_namespace.name);
    let lease = format!("{release}-metrics-pipeline-operator");
    let leader = eventually("a leader", async || lease_holder(&leases, &lease).await).await;

    // A whole pipeline lifecycle under the chart's RBAC: finalizer, AWS, workload, status, events.
    let pipelines: Api<MetricsPipeline> = Api::namespaced(client.clone(), &watched.name);
    let example: MetricsPipeline = serde_yaml::from_str(&std::fs::read_to_string(repo_path("examples/pipeline.yaml")).unwrap()).unwrap();
    pipelines.patch("metrics", &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&example)).await.unwrap();
    let status = wait_for_status(&pipelines, "metrics", "Ready under the chart's RBAC", |status| ready_at(status, 1)).await;
    assert_eq!(status.aggregator.unwrap().ready_replicas, 1, "the operator deployed the aggregator and saw it ready");
    let events: Api<Event> = Api::namespaced(client.clone(), &watched.name);
    let reasons: Vec<String> = events.list(&ListParams::default()).await.unwrap().iter().filter_map(|e| e.reason.clone()).collect();
    assert!(reasons.contains(&"Provisioned".to_owned()), "the operator may publish events: {reasons:?}");

    // Only the leader reconciles; when its pod goes, the other replica takes over.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &release_namespace.name);
    let names: Vec<String> = pods.list(&ListParams::default().labels(OPERATOR_PODS)).await.unwrap().iter().map(|p| p.name_any()).collect();
    assert_eq!(names.len(), 2);
    let follower = names.iter().find(|name| **name != leader).unwrap().clone();
    let follower_log = pods.logs(&follower, &LogParams::default()).await.unwrap();
    assert!(follower_log.contains("waiting for the leader lease") && !follower_log.contains("leading"), "{follower_log}");
    // The leader's log to its end: the kubelet's SIGTERM, the shutdown, the released lease.
    let mut leader_stream = pods.log_stream(&leader, &LogParams { follow: true, ..LogParams::default() }).await.unwrap();
    let leader_log = tokio::spawn(async move {
        let mut log = String::new();
        leader_stream.read_to_string(&mut log).await.map(|_| log)
    });
    pods.delete(&leader, &DeleteParams::default()).await.unwrap();
    let new_leader = eventually("a new leader", async || lease_holder(&leases, &lease).await.filter(|holder| *holder != leader)).await;
    let running: Vec<String> =
        pods.list(&ListParams::default().labels(OPERATOR_PODS)).await.unwrap().iter().map(|p| p.name_any()).collect();
    assert!(
        running.contains(&new_leader),
        "a running replica took over (the waiting one, or the one replacing the old leader): {new_leader} of {running:?}"
    );
    let leader_log = leader_log.await.unwrap().unwrap();
    assert!(leader_log.contains("stopped"), "the old leader shut down cleanly: {leader_log}");
    let mut changed = example.clone();
    changed.spec.delivery.buffer_interval_seconds = 120;
    pipelines.patch("metrics", &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&changed)).await.unwrap();
    wait_for_status(&pipelines, "metrics", "the new leader reconciles a change", |status| ready_at(status, 2)).await;

    pipelines.delete("metrics", &DeleteParams::default()).await.unwrap();
    // The aggregator's pod gets its grace period (60 s) to checkpoint before the AWS parts go.
    wait_for("deletion under the chart's RBAC", Duration::from_secs(150), async || {
        pipelines.get_opt("metrics").await.unwrap().map_or(Ok(()), |p| Err(format!("{:?}", p.status.and_then(|s| s.phase))))
    })
    .await
    .unwrap();

    // Nothing broader than that.
    let user = format!("system:serviceaccount:{}:{release}-metrics-pipeline-operator", release_namespace.name);
    assert!(allowed(&client, &user, &watched.name, "patch", "pipelines.metrics.dev", "metricspipelines").await);
    for (verb, group, resource) in [
        ("get", "", "secrets"),
        ("create", "", "pods"),
        ("delete", "", "namespaces"),
        ("update", "apiextensions.k8s.io", "customresourcedefinitions"),
        ("create", "rbac.authorization.k8s.io", "rolebindings"),
    ] {
        assert!(!allowed(&client, &user, &watched.name, verb, group, resource).await, "{verb} {resource} must be denied");
    }
    assert!(!allowed(&client, &user, &watched.name, "update", "coordination.k8s.io", "leases").await, "leases only in its own namespace");
    assert!(
        !allowed(&client, &user, &release_namespace.name, "list", "pipelines.metrics.dev", "metricspipelines").await,
        "pipelines only in the watched namespace"
    );

    chart::remove_cluster_scoped(&client, &applied).await.unwrap();
    watched.delete().await.unwrap();
    release_namespace.delete().await.unwrap();
}
