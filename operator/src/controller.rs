//! The reconciler: a finalizer around `apply` (validate → ensure each AWS part in dependency
//! order → write status) and `cleanup` (delete in reverse order, honouring `deletionPolicy`).

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use metrics_pipeline_api::config::{AwsTarget, PipelineConfig};
use metrics_pipeline_api::identity;
use metrics_pipeline_api::naming::PipelineNames;
use metrics_pipeline_api::pipeline::{AwsResourceRef, DeletionPolicy, DeliveryWriter, MetricsPipeline, MetricsPipelineStatus, Phase};
use metrics_pipeline_api::validation::validate;

use crate::aws::{AwsCalls, AwsClients, Memory, bucket, catalog, delivery, role, streams};
use crate::error::Error;
use crate::managed::{FIELD_MANAGER, Outcome, Owner, write_status};
use crate::metrics::{Metrics, ReconcileResult};
use crate::status::{
    self, AGGREGATOR_READY, BUCKET_READY, CATALOG_READY, DELIVERY_READY, IDENTITY_KEPT, PartState, Report, STREAMS_READY, Verdict,
};
use crate::turns::Turns;
use crate::workload::{self, WorkloadSettings};

pub const FINALIZER: &str = "pipelines.metrics.dev/cleanup";

#[derive(Clone, Debug)]
pub struct Settings {
    /// How often a Ready pipeline is re-read to repair drift.
    pub resync: Duration,
    /// How soon to look again while AWS is creating, updating or deleting something (or the
    /// aggregator rolls out); each further look doubles the wait, up to `pending_cap`.
    pub pending_requeue: Duration,
    pub pending_cap: Duration,
    /// How long a pipeline may wait for a part before the operator gives up on it (Failed,
    /// `Stalled`, with a Warning event naming the cause) and looks again only at each resync.
    pub pending_timeout: Duration,
    /// How soon to retry after throttling or an outage; each further failure in a row doubles
    /// the wait, up to `retry_cap` (see [`backoff`]).
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Reconciles at most at once: with the per-operation rate limits, what keeps a restart of a
    /// thousand pipelines a queue instead of a burst of calls, each waiting long for its turn
    /// (see [`Turns`]).
    pub concurrency: u16,
    pub workload: WorkloadSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(300),
            pending_requeue: Duration::from_secs(5),
            pending_cap: Duration::from_secs(60),
            // Firehose takes minutes to create a delivery stream; a Deployment gives up on its
            // rollout after 10 minutes unless told otherwise.
            pending_timeout: Duration::from_secs(15 * 60),
            retry_base: Duration::from_secs(5),
            retry_cap: Duration::from_secs(300),
            concurrency: 8,
            workload: WorkloadSettings::default(),
        }
    }
}

/// The AWS account the operator works in: its identity, and one set of clients per region.
pub struct AwsAccount {
    sdk: SdkConfig,
    pub target: AwsTarget,
    pub calls: AwsCalls,
    clients: Mutex<HashMap<String, AwsClients>>,
    /// What AWS refused lately (held for the resync period) and the tags read lately, in any region.
    memory: Memory,
}

impl AwsAccount {
    /// `memory` is shared by the clients of every region: see [`Memory::for_resync`].
    pub fn new(sdk: SdkConfig, target: AwsTarget, calls: AwsCalls, memory: Memory) -> Self {
        Self { sdk, target, calls, clients: Mutex::default(), memory }
    }

    fn clients(&self, region: &str) -> AwsClients {
        let mut clients = self.clients.lock().expect("no panics while holding the lock");
        clients.entry(region.to_owned()).or_insert_with(|| AwsClients::sharing(&self.sdk, region, &self.calls, &self.memory)).clone()
    }
}

pub struct Context {
    pub client: Client,
    pub account: AwsAccount,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    /// This cluster's identity, tagged on every AWS resource its pipelines make.
    pub cluster: String,
    turns: Arc<Turns>,
    /// What the backoffs remember of each pipeline between its reconciles.
    tracks: Mutex<HashMap<ObjectRef<MetricsPipeline>, Track>>,
}

#[derive(Debug, Default, PartialEq)]
struct Track {
    /// Retryable failures in a row.
    failures: u32,
    /// Waiting for parts (or for the deletion), since when and how often looked at.
    waiting: Option<Waiting>,
}

/// A pipeline waiting for the same parts (AWS, or its rollout) at one generation of its spec.
#[derive(Debug, PartialEq)]
struct Waiting {
    generation: Option<i64>,
    parts: Vec<&'static str>,
    since: Instant,
    looks: u32,
}

impl Context {
    pub fn new(client: Client, account: AwsAccount, cluster: String, metrics: Arc<Metrics>, settings: Settings) -> Self {
        let instance = std::env::var("POD_NAME").ok();
        let recorder = Recorder::new(client.clone(), Reporter { controller: FIELD_MANAGER.into(), instance });
        let turns = Turns::new(settings.concurrency.into());
        Self { client, account, recorder, metrics, settings, cluster, turns, tracks: Mutex::default() }
    }

    /// Changes what is remembered of `pipeline`; a pipeline with nothing to remember is forgotten.
    fn track<R>(&self, pipeline: &MetricsPipeline, change: impl FnOnce(&mut Track) -> R) -> R {
        let mut tracks = self.tracks.lock().expect("no panics while holding the lock");
        let key = ObjectRef::from_obj(pipeline);
        let track = tracks.entry(key.clone()).or_default();
        let result = change(track);
        if *track == Track::default() {
            tracks.remove(&key);
        }
        result
    }

    /// The wait before retrying `pipeline`, which failed (again) for a reason time can fix.
    fn retry_after(&self, pipeline: &MetricsPipeline) -> Duration {
        let failures = self.track(pipeline, |track| {
            track.failures = track.failures.saturating_add(1);
            track.failures
        });
        backoff(failures, self.settings.retry_base, self.settings.retry_cap, rand::random())
    }

    /// `pipeline` waits (again) for `parts`: how long it has waited for these at this generation
    /// of its spec (a part that got ready or a changed spec starts the time afresh), and when to
    /// look next (soon while AWS usually finishes, then less often).
    fn still_waiting(&self, pipeline: &MetricsPipeline, parts: Vec<&'static str>) -> (Duration, Duration) {
        let generation = pipeline.metadata.generation;
        let (waited, looks) = self.track(pipeline, |track| {
            let waiting = match &mut track.waiting {
                Some(waiting) if waiting.generation == generation && waiting.parts == parts => waiting,
                other => other.insert(Waiting { generation, parts, since: Instant::now(), looks: 0 }),
            };
            waiting.looks = waiting.looks.saturating_add(1);
            (waiting.since.elapsed(), waiting.looks)
        });
        (waited, backoff(looks, self.settings.pending_requeue, self.settings.pending_cap, rand::random()))
    }

    fn done_waiting(&self, pipeline: &MetricsPipeline) {
        self.track(pipeline, |track| track.waiting = None);
    }

    /// The resync period, spread by ±10 % so that pipelines created or restarted together do not
    /// stay in step and read AWS all at once.
    fn resync(&self) -> Duration {
        self.settings.resync.mul_f64(0.9 + 0.2 * rand::random::<f64>())
    }

    /// `pipeline` got through a reconcile: its next failure starts the backoff afresh.
    fn succeeded(&self, pipeline: &MetricsPipeline) {
        self.track(pipeline, |track| track.failures = 0);
    }
}

/// The wait before retry number `failures` (1 for the first): `base` doubled per failure in a
/// row, at most `cap`, of which a random half (`jitter` in [0, 1)) is spread out, so that the
/// pipelines an outage hit at once do not all retry at once.
pub fn backoff(failures: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let doubled = base.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1))).min(cap);
    doubled / 2 + (doubled / 2).mul_f64(jitter.clamp(0.0, 1.0))
}

/// The cluster's default identity: the UID of its kube-system namespace, which lives as long as
/// the cluster does.
pub async fn cluster_identity(client: &Client) -> Result<String, kube::Error> {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    Ok(namespaces.get("kube-system").await?.metadata.uid.unwrap_or_default())
}

/// Watches `MetricsPipeline`s (in `namespace`, or everywhere) until `shutdown` resolves.
pub async fn run(context: Arc<Context>, namespace: Option<String>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let api: Api<MetricsPipeline> = scoped(&context.client, namespace.as_deref());
    let deployments: Api<Deployment> = scoped(&context.client, namespace.as_deref());
    let (pipelines, writer) = reflector::store();
    let watched = watcher(api, watcher::Config::default().any_semantic()).default_backoff().reflect(writer);
    // The aggregator's Deployment reports readiness in its status: each change of its rollout
    // reconciles the pipeline that owns it, so AggregatorReady follows without polling.
    let aggregators = watcher(deployments, watcher::Config::default().labels(&workload::aggregator_selector())).default_backoff();
    // No limit here: kube's runner, at its limit, lets through the due reconciles in no order
    // (one can wait for ever); `Turns` limits them in order.
    Controller::for_stream(changes(watched, reconcile_inputs), pipelines)
        .owns_stream(changes(aggregators, rollout))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile round ended with an error");
            }
        })
        .await;
}

/// The objects of `events` whose `state` changed since last seen, and those deleted: status
/// writes (the operator's own included), label and annotation edits, and the periodic relist
/// wake no reconcile, which would bypass the backoff and re-read AWS for nothing.
fn changes<K: Resource>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    state: fn(&K) -> u64,
) -> impl Stream<Item = Result<K, watcher::Error>> {
    let mut seen: HashMap<String, u64> = HashMap::new();
    events.filter_map(move |event| {
        let uid = |object: &K| object.meta().uid.clone().unwrap_or_default();
        let changed = match event {
            Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                let digest = state(&object);
                (seen.insert(uid(&object), digest) != Some(digest)).then_some(Ok(object))
            }
            Ok(watcher::Event::Delete(object)) => {
                seen.remove(&uid(&object));
                Some(Ok(object))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
            Err(error) => Some(Err(error)),
        };
        std::future::ready(changed)
    })
}

fn digest(value: &impl Hash) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// What a reconcile of a pipeline acts on: its spec (the generation counts its changes), its
/// deletion and its finalizers (the finalizer's addition is what starts the first apply).
fn reconcile_inputs(pipeline: &MetricsPipeline) -> u64 {
    let metadata = &pipeline.metadata;
    digest(&(metadata.generation, metadata.deletion_timestamp.is_some(), &metadata.finalizers))
}

/// What of the aggregator's Deployment `AggregatorReady` reports: the rollout's generations,
/// replica counts and conditions.
fn rollout(deployment: &Deployment) -> u64 {
    let status = deployment.status.clone().unwrap_or_default();
    let conditions: Vec<_> = status.conditions.unwrap_or_default().into_iter().map(|c| (c.type_, c.status, c.reason)).collect();
    let replicas =
        [status.replicas, status.ready_replicas, status.updated_replicas, status.available_replicas, status.unavailable_replicas];
    let metadata = &deployment.metadata;
    digest(&(metadata.generation, metadata.deletion_timestamp.is_some(), status.observed_generation, replicas, conditions))
}

/// Objects of one namespace, or of all.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

async fn reconcile(pipeline: Arc<MetricsPipeline>, context: Arc<Context>) -> Result<Action, Error> {
    let status = pipeline.status.as_ref();
    let awaited =
        pipeline.metadata.deletion_timestamp.is_some() || status.and_then(|s| s.observed_generation) != pipeline.metadata.generation;
    let _turn = context.turns.take(awaited).await;
    // Boxed once it has its turn: a thousand reconciles waiting for one stay small.
    Box::pin(reconcile_now(pipeline, context)).await
}

async fn reconcile_now(pipeline: Arc<MetricsPipeline>, context: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = pipeline.namespace().unwrap_or_default();
    let api: Api<MetricsPipeline> = Api::namespaced(context.client.clone(), &namespace);
    // What the status says when `apply` wrote one: that, not the closure's `Ok`, is the result.
    let written = Mutex::new(None);
    let result = finalizer(&api, FINALIZER, pipeline, |event| async {
        match event {
            Finalizer::Apply(pipeline) => {
                let (action, phase, reason) = apply(&pipeline, &api, &context).await?;
                *written.lock().expect("no panics while holding the lock") = Some((phase, reason));
                Ok(action)
            }
            Finalizer::Cleanup(pipeline) => {
                let action = cleanup(&pipeline, &api, &context).await?;
                context.succeeded(&pipeline);
                context.done_waiting(&pipeline);
                Ok(action)
            }
        }
    })
    .await
    .map_err(|error| match error {
        kube::runtime::finalizer::Error::ApplyFailed(error) | kube::runtime::finalizer::Error::CleanupFailed(error) => error,
        kube::runtime::finalizer::Error::AddFinalizer(error) | kube::runtime::finalizer::Error::RemoveFinalizer(error) => {
            Error::Kube(error)
        }
        other => Error::Finalizer(Box::new(other)),
    });
    let written = written.into_inner().expect("no panics while holding the lock");
    let counted = match (&result, written) {
        (Ok(_), Some((phase, reason))) => ReconcileResult::Status(phase, reason),
        (Ok(_), None) => ReconcileResult::Deleted,
        (Err(Error::Deleting(_) | Error::Draining { .. }), _) => ReconcileResult::Deleting,
        (Err(error), _) => ReconcileResult::Error(error.reason()),
    };
    context.metrics.observe_reconcile(started.elapsed(), counted);
    result
}

fn error_policy(pipeline: Arc<MetricsPipeline>, error: &Error, context: Arc<Context>) -> Action {
    match error {
        // Deletion waits on AWS and Kubernetes: expected, and looked at again soon.
        Error::Deleting(_) => {
            tracing::debug!(pipeline = %pipeline.name_any(), %error, "deletion in progress");
            Action::requeue(context.still_waiting(&pipeline, Vec::new()).1)
        }
        // Nothing to look at before Firehose has had its time.
        Error::Draining { left, .. } => Action::requeue(*left),
        // While deleting, the spec no longer matters: what stops the deletion (a hold on objects,
        // a missing permission) is lifted elsewhere, and tried again like an outage.
        error if error.is_terminal() && pipeline.metadata.deletion_timestamp.is_none() => {
            tracing::warn!(pipeline = %pipeline.name_any(), %error, "reconcile failed; the spec or the account must change");
            Action::requeue(context.resync())
        }
        error => {
            let wait = context.retry_after(&pipeline);
            tracing::warn!(pipeline = %pipeline.name_any(), %error, ?wait, "reconcile failed; retrying");
            Action::requeue(wait)
        }
    }
}

/// Provisions every part and writes the status; returns the next look and what the status says
/// (phase, and the reason of its first problem).
async fn apply(
    pipeline: &MetricsPipeline,
    api: &Api<MetricsPipeline>,
    context: &Context,
) -> Result<(Action, Phase, Option<&'static str>), Error> {
    // The status as stored now, not as the cache had it: a reconcile triggered by the aggregator's
    // Deployment can start before the watch has delivered this pipeline's last status write, and
    // building on that stale status would forget what the last reconcile found.
    let previous = api.get_status(&pipeline.name_any()).await?.status;
    let mut report = provision(pipeline, context, api, previous.as_ref()).await?;
    let settings = &context.settings;
    let next_look = match report.verdict() {
        Verdict::Pending => {
            let (waited, next_look) = context.still_waiting(pipeline, report.pending_parts());
            if waited >= settings.pending_timeout {
                report.give_up(&format!("{} s", waited.as_secs()));
            }
            next_look
        }
        _ => {
            context.done_waiting(pipeline);
            settings.pending_requeue
        }
    };
    let now = Time(jiff::Timestamp::now());
    let status = status::build(&report, pipeline.metadata.generation, previous.as_ref(), now);
    write_status(api, &pipeline.name_any(), &status).await?;

    if !report.changes.is_empty() {
        // One event per reconcile: the recorder folds events of one reason and action into a
        // series that keeps the first note, so separate events per change would hide all but one.
        let was_ready = previous.as_ref().and_then(|s| s.phase).is_some_and(|phase| phase != Phase::Provisioning);
        let (reason, action) = if was_ready { ("Repaired", "Update") } else { ("Provisioned", "Create") };
        publish(context, pipeline, EventType::Normal, reason, action, &report.changes.join("; ")).await;
    }
    let problem = report.first_problem();
    if let Some((reason, message)) = problem.as_ref().filter(|_| report.verdict() != Verdict::Pending) {
        let previous = previous.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == status::READY)).map(|c| c.message.as_str());
        if previous != Some(message.as_str()) {
            publish(context, pipeline, EventType::Warning, reason, "Reconcile", message).await;
        }
    }
    let verdict = report.verdict();
    if verdict != Verdict::Retryable {
        context.succeeded(pipeline);
    }
    let action = match verdict {
        Verdict::Ready | Verdict::Terminal => Action::requeue(context.resync()),
        Verdict::Pending => Action::requeue(next_look),
        Verdict::Retryable => Action::requeue(context.retry_after(pipeline)),
    };
    Ok((action, status.phase.unwrap_or(Phase::Provisioning), problem.map(|(reason, _)| reason)))
}

/// Ensures every part in dependency order; a part whose inputs are not ready waits, and the
/// others go on.
async fn provision(
    pipeline: &MetricsPipeline,
    context: &Context,
    api: &Api<MetricsPipeline>,
    previous: Option<&MetricsPipelineStatus>,
) -> Result<Report, Error> {
    let mut report = Report::default();
    let mut config = match validate(pipeline, &context.account.target) {
        Ok(config) => config,
        Err(errors) => {
            report.invalid_spec = Some(Error::InvalidSpec(errors));
            return Ok(report);
        }
    };
    let account_id = &context.account.target.account_id;
    let recorded = previous.and_then(|status| status.identity.as_ref());
    let (identity, refused) = identity::settle(&mut config, recorded, &pipeline.spec, account_id);
    if recorded.is_none() {
        // Recorded before anything is created, so that a stop right after a create still
        // finds the resource under the name it was made with, whatever the spec says by then.
        let status = MetricsPipelineStatus { identity: Some(identity.clone()), ..previous.cloned().unwrap_or_default() };
        write_status(api, &pipeline.name_any(), &status).await?;
    }
    let kept = format!(
        "the pipeline's AWS resources are in account {}, region {}, named after `{}`",
        identity.account_id, identity.region, identity.name_prefix
    );
    report.identity = Some(identity);
    match refused {
        Some(change) if change.account_moved => {
            report.parts.push((IDENTITY_KEPT, PartState::Failed(Error::IdentityChange(change.message))));
            return Ok(report);
        }
        Some(change) => report.parts.push((IDENTITY_KEPT, PartState::Degraded(Error::IdentityChange(change.message)))),
        None => report.parts.push((IDENTITY_KEPT, PartState::Ready(kept))),
    }
    let clients = context.account.clients(&config.region);
    let names = &config.names;
    let owner = Owner::of(pipeline, names, &context.cluster);

    provision_streams(&mut report, &clients, &config, &owner).await;

    let bucket = bucket::ensure(&clients, &names.bucket, &owner, config.delivery.expire_after_days).await;
    report.bucket = record(&mut report, BUCKET_READY, bucket, |bucket| format!("S3 bucket {} is private and encrypted", bucket.name));

    // The catalog needs only the bucket's name, so it proceeds while the delivery waits.
    let catalog = ensure_catalog(&clients, &config, account_id, &owner).await;
    let refused = matches!(catalog, Err(Error::UnsafeChange { .. }));
    if let Some((database, table)) = record(&mut report, CATALOG_READY, catalog, |(database, table)| {
        format!("Glue table {}.{} is ready for Athena", database.name, table.name)
    }) {
        report.glue_database = Some(database);
        report.glue_table = Some(table);
    }

    if refused {
        // Firehose and the aggregator keep writing what they write: the refused format in the
        // same prefixes is what the refusal prevents.
        let held = "left as it is while the catalog refuses the spec change (see CatalogReady)";
        report.parts.push((DELIVERY_READY, PartState::Pending(held.into())));
        report.parts.push((AGGREGATOR_READY, PartState::Pending(held.into())));
        return Ok(report);
    }
    provision_delivery(&mut report, &clients, &config, account_id, &owner).await;
    let delivery = report.parts.iter().find(|(kind, _)| *kind == DELIVERY_READY).map(|(_, state)| state);
    let reader = output_reader(config.delivery.writer, delivery.expect("provision_delivery files DeliveryReady"));
    provision_aggregator(&mut report, pipeline, &config, context, reader).await;
    Ok(report)
}

/// Whether what the aggregator writes to the output stream is read. A Firehose delivery stream
/// reads its Kinesis source from LATEST as of when it became ACTIVE: records written before then
/// are never delivered.
#[derive(Debug, PartialEq, Eq)]
enum OutputReader {
    /// Read by an ACTIVE delivery stream, or nothing to read (the aggregator writes the files).
    Reading,
    /// Not read (yet): the delivery stream is missing, being created or recreated; why.
    NotYet(String),
    /// The delivery stream's state could not be learnt this time.
    Unknown,
}

fn output_reader(writer: DeliveryWriter, delivery: &PartState) -> OutputReader {
    match (writer, delivery) {
        // Degraded: the delivery stream reads, only a change to it failed.
        (DeliveryWriter::Aggregator, _) | (DeliveryWriter::Firehose, PartState::Ready(_) | PartState::Degraded(_)) => OutputReader::Reading,
        (DeliveryWriter::Firehose, PartState::Pending(why)) => OutputReader::NotYet(why.clone()),
        (DeliveryWriter::Firehose, PartState::Failed(_)) => OutputReader::Unknown,
    }
}

/// Both streams, one condition; each stream is there for what needs it (the aggregator reads
/// the input, the delivery the output) as soon as it is usable, whatever the other's state.
async fn provision_streams(report: &mut Report, clients: &AwsClients, config: &PipelineConfig, owner: &Owner) {
    let names = &config.names;
    let active = |stream: &AwsResourceRef| format!("Kinesis stream {} is active", stream.name);
    let input = streams::ensure(clients, &names.input_stream, owner, &config.input_stream, "spec.streams.input").await;
    let (input, input_state) = settle(report, input, active);
    let output = streams::ensure(clients, &names.output_stream, owner, &config.output_stream, "spec.streams.output").await;
    let (output, output_state) = settle(report, output, active);
    report.parts.push((STREAMS_READY, input_state.and(output_state)));
    report.input_stream = input;
    report.output_stream = output;
}

/// The delivery needs the output stream, the bucket and the catalog (for Parquet conversion);
/// with the aggregator writing the files there is none.
async fn provision_delivery(report: &mut Report, clients: &AwsClients, config: &PipelineConfig, account_id: &str, owner: &Owner) {
    if config.delivery.writer == DeliveryWriter::Aggregator {
        report.without_firehose = true;
        let direct = without_firehose(clients, &config.names, owner).await;
        record(report, DELIVERY_READY, direct, |()| "the aggregator writes Parquet files into the bucket itself (no Firehose)".to_owned());
        return;
    }
    let (Some(output), Some(bucket)) = (report.output_stream.clone(), report.bucket.clone()) else {
        report.parts.push((DELIVERY_READY, PartState::Pending("waiting for the output stream and the bucket".into())));
        return;
    };
    let delivery = ensure_delivery(clients, config, account_id, owner, (&output, &bucket)).await;
    if let Some((role, stream)) =
        record(report, DELIVERY_READY, delivery, |(_, stream)| format!("Firehose delivery stream {} writes to the bucket", stream.name))
    {
        report.firehose_role = Some(role);
        report.delivery_stream = Some(stream);
    }
}

/// The aggregator reads the input stream, writes the output stream and checkpoints in the bucket;
/// it runs only while what it writes is read, and is paused while it is not.
async fn provision_aggregator(
    report: &mut Report,
    pipeline: &MetricsPipeline,
    config: &PipelineConfig,
    context: &Context,
    reader: OutputReader,
) {
    if report.input_stream.is_none() || report.bucket.is_none() {
        report.parts.push((AGGREGATOR_READY, PartState::Pending("waiting for the streams and the bucket".into())));
        return;
    }
    let unread = match reader {
        OutputReader::Reading => None,
        OutputReader::NotYet(why) => Some(why),
        OutputReader::Unknown => {
            // Neither started nor stopped on a guess: the aggregator stays as it is until the
            // delivery stream can be seen again.
            let waiting =
                "waiting for the Firehose delivery stream (see DeliveryReady): the aggregator runs only while it reads the output stream";
            report.parts.push((AGGREGATOR_READY, PartState::Pending(waiting.into())));
            return;
        }
    };
    let aggregator = workload::ensure(&context.client, pipeline, config, &context.settings.workload, unread.is_some()).await;
    let aggregator = aggregator.map(|(aggregator, mut outcome)| {
        if let Some(why) = &unread {
            outcome.pending = Some(format!(
                "aggregator {} is paused (replicas: 0) until the Firehose delivery stream reads the output stream, so that \
                 nothing it writes is lost; its input waits in the input stream: {why}",
                aggregator.deployment
            ));
        }
        (aggregator, outcome)
    });
    // Replica counts are worth showing while the rollout is still pending.
    report.aggregator = aggregator.as_ref().ok().map(|(aggregator, _)| aggregator.clone());
    record(report, AGGREGATOR_READY, aggregator, |aggregator| match config.aggregator.replicas {
        0 => format!("aggregator {} is paused (replicas: 0)", aggregator.deployment),
        _ => format!("aggregator {} is running", aggregator.deployment),
    });
}

/// Files one part's result into the report; returns its value when what depends on the part
/// can use it (ready, or degraded: working as it stands).
fn record<T>(
    report: &mut Report,
    condition: &'static str,
    result: Result<(T, Outcome), Error>,
    ready_message: impl FnOnce(&T) -> String,
) -> Option<T> {
    let (value, state) = settle(report, result, ready_message);
    report.parts.push((condition, state));
    value
}

/// One `ensure`'s result as the part's state, and its value if it is usable; its changes go
/// into the report.
fn settle<T>(report: &mut Report, result: Result<(T, Outcome), Error>, ready_message: impl FnOnce(&T) -> String) -> (Option<T>, PartState) {
    match result {
        Ok((value, outcome)) => {
            report.changes.extend(outcome.changes);
            match (outcome.pending, outcome.degraded) {
                (Some(pending), _) => (None, PartState::Pending(pending)),
                (None, Some(error)) => {
                    tracing::info!(%error, "part usable, but a change to it failed");
                    (Some(value), PartState::Degraded(error))
                }
                (None, None) => {
                    let message = ready_message(&value);
                    (Some(value), PartState::Ready(message))
                }
            }
        }
        Err(error) => {
            tracing::info!(%error, "part not ready");
            (None, PartState::Failed(error))
        }
    }
}

async fn ensure_catalog(
    clients: &AwsClients,
    config: &PipelineConfig,
    account_id: &str,
    owner: &Owner,
) -> Result<((AwsResourceRef, AwsResourceRef), Outcome), Error> {
    let names = &config.names;
    let (database, mut outcome) = catalog::ensure_database(clients, &names.glue_database, owner, account_id).await?;
    let spec = catalog::TableSpec {
        database: &names.glue_database,
        table: &names.glue_table,
        bucket: &names.bucket,
        format: config.delivery.format,
        partitions: &config.partitions,
        owner,
    };
    let (table, table_outcome) = catalog::ensure_table(clients, &spec, account_id).await?;
    outcome.merge(table_outcome);
    Ok(((database, table), outcome))
}

async fn ensure_delivery(
    clients: &AwsClients,
    config: &PipelineConfig,
    account_id: &str,
    owner: &Owner,
    (output, bucket): (&AwsResourceRef, &AwsResourceRef),
) -> Result<((AwsResourceRef, AwsResourceRef), Outcome), Error> {
    let names = &config.names;
    let (output_arn, bucket_arn) = (output.arn.clone().unwrap_or_default(), bucket.arn.clone().unwrap_or_default());
    let scope = role::PolicyScope {
        account_id,
        region: &config.region,
        output_stream_arn: &output_arn,
        bucket_arn: &bucket_arn,
        glue_database: &names.glue_database,
        glue_table: &names.glue_table,
    };
    let (role, mut outcome) = role::ensure(clients, &names.firehose_role, &names.firehose_role_policy, owner, &scope).await?;
    let connections = delivery::Connections {
        output_stream_arn: &output_arn,
        role_arn: role.arn.as_deref().unwrap_or_default(),
        bucket_arn: &bucket_arn,
        glue_database: &names.glue_database,
        glue_table: &names.glue_table,
        region: &config.region,
    };
    let desired = delivery::desired(&config.delivery, &connections);
    let (stream, stream_outcome) = delivery::ensure(clients, &names.delivery_stream, owner, &desired).await?;
    outcome.merge(stream_outcome);
    Ok(((role, stream), outcome))
}

/// With the aggregator writing the files, a delivery stream (and its role) left from an earlier
/// `writer: Firehose` would write JSON or Parquet beside it: both go.
async fn without_firehose(clients: &AwsClients, names: &PipelineNames, owner: &Owner) -> Result<((), Outcome), Error> {
    let mut outcome = Outcome::default();
    if let Some(deleting) = delivery::delete(clients, &names.delivery_stream, owner).await? {
        outcome.changed(format!("deleting Firehose delivery stream {} (the aggregator writes the files now)", names.delivery_stream));
        outcome.pending = Some(format!("waiting for the deletion of {deleting}"));
        return Ok(((), outcome));
    }
    role::delete(clients, &names.firehose_role, owner).await?;
    Ok(((), outcome))
}

/// Removes what the pipeline created, newest dependency first; the finalizer stays until all of
/// it is gone, and meanwhile `Ready` says what the deletion waits for. With `deletionPolicy:
/// Retain` the bucket and the catalog stay; with `Orphan`, everything in AWS.
async fn cleanup(pipeline: &MetricsPipeline, api: &Api<MetricsPipeline>, context: &Context) -> Result<Action, Error> {
    // The stored status, not the cached one: a deletion right after the first reconcile must
    // find the identity that reconcile recorded.
    let mut pipeline = pipeline.clone();
    pipeline.status = api.get_status(&pipeline.name_any()).await?.status;
    let pipeline = &pipeline;
    let recorded = pipeline.status.as_ref().and_then(|status| status.identity.as_ref());
    let region = recorded.map(|identity| identity.region.clone());
    let Some(region) = region.or_else(|| pipeline.spec.region.clone()).or_else(|| context.account.target.default_region.clone()) else {
        return Ok(Action::await_change());
    };
    let result = remove(pipeline, context, &region).await;
    if let Err(problem) = &result {
        let deleting = status::deleting(pipeline.status.as_ref(), problem, Time(jiff::Timestamp::now()));
        write_status(api, &pipeline.name_any(), &deleting).await?;
    }
    result
}

/// Deletes by the recorded identity (the spec may have been changed since), else by the names
/// the spec derives (a pipeline that never recorded one created nothing since this version).
async fn remove(pipeline: &MetricsPipeline, context: &Context, region: &str) -> Result<Action, Error> {
    let account_id = &context.account.target.account_id;
    let mut names = PipelineNames::of(pipeline, account_id, region);
    let recorded = pipeline.status.as_ref().and_then(|status| status.identity.as_ref());
    if let Some(identity) = recorded {
        identity.name(&mut names);
    }
    let clients = context.account.clients(region);
    let owner = &Owner::of(pipeline, &names, &context.cluster);
    let retain = pipeline.spec.deletion_policy == DeletionPolicy::Retain;

    // The aggregator stops first: it checkpoints into the bucket and reads and writes the streams.
    if !workload::delete(&context.client, &pipeline.namespace().unwrap_or_default(), &names.aggregator, &names.owner).await? {
        return Err(Error::Deleting(format!("aggregator Deployment {} (its pod stops and checkpoints first)", names.aggregator)));
    }
    if pipeline.spec.deletion_policy == DeletionPolicy::Orphan {
        let uid = &owner.uid;
        let note = format!(
            "left every AWS resource of the pipeline in place, tagged with its uid {uid} (deletionPolicy: Orphan); a pipeline of \
             this namespace and name with spec.adoptFrom.pipelineUid: {uid} takes them over"
        );
        publish(context, pipeline, EventType::Normal, "Deleted", "Cleanup", &note).await;
        return Ok(Action::await_change());
    }
    // Orphaned above whatever the account: only deleting needs the account that made them.
    if let Some(message) = recorded.and_then(|identity| identity.foreign_account(account_id)) {
        return Err(Error::IdentityChange(message));
    }
    // Meanwhile Firehose reads the output stream, writes the bucket and uses its role: all stay.
    drain(pipeline, context, &clients, &names).await?;
    let mut waiting = Vec::new();
    if let Some(deleting) = delivery::delete(&clients, &names.delivery_stream, owner).await? {
        waiting.push(deleting);
    }
    let mut kept = Vec::new();
    if !retain {
        kept.extend(catalog::delete(&clients, &names.glue_database, &names.glue_table, owner).await?);
    }
    if waiting.is_empty() {
        // The role goes only once nothing uses it.
        role::delete(&clients, &names.firehose_role, owner).await?;
    }
    if !retain {
        bucket::delete(&clients, &names.bucket, owner).await?;
    }
    for stream in [&names.output_stream, &names.input_stream] {
        if !streams::delete(&clients, stream, owner).await? {
            waiting.push(format!("Kinesis stream {stream}"));
        }
    }
    if !waiting.is_empty() {
        return Err(Error::Deleting(waiting.join(", ")));
    }
    if retain {
        kept.push(format!("kept S3 bucket {} and Glue database {} (deletionPolicy: Retain)", names.bucket, names.glue_database));
    }
    let kept: String = kept.iter().map(|note| format!("; {note}")).collect();
    publish(context, pipeline, EventType::Normal, "Deleted", "Cleanup", &format!("deleted the pipeline's AWS resources{kept}")).await;
    Ok(Action::await_change())
}

/// Waits until Firehose has had its buffer interval for the newest aggregate on the output
/// stream, looking again only when that time is up. Records that keep coming (another writer)
/// hold the deletion at most twice that long; then it goes on, with a Warning event.
async fn drain(pipeline: &MetricsPipeline, context: &Context, clients: &AwsClients, names: &PipelineNames) -> Result<(), Error> {
    let Some(undelivered) = delivery::undelivered(clients, &names.delivery_stream, &names.output_stream).await? else {
        return Ok(());
    };
    let deleting_for = pipeline
        .metadata
        .deletion_timestamp
        .as_ref()
        .map_or(Duration::ZERO, |since| jiff::Timestamp::now().duration_since(since.0).unsigned_abs());
    if deleting_for < undelivered.window * 2 {
        return Err(Error::Draining { why: undelivered.why, left: undelivered.left });
    }
    let note = format!(
        "deleting Firehose delivery stream {} after {} s although records keep arriving on {} (another writer?): what it \
         buffered of them is lost",
        names.delivery_stream,
        deleting_for.as_secs(),
        names.output_stream
    );
    publish(context, pipeline, EventType::Warning, "DrainCut", "Cleanup", &note).await;
    Ok(())
}

async fn publish(context: &Context, pipeline: &MetricsPipeline, type_: EventType, reason: &str, action: &str, note: &str) {
    // The Events API caps notes at 1 KiB.
    let note: String = note.chars().take(1_000).collect();
    let event = KubeEvent { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
    if let Err(error) = context.recorder.publish(&event, &pipeline.object_ref(&())).await {
        tracing::warn!(%error, "cannot publish an event");
    }
}

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
