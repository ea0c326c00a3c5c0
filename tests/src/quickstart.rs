//! The whole pipeline on one machine: the operator (as its own process) provisions the example
//! pipeline in the emulator and writes the aggregator's Deployment, the node runs it as a pod
//! from this checkout's image, generated metrics from two services go into the input stream out
//! of order, the delivery stand-in carries the aggregates into the bucket, and `scripts/query`
//! reads them back through
//! the Glue table. `quickstart` (the README's run command) prints the result; the end-to-end
//! test asserts it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use metrics_aggregator::generate::{Generator, GeneratorConfig, Metric, PartitionKey, publish};
use metrics_aggregator::kinesis::sink::KinesisSink;
use metrics_pipeline_api::pipeline::{DeliveryWriter, Phase};
use metrics_pipeline_api::{MetricsPipeline, MetricsPipelineStatus};
use metrics_pipeline_aws_proxy::{AwsProxy, ProxySettings, RuleSettings};
use metrics_pipeline_model::event::{EventTime, MetricAggregate, MetricEvent, deduplicate};
use metrics_pipeline_operator::workload::{INSTANCE_LABEL, aggregator_selector};
use metrics_pipeline_test_support::{Identity, free_port, terminate, wait_for};
use serde_json::{Map, Value};
use tokio::process::{Child, Command};

use crate::cluster::{CREDENTIALS_SECRET, image, pod_aws_endpoint};
use crate::delivery::DeliveryStandIn;
use crate::emulator_sdk;
use crate::query;
use crate::{FIELD_MANAGER, install_crd, repo_path, workspace_bin_dir};

pub const COMPONENTS: [&str; 2] = ["user-service", "order-service"];
const PIPELINE: &str = "metrics";
/// Event time covered by the generated metrics: three one-minute windows and a bit.
const ROUNDS: u64 = 180;
/// Out-of-order jitter, inside the example's 10 s out-of-orderness, so every event counts.
const JITTER: Duration = Duration::from_secs(5);
const DEADLINE: Duration = Duration::from_secs(240);
/// How long the AWS proxy in front of the operator keeps a new stream or delivery stream CREATING
/// (AWS: seconds to minutes; the emulator: not at all). The stand-in, as Firehose, reads only from
/// when the delivery stream is ACTIVE, so an aggregator that writes before then loses windows.
const CREATING: Duration = Duration::from_secs(10);

/// What the quickstart did: the events it published and the rows the table returns.
pub struct Outcome {
    pub events: Vec<MetricEvent<'static>>,
    /// Per component, the table's rows after deduplication, ordered by metric and window.
    pub rows: BTreeMap<String, Vec<MetricAggregate>>,
    pub database: String,
    pub table: String,
    /// The aggregator pod's log, as `kubectl logs` shows it.
    pub aggregator_log: String,
}

/// Set (to anything) when the operator already runs in the cluster (kind, installed by Helm):
/// the quickstart then does not start it.
pub const IN_CLUSTER_ENV: &str = "METRICS_PIPELINE_E2E_IN_CLUSTER";

/// `examples/pipeline.yaml`, what the quickstart runs.
pub fn example() -> anyhow::Result<MetricsPipeline> {
    Ok(serde_yaml::from_str(&std::fs::read_to_string(repo_path("examples/pipeline.yaml"))?)?)
}

/// Runs `pipeline` (the example, or a variant of it) in `namespace` (which must exist) and deletes
/// it again at the end. `progress` receives one line per step.
pub async fn run(
    client: &Client,
    namespace: &str,
    pipeline: &MetricsPipeline,
    log_dir: &Path,
    progress: &(dyn Fn(String) + Sync),
) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(log_dir)?;
    // The operator started here reaches AWS through the test proxy, where new streams and delivery
    // streams are CREATING for a while, as on AWS.
    let (mut operator, _proxy, creating) = match std::env::var_os(IN_CLUSTER_ENV) {
        Some(_) => (None, None, Duration::ZERO),
        None => {
            install_crd(client).await?;
            let upstream = std::env::var("AWS_ENDPOINT_URL").context("AWS_ENDPOINT_URL is not set: `. .dev-env/env` first")?;
            let rules = RuleSettings { transition: CREATING, ..RuleSettings::default() };
            let proxy = AwsProxy::start(&upstream, ProxySettings { rules, ..ProxySettings::default() }).await?;
            progress(format!("starting the operator (log: {})", log_dir.join("operator.log").display()));
            let operator =
                start_operator(&workspace_bin_dir()?, namespace, log_dir, pod_aws_endpoint().as_deref(), Some(proxy.endpoint()))?;
            (Some(operator), Some(proxy), CREATING)
        }
    };

    let result = async {
        let pipelines: Api<MetricsPipeline> = Api::namespaced(client.clone(), namespace);
        pipelines.patch(PIPELINE, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(pipeline)).await?;
        let delivery = &pipeline.spec.delivery;
        progress(format!("applied the pipeline as {namespace}/{PIPELINE} ({:?} written by {:?})", delivery.format, delivery.writer));
        // The events go in as soon as the input stream is there, as a producer's would: the stream
        // keeps them while the aggregator waits for the delivery stream to read its output.
        let streams_ready =
            |status: &MetricsPipelineStatus| status.conditions.iter().any(|c| c.type_ == "StreamsReady" && c.status == "True");
        let streams = wait_until(&pipelines, operator.as_mut(), progress, "ready to take events (StreamsReady)", streams_ready).await?;
        let events = publish_metrics(&streams, progress).await?;
        let status = wait_until(&pipelines, operator.as_mut(), progress, "Ready", |status| status.phase == Some(Phase::Ready)).await?;
        let deployment: Api<Deployment> = Api::namespaced(client.clone(), namespace);
        let aggregator = status.aggregator.as_ref().context("Ready without an aggregator")?;
        let image = deployment.get(&aggregator.deployment).await?.spec.and_then(|s| s.template.spec).map(|p| p.containers[0].image.clone());
        progress(format!("aggregator Deployment {} is ready (image {})", aggregator.deployment, image.flatten().unwrap_or_default()));
        let mut outcome = exchange_data(&status, events, delivery.writer, creating, progress).await?;
        outcome.aggregator_log = aggregator_log(client, namespace).await?;
        std::fs::write(log_dir.join("aggregator.log"), &outcome.aggregator_log)?;
        anyhow::Ok(outcome)
    }
    .await;

    progress("deleting the pipeline".into());
    let cleanup = delete_pipeline(client, namespace).await;
    if let Some(mut operator) = operator {
        terminate(&mut operator, Duration::from_secs(10)).await;
    }
    let outcome = result?;
    cleanup?;
    Ok(outcome)
}

/// The operator as a process of this machine (as `cargo run` would start it), watching `namespace`;
/// it reaches AWS at `aws_endpoint` (default: the environment's) with the operator's credentials;
/// its aggregators run this checkout's image, reach AWS at `pod_aws_endpoint` and read their
/// credentials from the namespace's Secret.
pub fn start_operator(
    bin_dir: &Path,
    namespace: &str,
    log_dir: &Path,
    pod_aws_endpoint: Option<&str>,
    aws_endpoint: Option<&str>,
) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log_dir.join("operator.log"))?;
    let port = free_port()?;
    let mut command = Command::new(bin_dir.join("metrics-pipeline-operator"));
    if let Some(endpoint) = pod_aws_endpoint {
        command.args(["--aws-endpoint-url", endpoint]);
    }
    if let Some(endpoint) = aws_endpoint {
        command.env("AWS_ENDPOINT_URL", endpoint);
    }
    command
        // A short resync registers the first Glue partitions soon after the first objects land.
        .args(["--namespace", namespace, "--resync-period", "5s", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--aggregator-image", &image("metrics-aggregator"), "--aggregator-credentials-secret", CREDENTIALS_SECRET])
        .envs(Identity::Operator.env_or_tests())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start metrics-pipeline-operator")
}

/// Waits until the pipeline's status shows `what` (`reached` says when).
async fn wait_until(
    pipelines: &Api<MetricsPipeline>,
    mut operator: Option<&mut Child>,
    progress: &(dyn Fn(String) + Sync),
    what: &str,
    reached: impl Fn(&MetricsPipelineStatus) -> bool,
) -> anyhow::Result<MetricsPipelineStatus> {
    let started = Instant::now();
    let mut last_message = String::new();
    while started.elapsed() < DEADLINE {
        if let Some(exit) = operator.as_mut().map(|operator| operator.try_wait()).transpose()?.flatten() {
            bail!("the operator exited ({exit}); see operator.log");
        }
        let status = pipelines.get(PIPELINE).await?.status.unwrap_or_default();
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
        if let Some(ready) = ready.filter(|ready| ready.message != last_message) {
            progress(format!("{:?}: {}", status.phase.unwrap_or(Phase::Provisioning), ready.message));
            last_message = ready.message.clone();
        }
        if reached(&status) {
            return Ok(status);
        }
        if status.phase == Some(Phase::Failed) {
            bail!("the pipeline failed: {last_message}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("the pipeline was not {what} within {DEADLINE:?}; last: {last_message}")
}

/// Publishes three minutes of generated metrics to the pipeline's input stream.
async fn publish_metrics(status: &MetricsPipelineStatus, progress: &(dyn Fn(String) + Sync)) -> anyhow::Result<Vec<MetricEvent<'static>>> {
    let input = status.input_stream.as_ref().map(|r| r.name.clone()).context("the input stream is missing in status")?;
    let sdk = emulator_sdk().await;
    // Three minutes of event time, ending a minute ago, one event a second per series.
    let now_ms = jiff::Timestamp::now().as_millisecond();
    let start = EventTime((now_ms / 60_000 - 4) * 60_000);
    let config = GeneratorConfig {
        components: COMPONENTS.map(str::to_owned).to_vec(),
        metrics: vec![Metric { name: "cpu-usage".into(), unit: "percent".into() }, Metric { name: "ram-usage".into(), unit: "MB".into() }],
        start,
        step: Duration::from_secs(1),
        jitter: JITTER,
        seed: 7,
    };
    let count = ROUNDS * (config.components.len() * config.metrics.len()) as u64;
    let events: Vec<MetricEvent<'static>> = Generator::new(config.clone()).take(count as usize).collect();
    let sink = KinesisSink::new(aws_sdk_kinesis::Client::new(&sdk), input.clone());
    let published = publish(&sink, Generator::new(config), PartitionKey::Component, Some(count), None, std::future::pending()).await;
    progress(format!(
        "published {published} cpu-usage and ram-usage events of {} to {input}, up to {}s out of order",
        COMPONENTS.join(" and "),
        JITTER.as_secs()
    ));
    Ok(events)
}

/// Runs delivery until the table holds every window of `events`, and reads it back.
async fn exchange_data(
    status: &MetricsPipelineStatus,
    events: Vec<MetricEvent<'static>>,
    writer: DeliveryWriter,
    creating: Duration,
    progress: &(dyn Fn(String) + Sync),
) -> anyhow::Result<Outcome> {
    let name = |reference: &Option<metrics_pipeline_api::pipeline::AwsResourceRef>| {
        reference.as_ref().map(|r| r.name.clone()).context("missing in status")
    };
    let (database, table) = (name(&status.glue_database)?, name(&status.glue_table)?);
    let sdk = emulator_sdk().await;

    let expected = expected_windows(&events);
    progress(format!("waiting for {} windows: the last fires after the example's 30s idle timeout", expected.values().sum::<usize>()));
    // With Firehose writing, the stand-in does its data path; the aggregator writes files itself.
    let mut stand_in = match writer {
        DeliveryWriter::Firehose => Some(DeliveryStandIn::load(&sdk, &name(&status.delivery_stream)?).await?.creating_for(creating)),
        DeliveryWriter::Aggregator => None,
    };
    let everything = format!("SELECT * FROM {database}.{table}");
    let started = Instant::now();
    loop {
        if let Some(stand_in) = &mut stand_in {
            let delivered = stand_in.deliver().await?;
            if !delivered.is_empty() {
                progress(format!(
                    "delivery stand-in wrote {} object(s): {}",
                    delivered.len(),
                    delivered.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        // A component's rows appear once its first object is there (and its partition registered).
        // A record a query engine could not read fails the query, and the quickstart with it.
        let rows = latest_revisions(&query::select(&everything).await?)?;
        if COMPONENTS.iter().all(|c| rows.get(*c).map(Vec::len) == expected.get(*c).copied()) {
            return Ok(Outcome { events, rows, database, table, aggregator_log: String::new() });
        }
        if started.elapsed() > DEADLINE {
            let found: BTreeMap<&String, usize> = rows.iter().map(|(component, rows)| (component, rows.len())).collect();
            bail!("the table did not hold every window within {DEADLINE:?} (expected per component: {expected:?}; found: {found:?})");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Windows per component the events fall into, at the example's one-minute windows.
fn expected_windows(events: &[MetricEvent<'_>]) -> BTreeMap<String, usize> {
    let mut windows: BTreeMap<String, std::collections::BTreeSet<(String, i64)>> = BTreeMap::new();
    for event in events {
        windows
            .entry(event.component_name.to_string())
            .or_default()
            .insert((event.metric_name.to_string(), event.timestamp.0.div_euclid(60_000)));
    }
    windows.into_iter().map(|(component, set)| (component, set.len())).collect()
}

/// The README's deduplication rule over the table's rows: per `windowId`, the row with the
/// highest count, then the highest revision. Per component, ordered by metric and window.
pub fn latest_revisions(rows: &[Map<String, Value>]) -> anyhow::Result<BTreeMap<String, Vec<MetricAggregate>>> {
    let aggregates = rows.iter().map(aggregate_of).collect::<anyhow::Result<Vec<_>>>()?;
    let mut per_component: BTreeMap<String, Vec<MetricAggregate>> = BTreeMap::new();
    for aggregate in deduplicate(aggregates).into_values() {
        per_component.entry(aggregate.component_name.clone()).or_default().push(aggregate);
    }
    for rows in per_component.values_mut() {
        rows.sort_by(|a, b| (&a.metric_name, a.window_start).cmp(&(&b.metric_name, b.window_start)));
    }
    Ok(per_component)
}

/// One row of the table as an aggregate: columns by the lower-case names Athena gives them,
/// timestamps as Athena prints them (UTC wall-clock time, `2021-09-09 11:30:00.000`).
fn aggregate_of(row: &Map<String, Value>) -> anyhow::Result<MetricAggregate> {
    let column = |name: &str| row.get(name).with_context(|| format!("no column {name} in the row {row:?}"));
    let text = |name: &str| column(name).and_then(|v| v.as_str().map(str::to_owned).with_context(|| format!("{name} is not text")));
    let number = |name: &str| column(name).and_then(|v| v.as_f64().with_context(|| format!("{name} is not a number")));
    let whole = |name: &str| column(name).and_then(|v| v.as_u64().with_context(|| format!("{name} is not a whole number")));
    let time = |name: &str| {
        text(name).and_then(|t| EventTime::parse_rfc3339(&format!("{t}Z")).with_context(|| format!("{name} `{t}` is not a timestamp")))
    };
    Ok(MetricAggregate {
        component_name: text("componentname")?,
        metric_name: text("metricname")?,
        unit: text("unit")?,
        min_value: number("minvalue")?,
        max_value: number("maxvalue")?,
        avg_value: number("avgvalue")?,
        count: whole("count")?,
        sum: number("sum")?,
        from_timestamp: time("fromtimestamp")?,
        to_timestamp: time("totimestamp")?,
        window_start: time("windowstart")?,
        window_end: time("windowend")?,
        window_id: text("windowid")?,
        revision: u32::try_from(whole("revision")?)?,
    })
}

/// The log of the pipeline's aggregator pod, read through the API server from the node.
async fn aggregator_log(client: &Client, namespace: &str) -> anyhow::Result<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("{},{INSTANCE_LABEL}={PIPELINE}", aggregator_selector());
    let pod = pods.list(&ListParams::default().labels(&selector)).await?.items.into_iter().next().context("no aggregator pod")?;
    Ok(pods.logs(&pod.name_any(), &LogParams::default()).await?)
}

async fn delete_pipeline(client: &Client, namespace: &str) -> anyhow::Result<()> {
    let pipelines: Api<MetricsPipeline> = Api::namespaced(client.clone(), namespace);
    if pipelines.get_opt(PIPELINE).await?.is_none() {
        return Ok(());
    }
    pipelines.delete(PIPELINE, &DeleteParams::default()).await?;
    // The delivery stream stays a buffer interval and a margin (90 s) after the last aggregate.
    wait_for(&format!("the operator's cleanup of {namespace}/{PIPELINE}"), Duration::from_secs(240), async || {
        match pipelines.get_opt(PIPELINE).await.map_err(|error| error.to_string())? {
            Some(pipeline) if !pipeline.finalizers().is_empty() => Err(format!("{:?}", pipeline.status.and_then(|s| s.phase))),
            _ => Ok(()),
        }
    })
    .await
}

/// Where the quickstart keeps its logs: beside the dev environment's.
pub fn default_log_dir() -> PathBuf {
    std::env::var_os("DEV_ENV_STATE").map_or_else(|| repo_path(".dev-env"), PathBuf::from).join("quickstart")
}
