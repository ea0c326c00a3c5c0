//! Turning a Kinesis record into [`MetricEvent`]s, or into the reason it is not one: a plain
//! record is one user record, a KPL aggregate ([`crate::kinesis::kpl`]) several.
//!
//! Valid records take one borrowing serde pass. Only an invalid record pays for a second,
//! diagnostic pass that names what is wrong, so the hot path stays a single parse.

use std::fmt;
use std::ops::Range;

use metrics_pipeline_model::event::{EventTime, MetricEvent, is_partition_value};
use serde_json::Value;

use crate::engine::window::{KeyedEvent, KeyedPage, MetricKey, key_hash};
use crate::kinesis::get_records::{InputRecord, Records};
use crate::kinesis::kpl::{self, Corruption};

/// Records larger than this are refused before parsing: no metric event is anywhere near it.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// Events stamped before 2000-01-01 are refused: an epoch in seconds sent as milliseconds lands
/// in January 1970, and would open windows there.
pub const EARLIEST_EVENT_TIME: EventTime = EventTime(946_684_800_000);

/// Why a record is not a metric event; the label of the invalid-records counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvalidReason {
    Oversized,
    NotJson,
    NotAnObject,
    MissingField(&'static str),
    WrongType(&'static str),
    /// A value that is not a finite number (JSON cannot say NaN; huge exponents overflow).
    NonFiniteValue,
    BadTimestamp,
    /// Before [`EARLIEST_EVENT_TIME`]: epoch seconds sent as milliseconds, most likely.
    ImplausibleTimestamp,
    /// Starts with the KPL's magic bytes but is not a valid aggregate.
    Kpl(Corruption),
    /// A componentName Firehose cannot turn into an S3 prefix and Athena into a partition.
    BadComponentName,
    EmptyName(&'static str),
}

impl InvalidReason {
    /// A short, stable label for metrics and dead-letter keys.
    pub fn label(self) -> String {
        match self {
            Self::Oversized => "oversized".into(),
            Self::NotJson => "not_json".into(),
            Self::NotAnObject => "not_an_object".into(),
            Self::MissingField(field) => format!("missing_{field}"),
            Self::WrongType(field) => format!("wrong_type_{field}"),
            Self::NonFiniteValue => "non_finite_value".into(),
            Self::BadTimestamp => "bad_timestamp".into(),
            Self::ImplausibleTimestamp => "implausible_timestamp".into(),
            Self::Kpl(Corruption::DigestMismatch) => "kpl_digest_mismatch".into(),
            Self::Kpl(Corruption::Malformed) => "kpl_malformed".into(),
            Self::Kpl(Corruption::TooManyRecords) => "kpl_too_many_records".into(),
            Self::BadComponentName => "bad_component_name".into(),
            Self::EmptyName(field) => format!("empty_{field}"),
        }
    }
}

impl fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

const FIELDS: [&str; 5] = ["componentName", "metricName", "unit", "value", "timestamp"];

/// Decodes one record.
pub fn decode(record: &[u8]) -> Result<MetricEvent<'_>, InvalidReason> {
    if record.len() > MAX_RECORD_BYTES {
        return Err(InvalidReason::Oversized);
    }
    let event: MetricEvent<'_> = serde_json::from_slice(record).map_err(|_| diagnose(record))?;
    if !event.value.is_finite() {
        return Err(InvalidReason::NonFiniteValue);
    }
    if event.timestamp < EARLIEST_EVENT_TIME {
        return Err(InvalidReason::ImplausibleTimestamp);
    }
    if event.metric_name.is_empty() {
        return Err(InvalidReason::EmptyName("metricName"));
    }
    if event.unit.is_empty() {
        return Err(InvalidReason::EmptyName("unit"));
    }
    if !is_partition_value(&event.component_name) {
        return Err(InvalidReason::BadComponentName);
    }
    Ok(event)
}

/// The records of one GetRecords page, decoded on the thread that read the page: the pages of
/// a poll are decoded in parallel, and the engine's thread only aggregates (decoding is most of
/// the work, BENCHMARKS.md). One entry per user record: a plain Kinesis record, or each record a
/// KPL aggregate packs. The keys of the valid ones share one buffer, so a page of plain records
/// costs two allocations, not one per record.
#[derive(Debug, Default)]
pub struct DecodedPage {
    keys: Vec<u8>,
    /// Kept small (a page is walked once to aggregate and once for its dead letters): what only
    /// KPL user records have is in `packed`, a record's arrival in `arrivals`.
    entries: Vec<Entry>,
    packed: Vec<Packed>,
    /// Each Kinesis record's `ApproximateArrivalTimestamp`.
    arrivals: Vec<Option<EventTime>>,
}

#[derive(Debug)]
struct Entry {
    /// Index of its Kinesis record in the page (a page holds at most 10,000).
    record: u32,
    /// Index in `packed` of where it sits in a KPL aggregate; `None` for a plain record (or a
    /// corrupt aggregate, kept whole).
    packed: Option<u32>,
    decoded: Result<Decoded, InvalidReason>,
}

#[derive(Debug)]
struct Packed {
    /// Its index in the aggregate: the KCL's sub-sequence number.
    sub_sequence_number: usize,
    /// Ranges of the Kinesis record's data.
    partition_key: Range<usize>,
    data: Range<usize>,
}

#[derive(Debug)]
struct Decoded {
    key: Range<usize>,
    /// [`key_hash`] of the key: hashed here, not on the engine's threads.
    key_hash: u64,
    value: f64,
    timestamp: EventTime,
}

/// One user record of a page, with what it decoded to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UserRecord<'a> {
    /// The Kinesis record's sequence number; several user records share it in a KPL aggregate.
    pub sequence_number: &'a str,
    /// Its place in a KPL aggregate.
    pub sub_sequence_number: Option<usize>,
    pub partition_key: &'a str,
    pub data: &'a [u8],
    pub event: Result<KeyedEvent<'a>, InvalidReason>,
}

impl DecodedPage {
    pub fn of(records: &Records) -> Self {
        let mut page = Self {
            keys: Vec::new(),
            entries: Vec::with_capacity(records.len()),
            packed: Vec::new(),
            arrivals: records.iter().map(|record| record.arrival).collect(),
        };
        for (index, record) in records.iter().enumerate() {
            let index = u32::try_from(index).expect("a page holds at most 10,000 records");
            if !kpl::is_aggregated(record.data) {
                let decoded = page.decode(record.data);
                page.entries.push(Entry { record: index, packed: None, decoded });
                continue;
            }
            match kpl::unpack(record.data) {
                Ok(packed) => {
                    for (sub_sequence_number, user) in packed.into_iter().enumerate() {
                        let decoded = page.decode(&record.data[user.data.clone()]);
                        let at = u32::try_from(page.packed.len()).expect("user records of a page fit in u32");
                        page.packed.push(Packed { sub_sequence_number, partition_key: user.partition_key, data: user.data });
                        page.entries.push(Entry { record: index, packed: Some(at), decoded });
                    }
                }
                Err(corruption) => page.entries.push(Entry { record: index, packed: None, decoded: Err(InvalidReason::Kpl(corruption)) }),
            }
        }
        page
    }

    fn decode(&mut self, data: &[u8]) -> Result<Decoded, InvalidReason> {
        decode(data).map(|event| {
            let start = self.keys.len();
            MetricKey::append(&mut self.keys, &event.component_name, &event.metric_name, &event.unit);
            let key_hash = key_hash(&self.keys[start..]);
            Decoded { key: start..self.keys.len(), key_hash, value: event.value, timestamp: event.timestamp }
        })
    }

    /// User records unpacked from KPL aggregates.
    pub fn packed_records(&self) -> usize {
        self.packed.len()
    }

    /// Each user record in the page's order, with the event or why it is not one; `records` is
    /// the page this was decoded from.
    pub fn user_records<'a>(&'a self, records: &'a Records) -> impl Iterator<Item = UserRecord<'a>> {
        self.entries.iter().map(move |entry| {
            let InputRecord { sequence_number, partition_key, data, .. } = records.get(entry.record as usize);
            let event = self.event(entry);
            match entry.packed.map(|at| &self.packed[at as usize]) {
                None => UserRecord { sequence_number, sub_sequence_number: None, partition_key, data, event },
                Some(packed) => UserRecord {
                    sequence_number,
                    sub_sequence_number: Some(packed.sub_sequence_number),
                    partition_key: std::str::from_utf8(&data[packed.partition_key.clone()]).expect("checked when unpacked"),
                    data: &data[packed.data.clone()],
                    event,
                },
            }
        })
    }

    /// Each user record's event in the page's order, or why it is not one.
    pub fn events(&self) -> impl Iterator<Item = Result<KeyedEvent<'_>, InvalidReason>> {
        self.entries.iter().map(|entry| self.event(entry))
    }

    fn event(&self, entry: &Entry) -> Result<KeyedEvent<'_>, InvalidReason> {
        entry.decoded.as_ref().map(|decoded| self.keyed(entry, decoded)).map_err(|reason| *reason)
    }

    fn keyed(&self, entry: &Entry, decoded: &Decoded) -> KeyedEvent<'_> {
        let arrival = self.arrivals[entry.record as usize];
        KeyedEvent { key: &self.keys[decoded.key.clone()], value: decoded.value, timestamp: decoded.timestamp, arrival }
    }
}

impl KeyedPage for DecodedPage {
    fn records(&self) -> usize {
        self.entries.len()
    }

    fn hashed_events(&self) -> impl Iterator<Item = (usize, u64, KeyedEvent<'_>)> {
        (self.entries.iter().enumerate())
            .filter_map(|(index, entry)| entry.decoded.as_ref().ok().map(|decoded| (index, decoded.key_hash, self.keyed(entry, decoded))))
    }
}

/// Names what is wrong with a record the typed parse refused.
fn diagnose(record: &[u8]) -> InvalidReason {
    let value = match serde_json::from_slice::<Value>(record) {
        Ok(value) => value,
        // serde_json refuses numbers beyond f64 range outright; say so rather than "not JSON".
        Err(error) if error.to_string().starts_with("number out of range") => return InvalidReason::NonFiniteValue,
        Err(_) => return InvalidReason::NotJson,
    };
    let Some(object) = value.as_object() else { return InvalidReason::NotAnObject };
    for field in FIELDS {
        let Some(value) = object.get(field) else { return InvalidReason::MissingField(field) };
        let well_typed = match field {
            "value" => value.is_number(),
            "timestamp" => value.is_string() || value.is_number(),
            _ => value.is_string(),
        };
        if !well_typed {
            return InvalidReason::WrongType(field);
        }
        if field == "timestamp" && serde_json::from_value::<EventTime>(value.clone()).is_err() {
            return InvalidReason::BadTimestamp;
        }
    }
    // Every field is present and well typed, yet the parse failed: a duplicate key, say.
    InvalidReason::NotJson
}

#[cfg(test)]
mod tests {
    use std::borrow::Borrow;

    use md5::Digest;

    use super::*;

    const GOOD: &str =
        r#"{"componentName":"user-service","metricName":"cpu-usage","unit":"percent","value":50.0,"timestamp":"2021-09-09T12:00:00.000Z"}"#;

    fn with(field: &str, value: &str) -> String {
        let mut object: serde_json::Map<String, Value> = serde_json::from_str(GOOD).unwrap();
        match value {
            "<absent>" => {
                object.remove(field);
            }
            raw => {
                object.insert(field.into(), serde_json::from_str(raw).unwrap());
            }
        }
        serde_json::to_string(&object).unwrap()
    }

    #[test]
    fn a_valid_record_decodes() {
        let event = decode(GOOD.as_bytes()).unwrap();
        assert_eq!((event.component_name.as_ref(), event.value), ("user-service", 50.0));
        let epoch = with("timestamp", "1631188800000");
        assert_eq!(decode(epoch.as_bytes()).unwrap().timestamp, EventTime(1_631_188_800_000));
    }

    #[test]
    fn every_kind_of_bad_record_gets_its_reason() {
        let cases: Vec<(String, InvalidReason)> = vec![
            ("not json at all".into(), InvalidReason::NotJson),
            (GOOD[..40].into(), InvalidReason::NotJson),
            ("[1,2,3]".into(), InvalidReason::NotAnObject),
            (with("metricName", "<absent>"), InvalidReason::MissingField("metricName")),
            (with("timestamp", "<absent>"), InvalidReason::MissingField("timestamp")),
            (with("value", "\"50\""), InvalidReason::WrongType("value")),
            (with("componentName", "7"), InvalidReason::WrongType("componentName")),
            (with("timestamp", "\"yesterday\""), InvalidReason::BadTimestamp),
            (with("timestamp", "\"2021-09-09 12:00\""), InvalidReason::BadTimestamp),
            (with("timestamp", "true"), InvalidReason::WrongType("timestamp")),
            (GOOD.replace("50.0", "1e999"), InvalidReason::NonFiniteValue),
            (with("componentName", "\"user service/1\""), InvalidReason::BadComponentName),
            (with("componentName", "\"\""), InvalidReason::BadComponentName),
            (with("unit", "\"\""), InvalidReason::EmptyName("unit")),
            (format!("{{\"pad\":\"{}\"}}", "x".repeat(MAX_RECORD_BYTES)), InvalidReason::Oversized),
        ];
        for (record, reason) in cases {
            assert_eq!(decode(record.as_bytes()).err(), Some(reason), "{record:.80}");
        }
    }

    fn records(data: &[&[u8]]) -> Records {
        let mut records = Records::default();
        for (index, data) in data.iter().enumerate() {
            let arrival = Some(EventTime(1_631_188_900_000));
            records.push(InputRecord { sequence_number: &index.to_string(), partition_key: "pk", data, arrival });
        }
        records
    }

    fn event(key: &MetricKey) -> Result<KeyedEvent<'_>, InvalidReason> {
        Ok(KeyedEvent {
            key: key.borrow(),
            value: 50.0,
            timestamp: EventTime(1_631_188_800_000),
            arrival: Some(EventTime(1_631_188_900_000)),
        })
    }

    #[test]
    fn a_page_decodes_each_record_as_decode_does() {
        let bytes = with("unit", "\"bytes\"");
        let page = DecodedPage::of(&records(&[GOOD.as_bytes(), b"not json", bytes.as_bytes()]));
        let (percent, bytes) =
            (MetricKey::new("user-service", "cpu-usage", "percent"), MetricKey::new("user-service", "cpu-usage", "bytes"));
        let events: Vec<_> = page.events().collect();
        assert_eq!(events, [event(&percent), Err(InvalidReason::NotJson), event(&bytes)]);
    }

    /// A KPL aggregate of `(partition key, data)` user records, framed as the KPL frames it.
    fn aggregate(user_records: &[(&str, &[u8])]) -> Vec<u8> {
        fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
            assert!(bytes.len() < 128, "one-byte lengths are enough here");
            [&[number << 3 | 2, bytes.len() as u8][..], bytes].concat()
        }
        let mut body = Vec::new();
        for (index, (key, data)) in user_records.iter().enumerate() {
            body.extend(field(1, key.as_bytes()));
            body.extend(field(3, &[&[0x08, index as u8][..], &field(3, data)].concat()));
        }
        [&crate::kinesis::kpl::MAGIC[..], &body, &md5::Md5::digest(&body)[..]].concat()
    }

    #[test]
    fn each_user_record_of_a_kpl_aggregate_is_decoded_and_kept_on_its_own() {
        let short = r#"{"componentName":"user-service","metricName":"cpu-usage","unit":"percent","value":50,"timestamp":1631188800000}"#;
        let packed = aggregate(&[("a", short.as_bytes()), ("b", b"{oops")]);
        let mut corrupt = packed.clone();
        *corrupt.last_mut().unwrap() ^= 1;
        let records = records(&[&packed, GOOD.as_bytes(), &corrupt]);
        let page = DecodedPage::of(&records);
        let key = MetricKey::new("user-service", "cpu-usage", "percent");
        let seen: Vec<_> = page
            .user_records(&records)
            .map(|user| (user.sequence_number, user.sub_sequence_number, user.partition_key, user.data, user.event))
            .collect();
        assert_eq!(
            seen,
            [
                ("0", Some(0), "a", short.as_bytes(), event(&key)),
                ("0", Some(1), "b", &b"{oops"[..], Err(InvalidReason::NotJson)),
                ("1", None, "pk", GOOD.as_bytes(), event(&key)),
                ("2", None, "pk", &corrupt[..], Err(InvalidReason::Kpl(Corruption::DigestMismatch))),
            ]
        );
        assert_eq!((page.records(), page.packed_records()), (4, 2));
    }

    #[test]
    fn epoch_seconds_sent_as_milliseconds_are_refused() {
        let seconds = with("timestamp", "1631188800");
        assert_eq!(decode(seconds.as_bytes()).err(), Some(InvalidReason::ImplausibleTimestamp));
        let earliest = with("timestamp", "946684800000");
        assert!(decode(earliest.as_bytes()).is_ok(), "2000-01-01 is the earliest time taken");
        assert_eq!(InvalidReason::ImplausibleTimestamp.label(), "implausible_timestamp");
    }

    #[test]
    fn labels_are_metric_friendly() {
        assert_eq!(InvalidReason::MissingField("timestamp").label(), "missing_timestamp");
        assert_eq!(InvalidReason::NonFiniteValue.to_string(), "non_finite_value");
    }
}
