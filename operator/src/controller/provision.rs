//! Provisioning: every part of a pipeline ensured in dependency order, each as far as its inputs
//! allow, and the status written from what each part reports.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use metrics_pipeline_api::config::PipelineConfig;
use metrics_pipeline_api::identity;
use metrics_pipeline_api::namespace;
use metrics_pipeline_api::naming::PipelineNames;
use metrics_pipeline_api::pipeline::{AwsResourceRef, DeliveryWriter, MetricsPipeline, MetricsPipelineStatus, Phase};
use metrics_pipeline_api::validation::{ValidationErrors, validate};

use super::observe::observe;
use super::{Context, acting_for, publish};
use crate::aws::bucket::{Bucket, BucketSpec};
use crate::aws::catalog::{DesiredTable, GlueDatabase, GlueTable, TableSpec};
use crate::aws::delivery::{self, DeliverySettings, DeliveryStream};
use crate::aws::resource::{AwsResource, delete, ensure};
use crate::aws::role::{FirehoseRole, PolicyScope, RolePolicies};
use crate::aws::streams::Stream;
use crate::aws::{AwsClients, TagsAs};
use crate::data_flow;
use crate::error::Error;
use crate::managed::{Outcome, Owner, Removal, write_status};
use crate::status::{self, DataFlow, PartState, Parts, Report, Verdict};
use crate::workload;

/// Provisions every part and writes the status; returns the next look and what the status says
/// (phase, and the reason of its first problem).
pub(super) async fn apply(
    pipeline: &MetricsPipeline,
    api: &Api<MetricsPipeline>,
    context: &Context,
) -> Result<(Action, Phase, Option<&'static str>), Error> {
    let previous = pipeline.status.clone();
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
    let stalled = report.data_flow.as_ref().is_some_and(|flow| flow.judgement.flowing == Some(false));
    let action = match verdict {
        // Whether data flows again shows in the aggregator's next reports, not in a watch event.
        Verdict::Ready | Verdict::Terminal if stalled => Action::requeue(context.resync().min(data_flow::LOOK_AT_A_STALL)),
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
    let (account, policy) = match acting_for(context, &pipeline.namespace().unwrap_or_default()).await {
        Ok(acting) => acting,
        Err(error @ Error::Kube(_)) => return Err(error),
        // Who the operator acts as for the namespace: the identity part, reported like any.
        Err(error) => {
            report.parts.identity = Some(PartState::Failed(error));
            return Ok(report);
        }
    };
    let mut config = match validate(pipeline, &account.target) {
        Ok(config) => config,
        Err(errors) => {
            report.invalid_spec = Some(Error::InvalidSpec(errors));
            return Ok(report);
        }
    };
    let account_id = &account.target.account_id;
    let recorded = previous.and_then(|status| status.identity.as_ref());
    let (identity, refused) = identity::settle(&mut config, recorded, &pipeline.spec, account_id);
    // After the recorded identity is settled: the region it puts back is where the pipeline is.
    let holders = if policy.max_shards.is_some() {
        let others = api.list(&ListParams::default()).await?.items;
        let asks = |other: &MetricsPipeline| {
            validate(other, &account.target).ok().filter(|config| policy.admits_region(config)).map(|config| namespace::shards(&config))
        };
        namespace::shard_holders(pipeline, &others, asks)
    } else {
        Vec::new()
    };
    let disallowed = policy.check(&config, pipeline.spec.adopt.is_some(), &holders);
    if !disallowed.is_empty() {
        report.invalid_spec = Some(Error::InvalidSpec(ValidationErrors(disallowed)));
        return Ok(report);
    }
    report.shards = Some(namespace::shards(&config));
    config.aws_role = policy.role.map(|(arn, _)| arn);
    let observing = pipeline.spec.observing_until();
    // Observing makes nothing, so an adoption's names may still be corrected before it is confirmed.
    if recorded.is_none() && observing.is_none() {
        // Recorded before anything is created, so that a stop right after a create still
        // finds the resource under the name it was made with, whatever the spec says by then.
        let status = MetricsPipelineStatus { identity: Some(identity.clone()), ..previous.cloned().unwrap_or_default() };
        write_status(api, &pipeline.name_any(), &status).await?;
    }
    let kept = format!(
        "the pipeline's AWS resources are in account {}, region {}, named after `{}`",
        identity.account_id, identity.region, identity.name_prefix
    );
    // Not shown while observing a pipeline that made nothing: there is none to keep yet.
    report.identity = (recorded.is_some() || observing.is_none()).then_some(identity);
    match refused {
        Some(change) if change.account_moved => {
            report.parts.identity = Some(PartState::Failed(Error::IdentityChange(change.message)));
            return Ok(report);
        }
        Some(change) => report.parts.identity = Some(PartState::Degraded(Error::IdentityChange(change.message))),
        None => report.parts.identity = Some(PartState::Ready(kept)),
    }
    let clients = account.clients(&config.region);
    let names = &config.names;
    let owner = Owner::of(pipeline, names, &context.cluster);
    if let Some(until) = observing {
        observe(&mut report, &clients, &config, account_id, &owner, until).await;
        return Ok(report);
    }
    report.tag_keys = Some(pipeline.spec.tags.keys().cloned().collect());

    provision_streams(&mut report, &clients, &config, &owner).await;

    let bucket_spec = BucketSpec { expire_after_days: config.delivery.expire_after_days };
    let bucket = ensure(&Bucket { name: &names.bucket, account_id }, &clients, &owner, &bucket_spec).await;
    report.bucket =
        record(&mut report, |parts| &mut parts.bucket, bucket, |bucket| format!("S3 bucket {} is private and encrypted", bucket.name));

    // The catalog needs only the bucket's name, so it proceeds while the delivery waits.
    let catalog = ensure_catalog(&clients, &config, account_id, &owner).await;
    let refused = matches!(catalog, Err(Error::UnsafeChange { .. }));
    if let Some((database, table)) = record(
        &mut report,
        |parts| &mut parts.catalog,
        catalog,
        |(database, table)| format!("Glue table {}.{} is ready for Athena", database.name, table.name),
    ) {
        report.glue_database = Some(database);
        report.glue_table = Some(table);
    }

    if refused {
        // Firehose and the aggregator keep writing what they write: the refused format in the
        // same prefixes is what the refusal prevents.
        let held = "left as it is while the catalog refuses the spec change (see CatalogReady)";
        report.parts.delivery = Some(PartState::Pending(held.into()));
        report.parts.aggregator = Some(PartState::Pending(held.into()));
        return Ok(report);
    }
    let reader = provision_delivery(&mut report, &clients, &config, account_id, &owner).await;
    if provision_aggregator(&mut report, pipeline, &config, context, reader).await {
        report.data_flow = watch_data_flow(&report, &clients, &config).await;
    }
    Ok(report)
}

/// Whether data flows, from the aggregator's report beside its checkpoint.
async fn watch_data_flow(report: &Report, clients: &AwsClients, config: &PipelineConfig) -> Option<DataFlow> {
    let bucket = report.bucket.as_ref()?;
    let now = jiff::Timestamp::now().as_millisecond();
    Some(match data_flow::read(clients, &bucket.name).await {
        Ok(found) => DataFlow { judgement: data_flow::judge(found.as_ref(), &config.windowing, now), report: found },
        Err(why) => DataFlow { report: None, judgement: data_flow::unreadable(why) },
    })
}

/// Whether what the aggregator writes to the output stream is read. A Firehose delivery stream
/// reads its Kinesis source from LATEST as of when it became ACTIVE: records written before then
/// are never delivered.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum OutputReader {
    /// Read by an ACTIVE delivery stream, or nothing to read (the aggregator writes the files).
    Reading,
    /// Not read (yet): the delivery stream is missing, being created or recreated; why.
    NotYet(String),
    /// The delivery stream's state could not be learnt this time.
    Unknown,
}

/// Whether the Firehose delivery stream in state `delivery` reads the output stream.
pub(super) fn output_reader(delivery: &PartState) -> OutputReader {
    match delivery {
        // Degraded: the delivery stream reads, only a change to it failed.
        PartState::Ready(_) | PartState::Degraded(_) => OutputReader::Reading,
        PartState::Pending(why) => OutputReader::NotYet(why.clone()),
        PartState::Failed(_) => OutputReader::Unknown,
    }
}

/// Both streams, one condition; each stream is there for what needs it (the aggregator reads
/// the input, the delivery the output) as soon as it is usable, whatever the other's state.
async fn provision_streams(report: &mut Report, clients: &AwsClients, config: &PipelineConfig, owner: &Owner) {
    let names = &config.names;
    let active = |stream: &AwsResourceRef| format!("Kinesis stream {} is active", stream.name);
    let input = ensure(&Stream::input(&names.input_stream), clients, owner, &config.input_stream).await;
    let (input, input_state) = settle(report, input, active);
    let output = ensure(&Stream::output(&names.output_stream), clients, owner, &config.output_stream).await;
    let (output, output_state) = settle(report, output, active);
    report.parts.streams = Some(input_state.and(output_state));
    report.input_stream = input;
    report.output_stream = output;
}

/// The delivery needs the output stream, the bucket and the catalog (for Parquet conversion);
/// with the aggregator writing the files there is none. Says whether the output stream is read.
async fn provision_delivery(
    report: &mut Report,
    clients: &AwsClients,
    config: &PipelineConfig,
    account_id: &str,
    owner: &Owner,
) -> OutputReader {
    if config.delivery.writer == DeliveryWriter::Aggregator {
        report.without_firehose = true;
        let direct = without_firehose(clients, &config.names, owner).await;
        record(
            report,
            |parts| &mut parts.delivery,
            direct,
            |()| "the aggregator writes Parquet files into the bucket itself (no Firehose)".to_owned(),
        );
        return OutputReader::Reading;
    }
    let (Some(output), Some(bucket)) = (report.output_stream.clone(), report.bucket.clone()) else {
        let waiting = "waiting for the output stream and the bucket".to_owned();
        report.parts.delivery = Some(PartState::Pending(waiting.clone()));
        return OutputReader::NotYet(waiting);
    };
    let delivery = ensure_delivery(clients, config, account_id, owner, (&output, &bucket)).await;
    let (made, state) = settle(report, delivery, |(_, stream)| format!("Firehose delivery stream {} writes to the bucket", stream.name));
    let reader = output_reader(&state);
    report.parts.delivery = Some(state);
    if let Some((role, stream)) = made {
        report.firehose_role = Some(role);
        report.delivery_stream = Some(stream);
    }
    reader
}

/// The aggregator reads the input stream, writes the output stream and checkpoints in the bucket;
/// it runs only while what it writes is read, and is paused while it is not. Says whether it is
/// meant to run now (deployed with a replica, ready or not): then it reports on the data flow.
async fn provision_aggregator(
    report: &mut Report,
    pipeline: &MetricsPipeline,
    config: &PipelineConfig,
    context: &Context,
    reader: OutputReader,
) -> bool {
    if report.input_stream.is_none() || report.bucket.is_none() {
        report.parts.aggregator = Some(PartState::Pending("waiting for the streams and the bucket".into()));
        return false;
    }
    let unread = match reader {
        OutputReader::Reading => None,
        OutputReader::NotYet(why) => Some(why),
        OutputReader::Unknown => {
            // Neither started nor stopped on a guess: the aggregator stays as it is until the
            // delivery stream can be seen again.
            let waiting =
                "waiting for the Firehose delivery stream (see DeliveryReady): the aggregator runs only while it reads the output stream";
            report.parts.aggregator = Some(PartState::Pending(waiting.into()));
            return false;
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
    let deployed = aggregator.is_ok();
    record(
        report,
        |parts| &mut parts.aggregator,
        aggregator,
        |aggregator| match config.aggregator.replicas {
            0 => format!("aggregator {} is paused (replicas: 0)", aggregator.deployment),
            _ => format!("aggregator {} is running", aggregator.deployment),
        },
    );
    deployed && unread.is_none() && config.aggregator.replicas > 0
}

/// Files one part's result into its place among the report's parts; returns its value when what
/// depends on the part can use it (ready, or degraded: working as it stands).
fn record<T>(
    report: &mut Report,
    place: fn(&mut Parts) -> &mut Option<PartState>,
    result: Result<(T, Outcome), Error>,
    ready_message: impl FnOnce(&T) -> String,
) -> Option<T> {
    let (value, state) = settle(report, result, ready_message);
    *place(&mut report.parts) = Some(state);
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
    let (database, mut outcome) = ensure(&GlueDatabase { name: &names.glue_database, account_id }, clients, owner, &()).await?;
    let (table, desired) = table(config, account_id, owner);
    let (table, table_outcome) = ensure(&table, clients, owner, &desired).await?;
    outcome.merge(table_outcome);
    Ok(((database, table), outcome))
}

/// The pipeline's Glue table, and what the spec asks of it.
pub(super) fn table<'a>(config: &'a PipelineConfig, account_id: &'a str, owner: &'a Owner) -> (GlueTable<'a>, DesiredTable<'a>) {
    let names = &config.names;
    let spec = TableSpec {
        database: &names.glue_database,
        table: &names.glue_table,
        bucket: &names.bucket,
        format: config.delivery.format,
        partitions: &config.partitions,
        owner,
    };
    (GlueTable { database: &names.glue_database, table: &names.glue_table, account_id }, DesiredTable::of(&spec))
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
    let policies = role_policies(config, account_id, &output_arn, &bucket_arn);
    let (role, mut outcome) = ensure(&FirehoseRole::of(names), clients, owner, &policies).await?;
    let desired = delivery_settings(config, &output_arn, role.arn.as_deref().unwrap_or_default(), &bucket_arn);
    let (stream, stream_outcome) = ensure(&DeliveryStream { name: &names.delivery_stream }, clients, owner, &desired).await?;
    outcome.merge(stream_outcome);
    Ok(((role, stream), outcome))
}

/// The grants of the Firehose role: read the output stream, write the bucket, read the table.
pub(super) fn role_policies(config: &PipelineConfig, account_id: &str, output_arn: &str, bucket_arn: &str) -> RolePolicies {
    let names = &config.names;
    RolePolicies::of(&PolicyScope {
        account_id,
        region: &config.region,
        output_stream_arn: output_arn,
        bucket_arn,
        glue_database: &names.glue_database,
        glue_table: &names.glue_table,
    })
}

/// What the spec asks of the delivery stream that reads `output_arn` as `role_arn` into `bucket_arn`.
pub(super) fn delivery_settings(config: &PipelineConfig, output_arn: &str, role_arn: &str, bucket_arn: &str) -> DeliverySettings {
    let names = &config.names;
    let connections = delivery::Connections {
        output_stream_arn: output_arn,
        role_arn,
        bucket_arn,
        glue_database: &names.glue_database,
        glue_table: &names.glue_table,
        region: &config.region,
    };
    delivery::desired(&config.delivery, &connections)
}

/// With the aggregator writing the files, a delivery stream (and its role) left from an earlier
/// `writer: Firehose` would write JSON or Parquet beside it: both go.
async fn without_firehose(clients: &AwsClients, names: &PipelineNames, owner: &Owner) -> Result<((), Outcome), Error> {
    let mut outcome = Outcome::default();
    if !owner.policy.deletes() {
        let delivery = DeliveryStream { name: &names.delivery_stream };
        if delivery.observe(clients, TagsAs::Cached).await?.is_some() {
            let what = format!("Firehose delivery stream {} and its IAM role {}", names.delivery_stream, names.firehose_role);
            return Err(Error::DeletionRefused { what, why: "the aggregator writes the files now (delivery.writer)".into() });
        }
    }
    // One left in place is not this pipeline's: it is not this pipeline's files either.
    if let Removal::Going(deleting) = delete(&DeliveryStream { name: &names.delivery_stream }, clients, owner).await? {
        outcome.changed(format!("deleting Firehose delivery stream {} (the aggregator writes the files now)", names.delivery_stream));
        outcome.pending = Some(format!("waiting for the deletion of {deleting}"));
        return Ok(((), outcome));
    }
    delete(&FirehoseRole::of(names), clients, owner).await?;
    Ok(((), outcome))
}
