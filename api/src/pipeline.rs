//! The `MetricsPipeline` custom resource (v1alpha1).
//!
//! The OpenAPI schema carries every constraint a v1.20 API server can check (ranges, enums,
//! patterns, defaults); cross-field AWS rules live in [`crate::validation`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LocalObjectReference, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use metrics_pipeline_model::aggregation::{
    DEFAULT_ALLOWED_LATENESS, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_FUTURE_SKEW, DEFAULT_OUT_OF_ORDERNESS, DEFAULT_WINDOW,
};
use metrics_pipeline_model::duration::DURATION_PATTERN;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A complete AWS metrics pipeline: input and output Kinesis streams, the aggregator that turns
/// metric events into windowed aggregates, a Firehose delivery stream with dynamic partitioning
/// into S3, and a Glue table so Athena can query the aggregates.
// Each `printcolumn(...)` names its own `type_`: clippy mistakes them for one repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "pipelines.metrics.dev",
    version = "v1alpha1",
    kind = "MetricsPipeline",
    plural = "metricspipelines",
    shortname = "mp",
    namespaced,
    doc = "A complete AWS metrics pipeline from one resource: Kinesis streams, the aggregator, Firehose into S3, and a Glue table for Athena.",
    status = "MetricsPipelineStatus",
    derive = "PartialEq",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Data", type_ = "string", json_path = ".status.conditions[?(@.type==\"DataFlowing\")].reason"),
    printcolumn(name = "Lag (s)", type_ = "integer", json_path = ".status.dataFlow.watermarkLagSeconds"),
    printcolumn(name = "Input stream", type_ = "string", json_path = ".status.inputStream.name"),
    printcolumn(name = "Output stream", type_ = "string", json_path = ".status.outputStream.name"),
    printcolumn(name = "Bucket", type_ = "string", json_path = ".status.bucket.name"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct MetricsPipelineSpec {
    /// AWS region for every resource of this pipeline, e.g. `eu-west-1`. Default: the
    /// operator's own region (its AWS_REGION).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]$"))]
    pub region: Option<String>,

    /// Prefix of every AWS resource name (streams, bucket, role, delivery stream). Lowercase
    /// letters, digits and hyphens, at most 40 characters. Default: `<namespace>-<name>`,
    /// shortened with a hash when longer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 40), regex(pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"))]
    pub name_prefix: Option<String>,

    /// What happens to the AWS resources when this resource is deleted. Each policy stops the
    /// aggregator first and lets Firehose deliver what it buffered. `Delete` removes every AWS
    /// resource, including the bucket and its objects; `Retain` keeps the bucket (with the data)
    /// and the Glue catalog, and removes the rest; `Orphan` leaves every AWS resource as it is,
    /// tagged, for a new pipeline to take over (`spec.adoptFrom`) or for removal by hand.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// What the operator may do to the pipeline's AWS resources. `Full` (default): create,
    /// change and, as `deletionPolicy` says, delete them. `ObserveOnly`: read every one, report
    /// how it differs from this spec (`status.drift`, a `Drift` event, the `Ready` condition),
    /// and change nothing: no resource is created, tagged, changed or deleted, deleting the
    /// pipeline leaves them all, and no aggregator is deployed (one running from before stays).
    /// Use it to see what the operator would do to a stack another tool manages before it takes
    /// over. `NoDelete`:
    /// create and change, never delete: a change that needs a resource replaced (a delivery
    /// stream's source, a table's partition keys) is refused, and deleting the pipeline leaves
    /// every AWS resource as `deletionPolicy: Orphan` does. To stop reconciling altogether for
    /// maintenance, annotate the pipeline `pipelines.metrics.dev/paused: "true"`.
    #[serde(default)]
    pub management_policy: ManagementPolicy,

    /// Tags for every AWS resource the pipeline makes or adopts (cost allocation, ownership by
    /// team): the streams, the bucket, the Firehose role and delivery stream, and the Glue
    /// database (Glue tags no tables). At most 46 (AWS allows 50 on a resource; the operator's
    /// own four mark ownership), keys of 1 to 128 and values of up to 256 bytes, of letters,
    /// digits, spaces and `_ . : / = + - @`; keys starting with `aws:` or `metrics.dev/` and
    /// `app.kubernetes.io/managed-by` are reserved, and two keys may not differ only in case (IAM
    /// takes them as one). A key removed here is removed from the resources; tags others set stay.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,

    /// The Kinesis data streams: `input` receives metric events from producers, `output`
    /// receives the aggregates and feeds Firehose.
    #[serde(default)]
    pub streams: StreamsSpec,

    /// Event-time windowing of the aggregator.
    #[serde(default)]
    pub aggregation: AggregationSpec,

    /// Firehose delivery of aggregates from the output stream into S3.
    #[serde(default)]
    pub delivery: DeliverySpec,

    /// Glue Data Catalog table over the bucket, for Athena.
    #[serde(default)]
    pub catalog: CatalogSpec,

    /// The aggregator Deployment the operator runs in this namespace.
    #[serde(default)]
    pub aggregator: AggregatorSpec,

    /// Take over the AWS resources of an earlier pipeline of this namespace and name: one deleted
    /// with `deletionPolicy: Retain` and created again (a new UID), or one of another cluster (a
    /// blue/green move).
    /// Without it the operator refuses every resource another pipeline made, and its condition
    /// names the UID to put here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopt_from: Option<AdoptFrom>,

    /// Take over AWS resources made by hand or by another tool (a CloudFormation stack, the
    /// console), each under the name given here instead of the one the operator derives. Until
    /// `confirmed`, the pipeline only observes: every named resource (and every other part) is
    /// read and each difference from this spec listed in `status.drift`, and nothing is tagged,
    /// changed or deleted. Set it when the pipeline is created: the names are kept as its identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopt: Option<AdoptSpec>,
}

/// Existing AWS resources a pipeline takes over, by name; a part not named is made by the
/// operator as usual.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdoptSpec {
    /// The Kinesis stream producers write to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[a-zA-Z0-9_.-]+$"))]
    pub input_stream: Option<String>,
    /// The Kinesis stream the aggregates go to, which the delivery stream reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[a-zA-Z0-9_.-]+$"))]
    pub output_stream: Option<String>,
    /// The S3 bucket the aggregates are delivered to; its objects are kept while the pipeline
    /// runs, and on its deletion as `deletionPolicy` says (`Delete` empties and deletes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 63), regex(pattern = r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$"))]
    pub bucket: Option<String>,
    /// The IAM role the delivery stream reads its source and writes the bucket with. Needed
    /// with `deliveryStream`: AWS cannot change a delivery stream's source role, and a
    /// replaced delivery stream would lose what it buffers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[\w+=,.@-]+$"))]
    pub firehose_role: Option<String>,
    /// The Firehose delivery stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[a-zA-Z0-9_.-]+$"))]
    pub delivery_stream: Option<String>,
    /// The Glue database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[a-z0-9_]+$"))]
    pub glue_database: Option<String>,
    /// The Glue table; its partitions are registered again from the bucket if it must be
    /// recreated (other partition keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[a-z0-9_]+$"))]
    pub glue_table: Option<String>,
    /// Where the aggregator starts reading the input stream on its first start, as an RFC 3339
    /// time: when the job it replaces stopped, so that what that job aggregated is not
    /// aggregated again. Default: the oldest record in the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_input_from: Option<String>,
    /// `false` (default): compare only. `true`: tag the named resources as this pipeline's and
    /// bring them to the spec, as `status.drift` listed.
    #[serde(default)]
    pub confirmed: bool,
}

impl MetricsPipelineSpec {
    /// When the operator only reads (`managementPolicy: ObserveOnly`, or an adoption not
    /// confirmed yet), what ends that.
    pub fn observing_until(&self) -> Option<&'static str> {
        if self.management_policy == ManagementPolicy::ObserveOnly {
            Some("spec.managementPolicy is Full or NoDelete")
        } else if self.adopt.as_ref().is_some_and(|adopt| !adopt.confirmed) {
            Some("spec.adopt.confirmed is true, which takes the named resources over and brings them to the spec")
        } else {
            None
        }
    }

    /// Whether the operator may delete what the pipeline has in AWS.
    pub fn deletes(&self) -> bool {
        self.management_policy.deletes() && self.observing_until().is_none()
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdoptFrom {
    /// `metadata.uid` of the earlier pipeline, as its resources' `metrics.dev/pipeline-uid` tag
    /// holds it.
    #[schemars(regex(pattern = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"))]
    pub pipeline_uid: String,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Delete,
    Retain,
    Orphan,
}

/// See `spec.managementPolicy`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ManagementPolicy {
    #[default]
    Full,
    ObserveOnly,
    NoDelete,
}

impl ManagementPolicy {
    /// Whether the operator may delete what the pipeline has in AWS.
    pub fn deletes(self) -> bool {
        self == Self::Full
    }
}

/// Annotation that stops every reconcile of a pipeline while its value is `"true"`: nothing in
/// AWS or Kubernetes is read or changed, and a deletion waits (an administrator's switch for
/// maintenance, kept out of the spec that GitOps tools own).
pub const PAUSED_ANNOTATION: &str = "pipelines.metrics.dev/paused";

/// Whether `pipeline` is paused by [`PAUSED_ANNOTATION`].
pub fn is_paused(pipeline: &MetricsPipeline) -> bool {
    pipeline.metadata.annotations.as_ref().and_then(|annotations| annotations.get(PAUSED_ANNOTATION)).is_some_and(|value| value == "true")
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamsSpec {
    /// The stream producers write metric events to.
    #[serde(default)]
    pub input: StreamSpec,
    /// The stream the aggregator writes aggregates to; Firehose reads it.
    #[serde(default)]
    pub output: StreamSpec,
}

/// Capacity and retention of one Kinesis data stream.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamSpec {
    /// `Provisioned` (a fixed number of shards, see `shardCount`) or `OnDemand` (Kinesis scales
    /// the shards itself).
    #[serde(default)]
    pub capacity_mode: CapacityMode,

    /// Number of shards of a `Provisioned` stream (each takes 1 MiB/s or 1000 records/s in).
    /// Default 1. Leave it out for `OnDemand`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub shard_count: Option<i32>,

    /// How long records stay readable, in hours: 24 (the Kinesis default) to 8760 (365 days).
    #[serde(default = "default_retention_hours")]
    #[schemars(range(min = 24, max = 8760))]
    pub retention_hours: i32,
}

impl Default for StreamSpec {
    fn default() -> Self {
        Self { capacity_mode: CapacityMode::default(), shard_count: None, retention_hours: default_retention_hours() }
    }
}

fn default_retention_hours() -> i32 {
    24
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CapacityMode {
    #[default]
    Provisioned,
    OnDemand,
}

/// Event-time tumbling windows per (componentName, metricName, unit).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AggregationSpec {
    /// Length of each tumbling window, aligned to the epoch (`1m`, `5m`, `1h`).
    #[serde(default = "default_window")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub window: String,

    /// How far out of order events may arrive: the watermark trails the latest event time seen
    /// by this much, and a window fires once the watermark passes its end.
    #[serde(default = "default_out_of_orderness")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub out_of_orderness: String,

    /// How long after firing a window still accepts late events; each one re-emits the window
    /// with `revision + 1`. Events later than that are counted and kept in the dead-letter prefix.
    #[serde(default = "default_allowed_lateness")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub allowed_lateness: String,

    /// When no record arrives for this long, every open window fires as at end of input, so a
    /// short burst of events still produces output.
    #[serde(default = "default_idle_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub idle_timeout: String,

    /// How far ahead of the wall clock a producer's clock may be. Events stamped later than that
    /// are not counted and are kept in the dead-letter prefix (reason `future_timestamp`); within
    /// it they count in their window, but never move the watermark past the wall clock.
    #[serde(default = "default_max_future_skew")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_future_skew: String,
}

impl Default for AggregationSpec {
    fn default() -> Self {
        Self {
            window: default_window(),
            out_of_orderness: default_out_of_orderness(),
            allowed_lateness: default_allowed_lateness(),
            idle_timeout: default_idle_timeout(),
            max_future_skew: default_max_future_skew(),
        }
    }
}

fn default_window() -> String {
    DEFAULT_WINDOW.into()
}
fn default_out_of_orderness() -> String {
    DEFAULT_OUT_OF_ORDERNESS.into()
}
fn default_allowed_lateness() -> String {
    DEFAULT_ALLOWED_LATENESS.into()
}
fn default_idle_timeout() -> String {
    DEFAULT_IDLE_TIMEOUT.into()
}
fn default_max_future_skew() -> String {
    DEFAULT_MAX_FUTURE_SKEW.into()
}

/// Firehose delivery from the output stream into S3, partitioned by `componentName`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySpec {
    /// S3 bucket for the aggregates. Bucket names are global across all AWS accounts: 3–63
    /// lowercase letters, digits, dots and hyphens. Default: derived from the name prefix plus
    /// a short hash, so it is unique.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 63), regex(pattern = r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$"))]
    pub bucket_name: Option<String>,

    /// Seconds Firehose buffers before writing an object: 60 to 900. Dynamic partitioning
    /// requires at least 60.
    #[serde(default = "default_buffer_interval_seconds")]
    #[schemars(range(min = 60, max = 900))]
    pub buffer_interval_seconds: i32,

    /// MiB Firehose buffers before writing an object: 64 to 128. Dynamic partitioning (and
    /// Parquet conversion) require at least 64.
    #[serde(default = "default_buffer_size_mib", rename = "bufferSizeMiB")]
    #[schemars(range(min = 64, max = 128))]
    pub buffer_size_mib: i32,

    /// File format of the objects: `Json` (newline-delimited) or `Parquet`.
    #[serde(default)]
    pub format: DeliveryFormat,

    /// Who writes the objects. `Firehose` (default): a delivery stream reads the output stream,
    /// partitions by componentName and, for `Parquet`, converts with the Glue table's schema.
    /// `Aggregator`: the aggregator writes Parquet files itself, committed with its checkpoint
    /// (exactly once, no Firehose); needs `format: Parquet`. The output stream is fed either way.
    #[serde(default)]
    pub writer: DeliveryWriter,

    /// Compression of the objects: `Gzip` (default), `Snappy` or `Uncompressed`. For `Json`
    /// Snappy means Hadoop-compatible Snappy, which Athena reads; for `Parquet` it is the codec
    /// inside the Parquet file.
    #[serde(default)]
    pub compression: Compression,

    /// Days after which objects are expired from the bucket. Default: kept forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub expire_after_days: Option<i32>,
}

impl Default for DeliverySpec {
    fn default() -> Self {
        Self {
            bucket_name: None,
            buffer_interval_seconds: default_buffer_interval_seconds(),
            buffer_size_mib: default_buffer_size_mib(),
            format: DeliveryFormat::default(),
            writer: DeliveryWriter::default(),
            compression: Compression::default(),
            expire_after_days: None,
        }
    }
}

fn default_buffer_interval_seconds() -> i32 {
    60
}
fn default_buffer_size_mib() -> i32 {
    64
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeliveryFormat {
    #[default]
    Json,
    Parquet,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeliveryWriter {
    #[default]
    Firehose,
    Aggregator,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Compression {
    Uncompressed,
    #[default]
    Gzip,
    Snappy,
}

/// The Glue Data Catalog database and table over the bucket.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CatalogSpec {
    /// Glue database: lowercase letters, digits and underscores (Athena cannot query names with
    /// hyphens without quoting). Default: the name prefix with `-` replaced by `_`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[a-z0-9_]+$"))]
    pub database: Option<String>,

    /// Glue table: lowercase letters, digits and underscores. Default: `metric_aggregates`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[a-z0-9_]+$"))]
    pub table: Option<String>,

    /// How the `componentName` partitions become known to Athena.
    #[serde(default)]
    pub partitions: PartitionsSpec,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionsSpec {
    /// `Registered`: the operator adds a Glue partition for every `componentName=` prefix it
    /// finds in the bucket. `Projected`: Athena partition projection over the `components`
    /// listed below, with nothing to register.
    #[serde(default)]
    pub mode: PartitionMode,

    /// The component names to project; required (and only allowed) with `mode: Projected`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PartitionMode {
    #[default]
    Registered,
    Projected,
}

/// The aggregator workload: a Deployment, its ServiceAccount and configuration.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AggregatorSpec {
    /// Container image of the aggregator. Default: the image matching the operator's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,

    /// 1 runs the aggregator, 0 pauses it. One replica reads every shard; a second would
    /// aggregate every event twice, so more than one is refused.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1))]
    pub replicas: i32,

    /// CPU and memory `requests` and `limits` of the aggregator container, as in a Pod spec,
    /// e.g. `{requests: {cpu: 100m, memory: 128Mi}, limits: {memory: 512Mi}}` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "resources_schema")]
    pub resources: Option<ResourceRequirements>,

    /// Annotations of the aggregator's ServiceAccount, e.g.
    /// `eks.amazonaws.com/role-arn: arn:aws:iam::123456789012:role/metrics-aggregator` for IRSA.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_account_annotations: BTreeMap<String, String>,

    /// Log level of the aggregator: `error`, `warn`, `info`, `debug` or `trace`.
    #[serde(default)]
    pub log_level: LogLevel,

    /// Labels a node must have to run the aggregator's pod, as a Pod's `nodeSelector`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Taints the aggregator's pod tolerates (a tainted node pool), as a Pod's `tolerations`,
    /// e.g. `[{key: dedicated, operator: Equal, value: streaming, effect: NoSchedule}]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "tolerations_schema")]
    pub tolerations: Vec<serde_json::Value>,

    /// The aggregator pod's affinity, as a Pod's `affinity` (`nodeAffinity`, `podAffinity`,
    /// `podAntiAffinity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "affinity_schema")]
    pub affinity: Option<serde_json::Value>,

    /// The aggregator pod's `priorityClassName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub priority_class_name: Option<String>,

    /// Secrets in the pipeline's namespace that let the node pull the aggregator's image from a
    /// private registry, as a Pod's `imagePullSecrets`: `[{name: my-registry}]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "image_pull_secrets_schema")]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Annotations of the aggregator's pods (e.g. for a service mesh or a log shipper).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
}

impl Default for AggregatorSpec {
    fn default() -> Self {
        Self {
            image: None,
            replicas: default_replicas(),
            resources: None,
            service_account_annotations: BTreeMap::new(),
            log_level: LogLevel::default(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            affinity: None,
            priority_class_name: None,
            image_pull_secrets: Vec::new(),
            pod_annotations: BTreeMap::new(),
        }
    }
}

/// The requests and limits of `ResourceRequirements`, without the kilobytes of upstream prose per
/// quantity and without the fields a v1.20 API server does not know.
fn resources_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let quantities = schemars::json_schema!({
        "type": "object",
        "additionalProperties": {
            "pattern": "^(\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))))?$",
            "x-kubernetes-int-or-string": true
        }
    });
    schemars::json_schema!({
        "type": "object",
        "properties": {"requests": quantities, "limits": quantities}
    })
}

/// A Pod's tolerations, without the upstream prose. Each is kept as written and checked field by
/// field by the operator: a misspelt `effct` pruned here would make it tolerate every effect.
fn tolerations_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true,
            "properties": {
                "key": {"type": "string"},
                "operator": {"type": "string", "enum": ["Exists", "Equal"]},
                "value": {"type": "string"},
                "effect": {"type": "string", "enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
                "tolerationSeconds": {"type": "integer", "format": "int64"}
            }
        }
    })
}

/// A Pod's affinity: kept as written (its schema is kilobytes), and checked field by field by
/// the operator, which refuses what a Pod's affinity does not have.
fn affinity_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

fn image_pull_secrets_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "minLength": 1}}}
    })
}

fn default_replicas() -> i32 {
    1
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

/// What the operator observed and did, written by the operator only.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsPipelineStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// One word for the whole pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// `Ready`, plus `IdentityKept` and one condition per part: `StreamsReady`, `BucketReady`, `DeliveryReady`,
    /// `CatalogReady`, `AggregatorReady`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_stream: Option<AwsResourceRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_stream: Option<AwsResourceRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<AwsResourceRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firehose_role: Option<AwsResourceRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_stream: Option<AwsResourceRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glue_database: Option<AwsResourceRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glue_table: Option<AwsResourceRef>,
    /// The aggregator Deployment and how many of its replicas are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregator: Option<AggregatorStatus>,
    /// Where the pipeline's AWS resources are, recorded before it first creates any: the
    /// operator reconciles and deletes these, and refuses a spec change that would move them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<PipelineIdentity>,
    /// What the aggregator last reported of the data it moves (the `DataFlowing` condition
    /// judges it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_flow: Option<DataFlowStatus>,
    /// With `managementPolicy: ObserveOnly`: every way the AWS resources differ from the spec,
    /// one line each (what the operator would create, change or refuse), as last observed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
    /// The `spec.tags` keys last put on the AWS resources: one the spec drops is removed from them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tag_keys: Vec<String>,
    /// Provisioned Kinesis shards of both streams that the spec asked when it was last let through
    /// (valid, and within the namespace's `pipelines.metrics.dev/max-shards`); kept while a later
    /// spec is invalid or refused, since the streams keep them. The namespace's ceiling counts them
    /// for its other pipelines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<i32>,
}

/// The aggregator's last report: counts over its interval, and the state when it was written.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataFlowStatus {
    /// When the aggregator wrote the report.
    pub reported_at: Time,
    /// The span the counts cover, in seconds.
    pub interval_seconds: i64,
    /// Records read from the input stream in the span.
    pub records_in: u64,
    /// Records kept in the dead-letter prefix in the span.
    pub dead_letters: u64,
    /// Aggregates written to the output stream in the span.
    pub aggregates_out: u64,
    /// When an aggregate last reached the output stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_output_at: Option<Time>,
    /// Wall clock minus the event-time watermark, in seconds: how far behind the aggregates are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_lag_seconds: Option<i64>,
}

/// The account, region and names of a pipeline's AWS resources.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineIdentity {
    pub account_id: String,
    pub region: String,
    pub name_prefix: String,
    pub input_stream: String,
    pub output_stream: String,
    pub bucket: String,
    pub firehose_role: String,
    pub delivery_stream: String,
    pub glue_database: String,
    pub glue_table: String,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    /// Resources are being created or changed.
    Provisioning,
    /// Every part is in place and the aggregator runs.
    Ready,
    /// Something that worked is failing now; the operator keeps retrying.
    Degraded,
    /// The spec cannot be carried out as written; see the conditions for what to change.
    Failed,
    /// The resource is being deleted and its AWS resources removed.
    Deleting,
    /// `managementPolicy: ObserveOnly`: the operator reads and reports, and changes nothing.
    Observing,
    /// Reconciling stopped by the `pipelines.metrics.dev/paused` annotation.
    Paused,
}

/// Name and ARN of one AWS resource the operator manages.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsResourceRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AggregatorStatus {
    pub deployment: String,
    #[serde(default)]
    pub ready_replicas: i32,
}
