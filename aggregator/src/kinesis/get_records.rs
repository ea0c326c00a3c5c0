//! GetRecords answers read by the aggregator itself. The SDK's generic, schema-driven JSON reader
//! took about half of the whole program's CPU time (BENCHMARKS.md, the whole program), far more
//! than aggregating the records. The SDK still makes the call (endpoint, signing, retries,
//! timeouts, and every error answer, which it reads as before); only a successful answer's body
//! is diverted to this module on its way in, and the SDK is handed an empty answer in its place.
//! The answer is held to a stricter shape than the SDK's, on purpose: where the SDK fills in a
//! missing `Records`, `SequenceNumber` or `Data` with an empty default, the whole answer is
//! refused (and asked again), since an empty sequence number would be checkpointed as a position.
//! `PartitionKey` may be absent, as AWS documents for streams with AUTO record distribution.
//! `ApproximateArrivalTimestamp` (epoch seconds, milliseconds as the fraction) bounds each record's
//! event time; `ChildShards` of a closed shard's last answer name the shards to read next.

use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use aws_sdk_kinesis::config::interceptors::BeforeDeserializationInterceptorContextMut;
use aws_sdk_kinesis::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_kinesis::error::BoxError;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use http_body::{Body, Frame};
use metrics_pipeline_model::event::EventTime;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// One record of the input stream, as [`Records`] holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputRecord<'a> {
    pub sequence_number: &'a str,
    pub partition_key: &'a str,
    pub data: &'a [u8],
    /// When Kinesis took the record (`None` where an emulator leaves it out).
    pub arrival: Option<EventTime>,
}

/// The records of one answer in three buffers, not three allocations a record: a reading thread
/// allocates a page and the loop frees it, and with three allocations a record glibc's allocator
/// took over a third of the loop's thread (BENCHMARKS.md, the whole program).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Records {
    /// Sequence numbers and partition keys, one after another.
    text: String,
    data: Vec<u8>,
    records: Vec<RecordSpans>,
}

#[derive(Debug, PartialEq, Eq)]
struct RecordSpans {
    sequence_number: Range<usize>,
    partition_key: Range<usize>,
    data: Range<usize>,
    arrival: Option<EventTime>,
}

impl Records {
    pub fn push(&mut self, record: InputRecord<'_>) {
        let sequence_number = append(&mut self.text, record.sequence_number);
        let partition_key = append(&mut self.text, record.partition_key);
        let start = self.data.len();
        self.data.extend_from_slice(record.data);
        self.records.push(RecordSpans { sequence_number, partition_key, data: start..self.data.len(), arrival: record.arrival });
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = InputRecord<'_>> {
        self.records.iter().map(|spans| self.record(spans))
    }

    pub fn last(&self) -> Option<InputRecord<'_>> {
        self.records.last().map(|spans| self.record(spans))
    }

    /// The record at `index` in the page.
    pub fn get(&self, index: usize) -> InputRecord<'_> {
        self.record(&self.records[index])
    }

    fn record(&self, spans: &RecordSpans) -> InputRecord<'_> {
        InputRecord {
            sequence_number: &self.text[spans.sequence_number.clone()],
            partition_key: &self.text[spans.partition_key.clone()],
            data: &self.data[spans.data.clone()],
            arrival: spans.arrival,
        }
    }
}

fn append(text: &mut String, part: &str) -> Range<usize> {
    let start = text.len();
    text.push_str(part);
    start..text.len()
}

/// A successful GetRecords answer: `next_shard_iterator` is `None` once a closed shard is read
/// to its end, and then `child_shards` names the shards that continue it.
#[derive(Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Answer {
    pub records: Records,
    pub next_shard_iterator: Option<String>,
    pub millis_behind_latest: Option<i64>,
    /// Absent, or `null` as kinesis-mock writes it, until a closed shard's end.
    #[serde(default)]
    pub child_shards: Option<Vec<ChildShard>>,
}

/// A shard that continues a closed one, with all of its parents (two for a merge).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ChildShard {
    pub shard_id: String,
    pub parent_shards: Vec<String>,
}

impl<'de> Deserialize<'de> for Records {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(RecordsVisitor)
    }
}

struct RecordsVisitor;

impl<'de> Visitor<'de> for RecordsVisitor {
    type Value = Records;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut list: A) -> Result<Records, A::Error> {
        let mut records = Records::default();
        while list.next_element_seed(RecordSeed(&mut records))?.is_some() {}
        Ok(records)
    }
}

/// Reads one record of `Records` straight into the page's buffers.
struct RecordSeed<'r>(&'r mut Records);

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
enum RecordField {
    SequenceNumber,
    PartitionKey,
    Data,
    ApproximateArrivalTimestamp,
    #[serde(other)]
    Other,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a record")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut fields: A) -> Result<(), A::Error> {
        let Records { text, data, records } = self.0;
        let (mut sequence_number, mut partition_key, mut record_data, mut arrival) = (None, None, None, None);
        while let Some(field) = fields.next_key()? {
            match field {
                RecordField::SequenceNumber if sequence_number.is_none() => {
                    sequence_number = Some(fields.next_value_seed(TextSeed(text))?);
                }
                RecordField::PartitionKey if partition_key.is_none() => {
                    partition_key = Some(fields.next_value_seed(OptionalTextSeed(text))?);
                }
                RecordField::Data if record_data.is_none() => {
                    let start = data.len();
                    fields.next_value_seed(Base64Seed(data))?;
                    record_data = Some(start..data.len());
                }
                RecordField::ApproximateArrivalTimestamp if arrival.is_none() => {
                    let seconds: Option<f64> = fields.next_value()?;
                    arrival = Some(seconds.map(|seconds| EventTime((seconds * 1000.0).round() as i64)));
                }
                RecordField::SequenceNumber => return Err(de::Error::duplicate_field("SequenceNumber")),
                RecordField::ApproximateArrivalTimestamp => return Err(de::Error::duplicate_field("ApproximateArrivalTimestamp")),
                RecordField::PartitionKey => return Err(de::Error::duplicate_field("PartitionKey")),
                RecordField::Data => return Err(de::Error::duplicate_field("Data")),
                RecordField::Other => {
                    fields.next_value::<IgnoredAny>()?;
                }
            }
        }
        let sequence_number = sequence_number.ok_or_else(|| de::Error::missing_field("SequenceNumber"))?;
        let data = record_data.ok_or_else(|| de::Error::missing_field("Data"))?;
        let partition_key = partition_key.flatten().unwrap_or(text.len()..text.len());
        records.push(RecordSpans { sequence_number, partition_key, data, arrival: arrival.flatten() });
        Ok(())
    }
}

/// A string appended to the page's text as it is read, without a string of its own: its range.
struct TextSeed<'t>(&'t mut String);

impl<'de> DeserializeSeed<'de> for TextSeed<'_> {
    type Value = Range<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Range<usize>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for TextSeed<'_> {
    type Value = Range<usize>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Range<usize>, E> {
        Ok(append(self.0, text))
    }
}

/// [`TextSeed`] for a string that may be null (`PartitionKey`).
struct OptionalTextSeed<'t>(&'t mut String);

impl<'de> DeserializeSeed<'de> for OptionalTextSeed<'_> {
    type Value = Option<Range<usize>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<Range<usize>>, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for OptionalTextSeed<'_> {
    type Value = Option<Range<usize>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Option<Range<usize>>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<Range<usize>>, D::Error> {
        TextSeed(self.0).deserialize(deserializer).map(Some)
    }
}

/// A record's `Data`, decoded as it is read onto the page's data: taken as raw bytes, since the
/// base64 alphabet check is stricter than UTF-8 validation, which would only scan the text once more.
struct Base64Seed<'d>(&'d mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for Base64Seed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_bytes(self)
    }
}

impl Visitor<'_> for Base64Seed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("base64 text")
    }

    fn visit_bytes<E: de::Error>(self, text: &[u8]) -> Result<(), E> {
        // The SDK's own base64 (it decodes `Data` with the same crate, the same alphabet).
        base64_simd::STANDARD.decode_append(text, self.0).map_err(|error| E::custom(format!("Data is not base64: {error}")))
    }
}

/// A GetRecords answer body not of the shape AWS documents; its source says what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("not a GetRecords answer")]
pub struct UnreadableAnswer(#[from] serde_json::Error);

/// Reads a GetRecords answer body.
pub fn parse(body: &[u8]) -> Result<Answer, UnreadableAnswer> {
    Ok(serde_json::from_slice(body)?)
}

/// The most room reserved for one answer before its bytes arrive.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// What the SDK reads in place of a diverted answer: valid, and empty.
const EMPTY_ANSWER: &[u8] = br#"{"Records":[]}"#;

/// Diverts a successful JSON answer's body of one GetRecords call (`customize().interceptor(..)`,
/// which the SDK runs after its own body wrappers, stalled-stream protection among them, so they
/// still see every byte); [`Self::take`] hands it over after the call. Each attempt starts it
/// afresh, and only a body read to its end is handed over.
#[derive(Clone, Debug, Default)]
pub struct DivertedBody {
    body: Arc<Mutex<Option<Vec<u8>>>>,
}

impl DivertedBody {
    /// The successful answer's body, once the call has returned it; `None` when the SDK read the
    /// answer itself (a CBOR one).
    pub fn take(&self) -> Option<Vec<u8>> {
        self.slot().take()
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
        self.body.lock().expect("never poisoned: no panics while held")
    }
}

impl Intercept for DivertedBody {
    fn name(&self) -> &'static str {
        "DivertedBody"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        *self.slot() = None;
        let response = context.response_mut();
        // Kinesis answers in JSON unless the client was set to CBOR (`application/cbor`), which
        // the SDK reads as ever; emulators do not all label their JSON.
        let cbor = response.headers().get("content-type").is_some_and(|kind| kind.contains("cbor"));
        if !response.status().is_success() || cbor {
            return Ok(());
        }
        // Room for the answer as announced, within what a GetRecords answer can be (10 MiB of
        // records, as base64 in JSON): a wrong Content-Length must not reserve the memory.
        let length = response.headers().get("content-length").and_then(|length| length.parse().ok()).unwrap_or(0);
        // The SDK reads the empty answer in its place, not as many bytes as announced.
        response.headers_mut().remove("content-length");
        let inner = response.take_body();
        let diverting = Diverting { inner, read: Vec::with_capacity(length.min(MAX_ANSWER_BYTES)), into: self.clone(), ended: false };
        *response.body_mut() = SdkBody::from_body_1_x(diverting);
        Ok(())
    }
}

/// A response body that collects its bytes, hands them to [`DivertedBody`] at its end, and
/// yields [`EMPTY_ANSWER`].
struct Diverting {
    inner: SdkBody,
    read: Vec<u8>,
    into: DivertedBody,
    ended: bool,
}

impl Body for Diverting {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.read.extend_from_slice(data);
                    }
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => {
                    self.ended = true;
                    let read = std::mem::take(&mut self.read);
                    *self.into.slot() = Some(read);
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(EMPTY_ANSWER)))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_kinesis::error::DisplayErrorContext;

    use super::*;

    #[test]
    fn an_answer_reads_as_the_sdk_reads_it() {
        let body = br#"{"Records":[
            {"SequenceNumber":"4959","ApproximateArrivalTimestamp":1.631188800123E9,"Data":"eyJhIjoxfQ==","PartitionKey":"user-service","EncryptionType":"NONE"},
            {"Data":"\/w\u0041=","PartitionKey":"caf\u00e9","SequenceNumber":"4960"}],
            "NextShardIterator":"AAAA","MillisBehindLatest":1200,"ChildShards":[]}"#;
        let answer = parse(body).unwrap();
        assert_eq!(answer.next_shard_iterator.as_deref(), Some("AAAA"));
        assert_eq!(answer.millis_behind_latest, Some(1200));
        assert_eq!(
            answer.records.iter().collect::<Vec<_>>(),
            [
                InputRecord {
                    sequence_number: "4959",
                    partition_key: "user-service",
                    data: br#"{"a":1}"#,
                    arrival: Some(EventTime(1_631_188_800_123))
                },
                InputRecord { sequence_number: "4960", partition_key: "café", data: &[0xff, 0x00], arrival: None },
            ],
            "escapes are read, unknown fields ignored"
        );
        let closed = parse(br#"{"Records":[],"ChildShards":[{"ShardId":"s1","ParentShards":["s0"],"HashKeyRange":{}}]}"#).unwrap();
        assert_eq!((closed.next_shard_iterator, closed.millis_behind_latest), (None, None), "a closed shard read to its end");
        assert_eq!(closed.child_shards, Some(vec![ChildShard { shard_id: "s1".into(), parent_shards: vec!["s0".into()] }]));
        let open = parse(br#"{"Records":[],"NextShardIterator":"B","ChildShards":null,"MillisBehindLatest":0}"#).unwrap();
        assert_eq!(open.child_shards, None, "kinesis-mock's null");
    }

    #[test]
    fn a_record_without_a_partition_key_is_read_with_an_empty_one() {
        // AWS leaves it out for records written without one to a stream with AUTO distribution.
        let body = br#"{"Records":[{"SequenceNumber":"1","Data":"eyJhIjoxfQ=="},{"SequenceNumber":"2","PartitionKey":null,"Data":""}]}"#;
        let answer = parse(body).unwrap();
        let keys: Vec<(&str, &str)> = answer.records.iter().map(|record| (record.sequence_number, record.partition_key)).collect();
        assert_eq!(keys, [("1", ""), ("2", "")]);
    }

    #[test]
    fn a_malformed_answer_is_refused_whole() {
        for (body, problem) in [
            (&br#"{"Records":[{"SequenceNumber":"1","PartitionKey":"k","Data":"not base64!"}]}"#[..], "not base64"),
            (br#"{"Records":[{"PartitionKey":"k","Data":"eyJhIjoxfQ=="}]}"#, "missing field `SequenceNumber`"),
            (br#"{"Records":[{"SequenceNumber":"1","PartitionKey":"k"}]}"#, "missing field `Data`"),
            (br#"{"Records":[{"SequenceNumber":"1","SequenceNumber":"2","Data":""}]}"#, "duplicate field `SequenceNumber`"),
            (br#"{"Records":[{"SequenceNumber":"1","PartitionKey":7,"Data":""}]}"#, "invalid type"),
            (br#"{"Records":[["1","k","eA=="]]}"#, "invalid type"),
            (br#"{"NextShardIterator":"AAAA"}"#, "missing field `Records`"),
            (br#"{"Records":[{"SequenceNumber":1,"PartitionKey":"k","Data":""}]}"#, "invalid type"),
            (br#"{"Records":[{"SequenceNumber":"1","PartitionKey":"k","Data":[1,2]}]}"#, "invalid type"),
            (b"<html>", "not a GetRecords answer"),
        ] {
            let error = DisplayErrorContext(parse(body).unwrap_err()).to_string();
            assert!(error.contains(problem), "{error}");
        }
    }
}
