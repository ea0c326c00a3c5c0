//! The pipeline's bucket as the aggregator uses it: small objects under `_aggregator/`, written
//! with retries, because a checkpoint or dead letter that is not stored must hold the stream.

use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;

use crate::sink::Backoff;

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

    /// Stores the object, retrying with backoff until S3 has it.
    pub async fn put(&self, key: &str, body: Vec<u8>, content_type: &str) {
        let mut backoff = Backoff::default();
        loop {
            let request = self.client.put_object().bucket(&self.name).key(key).content_type(content_type);
            match request.body(ByteStream::from(body.clone())).send().await {
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(error = %DisplayErrorContext(&error), bucket = %self.name, key, "PutObject failed; retrying");
                }
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// The object's bytes, or `None` when there is no such object.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let failed = |reason: String| StorageError(format!("cannot read s3://{}/{key}: {reason}", self.name));
        match self.client.get_object().bucket(&self.name).key(key).send().await {
            Ok(output) => Ok(Some(output.body.collect().await.map_err(|error| failed(error.to_string()))?.to_vec())),
            Err(error) => match error.as_service_error() {
                Some(service) if service.is_no_such_key() => Ok(None),
                Some(service) => {
                    Err(failed(format!("{} {}", service.meta().code().unwrap_or("error"), service.meta().message().unwrap_or_default())))
                }
                None => Err(failed(DisplayErrorContext(&error).to_string())),
            },
        }
    }
}

/// S3 refused or could not be reached; worth retrying (the bucket may still be being created).
#[derive(Debug)]
pub struct StorageError(String);

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
