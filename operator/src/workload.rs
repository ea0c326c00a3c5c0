//! The aggregator workload in the pipeline's namespace: a ServiceAccount and a Deployment,
//! built by a pure `desired` and applied with server-side apply. Both carry a controller owner
//! reference, so Kubernetes' garbage collector removes them with the pipeline, and the
//! ownership annotation, so an object of the same name made by someone else is never taken over.
//!
//! The configuration is the container's environment: any spec change that matters to the
//! aggregator changes the pod template, and the Deployment rolls.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvFromSource, EnvVar, HTTPGetAction, Pod, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretEnvSource, SecurityContext, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use metrics_pipeline_api::MetricsPipeline;
use metrics_pipeline_api::config::PipelineConfig;
use metrics_pipeline_api::naming::OWNER_TAG;
use metrics_pipeline_api::pipeline::{AggregatorStatus, Compression, DeliveryWriter, LogLevel};
use metrics_pipeline_api::validation::{affinity, toleration};
use metrics_pipeline_model::stable_hash::{fnv1a64, fnv1a64_continue};

use crate::error::Error;
use crate::managed::{FIELD_MANAGER, MANAGED_BY_KEY, Outcome, check_owner, holder};

/// The aggregator's container port for /healthz, /readyz and /metrics.
pub const METRICS_PORT: i32 = 8080;
/// The one container of the aggregator's pod.
pub const CONTAINER: &str = "aggregator";
/// Labels selecting the aggregator's pods: the component, and the pipeline it serves.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
pub const AGGREGATOR_APP: &str = "metrics-aggregator";

/// The label selector of every pipeline's aggregator pods and Deployments.
pub fn aggregator_selector() -> String {
    format!("{NAME_LABEL}={AGGREGATOR_APP}")
}
/// The reason a kubelet gives for a container killed at its memory limit.
const OOM_KILLED: &str = "OOMKilled";
/// Long enough for the aggregator's shutdown: fire nothing early, flush, checkpoint.
const TERMINATION_GRACE_SECONDS: i64 = 60;
/// The distroless `nonroot` user the image runs as.
const NON_ROOT_UID: i64 = 65532;
/// Pod-template annotation carrying a hash of the ServiceAccount's annotations. IRSA's webhook
/// reads them only when a pod is created, so a corrected role ARN must roll the pods.
pub const SERVICE_ACCOUNT_ANNOTATIONS_HASH: &str = "metrics.dev/service-account-annotations";

/// What the operator decides for every pipeline's aggregator, from its own flags.
#[derive(Clone, Debug)]
pub struct WorkloadSettings {
    /// Image when the spec names none: the aggregator of the operator's own version.
    pub default_image: String,
    /// An AWS endpoint override passed on to the aggregator (an emulator, or a VPC endpoint).
    pub aws_endpoint_url: Option<String>,
    /// A Secret in the pipeline's namespace with static AWS credentials, for clusters without
    /// IRSA or pod identity (an emulator in kind); its keys become the container's environment.
    pub credentials_secret: Option<String>,
}

impl Default for WorkloadSettings {
    fn default() -> Self {
        Self {
            default_image: format!("ghcr.io/metrics-pipeline/metrics-aggregator:{}", env!("CARGO_PKG_VERSION")),
            aws_endpoint_url: None,
            credentials_secret: None,
        }
    }
}

/// The ServiceAccount and Deployment a pipeline should have.
pub fn desired(pipeline: &MetricsPipeline, config: &PipelineConfig, settings: &WorkloadSettings) -> (ServiceAccount, Deployment) {
    let selector = BTreeMap::from([(NAME_LABEL.to_owned(), AGGREGATOR_APP.to_owned()), (INSTANCE_LABEL.to_owned(), pipeline.name_any())]);
    let mut labels = selector.clone();
    labels.insert(MANAGED_BY_KEY.to_owned(), FIELD_MANAGER.to_owned());
    // Owned by the pipeline (garbage-collected with it), and marked with the ownership annotation
    // (an object of the same name made by someone else is never taken over).
    let metadata = |annotations: BTreeMap<String, String>| ObjectMeta {
        name: Some(config.names.aggregator.clone()),
        namespace: pipeline.namespace(),
        labels: Some(labels.clone()),
        annotations: Some(annotations),
        owner_references: pipeline.controller_owner_ref(&()).map(|owner| vec![owner]),
        ..ObjectMeta::default()
    };
    let ownership = BTreeMap::from([(OWNER_TAG.to_owned(), config.names.owner.clone())]);
    let mut service_account_annotations = config.aggregator.service_account_annotations.clone();
    service_account_annotations.extend(ownership.clone());
    let service_account = ServiceAccount { metadata: metadata(service_account_annotations), ..ServiceAccount::default() };
    let deployment = Deployment {
        metadata: metadata(ownership),
        spec: Some(DeploymentSpec {
            replicas: Some(config.aggregator.replicas),
            // Two aggregators would read the same shards and emit every window twice: the old
            // pod stops (and checkpoints) before the new one starts.
            strategy: Some(DeploymentStrategy { type_: Some("Recreate".into()), ..DeploymentStrategy::default() }),
            selector: LabelSelector { match_labels: Some(selector), ..LabelSelector::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    annotations: Some(pod_annotations(config)),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod(pipeline, config, settings)),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    (service_account, deployment)
}

/// The user's pod annotations, and the hash of the ServiceAccount's (a changed IRSA role rolls
/// the pods, which read their token once).
fn pod_annotations(config: &PipelineConfig) -> BTreeMap<String, String> {
    let mut annotations = config.aggregator.pod_annotations.clone();
    annotations.insert(SERVICE_ACCOUNT_ANNOTATIONS_HASH.to_owned(), annotations_hash(&config.aggregator.service_account_annotations));
    annotations
}

/// A stable hash of annotations (sorted by key; each key and value length-prefixed, so no two
/// different maps share a text).
fn annotations_hash(annotations: &BTreeMap<String, String>) -> String {
    let hash = annotations.iter().fold(fnv1a64(b""), |hash, (key, value)| {
        [key, value].iter().fold(hash, |hash, text| fnv1a64_continue(fnv1a64_continue(hash, &text.len().to_le_bytes()), text.as_bytes()))
    });
    format!("{hash:016x}")
}

/// The aggregator's pod: non-root on a read-only filesystem, no Kubernetes token, probes.
fn pod(pipeline: &MetricsPipeline, config: &PipelineConfig, settings: &WorkloadSettings) -> PodSpec {
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction { path: Some(path.into()), port: IntOrString::String("metrics".into()), ..HTTPGetAction::default() }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        timeout_seconds: Some(2),
        ..Probe::default()
    };
    let container = Container {
        name: CONTAINER.into(),
        image: Some(config.aggregator.image.clone().unwrap_or_else(|| settings.default_image.clone())),
        command: Some(vec!["metrics-aggregator".into()]),
        args: Some(vec!["run".into()]),
        env: Some(aggregator_env(pipeline, config, settings)),
        env_from: settings.credentials_secret.as_ref().map(|secret| {
            vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource { name: secret.clone(), ..SecretEnvSource::default() }),
                ..EnvFromSource::default()
            }]
        }),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: METRICS_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(probe("/readyz", 5)),
        liveness_probe: Some(probe("/healthz", 10)),
        resources: Some(resources(config)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    PodSpec {
        service_account_name: Some(config.names.aggregator.clone()),
        // The aggregator never calls the Kubernetes API; IRSA mounts its own token.
        automount_service_account_token: Some(false),
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(NON_ROOT_UID),
            run_as_group: Some(NON_ROOT_UID),
            // Lets the non-root user read the projected IRSA token.
            fs_group: Some(NON_ROOT_UID),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() }),
            ..PodSecurityContext::default()
        }),
        containers: vec![container],
        // Where it may run and what it may pull, as the spec says (validated: the affinity is one).
        node_selector: Some(config.aggregator.node_selector.clone()).filter(|selector| !selector.is_empty()),
        tolerations: Some(config.aggregator.tolerations.iter().filter_map(|written| toleration(written).ok()).collect::<Vec<_>>())
            .filter(|tolerations| !tolerations.is_empty()),
        affinity: config.aggregator.affinity.as_ref().and_then(|written| affinity(written).ok()),
        priority_class_name: config.aggregator.priority_class_name.clone(),
        image_pull_secrets: Some(config.aggregator.image_pull_secrets.clone()).filter(|secrets| !secrets.is_empty()),
        ..PodSpec::default()
    }
}

/// The aggregator's configuration, as its flags' environment variables: a change of any of them
/// changes the pod template, so the Deployment rolls.
fn aggregator_env(pipeline: &MetricsPipeline, config: &PipelineConfig, settings: &WorkloadSettings) -> Vec<EnvVar> {
    // As the user wrote them (`1m`, not a number of milliseconds), for `kubectl describe`.
    let aggregation = &pipeline.spec.aggregation;
    let log_level = match config.aggregator.log_level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    };
    let mut env = vec![
        ("AWS_REGION", config.region.clone()),
        ("AGGREGATOR_PIPELINE", config.names.owner.clone()),
        ("AGGREGATOR_INPUT_STREAM", config.names.input_stream.clone()),
        ("AGGREGATOR_OUTPUT_STREAM", config.names.output_stream.clone()),
        ("AGGREGATOR_BUCKET", config.names.bucket.clone()),
        ("AGGREGATOR_WINDOW", aggregation.window.clone()),
        ("AGGREGATOR_OUT_OF_ORDERNESS", aggregation.out_of_orderness.clone()),
        ("AGGREGATOR_ALLOWED_LATENESS", aggregation.allowed_lateness.clone()),
        ("AGGREGATOR_IDLE_TIMEOUT", aggregation.idle_timeout.clone()),
        ("AGGREGATOR_MAX_FUTURE_SKEW", aggregation.max_future_skew.clone()),
        ("AGGREGATOR_LOG_LEVEL", log_level.to_owned()),
        ("AGGREGATOR_LOG_FORMAT", "json".to_owned()),
        ("AGGREGATOR_LISTEN", format!("0.0.0.0:{METRICS_PORT}")),
        // glibc gives each thread reading GetRecords answers an arena of its own, which it keeps:
        // a 20-shard catch-up peaked at 178 MiB, at 127 MiB with one arena (BENCHMARKS.md); two
        // let two threads allocate without waiting on each other.
        ("MALLOC_ARENA_MAX", "2".to_owned()),
    ];
    if let Some(endpoint) = &settings.aws_endpoint_url {
        env.push(("AWS_ENDPOINT_URL", endpoint.clone()));
    }
    if let Some(role) = &config.aws_role {
        env.push(("AGGREGATOR_ASSUME_ROLE_ARN", role.clone()));
    }
    if let Some(from) = config.read_input_from {
        env.push(("AGGREGATOR_READ_INPUT_FROM", from.to_string()));
    }
    if config.delivery.writer == DeliveryWriter::Aggregator {
        let codec = match config.delivery.compression {
            Compression::Snappy => "snappy",
            Compression::Gzip => "gzip",
            Compression::Uncompressed => "uncompressed",
        };
        env.push(("AGGREGATOR_PARQUET", codec.to_owned()));
    }
    env.into_iter().map(|(name, value)| EnvVar { name: name.into(), value: Some(value), ..EnvVar::default() }).collect()
}

fn resources(config: &PipelineConfig) -> ResourceRequirements {
    config.aggregator.resources.clone().unwrap_or_else(default_resources)
}

/// From the whole-program benchmark (BENCHMARKS.md, issue 15): about 50 MiB resident with a few
/// hundred live keys, 71 MiB with 10,000, up to 175 MiB catching up 20 shards, and about 1 KiB a
/// live key beyond that; so the limit holds some 400,000 live keys. One core aggregates about
/// 0.4 M events a second, far above what 0.1 of one is asked for by a few shards' steady flow.
/// The spec overrides it.
fn default_resources() -> ResourceRequirements {
    let quantities =
        |pairs: &[(&str, &str)]| pairs.iter().map(|(name, quantity)| (name.to_string(), Quantity(quantity.to_string()))).collect();
    ResourceRequirements {
        requests: Some(quantities(&[("cpu", "100m"), ("memory", "128Mi")])),
        limits: Some(quantities(&[("memory", "512Mi")])),
        ..ResourceRequirements::default()
    }
}

/// How many aggregators run: the spec's count, or none while `paused` — while nothing reads the
/// output stream yet, anything written to it would be lost. A stopped aggregator checkpoints,
/// and its input stream keeps the events, so it resumes where it stopped.
pub fn replicas(config: &PipelineConfig, paused: bool) -> i32 {
    if paused { 0 } else { config.aggregator.replicas }
}

/// Applies the workload (scaled to none while `paused`) and reports how far the Deployment's
/// rollout is.
pub async fn ensure(
    client: &Client,
    pipeline: &MetricsPipeline,
    config: &PipelineConfig,
    settings: &WorkloadSettings,
    paused: bool,
) -> Result<(AggregatorStatus, Outcome), Error> {
    let namespace = pipeline.namespace().unwrap_or_default();
    let (service_account, mut deployment) = desired(pipeline, config, settings);
    let replicas = replicas(config, paused);
    deployment.spec.as_mut().expect("desired sets a spec").replicas = Some(replicas);
    let owner = &config.names.owner;
    let service_accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let mut outcome = Outcome::default();

    let existing = service_accounts.get_opt(&service_account.name_any()).await?;
    check_kubernetes_owner("ServiceAccount", existing.as_ref().map(|sa| &sa.metadata), owner)?;
    let applied = service_accounts.patch(&service_account.name_any(), &apply, &Patch::Apply(&service_account)).await?;
    if existing.is_none() {
        outcome.changed(format!("created ServiceAccount {}", applied.name_any()));
    }

    let existing = deployments.get_opt(&deployment.name_any()).await?;
    check_kubernetes_owner("Deployment", existing.as_ref().map(|d| &d.metadata), owner)?;
    let applied = deployments.patch(&deployment.name_any(), &apply, &Patch::Apply(&deployment)).await?;
    match &existing {
        None => outcome.changed(format!("created Deployment {}", applied.name_any())),
        Some(before) if before.metadata.generation != applied.metadata.generation => {
            outcome.changed(format!("updated Deployment {}", applied.name_any()));
        }
        Some(_) => {}
    }
    let ready_replicas = applied.status.as_ref().and_then(|status| status.ready_replicas).unwrap_or(0);
    outcome.pending = rollout_pending(replicas, applied.metadata.generation, applied.status.as_ref());
    if outcome.pending.is_some() {
        // A rollout that cannot finish because the container keeps exceeding its memory limit
        // waits for the user, not for time: say so, and which field to change.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let selector = format!("{NAME_LABEL}={AGGREGATOR_APP},{INSTANCE_LABEL}={}", pipeline.name_any());
        let pods = pods.list(&ListParams::default().labels(&selector)).await?.items;
        // A pod on its way out (the old limit's, during a Recreate rollout) no longer counts.
        let current: Vec<&Pod> = pods.iter().filter(|pod| pod.metadata.deletion_timestamp.is_none()).collect();
        if current.iter().any(|pod| killed_for_memory(pod)) {
            let limit = resources(config).limits.and_then(|limits| limits.get("memory").map(|q| q.0.clone()));
            return Err(Error::AggregatorOutOfMemory { limit: limit.unwrap_or_else(|| "none".into()) });
        }
        if let (Some(pending), Some(trouble)) = (&mut outcome.pending, current.iter().find_map(|pod| trouble(pod))) {
            pending.push_str("; ");
            pending.push_str(&trouble);
        }
        // The Deployment controller gave up on the rollout (`progressDeadlineSeconds`, 600 by
        // default): so does the operator, instead of looking again and again.
        if let Some(deadline) = past_progress_deadline(&applied) {
            let why = outcome.pending.take().unwrap_or_default();
            return Err(Error::Stalled { waited: format!("the Deployment's progress deadline of {deadline} s"), why });
        }
    }
    Ok((AggregatorStatus { deployment: applied.name_any(), ready_replicas }, outcome))
}

/// Whether the pod's aggregator is not ready because the kubelet killed it at its memory limit,
/// now or the last time it ended (while it waits to be restarted).
fn killed_for_memory(pod: &Pod) -> bool {
    let statuses = pod.status.iter().flat_map(|status| status.container_statuses.iter().flatten());
    statuses.filter(|status| status.name == CONTAINER && !status.ready).any(|status| {
        let mut terminated = [&status.state, &status.last_state].into_iter().flatten().filter_map(|state| state.terminated.as_ref());
        terminated.any(|terminated| terminated.reason.as_deref() == Some(OOM_KILLED))
    })
}

/// What keeps a pod from running, in the kubelet's or the scheduler's words: a container
/// waiting for a reason other than being started (`ImagePullBackOff`, `CrashLoopBackOff`,
/// `CreateContainerConfigError`), or a pod no node takes.
fn trouble(pod: &Pod) -> Option<String> {
    let name = pod.name_any();
    let status = pod.status.as_ref()?;
    let waiting = status.container_statuses.iter().flatten().find_map(|container| {
        let waiting = container.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref().filter(|reason| !["ContainerCreating", "PodInitializing"].contains(reason))?;
        let message = waiting.message.as_deref().map(|message| format!(": {message}")).unwrap_or_default();
        Some(format!("pod {name}: {reason}{message}"))
    });
    let unscheduled = || {
        let condition = status.conditions.iter().flatten().find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
        let message = condition.message.as_deref().unwrap_or_default();
        Some(format!("pod {name} is not scheduled: {}: {message}", condition.reason.as_deref().unwrap_or("Unschedulable")))
    };
    waiting.or_else(unscheduled)
}

/// The progress deadline in seconds, when the Deployment reports the rollout of its current spec
/// past it (a condition of the previous spec's rollout says nothing of the new one's).
fn past_progress_deadline(deployment: &Deployment) -> Option<i32> {
    let status = deployment.status.as_ref()?;
    if status.observed_generation != deployment.metadata.generation {
        return None;
    }
    let conditions = status.conditions.as_ref()?;
    conditions
        .iter()
        .find(|c| c.type_ == "Progressing" && c.status == "False" && c.reason.as_deref() == Some("ProgressDeadlineExceeded"))?;
    Some(deployment.spec.as_ref().and_then(|spec| spec.progress_deadline_seconds).unwrap_or(600))
}

/// Why the Deployment is not yet running the current spec, or `None` when it is.
pub fn rollout_pending(replicas: i32, generation: Option<i64>, status: Option<&DeploymentStatus>) -> Option<String> {
    let observed = status.and_then(|status| status.observed_generation);
    if observed < generation {
        return Some("waiting for the Deployment controller to see the new aggregator spec".into());
    }
    let count = |field: fn(&DeploymentStatus) -> Option<i32>| status.and_then(field).unwrap_or(0);
    let (updated, ready, total) = (count(|s| s.updated_replicas), count(|s| s.ready_replicas), count(|s| s.replicas));
    if updated < replicas || ready < replicas || total > replicas {
        return Some(format!("aggregator rollout: {ready}/{replicas} ready, {updated} updated, {total} running"));
    }
    None
}

/// Objects under our names must carry our ownership annotation, as AWS resources carry our tag.
fn check_kubernetes_owner(kind: &'static str, metadata: Option<&ObjectMeta>, owner: &str) -> Result<(), Error> {
    let Some(metadata) = metadata else { return Ok(()) };
    check_owner(kind, &metadata.name.clone().unwrap_or_default(), owner, annotations(metadata))
}

fn annotations(metadata: &ObjectMeta) -> impl Iterator<Item = (&str, &str)> {
    metadata.annotations.iter().flatten().map(|(key, value)| (key.as_str(), value.as_str()))
}

/// Stops the aggregator before the streams and the bucket it uses go away: deletes the
/// Deployment in the foreground (it stays until its pods have stopped and checkpointed) and the
/// ServiceAccount. Returns whether the Deployment is gone.
pub async fn delete(client: &Client, namespace: &str, name: &str, owner: &str) -> Result<bool, Error> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let service_accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let deployment = deployments.get_opt(name).await?;
    let ours = deployment.as_ref().filter(|d| holder(owner, annotations(&d.metadata)).is_none());
    if let Some(deployment) = ours {
        if deployment.metadata.deletion_timestamp.is_none() {
            deployments.delete(name, &DeleteParams::foreground()).await?;
        }
        return Ok(false);
    }
    if let Some(service_account) = service_accounts.get_opt(name).await?
        && holder(owner, annotations(&service_account.metadata)).is_none()
    {
        service_accounts.delete(name, &DeleteParams::default()).await?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use metrics_pipeline_api::config::AwsTarget;
    use metrics_pipeline_api::validation::validate;
    use serde_json::json;

    use super::*;

    fn pipeline(spec: serde_json::Value) -> (MetricsPipeline, PipelineConfig) {
        let mut pipeline: MetricsPipeline = serde_json::from_value(json!({
            "apiVersion": "pipelines.metrics.dev/v1alpha1", "kind": "MetricsPipeline",
            "metadata": {"name": "shop", "namespace": "team-a", "uid": "1b4d2c7e-0000-4000-8000-000000000000"},
            "spec": spec,
        }))
        .unwrap();
        pipeline.metadata.generation = Some(1);
        let target = AwsTarget { account_id: "123456789012".into(), default_region: Some("eu-west-1".into()) };
        let config = validate(&pipeline, &target).unwrap();
        (pipeline, config)
    }

    fn env_of(deployment: &Deployment) -> BTreeMap<String, String> {
        let container = &deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
        container.env.iter().flatten().map(|var| (var.name.clone(), var.value.clone().unwrap_or_default())).collect()
    }

    #[test]
    fn the_deployment_runs_the_aggregator_on_the_pipelines_streams_and_bucket() {
        let (pipeline, config) = pipeline(json!({"aggregation": {"window": "5m", "idleTimeout": "1m", "maxFutureSkew": "2m"}}));
        let (_, deployment) = desired(&pipeline, &config, &WorkloadSettings::default());
        let env = env_of(&deployment);
        assert_eq!(env["AGGREGATOR_MAX_FUTURE_SKEW"], "2m");
        assert_eq!(env["AGGREGATOR_INPUT_STREAM"], config.names.input_stream);
        assert_eq!(env["AGGREGATOR_OUTPUT_STREAM"], config.names.output_stream);
        assert_eq!(env["AGGREGATOR_BUCKET"], config.names.bucket);
        assert_eq!(env["AGGREGATOR_PIPELINE"], config.names.owner, "named in every log line");
        assert_eq!((env["AGGREGATOR_WINDOW"].as_str(), env["AGGREGATOR_IDLE_TIMEOUT"].as_str()), ("5m", "1m"));
        assert_eq!(env["AWS_REGION"], "eu-west-1");
        assert_eq!(env["MALLOC_ARENA_MAX"], "2", "glibc's arenas bounded");
        assert!(!env.contains_key("AWS_ENDPOINT_URL"), "no endpoint override unless the operator has one");
        assert!(!env.contains_key("AGGREGATOR_PARQUET"), "Firehose writes the files by default");
        let spec = deployment.spec.as_ref().unwrap();
        assert_eq!(spec.strategy.as_ref().unwrap().type_.as_deref(), Some("Recreate"), "two consumers must never overlap");
        let container = &spec.template.spec.as_ref().unwrap().containers[0];
        assert_eq!(container.image.as_deref(), Some(WorkloadSettings::default().default_image.as_str()));
        assert_eq!(container.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/readyz"));
        assert_eq!(container.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0, "512Mi");
    }

    #[test]
    fn the_pod_runs_as_non_root_on_a_read_only_filesystem_without_a_kubernetes_token() {
        let (pipeline, config) = pipeline(json!({}));
        let (_, deployment) = desired(&pipeline, &config, &WorkloadSettings::default());
        let pod = deployment.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.security_context.as_ref().unwrap().run_as_non_root, Some(true));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let container = pod.containers[0].security_context.clone().unwrap();
        assert_eq!(container.read_only_root_filesystem, Some(true));
        assert_eq!(container.allow_privilege_escalation, Some(false));
        assert_eq!(container.capabilities.unwrap().drop, Some(vec!["ALL".to_owned()]));
    }

    #[test]
    fn both_objects_are_owned_by_the_pipeline_and_the_service_account_carries_the_irsa_role() {
        let role = "arn:aws:iam::123456789012:role/metrics-aggregator";
        let (pipeline, config) = pipeline(json!({"aggregator": {"serviceAccountAnnotations": {"eks.amazonaws.com/role-arn": role}}}));
        let (service_account, deployment) = desired(&pipeline, &config, &WorkloadSettings::default());
        for metadata in [&service_account.metadata, &deployment.metadata] {
            let owner = &metadata.owner_references.as_ref().unwrap()[0];
            assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("MetricsPipeline", "shop", Some(true)));
            assert_eq!(metadata.annotations.as_ref().unwrap()[OWNER_TAG], "team-a/shop");
            assert_eq!(metadata.name.as_deref(), Some("shop-aggregator"));
        }
        assert_eq!(service_account.metadata.annotations.unwrap()["eks.amazonaws.com/role-arn"], role);
        let pod = deployment.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("shop-aggregator"));
    }

    #[test]
    fn a_spec_change_that_matters_changes_the_pod_template_and_one_that_does_not_leaves_it() {
        let settings = WorkloadSettings { aws_endpoint_url: Some("http://127.0.0.1:5000".into()), ..WorkloadSettings::default() };
        let deployment = |spec| {
            let (pipeline, config) = pipeline(spec);
            desired(&pipeline, &config, &settings).1
        };
        let template = |spec| deployment(spec).spec.unwrap().template;
        let before = template(json!({}));
        assert_ne!(before, template(json!({"aggregation": {"allowedLateness": "5m"}})), "a new lateness must roll the aggregator");
        assert_eq!(before, template(json!({"delivery": {"bufferIntervalSeconds": 120}})), "Firehose settings do not concern it");
        assert_eq!(env_of(&deployment(json!({})))["AWS_ENDPOINT_URL"], "http://127.0.0.1:5000");
    }

    #[test]
    fn a_changed_service_account_annotation_rolls_the_pods_and_an_unchanged_one_does_not() {
        let template = |spec| {
            let (pipeline, config) = pipeline(spec);
            desired(&pipeline, &config, &WorkloadSettings::default()).1.spec.unwrap().template
        };
        let annotated = |arn: &str| json!({"aggregator": {"serviceAccountAnnotations": {"eks.amazonaws.com/role-arn": arn}}});
        let wrong = template(annotated("arn:aws:iam::123456789012:role/wrong"));
        assert_eq!(wrong, template(annotated("arn:aws:iam::123456789012:role/wrong")), "the same annotations keep the pods");
        assert_ne!(wrong, template(annotated("arn:aws:iam::123456789012:role/right")), "a corrected role ARN must roll the pods");
        assert_ne!(template(json!({})), wrong, "adding the annotation rolls too");
        let split = |a: &str, b: &str| template(json!({"aggregator": {"serviceAccountAnnotations": {a: b}}}));
        assert_ne!(split("ab", "c"), split("a", "bc"), "keys and values do not run into each other");
    }

    #[test]
    fn with_writer_aggregator_the_aggregator_writes_parquet_with_the_specs_codec() {
        let (pipeline, config) = pipeline(json!({"delivery": {"format": "Parquet", "writer": "Aggregator", "compression": "Gzip"}}));
        let (_, deployment) = desired(&pipeline, &config, &WorkloadSettings::default());
        assert_eq!(env_of(&deployment)["AGGREGATOR_PARQUET"], "gzip");
    }

    #[test]
    fn the_aggregators_pod_is_placed_and_pulled_as_the_spec_says() {
        let (pipeline, config) = pipeline(json!({"aggregator": {
            "nodeSelector": {"pool": "streaming"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "streaming", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
            "priorityClassName": "streaming-critical",
            "imagePullSecrets": [{"name": "registry-keys"}],
            "podAnnotations": {"sidecar.istio.io/inject": "false"},
        }}));
        let (_, deployment) = desired(&pipeline, &config, &WorkloadSettings::default());
        let template = deployment.spec.unwrap().template;
        let pod = template.spec.unwrap();
        assert_eq!(pod.node_selector.unwrap()["pool"], "streaming");
        assert_eq!(pod.tolerations.unwrap()[0].key.as_deref(), Some("dedicated"));
        let terms =
            pod.affinity.unwrap().node_affinity.unwrap().required_during_scheduling_ignored_during_execution.unwrap().node_selector_terms;
        assert_eq!(terms[0].match_expressions.as_ref().unwrap()[0].key, "zone");
        assert_eq!(pod.priority_class_name.as_deref(), Some("streaming-critical"));
        assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "registry-keys");
        let annotations = template.metadata.unwrap().annotations.unwrap();
        assert_eq!(annotations["sidecar.istio.io/inject"], "false");
        assert!(annotations.contains_key(SERVICE_ACCOUNT_ANNOTATIONS_HASH), "the IRSA hash stays beside the user's");
    }

    #[test]
    fn static_credentials_come_from_the_named_secret_only_when_one_is_configured() {
        let (pipeline, config) = pipeline(json!({}));
        let env_from = |settings: &WorkloadSettings| {
            desired(&pipeline, &config, settings).1.spec.unwrap().template.spec.unwrap().containers[0].env_from.clone()
        };
        assert_eq!(env_from(&WorkloadSettings::default()), None, "IRSA needs no secret");
        let settings = WorkloadSettings { credentials_secret: Some("aws-credentials".into()), ..WorkloadSettings::default() };
        let from = env_from(&settings).unwrap();
        assert_eq!(from[0].secret_ref.as_ref().map(|s| s.name.as_str()), Some("aws-credentials"));
    }

    #[test]
    fn an_aggregator_not_ready_after_an_oom_kill_is_told_apart_from_one_still_starting() {
        let pod = |ready: bool, state: serde_json::Value, last_state: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"status": {"containerStatuses": [{
                "name": CONTAINER, "ready": ready, "restartCount": 1, "image": "i", "imageID": "",
                "state": state, "lastState": last_state
            }]}}))
            .unwrap()
        };
        let oom = json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}});
        let waiting = json!({"waiting": {"reason": "CrashLoopBackOff"}});
        let running = json!({"running": {}});
        assert!(killed_for_memory(&pod(false, waiting.clone(), oom.clone())), "restarting after an OOM kill");
        assert!(killed_for_memory(&pod(false, oom.clone(), json!({}))), "just killed");
        assert!(!killed_for_memory(&pod(true, running.clone(), oom)), "killed once, ready again");
        let error = json!({"terminated": {"exitCode": 1, "reason": "Error"}});
        assert!(!killed_for_memory(&pod(false, waiting, error)), "another crash");
        assert!(!killed_for_memory(&pod(false, running, json!({}))), "still starting");
        let message = Error::AggregatorOutOfMemory { limit: "16Mi".into() }.to_string();
        assert!(message.contains("16Mi") && message.contains("spec.aggregator.resources.limits.memory"), "{message}");
    }

    #[test]
    fn a_pod_that_cannot_run_says_why_in_the_kubelets_or_the_schedulers_words() {
        let pod = |status: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "agg-1"}, "status": status})).unwrap()
        };
        let container = |state: serde_json::Value| {
            json!({"containerStatuses": [{
                "name": CONTAINER, "ready": false, "restartCount": 0, "image": "i", "imageID": "", "state": state
            }]})
        };
        let pulling = pod(container(json!({"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x:1\""}})));
        assert_eq!(trouble(&pulling).as_deref(), Some("pod agg-1: ImagePullBackOff: Back-off pulling image \"x:1\""));
        assert_eq!(trouble(&pod(container(json!({"waiting": {"reason": "ContainerCreating"}})))), None, "still starting");
        assert_eq!(trouble(&pod(container(json!({"running": {}})))), None);
        let unscheduled = pod(json!({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient memory."}]}));
        assert_eq!(
            trouble(&unscheduled).as_deref(),
            Some("pod agg-1 is not scheduled: Unschedulable: 0/1 nodes are available: 1 Insufficient memory.")
        );
    }

    #[test]
    fn a_rollout_past_its_progress_deadline_is_told_apart_from_one_in_progress() {
        let deployment = |reason: &str, deadline: Option<i32>| -> Deployment {
            serde_json::from_value(json!({
                "metadata": {"generation": 2},
                "spec": {"selector": {}, "template": {}, "progressDeadlineSeconds": deadline},
                "status": {"observedGeneration": 2, "conditions": [{"type": "Progressing", "status": if reason == "ProgressDeadlineExceeded" { "False" } else { "True" }, "reason": reason}]}
            }))
            .unwrap()
        };
        assert_eq!(past_progress_deadline(&deployment("ProgressDeadlineExceeded", None)), Some(600), "Kubernetes' default");
        assert_eq!(past_progress_deadline(&deployment("ProgressDeadlineExceeded", Some(120))), Some(120));
        assert_eq!(past_progress_deadline(&deployment("ReplicaSetUpdated", None)), None);
        // The fix just applied: the controller has not looked at it yet, the condition is the old spec's.
        let mut fixed = deployment("ProgressDeadlineExceeded", None);
        fixed.metadata.generation = Some(3);
        assert_eq!(past_progress_deadline(&fixed), None, "the new spec's rollout has its own deadline");
    }

    #[test]
    fn a_rollout_is_pending_until_every_replica_runs_the_current_generation() {
        let status = |observed, updated, ready, total| DeploymentStatus {
            observed_generation: Some(observed),
            updated_replicas: Some(updated),
            ready_replicas: Some(ready),
            replicas: Some(total),
            ..DeploymentStatus::default()
        };
        assert!(rollout_pending(1, Some(2), Some(&status(1, 1, 1, 1))).is_some(), "the controller has not seen generation 2");
        assert!(rollout_pending(1, Some(2), Some(&status(2, 0, 0, 0))).unwrap().contains("0/1 ready"));
        assert!(rollout_pending(1, Some(2), Some(&status(2, 1, 1, 2))).is_some(), "an old pod still runs");
        assert_eq!(rollout_pending(1, Some(2), Some(&status(2, 1, 1, 1))), None);
        assert_eq!(rollout_pending(0, Some(3), Some(&status(3, 0, 0, 0))), None, "paused is a finished rollout");
        assert!(rollout_pending(1, Some(1), None).is_some(), "no status yet");
    }

    #[test]
    fn a_paused_aggregator_runs_no_replica_and_otherwise_the_specs_count() {
        let (_, running) = pipeline(json!({}));
        let (_, paused_by_spec) = pipeline(json!({"aggregator": {"replicas": 0}}));
        assert_eq!((replicas(&running, false), replicas(&running, true)), (1, 0));
        assert_eq!(replicas(&paused_by_spec, false), 0);
    }
}
