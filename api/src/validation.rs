//! `validate()`: a `MetricsPipeline` in, an already-checked [`PipelineConfig`] out, or every
//! problem at once, each naming the field and saying how to fix it.
//!
//! The CRD schema already refuses much of this, but a v1.20 API server ignores CEL rules, old
//! CRD versions may be installed, and cross-field AWS rules cannot be written in OpenAPI at all:
//! the operator checks everything here before it calls AWS.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Affinity, Toleration};
use metrics_pipeline_model::aggregation::{AggregationSettings, WindowConfig};
use metrics_pipeline_model::event::{EventTime, is_partition_value};

use crate::config::{AwsTarget, DeliveryConfig, PartitionConfig, PipelineConfig, StreamCapacity, StreamConfig};
use crate::naming::{MANAGED_BY_KEY, MAX_PREFIX_LEN, OWNER_TAG, PipelineNames};
use crate::pipeline::{
    AdoptSpec, AggregationSpec, AggregatorSpec, CapacityMode, DeliveryFormat, DeliveryWriter, MetricsPipeline, MetricsPipelineSpec,
    PartitionMode, StreamSpec,
};

/// One problem in the spec: the field (`spec.streams.input.shardCount`) and what to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in one spec.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            error.fmt(f)?;
        }
        Ok(())
    }
}

/// Firehose refuses buffering below these when dynamic partitioning (always on here) or record
/// format conversion is enabled.
pub const MIN_BUFFER_INTERVAL_SECONDS: i32 = 60;
pub const MIN_BUFFER_SIZE_MIB: i32 = 64;
const MAX_BUFFER_INTERVAL_SECONDS: i32 = 900;
const MAX_BUFFER_SIZE_MIB: i32 = 128;

/// Checks the whole spec and resolves defaults and names.
pub fn validate(pipeline: &MetricsPipeline, target: &AwsTarget) -> Result<PipelineConfig, ValidationErrors> {
    let mut errors = Errors::default();
    let spec = &pipeline.spec;

    let region = match spec.region.clone().or_else(|| target.default_region.clone()) {
        Some(region) => region,
        None => {
            errors.add("spec.region", "the operator has no default region: set spec.region, for example `eu-west-1`");
            String::new()
        }
    };
    if let Some(prefix) = &spec.name_prefix {
        check_name_prefix(prefix, &mut errors);
    }
    if let Some(bucket) = &spec.delivery.bucket_name {
        check_bucket_name(bucket, "spec.delivery.bucketName", &mut errors);
    }
    for (field, value) in [("spec.catalog.database", &spec.catalog.database), ("spec.catalog.table", &spec.catalog.table)] {
        if let Some(value) = value {
            check_catalog_name(value, field, &mut errors);
        }
    }

    let input_stream = stream_config(&spec.streams.input, "spec.streams.input", &mut errors);
    let output_stream = stream_config(&spec.streams.output, "spec.streams.output", &mut errors);
    let windowing = window_config(&spec.aggregation, &mut errors);
    let delivery = delivery_config(pipeline, &mut errors);
    let partitions = partition_config(pipeline, &mut errors);
    check_aggregator(&spec.aggregator, &mut errors);
    let read_input_from = spec.adopt.as_ref().and_then(|adopt| check_adoption(spec, adopt, &mut errors));
    check_tags(&spec.tags, &mut errors);

    if !errors.0.is_empty() {
        return Err(ValidationErrors(errors.0));
    }
    let names = PipelineNames::of(pipeline, &target.account_id, &region);
    Ok(PipelineConfig {
        names,
        region,
        deletion_policy: spec.deletion_policy,
        read_input_from,
        aws_role: None,
        input_stream,
        output_stream,
        windowing: windowing.expect("no errors, so the windowing parsed"),
        delivery,
        partitions,
        aggregator: spec.aggregator.clone(),
    })
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError { field: field.into(), message: message.into() });
    }
}

fn check_name_prefix(prefix: &str, errors: &mut Errors) {
    let charset_ok = prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let edges_ok = !prefix.starts_with('-') && !prefix.ends_with('-');
    if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN || !charset_ok || !edges_ok {
        errors.add(
            "spec.namePrefix",
            format!(
                "`{prefix}` cannot prefix AWS names: use 1 to {MAX_PREFIX_LEN} lowercase letters, digits and hyphens, \
                 starting and ending with a letter or digit (bucket names allow nothing else)"
            ),
        );
    }
}

/// The S3 bucket naming rules for general purpose buckets.
fn check_bucket_name(bucket: &str, field: &str, errors: &mut Errors) {
    let problem = if !(3..=63).contains(&bucket.len()) {
        Some(format!("is {} characters long; bucket names have 3 to 63", bucket.len()))
    } else if !bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-') {
        Some("may contain only lowercase letters, digits, dots and hyphens (no capitals, no underscores)".to_owned())
    } else if !bucket.starts_with(|c: char| c.is_ascii_alphanumeric()) || !bucket.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        Some("must start and end with a letter or digit".to_owned())
    } else if bucket.contains("..") || bucket.contains(".-") || bucket.contains("-.") {
        Some("must not have two dots in a row or a dot next to a hyphen".to_owned())
    } else if bucket.parse::<Ipv4Addr>().is_ok() {
        Some("must not look like an IP address".to_owned())
    } else if let Some(reserved) = ["xn--", "sthree-", "amzn-s3-demo-"].into_iter().find(|p| bucket.starts_with(p)) {
        Some(format!("must not start with `{reserved}`, which AWS reserves"))
    } else {
        ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"]
            .into_iter()
            .find(|s| bucket.ends_with(s))
            .map(|reserved| format!("must not end with `{reserved}`, which AWS reserves"))
    };
    if let Some(problem) = problem {
        errors.add(field, format!("`{bucket}` {problem}; leave the field out to get a unique name derived from the pipeline"));
    }
}

/// What an adoption names must agree with the rest of the spec; returns where the aggregator
/// starts reading, if the adoption says.
fn check_adoption(spec: &MetricsPipelineSpec, adopt: &AdoptSpec, errors: &mut Errors) -> Option<EventTime> {
    if let Some(bucket) = &adopt.bucket {
        check_bucket_name(bucket, "spec.adopt.bucket", errors);
    }
    for (field, value) in [("spec.adopt.glueDatabase", &adopt.glue_database), ("spec.adopt.glueTable", &adopt.glue_table)] {
        if let Some(value) = value {
            check_catalog_name(value, field, errors);
        }
    }
    let names_twice = [
        ("spec.adopt.bucket", &adopt.bucket, "spec.delivery.bucketName", &spec.delivery.bucket_name),
        ("spec.adopt.glueDatabase", &adopt.glue_database, "spec.catalog.database", &spec.catalog.database),
        ("spec.adopt.glueTable", &adopt.glue_table, "spec.catalog.table", &spec.catalog.table),
    ];
    for (field, adopted, other, chosen) in names_twice {
        if let (Some(adopted), Some(chosen)) = (adopted, chosen)
            && chosen != adopted
        {
            errors.add(field, format!("names another resource than {other}: leave {other} out, the adopted name is used"));
        }
    }
    if adopt.delivery_stream.is_some() && adopt.firehose_role.is_none() {
        errors.add(
            "spec.adopt.firehoseRole",
            "name the IAM role the adopted delivery stream reads its source with: AWS cannot change a delivery stream's source \
             role, and replacing the delivery stream would lose what it buffers",
        );
    }
    if adopt.delivery_stream.is_some() && adopt.output_stream.is_none() {
        errors.add(
            "spec.adopt.outputStream",
            "name the stream the adopted delivery stream reads: AWS cannot change a delivery stream's source, and replacing \
             the delivery stream would lose what it buffers",
        );
    }
    if adopt.input_stream.is_some() && adopt.input_stream == adopt.output_stream {
        errors.add("spec.adopt.outputStream", "names the input stream: the aggregator would read what it writes");
    }
    if adopt.delivery_stream.is_some() && spec.delivery.writer == DeliveryWriter::Aggregator {
        errors.add(
            "spec.adopt.deliveryStream",
            "writer: Aggregator has no delivery stream, and would delete the adopted one: use writer: Firehose",
        );
    }
    let from = adopt.read_input_from.as_deref()?;
    let parsed = EventTime::parse_rfc3339(from);
    if parsed.is_none() {
        errors.add("spec.adopt.readInputFrom", format!("`{from}` is not an RFC 3339 time, for example 2026-12-07T10:00:00Z"));
    }
    parsed
}

/// Most tags `spec.tags` may hold: AWS allows 50 on a resource, and the operator's own take four.
pub const MAX_USER_TAGS: usize = 46;

/// AWS's tag rules, as the strictest of the services the tags go to: Glue counts bytes, IAM takes
/// keys differing only in case as one, and every service reserves `aws:`.
fn check_tags(tags: &BTreeMap<String, String>, errors: &mut Errors) {
    if tags.len() > MAX_USER_TAGS {
        errors.add(
            "spec.tags",
            format!(
                "holds {} tags; AWS allows 50 on a resource, of which the operator's own take four: keep at most {MAX_USER_TAGS}",
                tags.len()
            ),
        );
    }
    let allowed = |text: &str| text.chars().all(|c| c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c));
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for (key, value) in tags {
        let field = format!("spec.tags[{key}]");
        let reserved = key.to_ascii_lowercase().starts_with("aws:") || key.starts_with("metrics.dev/") || key == MANAGED_BY_KEY;
        if key.is_empty() || key.len() > 128 {
            errors.add(&field, "a tag key has 1 to 128 bytes");
        } else if !allowed(key) || !allowed(value) {
            errors.add(&field, "tags hold letters, digits, spaces and _ . : / = + - @ only");
        } else if reserved {
            errors.add(&field, "keys starting with aws: (AWS's) or metrics.dev/, and app.kubernetes.io/managed-by (the operator's) are reserved: choose another key");
        } else if value.len() > 256 {
            errors.add(&field, "a tag value has at most 256 bytes");
        } else if let Some(other) = seen.insert(key.to_lowercase(), key) {
            errors.add(&field, format!("differs from the key `{other}` only in case, and IAM takes them as one: keep one of them"));
        }
    }
}

fn check_catalog_name(value: &str, field: &str, errors: &mut Errors) {
    if value.is_empty() || value.len() > 255 || !value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        errors.add(
            field,
            format!("`{value}` is not a name Athena can query unquoted: use 1 to 255 lowercase letters, digits and underscores"),
        );
    }
}

fn stream_config(spec: &StreamSpec, field: &str, errors: &mut Errors) -> StreamConfig {
    let capacity = match (spec.capacity_mode, spec.shard_count) {
        (CapacityMode::Provisioned, None) => StreamCapacity::Provisioned { shards: 1 },
        (CapacityMode::Provisioned, Some(shards)) if (1..=10_000).contains(&shards) => StreamCapacity::Provisioned { shards },
        (CapacityMode::Provisioned, Some(shards)) => {
            errors.add(format!("{field}.shardCount"), format!("{shards} shards is not possible: a stream has 1 to 10000 shards"));
            StreamCapacity::Provisioned { shards: 1 }
        }
        (CapacityMode::OnDemand, None) => StreamCapacity::OnDemand,
        (CapacityMode::OnDemand, Some(_)) => {
            errors.add(
                format!("{field}.shardCount"),
                "applies only to capacityMode: Provisioned; remove shardCount, or set capacityMode: Provisioned",
            );
            StreamCapacity::OnDemand
        }
    };
    if !(24..=8760).contains(&spec.retention_hours) {
        errors.add(
            format!("{field}.retentionHours"),
            format!("{} hours is outside what Kinesis keeps: use 24 to 8760 hours", spec.retention_hours),
        );
    }
    StreamConfig { capacity, retention_hours: spec.retention_hours }
}

fn window_config(spec: &AggregationSpec, errors: &mut Errors) -> Option<WindowConfig> {
    let settings = AggregationSettings {
        window: &spec.window,
        out_of_orderness: &spec.out_of_orderness,
        allowed_lateness: &spec.allowed_lateness,
        idle_timeout: &spec.idle_timeout,
        max_future_skew: &spec.max_future_skew,
    };
    WindowConfig::parse(&settings)
        .map_err(|problems| {
            for problem in problems {
                errors.add(format!("spec.aggregation.{}", problem.setting), problem.message);
            }
        })
        .ok()
}

fn delivery_config(pipeline: &MetricsPipeline, errors: &mut Errors) -> DeliveryConfig {
    let spec = &pipeline.spec.delivery;
    // Dynamic partitioning on componentName is always on, so its minimums always apply.
    let why = match spec.format {
        DeliveryFormat::Json => "dynamic partitioning is on",
        DeliveryFormat::Parquet => "dynamic partitioning and Parquet conversion are on",
    };
    if !(MIN_BUFFER_INTERVAL_SECONDS..=MAX_BUFFER_INTERVAL_SECONDS).contains(&spec.buffer_interval_seconds) {
        errors.add(
            "spec.delivery.bufferIntervalSeconds",
            format!(
                "{} is not allowed: Firehose needs {MIN_BUFFER_INTERVAL_SECONDS} to {MAX_BUFFER_INTERVAL_SECONDS} seconds when {why}",
                spec.buffer_interval_seconds
            ),
        );
    }
    if !(MIN_BUFFER_SIZE_MIB..=MAX_BUFFER_SIZE_MIB).contains(&spec.buffer_size_mib) {
        errors.add(
            "spec.delivery.bufferSizeMiB",
            format!(
                "{} is not allowed: Firehose needs {MIN_BUFFER_SIZE_MIB} to {MAX_BUFFER_SIZE_MIB} MiB when {why}",
                spec.buffer_size_mib
            ),
        );
    }
    if let Some(days) = spec.expire_after_days
        && days < 1
    {
        errors.add(
            "spec.delivery.expireAfterDays",
            format!("{days} is not a number of days: use 1 or more, or leave it out to keep objects"),
        );
    }
    if spec.writer == DeliveryWriter::Aggregator && spec.format != DeliveryFormat::Parquet {
        errors.add(
            "spec.delivery.writer",
            "Aggregator writes Parquet files only: set format: Parquet, or writer: Firehose for newline-delimited JSON",
        );
    }
    DeliveryConfig {
        buffer_interval_seconds: spec.buffer_interval_seconds,
        buffer_size_mib: spec.buffer_size_mib,
        format: spec.format,
        writer: spec.writer,
        compression: spec.compression,
        expire_after_days: spec.expire_after_days,
    }
}

fn partition_config(pipeline: &MetricsPipeline, errors: &mut Errors) -> PartitionConfig {
    let spec = &pipeline.spec.catalog.partitions;
    let field = "spec.catalog.partitions.components";
    match spec.mode {
        PartitionMode::Registered => {
            if !spec.components.is_empty() {
                errors.add(field, "is used only with mode: Projected; remove it, or set mode: Projected");
            }
            PartitionConfig::Registered
        }
        PartitionMode::Projected => {
            if spec.components.is_empty() {
                errors.add(field, "mode: Projected needs the list of component names to project; list them, or use mode: Registered");
            }
            for (index, component) in spec.components.iter().enumerate() {
                if !is_partition_value(component) {
                    errors.add(
                        format!("{field}[{index}]"),
                        format!("`{component}` cannot be a partition value: use letters, digits, `.`, `_` and `-` (at most 255)"),
                    );
                } else if spec.components[..index].contains(component) {
                    errors.add(format!("{field}[{index}]"), format!("`{component}` is listed twice; list each component once"));
                }
            }
            PartitionConfig::Projected(spec.components.clone())
        }
    }
}

fn check_aggregator(spec: &AggregatorSpec, errors: &mut Errors) {
    if !(0..=1).contains(&spec.replicas) {
        errors.add(
            "spec.aggregator.replicas",
            format!("{} replicas would aggregate every event more than once: use 1 (running) or 0 (paused)", spec.replicas),
        );
    }
    if spec.image.as_deref() == Some("") {
        errors.add("spec.aggregator.image", "is empty: name an image, or leave the field out for the default");
    }
    for key in spec.service_account_annotations.keys() {
        let field = format!("spec.aggregator.serviceAccountAnnotations[{key}]");
        if key == OWNER_TAG {
            errors.add(field, format!("`{OWNER_TAG}` is the operator's ownership mark: remove this annotation"));
        } else if let Err(problem) = check_annotation_key(key) {
            errors.add(field, format!("`{key}` is not a Kubernetes annotation key: {problem}"));
        }
    }
    if let Some(written) = &spec.affinity
        && let Err(problem) = affinity(written)
    {
        errors.add("spec.aggregator.affinity", problem);
    }
    for (index, written) in spec.tolerations.iter().enumerate() {
        if let Err(problem) = toleration(written) {
            errors.add(format!("spec.aggregator.tolerations[{index}]"), problem);
        }
    }
    for key in spec.pod_annotations.keys() {
        if let Err(problem) = check_annotation_key(key) {
            errors.add(format!("spec.aggregator.podAnnotations[{key}]"), format!("`{key}` is not a Kubernetes annotation key: {problem}"));
        }
    }
    const IRSA_ANNOTATION: &str = "eks.amazonaws.com/role-arn";
    if let Some(arn) = spec.service_account_annotations.get(IRSA_ANNOTATION)
        && !is_iam_role_arn(arn)
    {
        errors.add(
            format!("spec.aggregator.serviceAccountAnnotations[{IRSA_ANNOTATION}]"),
            format!("`{arn}` is not an IAM role ARN: write arn:aws:iam::<12-digit account>:role/<name>"),
        );
    }
}

/// The affinity as a Pod takes it; an error names what a Pod's affinity does not have (a misspelt
/// field would otherwise be dropped on the way to the Deployment, and the pod placed anywhere).
pub fn affinity(written: &serde_json::Value) -> Result<Affinity, String> {
    as_a_pod_takes_it(written, "a Pod's affinity (nodeAffinity, podAffinity, podAntiAffinity and theirs)")
}

/// A toleration as a Pod takes it; an error names what a toleration does not have (a toleration
/// whose misspelt `effect` is dropped tolerates every effect).
pub fn toleration(written: &serde_json::Value) -> Result<Toleration, String> {
    as_a_pod_takes_it(written, "a toleration (key, operator, value, effect, tolerationSeconds)")
}

/// `written` read into the Pod's type `T`, refused when it holds a field `T` does not have.
fn as_a_pod_takes_it<T: serde::de::DeserializeOwned + serde::Serialize>(written: &serde_json::Value, what: &str) -> Result<T, String> {
    let typed: T = serde_json::from_value(written.clone()).map_err(|error| format!("is not {what}: {error}"))?;
    let understood = serde_json::to_value(&typed).map_err(|error| error.to_string())?;
    match unknown_field(written, &understood, "") {
        Some(path) => Err(format!("`{path}` is not a field of {what}")),
        None => Ok(typed),
    }
}

/// The first path in `written` that `understood` (the same, read into a typed value and written
/// back) lacks.
fn unknown_field(written: &serde_json::Value, understood: &serde_json::Value, path: &str) -> Option<String> {
    match (written, understood) {
        (serde_json::Value::Object(written), serde_json::Value::Object(understood)) => written.iter().find_map(|(key, value)| {
            let path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            match understood.get(key) {
                Some(known) => unknown_field(value, known, &path),
                // An empty value is left out when written back: not unknown.
                None if value.is_null()
                    || value.as_array().is_some_and(Vec::is_empty)
                    || value.as_object().is_some_and(|o| o.is_empty()) =>
                {
                    None
                }
                None => Some(path),
            }
        }),
        (serde_json::Value::Array(written), serde_json::Value::Array(understood)) => written
            .iter()
            .zip(understood)
            .enumerate()
            .find_map(|(index, (value, known))| unknown_field(value, known, &format!("{path}[{index}]"))),
        _ => None,
    }
}

/// Kubernetes' rule for annotation keys (a qualified name): an optional DNS-subdomain prefix and
/// `/`, then a name of at most 63 characters, alphanumeric at both ends. The API server refuses
/// anything else, after the AWS side was already made.
fn check_annotation_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if prefix.len() > 253 || !prefix.split('.').all(label_ok) {
            return Err(format!(
                "the prefix `{prefix}` must be a DNS subdomain (lower-case letters, digits, `-` and `.`, at most 253 characters)"
            ));
        }
    }
    let inner_ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    let ends_ok =
        name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric()) && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if name.len() > 63 || !ends_ok || !name.bytes().all(inner_ok) {
        return Err(format!(
            "the name `{name}` must be at most 63 letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit, \
             after an optional `<dns-prefix>/`"
        ));
    }
    Ok(())
}

fn is_iam_role_arn(arn: &str) -> bool {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("iam"), Some(""), Some(account), Some(resource)) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    partition.starts_with("aws")
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && resource.strip_prefix("role/").is_some_and(|name| !name.is_empty())
}

#[cfg(test)]
mod tests;
