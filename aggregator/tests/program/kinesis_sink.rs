//! The aggregator's Kinesis sink against the emulator: every record written, in PutRecords
//! batches within the API limits, keyed by component.

use aws_sdk_kinesis::types::ShardIteratorType;
use metrics_aggregator::kinesis::sink::{KinesisSink, OutputRecord};
use metrics_pipeline_runtime::sdk::sdk_config;

#[tokio::test]
async fn every_record_reaches_the_stream_across_batches() {
    let kinesis = aws_sdk_kinesis::Client::new(&sdk_config(None).await);
    let stream = format!("sink-check-{}", std::process::id());
    kinesis.create_stream().stream_name(&stream).shard_count(1).send().await.unwrap();

    let records: Vec<OutputRecord> = (0..1_201)
        .map(|i| OutputRecord { partition_key: format!("component-{}", i % 7), data: format!("{{\"n\":{i}}}").into_bytes() })
        .collect();
    KinesisSink::new(kinesis.clone(), &stream).put_all(records.clone()).await;

    let shard = kinesis.list_shards().stream_name(&stream).send().await.unwrap().shards()[0].shard_id().to_owned();
    let mut iterator = kinesis
        .get_shard_iterator()
        .stream_name(&stream)
        .shard_id(shard)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap()
        .shard_iterator()
        .map(str::to_owned);
    let mut read = Vec::new();
    while let Some(current) = iterator.take() {
        let page = kinesis.get_records().shard_iterator(current).limit(1_000).send().await.unwrap();
        read.extend(
            page.records().iter().map(|r| OutputRecord {
                partition_key: r.partition_key().unwrap_or_default().to_owned(),
                data: r.data().as_ref().to_vec(),
            }),
        );
        if page.records().is_empty() {
            break;
        }
        iterator = page.next_shard_iterator().map(str::to_owned);
    }
    assert_eq!(read, records, "every record, once, in order (one shard)");
    kinesis.delete_stream().stream_name(&stream).send().await.unwrap();
}
