//! The reconciler's wiring: what wakes a reconcile, whose turn it is, how a failure is retried,
//! and what the operator remembers of each pipeline between reconciles. A reconcile is a
//! finalizer around [`provision::apply`] (validate → ensure each AWS part in dependency order →
//! write status) and [`cleanup::cleanup`] (delete in reverse order, honouring `deletionPolicy`).

mod cleanup;
mod observe;
mod provision;

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use metrics_pipeline_api::config::AwsTarget;
use metrics_pipeline_api::namespace::NamespacePolicy;
use metrics_pipeline_api::pipeline::{MetricsPipeline, Phase, is_paused};

use crate::aws::{AwsCalls, AwsClients, Memory};
use crate::error::{AwsError, AwsErrorKind, Error};
use crate::managed::{FIELD_MANAGER, write_status};
use crate::metrics::{Metrics, ReconcileResult};
use crate::status::{self, Part};
use crate::turns::Turns;
use crate::workload::{self, WorkloadSettings};
use metrics_pipeline_runtime::sdk::assuming;

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

/// The AWS account the operator works in: its identity, and one set of clients per region; and
/// the same for each IAM role a namespace maps to.
pub struct AwsAccount {
    sdk: SdkConfig,
    pub target: AwsTarget,
    pub calls: AwsCalls,
    clients: Mutex<HashMap<String, AwsClients>>,
    /// What AWS refused lately and the tags read lately, in any region (see [`Memory`]).
    memory: Memory,
    /// The account as each role assumed so far, by the role's ARN.
    roles: Mutex<HashMap<String, Arc<AwsAccount>>>,
}

impl AwsAccount {
    /// `memory` is shared by the clients of every region: see [`Memory::for_resync`].
    pub fn new(sdk: SdkConfig, target: AwsTarget, calls: AwsCalls, memory: Memory) -> Self {
        Self { sdk, target, calls, clients: Mutex::default(), memory, roles: Mutex::default() }
    }

    /// The operator acting as `role` (its ARN and account), or as itself. A role's credentials
    /// come from STS with the operator's own, and are renewed before they expire; a role the
    /// operator may not assume is an error that says what to allow, and is tried again next time.
    pub async fn acting_as(self: &Arc<Self>, role: Option<&(String, String)>) -> Result<Arc<AwsAccount>, Error> {
        let Some((arn, account_id)) = role else { return Ok(self.clone()) };
        if let Some(account) = self.roles.lock().expect("no panics while holding the lock").get(arn) {
            return Ok(account.clone());
        }
        let sdk = assuming(&self.sdk, arn, FIELD_MANAGER).await;
        if let Err(error) = aws_sdk_sts::Client::new(&sdk).get_caller_identity().send().await {
            let said = aws_sdk_sts::error::DisplayErrorContext(&error).to_string();
            let refused = said.contains("AccessDenied") || said.contains("not authorized");
            let (kind, message) = if refused {
                let message = "the operator may not assume it: the role's trust policy must let the operator's identity assume \
                               it, and the operator's own policy must allow sts:AssumeRole on it";
                (AwsErrorKind::AccessDenied, message.to_owned())
            } else {
                (AwsErrorKind::Unavailable, format!("STS could not be reached: {said}"))
            };
            let code = refused.then(|| "AccessDenied".to_owned());
            return Err(AwsError::new(format!("assuming IAM role {arn}"), kind, code, message).into());
        }
        let target = AwsTarget { account_id: account_id.clone(), default_region: self.target.default_region.clone() };
        let account = Arc::new(AwsAccount::new(sdk, target, self.calls.clone(), self.memory.for_another_account()));
        Ok(self.roles.lock().expect("no panics while holding the lock").entry(arn.clone()).or_insert(account).clone())
    }

    fn clients(&self, region: &str) -> AwsClients {
        let mut clients = self.clients.lock().expect("no panics while holding the lock");
        clients.entry(region.to_owned()).or_insert_with(|| AwsClients::sharing(&self.sdk, region, &self.calls, &self.memory)).clone()
    }
}

pub struct Context {
    pub client: Client,
    pub account: Arc<AwsAccount>,
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
    /// Since when the deletion waits for Firehose to deliver what it buffered, by this
    /// operator's clock (the deletion timestamp is the API server's).
    draining_since: Option<Instant>,
}

/// A pipeline waiting for parts (AWS, or its rollout) at one generation of its spec.
#[derive(Debug, PartialEq)]
struct Waiting {
    generation: Option<i64>,
    /// Each part waited for, since when it has been waited for without a break.
    parts: Vec<(Part, Instant)>,
    looks: u32,
}

impl Context {
    pub fn new(client: Client, account: AwsAccount, cluster: String, metrics: Arc<Metrics>, settings: Settings) -> Self {
        let instance = std::env::var("POD_NAME").ok();
        let recorder = Recorder::new(client.clone(), Reporter { controller: FIELD_MANAGER.into(), instance });
        let turns = Turns::new(settings.concurrency.into());
        Self { client, account: Arc::new(account), recorder, metrics, settings, cluster, turns, tracks: Mutex::default() }
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

    /// `pipeline` waits (again) for `parts`: the longest any of them has been waited for without
    /// a break at this generation of its spec (a changed spec starts every clock afresh), and when
    /// to look next: soon while AWS usually finishes, then less often, and soon again once a part
    /// came up or another is waited for.
    fn still_waiting(&self, pipeline: &MetricsPipeline, parts: Vec<Part>) -> (Duration, Duration) {
        let generation = pipeline.metadata.generation;
        let now = Instant::now();
        let (waited, looks) = self.track(pipeline, |track| {
            let waiting = match &mut track.waiting {
                Some(waiting) if waiting.generation == generation => waiting,
                other => other.insert(Waiting { generation, parts: Vec::new(), looks: 0 }),
            };
            let clocks: Vec<(Part, Instant)> = parts
                .iter()
                .map(|&part| waiting.parts.iter().find(|(waited, _)| *waited == part).copied().unwrap_or((part, now)))
                .collect();
            if clocks.iter().map(|(part, _)| part).ne(waiting.parts.iter().map(|(part, _)| part)) {
                waiting.looks = 0;
            }
            waiting.parts = clocks;
            waiting.looks = waiting.looks.saturating_add(1);
            let waited = waiting.parts.iter().map(|(_, since)| now.duration_since(*since)).max().unwrap_or_default();
            (waited, waiting.looks)
        });
        (waited, backoff(looks, self.settings.pending_requeue, self.settings.pending_cap, rand::random()))
    }

    /// How long the deletion of `pipeline` has waited for Firehose to deliver; from now, the first time.
    fn draining_for(&self, pipeline: &MetricsPipeline) -> Duration {
        self.track(pipeline, |track| track.draining_since.get_or_insert_with(Instant::now).elapsed())
    }

    fn done_waiting(&self, pipeline: &MetricsPipeline) {
        self.track(pipeline, |track| {
            track.waiting = None;
            track.draining_since = None;
        });
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
    let turns = context.turns.clone();
    Controller::for_stream(changes(watched, reconcile_inputs), pipelines)
        .owns_stream(changes(aggregators, rollout))
        .graceful_shutdown_on(async move {
            shutdown.await;
            turns.close();
        })
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
/// deletion, its finalizers (the finalizer's addition is what starts the first apply) and
/// whether it is paused.
fn reconcile_inputs(pipeline: &MetricsPipeline) -> u64 {
    let metadata = &pipeline.metadata;
    digest(&(metadata.generation, metadata.deletion_timestamp.is_some(), &metadata.finalizers, is_paused(pipeline)))
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
    // Shutting down: the next leader reconciles it.
    let Some(_turn) = context.turns.take(awaited).await else { return Ok(Action::await_change()) };
    // Boxed once it has its turn: a thousand reconciles waiting for one stay small.
    Box::pin(reconcile_now(pipeline, context)).await
}

async fn reconcile_now(pipeline: Arc<MetricsPipeline>, context: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = pipeline.namespace().unwrap_or_default();
    let api: Api<MetricsPipeline> = Api::namespaced(context.client.clone(), &namespace);
    // The pipeline as stored now, not as the watch had it when this reconcile was queued: it may
    // have waited minutes for its turn, and a reconcile the aggregator's Deployment starts can
    // come before the watch delivered the last status write.
    let name = pipeline.name_any();
    let Some(pipeline) = api.get_opt(&name).await.map_err(Error::Kube)? else {
        // Gone without its finalizer's last reconcile (removed by hand): nothing of it is kept.
        context.track(&pipeline, |track| *track = Track::default());
        context.metrics.forget_pipeline(&format!("{namespace}/{name}"));
        return Ok(Action::await_change());
    };
    if is_paused(&pipeline) {
        let status = status::paused(pipeline.status.as_ref(), pipeline.metadata.generation, Time(jiff::Timestamp::now()));
        if pipeline.status.as_ref().and_then(|status| status.phase) != Some(Phase::Paused) {
            publish(&context, &pipeline, EventType::Normal, "Paused", "Reconcile", &status::ready_message(&status)).await;
        }
        if pipeline.status.as_ref() != Some(&status) {
            write_status(&api, &name, &status).await?;
        }
        context.metrics.observe_reconcile(
            &format!("{namespace}/{name}"),
            started.elapsed(),
            ReconcileResult::Status(Phase::Paused, Some("Paused")),
        );
        return Ok(Action::await_change());
    }
    let pipeline = Arc::new(pipeline);
    // What the status says when `apply` wrote one: that, not the closure's `Ok`, is the result.
    let written = Mutex::new(None);
    let result = finalizer(&api, FINALIZER, pipeline, |event| async {
        match event {
            Finalizer::Apply(pipeline) => {
                let (action, phase, reason) = provision::apply(&pipeline, &api, &context).await?;
                *written.lock().expect("no panics while holding the lock") = Some((phase, reason));
                Ok(action)
            }
            Finalizer::Cleanup(pipeline) => {
                let action = cleanup::cleanup(&pipeline, &api, &context).await?;
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
    context.metrics.observe_reconcile(&format!("{namespace}/{name}"), started.elapsed(), counted);
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

/// The operator as the pipeline's namespace says it acts (the namespace's IAM role, or itself),
/// and what the namespace allows its pipelines.
async fn acting_for(context: &Context, namespace: &str) -> Result<(Arc<AwsAccount>, NamespacePolicy), Error> {
    let namespaces: Api<Namespace> = Api::all(context.client.clone());
    let annotations = match namespaces.get(namespace).await {
        Ok(found) => found.metadata.annotations.unwrap_or_default(),
        // Not read, not ignored: an administrator's allowances there would be bypassed.
        Err(kube::Error::Api(refusal)) if refusal.code == 403 => {
            return Err(Error::NamespacePolicy(format!(
                "the operator may not read namespace {namespace}, whose annotations say what AWS identity, regions and shards \
                 its pipelines have: its RBAC must allow get on namespaces (the chart's ClusterRole does)"
            )));
        }
        Err(error) => return Err(error.into()),
    };
    let policy = NamespacePolicy::of(namespace, &annotations).map_err(Error::NamespacePolicy)?;
    Ok((context.account.acting_as(policy.role.as_ref()).await?, policy))
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
mod tests;
