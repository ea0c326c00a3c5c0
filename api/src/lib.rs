//! The `MetricsPipeline` custom resource: its types and CRD, `validate()` from a resource to an
//! already-checked [`config::PipelineConfig`], and the one place that names what a pipeline
//! creates. Pure: no I/O, no clients.

pub mod config;
pub mod crd;
pub mod identity;
pub mod namespace;
pub mod naming;
pub mod pipeline;
pub mod reference;
pub mod validation;

pub use pipeline::{MetricsPipeline, MetricsPipelineSpec, MetricsPipelineStatus};
