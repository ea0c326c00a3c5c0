//! The metrics pipeline operator: reconciles a `MetricsPipeline` into its AWS resources
//! and the aggregator workload that runs between them.

pub mod aws;
pub mod controller;
pub mod data_flow;
pub mod error;
pub mod leader;
pub mod managed;
pub mod metrics;
pub mod status;
pub mod turns;
pub mod workload;
