//! Observing (`managementPolicy: ObserveOnly`): every AWS part read and compared with what the spec
//! asks, by the same desired values provisioning builds, and nothing changed: no create, tag,
//! update or delete, and no aggregator. What differs is the report's drift, per part and in all.

use metrics_pipeline_api::config::PipelineConfig;
use metrics_pipeline_api::pipeline::{AwsResourceRef, DeliveryWriter};

use super::provision::{delivery_settings, role_policies, table};
use crate::aws::bucket::{self, Bucket, BucketSpec};
use crate::aws::catalog::GlueDatabase;
use crate::aws::delivery::DeliveryStream;
use crate::aws::resource::{AwsResource, Inspection, inspect};
use crate::aws::role::{self, FirehoseRole};
use crate::aws::streams::{self, Stream};
use crate::aws::{AwsClients, TagsAs};
use crate::error::Error;
use crate::managed::Owner;
use crate::status::{PartState, Report};

/// Reads every part into `report`: a part as the spec asks is ready, one that differs is
/// degraded by its drift, and one that cannot be read failed. `until` says what ends the observing.
pub(super) async fn observe(
    report: &mut Report,
    clients: &AwsClients,
    config: &PipelineConfig,
    account_id: &str,
    owner: &Owner,
    until: &'static str,
) {
    report.observing = Some(until);
    let part = |inspections, as_asked| part(inspections, as_asked, until);
    let names = &config.names;
    let region = &config.region;
    let input = inspect(&Stream::input(&names.input_stream), clients, owner, &config.input_stream).await;
    let output = inspect(&Stream::output(&names.output_stream), clients, owner, &config.output_stream).await;
    let output_arn = arn_of(&output, || streams::arn(region, account_id, &names.output_stream));
    report.input_stream = found(&input);
    report.output_stream = found(&output);
    report.parts.streams = Some(part(vec![input, output], "both Kinesis streams are as the spec asks"));

    let bucket_spec = BucketSpec { expire_after_days: config.delivery.expire_after_days };
    let bucket = inspect(&Bucket { name: &names.bucket, account_id }, clients, owner, &bucket_spec).await;
    report.bucket = found(&bucket);
    report.parts.bucket = Some(part(vec![bucket], "the S3 bucket is private, encrypted and expires objects as the spec asks"));

    let database = inspect(&GlueDatabase { name: &names.glue_database, account_id }, clients, owner, &()).await;
    let (glue_table, desired_table) = table(config, account_id, owner);
    let glue_table = inspect(&glue_table, clients, owner, &desired_table).await;
    report.glue_database = found(&database);
    report.glue_table = found(&glue_table);
    report.parts.catalog = Some(part(vec![database, glue_table], "the Glue database and table are as the spec asks"));

    if config.delivery.writer == DeliveryWriter::Aggregator {
        report.without_firehose = true;
        let delivery = DeliveryStream { name: &names.delivery_stream };
        let left = delivery.observe(clients, TagsAs::Fresh).await.map(|there| Inspection {
            found: None,
            drift: there
                .map(|_| {
                    format!("Firehose delivery stream {}: there, and the aggregator writes the files (it would be deleted)", delivery.name)
                })
                .into_iter()
                .collect(),
        });
        report.parts.delivery = Some(part(vec![left], "no Firehose delivery stream: the aggregator writes the files"));
    } else {
        let bucket_arn = bucket::arn(region, &names.bucket);
        let role = FirehoseRole::of(names);
        let role_found = inspect(&role, clients, owner, &role_policies(config, account_id, &output_arn, &bucket_arn)).await;
        let role_arn = arn_of(&role_found, || role::arn(region, account_id, &names.firehose_role));
        let desired = delivery_settings(config, &output_arn, &role_arn, &bucket_arn);
        let delivery = inspect(&DeliveryStream { name: &names.delivery_stream }, clients, owner, &desired).await;
        report.firehose_role = found(&role_found);
        report.delivery_stream = found(&delivery);
        report.parts.delivery = Some(part(vec![role_found, delivery], "the Firehose delivery stream and its role are as the spec asks"));
    }
}

fn found(inspection: &Result<Inspection, Error>) -> Option<AwsResourceRef> {
    inspection.as_ref().ok().and_then(|inspection| inspection.found.clone())
}

/// The ARN of the resource found, else the one it would be made with.
fn arn_of(inspection: &Result<Inspection, Error>, made: impl FnOnce() -> String) -> String {
    found(inspection).and_then(|found| found.arn).unwrap_or_else(made)
}

/// One part's state from the inspections of its resources: the first failure to read, else its
/// drift, else `as_asked`.
fn part(inspections: Vec<Result<Inspection, Error>>, as_asked: &str, until: &'static str) -> PartState {
    let mut drift = Vec::new();
    for inspection in inspections {
        match inspection {
            Ok(inspection) => drift.extend(inspection.drift),
            Err(error) => return PartState::Failed(error),
        }
    }
    if drift.is_empty() { PartState::Ready(as_asked.to_owned()) } else { PartState::Degraded(Error::Drift { drift, until }) }
}
