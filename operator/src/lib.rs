//! The metrics pipeline operator: reconciles a `MetricsPipeline` into its AWS resources.

pub mod aws;
pub mod controller;
pub mod error;
pub mod metrics;
pub mod status;
