//! The records that flow through the pipeline: metric events in, windowed aggregates out.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One metric measurement, as producers put it on the input stream (one JSON object a record).
///
/// Strings borrow from the record when they hold no escapes, so decoding allocates nothing.
/// Unknown fields are ignored; a missing or repeated field is an error.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricEvent<'a> {
    pub component_name: Cow<'a, str>,
    pub metric_name: Cow<'a, str>,
    pub unit: Cow<'a, str>,
    pub value: f64,
    pub timestamp: EventTime,
}

// Written by hand rather than derived because it is the aggregator's hot path: field names are
// matched as raw bytes (serde_json then skips UTF-8 validation of the five keys, which only
// need comparing), and string values borrow from the record.
impl<'de: 'a, 'a> Deserialize<'de> for MetricEvent<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct("MetricEvent", &EVENT_FIELDS, MetricEventVisitor(std::marker::PhantomData))
    }
}

const EVENT_FIELDS: [&str; 5] = ["componentName", "metricName", "unit", "value", "timestamp"];

enum EventField {
    ComponentName,
    MetricName,
    Unit,
    Value,
    Timestamp,
    Other,
}

impl<'de> Deserialize<'de> for EventField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_bytes(EventFieldVisitor)
    }
}

struct EventFieldVisitor;

impl Visitor<'_> for EventFieldVisitor {
    type Value = EventField;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_bytes<E: de::Error>(self, name: &[u8]) -> Result<EventField, E> {
        Ok(match name {
            b"componentName" => EventField::ComponentName,
            b"metricName" => EventField::MetricName,
            b"unit" => EventField::Unit,
            b"value" => EventField::Value,
            b"timestamp" => EventField::Timestamp,
            _ => EventField::Other,
        })
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<EventField, E> {
        self.visit_bytes(name.as_bytes())
    }
}

/// A string that borrows from the input when it can.
struct BorrowedStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for BorrowedStr<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(BorrowedStrVisitor(std::marker::PhantomData))
    }
}

struct BorrowedStrVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for BorrowedStrVisitor<'a> {
    type Value = BorrowedStr<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(BorrowedStr(Cow::Borrowed(text)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        Ok(BorrowedStr(Cow::Owned(text.to_owned())))
    }
}

struct MetricEventVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for MetricEventVisitor<'a> {
    type Value = MetricEvent<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a metric event object")
    }

    fn visit_map<M: de::MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        fn set<'de, M: de::MapAccess<'de>, T: Deserialize<'de>>(
            slot: &mut Option<T>,
            map: &mut M,
            name: &'static str,
        ) -> Result<(), M::Error> {
            if slot.is_some() {
                return Err(de::Error::duplicate_field(name));
            }
            *slot = Some(map.next_value()?);
            Ok(())
        }
        let (mut component_name, mut metric_name, mut unit) = (None::<BorrowedStr<'a>>, None::<BorrowedStr<'a>>, None::<BorrowedStr<'a>>);
        let (mut value, mut timestamp) = (None::<f64>, None::<EventTime>);
        while let Some(field) = map.next_key::<EventField>()? {
            match field {
                EventField::ComponentName => set(&mut component_name, &mut map, "componentName")?,
                EventField::MetricName => set(&mut metric_name, &mut map, "metricName")?,
                EventField::Unit => set(&mut unit, &mut map, "unit")?,
                EventField::Value => set(&mut value, &mut map, "value")?,
                EventField::Timestamp => set(&mut timestamp, &mut map, "timestamp")?,
                EventField::Other => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(MetricEvent {
            component_name: component_name.ok_or_else(|| de::Error::missing_field("componentName"))?.0,
            metric_name: metric_name.ok_or_else(|| de::Error::missing_field("metricName"))?.0,
            unit: unit.ok_or_else(|| de::Error::missing_field("unit"))?.0,
            value: value.ok_or_else(|| de::Error::missing_field("value"))?,
            timestamp: timestamp.ok_or_else(|| de::Error::missing_field("timestamp"))?,
        })
    }
}

/// Whether a componentName survives as an S3 key segment (Firehose's prefix), a Hive partition
/// value and a projection enum entry (comma-separated) alike.
pub fn is_partition_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 255
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && value != "."
        && value != ".."
}

/// The aggregate of one (componentName, metricName, unit) over one event-time window, as the
/// aggregator writes it to the output stream and Firehose stores it (newline-delimited) in S3.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricAggregate {
    pub component_name: String,
    pub metric_name: String,
    pub unit: String,
    pub min_value: f64,
    pub max_value: f64,
    pub avg_value: f64,
    /// `count` and `sum` make partial aggregates mergeable downstream.
    pub count: u64,
    pub sum: f64,
    /// Earliest event time inside the window.
    pub from_timestamp: EventTime,
    /// Latest event time inside the window.
    pub to_timestamp: EventTime,
    pub window_start: EventTime,
    pub window_end: EventTime,
    /// [`window_id`] of (componentName, metricName, unit, windowStart, windowEnd): duplicates from
    /// at-least-once delivery and re-emissions share it; no two distinct windows do.
    pub window_id: String,
    /// 0 when the window first fires; each late event within the allowed lateness re-emits the
    /// window with the next revision, so the highest revision of a `windowId` is the truth.
    pub revision: u32,
}

/// The id of one key's window: 32 hex digits, the first 128 bits of SHA-256 over
/// `metrics-pipeline/window/v2`, then componentName, metricName and unit each as its length in
/// bytes (8, little-endian) followed by its UTF-8 bytes, then windowStart and windowEnd as epoch
/// milliseconds (8 bytes each, little-endian). Length prefixes keep the parts apart whatever
/// bytes names hold, the end makes windows of different lengths distinct, and SHA-256 makes a
/// collision, even a crafted one, practically impossible.
pub fn window_id(component_name: &str, metric_name: &str, unit: &str, window_start: EventTime, window_end: EventTime) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(b"metrics-pipeline/window/v2");
    for part in [component_name, metric_name, unit] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    hash.update(window_start.0.to_le_bytes());
    hash.update(window_end.0.to_le_bytes());
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Written digit by digit: one allocation per id (ids are made for every fired window).
    let mut id = String::with_capacity(32);
    for byte in &hash.finalize()[..16] {
        id.push(char::from(HEX[usize::from(byte >> 4)]));
        id.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    id
}

/// Aggregates without the duplicates of at-least-once delivery, keyed by `windowId`: per window
/// the most complete one, the highest `count` (a window only grows), then the highest `revision`.
/// This is the rule the README documents for consumers of the output stream and the table; the
/// tests judge the pipeline's output by it.
pub fn deduplicate(aggregates: impl IntoIterator<Item = MetricAggregate>) -> std::collections::BTreeMap<String, MetricAggregate> {
    let mut latest: std::collections::BTreeMap<String, MetricAggregate> = std::collections::BTreeMap::new();
    for aggregate in aggregates {
        match latest.get(&aggregate.window_id) {
            Some(kept) if (kept.count, kept.revision) >= (aggregate.count, aggregate.revision) => {}
            _ => {
                latest.insert(aggregate.window_id.clone(), aggregate);
            }
        }
    }
    latest
}

/// A UTC instant with millisecond precision, as milliseconds since the Unix epoch.
///
/// Reads RFC 3339 text (any offset, any fraction; finer than milliseconds is truncated) or a
/// JSON number of epoch milliseconds; always writes `2021-09-09T12:15:02.001Z`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventTime(pub i64);

/// Earliest and latest instants RFC 3339 text can express (years 0000 through 9999).
const MIN_MILLIS: i64 = -62_167_219_200_000;
const MAX_MILLIS: i64 = 253_402_300_799_999;

impl EventTime {
    /// Parses RFC 3339 (`2021-09-09T12:00:00Z`, `2021-09-09T14:00:00.5+02:00`, ...).
    pub fn parse_rfc3339(text: &str) -> Option<EventTime> {
        let b = text.as_bytes();
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
            return None;
        }
        let year = digits(&b[0..4])?;
        let month = digits(&b[5..7])?;
        let day = digits(&b[8..10])?;
        let hour = digits(&b[11..13])?;
        let minute = digits(&b[14..16])?;
        // A leap second (60) is folded into the second before it, as most systems do.
        let second = digits(&b[17..19])?.min(59);
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        let mut rest = &b[19..];
        let mut millis = 0;
        if let Some(fraction) = rest.strip_prefix(b".") {
            let len = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
            if len == 0 {
                return None;
            }
            for (position, digit) in fraction[..len.min(3)].iter().enumerate() {
                millis += i64::from(digit - b'0') * [100, 10, 1][position];
            }
            rest = &fraction[len..];
        }
        let offset_minutes = match rest {
            [b'Z' | b'z'] => 0,
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
                let (hours, minutes) = (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?);
                if hours > 23 || minutes > 59 {
                    return None;
                }
                let offset = hours * 60 + minutes;
                if *sign == b'+' { offset } else { -offset }
            }
            _ => return None,
        };
        let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
        Some(EventTime(seconds * 1_000 + millis))
    }

    /// Accepts epoch milliseconds within the years RFC 3339 can write back out.
    pub fn from_epoch_millis(millis: i64) -> Option<EventTime> {
        (MIN_MILLIS..=MAX_MILLIS).contains(&millis).then_some(EventTime(millis))
    }

    /// Writes `YYYY-MM-DDTHH:MM:SS.mmmZ` into a fixed buffer, without allocating.
    pub fn to_rfc3339_bytes(self) -> [u8; 24] {
        let millis = self.0.clamp(MIN_MILLIS, MAX_MILLIS);
        let (days, millis_of_day) = (millis.div_euclid(86_400_000), millis.rem_euclid(86_400_000));
        let (year, month, day) = civil_from_days(days);
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut value: i64| {
            for index in (at..at + width).rev() {
                out[index] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, millis_of_day / 3_600_000);
        put(14, 2, millis_of_day / 60_000 % 60);
        put(17, 2, millis_of_day / 1_000 % 60);
        put(20, 3, millis_of_day % 1_000);
        out
    }
}

impl fmt::Display for EventTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.to_rfc3339_bytes();
        f.write_str(std::str::from_utf8(&bytes).expect("the formatter writes ASCII only"))
    }
}

impl Serialize for EventTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let bytes = self.to_rfc3339_bytes();
        serializer.serialize_str(std::str::from_utf8(&bytes).expect("the formatter writes ASCII only"))
    }
}

impl<'de> Deserialize<'de> for EventTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EventTimeVisitor)
    }
}

struct EventTimeVisitor;

impl Visitor<'_> for EventTimeVisitor {
    type Value = EventTime;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 timestamp such as \"2021-09-09T12:00:00.000Z\" or epoch milliseconds")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<EventTime, E> {
        EventTime::parse_rfc3339(text).ok_or_else(|| E::invalid_value(de::Unexpected::Str(text), &self))
    }

    fn visit_i64<E: de::Error>(self, millis: i64) -> Result<EventTime, E> {
        EventTime::from_epoch_millis(millis).ok_or_else(|| E::invalid_value(de::Unexpected::Signed(millis), &self))
    }

    fn visit_u64<E: de::Error>(self, millis: u64) -> Result<EventTime, E> {
        i64::try_from(millis)
            .ok()
            .and_then(EventTime::from_epoch_millis)
            .ok_or_else(|| E::invalid_value(de::Unexpected::Unsigned(millis), &self))
    }

    fn visit_f64<E: de::Error>(self, millis: f64) -> Result<EventTime, E> {
        // `1631188800000.0` is whole milliseconds written as a float; a fraction is not.
        let whole = millis.fract() == 0.0 && millis.abs() < 1e15;
        whole
            .then(|| EventTime::from_epoch_millis(millis as i64))
            .flatten()
            .ok_or_else(|| E::invalid_value(de::Unexpected::Float(millis), &self))
    }
}

fn digits(bytes: &[u8]) -> Option<i64> {
    bytes.iter().try_fold(0, |value, &b| b.is_ascii_digit().then(|| value * 10 + i64::from(b - b'0')))
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Option<String> {
        EventTime::parse_rfc3339(text).map(|t| t.to_string())
    }

    #[test]
    fn formats_utc_with_milliseconds_and_z() {
        assert_eq!(EventTime(1_631_188_502_001).to_string(), "2021-09-09T11:55:02.001Z");
        assert_eq!(EventTime(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(EventTime(-1).to_string(), "1969-12-31T23:59:59.999Z");
        assert_eq!(serde_json::to_string(&EventTime(1_631_189_702_001)).unwrap(), "\"2021-09-09T12:15:02.001Z\"");
    }

    #[test]
    fn reads_rfc3339_in_its_common_forms() {
        assert_eq!(parse("2021-09-09T12:00:00.000Z").as_deref(), Some("2021-09-09T12:00:00.000Z"));
        assert_eq!(parse("2021-09-09T12:00:00Z").as_deref(), Some("2021-09-09T12:00:00.000Z"));
        assert_eq!(parse("2021-09-09t12:00:00.5z").as_deref(), Some("2021-09-09T12:00:00.500Z"));
        assert_eq!(parse("2021-09-09 12:00:00.123456789Z").as_deref(), Some("2021-09-09T12:00:00.123Z"));
        assert_eq!(parse("2021-09-09T14:30:00+02:30").as_deref(), Some("2021-09-09T12:00:00.000Z"));
        assert_eq!(parse("2021-09-09T00:00:00-05:00").as_deref(), Some("2021-09-09T05:00:00.000Z"));
        assert_eq!(parse("2024-02-29T23:59:60Z").as_deref(), Some("2024-02-29T23:59:59.000Z"));
    }

    #[test]
    fn refuses_what_is_not_rfc3339() {
        for bad in [
            "2021-09-09",
            "2021-09-09T12:00:00",
            "2021-09-09T12:00Z",
            "2021-13-01T00:00:00Z",
            "2021-02-29T00:00:00Z",
            "2021-09-31T00:00:00Z",
            "2021-09-09T24:00:00Z",
            "2021-09-09T12:00:00.Z",
            "2021-09-09T12:00:00+0200",
            "09/09/2021 12:00:00",
            "2021-09-09T12:00:00ZZ",
            "２０２１-09-09T12:00:00Z",
        ] {
            assert_eq!(EventTime::parse_rfc3339(bad), None, "{bad:?} should be refused");
        }
    }

    #[test]
    fn reads_epoch_milliseconds_as_numbers() {
        let read = |json: &str| serde_json::from_str::<EventTime>(json).map(|t| t.to_string()).ok();
        assert_eq!(read("1631188800000").as_deref(), Some("2021-09-09T12:00:00.000Z"));
        assert_eq!(read("1631188800000.0").as_deref(), Some("2021-09-09T12:00:00.000Z"));
        assert_eq!(read("-1000").as_deref(), Some("1969-12-31T23:59:59.000Z"));
        assert_eq!(read("1631188800000.5"), None);
        assert_eq!(read("99999999999999999"), None);
        assert_eq!(read("true"), None);
        assert_eq!(read("\"yesterday\""), None);
    }

    #[test]
    fn agrees_with_jiff_across_the_calendar() {
        // Every 7919th minute over four centuries, through leap years and century rules.
        let mut millis = -2_208_988_800_000_i64; // 1900-01-01
        while millis < 10_413_792_000_000 {
            let ours = EventTime(millis).to_string();
            let theirs = jiff::Timestamp::from_millisecond(millis).unwrap().strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
            assert_eq!(ours, theirs);
            assert_eq!(EventTime::parse_rfc3339(&theirs), Some(EventTime(millis)));
            millis += 7_919 * 60_000 + 17;
        }
    }

    #[test]
    fn event_reads_and_borrows_from_the_record() {
        let record = br#"{"componentName":"user-service","metricName":"cpu-usage","unit":"percent","value":50.0,"timestamp":"2021-09-09T12:00:00.000Z"}"#;
        let event: MetricEvent<'_> = serde_json::from_slice(record).unwrap();
        assert!(matches!(event.component_name, Cow::Borrowed("user-service")));
        assert_eq!(event.value, 50.0);
        assert_eq!(event.timestamp, EventTime(1_631_188_800_000));
    }

    #[test]
    fn event_fields_in_any_order_extra_ones_ignored_escapes_unescaped_duplicates_refused() {
        let record =
            br#"{"host":"a","timestamp":1631188800000,"value":1,"unit":"%","metricName":"cpu","componentName":"user\u002dservice"}"#;
        let event: MetricEvent<'_> = serde_json::from_slice(record).unwrap();
        assert!(matches!(event.component_name, Cow::Owned(ref name) if name == "user-service"), "an escaped string is unescaped");
        assert_eq!((event.metric_name.as_ref(), event.unit.as_ref(), event.value), ("cpu", "%", 1.0));
        let duplicate = br#"{"componentName":"a","componentName":"b","metricName":"m","unit":"u","value":1,"timestamp":0}"#;
        let error = serde_json::from_slice::<MetricEvent<'_>>(duplicate).unwrap_err();
        assert!(error.to_string().contains("duplicate field `componentName`"), "{error}");
        let missing = br#"{"componentName":"a","metricName":"m","value":1,"timestamp":0}"#;
        let error = serde_json::from_slice::<MetricEvent<'_>>(missing).unwrap_err();
        assert!(error.to_string().contains("missing field `unit`"), "{error}");
    }

    #[test]
    fn aggregate_writes_the_documented_shape() {
        let aggregate = MetricAggregate {
            component_name: "user-service".into(),
            metric_name: "cpu-usage".into(),
            unit: "percent".into(),
            min_value: 43.0,
            max_value: 57.0,
            avg_value: 50.0,
            count: 3,
            sum: 150.0,
            from_timestamp: EventTime::parse_rfc3339("2021-09-09T11:30:00Z").unwrap(),
            to_timestamp: EventTime::parse_rfc3339("2021-09-09T12:30:00Z").unwrap(),
            window_start: EventTime::parse_rfc3339("2021-09-09T00:00:00Z").unwrap(),
            window_end: EventTime::parse_rfc3339("2021-09-10T00:00:00Z").unwrap(),
            window_id: "5d1c0c8e2f4a7b90".into(),
            revision: 0,
        };
        let json = serde_json::to_value(&aggregate).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "componentName": "user-service", "metricName": "cpu-usage", "unit": "percent",
                "minValue": 43.0, "maxValue": 57.0, "avgValue": 50.0, "count": 3, "sum": 150.0,
                "fromTimestamp": "2021-09-09T11:30:00.000Z", "toTimestamp": "2021-09-09T12:30:00.000Z",
                "windowStart": "2021-09-09T00:00:00.000Z", "windowEnd": "2021-09-10T00:00:00.000Z",
                "windowId": "5d1c0c8e2f4a7b90", "revision": 0
            })
        );
        assert_eq!(serde_json::from_value::<MetricAggregate>(json).unwrap(), aggregate);
    }

    #[test]
    fn window_ids_are_stable_and_keep_every_part_apart() {
        let (noon, minute) = (EventTime(1_631_188_800_000), 60_000);
        let id = |c: &str, m: &str, u: &str, start: i64, end: i64| window_id(c, m, u, EventTime(start), EventTime(end));
        let base = id("user-service", "cpu-usage", "percent", noon.0, noon.0 + minute);
        assert_eq!(
            base, "13c3887f66b5d743e2c55837426ff56d",
            "the documented derivation (checked with Python's hashlib): ids must not change across versions"
        );
        assert_eq!(base.len(), 32);
        let others = [
            id("user-service", "cpu-usage", "percent", noon.0, noon.0 + 5 * minute),
            id("user-service", "cpu-usage", "percent", noon.0 + minute, noon.0 + 2 * minute),
            id("user-servicecpu-usage", "", "percent", noon.0, noon.0 + minute),
            id("user-service\0cpu-usage", "", "percent", noon.0, noon.0 + minute),
            id("user-service", "cpu-usage\0percent", "", noon.0, noon.0 + minute),
        ];
        for other in others {
            assert_ne!(other, base);
        }
    }

    #[test]
    fn deduplication_keeps_the_most_complete_then_the_latest_revision_of_each_window() {
        let window = |id: &str, count: u64, revision: u32| MetricAggregate {
            component_name: "c".into(),
            metric_name: "m".into(),
            unit: "u".into(),
            min_value: 1.0,
            max_value: 1.0,
            avg_value: 1.0,
            count,
            sum: count as f64,
            from_timestamp: EventTime(0),
            to_timestamp: EventTime(0),
            window_start: EventTime(0),
            window_end: EventTime(60_000),
            window_id: id.into(),
            revision,
        };
        let kept =
            deduplicate([window("a", 3, 0), window("a", 5, 0), window("a", 4, 1), window("b", 2, 0), window("b", 2, 1), window("a", 5, 0)]);
        let summary: Vec<(&str, u64, u32)> = kept.values().map(|w| (w.window_id.as_str(), w.count, w.revision)).collect();
        assert_eq!(summary, [("a", 5, 0), ("b", 2, 1)]);
    }
}
