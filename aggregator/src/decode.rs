//! Turning a Kinesis record into a [`MetricEvent`], or into the reason it is not one.
//!
//! Valid records take one borrowing serde pass. Only an invalid record pays for a second,
//! diagnostic pass that names what is wrong, so the hot path stays a single parse.

use std::fmt;
use std::ops::Range;

use metrics_pipeline_model::event::{EventTime, MetricEvent, is_partition_value};
use serde_json::Value;

use crate::window::{KeyedEvent, KeyedPage, MetricKey, key_hash};

/// Records larger than this are refused before parsing: no metric event is anywhere near it.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

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
/// the work, BENCHMARKS.md). The keys of the valid records share one buffer, so a page costs two
/// allocations, not one per record.
#[derive(Debug, Default)]
pub struct DecodedPage {
    keys: Vec<u8>,
    records: Vec<Result<Decoded, InvalidReason>>,
}

#[derive(Debug)]
struct Decoded {
    key: Range<usize>,
    /// [`key_hash`] of the key: hashed here, not on the engine's threads.
    key_hash: u64,
    value: f64,
    timestamp: EventTime,
}

impl DecodedPage {
    pub fn of<'a>(records: impl ExactSizeIterator<Item = &'a [u8]>) -> Self {
        let mut page = Self { keys: Vec::new(), records: Vec::with_capacity(records.len()) };
        for record in records {
            let decoded = decode(record).map(|event| {
                let start = page.keys.len();
                MetricKey::append(&mut page.keys, &event.component_name, &event.metric_name, &event.unit);
                let key_hash = key_hash(&page.keys[start..]);
                Decoded { key: start..page.keys.len(), key_hash, value: event.value, timestamp: event.timestamp }
            });
            page.records.push(decoded);
        }
        page
    }

    /// Each record in the page's order: the event, or why the record is not one.
    pub fn events(&self) -> impl Iterator<Item = Result<KeyedEvent<'_>, InvalidReason>> {
        self.records.iter().map(|decoded| decoded.as_ref().map(|decoded| self.keyed(decoded)).map_err(|reason| *reason))
    }

    fn keyed(&self, decoded: &Decoded) -> KeyedEvent<'_> {
        KeyedEvent { key: &self.keys[decoded.key.clone()], value: decoded.value, timestamp: decoded.timestamp }
    }
}

impl KeyedPage for DecodedPage {
    fn records(&self) -> usize {
        self.records.len()
    }

    fn hashed_events(&self) -> impl Iterator<Item = (usize, u64, KeyedEvent<'_>)> {
        (self.records.iter().enumerate())
            .filter_map(|(index, decoded)| decoded.as_ref().ok().map(|decoded| (index, decoded.key_hash, self.keyed(decoded))))
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

    #[test]
    fn a_page_decodes_each_record_as_decode_does() {
        let records = [GOOD.to_owned(), "not json".to_owned(), with("unit", "\"bytes\"")];
        let page = DecodedPage::of(records.iter().map(|record| record.as_bytes()));
        let (percent, bytes) =
            (MetricKey::new("user-service", "cpu-usage", "percent"), MetricKey::new("user-service", "cpu-usage", "bytes"));
        fn event(key: &MetricKey) -> Result<KeyedEvent<'_>, InvalidReason> {
            Ok(KeyedEvent { key: key.borrow(), value: 50.0, timestamp: EventTime(1_631_188_800_000) })
        }
        let events: Vec<_> = page.events().collect();
        assert_eq!(events, [event(&percent), Err(InvalidReason::NotJson), event(&bytes)]);
    }

    #[test]
    fn labels_are_metric_friendly() {
        assert_eq!(InvalidReason::MissingField("timestamp").label(), "missing_timestamp");
        assert_eq!(InvalidReason::NonFiniteValue.to_string(), "non_finite_value");
    }
}
