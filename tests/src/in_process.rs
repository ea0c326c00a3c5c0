//! The operator run in-process by a test, watching one namespace, with AWS reached directly or
//! through an endpoint the test controls (a relay that can be cut, the AWS proxy that enforces
//! AWS's rules); and the waits and lookups the operator's tests share.

use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_kinesis::config::{Credentials, SharedCredentialsProvider};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use metrics_pipeline_api::config::AwsTarget;
use metrics_pipeline_api::pipeline::Phase;
use metrics_pipeline_api::{MetricsPipeline, MetricsPipelineStatus};
use metrics_pipeline_operator::aws::{AwsCalls, Memory};
use metrics_pipeline_operator::controller::{AwsAccount, Context, Settings, cluster_identity, run};
use metrics_pipeline_operator::metrics::Metrics;
use metrics_pipeline_runtime::sdk::{s3_client, sdk_config};
use metrics_pipeline_test_support::{Identity, counter_series, wait_for};
use tokio::sync::oneshot;

use crate::cluster::workload_settings;
use crate::{FIELD_MANAGER, TestNamespace, emulator_sdk, install_crd, kube_client, repo_path};

pub fn example(file: &str) -> MetricsPipeline {
    serde_yaml::from_str(&std::fs::read_to_string(repo_path(&format!("examples/{file}"))).unwrap()).unwrap()
}

/// An example under a name of the test's own.
pub fn example_named(file: &str, name: &str) -> MetricsPipeline {
    let mut pipeline = example(file);
    pipeline.metadata.name = Some(name.into());
    pipeline
}

/// Settings that keep a test short: AWS's progress looked at from every half second up to every
/// two, retries from a second up to five. The aggregators reach the emulator directly, whatever endpoint the
/// operator is given.
pub fn quick_settings() -> Settings {
    Settings {
        resync: Duration::from_secs(60),
        pending_requeue: Duration::from_millis(500),
        pending_cap: Duration::from_secs(2),
        pending_timeout: Duration::from_secs(600),
        concurrency: 8,
        retry_base: Duration::from_secs(1),
        retry_cap: Duration::from_secs(5),
        workload: workload_settings(),
    }
}

/// The operator, in-process, watching one namespace.
pub struct Operator {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
}

impl Operator {
    /// With the operator's credentials (its shipped IAM policy) when the emulator enforces IAM,
    /// settings of the test's own (how retries are paced, say), and `cluster` as this cluster's
    /// identity (default: as the operator finds it).
    pub async fn start_with(client: &Client, namespace: &str, endpoint: Option<String>, settings: Settings, cluster: Option<&str>) -> Self {
        let account = aws_sdk_sts::Client::new(&emulator_sdk().await).get_caller_identity().send().await.unwrap().account.unwrap();
        let mut sdk = as_identity(sdk_config(None).await, Identity::Operator);
        if let Some(endpoint) = endpoint {
            sdk = sdk.to_builder().endpoint_url(endpoint).build();
        }
        let target = AwsTarget { account_id: account, default_region: sdk.region().map(ToString::to_string) };
        let calls = AwsCalls::default();
        let metrics = Arc::new(Metrics::new(&calls));
        let cluster = match cluster {
            Some(cluster) => cluster.to_owned(),
            None => cluster_identity(client).await.unwrap(),
        };
        let context = Arc::new(Context::new(
            client.clone(),
            AwsAccount::new(sdk, target, calls, Memory::for_resync(settings.resync)),
            cluster,
            metrics.clone(),
            settings,
        ));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(context, Some(namespace.to_owned()), async move {
            let _ = stopped.await;
        }));
        Self { stop: Some(stop), task, metrics }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.task.await;
    }

    /// AWS calls so far, as the operator's `/metrics` counts them: (service, operation, count).
    pub fn calls(&self) -> Vec<(String, String, f64)> {
        let series = counter_series(&self.metrics.encode(), "metrics_pipeline_operator_aws_calls_total");
        series.into_iter().map(|(labels, count)| (labels["service"].clone(), labels["operation"].clone(), count)).collect()
    }

    /// AWS calls so far whose operation changes something.
    pub fn mutating_calls(&self) -> Vec<String> {
        const MUTATING: [&str; 9] = ["Create", "Put", "Update", "Delete", "Add", "Tag", "Increase", "Decrease", "Batch"];
        self.calls()
            .into_iter()
            .filter(|(_, operation, _)| MUTATING.iter().any(|verb| operation.starts_with(verb)))
            .map(|(service, operation, count)| format!("{service}.{operation} x{count}"))
            .collect()
    }

    /// Reconciles so far, whatever they ended in.
    pub fn reconciles(&self) -> f64 {
        counter_series(&self.metrics.encode(), "metrics_pipeline_operator_reconciles_total").iter().map(|(_, count)| count).sum()
    }

    pub fn total_calls(&self) -> f64 {
        self.calls().iter().map(|(_, _, count)| count).sum()
    }
}

/// One operator test's world: the CRD installed, a namespace of its own, and the operator
/// watching it, which the test may stop and start again to play a crash.
pub struct OperatorTest {
    pub client: Client,
    pub namespace: TestNamespace,
    pub pipelines: Api<MetricsPipeline>,
    endpoint: Option<String>,
    settings: Settings,
    /// The operator's cluster identity; `None`: as the operator finds it.
    pub cluster: Option<String>,
    /// `None` while stopped.
    operator: Option<Operator>,
}

impl OperatorTest {
    /// The operator reaching AWS at `endpoint` (the emulator when `None`), looking again every `resync`.
    pub async fn start(prefix: &str, endpoint: Option<String>, resync: Duration) -> Self {
        Self::start_with(prefix, endpoint, Settings { resync, ..quick_settings() }).await
    }

    pub async fn start_with(prefix: &str, endpoint: Option<String>, settings: Settings) -> Self {
        let mut test = Self::prepare(prefix, endpoint, settings).await;
        test.start_operator().await;
        test
    }

    /// The CRD and the namespace, the operator not started yet (to set its cluster identity).
    pub async fn prepare(prefix: &str, endpoint: Option<String>, settings: Settings) -> Self {
        let client = kube_client().await.unwrap();
        install_crd(&client).await.unwrap();
        let namespace = TestNamespace::create(&client, prefix).await.unwrap();
        let pipelines = Api::namespaced(client.clone(), &namespace.name);
        Self { client, namespace, pipelines, endpoint, settings, cluster: None, operator: None }
    }

    pub async fn start_operator(&mut self) {
        let (client, namespace) = (&self.client, &self.namespace.name);
        let (endpoint, settings) = (self.endpoint.clone(), self.settings.clone());
        self.operator = Some(Operator::start_with(client, namespace, endpoint, settings, self.cluster.as_deref()).await);
    }

    /// Stops the operator as if it died: whatever it was doing stays half-done. Not before it has
    /// listed the pipelines once (kube's controller then waits for that list for ever).
    pub async fn stop_operator(&mut self) {
        self.operator.take().expect("the operator runs").stop().await;
    }

    pub fn operator(&self) -> &Operator {
        self.operator.as_ref().expect("the operator runs")
    }

    /// Applies `pipeline` under its own name, server-side as `kubectl apply` does.
    pub async fn apply(&self, pipeline: &MetricsPipeline) {
        let name = pipeline.metadata.name.as_deref().expect("the pipeline has a name");
        self.pipelines.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(pipeline)).await.unwrap();
    }

    pub async fn wait_for(&self, name: &str, what: &str, check: impl Fn(&MetricsPipelineStatus) -> bool) -> MetricsPipelineStatus {
        wait_for_status(&self.pipelines, name, what, check).await
    }

    pub async fn ready(&self, name: &str) -> MetricsPipelineStatus {
        self.wait_for(name, "Ready", |s| s.phase == Some(Phase::Ready)).await
    }

    /// The prefix of the AWS names of pipeline `name` (`<namespace>-<name>`).
    pub fn aws_prefix(&self, name: &str) -> String {
        format!("{}-{name}", self.namespace.name)
    }

    /// Deletes pipeline `name`, waits for its cleanup and checks it left nothing in AWS.
    pub async fn delete_and_check(&self, name: &str) {
        delete_and_wait(&self.pipelines, name).await;
        assert_eq!(everything_named(&self.aws_prefix(name)).await, Vec::<String>::new(), "nothing of {name} is left in AWS");
    }

    /// Stops the operator and deletes the namespace with whatever is left in it.
    pub async fn finish(mut self) {
        if let Some(operator) = self.operator.take() {
            operator.stop().await;
        }
        self.namespace.delete().await.unwrap();
    }
}

/// An administrator's explicit Deny of the operator reading `bucket` (HeadBucket answers 403, as
/// for a bucket of another account), until [`allow_operator_reading`].
pub async fn deny_operator_reading(bucket: &str) {
    // moto names HeadBucket's action s3:HeadBucket; AWS, s3:ListBucket.
    let deny = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Deny",
        "Action": ["s3:ListBucket", "s3:HeadBucket"], "Resource": format!("arn:aws:s3:::{bucket}")}]});
    let iam = aws_sdk_iam::Client::new(&emulator_sdk().await);
    let request = iam.put_user_policy().user_name(OPERATOR_USER).policy_name(format!("deny-{bucket}"));
    request.policy_document(deny.to_string()).send().await.unwrap();
}

pub async fn allow_operator_reading(bucket: &str) {
    let iam = aws_sdk_iam::Client::new(&emulator_sdk().await);
    iam.delete_user_policy().user_name(OPERATOR_USER).policy_name(format!("deny-{bucket}")).send().await.unwrap();
}

/// The operator's IAM user in the emulator (`scripts/aws-identities`).
const OPERATOR_USER: &str = "metrics-pipeline-operator";

/// `sdk` with the credentials of `identity` (see `scripts/aws-identities`), when the environment
/// has them; else unchanged.
pub fn as_identity(sdk: SdkConfig, identity: Identity) -> SdkConfig {
    let Some([(_, key), (_, secret)]) = identity.env() else { return sdk };
    let credentials = Credentials::new(key, secret, None, None, "scripts/aws-identities");
    sdk.to_builder().credentials_provider(SharedCredentialsProvider::new(credentials)).build()
}

pub async fn wait_for_status(
    pipelines: &Api<MetricsPipeline>,
    name: &str,
    what: &str,
    check: impl Fn(&MetricsPipelineStatus) -> bool,
) -> MetricsPipelineStatus {
    wait_for_status_within(pipelines, name, what, Duration::from_secs(60), check).await
}

/// The status of pipeline `name` once `check` holds, within `timeout` (an aggregator to roll
/// out, reports to come); the last status seen is the failure's message.
pub async fn wait_for_status_within(
    pipelines: &Api<MetricsPipeline>,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&MetricsPipelineStatus) -> bool,
) -> MetricsPipelineStatus {
    wait_for(what, timeout, async || match pipelines.get(name).await.map_err(|error| error.to_string())?.status {
        Some(status) if check(&status) => Ok(status),
        last => Err(format!("{last:#?}")),
    })
    .await
    .unwrap()
}

/// Whether `status` is Ready at `generation` of the spec.
pub fn ready_at(status: &MetricsPipelineStatus, generation: i64) -> bool {
    status.phase == Some(Phase::Ready) && status.observed_generation == Some(generation)
}

/// Deletes the pipeline and waits until the operator's cleanup let the finalizer go; the
/// aggregator's pod first gets its grace period (60 s) to checkpoint, and Firehose its buffer
/// interval for the last aggregate.
pub async fn delete_and_wait(pipelines: &Api<MetricsPipeline>, name: &str) {
    pipelines.delete(name, &DeleteParams::default()).await.unwrap();
    wait_for(&format!("the deletion of {name}"), Duration::from_secs(240), async || {
        match pipelines.get_opt(name).await.map_err(|error| error.to_string())? {
            None => Ok(()),
            Some(pipeline) => Err(format!("{:#?}", pipeline.status)),
        }
    })
    .await
    .unwrap();
}

/// Condition `kind` of `status` as (status, reason, message).
pub fn condition<'a>(status: &'a MetricsPipelineStatus, kind: &str) -> Option<(&'a str, &'a str, &'a str)> {
    status.conditions.iter().find(|c| c.type_ == kind).map(|c| (c.status.as_str(), c.reason.as_str(), c.message.as_str()))
}

/// Names of everything in the emulator's account that starts with `prefix` (or, for Glue,
/// the database named like it), every page of each list read: leftovers of other tests must not
/// push a test's own resources off the first page.
pub async fn everything_named(prefix: &str) -> Vec<String> {
    let sdk = emulator_sdk().await;
    let mut found = Vec::new();
    let mut named = |kind: &str, names: Vec<String>| {
        found.extend(names.into_iter().filter(|name| name.starts_with(prefix)).map(|name| format!("{kind} {name}")));
    };
    // moto pages ListStreams by ExclusiveStartStreamName only (no NextToken for the paginator).
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    let mut streams = Vec::new();
    loop {
        let page = kinesis.list_streams().set_exclusive_start_stream_name(streams.last().cloned()).send().await.unwrap();
        streams.extend(page.stream_names);
        if !page.has_more_streams {
            break;
        }
    }
    named("stream", streams);
    let buckets = s3_client(&sdk).list_buckets().send().await.unwrap();
    named("bucket", buckets.buckets.unwrap_or_default().into_iter().filter_map(|bucket| bucket.name).collect());
    let iam = aws_sdk_iam::Client::new(&sdk);
    let pages: Vec<_> = iam.list_roles().into_paginator().send().try_collect().await.unwrap();
    named("role", pages.into_iter().flat_map(|page| page.roles.into_iter().map(|role| role.role_name)).collect());
    let firehose = aws_sdk_firehose::Client::new(&sdk);
    let mut deliveries = Vec::new();
    loop {
        let page =
            firehose.list_delivery_streams().set_exclusive_start_delivery_stream_name(deliveries.last().cloned()).send().await.unwrap();
        let more = page.has_more_delivery_streams;
        deliveries.extend(page.delivery_stream_names);
        if !more {
            break;
        }
    }
    named("delivery", deliveries);
    let glue = aws_sdk_glue::Client::new(&sdk);
    let pages: Vec<_> = glue.get_databases().into_paginator().send().try_collect().await.unwrap();
    let databases: Vec<String> = pages.into_iter().flat_map(|page| page.database_list.into_iter().map(|database| database.name)).collect();
    let glue_prefix = prefix.replace('-', "_");
    found.extend(databases.into_iter().filter(|name| name.starts_with(&glue_prefix)).map(|name| format!("glue database {name}")));
    found
}
