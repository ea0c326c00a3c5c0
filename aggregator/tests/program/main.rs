//! The aggregator program against the emulators, one binary so that the files link once and run
//! side by side (each with its own streams and bucket): `cargo test --test program -- <module>::`
//! runs one file's. The chaos test runs alone (`tests/chaos.rs`): it loads both cores.

#[path = "../support/mod.rs"]
mod support;

mod emulator;
mod hostile;
mod kinesis_sink;
mod parquet;
mod real_streams;
