//! The IAM role Firehose assumes: trusted only by firehose.amazonaws.com for this account, with
//! one inline policy scoped to this pipeline's output stream, bucket and Glue table.

use aws_sdk_iam::types::{Role, Tag};
use metrics_pipeline_api::naming::PipelineNames;
use metrics_pipeline_api::pipeline::AwsResourceRef;
use serde_json::{Value, json};

use super::{AwsClients, AwsResource, TagsAs, partition};
use crate::error::{AwsResultExt, Error};
use crate::managed::{Outcome, Owner, Removal, Standing};

/// IAM's answer for a role or policy that does not exist.
const NO_SUCH_ENTITY: &str = "NoSuchEntity";

/// What the policy is scoped to.
pub struct PolicyScope<'a> {
    pub account_id: &'a str,
    pub region: &'a str,
    pub output_stream_arn: &'a str,
    pub bucket_arn: &'a str,
    pub glue_database: &'a str,
    pub glue_table: &'a str,
}

pub fn arn(region: &str, account_id: &str, role: &str) -> String {
    format!("arn:{}:iam::{account_id}:role/{role}", partition(region))
}

/// Firehose, and only for deliveries in this account (the confused-deputy guard AWS documents).
pub fn trust_policy(account_id: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Service": "firehose.amazonaws.com"},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:ExternalId": account_id}}
        }]
    })
}

/// Read the output stream, write the bucket, read the table's schema (for Parquet conversion).
pub fn delivery_policy(scope: &PolicyScope<'_>) -> Value {
    let glue = |resource: &str| format!("arn:{}:glue:{}:{}:{resource}", partition(scope.region), scope.region, scope.account_id);
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadOutputStream",
                "Effect": "Allow",
                "Action": ["kinesis:DescribeStream", "kinesis:DescribeStreamSummary", "kinesis:GetShardIterator", "kinesis:GetRecords", "kinesis:ListShards"],
                "Resource": [scope.output_stream_arn]
            },
            {
                "Sid": "WriteBucket",
                "Effect": "Allow",
                "Action": ["s3:AbortMultipartUpload", "s3:GetBucketLocation", "s3:GetObject", "s3:ListBucket", "s3:ListBucketMultipartUploads", "s3:PutObject"],
                "Resource": [scope.bucket_arn, format!("{}/*", scope.bucket_arn)]
            },
            {
                "Sid": "ReadTableSchema",
                "Effect": "Allow",
                "Action": ["glue:GetTable", "glue:GetTableVersion", "glue:GetTableVersions"],
                "Resource": [glue("catalog"), glue(&format!("database/{}", scope.glue_database)), glue(&format!("table/{}/{}", scope.glue_database, scope.glue_table))]
            }
        ]
    })
}

/// IAM returns policy documents URL-encoded; some emulators return them as JSON.
fn parse_policy(document: &str) -> Option<Value> {
    serde_json::from_str(document).ok().or_else(|| serde_json::from_str(&percent_decode(document)?).ok())
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(index + 1..index + 3)?).ok()?;
                decoded.push(u8::from_str_radix(hex, 16).ok()?);
                index += 3;
            }
            b'+' => {
                decoded.push(b' ');
                index += 1;
            }
            byte => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8(decoded).ok()
}

/// The IAM role a pipeline's Firehose delivery stream assumes, and the name of its one inline policy.
pub struct FirehoseRole<'a> {
    pub name: &'a str,
    pub policy_name: &'a str,
}

impl<'a> FirehoseRole<'a> {
    pub fn of(names: &'a PipelineNames) -> Self {
        Self { name: &names.firehose_role, policy_name: &names.firehose_role_policy }
    }
}

/// The policies the role should have.
#[derive(Clone, Debug, PartialEq)]
pub struct RolePolicies {
    pub trust: Value,
    pub delivery: Value,
}

impl RolePolicies {
    pub fn of(scope: &PolicyScope<'_>) -> Self {
        Self { trust: trust_policy(scope.account_id), delivery: delivery_policy(scope) }
    }
}

/// The role as IAM has it, with its inline policy (`None`: missing, or not JSON).
pub struct FoundRole {
    pub role: Role,
    pub delivery: Option<Value>,
}

/// A policy of the role that differs from what it should be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleChange {
    Trust,
    Delivery,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolePlan {
    Create,
    /// Policies changed by someone else, to be restored; none: as it should be.
    Restore(Vec<RoleChange>),
}

impl AwsResource for FirehoseRole<'_> {
    const KIND: &'static str = "IAM role";
    type Desired = RolePolicies;
    type Observed = FoundRole;
    type Plan = RolePlan;

    fn name(&self) -> String {
        self.name.to_owned()
    }

    async fn observe(&self, clients: &AwsClients, _tags: TagsAs) -> Result<Option<FoundRole>, Error> {
        let (role, policy_name) = (self.name, self.policy_name);
        let found =
            clients.iam.get_role().role_name(role).send().await.absent_on(&[NO_SUCH_ENTITY], || format!("reading IAM role {role}"))?;
        let Some(found) = found.and_then(|output| output.role) else { return Ok(None) };
        let delivery = (clients.iam.get_role_policy().role_name(role).policy_name(policy_name).send().await)
            .absent_on(&[NO_SUCH_ENTITY], || format!("reading policy {policy_name} of IAM role {role}"))?
            .and_then(|output| parse_policy(&output.policy_document));
        Ok(Some(FoundRole { role: found, delivery }))
    }

    fn whose(owner: &Owner, observed: &FoundRole) -> Standing {
        owner.standing(observed.role.tags().iter().map(|tag| (tag.key(), tag.value())))
    }

    async fn claim(&self, clients: &AwsClients, owner: &Owner, _observed: &FoundRole) -> Result<(), Error> {
        let role = self.name;
        let tagging = clients.iam.tag_role().role_name(role).set_tags(Some(tags(owner)));
        tagging.send().await.or_aws(|| format!("tagging IAM role {role}"))?;
        Ok(())
    }

    fn tags_of(observed: &FoundRole) -> Option<Vec<(String, String)>> {
        Some(observed.role.tags().iter().map(|tag| (tag.key().to_owned(), tag.value().to_owned())).collect())
    }

    async fn untag(&self, clients: &AwsClients, _observed: &FoundRole, keys: &[String]) -> Result<(), Error> {
        let role = self.name;
        let request = clients.iam.untag_role().role_name(role).set_tag_keys(Some(keys.to_vec()));
        request.send().await.or_aws(|| format!("removing tags from IAM role {role}"))?;
        Ok(())
    }

    fn plan(desired: &RolePolicies, observed: Option<&FoundRole>) -> RolePlan {
        let Some(found) = observed else { return RolePlan::Create };
        let trust = found.role.assume_role_policy_document().and_then(parse_policy);
        let mut changes = Vec::new();
        if trust.as_ref() != Some(&desired.trust) {
            changes.push(RoleChange::Trust);
        }
        if found.delivery.as_ref() != Some(&desired.delivery) {
            changes.push(RoleChange::Delivery);
        }
        RolePlan::Restore(changes)
    }

    async fn apply(
        &self,
        clients: &AwsClients,
        owner: &Owner,
        desired: &RolePolicies,
        observed: Option<FoundRole>,
        plan: RolePlan,
        mut outcome: Outcome,
    ) -> Result<(AwsResourceRef, Outcome), Error> {
        let (role, policy_name) = (self.name, self.policy_name);
        let (arn, changes) = match (plan, observed) {
            (RolePlan::Restore(changes), Some(found)) => (found.role.arn, changes),
            (RolePlan::Create, _) | (_, None) => {
                let created = (clients.iam.create_role())
                    .role_name(role)
                    .assume_role_policy_document(desired.trust.to_string())
                    .description(format!("Firehose delivery of metrics pipeline {}", owner.pipeline))
                    .set_tags(Some(tags(owner)))
                    .send()
                    .await
                    .or_aws(|| format!("creating IAM role {role}"))?;
                outcome.changed(format!("created IAM role {role}"));
                (created.role.expect("CreateRole returns the role").arn, vec![RoleChange::Delivery])
            }
        };
        for change in changes {
            match change {
                RoleChange::Trust => {
                    (clients.iam.update_assume_role_policy())
                        .role_name(role)
                        .policy_document(desired.trust.to_string())
                        .send()
                        .await
                        .or_aws(|| format!("updating the trust policy of IAM role {role}"))?;
                    outcome.changed(format!("restored the trust policy of IAM role {role}"));
                }
                RoleChange::Delivery => {
                    (clients.iam.put_role_policy())
                        .role_name(role)
                        .policy_name(policy_name)
                        .policy_document(desired.delivery.to_string())
                        .send()
                        .await
                        .or_aws(|| format!("writing policy {policy_name} of IAM role {role}"))?;
                    outcome.changed(format!("wrote policy {policy_name} of IAM role {role}"));
                }
            }
        }
        Ok((AwsResourceRef { name: role.to_owned(), arn: Some(arn) }, outcome))
    }

    async fn drift(&self, _clients: &AwsClients, desired: &RolePolicies, observed: &FoundRole) -> Result<Vec<String>, Error> {
        let RolePlan::Restore(changes) = Self::plan(desired, Some(observed)) else { return Ok(Vec::new()) };
        Ok(changes
            .into_iter()
            .map(|change| match change {
                RoleChange::Trust => "its trust policy is not the one that lets Firehose of this account assume it".to_owned(),
                RoleChange::Delivery => format!("its inline policy {} is missing or differs from the delivery's grants", self.policy_name),
            })
            .collect())
    }

    fn reference(&self, _clients: &AwsClients, observed: &FoundRole) -> AwsResourceRef {
        AwsResourceRef { name: self.name.to_owned(), arn: Some(observed.role.arn.clone()) }
    }

    /// Deletes the role's inline policies, then the role; one with managed policies attached (an
    /// adopted role someone gave more) is left, with them: the operator attached none.
    async fn remove(&self, clients: &AwsClients, _observed: FoundRole) -> Result<Removal, Error> {
        let role = self.name;
        let attached = (clients.iam.list_attached_role_policies())
            .role_name(role)
            .send()
            .await
            .or_aws(|| format!("listing the managed policies attached to IAM role {role}"))?;
        let attached: Vec<&str> = attached.attached_policies().iter().filter_map(|policy| policy.policy_name()).collect();
        if !attached.is_empty() {
            return Ok(Removal::Left(format!(
                "kept IAM role {role}: managed policies are attached to it ({}), which the operator did not attach",
                attached.join(", ")
            )));
        }
        let policies =
            (clients.iam.list_role_policies()).role_name(role).send().await.or_aws(|| format!("listing policies of IAM role {role}"))?;
        for policy in policies.policy_names() {
            (clients.iam.delete_role_policy())
                .role_name(role)
                .policy_name(policy)
                .send()
                .await
                .or_aws(|| format!("deleting policy {policy} of IAM role {role}"))?;
        }
        clients.iam.delete_role().role_name(role).send().await.absent_on(&[NO_SUCH_ENTITY], || format!("deleting IAM role {role}"))?;
        Ok(Removal::Gone)
    }
}

fn tags(owner: &Owner) -> Vec<Tag> {
    let tag = |(key, value)| Tag::builder().key(key).value(value).build().expect("key and value are set");
    owner.tags().into_iter().map(tag).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> PolicyScope<'static> {
        PolicyScope {
            account_id: "123456789012",
            region: "eu-west-1",
            output_stream_arn: "arn:aws:kinesis:eu-west-1:123456789012:stream/p-output",
            bucket_arn: "arn:aws:s3:::p-bucket",
            glue_database: "p",
            glue_table: "metric_aggregates",
        }
    }

    #[test]
    fn the_policy_reaches_only_this_pipelines_stream_bucket_and_table() {
        let policy = delivery_policy(&scope());
        let resources: Vec<&str> = policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|statement| statement["Resource"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()))
            .collect();
        assert_eq!(
            resources,
            [
                "arn:aws:kinesis:eu-west-1:123456789012:stream/p-output",
                "arn:aws:s3:::p-bucket",
                "arn:aws:s3:::p-bucket/*",
                "arn:aws:glue:eu-west-1:123456789012:catalog",
                "arn:aws:glue:eu-west-1:123456789012:database/p",
                "arn:aws:glue:eu-west-1:123456789012:table/p/metric_aggregates",
            ]
        );
        assert!(
            !policy.to_string().contains('*') || policy.to_string().matches('*').count() == 1,
            "no wildcard beyond the bucket's objects"
        );
    }

    #[test]
    fn only_firehose_in_this_account_may_assume_the_role() {
        let trust = trust_policy("123456789012");
        assert_eq!(trust["Statement"][0]["Principal"]["Service"], "firehose.amazonaws.com");
        assert_eq!(trust["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"], "123456789012");
    }

    #[test]
    fn url_encoded_policies_read_back_equal() {
        let policy = delivery_policy(&scope());
        let encoded: String = policy
            .to_string()
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        assert_eq!(parse_policy(&encoded), Some(policy.clone()));
        assert_eq!(parse_policy(&policy.to_string()), Some(policy));
    }
}
