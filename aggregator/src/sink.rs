//! Writing aggregates to the output stream with PutRecords: batches within the API's limits,
//! partition key = componentName, and every failed entry retried with backoff until written.

use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use metrics_pipeline_model::event::MetricAggregate;

/// PutRecords takes at most 500 records and 5 MiB (data plus partition keys) per call.
pub const MAX_BATCH_RECORDS: usize = 500;
pub const MAX_BATCH_BYTES: usize = 5 * 1024 * 1024;

/// One record for the output stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputRecord {
    pub partition_key: String,
    pub data: Vec<u8>,
}

impl OutputRecord {
    pub fn from_aggregate(aggregate: &MetricAggregate) -> Self {
        Self {
            partition_key: aggregate.component_name.clone(),
            data: serde_json::to_vec(aggregate).expect("an aggregate always serializes"),
        }
    }

    fn size(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }
}

/// Splits records, in order, into PutRecords-sized batches.
pub fn batches(records: Vec<OutputRecord>) -> Vec<Vec<OutputRecord>> {
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for record in records {
        if current.len() == MAX_BATCH_RECORDS || (!current.is_empty() && bytes + record.size() > MAX_BATCH_BYTES) {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += record.size();
        current.push(record);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Exponential backoff with a cap: 100 ms, 200 ms, ... 5 s.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Duration::from_millis(100) }
    }
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        delay
    }
}

/// The output stream.
pub struct KinesisSink {
    client: Client,
    stream: String,
}

impl KinesisSink {
    pub fn new(client: Client, stream: impl Into<String>) -> Self {
        Self { client, stream: stream.into() }
    }

    /// Writes every record; returns only once all are written. Entries the service refuses
    /// (throttling, internal failure) and calls that fail are retried with backoff.
    pub async fn put_all(&self, records: Vec<OutputRecord>) {
        for batch in batches(records) {
            self.put_batch(batch).await;
        }
    }

    async fn put_batch(&self, mut pending: Vec<OutputRecord>) {
        let mut backoff = Backoff::default();
        while !pending.is_empty() {
            let entries = pending
                .iter()
                .map(|record| {
                    PutRecordsRequestEntry::builder()
                        .partition_key(&record.partition_key)
                        .data(Blob::new(record.data.clone()))
                        .build()
                        .expect("partition key and data are set")
                })
                .collect::<Vec<_>>();
            match self.client.put_records().stream_name(&self.stream).set_records(Some(entries)).send().await {
                Ok(output) => {
                    let results = output.records();
                    let before = pending.len();
                    let mut index = 0;
                    pending.retain(|_| {
                        let failed = results.get(index).is_none_or(|result| result.error_code().is_some());
                        index += 1;
                        failed
                    });
                    if pending.is_empty() {
                        return;
                    }
                    tracing::debug!(failed = pending.len(), of = before, stream = %self.stream, "PutRecords entries refused; retrying them");
                }
                Err(error) => {
                    tracing::warn!(error = %aws_sdk_kinesis::error::DisplayErrorContext(&error), stream = %self.stream, "PutRecords failed; retrying");
                }
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, size: usize) -> OutputRecord {
        OutputRecord { partition_key: key.into(), data: vec![b'x'; size] }
    }

    #[test]
    fn batches_hold_at_most_500_records() {
        let sizes: Vec<usize> = batches((0..1_201).map(|_| record("k", 10)).collect()).iter().map(Vec::len).collect();
        assert_eq!(sizes, [500, 500, 201]);
    }

    #[test]
    fn batches_hold_at_most_5_mib_counting_partition_keys() {
        // 5 records of 1 MiB minus 10 bytes data plus a 10-byte key are exactly 5 MiB: one batch.
        let exact: Vec<_> = (0..5).map(|_| record("0123456789", 1024 * 1024 - 10)).collect();
        assert_eq!(batches(exact).len(), 1);
        // One byte more and the fifth record starts the next batch.
        let over: Vec<_> = (0..5).map(|_| record("0123456789", 1024 * 1024 - 9)).collect();
        let sizes: Vec<usize> = batches(over).iter().map(Vec::len).collect();
        assert_eq!(sizes, [4, 1]);
    }

    #[test]
    fn batching_keeps_order_and_loses_nothing() {
        let records: Vec<_> = (0..1_234).map(|i| record(&format!("k{i}"), i % 97)).collect();
        let flattened: Vec<_> = batches(records.clone()).into_iter().flatten().collect();
        assert_eq!(flattened, records);
    }

    #[test]
    fn backoff_doubles_up_to_five_seconds() {
        let mut backoff = Backoff::default();
        let delays: Vec<u128> = (0..8).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }

    #[test]
    fn the_partition_key_is_the_component() {
        let aggregate: MetricAggregate = serde_json::from_value(serde_json::json!({
            "componentName": "order-service", "metricName": "ram", "unit": "MB", "minValue": 1.0, "maxValue": 2.0,
            "avgValue": 1.5, "count": 2, "sum": 3.0, "fromTimestamp": "2021-09-09T11:00:00.000Z",
            "toTimestamp": "2021-09-09T11:00:01.000Z", "windowStart": "2021-09-09T11:00:00.000Z",
            "windowEnd": "2021-09-09T11:01:00.000Z", "windowId": "00", "revision": 0
        }))
        .unwrap();
        let record = OutputRecord::from_aggregate(&aggregate);
        assert_eq!(record.partition_key, "order-service");
        assert_eq!(serde_json::from_slice::<MetricAggregate>(&record.data).unwrap(), aggregate);
    }
}
