//! The aggregator: metric events from the input Kinesis stream, aggregated per
//! (componentName, metricName, unit) in event-time tumbling windows, to the output stream.

pub mod bucket;
pub mod checkpoint;
pub mod dead_letter;
pub mod decode;
pub mod generate;
pub mod get_records;
pub mod intake;
pub mod kpl;
pub mod metrics;
pub mod parquet_files;
pub mod run;
pub mod server;
pub mod sink;
pub mod source;
pub mod window;
