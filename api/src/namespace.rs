//! What an administrator allows the pipelines of one namespace, as annotations on the Namespace,
//! which a pipeline's author may not edit: the AWS identity the operator and the aggregator act
//! with for them (an IAM role, in the team's own account or with the team's own permissions, as
//! ACK maps namespaces to accounts), the regions they may use, and a ceiling on the Kinesis shards
//! they hold together, so that one team cannot run up another's bill.

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::MetricsPipeline;
use crate::config::{PipelineConfig, StreamCapacity};
use crate::validation::FieldError;

/// The IAM role assumed for every AWS call of the namespace's pipelines, and by their aggregators.
pub const ROLE_ANNOTATION: &str = "pipelines.metrics.dev/aws-role-arn";
/// Comma-separated regions the namespace's pipelines may use.
pub const REGIONS_ANNOTATION: &str = "pipelines.metrics.dev/allowed-regions";
/// Most provisioned Kinesis shards the namespace's pipelines hold together, input and output.
pub const MAX_SHARDS_ANNOTATION: &str = "pipelines.metrics.dev/max-shards";
/// `"true"`: the namespace's pipelines may take over resources made by hand (`spec.adopt`), any
/// the namespace's identity reaches; off by default.
pub const ADOPTION_ANNOTATION: &str = "pipelines.metrics.dev/allow-adoption";

/// One namespace's allowances; every one absent: the operator's own identity, any region, no
/// ceiling.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespacePolicy {
    pub namespace: String,
    /// The role's ARN, and the account it is in.
    pub role: Option<(String, String)>,
    pub allowed_regions: Option<Vec<String>>,
    pub max_shards: Option<i32>,
    pub allows_adoption: bool,
}

/// Another pipeline of the namespace, for the shard ceiling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardHolder {
    pub name: String,
    /// Provisioned shards of both streams it holds: see [`shard_holders`].
    pub shards: i32,
}

/// What the namespace's pipelines other than `pipeline` hold under its ceiling, by name: the
/// shards each was last let have (`status.shards`), whatever its spec says now (invalid, refused,
/// or asking more: its streams keep what they have); one never let through yet that was created
/// before `pipeline` holds what its spec asks, so that of two new pipelines the older comes first.
/// `asks` says what a pipeline's spec asks, if it is valid and in a region the namespace allows.
pub fn shard_holders(
    pipeline: &MetricsPipeline,
    others: &[MetricsPipeline],
    asks: impl Fn(&MetricsPipeline) -> Option<i32>,
) -> Vec<ShardHolder> {
    let created = |pipeline: &MetricsPipeline| (pipeline.metadata.creation_timestamp.as_ref().map(|time| time.0), pipeline.name_any());
    let this = created(pipeline);
    others
        .iter()
        .filter(|other| other.name_any() != pipeline.name_any())
        .filter_map(|other| {
            let granted = other.status.as_ref().and_then(|status| status.shards);
            let shards = granted.or_else(|| (created(other) < this).then(|| asks(other)).flatten())?;
            (shards > 0).then(|| ShardHolder { name: other.name_any(), shards })
        })
        .collect()
}

impl NamespacePolicy {
    /// The allowances of `namespace` from its annotations; an annotation that says nothing usable
    /// is an error naming it, for an administrator to fix.
    pub fn of(namespace: &str, annotations: &BTreeMap<String, String>) -> Result<Self, String> {
        let refused = |annotation: &str, value: &str, expected: &str| {
            format!("namespace {namespace}: annotation {annotation}: `{value}` is not {expected}; an administrator must correct it")
        };
        let role = match annotations.get(ROLE_ANNOTATION) {
            None => None,
            Some(arn) => Some((arn.clone(), role_account(arn).ok_or_else(|| refused(ROLE_ANNOTATION, arn, "an IAM role ARN"))?.to_owned())),
        };
        let allowed_regions = match annotations.get(REGIONS_ANNOTATION) {
            None => None,
            Some(listed) => {
                let regions: Vec<String> =
                    listed.split(',').map(str::trim).filter(|region| !region.is_empty()).map(str::to_owned).collect();
                let valid = |region: &String| {
                    region.split('-').count() >= 3 && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                };
                if regions.is_empty() || !regions.iter().all(valid) {
                    return Err(refused(REGIONS_ANNOTATION, listed, "a comma-separated list of regions such as `eu-west-1,eu-central-1`"));
                }
                Some(regions)
            }
        };
        let max_shards = match annotations.get(MAX_SHARDS_ANNOTATION) {
            None => None,
            Some(text) => Some(
                text.trim()
                    .parse::<i32>()
                    .ok()
                    .filter(|max| *max >= 0)
                    .ok_or_else(|| refused(MAX_SHARDS_ANNOTATION, text, "a whole number of shards"))?,
            ),
        };
        let allows_adoption = match annotations.get(ADOPTION_ANNOTATION).map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(refused(ADOPTION_ANNOTATION, other, "`true` or `false`")),
        };
        Ok(Self { namespace: namespace.to_owned(), role, allowed_regions, max_shards, allows_adoption })
    }

    /// Whether a pipeline of `config` may be in its region here; one that may not holds nothing.
    pub fn admits_region(&self, config: &PipelineConfig) -> bool {
        self.allowed_regions.as_ref().is_none_or(|regions| regions.contains(&config.region))
    }

    /// What of `config` (of a pipeline that adopts, if `adopts`) the namespace does not allow.
    /// `holders` are its other pipelines and what they hold ([`shard_holders`]): they keep it,
    /// and the ceiling refuses this one's ask.
    pub fn check(&self, config: &PipelineConfig, adopts: bool, holders: &[ShardHolder]) -> Vec<FieldError> {
        let namespace = &self.namespace;
        let mut refused = Vec::new();
        if adopts && !self.allows_adoption {
            refused.push(FieldError {
                field: "spec.adopt".into(),
                message: format!(
                    "namespace {namespace} may not take over resources made by hand: an administrator allows it with the \
                     annotation {ADOPTION_ANNOTATION}: \"true\" on the namespace"
                ),
            });
        }
        if let Some(regions) = self.allowed_regions.as_ref().filter(|_| !self.admits_region(config)) {
            refused.push(FieldError {
                field: "spec.region".into(),
                message: format!(
                    "`{}` is not a region namespace {namespace} may use ({}, annotation {REGIONS_ANNOTATION}): set spec.region to \
                     one of them, or ask an administrator to allow it",
                    config.region,
                    regions.join(", ")
                ),
            });
        }
        let Some(max) = self.max_shards else { return refused };
        for (stream, field) in [(&config.input_stream, "spec.streams.input"), (&config.output_stream, "spec.streams.output")] {
            if stream.capacity == StreamCapacity::OnDemand {
                refused.push(FieldError {
                    field: format!("{field}.capacityMode"),
                    message: format!(
                        "OnDemand streams add shards without a limit, and namespace {namespace} holds at most {max} shards \
                         (annotation {MAX_SHARDS_ANNOTATION}): use Provisioned with a shardCount"
                    ),
                });
            }
        }
        let asked = shards(config);
        let held: i32 = holders.iter().map(|holder| holder.shards).sum();
        if held.saturating_add(asked) > max {
            let holders: Vec<String> = holders.iter().map(|holder| format!("{} {}", holder.name, holder.shards)).collect();
            refused.push(FieldError {
                field: "spec.streams".into(),
                message: format!(
                    "the streams ask {asked} shard(s), and namespace {namespace} may hold {max} (annotation {MAX_SHARDS_ANNOTATION}), \
                     of which its other pipelines hold {held} ({}): ask for fewer shards, or ask an administrator for a \
                     higher ceiling",
                    if holders.is_empty() { "none".to_owned() } else { holders.join(", ") }
                ),
            });
        }
        refused
    }
}

/// Provisioned shards of both streams of `config` (an OnDemand stream counts none: see `check`).
pub fn shards(config: &PipelineConfig) -> i32 {
    [config.input_stream.capacity, config.output_stream.capacity]
        .iter()
        .map(|capacity| match capacity {
            StreamCapacity::Provisioned { shards } => *shards,
            StreamCapacity::OnDemand => 0,
        })
        .sum()
}

/// The account of an IAM role ARN (`arn:<partition>:iam::<account>:role/<path/name>`).
fn role_account(arn: &str) -> Option<&str> {
    let mut parts = arn.splitn(6, ':');
    let (arn_word, partition, service, region, account, resource) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let well_formed = arn_word == "arn"
        && partition.starts_with("aws")
        && service == "iam"
        && region.is_empty()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && resource.strip_prefix("role/").is_some_and(|name| !name.is_empty());
    well_formed.then_some(account)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MetricsPipeline;
    use crate::config::AwsTarget;
    use crate::validation::validate;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect()
    }

    fn config(spec: serde_json::Value) -> PipelineConfig {
        let pipeline: MetricsPipeline = serde_json::from_value(serde_json::json!({"apiVersion": "pipelines.metrics.dev/v1alpha1",
            "kind": "MetricsPipeline", "metadata": {"name": "p", "namespace": "team-a"}, "spec": spec}))
        .unwrap();
        validate(&pipeline, &AwsTarget { account_id: "111111111111".into(), default_region: Some("eu-west-1".into()) }).unwrap()
    }

    #[test]
    fn a_namespace_without_annotations_allows_everything_with_the_operators_identity() {
        let policy = NamespacePolicy::of("team-a", &BTreeMap::new()).unwrap();
        assert_eq!(policy.role, None);
        assert_eq!(policy.check(&config(serde_json::json!({"region": "us-east-1"})), false, &[]), []);
    }

    #[test]
    fn the_role_names_its_account_and_a_malformed_annotation_is_named_for_the_administrator() {
        let role = "arn:aws:iam::222222222222:role/pipelines/team-a";
        let policy = NamespacePolicy::of("team-a", &annotations(&[(ROLE_ANNOTATION, role)])).unwrap();
        assert_eq!(policy.role, Some((role.to_owned(), "222222222222".to_owned())));
        let error = NamespacePolicy::of("team-a", &annotations(&[(ROLE_ANNOTATION, "team-a-role")])).unwrap_err();
        assert!(error.contains("annotation pipelines.metrics.dev/aws-role-arn: `team-a-role` is not an IAM role ARN"), "{error}");
        let error = NamespacePolicy::of("team-a", &annotations(&[(MAX_SHARDS_ANNOTATION, "lots")])).unwrap_err();
        assert!(error.contains("is not a whole number of shards"), "{error}");
    }

    #[test]
    fn adopting_takes_the_administrators_leave() {
        let config = config(serde_json::json!({}));
        let closed = NamespacePolicy::of("team-a", &BTreeMap::new()).unwrap();
        let refused = closed.check(&config, true, &[]);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].field, "spec.adopt");
        assert!(refused[0].message.contains("pipelines.metrics.dev/allow-adoption: \"true\""), "{}", refused[0].message);
        let open = NamespacePolicy::of("team-a", &annotations(&[(ADOPTION_ANNOTATION, "true")])).unwrap();
        assert_eq!(open.check(&config, true, &[]), []);
        assert!(NamespacePolicy::of("team-a", &annotations(&[(ADOPTION_ANNOTATION, "yes")])).is_err());
    }

    #[test]
    fn a_region_outside_the_namespaces_list_is_refused_naming_both() {
        let policy = NamespacePolicy::of("team-a", &annotations(&[(REGIONS_ANNOTATION, "eu-west-1, eu-central-1")])).unwrap();
        assert_eq!(policy.check(&config(serde_json::json!({})), false, &[]), []);
        let refused = policy.check(&config(serde_json::json!({"region": "us-east-1"})), false, &[]);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].field, "spec.region");
        assert!(
            refused[0].message.contains("(eu-west-1, eu-central-1, annotation pipelines.metrics.dev/allowed-regions)"),
            "{}",
            refused[0].message
        );
    }

    #[test]
    fn the_ceiling_counts_the_pipelines_created_before_and_refuses_on_demand_streams() {
        let policy = NamespacePolicy::of("team-a", &annotations(&[(MAX_SHARDS_ANNOTATION, "4")])).unwrap();
        let two = config(serde_json::json!({}));
        let earlier = [ShardHolder { name: "first".into(), shards: 2 }];
        assert_eq!(policy.check(&two, false, &earlier), [], "2 + 2 fit in 4");
        let three = config(serde_json::json!({"streams": {"input": {"shardCount": 2}}}));
        let refused = policy.check(&three, false, &earlier);
        assert_eq!(refused.len(), 1);
        assert!(refused[0].message.contains("ask 3 shard(s), and namespace team-a may hold 4"), "{}", refused[0].message);
        assert!(refused[0].message.contains("other pipelines hold 2 (first 2)"), "{}", refused[0].message);
        let on_demand = config(serde_json::json!({"streams": {"output": {"capacityMode": "OnDemand"}}}));
        let refused = policy.check(&on_demand, false, &[]);
        assert_eq!(refused[0].field, "spec.streams.output.capacityMode");
    }

    /// A pipeline of the namespace created at `hour` of a day, whose spec asks `asks` shards, let
    /// through with `granted`.
    fn other(name: &str, hour: u32, asks: i32, granted: Option<i32>) -> (MetricsPipeline, i32) {
        let created = format!("2026-01-01T{hour:02}:00:00Z");
        let mut pipeline: MetricsPipeline = serde_json::from_value(serde_json::json!({"apiVersion": "pipelines.metrics.dev/v1alpha1",
            "kind": "MetricsPipeline", "metadata": {"name": name, "namespace": "team-a", "creationTimestamp": created}, "spec": {}}))
        .unwrap();
        pipeline.status = granted.map(|shards| crate::MetricsPipelineStatus { shards: Some(shards), ..Default::default() });
        (pipeline, asks)
    }

    #[test]
    fn the_others_hold_what_they_were_let_have_and_a_new_older_one_what_it_asks() {
        let pipelines = [
            other("this", 10, 2, Some(2)),
            // Its spec asks more (refused) or is invalid now: its streams keep what they have.
            other("grown", 1, 8, Some(2)),
            other("broken", 2, 0, Some(3)),
            // Created later and let through: what it holds counts for the older too.
            other("newer", 20, 1, Some(1)),
            // Never let through yet: the older comes first, the newer waits its turn.
            other("older-new", 5, 2, None),
            other("newer-new", 23, 4, None),
        ];
        let asks = |pipeline: &MetricsPipeline| pipelines.iter().find(|(p, _)| p.name_any() == pipeline.name_any()).map(|(_, asks)| *asks);
        let all: Vec<MetricsPipeline> = pipelines.iter().map(|(pipeline, _)| pipeline.clone()).collect();
        let held: Vec<(String, i32)> = shard_holders(&all[0], &all, asks).into_iter().map(|holder| (holder.name, holder.shards)).collect();
        let expected = [("grown", 2), ("broken", 3), ("newer", 1), ("older-new", 2)];
        assert_eq!(held, expected.map(|(name, shards)| (name.to_owned(), shards)));
    }
}
