//! The checkpoint: where each shard was read to plus the open-window state, as one JSON object
//! in the pipeline's bucket, overwritten after each flush (an S3 PUT replaces atomically).

use anyhow::Context;
use metrics_pipeline_crds::event::EventTime;
use serde::{Deserialize, Serialize};

use crate::bucket::Bucket;
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
}

impl Checkpoint {
    pub fn new(stream: &str, written_at: EventTime, position: StreamPosition, engine: EngineSnapshot) -> Self {
        Self { version: FORMAT_VERSION, stream: stream.to_owned(), written_at, position, engine }
    }
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

    /// The stored checkpoint for `stream`, `None` on a first start. A checkpoint that cannot be
    /// read, or that belongs to another stream, stops the start: resuming from it would be wrong.
    pub async fn load(&self, stream: &str) -> anyhow::Result<Option<Checkpoint>> {
        let Some(bytes) = self.bucket.get(&self.key).await? else { return Ok(None) };
        let checkpoint: Checkpoint = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a checkpoint this aggregator can read; move it away to start over", self.location()))?;
        anyhow::ensure!(
            checkpoint.version == FORMAT_VERSION,
            "{} has format version {}, this aggregator reads {FORMAT_VERSION}; move it away to start over",
            self.location(),
            checkpoint.version
        );
        anyhow::ensure!(
            checkpoint.stream == stream,
            "{} belongs to input stream `{}`, not `{stream}`; use another --checkpoint-key or move it away",
            self.location(),
            checkpoint.stream
        );
        Ok(Some(checkpoint))
    }

    pub async fn save(&self, checkpoint: &Checkpoint) {
        let body = serde_json::to_vec(checkpoint).expect("a checkpoint always serializes");
        self.bucket.put(&self.key, body, "application/json").await;
    }
}
