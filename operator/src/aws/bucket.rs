//! The S3 bucket: public access blocked, default encryption, ownership tags, optional expiry.
//! Deleting empties it first; `deletionPolicy: Retain` keeps it with its data.

use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, BucketLocationConstraint, CreateBucketConfiguration, Delete, ExpirationStatus, LifecycleExpiration,
    LifecycleRule, LifecycleRuleFilter, ObjectIdentifier, PublicAccessBlockConfiguration, ServerSideEncryption,
    ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration, ServerSideEncryptionRule, Tag, Tagging,
};
use metrics_pipeline_crds::pipeline::AwsResourceRef;

use super::{AwsClients, Outcome, aws_error, check_owner, error_code, partition, pipeline_tags};
use crate::error::Error;

/// Id of the expiry rule the operator owns in the bucket's lifecycle configuration.
const EXPIRY_RULE: &str = "metrics-pipeline-expiry";

pub fn arn(region: &str, bucket: &str) -> String {
    format!("arn:{}:s3:::{bucket}", partition(region))
}

/// The bucket's tags, or `None` when there is no such bucket (in any account we can see).
async fn observe_tags(clients: &AwsClients, bucket: &str) -> Result<Option<Vec<(String, String)>>, Error> {
    match clients.s3.head_bucket().bucket(bucket).send().await {
        Ok(_) => {}
        Err(error) if error.raw_response().is_some_and(|response| response.status().as_u16() == 404) => return Ok(None),
        Err(error) if error.raw_response().is_some_and(|response| response.status().as_u16() == 403) => {
            return Err(Error::NotOwned {
                kind: "S3 bucket",
                name: bucket.to_owned(),
                owner: String::new(),
                found: Some("another account".into()),
            });
        }
        Err(error) => return Err(aws_error(format!("looking up S3 bucket {bucket}"), error)),
    }
    match clients.s3.get_bucket_tagging().bucket(bucket).send().await {
        Ok(output) => Ok(Some(output.tag_set.into_iter().map(|tag| (tag.key, tag.value)).collect())),
        Err(error) if error_code(&error) == Some("NoSuchTagSet") => Ok(Some(Vec::new())),
        Err(error) => Err(aws_error(format!("reading tags of S3 bucket {bucket}"), error)),
    }
}

pub async fn ensure(
    clients: &AwsClients,
    bucket: &str,
    owner: &str,
    expire_after_days: Option<i32>,
) -> Result<(AwsResourceRef, Outcome), Error> {
    let mut outcome = Outcome::default();
    match observe_tags(clients, bucket).await? {
        None => {
            let mut request = clients.s3.create_bucket().bucket(bucket);
            if clients.region != "us-east-1" {
                let location = CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(clients.region.as_str()))
                    .build();
                request = request.create_bucket_configuration(location);
            }
            request.send().await.map_err(|error| aws_error(format!("creating S3 bucket {bucket}"), error))?;
            let tags = pipeline_tags(owner)
                .into_iter()
                .map(|(key, value)| Tag::builder().key(key).value(value).build().expect("key and value are set"));
            let tagging = Tagging::builder().set_tag_set(Some(tags.collect())).build().expect("tags are set");
            clients
                .s3
                .put_bucket_tagging()
                .bucket(bucket)
                .tagging(tagging)
                .send()
                .await
                .map_err(|error| aws_error(format!("tagging S3 bucket {bucket}"), error))?;
            outcome.changed(format!("created S3 bucket {bucket}"));
        }
        Some(tags) => check_owner("S3 bucket", bucket, owner, tags.iter().map(|(k, v)| (k.as_str(), v.as_str())))?,
    }
    ensure_public_access_blocked(clients, bucket, &mut outcome).await?;
    ensure_encrypted(clients, bucket, &mut outcome).await?;
    ensure_expiry(clients, bucket, expire_after_days, &mut outcome).await?;
    Ok((AwsResourceRef { name: bucket.to_owned(), arn: Some(arn(&clients.region, bucket)) }, outcome))
}

fn all_public_access_blocked() -> PublicAccessBlockConfiguration {
    PublicAccessBlockConfiguration::builder()
        .block_public_acls(true)
        .ignore_public_acls(true)
        .block_public_policy(true)
        .restrict_public_buckets(true)
        .build()
}

async fn ensure_public_access_blocked(clients: &AwsClients, bucket: &str, outcome: &mut Outcome) -> Result<(), Error> {
    let current = match clients.s3.get_public_access_block().bucket(bucket).send().await {
        Ok(output) => output.public_access_block_configuration,
        Err(error) if error_code(&error) == Some("NoSuchPublicAccessBlockConfiguration") => None,
        Err(error) => return Err(aws_error(format!("reading the public access block of S3 bucket {bucket}"), error)),
    };
    if current.as_ref() == Some(&all_public_access_blocked()) {
        return Ok(());
    }
    (clients.s3.put_public_access_block())
        .bucket(bucket)
        .public_access_block_configuration(all_public_access_blocked())
        .send()
        .await
        .map_err(|error| aws_error(format!("blocking public access to S3 bucket {bucket}"), error))?;
    outcome.changed(format!("blocked all public access to S3 bucket {bucket}"));
    Ok(())
}

async fn ensure_encrypted(clients: &AwsClients, bucket: &str, outcome: &mut Outcome) -> Result<(), Error> {
    let encrypted = match clients.s3.get_bucket_encryption().bucket(bucket).send().await {
        Ok(output) => output
            .server_side_encryption_configuration
            .is_some_and(|configuration| configuration.rules().iter().any(|rule| rule.apply_server_side_encryption_by_default().is_some())),
        Err(error) if error_code(&error) == Some("ServerSideEncryptionConfigurationNotFoundError") => false,
        Err(error) => return Err(aws_error(format!("reading the encryption of S3 bucket {bucket}"), error)),
    };
    if encrypted {
        return Ok(());
    }
    let default = ServerSideEncryptionByDefault::builder().sse_algorithm(ServerSideEncryption::Aes256).build().expect("algorithm is set");
    let rule = ServerSideEncryptionRule::builder().apply_server_side_encryption_by_default(default).build();
    let configuration = ServerSideEncryptionConfiguration::builder().rules(rule).build().expect("rules are set");
    (clients.s3.put_bucket_encryption())
        .bucket(bucket)
        .server_side_encryption_configuration(configuration)
        .send()
        .await
        .map_err(|error| aws_error(format!("enabling default encryption of S3 bucket {bucket}"), error))?;
    outcome.changed(format!("enabled default encryption (SSE-S3) of S3 bucket {bucket}"));
    Ok(())
}

/// The expiry rule as the spec wants it, or `None` for no expiry.
pub fn desired_expiry(expire_after_days: Option<i32>) -> Option<LifecycleRule> {
    let days = expire_after_days?;
    Some(
        LifecycleRule::builder()
            .id(EXPIRY_RULE)
            .status(ExpirationStatus::Enabled)
            .filter(LifecycleRuleFilter::builder().prefix("").build())
            .expiration(LifecycleExpiration::builder().days(days).build())
            .build()
            .expect("status is set"),
    )
}

async fn ensure_expiry(clients: &AwsClients, bucket: &str, expire_after_days: Option<i32>, outcome: &mut Outcome) -> Result<(), Error> {
    let rules = match clients.s3.get_bucket_lifecycle_configuration().bucket(bucket).send().await {
        Ok(output) => output.rules.unwrap_or_default(),
        Err(error) if error_code(&error) == Some("NoSuchLifecycleConfiguration") => Vec::new(),
        Err(error) => return Err(aws_error(format!("reading the lifecycle of S3 bucket {bucket}"), error)),
    };
    let current_days = rules.iter().find(|rule| rule.id() == Some(EXPIRY_RULE)).and_then(|rule| rule.expiration()).and_then(|e| e.days());
    if current_days == expire_after_days {
        return Ok(());
    }
    // Rules someone else added stay; only the operator's own rule changes.
    let mut kept: Vec<LifecycleRule> = rules.into_iter().filter(|rule| rule.id() != Some(EXPIRY_RULE)).collect();
    kept.extend(desired_expiry(expire_after_days));
    let action = format!("setting the expiry of S3 bucket {bucket}");
    if kept.is_empty() {
        clients.s3.delete_bucket_lifecycle().bucket(bucket).send().await.map_err(|error| aws_error(action, error))?;
    } else {
        let configuration = BucketLifecycleConfiguration::builder().set_rules(Some(kept)).build().expect("rules are set");
        (clients.s3.put_bucket_lifecycle_configuration())
            .bucket(bucket)
            .lifecycle_configuration(configuration)
            .send()
            .await
            .map_err(|error| aws_error(action, error))?;
    }
    outcome.changed(match expire_after_days {
        Some(days) => format!("objects in S3 bucket {bucket} expire after {days} days"),
        None => format!("removed the expiry of S3 bucket {bucket}"),
    });
    Ok(())
}

/// Empties and deletes the bucket if it is this pipeline's; `true` once it is gone.
pub async fn delete(clients: &AwsClients, bucket: &str, owner: &str) -> Result<bool, Error> {
    let tags = match observe_tags(clients, bucket).await {
        Ok(Some(tags)) => tags,
        Ok(None) => return Ok(true),
        Err(Error::NotOwned { .. }) => return Ok(true),
        Err(error) => return Err(error),
    };
    if check_owner("S3 bucket", bucket, owner, tags.iter().map(|(k, v)| (k.as_str(), v.as_str()))).is_err() {
        tracing::info!(bucket, "not this pipeline's bucket; leaving it");
        return Ok(true);
    }
    loop {
        let listed = (clients.s3.list_objects_v2())
            .bucket(bucket)
            .send()
            .await
            .map_err(|error| aws_error(format!("listing S3 bucket {bucket} to empty it"), error))?;
        let objects: Vec<ObjectIdentifier> = listed
            .contents()
            .iter()
            .filter_map(|object| object.key())
            .map(|key| ObjectIdentifier::builder().key(key).build().expect("key is set"))
            .collect();
        if objects.is_empty() {
            break;
        }
        let batch = Delete::builder().set_objects(Some(objects)).quiet(true).build().expect("objects are set");
        (clients.s3.delete_objects())
            .bucket(bucket)
            .delete(batch)
            .send()
            .await
            .map_err(|error| aws_error(format!("emptying S3 bucket {bucket}"), error))?;
    }
    match clients.s3.delete_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(true),
        Err(error) if error_code(&error) == Some("NoSuchBucket") => Ok(true),
        Err(error) => Err(aws_error(format!("deleting S3 bucket {bucket}"), error)),
    }
}
