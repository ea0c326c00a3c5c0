//! Producers for tests that watch a pipeline over time: one a second of valid metric events of
//! now, or records no metric event could be (a broken producer's), until the task is aborted.

use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use metrics_aggregator::generate::{Generator, GeneratorConfig, Metric, PartitionKey, publish};
use metrics_aggregator::kinesis::sink::KinesisSink;
use metrics_pipeline_model::event::EventTime;

use crate::emulator_sdk;

/// One valid event a second into `input`, stamped now.
pub fn valid_events(input: String) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let sink = KinesisSink::new(aws_sdk_kinesis::Client::new(&emulator_sdk().await), input);
        let config = GeneratorConfig {
            components: vec!["checkout".into()],
            metrics: vec![Metric { name: "latency".into(), unit: "ms".into() }],
            start: EventTime(jiff::Timestamp::now().as_millisecond()),
            step: Duration::from_secs(1),
            jitter: Duration::ZERO,
            seed: 3,
        };
        publish(&sink, Generator::new(config), PartitionKey::Component, None, Some(1.0), std::future::pending()).await
    })
}

/// An HTML error page into `input` every `every`, as a producer behind a broken proxy sends.
pub fn garbage(input: String, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let kinesis = aws_sdk_kinesis::Client::new(&emulator_sdk().await);
        loop {
            let record = kinesis.put_record().stream_name(&input).partition_key("broken").data(Blob::new(&b"<html>502</html>"[..]));
            record.send().await.unwrap();
            tokio::time::sleep(every).await;
        }
    })
}
