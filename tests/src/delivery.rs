//! A stand-in for Firehose's data path, which the emulator does not run: it reads a delivery
//! stream's configuration back from the emulator and applies it — reads the source stream,
//! runs the MetadataExtraction query with Debian's jq 1.6, evaluates the prefix, appends the
//! delimiter, compresses, and writes one object per partition and buffer; records the query
//! cannot key go to the error prefix. A wrong query or prefix in the operator shows here.
//!
//! As Firehose does, it reads its Kinesis source from LATEST as of when the delivery stream
//! became ACTIVE: records written to the output stream before that are never delivered, so an
//! aggregator started too early shows as windows missing from the table.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use aws_sdk_firehose::types::{CompressionFormat, DeliveryStreamStatus, ProcessorParameterName, ProcessorType};
use aws_sdk_kinesis::types::ShardIteratorType;
use metrics_pipeline_operator::aws::delivery::{DeliverySettings, settings_of};

/// Firehose's name for the error output type of records dynamic partitioning could not key.
const PROCESSING_FAILED: &str = "processing-failed";
/// ... and of records the Parquet conversion could not convert.
const FORMAT_CONVERSION_FAILED: &str = "format-conversion-failed";

/// Firehose's record-format conversion: the Glue table's columns and the codec in the files.
struct Conversion {
    columns: Vec<aws_sdk_glue::types::Column>,
    codec: parquet::basic::Compression,
}

pub struct DeliveryStandIn {
    name: String,
    settings: DeliverySettings,
    kinesis: aws_sdk_kinesis::Client,
    s3: aws_sdk_s3::Client,
    /// Last sequence number delivered, per source shard.
    positions: BTreeMap<String, String>,
    /// Where a shard not read before starts: when the delivery stream became ACTIVE.
    reads_from: aws_smithy_types::DateTime,
    buffers_written: u32,
    conversion: Option<Conversion>,
}

/// What one buffer delivered: object keys written, records per key.
pub type Delivered = BTreeMap<String, usize>;

impl DeliveryStandIn {
    /// Reads the delivery stream's configuration from the emulator; it must be ACTIVE.
    pub async fn load(sdk: &aws_config::SdkConfig, name: &str) -> anyhow::Result<Self> {
        let firehose = aws_sdk_firehose::Client::new(sdk);
        let description = firehose
            .describe_delivery_stream()
            .delivery_stream_name(name)
            .send()
            .await
            .with_context(|| format!("describing delivery stream {name}"))?
            .delivery_stream_description
            .context("no description")?;
        let settings = settings_of(&description).context("not a Kinesis-sourced extended S3 delivery stream")?;
        if description.delivery_stream_status() != &DeliveryStreamStatus::Active {
            bail!("delivery stream {name} is {}: Firehose reads nothing before it is ACTIVE", description.delivery_stream_status());
        }
        // The emulator's delivery streams are ACTIVE from their creation on (see `creating_for`).
        let reads_from = *description.create_timestamp().with_context(|| format!("delivery stream {name} has no CreateTimestamp"))?;
        let conversion = match &settings.parquet {
            None => None,
            Some(parquet) => {
                // As Firehose does: the schema is the Glue table's, read when the stream starts.
                let glue = aws_sdk_glue::Client::new(sdk);
                let table = glue.get_table().database_name(&parquet.database).name(&parquet.table).send().await;
                let table = table
                    .with_context(|| format!("reading the conversion's table {}.{}", parquet.database, parquet.table))?
                    .table
                    .context("no table")?;
                let columns = table.storage_descriptor().map(|s| s.columns().to_vec()).unwrap_or_default();
                Some(Conversion { columns, codec: crate::parquet::codec(&parquet.compression)? })
            }
        };
        Ok(Self {
            conversion,
            name: name.to_owned(),
            settings,
            kinesis: aws_sdk_kinesis::Client::new(sdk),
            s3: metrics_pipeline_runtime::sdk::s3_client(sdk),
            positions: BTreeMap::new(),
            reads_from,
            buffers_written: 0,
        })
    }

    /// Reads the delivery stream's configuration again after an UpdateDestination, going on from
    /// where it was in the source, as Firehose does.
    pub async fn reload(&mut self, sdk: &aws_config::SdkConfig) -> anyhow::Result<()> {
        let again = Self::load(sdk, &self.name).await?;
        (self.settings, self.conversion) = (again.settings, again.conversion);
        Ok(())
    }

    /// For a delivery stream that stayed CREATING for `creating` after its creation (the AWS
    /// proxy's `transition`): it reads from when it became ACTIVE.
    pub fn creating_for(mut self, creating: Duration) -> Self {
        self.reads_from = aws_smithy_types::DateTime::from_secs_f64(self.reads_from.as_secs_f64() + creating.as_secs_f64());
        self
    }

    fn parameter(&self, processor: ProcessorType, name: ProcessorParameterName) -> Option<&str> {
        self.settings
            .processors
            .iter()
            .find(|(kind, _)| *kind == processor)
            .and_then(|(_, parameters)| parameters.iter().find(|(key, _)| *key == name))
            .map(|(_, value)| value.as_str())
    }

    /// Delivers everything published to the source since the last call, as one buffer.
    pub async fn deliver(&mut self) -> anyhow::Result<Delivered> {
        let query = self.parameter(ProcessorType::MetadataExtraction, ProcessorParameterName::MetadataExtractionQuery).map(str::to_owned);
        let engine = self.parameter(ProcessorType::MetadataExtraction, ProcessorParameterName::JsonParsingEngine).unwrap_or_default();
        if engine != "JQ-1.6" {
            bail!("delivery stream {}: JsonParsingEngine is `{engine}`, Firehose knows only JQ-1.6", self.name);
        }
        let query = query.with_context(|| format!("delivery stream {}: no MetadataExtractionQuery", self.name))?;
        let delimiter = match self.parameter(ProcessorType::AppendDelimiterToRecord, ProcessorParameterName::Delimiter) {
            Some(delimiter) => delimiter.replace("\\n", "\n"),
            None if self.settings.processors.iter().any(|(kind, _)| *kind == ProcessorType::AppendDelimiterToRecord) => "\n".to_owned(),
            None => String::new(),
        };
        let mut objects: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut converted: BTreeMap<String, Vec<serde_json::Map<String, serde_json::Value>>> = BTreeMap::new();
        let mut counts = Delivered::new();
        for (record, arrival) in self.read_source().await? {
            let failure = match partition_keys(&query, &record) {
                Err(reason) => Some((PROCESSING_FAILED, "DynamicPartitioning.MetadataExtractionFailed", reason)),
                Ok(keys) => {
                    let prefix = evaluate_prefix(&self.settings.prefix, &keys)?;
                    let row = self.conversion.as_ref().map(|conversion| convertible(&record, conversion)).transpose();
                    match row {
                        Err(reason) => Some((FORMAT_CONVERSION_FAILED, "DataFormatConversion.MalformedData", reason)),
                        Ok(row) => {
                            match row {
                                Some(row) => converted.entry(prefix.clone()).or_default().push(row),
                                None => {
                                    let body = objects.entry(prefix.clone()).or_default();
                                    body.extend(&record);
                                    body.extend(delimiter.as_bytes());
                                }
                            }
                            *counts.entry(prefix).or_default() += 1;
                            None
                        }
                    }
                }
            };
            if let Some((output_type, code, reason)) = failure {
                let prefix = self.settings.error_prefix.replace("!{firehose:error-output-type}", output_type);
                let failed = serde_json::json!({
                    "attemptsMade": 1,
                    "arrivalTimestamp": arrival,
                    "errorCode": code,
                    "errorMessage": reason,
                    "rawData": aws_smithy_types::base64::encode(&record),
                });
                let body = objects.entry(prefix.clone()).or_default();
                body.extend(serde_json::to_vec(&failed)?);
                body.push(b'\n');
                *counts.entry(prefix).or_default() += 1;
            }
        }
        self.buffers_written += 1;
        let mut delivered = Delivered::new();
        let mut files: Vec<(String, Vec<u8>, &str)> = Vec::new();
        for (prefix, body) in objects {
            let (body, extension) = compress(&self.settings.compression, body)?;
            files.push((prefix, body, extension));
        }
        if let Some(conversion) = &self.conversion {
            for (prefix, rows) in converted {
                files.push((prefix, crate::parquet::write_rows(&rows, &conversion.columns, conversion.codec)?, ".parquet"));
            }
        }
        for (prefix, body, extension) in files {
            let key = format!("{prefix}{}-1-{:04}{extension}", self.name, self.buffers_written);
            let bucket = self.settings.bucket_arn.rsplit(':').next().unwrap_or_default().to_owned();
            self.s3
                .put_object()
                .bucket(&bucket)
                .key(&key)
                .body(body.into())
                .send()
                .await
                .with_context(|| format!("writing s3://{bucket}/{key}"))?;
            delivered.insert(key, counts[&prefix]);
        }
        Ok(delivered)
    }

    /// Every record after the last delivered one, with its arrival time in epoch millis.
    async fn read_source(&mut self) -> anyhow::Result<Vec<(Vec<u8>, i64)>> {
        let stream = self.settings.source_stream_arn.clone();
        let shards = self.kinesis.list_shards().stream_arn(&stream).send().await.context("listing source shards")?;
        let mut records = Vec::new();
        for shard in shards.shards() {
            let request = self.kinesis.get_shard_iterator().stream_arn(&stream).shard_id(shard.shard_id());
            let request = match self.positions.get(shard.shard_id()) {
                Some(after) => request.shard_iterator_type(ShardIteratorType::AfterSequenceNumber).starting_sequence_number(after),
                None => request.shard_iterator_type(ShardIteratorType::AtTimestamp).timestamp(self.reads_from),
            };
            let mut iterator = request.send().await.context("getting a shard iterator")?.shard_iterator;
            while let Some(current) = iterator.take() {
                let page =
                    self.kinesis.get_records().shard_iterator(current).stream_arn(&stream).send().await.context("reading the source")?;
                if page.records().is_empty() {
                    break;
                }
                for record in page.records() {
                    let arrival = record.approximate_arrival_timestamp().map_or(0, |t| t.to_millis().unwrap_or(0));
                    records.push((record.data().as_ref().to_vec(), arrival));
                    self.positions.insert(shard.shard_id().to_owned(), record.sequence_number().to_owned());
                }
                iterator = page.next_shard_iterator;
            }
        }
        Ok(records)
    }
}

/// Runs the MetadataExtraction query on one record with jq 1.6, as Firehose does: the result
/// must be an object whose values are the partition keys, none of them null.
fn partition_keys(query: &str, record: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let output = crate::pipe_through("jq", &["-c", query], record).map_err(|error| error.to_string())?;
    let value: serde_json::Value = serde_json::from_slice(&output).map_err(|error| format!("jq output: {error}"))?;
    let object = value.as_object().ok_or("the query did not produce an object")?;
    object
        .iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(text) => Ok((key.clone(), text.clone())),
            serde_json::Value::Number(number) => Ok((key.clone(), number.to_string())),
            other => Err(format!("partition key `{key}` is {other}")),
        })
        .collect()
}

/// Replaces `!{partitionKeyFromQuery:<key>}` in the prefix; an unknown key is a configuration error.
fn evaluate_prefix(prefix: &str, keys: &BTreeMap<String, String>) -> anyhow::Result<String> {
    let mut evaluated = String::new();
    let mut rest = prefix;
    while let Some(start) = rest.find("!{") {
        evaluated.push_str(&rest[..start]);
        let end = rest[start..].find('}').with_context(|| format!("unterminated expression in prefix `{prefix}`"))? + start;
        let expression = &rest[start + 2..end];
        let key =
            expression.strip_prefix("partitionKeyFromQuery:").with_context(|| format!("prefix `{prefix}`: unsupported `{expression}`"))?;
        evaluated.push_str(keys.get(key).with_context(|| format!("prefix `{prefix}` names `{key}`, which the query does not extract"))?);
        rest = &rest[end + 1..];
    }
    evaluated.push_str(rest);
    Ok(evaluated)
}

/// A record as the OpenX JSON deserializer reads it, if the table's columns can hold it.
fn convertible(record: &[u8], conversion: &Conversion) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let row: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(record).map_err(|error| format!("not a JSON object: {error}"))?;
    crate::parquet::write_rows(std::slice::from_ref(&row), &conversion.columns, parquet::basic::Compression::UNCOMPRESSED)
        .map_err(|error| error.to_string())?;
    Ok(row)
}

/// An object's body as Firehose compresses it, with the file extension it gives the object.
pub fn compress(format: &CompressionFormat, body: Vec<u8>) -> anyhow::Result<(Vec<u8>, &'static str)> {
    match format {
        CompressionFormat::Uncompressed => Ok((body, "")),
        CompressionFormat::Gzip => Ok((crate::pipe_through("gzip", &["-c"], &body)?, ".gz")),
        CompressionFormat::HadoopSnappy => Ok((hadoop_snappy(&body)?, ".snappy")),
        other => bail!("the stand-in does not write {other:?} yet"),
    }
}

/// Hadoop's block framing of Snappy, which Athena reads: per block of at most 256 KiB its length,
/// then the compressed block prefixed with its length, both big-endian.
fn hadoop_snappy(body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut framed = Vec::new();
    for block in body.chunks(256 * 1024) {
        let compressed = snap::raw::Encoder::new().compress_vec(block)?;
        framed.extend(u32::try_from(block.len())?.to_be_bytes());
        framed.extend(u32::try_from(compressed.len())?.to_be_bytes());
        framed.extend(compressed);
    }
    Ok(framed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operators_query_keys_records_by_component_and_refuses_those_without_one() {
        let query = metrics_pipeline_operator::aws::delivery::METADATA_EXTRACTION_QUERY;
        let keys = partition_keys(query, br#"{"componentName":"user-service","minValue":1}"#).unwrap();
        assert_eq!(evaluate_prefix(metrics_pipeline_operator::aws::delivery::PREFIX, &keys).unwrap(), "componentName=user-service/");
        assert!(partition_keys(query, br#"{"metricName":"cpu"}"#).unwrap_err().contains("is null"));
        assert!(partition_keys(query, b"not json").unwrap_err().starts_with("jq:"));
    }

    #[test]
    fn a_prefix_naming_a_key_the_query_lacks_is_an_error() {
        let keys = BTreeMap::from([("componentName".to_owned(), "a".to_owned())]);
        assert!(evaluate_prefix("x=!{partitionKeyFromQuery:other}/", &keys).is_err());
    }
}
