//! Kinesis, both ends: the input stream's shards read (following resharding), GetRecords answers
//! and KPL aggregates decoded into events, and aggregates written to the output stream.

pub mod decode;
pub mod get_records;
pub mod kpl;
pub mod sink;
pub mod source;
