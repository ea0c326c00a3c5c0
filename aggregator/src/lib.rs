//! The aggregator: metric events from the input Kinesis stream, aggregated per
//! (componentName, metricName, unit) in event-time tumbling windows, to the output stream.
//!
//! One folder per side of the program: [`kinesis`] reads the input stream's records into events
//! and writes aggregates to the output stream, [`engine`] windows the events (pure: no I/O, no
//! clocks), [`s3`] keeps in the bucket what must outlive a process (the checkpoint, dead letters,
//! Parquet files). [`intake`] hands each page read to the engine and the dead letters, and [`run`]
//! is the loop that joins them all; [`server`] and [`metrics`] are what people and Prometheus see,
//! and [`report`] what the operator shows of the data flow in the pipeline's status.
//! Imports run one way: `run` → `report` → `intake` → `s3` → `kinesis` → `engine`, which imports
//! nothing.

pub mod backoff;
pub mod engine;
pub mod generate;
pub mod intake;
pub mod kinesis;
pub mod metrics;
pub mod report;
pub mod run;
pub mod s3;
pub mod server;
