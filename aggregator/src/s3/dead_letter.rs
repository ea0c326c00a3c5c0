//! Records the aggregator could not count — invalid ones and events later than the allowed
//! lateness — kept whole in the bucket, so nothing published is ever lost.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::s3::bucket::{Bucket, Condition};

/// One kept record, one JSON line in a dead-letter object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// `not_json`, `missing_value`, `too_late`, ... (the invalid-records counter's label).
    pub reason: String,
    pub shard_id: String,
    pub sequence_number: String,
    /// Its place in a KPL aggregated record (the KCL's sub-sequence number); absent for a plain record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_sequence_number: Option<usize>,
    /// The user record's partition key (inside a KPL aggregate, its own, not the Kinesis record's).
    pub partition_key: String,
    /// The record as published, when it is UTF-8 text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The record as published, base64, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
}

impl DeadLetter {
    pub fn new(reason: String, shard_id: &str, sequence_number: &str, partition_key: &str, bytes: &[u8]) -> Self {
        let (data, data_base64) = match std::str::from_utf8(bytes) {
            Ok(text) => (Some(text.to_owned()), None),
            Err(_) => (None, Some(aws_smithy_types::base64::encode(bytes))),
        };
        let (shard_id, sequence_number, partition_key) = (shard_id.to_owned(), sequence_number.to_owned(), partition_key.to_owned());
        Self { reason, shard_id, sequence_number, sub_sequence_number: None, partition_key, data, data_base64 }
    }

    /// The same letter for a user record at `sub_sequence_number` of a KPL aggregate.
    pub fn packed_at(self, sub_sequence_number: Option<usize>) -> Self {
        Self { sub_sequence_number, ..self }
    }
}

/// Memory a letter takes beyond its strings' bytes (the struct and its allocations), roughly.
const LETTER_OVERHEAD: usize = 160;

/// Dead letters gathered since the last flush, grouped into one object per shard.
#[derive(Debug, Default)]
pub struct DeadLetters {
    by_shard: BTreeMap<String, Vec<DeadLetter>>,
    bytes: usize,
}

impl DeadLetters {
    pub fn push(&mut self, letter: DeadLetter) {
        // What a letter holds besides its data counts too: a flood of empty records is not free.
        let held = letter.shard_id.len() + letter.sequence_number.len() + letter.partition_key.len() + LETTER_OVERHEAD;
        self.bytes += held + letter.data.as_ref().map_or(0, String::len) + letter.data_base64.as_ref().map_or(0, String::len);
        self.by_shard.entry(letter.shard_id.clone()).or_default().push(letter);
    }

    pub fn is_empty(&self) -> bool {
        self.by_shard.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_shard.values().map(Vec::len).sum()
    }

    /// Held record bytes, so the caller can flush before they pile up.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The objects to write: `<prefix><shardId>/<first sequence number>-<run>.jsonl`,
    /// newline-delimited JSON. The run (random per process start) keeps names from repeating: a
    /// replay after a crash, or a copy that was fenced, adds an object and never overwrites one
    /// (which could drop letters another batch held); duplicates share shard and sequence number.
    pub fn take_objects(&mut self, prefix: &str, run: &str) -> Vec<(String, Vec<u8>)> {
        self.bytes = 0;
        std::mem::take(&mut self.by_shard)
            .into_iter()
            .map(|(shard, letters)| {
                let key = format!("{prefix}{shard}/{}-{run}.jsonl", letters[0].sequence_number);
                let mut body = Vec::new();
                for letter in &letters {
                    serde_json::to_writer(&mut body, letter).expect("a dead letter always serializes");
                    body.push(b'\n');
                }
                (key, body)
            })
            .collect()
    }

    pub async fn write(&mut self, bucket: &Bucket, prefix: &str, run: &str) {
        for (key, body) in self.take_objects(prefix, run) {
            bucket.put(&key, body, "application/x-ndjson", Condition::Absent).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_kept_whole_one_object_per_shard() {
        let mut letters = DeadLetters::default();
        letters.push(DeadLetter::new("not_json".into(), "shardId-000", "100", "user-service", b"{oops"));
        letters.push(DeadLetter::new("too_late".into(), "shardId-001", "7", "order-service", b"{\"x\":1}"));
        letters.push(DeadLetter::new("not_json".into(), "shardId-000", "101", "k", &[0xff, 0x00]));
        let objects = letters.take_objects("_aggregator/dead-letters/", "5eed");
        assert!(letters.is_empty());
        let keys: Vec<&str> = objects.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(keys, ["_aggregator/dead-letters/shardId-000/100-5eed.jsonl", "_aggregator/dead-letters/shardId-001/7-5eed.jsonl"]);
        let lines: Vec<serde_json::Value> =
            objects[0].1.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
        assert_eq!(lines[0]["data"], "{oops");
        assert_eq!(lines[0]["sequenceNumber"], "100");
        assert_eq!(lines[1]["dataBase64"], "/wA=", "binary records survive as base64");
        assert_eq!(lines[1].get("data"), None);
    }
}
