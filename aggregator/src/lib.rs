//! The aggregator: metric events from the input Kinesis stream, aggregated per
//! (componentName, metricName, unit) in event-time tumbling windows, to the output stream.

pub mod decode;
pub mod sink;
pub mod window;
