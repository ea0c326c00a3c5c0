//! Writing aggregates to the output stream with PutRecords: batches within the API's limits, a
//! few calls in flight, the window's id as partition key (so a window boundary spreads over the
//! output's shards; Firehose partitions by the payload's componentName), and every refused record
//! retried with backoff until written. Refusals are counted by error code; one that retrying will
//! not cure (access denied, no such stream, a KMS key) is logged as a warning and makes the
//! aggregator not ready until a write goes through again.

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use metrics_pipeline_model::event::MetricAggregate;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::metrics::ErrorCode;
use crate::server::Health;

/// PutRecords takes at most 500 records and 5 MiB (data plus partition keys) per call.
pub const MAX_BATCH_RECORDS: usize = 500;
pub const MAX_BATCH_BYTES: usize = 5 * 1024 * 1024;

/// PutRecords calls one write keeps in flight: enough to keep a window boundary's burst moving
/// over several output shards, few enough to stay inside what one stream takes at once.
pub const CALLS_IN_FLIGHT: usize = 4;

/// One record for the output stream; in the checkpoint, its data is kept as the text it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputRecord {
    pub partition_key: String,
    #[serde(with = "as_text")]
    pub data: Vec<u8>,
}

impl OutputRecord {
    /// The window's id is the partition key: a window and its revisions go to one shard, and
    /// the windows of one component spread over all of them.
    pub fn from_aggregate(aggregate: &MetricAggregate) -> Self {
        Self { partition_key: aggregate.window_id.clone(), data: serde_json::to_vec(aggregate).expect("an aggregate always serializes") }
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

/// Record data kept in the checkpoint as JSON text, byte for byte (aggregates are UTF-8 JSON).
mod as_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(std::str::from_utf8(data).map_err(serde::ser::Error::custom)?)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        String::deserialize(deserializer).map(String::into_bytes)
    }
}

/// How an output refusal is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The stream's throughput is exceeded: back off and retry, as usual under load.
    Throttled,
    /// A failure that passes: retry.
    Transient,
    /// One that retrying will not cure (permissions, a missing stream, a KMS key): still retried,
    /// since the records must not be lost, but shown as a warning and in readiness.
    Permanent,
}

impl Refusal {
    /// Kinesis's error codes (PutRecords, and each of its refused entries); what is not known to
    /// need a change (a permission, the stream, the key, the request) is taken to pass. A 401 or
    /// 403 answered without a code (a proxy's, or moto's for an IAM deny) refuses access too.
    pub fn of(code: &str) -> Self {
        match code {
            "ProvisionedThroughputExceededException" | "LimitExceededException" | "KMSThrottlingException" | "ThrottlingException" => {
                Self::Throttled
            }
            "AccessDeniedException"
            | "ResourceNotFoundException"
            | "InvalidArgumentException"
            | "ValidationException"
            | "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "ExpiredTokenException"
            | "KMSAccessDeniedException"
            | "KMSDisabledException"
            | "KMSInvalidStateException"
            | "KMSNotFoundException"
            | "KMSOptInRequired"
            | "http_401"
            | "http_403" => Self::Permanent,
            _ => Self::Transient,
        }
    }
}

/// A failed Kinesis call's error code, or what kind of failure it was when no answer said.
pub fn error_code<E: ProvideErrorMetadata>(error: &SdkError<E>) -> String {
    match error {
        SdkError::TimeoutError(_) => "timeout".into(),
        SdkError::DispatchFailure(_) => "connection".into(),
        _ => match (error.code(), error.raw_response()) {
            (Some(code), _) => code.into(),
            (None, Some(response)) => format!("http_{}", response.status().as_u16()),
            (None, None) => "unknown".into(),
        },
    }
}

/// Where a write reports how it goes (the aggregator's health and metrics), and when it should
/// give up because the process is stopping.
pub struct Delivery<'a> {
    pub health: &'a Health,
    pub stopping: watch::Receiver<bool>,
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

    /// Writes every record in order, one call at a time, as a producer must (a key's events keep
    /// their order); returns only once all are written. Entries the service refuses and calls that
    /// fail are retried with backoff.
    pub async fn put_all(&self, records: Vec<OutputRecord>) {
        for batch in batches(records) {
            self.put_batch(batch, None).await;
        }
    }

    /// Writes every aggregate, [`CALLS_IN_FLIGHT`] calls at a time (their order across calls is
    /// not kept: downstream keeps, per window, the highest count and revision), reporting refusals
    /// to `delivery`; returns whether all were written (`false`: the process is stopping first).
    pub async fn deliver(&self, records: Vec<OutputRecord>, delivery: &Delivery<'_>) -> bool {
        let calls = futures::stream::iter(batches(records)).map(|batch| self.put_batch(batch, Some(delivery)));
        let written = calls.buffer_unordered(CALLS_IN_FLIGHT).fold(true, async |all, written| all && written).await;
        if written {
            *delivery.health.output_refused.lock().expect("never poisoned") = None;
            delivery.health.output_throttled_since_ms.store(0, Ordering::Relaxed);
        }
        written
    }

    async fn put_batch(&self, mut pending: Vec<OutputRecord>, delivery: Option<&Delivery<'_>>) -> bool {
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
            let refusals = match self.client.put_records().stream_name(&self.stream).set_records(Some(entries)).send().await {
                Ok(output) => {
                    let results = output.records();
                    let mut refusals = Vec::new();
                    let mut index = 0;
                    pending.retain(|_| {
                        let result = results.get(index);
                        index += 1;
                        let code = result.map_or(Some("missing_result"), |result| result.error_code());
                        let message = result.and_then(|result| result.error_message()).unwrap_or_default();
                        code.inspect(|code| refusals.push(((*code).to_owned(), message.to_owned()))).is_some()
                    });
                    refusals
                }
                Err(error) => vec![(error_code(&error), DisplayErrorContext(&error).to_string()); pending.len()],
            };
            if pending.is_empty() {
                return true;
            }
            self.report(&refusals, delivery.map(|delivery| delivery.health));
            let delay = backoff.next_delay();
            match delivery {
                Some(delivery) => {
                    let mut stopping = delivery.stopping.clone();
                    tokio::select! {
                        _ = stopping.wait_for(|stopping| *stopping) => return false,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                None => tokio::time::sleep(delay).await,
            }
        }
        true
    }

    /// Counts refused records by code; a refusal retrying will not cure is a warning and makes
    /// the aggregator not ready.
    fn report(&self, refusals: &[(String, String)], health: Option<&Health>) {
        let Some((code, message)) = refusals.iter().find(|(code, _)| Refusal::of(code) == Refusal::Permanent).or(refusals.first()) else {
            return;
        };
        if let Some(health) = health {
            // Retrying is the loop at work, not a hang.
            health.beat();
            for (code, _) in refusals {
                health.metrics.put_records_refused.get_or_create(&ErrorCode(code.clone())).inc();
            }
        }
        match Refusal::of(code) {
            Refusal::Permanent => {
                tracing::warn!(code, message, records = refusals.len(), stream = %self.stream, "the output stream refuses records; retrying");
                if let Some(health) = health {
                    *health.output_refused.lock().expect("never poisoned") = Some(format!("{code}: {message}"));
                }
            }
            Refusal::Throttled | Refusal::Transient => {
                if let Some(health) = health.filter(|_| Refusal::of(code) == Refusal::Throttled) {
                    // The first throttling of the writes still waited for: the report says since when.
                    let now = crate::report::wall_clock().0;
                    let _ = health.output_throttled_since_ms.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
                }
                tracing::debug!(code, records = refusals.len(), stream = %self.stream, "PutRecords refused records; retrying them")
            }
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
    fn throttled_writes_say_since_when_and_other_retried_refusals_do_not() {
        let config = aws_sdk_kinesis::Config::builder().behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest()).build();
        let sink = KinesisSink::new(Client::from_conf(config), "out");
        let health = Health::new(std::time::Duration::from_secs(60), std::time::Duration::from_secs(60));
        let refused = |code: &str| vec![(code.to_owned(), "Rate exceeded".to_owned())];
        sink.report(&refused("InternalFailure"), Some(&health));
        assert_eq!(health.output_throttled_since_ms.load(Ordering::Relaxed), 0, "a transient failure is not throttling");
        sink.report(&refused("ProvisionedThroughputExceededException"), Some(&health));
        let since = health.output_throttled_since_ms.load(Ordering::Relaxed);
        assert!(since > 0);
        sink.report(&refused("ProvisionedThroughputExceededException"), Some(&health));
        assert_eq!(health.output_throttled_since_ms.load(Ordering::Relaxed), since, "since the first throttling");
    }

    #[test]
    fn refusals_retrying_will_not_cure_are_told_apart() {
        for throttled in ["ProvisionedThroughputExceededException", "LimitExceededException", "KMSThrottlingException"] {
            assert_eq!(Refusal::of(throttled), Refusal::Throttled, "{throttled}");
        }
        for transient in ["InternalFailure", "ServiceUnavailable", "timeout", "connection", "http_502", "unknown"] {
            assert_eq!(Refusal::of(transient), Refusal::Transient, "{transient}");
        }
        for permanent in
            ["AccessDeniedException", "ResourceNotFoundException", "KMSAccessDeniedException", "KMSDisabledException", "http_403"]
        {
            assert_eq!(Refusal::of(permanent), Refusal::Permanent, "{permanent}");
        }
    }

    #[test]
    fn a_record_in_the_checkpoint_is_its_text_byte_for_byte() {
        let record = OutputRecord { partition_key: "k".into(), data: br#"{"minValue":0.1,"sum":917.0110808952484}"#.to_vec() };
        let stored = serde_json::to_string(&record).unwrap();
        assert_eq!(stored, r#"{"partitionKey":"k","data":"{\"minValue\":0.1,\"sum\":917.0110808952484}"}"#);
        assert_eq!(serde_json::from_str::<OutputRecord>(&stored).unwrap(), record);
    }

    #[test]
    fn the_partition_key_is_the_window() {
        let aggregate: MetricAggregate = serde_json::from_value(serde_json::json!({
            "componentName": "order-service", "metricName": "ram", "unit": "MB", "minValue": 1.0, "maxValue": 2.0,
            "avgValue": 1.5, "count": 2, "sum": 3.0, "fromTimestamp": "2021-09-09T11:00:00.000Z",
            "toTimestamp": "2021-09-09T11:00:01.000Z", "windowStart": "2021-09-09T11:00:00.000Z",
            "windowEnd": "2021-09-09T11:01:00.000Z", "windowId": "00", "revision": 0
        }))
        .unwrap();
        let record = OutputRecord::from_aggregate(&aggregate);
        assert_eq!(record.partition_key, "00", "the window's id: a component's windows spread over the shards");
        assert_eq!(serde_json::from_slice::<MetricAggregate>(&record.data).unwrap(), aggregate);
    }
}
