//! The S3 bucket: public access blocked, default encryption, ownership tags, optional expiry.
//! Deleting empties it first; `deletionPolicy: Retain` keeps it with its data.

use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, BucketLocationConstraint, CreateBucketConfiguration, Delete, ExpirationStatus, LifecycleExpiration,
    LifecycleRule, LifecycleRuleFilter, ObjectIdentifier, PublicAccessBlockConfiguration, ServerSideEncryption,
    ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration, ServerSideEncryptionRule, Tag, Tagging,
};
use metrics_pipeline_api::pipeline::AwsResourceRef;

use super::{AwsClients, partition};
use crate::error::{AwsError, AwsResultExt, Error, Holder};
use crate::managed::{Outcome, check_owner, holder, pipeline_tags};

/// Id of the expiry rule the operator owns in the bucket's lifecycle configuration.
const EXPIRY_RULE: &str = "metrics-pipeline-expiry";

pub fn arn(region: &str, bucket: &str) -> String {
    format!("arn:{}:s3:::{bucket}", partition(region))
}

/// A bucket name as S3 answers for it.
enum Observed {
    Missing,
    /// It exists in another account: S3 answers 403 to a bucket we may not see.
    Foreign,
    Tagged(Vec<(String, String)>),
}

async fn observe(clients: &AwsClients, bucket: &str) -> Result<Observed, Error> {
    match clients.s3.head_bucket().bucket(bucket).send().await {
        Ok(_) => {}
        Err(error) if error.raw_response().is_some_and(|response| response.status().as_u16() == 404) => return Ok(Observed::Missing),
        Err(error) if error.raw_response().is_some_and(|response| response.status().as_u16() == 403) => return Ok(Observed::Foreign),
        Err(error) => return Err(AwsError::from_sdk(format!("looking up S3 bucket {bucket}"), error).into()),
    }
    let tagging = clients.s3.get_bucket_tagging().bucket(bucket).send().await;
    let tags = tagging.absent_on(&["NoSuchTagSet"], || format!("reading tags of S3 bucket {bucket}"))?;
    Ok(Observed::Tagged(tags.map(|output| output.tag_set.into_iter().map(|tag| (tag.key, tag.value)).collect()).unwrap_or_default()))
}

pub async fn ensure(
    clients: &AwsClients,
    bucket: &str,
    owner: &str,
    expire_after_days: Option<i32>,
) -> Result<(AwsResourceRef, Outcome), Error> {
    let mut outcome = Outcome::default();
    match observe(clients, bucket).await? {
        Observed::Missing => {
            let mut request = clients.s3.create_bucket().bucket(bucket);
            if clients.region != "us-east-1" {
                let location = CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(clients.region.as_str()))
                    .build();
                request = request.create_bucket_configuration(location);
            }
            request.send().await.or_aws(|| format!("creating S3 bucket {bucket}"))?;
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
                .or_aws(|| format!("tagging S3 bucket {bucket}"))?;
            outcome.changed(format!("created S3 bucket {bucket}"));
        }
        Observed::Foreign => return Err(Error::NotOwned { kind: "S3 bucket", name: bucket.to_owned(), holder: Holder::OtherAccount }),
        Observed::Tagged(tags) => check_owner("S3 bucket", bucket, owner, tags.iter().map(|(k, v)| (k.as_str(), v.as_str())))?,
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
    let current = (clients.s3.get_public_access_block().bucket(bucket).send().await)
        .absent_on(&["NoSuchPublicAccessBlockConfiguration"], || format!("reading the public access block of S3 bucket {bucket}"))?
        .and_then(|output| output.public_access_block_configuration);
    if current.as_ref() == Some(&all_public_access_blocked()) {
        return Ok(());
    }
    (clients.s3.put_public_access_block())
        .bucket(bucket)
        .public_access_block_configuration(all_public_access_blocked())
        .send()
        .await
        .or_aws(|| format!("blocking public access to S3 bucket {bucket}"))?;
    outcome.changed(format!("blocked all public access to S3 bucket {bucket}"));
    Ok(())
}

async fn ensure_encrypted(clients: &AwsClients, bucket: &str, outcome: &mut Outcome) -> Result<(), Error> {
    let encrypted = (clients.s3.get_bucket_encryption().bucket(bucket).send().await)
        .absent_on(&["ServerSideEncryptionConfigurationNotFoundError"], || format!("reading the encryption of S3 bucket {bucket}"))?
        .and_then(|output| output.server_side_encryption_configuration)
        .is_some_and(|configuration| configuration.rules().iter().any(|rule| rule.apply_server_side_encryption_by_default().is_some()));
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
        .or_aws(|| format!("enabling default encryption of S3 bucket {bucket}"))?;
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
    let rules = (clients.s3.get_bucket_lifecycle_configuration().bucket(bucket).send().await)
        .absent_on(&["NoSuchLifecycleConfiguration"], || format!("reading the lifecycle of S3 bucket {bucket}"))?
        .and_then(|output| output.rules)
        .unwrap_or_default();
    let current_days = rules.iter().find(|rule| rule.id() == Some(EXPIRY_RULE)).and_then(|rule| rule.expiration()).and_then(|e| e.days());
    if current_days == expire_after_days {
        return Ok(());
    }
    // Rules someone else added stay; only the operator's own rule changes.
    let mut kept: Vec<LifecycleRule> = rules.into_iter().filter(|rule| rule.id() != Some(EXPIRY_RULE)).collect();
    kept.extend(desired_expiry(expire_after_days));
    let action = format!("setting the expiry of S3 bucket {bucket}");
    if kept.is_empty() {
        clients.s3.delete_bucket_lifecycle().bucket(bucket).send().await.or_aws(|| action)?;
    } else {
        let configuration = BucketLifecycleConfiguration::builder().set_rules(Some(kept)).build().expect("rules are set");
        (clients.s3.put_bucket_lifecycle_configuration())
            .bucket(bucket)
            .lifecycle_configuration(configuration)
            .send()
            .await
            .or_aws(|| action)?;
    }
    outcome.changed(match expire_after_days {
        Some(days) => format!("objects in S3 bucket {bucket} expire after {days} days"),
        None => format!("removed the expiry of S3 bucket {bucket}"),
    });
    Ok(())
}

/// Empties and deletes the bucket if it is this pipeline's; `true` once it is gone.
pub async fn delete(clients: &AwsClients, bucket: &str, owner: &str) -> Result<bool, Error> {
    let tags = match observe(clients, bucket).await? {
        Observed::Missing => return Ok(true),
        Observed::Foreign => {
            tracing::info!(bucket, holder = %Holder::OtherAccount, "not this pipeline's bucket; leaving it");
            return Ok(true);
        }
        Observed::Tagged(tags) => tags,
    };
    if let Some(holder) = holder(owner, tags.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
        tracing::info!(bucket, %holder, "not this pipeline's bucket; leaving it");
        return Ok(true);
    }
    loop {
        let listed =
            (clients.s3.list_objects_v2()).bucket(bucket).send().await.or_aws(|| format!("listing S3 bucket {bucket} to empty it"))?;
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
        (clients.s3.delete_objects()).bucket(bucket).delete(batch).send().await.or_aws(|| format!("emptying S3 bucket {bucket}"))?;
    }
    clients.s3.delete_bucket().bucket(bucket).send().await.absent_on(&["NoSuchBucket"], || format!("deleting S3 bucket {bucket}"))?;
    Ok(true)
}
