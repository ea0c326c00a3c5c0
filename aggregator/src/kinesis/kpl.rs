//! Kinesis records made by the Kinesis Producer Library (KPL), which by default packs several user
//! records into one Kinesis record: the magic bytes `F3 89 9A C2`, an `AggregatedRecord` protocol
//! buffer, then the MD5 digest of that protocol buffer. The KCL and Flink's consumer unpack them;
//! so does the aggregator, and counts or dead-letters each user record on its own.
//!
//! ```text
//! message AggregatedRecord {
//!   repeated string partition_key_table     = 1;
//!   repeated string explicit_hash_key_table = 2;
//!   repeated Record records                 = 3;
//! }
//! message Record {
//!   required uint64 partition_key_index     = 1;
//!   optional uint64 explicit_hash_key_index = 2;
//!   required bytes  data                    = 3;
//!   repeated Tag    tags                    = 4;   // Tag { required string key = 1; optional string value = 2; }
//! }
//! ```
//!
//! Unlike the KCL, which hands a record whose digest does not match on as one plain record, a
//! record that carries the magic bytes but is not a valid aggregate is refused with its own reason:
//! it is not a metric event either way, and the reason says which producer to look at. Every user
//! record is kept, whatever shard's hash key range it belongs to. The KCL drops those outside the
//! shard's range, which suits the C++ KPL (it sends them again to their own shard after a reshard,
//! so here they may count twice then) but loses the records of AWS Labs' aggregation libraries,
//! which pack any keys into one record.

use std::ops::Range;

use md5::{Digest, Md5};

/// The first bytes of every aggregated record.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST_BYTES: usize = 16;
/// Most user records one aggregate may hold. A user record can be 6 bytes, so a hostile 10 MiB
/// answer could otherwise unpack to nearly two million of them; the KPL's own aggregates hold a few
/// hundred to a few thousand.
pub const MAX_USER_RECORDS: usize = 50_000;

/// One user record inside an aggregated Kinesis record, as ranges of that record's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    pub partition_key: Range<usize>,
    pub data: Range<usize>,
}

/// Why a record that starts with the magic bytes is not a valid aggregate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Corruption {
    /// The MD5 trailer does not match the protocol buffer: truncated or altered on the way.
    DigestMismatch,
    /// Not an `AggregatedRecord`: a field of the wrong type, an index outside its table, a
    /// required field missing, a partition key that is not UTF-8, or no user record at all.
    Malformed,
    /// More than [`MAX_USER_RECORDS`] user records.
    TooManyRecords,
}

/// Whether `record` is in the KPL's aggregation format (it may still be corrupt).
pub fn is_aggregated(record: &[u8]) -> bool {
    record.starts_with(&MAGIC)
}

/// The user records of an aggregated record, in order (their index is the sub-sequence number).
pub fn unpack(record: &[u8]) -> Result<Vec<UserRecord>, Corruption> {
    let body_end = record.len().checked_sub(DIGEST_BYTES).filter(|end| *end >= MAGIC.len()).ok_or(Corruption::Malformed)?;
    let body = MAGIC.len()..body_end;
    if Md5::digest(&record[body.clone()])[..] != record[body_end..] {
        return Err(Corruption::DigestMismatch);
    }
    let (mut partition_keys, mut explicit_hash_keys, mut records) = (Vec::new(), 0usize, Vec::new());
    let mut fields = Fields { bytes: record, at: body.start, end: body.end };
    while let Some((number, value)) = fields.next()? {
        match (number, value) {
            (1, Value::Bytes(key)) => {
                std::str::from_utf8(&record[key.clone()]).map_err(|_| Corruption::Malformed)?;
                partition_keys.push(key);
            }
            (2, Value::Bytes(_)) => explicit_hash_keys += 1,
            (3, Value::Bytes(_)) if records.len() == MAX_USER_RECORDS => return Err(Corruption::TooManyRecords),
            (3, Value::Bytes(message)) => records.push(message),
            (1..=3, _) => return Err(Corruption::Malformed),
            _ => {}
        }
    }
    if records.is_empty() {
        return Err(Corruption::Malformed);
    }
    records.into_iter().map(|message| user_record(record, message, &partition_keys, explicit_hash_keys)).collect()
}

fn user_record(
    record: &[u8],
    message: Range<usize>,
    partition_keys: &[Range<usize>],
    explicit_hash_keys: usize,
) -> Result<UserRecord, Corruption> {
    let (mut partition_key, mut data) = (None, None);
    let mut fields = Fields { bytes: record, at: message.start, end: message.end };
    while let Some((number, value)) = fields.next()? {
        match (number, value) {
            (1, Value::Varint(index)) => partition_key = Some(usize::try_from(index).ok().and_then(|index| partition_keys.get(index))),
            (2, Value::Varint(index)) if usize::try_from(index).is_ok_and(|index| index < explicit_hash_keys) => {}
            (3, Value::Bytes(bytes)) => data = Some(bytes),
            (4, Value::Bytes(tag)) => check_tag(record, tag)?,
            (1..=4, _) => return Err(Corruption::Malformed),
            _ => {}
        }
    }
    match (partition_key, data) {
        (Some(Some(partition_key)), Some(data)) => Ok(UserRecord { partition_key: partition_key.clone(), data }),
        _ => Err(Corruption::Malformed),
    }
}

/// A tag is kept by no one here, but it must be a `Tag`: a required key, an optional value.
fn check_tag(record: &[u8], tag: Range<usize>) -> Result<(), Corruption> {
    let mut has_key = false;
    let mut fields = Fields { bytes: record, at: tag.start, end: tag.end };
    while let Some((number, value)) = fields.next()? {
        match (number, value) {
            (1, Value::Bytes(_)) => has_key = true,
            (2, Value::Bytes(_)) => {}
            (1 | 2, _) => return Err(Corruption::Malformed),
            _ => {}
        }
    }
    if has_key { Ok(()) } else { Err(Corruption::Malformed) }
}

/// A protocol-buffer field's value; fixed-width ones are skipped.
enum Value {
    Varint(u64),
    Bytes(Range<usize>),
    Fixed,
}

/// The fields of one protocol-buffer message: `bytes[at..end]`.
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
    end: usize,
}

impl Fields<'_> {
    fn next(&mut self) -> Result<Option<(u64, Value)>, Corruption> {
        if self.at == self.end {
            return Ok(None);
        }
        let tag = self.varint()?;
        let value = match tag & 7 {
            0 => Value::Varint(self.varint()?),
            1 => self.skip(8)?,
            2 => {
                let length = usize::try_from(self.varint()?).map_err(|_| Corruption::Malformed)?;
                let start = self.at;
                self.skip(length)?;
                Value::Bytes(start..self.at)
            }
            5 => self.skip(4)?,
            // Groups (3, 4) are not in the format; 6 and 7 are not wire types.
            _ => return Err(Corruption::Malformed),
        };
        Ok(Some((tag >> 3, value)))
    }

    fn skip(&mut self, length: usize) -> Result<Value, Corruption> {
        self.at = self.at.checked_add(length).filter(|end| *end <= self.end).ok_or(Corruption::Malformed)?;
        Ok(Value::Fixed)
    }

    fn varint(&mut self) -> Result<u64, Corruption> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.bytes[..self.end].get(self.at).ok_or(Corruption::Malformed)?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Corruption::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made by AWS Labs' aggregation library (PyPI `aws-kinesis-agg` 1.2.3): user records
    /// (`pk1`, `hello`) and (`pk2`, `world`, explicit hash key `123`). The end-to-end tests make
    /// theirs with the library itself.
    const FROM_AWS_LABS: &str =
        "f3899ac20a03706b310a03706b3212033132331a0908001a0568656c6c6f1a0b080110001a05776f726c64cb48b8211afb3c05f4c31852c9aff58e";

    fn bytes(hex: &str) -> Vec<u8> {
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
    }

    fn unpacked(record: &[u8]) -> Result<Vec<(&str, &[u8])>, Corruption> {
        let records = unpack(record)?;
        Ok(records.into_iter().map(|user| (std::str::from_utf8(&record[user.partition_key]).unwrap(), &record[user.data])).collect())
    }

    /// An aggregate of `body` with its digest, as the KPL frames it.
    fn framed(body: &[u8]) -> Vec<u8> {
        [&MAGIC[..], body, &Md5::digest(body)[..]].concat()
    }

    #[test]
    fn the_kpl_format_unpacks_into_its_user_records() {
        let record = bytes(FROM_AWS_LABS);
        assert!(is_aggregated(&record));
        assert_eq!(unpacked(&record), Ok(vec![("pk1", &b"hello"[..]), ("pk2", &b"world"[..])]));
        assert!(!is_aggregated(br#"{"componentName":"c"}"#));
    }

    #[test]
    fn a_digest_that_does_not_match_is_refused() {
        let mut record = bytes(FROM_AWS_LABS);
        let last = record.len() - 1;
        record[last] ^= 1;
        assert_eq!(unpack(&record), Err(Corruption::DigestMismatch));
        let mut altered = bytes(FROM_AWS_LABS);
        altered[10] ^= 1;
        assert_eq!(unpack(&altered), Err(Corruption::DigestMismatch), "a changed body");
    }

    #[test]
    fn what_is_not_an_aggregated_record_is_malformed() {
        let cases: [(&str, Vec<u8>); 9] = [
            ("magic only", MAGIC.to_vec()),
            ("no user record", framed(b"\x0a\x01k")),
            ("a partition key index outside the table", framed(b"\x0a\x01k\x1a\x05\x08\x01\x1a\x01x")),
            ("an explicit hash key index outside the table", framed(b"\x0a\x01k\x1a\x07\x08\x00\x10\x00\x1a\x01x")),
            ("no data", framed(b"\x0a\x01k\x1a\x02\x08\x00")),
            ("a partition key that is not UTF-8", framed(b"\x0a\x01\xff\x1a\x05\x08\x00\x1a\x01x")),
            ("a length past the end", framed(b"\x0a\x09k")),
            ("a tag without a key", framed(b"\x0a\x01k\x1a\x07\x08\x00\x1a\x01x\x22\x00")),
            ("a group", framed(b"\x0b\x0c")),
        ];
        for (what, record) in cases {
            assert_eq!(unpack(&record), Err(Corruption::Malformed), "{what}");
        }
        let flood: Vec<u8> = std::iter::once(&b"\x0a\x01k"[..])
            .chain(std::iter::repeat_n(&b"\x1a\x04\x08\x00\x1a\x00"[..], MAX_USER_RECORDS + 1))
            .flatten()
            .copied()
            .collect();
        assert_eq!(unpack(&framed(&flood)), Err(Corruption::TooManyRecords), "a flood of tiny user records");
        assert_eq!(unpack(&framed(&flood[..flood.len() - 6])).map(|records| records.len()), Ok(MAX_USER_RECORDS));
        let tagged = framed(b"\x0a\x01k\x1a\x0c\x08\x00\x1a\x01x\x22\x05\x0a\x01a\x12\x00");
        assert_eq!(unpacked(&tagged), Ok(vec![("k", &b"x"[..])]), "tags are read and left");
    }
}
