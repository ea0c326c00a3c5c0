//! The `MetricsPipeline` custom resource, its validation and naming, and the event and aggregate
//! records shared by the operator, the aggregator and the test harness. No I/O lives here, except
//! behind the `aws` (SDK settings) and `process` (logging, shutdown signal) features.

#[cfg(feature = "aws")]
pub mod aws;
pub mod crd;
pub mod duration;
pub mod event;
pub mod naming;
pub mod pipeline;
#[cfg(feature = "process")]
pub mod process;
pub mod stable_hash;
pub mod validation;

pub use pipeline::{MetricsPipeline, MetricsPipelineSpec, MetricsPipelineStatus};
