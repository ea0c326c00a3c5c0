//! The checkpoint: where each shard was read to plus the open-window state, as one JSON object
//! in the pipeline's bucket, overwritten after each flush (an S3 PUT replaces atomically).
//!
//! It is also the lease that makes one copy the writer. Each write is conditional on the ETag
//! of this copy's last write (If-Match), so a copy that another has taken the checkpoint from
//! cannot overwrite it: it learns so on its next write and stops. A copy starts writing only once
//! the checkpoint is free: none yet, released by a clean stop, its own (the same pod restarted),
//! or not written by its holder for the lease's duration (a copy on a lost node).

use std::time::Duration;

use aws_sdk_s3::error::DisplayErrorContext;
use metrics_pipeline_model::event::EventTime;
use serde::{Deserialize, Serialize};

use crate::engine::window::EngineSnapshot;
use crate::kinesis::sink::OutputRecord;
use crate::kinesis::source::StreamPosition;
use crate::s3::bucket::{Bucket, Condition, StorageError};
use crate::s3::parquet_files::FilesState;

pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    pub version: u32,
    /// The input stream the positions belong to.
    pub stream: String,
    /// Which stream of that name: one deleted and created again is another stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_identity: Option<StreamIdentity>,
    pub written_at: EventTime,
    /// The copy that may write it; `None` once released by a clean stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    pub position: StreamPosition,
    pub engine: EngineSnapshot,
    /// The direct Parquet sink's rows and roll, when it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesState>,
    /// Fired aggregates committed here before they are sent to the output stream; the next start
    /// sends them again, byte for byte, before it reads anything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unpublished: Vec<OutputRecord>,
}

/// A Kinesis stream as DescribeStreamSummary names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamIdentity {
    pub arn: String,
    pub created: EventTime,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// Who holds it: the pod's name.
    pub holder: String,
    /// How long the holder may go without writing before another copy may take over.
    pub duration_ms: u64,
}

impl Lease {
    /// Whether `holder` may take the checkpoint under this lease, given how long the stored
    /// checkpoint has stayed unchanged as `holder` saw it.
    pub fn lets(&self, holder: &str, unchanged_for: Duration) -> bool {
        self.holder == holder || unchanged_for >= Duration::from_millis(self.duration_ms)
    }
}

/// A stored checkpoint this aggregator must not resume from; each says how to start over.
#[derive(Debug, thiserror::Error)]
pub enum UnusableCheckpoint {
    #[error("{location} is not a checkpoint this aggregator can read; move it away to start over")]
    Unreadable {
        location: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{location} has format version {version}, this aggregator reads {FORMAT_VERSION}; move it away to start over")]
    OtherVersion { location: String, version: u32 },
    #[error("{location} belongs to input stream `{stored}`, not `{stream}`; use another --checkpoint-key or move it away")]
    OtherStream { location: String, stored: String, stream: String },
}

/// A stored checkpoint, if this aggregator may resume from it.
fn parse(bytes: &[u8], stream: &str, location: &str) -> Result<Checkpoint, UnusableCheckpoint> {
    let checkpoint: Checkpoint =
        serde_json::from_slice(bytes).map_err(|source| UnusableCheckpoint::Unreadable { location: location.to_owned(), source })?;
    if checkpoint.version != FORMAT_VERSION {
        return Err(UnusableCheckpoint::OtherVersion { location: location.to_owned(), version: checkpoint.version });
    }
    if checkpoint.stream != stream {
        return Err(UnusableCheckpoint::OtherStream {
            location: location.to_owned(),
            stored: checkpoint.stream,
            stream: stream.to_owned(),
        });
    }
    Ok(checkpoint)
}

/// Another copy wrote the checkpoint since this one last did: it holds it now.
#[derive(Debug)]
pub struct Fenced {
    location: String,
    holder: Option<String>,
}

impl std::fmt::Display for Fenced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let holder = self.holder.as_deref().map_or_else(|| "it was removed".to_owned(), |holder| format!("`{holder}` holds it now"));
        write!(f, "another copy wrote {} since this one last did ({holder}): stopping without writing more", self.location)
    }
}

impl std::error::Error for Fenced {}

pub struct CheckpointStore {
    bucket: Bucket,
    key: String,
    /// ETag of the stored checkpoint as this copy last wrote or took it; `None`: there is none.
    etag: Option<String>,
}

impl CheckpointStore {
    pub fn new(bucket: Bucket, key: String) -> Self {
        Self { bucket, key, etag: None }
    }

    pub fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket.name(), self.key)
    }

    /// The stored checkpoint for `stream` and its ETag, `None` on a first start. `Err` is worth
    /// retrying; a checkpoint that cannot be understood, or belongs to another stream, stops the
    /// start (`Ok(Some((Err(..), _)))`): resuming from it would be wrong.
    pub async fn read(&self, stream: &str) -> Result<Option<(Result<Checkpoint, UnusableCheckpoint>, String)>, StorageError> {
        let stored = self.bucket.get(&self.key).await?;
        Ok(stored.map(|(bytes, etag)| (parse(&bytes, stream, &self.location()), etag)))
    }

    /// From now on this copy writes over the checkpoint with `etag` (`None`: over none).
    pub fn take(&mut self, etag: Option<String>) {
        self.etag = etag;
    }

    /// Writes the checkpoint over the one this copy last wrote or took, and only over it; the
    /// bytes it took.
    pub async fn save(&mut self, checkpoint: &Checkpoint) -> Result<usize, Fenced> {
        let body = serde_json::to_vec(checkpoint).expect("a checkpoint always serializes");
        let bytes = body.len();
        let condition = self.etag.as_deref().map_or(Condition::Absent, Condition::Matches);
        if let Some(etag) = self.bucket.put(&self.key, body.clone(), "application/json", condition).await {
            self.etag = Some(etag);
            return Ok(bytes);
        }
        // The condition failed. When a write went through but its answer was lost, the SDK's
        // retry finds this very checkpoint stored: that is no other copy.
        let stored = loop {
            match self.bucket.get(&self.key).await {
                Ok(stored) => break stored,
                Err(error) => tracing::warn!(error = %DisplayErrorContext(&error), "cannot read the checkpoint back yet; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        match stored {
            Some((stored, etag)) if stored == body => {
                self.etag = Some(etag);
                Ok(bytes)
            }
            Some((stored, _)) => {
                let holder = serde_json::from_slice::<Checkpoint>(&stored).ok().and_then(|c| c.lease).map(|lease| lease.holder);
                Err(Fenced { location: self.location(), holder })
            }
            None => Err(Fenced { location: self.location(), holder: None }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn stored(stream: &str) -> Vec<u8> {
        let engine =
            EngineSnapshot { window_ms: 60_000, watermarks: BTreeMap::new(), watermark: None, open: Vec::new(), fired: Vec::new() };
        let checkpoint = Checkpoint {
            version: FORMAT_VERSION,
            stream: stream.into(),
            stream_identity: None,
            written_at: EventTime(0),
            lease: None,
            position: StreamPosition::default(),
            engine,
            files: None,
            unpublished: Vec::new(),
        };
        serde_json::to_vec(&checkpoint).unwrap()
    }

    #[test]
    fn a_checkpoint_resumes_only_the_stream_it_was_written_for() {
        assert_eq!(parse(&stored("in"), "in", "s3://b/k").unwrap().stream, "in");
        let error = parse(&stored("other"), "in", "s3://b/k").unwrap_err().to_string();
        assert!(error.contains("belongs to input stream `other`, not `in`; use another --checkpoint-key"), "{error}");
    }

    #[test]
    fn an_unreadable_checkpoint_says_how_to_start_over() {
        let error = parse(b"{not json", "in", "s3://b/k").unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("s3://b/k is not a checkpoint this aggregator can read; move it away"), "{message}");
        assert!(std::error::Error::source(&error).is_some_and(|source| source.is::<serde_json::Error>()), "what JSON said is kept");
    }

    #[test]
    fn a_lease_lets_its_holder_at_once_and_another_copy_only_once_it_lapsed() {
        let lease = Lease { holder: "pod-a".into(), duration_ms: 60_000 };
        assert!(lease.lets("pod-a", Duration::ZERO), "the same pod, restarted");
        assert!(!lease.lets("pod-b", Duration::from_secs(59)));
        assert!(lease.lets("pod-b", Duration::from_secs(60)), "the holder stopped writing");
    }
}
