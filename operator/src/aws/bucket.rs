//! The S3 bucket: public access blocked, default encryption, ownership tags, optional expiry.
//! CreateBucket carries the tags, so a pipeline's bucket is never untagged and of two pipelines
//! naming one bucket, the one whose CreateBucket made it holds it. Tags change later through S3
//! Control, key by key: S3's PutBucketTagging replaces the whole set, which loses a tag someone
//! adds meanwhile, cannot keep the `aws:` tags of a bucket a CloudFormation stack made, and is
//! refused on a bucket with attribute-based access control on. Deleting empties the bucket first,
//! every version and delete marker; `deletionPolicy: Retain` keeps it with its data.

use aws_sdk_s3::operation::list_object_versions::ListObjectVersionsOutput;
use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, BucketLocationConstraint, CreateBucketConfiguration, Delete, ExpirationStatus, LifecycleExpiration,
    LifecycleRule, LifecycleRuleFilter, ObjectIdentifier, PublicAccessBlockConfiguration, ServerSideEncryption,
    ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration, ServerSideEncryptionRule, Tag,
};
use metrics_pipeline_api::pipeline::AwsResourceRef;

use super::{AwsClients, AwsResource, TagsAs, partition};
use crate::error::{AwsError, AwsErrorKind, AwsResultExt, Error, Holder, error_code};
use crate::managed::{Outcome, Owner, Removal, Standing, tag_pairs};

/// Id of the expiry rule the operator owns in the bucket's lifecycle configuration.
const EXPIRY_RULE: &str = "metrics-pipeline-expiry";

pub fn arn(region: &str, bucket: &str) -> String {
    format!("arn:{}:s3:::{bucket}", partition(region))
}

/// A bucket found under the pipeline's bucket name.
pub enum FoundBucket {
    /// It exists in another account: S3 answers 403 to a bucket we may not see, and to one whose
    /// owner lets us see it, since HeadBucket names this account as the expected owner.
    OtherAccount,
    Tagged(Vec<(String, String)>),
}

async fn observe(clients: &AwsClients, bucket: &str, account_id: &str) -> Result<Option<FoundBucket>, Error> {
    match clients.s3.head_bucket().bucket(bucket).expected_bucket_owner(account_id).send().await {
        Ok(_) => {}
        Err(error) if error.raw_response().is_some_and(|response| response.status().as_u16() == 404) => return Ok(None),
        // The same 403 for a bucket of another account and for one of this account the
        // operator may not read: the account's own list of buckets tells them apart.
        Err(error) if error.raw_response().is_some_and(|response| response.status().as_u16() == 403) => {
            if !in_this_account(clients, bucket).await? {
                return Ok(Some(FoundBucket::OtherAccount));
            }
            let message = format!(
                "S3 bucket {bucket} is in this account, but HeadBucket answers 403: allow the operator s3:ListBucket on {}",
                arn(&clients.region, bucket)
            );
            return Err(AwsError::new(
                format!("looking up S3 bucket {bucket}"),
                AwsErrorKind::AccessDenied,
                Some("AccessDenied".into()),
                message,
            )
            .into());
        }
        Err(error) => return Err(AwsError::from_sdk(format!("looking up S3 bucket {bucket}"), error).into()),
    }
    Ok(Some(FoundBucket::Tagged(read_tags(clients, bucket).await?)))
}

/// Whether this account owns `bucket`, by ListBuckets (which names only the account's own).
async fn in_this_account(clients: &AwsClients, bucket: &str) -> Result<bool, Error> {
    let listed =
        (clients.s3.list_buckets().prefix(bucket).send().await).or_aws(|| format!("listing this account's S3 buckets named {bucket}"))?;
    Ok(listed.buckets().iter().any(|listed| listed.name() == Some(bucket)))
}

async fn read_tags(clients: &AwsClients, bucket: &str) -> Result<Vec<(String, String)>, Error> {
    let tagging = clients.s3.get_bucket_tagging().bucket(bucket).send().await;
    let tags = tagging.absent_on(&["NoSuchTagSet"], || format!("reading tags of S3 bucket {bucket}"))?;
    Ok(tags.map(|output| output.tag_set.into_iter().map(|tag| (tag.key, tag.value)).collect()).unwrap_or_default())
}

/// The pipeline's S3 bucket, in the account whose identity the operator acts as.
pub struct Bucket<'a> {
    pub name: &'a str,
    pub account_id: &'a str,
}

impl Bucket<'_> {
    /// Its name and ARN, which S3 derives from the name alone.
    fn located(&self, clients: &AwsClients) -> AwsResourceRef {
        AwsResourceRef { name: self.name.to_owned(), arn: Some(self.arn(clients)) }
    }

    fn arn(&self, clients: &AwsClients) -> String {
        arn(&clients.region, self.name)
    }

    /// Adds the pipeline's tags, or gives them its values; other tags stay as they are.
    async fn tag(&self, clients: &AwsClients, owner: &Owner) -> Result<(), Error> {
        let tags = owner
            .tags()
            .into_iter()
            .map(|(key, value)| aws_sdk_s3control::types::Tag::builder().key(key).value(value).build().expect("key and value are set"));
        let request = clients.s3control.tag_resource().account_id(self.account_id).resource_arn(self.arn(clients));
        request.set_tags(Some(tags.collect())).send().await.or_aws(|| format!("tagging S3 bucket {}", self.name))?;
        Ok(())
    }

    /// Creates the bucket, and makes sure the one there now is the pipeline's: a bucket of the
    /// same name may have been made meanwhile, by this account or another.
    async fn create_owned(&self, clients: &AwsClients, owner: &Owner, outcome: &mut Outcome) -> Result<(), Error> {
        let bucket = self.name;
        let tags = match create(clients, bucket, owner).await? {
            Created::OtherAccount => return Err(not_owned(bucket, Holder::OtherAccount)),
            Created::ByThisCall => {
                outcome.changed(format!("created S3 bucket {bucket}"));
                let tags = read_tags(clients, bucket).await?;
                // An emulator may drop CreateBucket's tags (AWS sets them in the call): this very
                // call made the bucket, so tagging it now takes nobody's. Not on AWS in us-east-1,
                // whose 200 also answers for a bucket the account had: an untagged one stays foreign.
                let made_here = clients.region != "us-east-1" || clients.endpoint_override;
                if tags.is_empty() && made_here {
                    self.tag(clients, owner).await?;
                    owner.tags()
                } else {
                    tags
                }
            }
            // Read, not assumed ours: another pipeline may have created it first (see `create`).
            Created::AlreadyOurs => read_tags(clients, bucket).await?,
        };
        if let Some(why) = owner.standing(tag_pairs(&tags)).claim(Bucket::KIND, bucket)? {
            self.tag(clients, owner).await?;
            outcome.changed(format!("S3 bucket {bucket}: {why}"));
        }
        Ok(())
    }
}

/// What the spec asks of the bucket beyond being private and encrypted.
pub struct BucketSpec {
    /// Objects expire this many days after they are written; `None`: never.
    pub expire_after_days: Option<i32>,
}

/// What to do about the bucket. Its settings (public access, encryption, expiry) are read and
/// corrected one by one once it is known to be the pipeline's: somebody else's may not be readable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BucketPlan {
    Create,
    Configure,
}

impl AwsResource for Bucket<'_> {
    const KIND: &'static str = "S3 bucket";
    type Desired = BucketSpec;
    type Observed = FoundBucket;
    type Plan = BucketPlan;

    fn name(&self) -> String {
        self.name.to_owned()
    }

    async fn observe(&self, clients: &AwsClients, _tags: TagsAs) -> Result<Option<FoundBucket>, Error> {
        observe(clients, self.name, self.account_id).await
    }

    fn whose(owner: &Owner, observed: &FoundBucket) -> Standing {
        match observed {
            FoundBucket::OtherAccount => Standing::Foreign(Holder::OtherAccount),
            FoundBucket::Tagged(tags) => owner.standing(tag_pairs(tags)),
        }
    }

    async fn claim(&self, clients: &AwsClients, owner: &Owner, observed: &FoundBucket) -> Result<(), Error> {
        match observed {
            FoundBucket::OtherAccount => Err(not_owned(self.name, Holder::OtherAccount)),
            FoundBucket::Tagged(_) => self.tag(clients, owner).await,
        }
    }

    fn tags_of(observed: &FoundBucket) -> Option<Vec<(String, String)>> {
        match observed {
            FoundBucket::OtherAccount => None,
            FoundBucket::Tagged(tags) => Some(tags.clone()),
        }
    }

    async fn untag(&self, clients: &AwsClients, _observed: &FoundBucket, keys: &[String]) -> Result<(), Error> {
        let request = clients.s3control.untag_resource().account_id(self.account_id).resource_arn(self.arn(clients));
        request.set_tag_keys(Some(keys.to_vec())).send().await.or_aws(|| format!("removing tags from S3 bucket {}", self.name))?;
        Ok(())
    }

    fn plan(_desired: &BucketSpec, observed: Option<&FoundBucket>) -> BucketPlan {
        if observed.is_some() { BucketPlan::Configure } else { BucketPlan::Create }
    }

    async fn apply(
        &self,
        clients: &AwsClients,
        owner: &Owner,
        desired: &BucketSpec,
        _observed: Option<FoundBucket>,
        plan: BucketPlan,
        mut outcome: Outcome,
    ) -> Result<(AwsResourceRef, Outcome), Error> {
        let bucket = self.name;
        if plan == BucketPlan::Create {
            self.create_owned(clients, owner, &mut outcome).await?;
        }
        ensure_public_access_blocked(clients, bucket, &mut outcome).await?;
        ensure_encrypted(clients, bucket, &mut outcome).await?;
        ensure_expiry(clients, bucket, desired.expire_after_days, &mut outcome).await?;
        Ok((self.located(clients), outcome))
    }

    async fn drift(&self, clients: &AwsClients, desired: &BucketSpec, observed: &FoundBucket) -> Result<Vec<String>, Error> {
        let bucket = self.name;
        if matches!(observed, FoundBucket::OtherAccount) {
            return Ok(Vec::new());
        }
        let mut drift = Vec::new();
        if !public_access_blocked(clients, bucket).await? {
            drift.push("public access is not blocked in all four ways (the operator blocks it)".to_owned());
        }
        if !encrypted(clients, bucket).await? {
            drift.push("has no default encryption (the operator sets SSE-S3)".to_owned());
        }
        let days = expiry_days(&lifecycle_rules(clients, bucket).await?);
        if days != desired.expire_after_days {
            let said = |days: Option<i32>| days.map_or("never".to_owned(), |days| format!("after {days} days"));
            drift.push(format!(
                "objects expire {}, the spec asks {} (delivery.expireAfterDays)",
                said(days),
                said(desired.expire_after_days)
            ));
        }
        Ok(drift)
    }

    fn reference(&self, clients: &AwsClients, _observed: &FoundBucket) -> AwsResourceRef {
        self.located(clients)
    }

    /// Empties the bucket, then deletes it.
    async fn remove(&self, clients: &AwsClients, _observed: FoundBucket) -> Result<Removal, Error> {
        let bucket = self.name;
        empty(clients, bucket).await?;
        match clients.s3.delete_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(Removal::Gone),
            Err(error) if error_code(&error) == Some("NoSuchBucket") => Ok(Removal::Gone),
            Err(error) if error_code(&error) == Some("BucketNotEmpty") => {
                Err(Error::Deleting(format!("S3 bucket {bucket}, which got new objects while it was emptied")))
            }
            Err(error) => Err(AwsError::from_sdk(format!("deleting S3 bucket {bucket}"), error).into()),
        }
    }
}

fn not_owned(bucket: &str, holder: Holder) -> Error {
    Error::NotOwned { kind: "S3 bucket", name: bucket.to_owned(), holder }
}

/// What CreateBucket answered.
enum Created {
    ByThisCall,
    /// The account had it already: made by an attempt whose answer was lost, or by another
    /// pipeline creating the same name at the same moment. Its tags say whose it is.
    AlreadyOurs,
    OtherAccount,
}

/// Creates the bucket with the pipeline's tags in the one call, so that no bucket of a
/// pipeline is ever untagged.
async fn create(clients: &AwsClients, bucket: &str, owner: &Owner) -> Result<Created, Error> {
    let tags = owner.tags().into_iter().map(|(key, value)| Tag::builder().key(key).value(value).build().expect("key and value are set"));
    let mut configuration = CreateBucketConfiguration::builder().set_tags(Some(tags.collect()));
    if clients.region != "us-east-1" {
        configuration = configuration.location_constraint(BucketLocationConstraint::from(clients.region.as_str()));
    }
    match clients.s3.create_bucket().bucket(bucket).create_bucket_configuration(configuration.build()).send().await {
        // us-east-1 also answers 200 for a bucket the account has: its tags then are what
        // `ensure` finds, those of whichever CreateBucket made it.
        Ok(_) => Ok(Created::ByThisCall),
        Err(error) if error_code(&error) == Some("BucketAlreadyOwnedByYou") => Ok(Created::AlreadyOurs),
        Err(error) if error_code(&error) == Some("BucketAlreadyExists") => Ok(Created::OtherAccount),
        Err(error) => Err(AwsError::from_sdk(format!("creating S3 bucket {bucket}"), error).into()),
    }
}

fn all_public_access_blocked() -> PublicAccessBlockConfiguration {
    PublicAccessBlockConfiguration::builder()
        .block_public_acls(true)
        .ignore_public_acls(true)
        .block_public_policy(true)
        .restrict_public_buckets(true)
        .build()
}

async fn public_access_blocked(clients: &AwsClients, bucket: &str) -> Result<bool, Error> {
    let current = (clients.s3.get_public_access_block().bucket(bucket).send().await)
        .absent_on(&["NoSuchPublicAccessBlockConfiguration"], || format!("reading the public access block of S3 bucket {bucket}"))?
        .and_then(|output| output.public_access_block_configuration);
    Ok(current.as_ref() == Some(&all_public_access_blocked()))
}

async fn ensure_public_access_blocked(clients: &AwsClients, bucket: &str, outcome: &mut Outcome) -> Result<(), Error> {
    if public_access_blocked(clients, bucket).await? {
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

async fn encrypted(clients: &AwsClients, bucket: &str) -> Result<bool, Error> {
    Ok((clients.s3.get_bucket_encryption().bucket(bucket).send().await)
        .absent_on(&["ServerSideEncryptionConfigurationNotFoundError"], || format!("reading the encryption of S3 bucket {bucket}"))?
        .and_then(|output| output.server_side_encryption_configuration)
        .is_some_and(|configuration| configuration.rules().iter().any(|rule| rule.apply_server_side_encryption_by_default().is_some())))
}

async fn ensure_encrypted(clients: &AwsClients, bucket: &str, outcome: &mut Outcome) -> Result<(), Error> {
    if encrypted(clients, bucket).await? {
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

async fn lifecycle_rules(clients: &AwsClients, bucket: &str) -> Result<Vec<LifecycleRule>, Error> {
    Ok((clients.s3.get_bucket_lifecycle_configuration().bucket(bucket).send().await)
        .absent_on(&["NoSuchLifecycleConfiguration"], || format!("reading the lifecycle of S3 bucket {bucket}"))?
        .and_then(|output| output.rules)
        .unwrap_or_default())
}

/// The days after which the operator's own rule expires objects, if it is there.
fn expiry_days(rules: &[LifecycleRule]) -> Option<i32> {
    rules.iter().find(|rule| rule.id() == Some(EXPIRY_RULE)).and_then(|rule| rule.expiration()).and_then(|e| e.days())
}

async fn ensure_expiry(clients: &AwsClients, bucket: &str, expire_after_days: Option<i32>, outcome: &mut Outcome) -> Result<(), Error> {
    let rules = lifecycle_rules(clients, bucket).await?;
    if expiry_days(&rules) == expire_after_days {
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

/// Most keys one DeleteObjects takes.
const DELETE_BATCH: usize = 1000;

/// Deletes every version and delete marker: DeleteBucket refuses a bucket holding either, and a
/// versioned bucket keeps both after its objects are deleted. ListObjectVersions lists every
/// bucket, versioned or not (an object of a bucket never versioned has the version `null`).
///
/// S3 keeps some objects (object lock, a legal hold, a missing permission) and says so per key
/// in DeleteObjects' 200 answer. One pass deletes all it can; when S3 kept anything, the error
/// names the first and the controller tries again later, instead of listing the same keys again
/// at once.
async fn empty(clients: &AwsClients, bucket: &str) -> Result<(), Error> {
    let mut markers = (None, None);
    let mut refused = Vec::new();
    loop {
        let page = (clients.s3.list_object_versions())
            .bucket(bucket)
            .set_key_marker(markers.0)
            .set_version_id_marker(markers.1)
            .send()
            .await
            .or_aws(|| format!("listing the object versions of S3 bucket {bucket} to empty it"))?;
        for batch in versions(&page).chunks(DELETE_BATCH) {
            let delete = Delete::builder().set_objects(Some(batch.to_vec())).quiet(true).build().expect("objects are set");
            let answer = (clients.s3.delete_objects())
                .bucket(bucket)
                .delete(delete)
                .send()
                .await
                .or_aws(|| format!("emptying S3 bucket {bucket}"))?;
            refused.extend(answer.errors.unwrap_or_default());
        }
        if page.is_truncated != Some(true) {
            break;
        }
        markers = (page.next_key_marker, page.next_version_id_marker);
    }
    match refusal(bucket, &refused) {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Every object version and delete marker of one page, by key and version.
fn versions(page: &ListObjectVersionsOutput) -> Vec<ObjectIdentifier> {
    let versions = page.versions().iter().map(|version| (version.key(), version.version_id()));
    let markers = page.delete_markers().iter().map(|marker| (marker.key(), marker.version_id()));
    versions
        .chain(markers)
        .filter_map(|(key, version)| {
            ObjectIdentifier::builder().set_key(key.map(str::to_owned)).set_version_id(version.map(str::to_owned)).build().ok()
        })
        .collect()
}

/// The error for what DeleteObjects kept, naming the first key and what S3 said about it.
fn refusal(bucket: &str, refused: &[aws_sdk_s3::types::Error]) -> Option<Error> {
    let first = refused.first()?;
    let more = match refused.len() - 1 {
        0 => String::new(),
        1 => " and 1 more object version".to_owned(),
        more => format!(" and {more} more object versions"),
    };
    let (code, message) = (first.code().unwrap_or("UnknownError"), first.message().unwrap_or_default());
    let hint = match code {
        "AccessDenied" => " (object lock, a legal hold, or a missing s3:DeleteObjectVersion permission?)",
        _ => "",
    };
    let action = format!("cannot delete s3://{bucket}/{}{more}", first.key().unwrap_or_default());
    Some(AwsError::new(action, AwsErrorKind::of(code, message), Some(code.to_owned()), format!("{message}{hint}")).into())
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::types::{DeleteMarkerEntry, ObjectVersion};

    use super::*;

    #[test]
    fn every_version_and_delete_marker_is_deleted_by_key_and_version() {
        let version = |key: &str, id: &str| ObjectVersion::builder().key(key).version_id(id).build();
        let page = ListObjectVersionsOutput::builder()
            .versions(version("a", "v2"))
            .versions(version("a", "v1"))
            // An object written before versioning, or to a bucket never versioned.
            .versions(version("plain", "null"))
            .delete_markers(DeleteMarkerEntry::builder().key("a").version_id("m1").build())
            .build();
        let deleted: Vec<_> =
            versions(&page).iter().map(|object| (object.key().to_owned(), object.version_id().map(str::to_owned))).collect();
        let expected = [("a", "v2"), ("a", "v1"), ("plain", "null"), ("a", "m1")].map(|(key, id)| (key.to_owned(), Some(id.to_owned())));
        assert_eq!(deleted, expected);
    }

    #[test]
    fn what_s3_keeps_is_named_with_its_code_and_message() {
        let kept = |key: &str, code: &str| {
            aws_sdk_s3::types::Error::builder()
                .key(key)
                .version_id("v1")
                .code(code)
                .message("Access Denied because object protected by object lock.")
                .build()
        };
        assert!(refusal("b", &[]).is_none(), "nothing kept, nothing to say");
        let held = refusal("b", &[kept("held/1", "AccessDenied"), kept("held/2", "AccessDenied")]).unwrap();
        assert_eq!(
            held.to_string(),
            "cannot delete s3://b/held/1 and 1 more object version: AccessDenied: Access Denied because object protected by \
             object lock. (object lock, a legal hold, or a missing s3:DeleteObjectVersion permission?)"
        );
        assert_eq!(held.aws_kind(), Some(AwsErrorKind::AccessDenied));
        let outage = refusal("b", &[kept("k", "InternalError")]).unwrap();
        assert!(!outage.is_terminal(), "a per-key outage is retried like any: {outage}");
    }
}
