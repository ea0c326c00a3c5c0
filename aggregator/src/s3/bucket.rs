//! The pipeline's bucket as the aggregator uses it: small objects under `_aggregator/`, written
//! with retries, because a checkpoint or dead letter that is not stored must hold the stream; and
//! S3's conditional writes (If-None-Match, If-Match) so that nothing is overwritten by mistake.

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{BoxError, DisplayErrorContext};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::primitives::ByteStream;

use crate::backoff::Backoff;

#[derive(Clone)]
pub struct Bucket {
    client: Client,
    name: String,
}

impl Bucket {
    pub fn new(client: Client, name: String) -> Self {
        Self { client, name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stores the object if `condition` holds, retrying anything else with backoff until S3 has
    /// it: `Some(etag)` once written, `None` when the condition does not hold.
    pub async fn put(&self, key: &str, body: Vec<u8>, content_type: &str, condition: Condition<'_>) -> Option<String> {
        let mut backoff = Backoff::default();
        loop {
            let request = self.client.put_object().bucket(&self.name).key(key).content_type(content_type);
            let request = match condition {
                Condition::None => request,
                Condition::Absent => request.if_none_match("*"),
                Condition::Matches(etag) => request.if_match(etag),
            };
            match request.body(ByteStream::from(body.clone())).send().await {
                Ok(output) => return Some(output.e_tag.unwrap_or_default()),
                // 412: the condition does not hold; 404: an If-Match object is gone.
                Err(error) if matches!(error.raw_response().map(|r| r.status().as_u16()), Some(412 | 404)) => return None,
                // 409 (ConditionalRequestConflict, a concurrent write to the key) is retried too.
                Err(error) => {
                    tracing::warn!(error = %DisplayErrorContext(&error), bucket = %self.name, key, "PutObject failed; retrying");
                }
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// The object's bytes and ETag, or `None` when there is no such object.
    pub async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, String)>, StorageError> {
        match self.client.get_object().bucket(&self.name).key(key).send().await {
            Ok(output) => {
                let etag = output.e_tag.unwrap_or_default();
                Ok(Some((output.body.collect().await.map_err(|error| self.failed("read", key, error))?.to_vec(), etag)))
            }
            Err(error) if error.as_service_error().is_some_and(GetObjectError::is_no_such_key) => Ok(None),
            Err(error) => Err(self.failed("read", key, error)),
        }
    }

    /// The keys under `prefix`.
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut pages = self.client.list_objects_v2().bucket(&self.name).prefix(prefix).into_paginator().send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|error| self.failed("list", prefix, error))?;
            keys.extend(page.contents.unwrap_or_default().into_iter().filter_map(|object| object.key));
        }
        Ok(keys)
    }

    /// Deletes the object; one already gone is no error (S3 answers 204 either way).
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.client.delete_object().bucket(&self.name).key(key).send().await {
            Ok(_) => Ok(()),
            Err(error) => Err(self.failed("delete", key, error)),
        }
    }

    fn failed(&self, action: &'static str, key: &str, source: impl Into<BoxError>) -> StorageError {
        StorageError { action, bucket: self.name.clone(), key: key.to_owned(), source: source.into() }
    }
}

/// When a PUT may replace what is stored under its key.
#[derive(Clone, Copy, Debug)]
pub enum Condition<'a> {
    /// Always.
    None,
    /// Only when nothing is (If-None-Match: *).
    Absent,
    /// Only when the stored object has this ETag (If-Match).
    Matches(&'a str),
}

/// S3 refused or could not be reached; worth retrying (the bucket may still be being created).
/// The SDK's error is the source: log it with `DisplayErrorContext` to see what S3 said.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} s3://{bucket}/{key}")]
pub struct StorageError {
    /// `read`, `list` or `delete`.
    action: &'static str,
    bucket: String,
    /// The object's key, or the prefix listed.
    key: String,
    #[source]
    source: BoxError,
}
