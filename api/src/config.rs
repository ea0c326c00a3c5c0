//! A pipeline as the operator builds it: every setting checked and resolved, produced only by
//! [`crate::validation::validate`]. Builders of AWS requests and Kubernetes objects take these,
//! never the raw spec.

pub use metrics_pipeline_model::aggregation::WindowConfig;
use metrics_pipeline_model::event::EventTime;

use crate::naming::PipelineNames;
use crate::pipeline::{AggregatorSpec, Compression, DeletionPolicy, DeliveryFormat, DeliveryWriter};

/// Where the pipeline lands when its spec does not say: the operator's account and region.
#[derive(Clone, Debug)]
pub struct AwsTarget {
    pub account_id: String,
    pub default_region: Option<String>,
}

/// A pipeline whose every setting has been checked and resolved; builders take only this.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineConfig {
    pub names: PipelineNames,
    pub region: String,
    pub deletion_policy: DeletionPolicy,
    /// Where the aggregator first starts reading the input stream (`spec.adopt.readInputFrom`);
    /// `None`: its oldest record.
    pub read_input_from: Option<EventTime>,
    /// The IAM role the pipeline's namespace maps to, which the aggregator acts as too (see
    /// [`crate::namespace`]); `None`: the operator's and the aggregator's own identities.
    pub aws_role: Option<String>,
    pub input_stream: StreamConfig,
    pub output_stream: StreamConfig,
    pub windowing: WindowConfig,
    pub delivery: DeliveryConfig,
    pub partitions: PartitionConfig,
    pub aggregator: AggregatorSpec,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamCapacity {
    Provisioned { shards: i32 },
    OnDemand,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamConfig {
    pub capacity: StreamCapacity,
    pub retention_hours: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliveryConfig {
    pub buffer_interval_seconds: i32,
    pub buffer_size_mib: i32,
    pub format: DeliveryFormat,
    pub writer: DeliveryWriter,
    pub compression: Compression,
    pub expire_after_days: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartitionConfig {
    /// The operator registers a partition per `componentName=` prefix found in the bucket.
    Registered,
    /// Athena partition projection over exactly these components.
    Projected(Vec<String>),
}
