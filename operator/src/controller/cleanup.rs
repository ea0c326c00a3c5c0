//! Cleanup: what a pipeline made, removed newest dependency first by the identity it recorded,
//! once Firehose has delivered what it buffered; or left in AWS, as `deletionPolicy` says.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use metrics_pipeline_api::naming::PipelineNames;
use metrics_pipeline_api::pipeline::{DeletionPolicy, MetricsPipeline, PipelineIdentity};

use super::{Context, acting_for, publish};
use crate::aws::AwsClients;
use crate::aws::bucket::Bucket;
use crate::aws::catalog::{GlueDatabase, GlueTable};
use crate::aws::delivery::{self, DeliveryStream};
use crate::aws::resource::delete;
use crate::aws::role::FirehoseRole;
use crate::aws::streams::Stream;
use crate::error::Error;
use crate::managed::{Owner, Removal, write_status};
use crate::{status, workload};

/// Removes what the pipeline created, newest dependency first; the finalizer stays until all of
/// it is gone, and meanwhile `Ready` says what the deletion waits for. With `deletionPolicy:
/// Retain` the bucket and the catalog stay; with `Orphan`, or a management policy that never
/// deletes, everything in AWS.
pub(super) async fn cleanup(pipeline: &MetricsPipeline, api: &Api<MetricsPipeline>, context: &Context) -> Result<Action, Error> {
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
    let recorded = pipeline.status.as_ref().and_then(|status| status.identity.as_ref());
    // The Kubernetes names and the owner, whatever the account.
    let names = names_in(pipeline, recorded, &context.account.target.account_id, region);
    let owner = &Owner::of(pipeline, &names, &context.cluster);
    let retain = pipeline.spec.deletion_policy == DeletionPolicy::Retain;

    // The aggregator stops first: it checkpoints into the bucket and reads and writes the streams.
    if !workload::delete(&context.client, &pipeline.namespace().unwrap_or_default(), &names.aggregator, &names.owner).await? {
        return Err(Error::Deleting(format!("aggregator Deployment {} (its pod stops and checkpoints first)", names.aggregator)));
    }
    let spec = &pipeline.spec;
    if spec.deletion_policy == DeletionPolicy::Orphan || !spec.deletes() {
        let uid = &owner.uid;
        let why = match spec.adopt.as_ref() {
            _ if spec.deletion_policy == DeletionPolicy::Orphan => "deletionPolicy: Orphan".to_owned(),
            Some(adopt) if !adopt.confirmed => "its adoption was not confirmed".to_owned(),
            _ => format!("managementPolicy: {:?}", spec.management_policy),
        };
        let note = format!(
            "left every AWS resource of the pipeline in place ({why}); those it made are tagged with its uid {uid}, and a \
             pipeline of this namespace and name with spec.adoptFrom.pipelineUid: {uid} takes them over"
        );
        publish(context, pipeline, EventType::Normal, "Deleted", "Cleanup", &note).await;
        return Ok(Action::await_change());
    }
    // Orphaned above whatever the account: only deleting needs the account that made them, as
    // the namespace's role if it maps to one.
    let (account, _) = acting_for(context, &pipeline.namespace().unwrap_or_default()).await?;
    let account_id = &account.target.account_id;
    let clients = account.clients(region);
    let names = names_in(pipeline, recorded, account_id, region);
    if let Some(message) = recorded.and_then(|identity| identity.foreign_account(account_id)) {
        return Err(Error::IdentityChange(message));
    }
    // Meanwhile Firehose reads the output stream, writes the bucket and uses its role: all stay.
    drain(pipeline, context, &clients, &names).await?;
    let mut removals = Removals::default();
    removals.file(delete(&DeliveryStream { name: &names.delivery_stream }, &clients, owner).await?);
    if !retain {
        let table = GlueTable { database: &names.glue_database, table: &names.glue_table, account_id };
        removals.file(delete(&table, &clients, owner).await?);
        removals.file(delete(&GlueDatabase { name: &names.glue_database, account_id }, &clients, owner).await?);
    }
    if removals.going.is_empty() {
        // The role goes only once nothing uses it.
        removals.file(delete(&FirehoseRole::of(&names), &clients, owner).await?);
    }
    if !retain {
        removals.file(delete(&Bucket { name: &names.bucket, account_id }, &clients, owner).await?);
    }
    for stream in [Stream::output(&names.output_stream), Stream::input(&names.input_stream)] {
        removals.file(delete(&stream, &clients, owner).await?);
    }
    let Removals { going, mut left } = removals;
    if !going.is_empty() {
        return Err(Error::Deleting(going.join(", ")));
    }
    if retain {
        left.push(format!("kept S3 bucket {} and Glue database {} (deletionPolicy: Retain)", names.bucket, names.glue_database));
    }
    let kept: String = left.iter().map(|note| format!("; {note}")).collect();
    publish(context, pipeline, EventType::Normal, "Deleted", "Cleanup", &format!("deleted the pipeline's AWS resources{kept}")).await;
    Ok(Action::await_change())
}

/// The names of `pipeline`'s resources: as recorded, else as the spec derives them in `account_id`.
fn names_in(pipeline: &MetricsPipeline, recorded: Option<&PipelineIdentity>, account_id: &str, region: &str) -> PipelineNames {
    let mut names = PipelineNames::of(pipeline, account_id, region);
    if let Some(identity) = recorded {
        identity.name(&mut names);
    }
    names
}

/// What a deletion pass left: what AWS is still deleting, and what stays and why.
#[derive(Default)]
struct Removals {
    going: Vec<String>,
    left: Vec<String>,
}

impl Removals {
    fn file(&mut self, removal: Removal) {
        match removal {
            Removal::Gone => {}
            Removal::Going(what) => self.going.push(what),
            Removal::Left(why) => self.left.push(why),
        }
    }
}

/// Waits until Firehose has had its buffer interval for the newest aggregate on the output
/// stream, looking again only when that time is up; records that keep coming (another writer)
/// hold the deletion at most twice that long, then it goes on with a Warning event. The drain's
/// time is this operator's own, from when it first found the deletion draining: the deletion
/// timestamp is the API server's clock.
async fn drain(pipeline: &MetricsPipeline, context: &Context, clients: &AwsClients, names: &PipelineNames) -> Result<(), Error> {
    let draining_for = context.draining_for(pipeline);
    match delivery::undelivered(clients, &names.delivery_stream, &names.output_stream, draining_for).await? {
        delivery::Undelivered::Nothing => Ok(()),
        delivery::Undelivered::Buffered { why, left } => Err(Error::Draining { why, left }),
        delivery::Undelivered::KeepsComing { waited } => {
            let note = format!(
                "deleting Firehose delivery stream {} after waiting {} s (twice its buffer interval and a margin) for it to \
                 deliver: records were still arriving on {} when last read (another writer?), and what it still buffers of \
                 them is lost",
                names.delivery_stream,
                waited.as_secs(),
                names.output_stream
            );
            publish(context, pipeline, EventType::Warning, "DrainCut", "Cleanup", &note).await;
            Ok(())
        }
    }
}
