//! The checkpoint: where each shard was read to plus the open-window state, as one JSON object
//! in the pipeline's bucket, overwritten after each flush (an S3 PUT replaces atomically).

use anyhow::Context;
use metrics_pipeline_model::event::EventTime;
use serde::{Deserialize, Serialize};

use crate::bucket::{Bucket, StorageError};
use crate::parquet_files::FilesState;
use crate::source::StreamPosition;
use crate::window::EngineSnapshot;

const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    pub version: u32,
    /// The input stream the positions belong to.
    pub stream: String,
    pub written_at: EventTime,
    pub position: StreamPosition,
    pub engine: EngineSnapshot,
    /// The direct Parquet sink's rows and roll, when it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesState>,
}

impl Checkpoint {
    pub fn new(stream: &str, written_at: EventTime, position: StreamPosition, engine: EngineSnapshot, files: Option<FilesState>) -> Self {
        Self { version: FORMAT_VERSION, stream: stream.to_owned(), written_at, position, engine, files }
    }
}

/// A stored checkpoint, if this aggregator may resume from it; the error says what to do.
fn parse(bytes: &[u8], stream: &str, location: &str) -> anyhow::Result<Checkpoint> {
    let checkpoint: Checkpoint = serde_json::from_slice(bytes)
        .with_context(|| format!("{location} is not a checkpoint this aggregator can read; move it away to start over"))?;
    anyhow::ensure!(
        checkpoint.version == FORMAT_VERSION,
        "{location} has format version {}, this aggregator reads {FORMAT_VERSION}; move it away to start over",
        checkpoint.version
    );
    anyhow::ensure!(
        checkpoint.stream == stream,
        "{location} belongs to input stream `{}`, not `{stream}`; use another --checkpoint-key or move it away",
        checkpoint.stream
    );
    Ok(checkpoint)
}

pub struct CheckpointStore {
    bucket: Bucket,
    key: String,
}

impl CheckpointStore {
    pub fn new(bucket: Bucket, key: String) -> Self {
        Self { bucket, key }
    }

    pub fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket.name(), self.key)
    }

    /// The stored checkpoint for `stream`, `None` on a first start. `Err(Unreachable)` is worth
    /// retrying; a checkpoint that cannot be understood, or belongs to another stream, stops the
    /// start (`Ok(Err(..))`): resuming from it would be wrong.
    pub async fn load(&self, stream: &str) -> Result<anyhow::Result<Option<Checkpoint>>, StorageError> {
        let Some(bytes) = self.bucket.get(&self.key).await? else { return Ok(Ok(None)) };
        Ok(parse(&bytes, stream, &self.location()).map(Some))
    }

    pub async fn save(&self, checkpoint: &Checkpoint) {
        let body = serde_json::to_vec(checkpoint).expect("a checkpoint always serializes");
        self.bucket.put(&self.key, body, "application/json").await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn stored(stream: &str) -> Vec<u8> {
        let engine = EngineSnapshot { window_ms: 60_000, watermarks: BTreeMap::new(), open: Vec::new(), fired: Vec::new() };
        serde_json::to_vec(&Checkpoint::new(stream, EventTime(0), StreamPosition::default(), engine, None)).unwrap()
    }

    #[test]
    fn a_checkpoint_resumes_only_the_stream_it_was_written_for() {
        assert_eq!(parse(&stored("in"), "in", "s3://b/k").unwrap().stream, "in");
        let error = parse(&stored("other"), "in", "s3://b/k").unwrap_err().to_string();
        assert!(error.contains("belongs to input stream `other`, not `in`; use another --checkpoint-key"), "{error}");
    }

    #[test]
    fn an_unreadable_checkpoint_says_how_to_start_over() {
        let error = format!("{:#}", parse(b"{not json", "in", "s3://b/k").unwrap_err());
        assert!(error.starts_with("s3://b/k is not a checkpoint this aggregator can read; move it away"), "{error}");
    }
}
