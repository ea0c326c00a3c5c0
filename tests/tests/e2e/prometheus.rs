//! A real Prometheus (Debian's) scrapes what the chart's ServiceMonitor and PodMonitor ask the
//! Prometheus Operator to scrape, and evaluates the chart's PrometheusRule: the operator installed
//! by the chart, two pipelines on the node, one fed valid events and one whose producer sends only
//! garbage. The garbage raises `MetricsPipelineDeadLettersRising` for that pipeline's aggregator,
//! and nothing fires for the healthy one or the operator.
//!
//! There is no Prometheus Operator here: the test turns the monitors into scrape configurations as
//! it does (the selectors and port names kept, `namespace` and `pod` labels, the monitors' own
//! relabelings). Debian builds Prometheus without Kubernetes service discovery, so the test
//! discovers the pods and endpoints itself and hands Prometheus the same `__meta_kubernetes_*`
//! labels in a file (file-based discovery); the relabeling that selects and labels the targets is
//! Prometheus's. The rules are the PrometheusRule's, with every `for` shortened to 20 s: promtool
//! tests the durations (`tests/alerts/`), this test what real scrapes make of the expressions.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use metrics_pipeline_api::pipeline::Phase;
use metrics_pipeline_api::{MetricsPipeline, MetricsPipelineStatus};
use metrics_pipeline_e2e::in_process::{example_named, wait_for_status_within};
use metrics_pipeline_e2e::{FIELD_MANAGER, TestNamespace, chart, kube_client, produce};
use metrics_pipeline_test_support::{free_port, http_get, wait_for};
use serde_json::{Value, json};

/// One of the chart's monitors, as the Prometheus Operator reads it.
struct Monitor<'a> {
    spec: &'a Value,
    pods: bool,
    job: String,
}

impl<'a> Monitor<'a> {
    fn of(monitor: &'a Value) -> Self {
        let job = format!("{}-{}", monitor["kind"].as_str().unwrap(), monitor["metadata"]["name"].as_str().unwrap());
        Self { spec: &monitor["spec"], pods: monitor["kind"] == "PodMonitor", job }
    }

    fn endpoint(&self) -> &'a Value {
        &self.spec[if self.pods { "podMetricsEndpoints" } else { "endpoints" }][0]
    }

    /// The namespaces it looks in: its namespaceSelector's, or the monitor's own.
    fn namespaces(&self, own: &str) -> Vec<String> {
        match self.spec["namespaceSelector"]["matchNames"].as_array() {
            Some(names) => names.iter().map(|name| name.as_str().unwrap().to_owned()).collect(),
            None => vec![own.to_owned()],
        }
    }

    /// The scrape configuration the Prometheus Operator makes of it, its targets in `targets`.
    fn scrape_config(&self, targets: &std::path::Path) -> Value {
        let meta = if self.pods { "__meta_kubernetes_pod_label_" } else { "__meta_kubernetes_service_label_" };
        let mut relabel: Vec<Value> = self.spec["selector"]["matchLabels"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(key, value)| json!({"source_labels": [format!("{meta}{}", sanitized(key))], "regex": value, "action": "keep"}))
            .collect();
        let port = if self.pods { "__meta_kubernetes_pod_container_port_name" } else { "__meta_kubernetes_endpoint_port_name" };
        let endpoint = self.endpoint();
        relabel.push(json!({"source_labels": [port], "regex": endpoint["port"], "action": "keep"}));
        relabel.push(json!({"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"}));
        relabel.push(json!({"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"}));
        for rule in endpoint["relabelings"].as_array().into_iter().flatten() {
            relabel.push(json!({"source_labels": rule["sourceLabels"], "target_label": rule["targetLabel"]}));
        }
        json!({
            "job_name": self.job,
            "metrics_path": endpoint["path"],
            "scrape_interval": endpoint["interval"],
            "file_sd_configs": [{"files": [targets], "refresh_interval": "2s"}],
            "relabel_configs": relabel,
        })
    }

    /// What Kubernetes service discovery finds for it now (role `pod` or `endpoints`), as
    /// file-based discovery's target groups with the same labels.
    async fn discover(&self, client: &Client, own_namespace: &str) -> Vec<Value> {
        let mut groups = Vec::new();
        for namespace in self.namespaces(own_namespace) {
            if self.pods {
                for pod in Api::<Pod>::namespaced(client.clone(), &namespace).list(&ListParams::default()).await.unwrap() {
                    let Some(ip) = pod.status.as_ref().and_then(|status| status.pod_ip.clone()) else { continue };
                    let ports = pod.spec.iter().flat_map(|spec| &spec.containers).flat_map(|container| container.ports.iter().flatten());
                    for port in ports {
                        let mut labels = labels_of("__meta_kubernetes_pod_label_", pod.labels());
                        labels.insert("__meta_kubernetes_namespace".into(), json!(namespace));
                        labels.insert("__meta_kubernetes_pod_name".into(), json!(pod.name_any()));
                        labels.insert("__meta_kubernetes_pod_container_port_name".into(), json!(port.name.clone().unwrap_or_default()));
                        groups.push(json!({"targets": [format!("{ip}:{}", port.container_port)], "labels": labels}));
                    }
                }
            } else {
                let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
                for endpoints in Api::<Endpoints>::namespaced(client.clone(), &namespace).list(&ListParams::default()).await.unwrap() {
                    let Some(service) = services.get_opt(&endpoints.name_any()).await.unwrap() else { continue };
                    for subset in endpoints.subsets.iter().flatten() {
                        for (address, port) in
                            subset.addresses.iter().flatten().flat_map(|a| subset.ports.iter().flatten().map(move |p| (a, p)))
                        {
                            let mut labels = labels_of("__meta_kubernetes_service_label_", service.labels());
                            labels.insert("__meta_kubernetes_namespace".into(), json!(namespace));
                            labels.insert("__meta_kubernetes_endpoint_port_name".into(), json!(port.name.clone().unwrap_or_default()));
                            let pod = address.target_ref.as_ref().and_then(|target| target.name.clone()).unwrap_or_default();
                            labels.insert("__meta_kubernetes_pod_name".into(), json!(pod));
                            groups.push(json!({"targets": [format!("{}:{}", address.ip, port.port)], "labels": labels}));
                        }
                    }
                }
            }
        }
        groups
    }
}

/// A label name as Prometheus's Kubernetes discovery writes it.
fn sanitized(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

fn labels_of(prefix: &str, labels: &std::collections::BTreeMap<String, String>) -> serde_json::Map<String, Value> {
    labels.iter().map(|(key, value)| (format!("{prefix}{}", sanitized(key)), json!(value))).collect()
}

/// The PrometheusRule's groups, every `for` shortened.
fn rules(prometheus_rule: &Value) -> Value {
    let mut spec = prometheus_rule["spec"].clone();
    for group in spec["groups"].as_array_mut().unwrap() {
        for rule in group["rules"].as_array_mut().unwrap() {
            rule["for"] = json!("20s");
        }
    }
    spec
}

/// The JSON answer of Prometheus's HTTP API at `path`.
async fn api(port: u16, path: &str) -> Result<Value, String> {
    let (status, body) = http_get(&format!("http://127.0.0.1:{port}{path}"));
    serde_json::from_str(&body).map_err(|error| format!("{status} {error}: {body}"))
}

/// The alerts Prometheus has firing: name and labels.
async fn firing(port: u16) -> Result<Vec<(String, Value)>, String> {
    let answer = api(port, "/api/v1/alerts").await?;
    Ok(answer["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|alert| alert["state"] == "firing")
        .map(|alert| (alert["labels"]["alertname"].as_str().unwrap_or_default().to_owned(), alert["labels"].clone()))
        .collect())
}

#[tokio::test]
async fn prometheus_scraping_as_the_chart_says_alerts_on_a_garbage_shard_and_on_nothing_healthy() {
    let client = kube_client().await.unwrap();
    let release_namespace = TestNamespace::create(&client, "prom-ops").await.unwrap();
    let watched = TestNamespace::create(&client, "prom-team").await.unwrap();
    let release = release_namespace.name.clone();
    let mut values = chart::local_values(&watched.name, 1);
    values["metrics"] = json!({
        "serviceMonitor": {"enabled": true, "interval": "2s"},
        "podMonitor": {"enabled": true, "interval": "2s"},
        "prometheusRule": {"enabled": true},
    });
    let rendered = chart::render(&release_namespace.name, &release, &values).unwrap();
    let documents: Vec<Value> = rendered.split("\n---\n").map(|document| serde_yaml::from_str(document).unwrap()).collect();
    let (monitoring, installed): (Vec<Value>, Vec<Value>) =
        documents.into_iter().partition(|document| document["apiVersion"].as_str().unwrap().starts_with("monitoring.coreos.com/"));
    let manifests: Vec<String> = installed.iter().map(|document| serde_yaml::to_string(document).unwrap()).collect();
    let applied = chart::apply(&client, &manifests.join("---\n")).await.unwrap();

    // Prometheus, configured as the Prometheus Operator would from the chart's monitors and rules.
    let work = std::env::temp_dir().join(format!("prometheus-{}", release_namespace.name));
    std::fs::create_dir_all(&work).unwrap();
    let of_kind = |kind: &str| monitoring.iter().filter(|m| m["kind"] == kind).cloned().collect::<Vec<_>>();
    let monitor_documents = [of_kind("ServiceMonitor"), of_kind("PodMonitor")].concat();
    let monitors: Vec<Monitor> = monitor_documents.iter().map(Monitor::of).collect();
    assert_eq!(monitors.len(), 2, "a ServiceMonitor for the operator and a PodMonitor for the aggregators");
    let targets = |monitor: &Monitor| work.join(format!("{}.json", monitor.job));
    for monitor in &monitors {
        std::fs::write(targets(monitor), "[]").unwrap();
    }
    let scrapes: Vec<Value> = monitors.iter().map(|monitor| monitor.scrape_config(&targets(monitor))).collect();
    let rule_file = work.join("rules.yaml");
    std::fs::write(&rule_file, serde_yaml::to_string(&rules(&of_kind("PrometheusRule")[0])).unwrap()).unwrap();
    let config = json!({"global": {"evaluation_interval": "2s"}, "rule_files": [rule_file], "scrape_configs": scrapes});
    let config_file = work.join("prometheus.yaml");
    std::fs::write(&config_file, serde_yaml::to_string(&config).unwrap()).unwrap();
    let port = free_port().unwrap();
    let mut server = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config_file.display()))
        .arg(format!("--storage.tsdb.path={}", work.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(work.join("prometheus.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("Debian's prometheus (scripts/dev-env installs it)");

    // Two pipelines: one fed valid events, one whose producer sends only garbage.
    let pipelines: Api<MetricsPipeline> = Api::namespaced(client.clone(), &watched.name);
    for name in ["healthy", "broken"] {
        pipelines.patch(name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&example_named("pipeline.yaml", name))).await.unwrap();
    }
    let mut inputs = Vec::new();
    for name in ["healthy", "broken"] {
        let ready = |status: &MetricsPipelineStatus| status.phase == Some(Phase::Ready);
        let status = wait_for_status_within(&pipelines, name, &format!("{name} Ready"), Duration::from_secs(180), ready).await;
        inputs.push(status.input_stream.unwrap().name);
    }
    let producers = (produce::valid_events(inputs[0].clone()), produce::garbage(inputs[1].clone(), Duration::from_millis(500)));
    for monitor in &monitors {
        let found = monitor.discover(&client, &release_namespace.name).await;
        std::fs::write(targets(monitor), serde_json::to_vec(&found).unwrap()).unwrap();
    }

    // Every target is scraped: the operator and both aggregators.
    wait_for("three targets up", Duration::from_secs(120), async || {
        let answer = api(port, "/api/v1/targets").await?;
        let targets = answer["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
        let up: Vec<&Value> = targets.iter().filter(|target| target["health"] == "up").collect();
        (up.len() == 3).then_some(()).ok_or_else(|| format!("{targets:#?}"))
    })
    .await
    .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &watched.name);
    let broken_pod = pods.list(&ListParams::default().labels("app.kubernetes.io/instance=broken")).await.unwrap().items[0].name_any();
    let alerts = wait_for("MetricsPipelineDeadLettersRising for the broken pipeline", Duration::from_secs(180), async || {
        let alerts = firing(port).await?;
        alerts
            .iter()
            .any(|(name, labels)| name == "MetricsPipelineDeadLettersRising" && labels["pod"] == broken_pod.as_str())
            .then(|| alerts.clone())
            .ok_or_else(|| format!("{alerts:?}"))
    })
    .await
    .unwrap();
    let (_, labels) = alerts.iter().find(|(name, _)| name == "MetricsPipelineDeadLettersRising").unwrap();
    assert_eq!((labels["namespace"].as_str(), labels["reason"].as_str()), (Some(watched.name.as_str()), Some("not_json")), "{labels}");

    // Nothing else fires, now or a while later: not for the healthy pipeline, not for the operator.
    for _ in 0..2 {
        let alerts = firing(port).await.unwrap();
        let others: Vec<_> = alerts
            .iter()
            .filter(|(name, labels)| !(name == "MetricsPipelineDeadLettersRising" && labels["pod"] == broken_pod.as_str()))
            .collect();
        assert!(others.is_empty(), "only the garbage alerts: {others:?}");
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    producers.0.abort();
    producers.1.abort();
    let _ = server.kill().await;

    for name in ["healthy", "broken"] {
        pipelines.delete(name, &Default::default()).await.unwrap();
    }
    wait_for("both pipelines deleted", Duration::from_secs(240), async || {
        let left = pipelines.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items.len();
        (left == 0).then_some(()).ok_or_else(|| format!("{left} left"))
    })
    .await
    .unwrap();
    chart::remove_cluster_scoped(&client, &applied).await.unwrap();
    watched.delete().await.unwrap();
    release_namespace.delete().await.unwrap();
    let _ = std::fs::remove_dir_all(&work);
}
