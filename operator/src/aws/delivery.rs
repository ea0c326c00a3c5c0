//! The Firehose delivery stream: reads the output stream, partitions records by componentName
//! with a JQ query, writes them to the bucket (optionally converted to Parquet). The settings are
//! plain data built from the validated spec, so the exact request is unit-tested; the adapter
//! compares them with what DescribeDeliveryStream shows and creates, updates or recreates.

use std::time::Duration;

use aws_sdk_firehose::types::{
    BufferingHints, CompressionFormat, DataFormatConversionConfiguration, DeliveryStreamDescription, DeliveryStreamStatus,
    DeliveryStreamType, Deserializer, DynamicPartitioningConfiguration, ExtendedS3DestinationConfiguration, ExtendedS3DestinationUpdate,
    InputFormatConfiguration, KinesisStreamSourceConfiguration, OpenXJsonSerDe, OutputFormatConfiguration, ParquetCompression,
    ParquetSerDe, ProcessingConfiguration, Processor, ProcessorParameter, ProcessorParameterName, ProcessorType,
    RetryOptions as PartitioningRetryOptions, SchemaConfiguration, Serializer, Tag,
};
use metrics_pipeline_api::config::DeliveryConfig;
use metrics_pipeline_api::pipeline::{AwsResourceRef, Compression, DeliveryFormat};

use super::{AwsClients, AwsResource, TagsAs, streams};
use crate::error::{AwsError, AwsErrorKind, AwsResultExt, Error, error_code};
use crate::managed::{Outcome, Owner, Removal, Standing, tag_pairs};

/// Firehose's answer for a delivery stream that does not exist.
const NOT_FOUND: &str = "ResourceNotFoundException";

/// Extracts the partition key; Firehose runs it with jq 1.6.
pub const METADATA_EXTRACTION_QUERY: &str = "{componentName:.componentName}";
pub const JSON_PARSING_ENGINE: &str = "JQ-1.6";
/// Hive-style, so each component's objects form one partition.
pub const PREFIX: &str = "componentName=!{partitionKeyFromQuery:componentName}/";
/// Mandatory with dynamic partitioning; records the query cannot key land here.
pub const ERROR_PREFIX: &str = "errors/!{firehose:error-output-type}/";
/// `AppendDelimiterToRecord`'s delimiter, as the API spells a newline.
pub const DELIMITER: &str = "\\n";
/// How long Firehose retries delivering a partition before giving up on it.
const PARTITIONING_RETRY_SECONDS: i32 = 300;

/// Record-format conversion to Parquet, with the schema read from the Glue table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParquetConversion {
    pub database: String,
    pub table: String,
    pub region: String,
    pub role_arn: String,
    pub compression: ParquetCompression,
}

/// Everything about the delivery stream the operator decides, in one comparable value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliverySettings {
    pub source_stream_arn: String,
    pub source_role_arn: String,
    pub role_arn: String,
    pub bucket_arn: String,
    pub prefix: String,
    pub error_prefix: String,
    pub buffer_interval_seconds: i32,
    pub buffer_size_mib: i32,
    pub compression: CompressionFormat,
    pub dynamic_partitioning: bool,
    pub processors: Vec<(ProcessorType, Vec<(ProcessorParameterName, String)>)>,
    pub parquet: Option<ParquetConversion>,
}

/// The ARNs the delivery stream connects.
pub struct Connections<'a> {
    pub output_stream_arn: &'a str,
    pub role_arn: &'a str,
    pub bucket_arn: &'a str,
    pub glue_database: &'a str,
    pub glue_table: &'a str,
    pub region: &'a str,
}

pub fn desired(delivery: &DeliveryConfig, connections: &Connections<'_>) -> DeliverySettings {
    let parquet = (delivery.format == DeliveryFormat::Parquet).then(|| ParquetConversion {
        database: connections.glue_database.to_owned(),
        table: connections.glue_table.to_owned(),
        region: connections.region.to_owned(),
        role_arn: connections.role_arn.to_owned(),
        compression: match delivery.compression {
            Compression::Uncompressed => ParquetCompression::Uncompressed,
            Compression::Gzip => ParquetCompression::Gzip,
            Compression::Snappy => ParquetCompression::Snappy,
        },
    });
    // Parquet compresses inside the file; Firehose refuses S3-level compression on top of it.
    let compression = match (&parquet, delivery.compression) {
        (Some(_), _) | (None, Compression::Uncompressed) => CompressionFormat::Uncompressed,
        (None, Compression::Gzip) => CompressionFormat::Gzip,
        // Firehose's plain SNAPPY is the framing format, which Athena cannot read; the
        // Hadoop-compatible variant it can.
        (None, Compression::Snappy) => CompressionFormat::HadoopSnappy,
    };
    DeliverySettings {
        source_stream_arn: connections.output_stream_arn.to_owned(),
        source_role_arn: connections.role_arn.to_owned(),
        role_arn: connections.role_arn.to_owned(),
        bucket_arn: connections.bucket_arn.to_owned(),
        prefix: PREFIX.to_owned(),
        error_prefix: ERROR_PREFIX.to_owned(),
        buffer_interval_seconds: delivery.buffer_interval_seconds,
        buffer_size_mib: delivery.buffer_size_mib,
        compression,
        dynamic_partitioning: true,
        processors: vec![
            (
                ProcessorType::MetadataExtraction,
                vec![
                    (ProcessorParameterName::MetadataExtractionQuery, METADATA_EXTRACTION_QUERY.to_owned()),
                    (ProcessorParameterName::JsonParsingEngine, JSON_PARSING_ENGINE.to_owned()),
                ],
            ),
            (ProcessorType::AppendDelimiterToRecord, vec![(ProcessorParameterName::Delimiter, DELIMITER.to_owned())]),
        ],
        parquet,
    }
}

/// The settings a described delivery stream has, as far as the operator manages them.
pub fn settings_of(description: &DeliveryStreamDescription) -> Option<DeliverySettings> {
    let source = description.source()?.kinesis_stream_source_description()?;
    let destination = description.destinations().first()?.extended_s3_destination_description()?;
    let hints = destination.buffering_hints();
    let processors = destination
        .processing_configuration()
        .map(|configuration| {
            configuration
                .processors()
                .iter()
                .map(|processor| {
                    let parameters = processor.parameters().iter().map(|p| (p.parameter_name().clone(), p.parameter_value().to_owned()));
                    (processor.r#type().clone(), parameters.collect())
                })
                .collect()
        })
        .unwrap_or_default();
    let parquet = destination.data_format_conversion_configuration().filter(|c| c.enabled() != Some(false)).and_then(|conversion| {
        let schema = conversion.schema_configuration()?;
        let parquet = conversion.output_format_configuration()?.serializer()?.parquet_ser_de()?;
        Some(ParquetConversion {
            database: schema.database_name()?.to_owned(),
            table: schema.table_name()?.to_owned(),
            region: schema.region()?.to_owned(),
            role_arn: schema.role_arn()?.to_owned(),
            compression: parquet.compression().cloned().unwrap_or(ParquetCompression::Snappy),
        })
    });
    Some(DeliverySettings {
        source_stream_arn: source.kinesis_stream_arn()?.to_owned(),
        source_role_arn: source.role_arn()?.to_owned(),
        role_arn: destination.role_arn().to_owned(),
        bucket_arn: destination.bucket_arn().to_owned(),
        prefix: destination.prefix().unwrap_or_default().to_owned(),
        error_prefix: destination.error_output_prefix().unwrap_or_default().to_owned(),
        buffer_interval_seconds: hints.and_then(BufferingHints::interval_in_seconds).unwrap_or_default(),
        buffer_size_mib: hints.and_then(BufferingHints::size_in_mbs).unwrap_or_default(),
        compression: destination.compression_format().clone(),
        dynamic_partitioning: destination.dynamic_partitioning_configuration().and_then(|c| c.enabled()).unwrap_or(false),
        processors,
        parquet,
    })
}

/// What it takes to get from what is there to what should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryPlan {
    Create,
    /// Firehose is working on it (CREATING, DELETING, and whatever status AWS adds later): its status.
    Wait(String),
    /// It failed and stays failed (AWS lets it only be deleted): deleted, then created again
    /// once it is gone. What AWS says went wrong.
    ReplaceFailed(String),
    Keep,
    /// Destination settings differ: UpdateDestination can change them in place.
    Update,
    /// The source differs (or cannot be read): AWS cannot change a source, so delete and create.
    Recreate(String),
}

/// What the settings of an ACTIVE delivery stream (`None`: not one the operator makes) need.
pub fn settings_plan(desired: &DeliverySettings, observed: Option<Option<DeliverySettings>>) -> DeliveryPlan {
    match observed {
        None => DeliveryPlan::Create,
        Some(None) => DeliveryPlan::Recreate("it is not a Kinesis-sourced extended S3 delivery stream".into()),
        Some(Some(observed)) if observed.source_stream_arn != desired.source_stream_arn => {
            DeliveryPlan::Recreate(format!("its source is {} instead of {}", observed.source_stream_arn, desired.source_stream_arn))
        }
        Some(Some(observed)) if observed.source_role_arn != desired.source_role_arn => DeliveryPlan::Recreate(format!(
            "it reads its source as role {} instead of {}",
            observed.source_role_arn, desired.source_role_arn
        )),
        // AWS turns dynamic partitioning on only when a delivery stream is created.
        Some(Some(observed)) if observed.dynamic_partitioning != desired.dynamic_partitioning => {
            DeliveryPlan::Recreate("dynamic partitioning can be enabled only when a delivery stream is created".into())
        }
        Some(Some(observed)) if observed == *desired => DeliveryPlan::Keep,
        Some(Some(_)) => DeliveryPlan::Update,
    }
}

/// Every setting in which `observed` differs from `desired`, one line each.
pub fn settings_differences(desired: &DeliverySettings, observed: &DeliverySettings) -> Vec<String> {
    let mut differences = Vec::new();
    let mut compare = |what: &str, found: String, wanted: String| {
        if found != wanted {
            differences.push(format!("{what} is {found}, the operator sets {wanted}"));
        }
    };
    let recreated = " (AWS cannot change a source: the delivery stream would be created again)";
    compare(&format!("the source stream{recreated}"), observed.source_stream_arn.clone(), desired.source_stream_arn.clone());
    compare(&format!("the role reading the source{recreated}"), observed.source_role_arn.clone(), desired.source_role_arn.clone());
    compare("the destination's role", observed.role_arn.clone(), desired.role_arn.clone());
    compare("the bucket", observed.bucket_arn.clone(), desired.bucket_arn.clone());
    compare("the prefix", format!("`{}`", observed.prefix), format!("`{}`", desired.prefix));
    compare("the error prefix", format!("`{}`", observed.error_prefix), format!("`{}`", desired.error_prefix));
    let seconds = |seconds: i32| format!("{seconds} s");
    compare("the buffer interval", seconds(observed.buffer_interval_seconds), seconds(desired.buffer_interval_seconds));
    let mib = |mib: i32| format!("{mib} MiB");
    compare("the buffer size", mib(observed.buffer_size_mib), mib(desired.buffer_size_mib));
    compare("the compression", observed.compression.as_str().to_owned(), desired.compression.as_str().to_owned());
    let enabled = |on: bool| if on { "enabled" } else { "disabled" }.to_owned();
    compare(
        "dynamic partitioning (AWS enables it only at creation: the delivery stream would be created again)",
        enabled(observed.dynamic_partitioning),
        enabled(desired.dynamic_partitioning),
    );
    compare("the record processors", format!("{:?}", observed.processors), format!("{:?}", desired.processors));
    compare("the Parquet conversion", format!("{:?}", observed.parquet), format!("{:?}", desired.parquet));
    differences
}

fn processing(settings: &DeliverySettings) -> ProcessingConfiguration {
    let processors = settings.processors.iter().map(|(kind, parameters)| {
        let parameters = parameters.iter().map(|(name, value)| {
            ProcessorParameter::builder().parameter_name(name.clone()).parameter_value(value).build().expect("name and value are set")
        });
        Processor::builder().r#type(kind.clone()).set_parameters(Some(parameters.collect())).build().expect("type is set")
    });
    ProcessingConfiguration::builder().enabled(true).set_processors(Some(processors.collect())).build()
}

fn conversion(parquet: &ParquetConversion) -> DataFormatConversionConfiguration {
    DataFormatConversionConfiguration::builder()
        .enabled(true)
        .input_format_configuration(
            InputFormatConfiguration::builder()
                .deserializer(Deserializer::builder().open_x_json_ser_de(OpenXJsonSerDe::builder().build()).build())
                .build(),
        )
        .output_format_configuration(
            OutputFormatConfiguration::builder()
                .serializer(
                    Serializer::builder().parquet_ser_de(ParquetSerDe::builder().compression(parquet.compression.clone()).build()).build(),
                )
                .build(),
        )
        .schema_configuration(
            SchemaConfiguration::builder()
                .database_name(&parquet.database)
                .table_name(&parquet.table)
                .region(&parquet.region)
                .role_arn(&parquet.role_arn)
                .version_id("LATEST")
                .build(),
        )
        .build()
}

fn buffering(settings: &DeliverySettings) -> BufferingHints {
    BufferingHints::builder().interval_in_seconds(settings.buffer_interval_seconds).size_in_mbs(settings.buffer_size_mib).build()
}

fn partitioning() -> DynamicPartitioningConfiguration {
    DynamicPartitioningConfiguration::builder()
        .enabled(true)
        .retry_options(PartitioningRetryOptions::builder().duration_in_seconds(PARTITIONING_RETRY_SECONDS).build())
        .build()
}

/// The destination fields CreateDeliveryStream and UpdateDestination share, on either builder.
macro_rules! with_destination {
    ($builder:expr, $settings:expr) => {
        $builder
            .role_arn(&$settings.role_arn)
            .bucket_arn(&$settings.bucket_arn)
            .prefix(&$settings.prefix)
            .error_output_prefix(&$settings.error_prefix)
            .buffering_hints(buffering($settings))
            .compression_format($settings.compression.clone())
            .dynamic_partitioning_configuration(partitioning())
            .processing_configuration(processing($settings))
    };
}

/// The destination of CreateDeliveryStream.
pub fn destination_configuration(settings: &DeliverySettings) -> ExtendedS3DestinationConfiguration {
    with_destination!(ExtendedS3DestinationConfiguration::builder(), settings)
        .set_data_format_conversion_configuration(settings.parquet.as_ref().map(conversion))
        .build()
        .expect("role and bucket are set")
}

/// The same settings as an UpdateDestination; conversion is switched off explicitly, since an
/// update leaves out what it does not name.
fn destination_update(settings: &DeliverySettings) -> ExtendedS3DestinationUpdate {
    let conversion = match &settings.parquet {
        Some(parquet) => conversion(parquet),
        None => DataFormatConversionConfiguration::builder().enabled(false).build(),
    };
    with_destination!(ExtendedS3DestinationUpdate::builder(), settings).data_format_conversion_configuration(conversion).build()
}

async fn describe(clients: &AwsClients, name: &str) -> Result<Option<DeliveryStreamDescription>, Error> {
    let described = clients.firehose.describe_delivery_stream().delivery_stream_name(name).send().await;
    Ok(described
        .absent_on(&[NOT_FOUND], || format!("describing Firehose delivery stream {name}"))?
        .and_then(|output| output.delivery_stream_description))
}

/// The delivery stream's tags. Tags that cannot be read are an error, never "not ours": cleanup
/// must not take a throttled answer for a stream that is somebody else's and report it gone.
async fn tags_of(clients: &AwsClients, name: &str) -> Result<Vec<(String, String)>, Error> {
    let tags = (clients.firehose.list_tags_for_delivery_stream())
        .delivery_stream_name(name)
        .send()
        .await
        .or_aws(|| format!("listing tags of Firehose delivery stream {name}"))?;
    Ok(tags.tags.into_iter().map(|tag| (tag.key, tag.value.unwrap_or_default())).collect())
}

fn tags(owner: &Owner) -> Vec<Tag> {
    owner.tags().into_iter().map(|(key, value)| Tag::builder().key(key).value(value).build().expect("key is set")).collect()
}

/// A pipeline's Firehose delivery stream.
pub struct DeliveryStream<'a> {
    pub name: &'a str,
}

/// The delivery stream as Firehose describes it, with its tags.
pub struct FoundDelivery {
    pub description: DeliveryStreamDescription,
    pub tags: Vec<(String, String)>,
}

impl AwsResource for DeliveryStream<'_> {
    const KIND: &'static str = "Firehose delivery stream";
    type Desired = DeliverySettings;
    type Observed = FoundDelivery;
    type Plan = DeliveryPlan;

    fn name(&self) -> String {
        self.name.to_owned()
    }

    async fn observe(&self, clients: &AwsClients, tags_as: TagsAs) -> Result<Option<FoundDelivery>, Error> {
        let Some(description) = describe(clients, self.name).await? else { return Ok(None) };
        let created = description.create_timestamp().map(|created| created.secs().to_string()).unwrap_or_default();
        let tags = clients.tags.read_as(tags_as, description.delivery_stream_arn(), created, tags_of(clients, self.name)).await?;
        Ok(Some(FoundDelivery { description, tags }))
    }

    fn whose(owner: &Owner, observed: &FoundDelivery) -> Standing {
        owner.standing(tag_pairs(&observed.tags))
    }

    async fn claim(&self, clients: &AwsClients, owner: &Owner, observed: &FoundDelivery) -> Result<(), Error> {
        let name = self.name;
        clients.tags.forget(observed.description.delivery_stream_arn());
        let tagging = clients.firehose.tag_delivery_stream().delivery_stream_name(name).set_tags(Some(tags(owner)));
        tagging.send().await.or_aws(|| format!("tagging Firehose delivery stream {name}"))?;
        Ok(())
    }

    fn tags_of(observed: &FoundDelivery) -> Option<Vec<(String, String)>> {
        Some(observed.tags.clone())
    }

    async fn untag(&self, clients: &AwsClients, observed: &FoundDelivery, keys: &[String]) -> Result<(), Error> {
        let name = self.name;
        clients.tags.forget(observed.description.delivery_stream_arn());
        let request = clients.firehose.untag_delivery_stream().delivery_stream_name(name).set_tag_keys(Some(keys.to_vec()));
        request.send().await.or_aws(|| format!("removing tags from Firehose delivery stream {name}"))?;
        Ok(())
    }

    fn plan(desired: &DeliverySettings, observed: Option<&FoundDelivery>) -> DeliveryPlan {
        let Some(FoundDelivery { description, .. }) = observed else { return DeliveryPlan::Create };
        match description.delivery_stream_status() {
            DeliveryStreamStatus::Active => settings_plan(desired, Some(settings_of(description))),
            DeliveryStreamStatus::CreatingFailed | DeliveryStreamStatus::DeletingFailed => {
                DeliveryPlan::ReplaceFailed(failure(description))
            }
            status => DeliveryPlan::Wait(status.as_str().to_owned()),
        }
    }

    async fn apply(
        &self,
        clients: &AwsClients,
        owner: &Owner,
        desired: &DeliverySettings,
        observed: Option<FoundDelivery>,
        plan: DeliveryPlan,
        mut outcome: Outcome,
    ) -> Result<(AwsResourceRef, Outcome), Error> {
        let name = self.name;
        let description = observed.map(|found| found.description);
        let arn = description.as_ref().map(|d| d.delivery_stream_arn().to_owned());
        let reference = |arn| AwsResourceRef { name: name.to_owned(), arn };
        match (plan, &description) {
            (DeliveryPlan::Keep, _) => {}
            (DeliveryPlan::Wait(status), _) => outcome.pending = Some(format!("Firehose delivery stream {name} is {status}")),
            (DeliveryPlan::Create, _) | (_, None) => {
                let arn = Box::pin(create(clients, name, owner, desired)).await?;
                outcome.changed(format!("created Firehose delivery stream {name}"));
                outcome.pending = Some(format!("Firehose delivery stream {name} is being created"));
                return Ok((reference(Some(arn)), outcome));
            }
            (DeliveryPlan::ReplaceFailed(failure), Some(description)) => {
                still_ours(clients, name, owner).await?;
                delete_owned(clients, name, description.delivery_stream_status()).await?;
                outcome.changed(format!("deleting Firehose delivery stream {name}, which is {failure}, to create it again"));
                outcome.pending = Some(format!("Firehose delivery stream {name} is {failure}: deleting it to create it again"));
            }
            (DeliveryPlan::Update, Some(description)) => {
                let destination = description.destinations().first().map(|d| d.destination_id().to_owned()).unwrap_or_default();
                let update = async {
                    (clients.firehose.update_destination())
                        .delivery_stream_name(name)
                        .current_delivery_stream_version_id(description.version_id())
                        .destination_id(destination)
                        .extended_s3_destination_update(destination_update(desired))
                        .send()
                        .await
                        .map(drop)
                        .map_err(|error| {
                            let error = AwsError::from_sdk(format!("updating Firehose delivery stream {name}"), error);
                            Error::from(unsettled_role(error, &desired.role_arn))
                        })
                };
                // Boxed: the SDK's builders make this future large, and a reconcile's stack small.
                match clients.ask(&format!("Firehose delivery stream {name}: update to {desired:?}"), Box::pin(update)).await {
                    Ok(()) => outcome.changed(format!("updated the destination of Firehose delivery stream {name}")),
                    // The stream delivers as it stands, so the aggregator that feeds it goes on.
                    Err(error) => outcome.degraded = Some(error),
                }
            }
            (DeliveryPlan::Recreate(reason), Some(_)) => {
                still_ours(clients, name, owner).await?;
                delete_owned(clients, name, &DeliveryStreamStatus::Active).await?;
                outcome.changed(format!("deleting Firehose delivery stream {name} to recreate it: {reason}"));
                outcome.pending = Some(format!("Firehose delivery stream {name} is being recreated: {reason}"));
            }
        }
        Ok((reference(arn), outcome))
    }

    fn replaces(plan: &DeliveryPlan) -> Option<String> {
        match plan {
            DeliveryPlan::Recreate(why) => Some(why.clone()),
            DeliveryPlan::ReplaceFailed(failure) => Some(format!("it is {failure}")),
            _ => None,
        }
    }

    async fn drift(&self, _clients: &AwsClients, desired: &DeliverySettings, observed: &FoundDelivery) -> Result<Vec<String>, Error> {
        Ok(match Self::plan(desired, Some(observed)) {
            DeliveryPlan::ReplaceFailed(failure) => vec![format!("it is {failure} (it would be deleted and created again)")],
            DeliveryPlan::Recreate(why) if settings_of(&observed.description).is_none() => {
                vec![format!("{why} (it would be deleted and created again)")]
            }
            DeliveryPlan::Recreate(_) | DeliveryPlan::Update => {
                settings_of(&observed.description).map(|found| settings_differences(desired, &found)).unwrap_or_default()
            }
            DeliveryPlan::Create | DeliveryPlan::Wait(_) | DeliveryPlan::Keep => Vec::new(),
        })
    }

    fn reference(&self, _clients: &AwsClients, observed: &FoundDelivery) -> AwsResourceRef {
        AwsResourceRef { name: self.name.to_owned(), arn: Some(observed.description.delivery_stream_arn().to_owned()) }
    }

    /// Deletes the delivery stream; while AWS deletes it, says so (with the failure of a deletion
    /// that failed and is asked for again).
    async fn remove(&self, clients: &AwsClients, observed: FoundDelivery) -> Result<Removal, Error> {
        let name = self.name;
        let FoundDelivery { description, .. } = observed;
        let status = description.delivery_stream_status();
        if status != &DeliveryStreamStatus::Deleting {
            delete_owned(clients, name, status).await?;
        }
        if describe(clients, name).await?.is_none() {
            return Ok(Removal::Gone);
        }
        Ok(Removal::Going(match status {
            DeliveryStreamStatus::DeletingFailed => {
                format!("Firehose delivery stream {name}, which is {}: deleting it again", failure(&description))
            }
            _ => format!("Firehose delivery stream {name}"),
        }))
    }
}

/// Fails with `NotOwned` unless the delivery stream is this pipeline's by its tags as they are
/// now, not as read lately: a deletion loses what it buffered.
async fn still_ours(clients: &AwsClients, name: &str, owner: &Owner) -> Result<(), Error> {
    owner.standing(tag_pairs(&tags_of(clients, name).await?)).claim(DeliveryStream::KIND, name).map(drop)
}

/// A failed delivery stream's status with what AWS says went wrong (`FailureDescription`), e.g.
/// `CREATING_FAILED (KMS_ACCESS_DENIED: ...)`.
pub fn failure(description: &DeliveryStreamDescription) -> String {
    let status = description.delivery_stream_status().as_str();
    match description.failure_description() {
        Some(failure) => format!("{status} ({}: {})", failure.r#type().as_str(), failure.details()),
        None => format!("{status} (AWS gives no failure description)"),
    }
}

/// What Firehose answers (`InvalidArgumentException`) when it cannot use the role it is given:
/// the role or its policy was created or changed moments ago and IAM has not propagated it yet
/// (seconds to minutes), or the role really lacks what Firehose needs. Which message comes
/// depends on the check inside Firehose that trips first.
const ROLE_REFUSALS: [&str; 4] =
    ["is unable to assume role", "is not authorized to", "Access was denied", "Verify that the IAM role has access"];

/// Whether Firehose refused the role it was given (see [`ROLE_REFUSALS`]).
pub fn is_role_refusal(code: Option<&str>, message: &str) -> bool {
    code == Some("InvalidArgumentException") && ROLE_REFUSALS.iter().any(|refusal| message.contains(refusal))
}

/// A refusal of the role is most likely IAM still propagating it, so it is retried (with the
/// reconcile's backoff); the message says what is awaited, and what to check should it last,
/// since a role that is really wrong gets the same answers.
fn unsettled_role(mut error: AwsError, role_arn: &str) -> AwsError {
    if is_role_refusal(error.code.as_deref(), &error.message) {
        error.kind = AwsErrorKind::Busy;
        error.message = format!(
            "{} (waiting for IAM to make role {role_arn} usable by Firehose, which takes seconds to minutes after it or its \
             policy changed; should this last longer, the role's trust or inline policy does not allow what Firehose needs)",
            error.message
        );
    }
    error
}

async fn create(clients: &AwsClients, name: &str, owner: &Owner, settings: &DeliverySettings) -> Result<String, Error> {
    let source = KinesisStreamSourceConfiguration::builder()
        .kinesis_stream_arn(&settings.source_stream_arn)
        .role_arn(&settings.source_role_arn)
        .build()
        .expect("stream and role are set");
    let created = (clients.firehose.create_delivery_stream())
        .delivery_stream_name(name)
        .delivery_stream_type(DeliveryStreamType::KinesisStreamAsSource)
        .kinesis_stream_source_configuration(source)
        .extended_s3_destination_configuration(destination_configuration(settings))
        .set_tags(Some(tags(owner)))
        .send()
        .await
        .map_err(|error| {
            let quota = error_code(&error) == Some("LimitExceededException");
            let mut error = AwsError::from_sdk(format!("creating Firehose delivery stream {name}"), error);
            if quota {
                // Firehose's LimitExceeded is the account's quota of delivery streams, not a rate.
                error.kind = AwsErrorKind::QuotaExceeded;
                error.message = format!(
                    "the account's quota of Firehose delivery streams in {} is used up (50 by default): request a quota \
                     increase, delete unused delivery streams, or put this pipeline in another spec.region ({})",
                    clients.region, error.message
                );
            }
            Error::from(unsettled_role(error, &settings.role_arn))
        })?;
    Ok(created.delivery_stream_arn.unwrap_or_default())
}

/// Deletes the delivery stream in `status`. A DELETING_FAILED one is deleted with
/// `AllowForceDelete`, as AWS documents: the failure is Firehose not retiring a KMS grant, and
/// the operator never gives Firehose a customer-managed key, so no grant of its own is left.
async fn delete_owned(clients: &AwsClients, name: &str, status: &DeliveryStreamStatus) -> Result<(), Error> {
    let force = (*status == DeliveryStreamStatus::DeletingFailed).then_some(true);
    let deleted = clients.firehose.delete_delivery_stream().delivery_stream_name(name).set_allow_force_delete(force).send().await;
    deleted.absent_on(&[NOT_FOUND], || format!("deleting Firehose delivery stream {name}"))?;
    Ok(())
}

/// Beyond the buffer interval: Firehose reads its source about once a second and processes
/// (partitions) what it read before buffering, and AWS treats buffering hints as hints.
const DRAIN_MARGIN: Duration = Duration::from_secs(30);

/// What Firehose may still hold: AWS deletes a delivery stream "and its data", delivering what it
/// buffered no more. While the newest record on the output stream is younger than the delivery
/// stream's buffer interval (and a margin), the deletion waits, with the aggregator stopped;
/// records that keep coming (another writer) hold it at most twice that long from when the drain
/// began, `draining_for` ago.
pub async fn undelivered(clients: &AwsClients, name: &str, output_stream: &str, draining_for: Duration) -> Result<Undelivered, Error> {
    let Some(description) = describe(clients, name).await? else { return Ok(Undelivered::Nothing) };
    if description.delivery_stream_status() != &DeliveryStreamStatus::Active {
        return Ok(Undelivered::Nothing);
    }
    let interval = settings_of(&description).map_or(300, |settings| settings.buffer_interval_seconds);
    let window = Duration::from_secs(interval.max(0) as u64) + DRAIN_MARGIN;
    // Checked before reading the stream, which takes a while on many shards.
    let Some(until_cut) = (window * 2).checked_sub(draining_for).filter(|left| !left.is_zero()) else {
        return Ok(Undelivered::KeepsComing { waited: draining_for });
    };
    let newest = match streams::newest_record(clients, output_stream, window).await? {
        streams::Newest::Nothing => return Ok(Undelivered::Nothing),
        streams::Newest::At(newest) => newest,
        // Not read to the end within the pass: as if a record came just now.
        streams::Newest::NotReached => jiff::Timestamp::now(),
    };
    // Arrival times are whole seconds: at least a second more, and never past the cut.
    let age = jiff::Timestamp::now().duration_since(newest).unsigned_abs();
    let left = window.saturating_sub(age).max(Duration::from_secs(1)).min(until_cut);
    let why = format!(
        "Firehose delivery stream {name} to deliver what it buffered: the last aggregate reached {output_stream} at {newest}, \
         and Firehose delivers within its buffer interval of {interval} s (about {} s more)",
        left.as_secs()
    );
    Ok(Undelivered::Buffered { why, left })
}

/// What Firehose may still hold of the output stream's records.
#[derive(Debug, PartialEq, Eq)]
pub enum Undelivered {
    /// Nothing: it has had its buffer interval for the newest record, or there is no delivery.
    Nothing,
    /// What it waits for, and how long from now.
    Buffered { why: String, left: Duration },
    /// Records kept coming for twice the buffer interval (and the margin) since the drain began,
    /// `waited` ago: waiting longer would not help.
    KeepsComing { waited: Duration },
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use metrics_pipeline_api::pipeline::{DeliveryWriter, ManagementPolicy};

    use super::*;
    use crate::aws::fake::{FakeAws, OWNER_TAGS_JSON, owner};
    use crate::aws::resource::{delete, ensure};

    const DELIVERY: DeliveryStream<'static> = DeliveryStream { name: "p-delivery" };

    #[tokio::test]
    async fn cleanup_never_takes_tags_it_could_not_read_for_a_stream_that_is_not_ours() {
        let described = r#"{"DeliveryStreamDescription":{"DeliveryStreamName":"p-delivery","DeliveryStreamARN":"arn:aws:firehose:eu-west-1:123456789012:deliverystream/p-delivery","DeliveryStreamStatus":"ACTIVE","DeliveryStreamType":"KinesisStreamAsSource","VersionId":"1","Destinations":[],"HasMoreDestinations":false}}"#;
        let throttled = r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;
        let aws =
            FakeAws::start(BTreeMap::from([("DescribeDeliveryStream", (200, described)), ("ListTagsForDeliveryStream", (400, throttled))]))
                .await;
        let error = delete(&DELIVERY, &aws.clients, &owner()).await.expect_err("a throttled tag read is not an answer");
        assert_eq!(error.aws_kind(), Some(AwsErrorKind::Throttled), "{error}");
        assert!(!error.is_terminal(), "retried later: {error}");
        assert!(!aws.called().iter().any(|operation| operation == "DeleteDeliveryStream"), "{:?}", aws.called());
    }

    /// DescribeDeliveryStream's answer for a stream in `status` configured exactly as
    /// [`connections`] and `config(Json, Gzip)` make it, with `failure` as its FailureDescription.
    fn described(status: &str, failure: Option<(&str, &str)>) -> &'static str {
        let connections = connections();
        let mut description = serde_json::json!({
            "DeliveryStreamName": "p-delivery",
            "DeliveryStreamARN": "arn:aws:firehose:eu-west-1:123456789012:deliverystream/p-delivery",
            "DeliveryStreamStatus": status,
            "DeliveryStreamType": "KinesisStreamAsSource",
            "VersionId": "1",
            "Source": {"KinesisStreamSourceDescription": {"KinesisStreamARN": connections.output_stream_arn, "RoleARN": connections.role_arn}},
            "Destinations": [{"DestinationId": "destinationId-000000000001", "ExtendedS3DestinationDescription": {
                "RoleARN": connections.role_arn,
                "BucketARN": connections.bucket_arn,
                "Prefix": PREFIX,
                "ErrorOutputPrefix": ERROR_PREFIX,
                "BufferingHints": {"IntervalInSeconds": 60, "SizeInMBs": 64},
                "CompressionFormat": "GZIP",
                "EncryptionConfiguration": {"NoEncryptionConfig": "NoEncryption"},
                "DynamicPartitioningConfiguration": {"Enabled": true},
                "ProcessingConfiguration": {"Enabled": true, "Processors": [
                    {"Type": "MetadataExtraction", "Parameters": [
                        {"ParameterName": "MetadataExtractionQuery", "ParameterValue": METADATA_EXTRACTION_QUERY},
                        {"ParameterName": "JsonParsingEngine", "ParameterValue": JSON_PARSING_ENGINE}]},
                    {"Type": "AppendDelimiterToRecord", "Parameters": [{"ParameterName": "Delimiter", "ParameterValue": DELIMITER}]}]}
            }}],
            "HasMoreDestinations": false
        });
        if let Some((kind, details)) = failure {
            description["FailureDescription"] = serde_json::json!({"Type": kind, "Details": details});
        }
        String::leak(serde_json::json!({ "DeliveryStreamDescription": description }).to_string())
    }

    /// ListTagsForDeliveryStream's answer for pipeline `team-a/p`'s stream.
    fn ours() -> &'static str {
        String::leak(format!(r#"{{"Tags": {OWNER_TAGS_JSON}, "HasMoreTags": false}}"#))
    }

    /// AWS with this pipeline's delivery stream in the failed `status`, which it lets be deleted.
    async fn failed(status: &str, failure: (&str, &str)) -> FakeAws {
        FakeAws::start(BTreeMap::from([
            ("DescribeDeliveryStream", (200, described(status, Some(failure)))),
            ("ListTagsForDeliveryStream", (200, ours())),
            ("DeleteDeliveryStream", (200, "{}")),
        ]))
        .await
    }

    #[tokio::test]
    async fn a_stream_that_failed_to_be_created_is_reported_with_its_failure_and_deleted_to_be_made_again() {
        let settings = desired(&config(DeliveryFormat::Json, Compression::Gzip), &connections());
        let active = FakeAws::start(BTreeMap::from([
            ("DescribeDeliveryStream", (200, described("ACTIVE", None))),
            ("ListTagsForDeliveryStream", (200, ours())),
        ]))
        .await;
        let (_, outcome) = ensure(&DELIVERY, &active.clients, &owner(), &settings).await.unwrap();
        let kept = (outcome.changes.is_empty(), outcome.pending, outcome.degraded.is_none());
        assert_eq!(kept, (true, None, true), "the answer matches the settings: an active stream is kept as it is");

        let aws = failed("CREATING_FAILED", ("KMS_ACCESS_DENIED", "Firehose could not use the key")).await;
        let (_, outcome) = ensure(&DELIVERY, &aws.clients, &owner(), &settings).await.unwrap();
        assert_eq!(
            outcome.pending.as_deref(),
            Some(
                "Firehose delivery stream p-delivery is CREATING_FAILED (KMS_ACCESS_DENIED: Firehose could not use the key): deleting it to create it again"
            ),
            "never ready: {outcome:?}"
        );
        assert!(aws.called().iter().any(|operation| operation == "DeleteDeliveryStream"), "{:?}", aws.called());
    }

    #[tokio::test]
    async fn no_delete_refuses_to_replace_a_failed_stream_and_names_the_way_out() {
        let settings = desired(&config(DeliveryFormat::Json, Compression::Gzip), &connections());
        let aws = failed("CREATING_FAILED", ("KMS_ACCESS_DENIED", "no key")).await;
        let keeping = Owner { policy: ManagementPolicy::NoDelete, ..owner() };
        let error = ensure(&DELIVERY, &aws.clients, &keeping, &settings).await.expect_err("replacing deletes");
        assert_eq!(error.reason(), "DeletionRefused");
        let message = error.to_string();
        assert!(message.contains("Firehose delivery stream p-delivery would have to be deleted"), "{message}");
        assert!(message.contains("set spec.managementPolicy to Full"), "{message}");
        assert!(!aws.called().iter().any(|operation| operation == "DeleteDeliveryStream"), "{:?}", aws.called());
    }

    #[test]
    fn every_setting_that_differs_is_named_with_what_the_operator_would_set() {
        let settings = desired(&config(DeliveryFormat::Json, Compression::Gzip), &connections());
        assert_eq!(settings_differences(&settings, &settings), Vec::<String>::new());
        let hand_built = DeliverySettings {
            buffer_interval_seconds: 300,
            prefix: "data/".into(),
            source_role_arn: "arn:aws:iam::123456789012:role/by-hand".into(),
            ..settings.clone()
        };
        let differences = settings_differences(&settings, &hand_built);
        assert_eq!(differences.len(), 3, "{differences:#?}");
        assert!(differences.iter().any(|d| d.starts_with("the role reading the source (AWS cannot change a source")), "{differences:#?}");
        assert!(differences.contains(&format!("the prefix is `data/`, the operator sets `{PREFIX}`")), "{differences:#?}");
        assert!(differences.contains(&"the buffer interval is 300 s, the operator sets 60 s".to_owned()), "{differences:#?}");
    }

    #[tokio::test]
    async fn a_failed_stream_is_deleted_only_if_its_tags_as_they_are_now_say_it_is_ours() {
        let settings = desired(&config(DeliveryFormat::Json, Compression::Gzip), &connections());
        let another_cluster = r#"{"Tags":[{"Key":"metrics.dev/pipeline","Value":"team-a/p"},{"Key":"metrics.dev/pipeline-uid","Value":"u-9"},{"Key":"metrics.dev/cluster","Value":"c-2"}],"HasMoreTags":false}"#;
        let mut aws = FakeAws::start(BTreeMap::from([
            ("DescribeDeliveryStream", (200, described("CREATING_FAILED", Some(("KMS_ACCESS_DENIED", "no key"))))),
            ("ListTagsForDeliveryStream", (200, another_cluster)),
            ("DeleteDeliveryStream", (200, "{}")),
        ]))
        .await;
        // Read as this pipeline's at an earlier reconcile, and trusted for a while since; another
        // cluster's pipeline has taken the name over meanwhile.
        aws.clients.tags = std::sync::Arc::new(crate::aws::TagCache::new(Duration::from_secs(1800)));
        let arn = "arn:aws:firehose:eu-west-1:123456789012:deliverystream/p-delivery";
        aws.clients.tags.read(arn, String::new(), std::future::ready(Ok(owner().tags()))).await.unwrap();

        let error = ensure(&DELIVERY, &aws.clients, &owner(), &settings).await.expect_err("not ours any more");
        assert_eq!(error.reason(), "NotOwned", "{error}");
        assert!(!aws.called().iter().any(|operation| operation == "DeleteDeliveryStream"), "{:?}", aws.called());
    }

    #[tokio::test]
    async fn a_drain_looks_again_at_most_when_its_cut_comes_and_past_the_cut_reads_nothing() {
        // A record arrived just now; the buffer interval is 60 s, so the window 90 s and the cut 180 s.
        let now = jiff::Timestamp::now().as_second();
        let records = String::leak(format!(
            r#"{{"Records":[{{"SequenceNumber":"1","ApproximateArrivalTimestamp":{now},"Data":"e30=","PartitionKey":"k"}}],"MillisBehindLatest":0}}"#
        ));
        let aws = FakeAws::start(BTreeMap::from([
            ("DescribeDeliveryStream", (200, described("ACTIVE", None))),
            ("ListShards", (200, r#"{"Shards":[{"ShardId":"shardId-0","HashKeyRange":{"StartingHashKey":"0","EndingHashKey":"1"},"SequenceNumberRange":{"StartingSequenceNumber":"0"}}]}"#)),
            ("GetShardIterator", (200, r#"{"ShardIterator":"it-1"}"#)),
            ("GetRecords", (200, records)),
        ]))
        .await;
        let left = |drained| match drained {
            Undelivered::Buffered { left, .. } => left,
            other => panic!("{other:?}"),
        };
        let fresh = left(undelivered(&aws.clients, "p-delivery", "p-output", Duration::ZERO).await.unwrap());
        assert!(Duration::from_secs(85) <= fresh && fresh <= Duration::from_secs(90), "the window from the record: {fresh:?}");
        let near_cut = left(undelivered(&aws.clients, "p-delivery", "p-output", Duration::from_secs(175)).await.unwrap());
        assert_eq!(near_cut, Duration::from_secs(5), "not past the cut");
        let reads = aws.called().iter().filter(|operation| *operation == "GetRecords").count();
        let cut = undelivered(&aws.clients, "p-delivery", "p-output", Duration::from_secs(180)).await.unwrap();
        assert_eq!(cut, Undelivered::KeepsComing { waited: Duration::from_secs(180) });
        assert_eq!(aws.called().iter().filter(|operation| *operation == "GetRecords").count(), reads, "the cut reads no shard");
    }

    #[tokio::test]
    async fn a_refused_update_leaves_the_stream_delivering_as_it_stands_and_is_asked_again_only_at_the_resync() {
        // The spec asks for 128 MiB buffers; Firehose refuses the update as written.
        let mut settings = desired(&config(DeliveryFormat::Json, Compression::Gzip), &connections());
        settings.buffer_size_mib = 128;
        let refused =
            r#"{"__type":"InvalidArgumentException","message":"BufferingHints.SizeInMBs must be at most 128 for this destination"}"#;
        let aws = FakeAws::start(BTreeMap::from([
            ("DescribeDeliveryStream", (200, described("ACTIVE", None))),
            ("ListTagsForDeliveryStream", (200, ours())),
            ("UpdateDestination", (400, refused)),
        ]))
        .await;
        for _ in 0..2 {
            let (reference, outcome) = ensure(&DELIVERY, &aws.clients, &owner(), &settings).await.expect("usable as it stands");
            assert!(reference.arn.is_some() && outcome.pending.is_none(), "{outcome:?}");
            let error = outcome.degraded.expect("the refusal is reported");
            assert!(error.is_terminal() && error.to_string().contains("must be at most 128"), "{error}");
        }
        assert_eq!(aws.called().iter().filter(|operation| *operation == "UpdateDestination").count(), 1, "{:?}", aws.called());
    }

    #[tokio::test]
    async fn a_failed_deletion_is_asked_again_and_its_failure_named() {
        let aws = failed("DELETING_FAILED", ("RETIRE_KMS_GRANT_FAILED", "the grant could not be retired")).await;
        let waiting = delete(&DELIVERY, &aws.clients, &owner()).await.unwrap();
        assert_eq!(
            waiting,
            Removal::Going(
                "Firehose delivery stream p-delivery, which is DELETING_FAILED (RETIRE_KMS_GRANT_FAILED: the grant could not be retired): deleting it again"
                    .into()
            )
        );
        assert_eq!(aws.called().iter().filter(|operation| *operation == "DeleteDeliveryStream").count(), 1, "{:?}", aws.called());
    }

    #[tokio::test]
    async fn every_refusal_of_a_role_iam_has_not_propagated_yet_is_retried_and_says_what_it_waits_for() {
        let settings = desired(&config(DeliveryFormat::Json, Compression::Gzip), &connections());
        // Firehose's answers while the role is not usable yet, in the order the test proxy gives them.
        let refusals = [
            "Firehose is unable to assume role arn:aws:iam::123456789012:role/p-firehose. Please check the role provided.",
            "Role arn:aws:iam::123456789012:role/p-firehose is not authorized to perform: kinesis:DescribeStream on resource arn:aws:kinesis:eu-west-1:123456789012:stream/p-output.",
            "Access was denied when calling Glue. Please ensure that the role specified in the data format conversion configuration has the necessary permissions.",
            "Verify that the IAM role has access to the Elasticsearch domain.",
        ];
        for refusal in refusals {
            let answer = String::leak(serde_json::json!({"__type": "InvalidArgumentException", "message": refusal}).to_string());
            let aws = FakeAws::start(BTreeMap::from([
                ("DescribeDeliveryStream", (400, r#"{"__type":"ResourceNotFoundException","message":"not found"}"#)),
                ("CreateDeliveryStream", (400, &*answer)),
            ]))
            .await;
            let error = ensure(&DELIVERY, &aws.clients, &owner(), &settings).await.expect_err("refused");
            assert!(!error.is_terminal(), "retried: {error}");
            let message = error.to_string();
            assert!(message.contains(refusal), "{message}");
            assert!(
                message.contains("waiting for IAM to make role arn:aws:iam::123456789012:role/p-firehose usable by Firehose"),
                "{message}"
            );
        }
        assert!(!is_role_refusal(
            Some("InvalidArgumentException"),
            "BufferingHints.SizeInMBs must be at least 64 with dynamic partitioning"
        ));
        assert!(!is_role_refusal(Some("AccessDeniedException"), "User is not authorized to perform: firehose:CreateDeliveryStream"));
    }

    fn config(format: DeliveryFormat, compression: Compression) -> DeliveryConfig {
        DeliveryConfig {
            buffer_interval_seconds: 60,
            buffer_size_mib: 64,
            format,
            writer: DeliveryWriter::Firehose,
            compression,
            expire_after_days: None,
        }
    }

    fn connections() -> Connections<'static> {
        Connections {
            output_stream_arn: "arn:aws:kinesis:eu-west-1:123456789012:stream/p-output",
            role_arn: "arn:aws:iam::123456789012:role/p-firehose",
            bucket_arn: "arn:aws:s3:::p-bucket",
            glue_database: "p",
            glue_table: "metric_aggregates",
            region: "eu-west-1",
        }
    }

    #[test]
    fn the_destination_partitions_by_component_with_jq_and_appends_newlines() {
        let destination = destination_configuration(&desired(&config(DeliveryFormat::Json, Compression::Gzip), &connections()));
        assert_eq!(destination.bucket_arn(), "arn:aws:s3:::p-bucket");
        assert_eq!(destination.role_arn(), "arn:aws:iam::123456789012:role/p-firehose");
        assert_eq!(destination.prefix(), Some("componentName=!{partitionKeyFromQuery:componentName}/"));
        assert_eq!(destination.error_output_prefix(), Some("errors/!{firehose:error-output-type}/"));
        assert!(destination.prefix().unwrap().ends_with('/') && destination.error_output_prefix().unwrap().ends_with('/'));
        let hints = destination.buffering_hints().unwrap();
        assert_eq!((hints.interval_in_seconds(), hints.size_in_mbs()), (Some(60), Some(64)));
        assert_eq!(destination.compression_format(), Some(&CompressionFormat::Gzip), "always explicit");
        assert_eq!(destination.dynamic_partitioning_configuration().unwrap().enabled(), Some(true));
        let processors: Vec<(String, Vec<(String, String)>)> = destination
            .processing_configuration()
            .unwrap()
            .processors()
            .iter()
            .map(|p| {
                let parameters = p.parameters().iter().map(|x| (x.parameter_name().as_str().to_owned(), x.parameter_value().to_owned()));
                (p.r#type().as_str().to_owned(), parameters.collect())
            })
            .collect();
        let pair = |name: &str, value: &str| (name.to_owned(), value.to_owned());
        assert_eq!(
            processors,
            [
                (
                    "MetadataExtraction".to_owned(),
                    vec![pair("MetadataExtractionQuery", "{componentName:.componentName}"), pair("JsonParsingEngine", "JQ-1.6")]
                ),
                ("AppendDelimiterToRecord".to_owned(), vec![pair("Delimiter", "\\n")]),
            ]
        );
        assert!(destination.data_format_conversion_configuration().is_none());
    }

    #[test]
    fn parquet_converts_with_the_glue_schema_and_no_s3_compression() {
        let settings = desired(&config(DeliveryFormat::Parquet, Compression::Snappy), &connections());
        let destination = destination_configuration(&settings);
        assert_eq!(destination.compression_format(), Some(&CompressionFormat::Uncompressed));
        let conversion = destination.data_format_conversion_configuration().unwrap();
        let schema = conversion.schema_configuration().unwrap();
        assert_eq!(
            (schema.database_name(), schema.table_name(), schema.region()),
            (Some("p"), Some("metric_aggregates"), Some("eu-west-1"))
        );
        let serializer = conversion.output_format_configuration().unwrap().serializer().unwrap();
        assert_eq!(serializer.parquet_ser_de().unwrap().compression(), Some(&ParquetCompression::Snappy));
        assert!(conversion.input_format_configuration().unwrap().deserializer().unwrap().open_x_json_ser_de().is_some());
    }

    #[test]
    fn snappy_json_is_written_in_the_hadoop_format_athena_reads() {
        let destination = destination_configuration(&desired(&config(DeliveryFormat::Json, Compression::Snappy), &connections()));
        assert_eq!(destination.compression_format(), Some(&CompressionFormat::HadoopSnappy));
    }

    #[test]
    fn the_plan_keeps_updates_or_recreates() {
        let settings = desired(&config(DeliveryFormat::Json, Compression::Gzip), &connections());
        assert_eq!(settings_plan(&settings, None), DeliveryPlan::Create);
        assert_eq!(settings_plan(&settings, Some(Some(settings.clone()))), DeliveryPlan::Keep);
        let mut buffered = settings.clone();
        buffered.buffer_interval_seconds = 300;
        assert_eq!(settings_plan(&settings, Some(Some(buffered))), DeliveryPlan::Update);
        let mut elsewhere = settings.clone();
        elsewhere.source_stream_arn = "arn:aws:kinesis:eu-west-1:123456789012:stream/other".into();
        assert!(
            matches!(settings_plan(&settings, Some(Some(elsewhere))), DeliveryPlan::Recreate(reason) if reason.contains("stream/other"))
        );
        let unpartitioned = DeliverySettings { dynamic_partitioning: false, ..settings.clone() };
        assert!(
            matches!(settings_plan(&settings, Some(Some(unpartitioned))), DeliveryPlan::Recreate(reason) if reason.contains("only when a delivery stream is created")),
            "UpdateDestination cannot turn dynamic partitioning on"
        );
    }
}
