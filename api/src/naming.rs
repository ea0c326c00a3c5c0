//! The one place that names what a pipeline creates, in AWS and in Kubernetes.
//!
//! Every name is a pure function of the resource's namespace and name, its spec, and the AWS
//! account and region, so a restarted operator finds exactly what it made before.

use kube::ResourceExt;
use metrics_pipeline_model::stable_hash::fnv1a64;

use crate::MetricsPipeline;
use crate::pipeline::AdoptSpec;

/// Longest name prefix: the longest suffix added to it (`-` plus 12 hex digits for a bucket) must
/// still fit the tightest AWS limit, 63 characters for bucket names.
pub const MAX_PREFIX_LEN: usize = 40;

pub const DEFAULT_TABLE: &str = "metric_aggregates";

/// Tag on every AWS resource a pipeline creates (a parameter on Glue objects, an annotation on
/// Kubernetes objects), valued `<namespace>/<name>` (see [`owner_value`] for long ones):
/// the operator adopts what carries its own value and never touches what does not.
pub const OWNER_TAG: &str = "metrics.dev/pipeline";
/// Tag (AWS) and label (Kubernetes) telling people which tool manages a resource.
pub const MANAGED_BY_KEY: &str = "app.kubernetes.io/managed-by";

/// Tag (a parameter on Glue objects) valued with the UID of the pipeline that made the resource:
/// a pipeline deleted with `Retain` and created again under the same name is another pipeline.
pub const PIPELINE_UID_TAG: &str = "metrics.dev/pipeline-uid";

/// Tag (a parameter on Glue objects) valued with the identity of the cluster whose pipeline made
/// the resource (default: its kube-system namespace's UID): two clusters sharing an AWS account
/// and region, each with a pipeline of the same namespace and name, keep apart.
pub const CLUSTER_TAG: &str = "metrics.dev/cluster";

/// Longest value of [`OWNER_TAG`]. AWS's tag references give 256 characters for a value, and
/// CloudFormation's schema of a Kinesis stream tag 255: the smaller holds everywhere.
pub const MAX_OWNER_LEN: usize = 255;

/// Every name a pipeline uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineNames {
    /// The value of [`OWNER_TAG`]: `<namespace>/<name>` of the custom resource, see [`owner_value`].
    pub owner: String,
    pub prefix: String,
    pub input_stream: String,
    pub output_stream: String,
    pub bucket: String,
    pub firehose_role: String,
    pub firehose_role_policy: String,
    pub delivery_stream: String,
    pub glue_database: String,
    pub glue_table: String,
    /// ServiceAccount and Deployment of the aggregator.
    pub aggregator: String,
}

/// What the names are derived from.
struct NameInputs<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub name_prefix: Option<&'a str>,
    pub bucket_name: Option<&'a str>,
    pub glue_database: Option<&'a str>,
    pub glue_table: Option<&'a str>,
    /// Existing resources the pipeline takes over, whose names win.
    pub adopt: Option<&'a AdoptSpec>,
    pub account_id: &'a str,
    pub region: &'a str,
}

impl PipelineNames {
    /// The names of `pipeline` in `account_id` and `region` (its resolved region).
    pub fn of(pipeline: &MetricsPipeline, account_id: &str, region: &str) -> Self {
        let spec = &pipeline.spec;
        Self::derive(&NameInputs {
            // The API server always sets it; a resource read from a file may not have one.
            namespace: pipeline.metadata.namespace.as_deref().unwrap_or("default"),
            name: &pipeline.name_any(),
            name_prefix: spec.name_prefix.as_deref(),
            bucket_name: spec.delivery.bucket_name.as_deref(),
            glue_database: spec.catalog.database.as_deref(),
            glue_table: spec.catalog.table.as_deref(),
            adopt: spec.adopt.as_ref(),
            account_id,
            region,
        })
    }

    /// The name of the Firehose role's inline policy.
    pub fn role_policy(prefix: &str) -> String {
        format!("{prefix}-firehose-delivery")
    }

    fn derive(inputs: &NameInputs<'_>) -> Self {
        let owner = owner_value(inputs.namespace, inputs.name);
        let prefix = match inputs.name_prefix {
            Some(prefix) => prefix.to_owned(),
            None => default_prefix(inputs.namespace, inputs.name),
        };
        // Bucket names are global across every AWS account: the hash of account, region and owner
        // keeps two clusters (or two accounts) with the same namespace and name apart.
        let bucket = inputs.bucket_name.map(str::to_owned).unwrap_or_else(|| {
            let digest = fnv1a64(format!("{}/{}/{owner}", inputs.account_id, inputs.region).as_bytes());
            format!("{prefix}-{:012x}", digest >> 16)
        });
        let adopted = |name: fn(&AdoptSpec) -> &Option<String>| inputs.adopt.and_then(|adopt| name(adopt).clone());
        Self {
            input_stream: adopted(|a| &a.input_stream).unwrap_or_else(|| format!("{prefix}-input")),
            output_stream: adopted(|a| &a.output_stream).unwrap_or_else(|| format!("{prefix}-output")),
            firehose_role: adopted(|a| &a.firehose_role).unwrap_or_else(|| format!("{prefix}-firehose")),
            firehose_role_policy: Self::role_policy(&prefix),
            delivery_stream: adopted(|a| &a.delivery_stream).unwrap_or_else(|| format!("{prefix}-delivery")),
            glue_database: adopted(|a| &a.glue_database)
                .or_else(|| inputs.glue_database.map(str::to_owned))
                .unwrap_or_else(|| prefix.replace('-', "_")),
            glue_table: adopted(|a| &a.glue_table).unwrap_or_else(|| inputs.glue_table.unwrap_or(DEFAULT_TABLE).to_owned()),
            aggregator: format!("{}-aggregator", inputs.name),
            bucket: adopted(|a| &a.bucket).unwrap_or(bucket),
            prefix,
            owner,
        }
    }

    /// The names of the resources `adopt` takes over, as each resource names itself (a Glue
    /// table as `<database>.<table>`).
    pub fn adopted(&self, adopt: &AdoptSpec) -> Vec<String> {
        let named = [
            (&adopt.input_stream, &self.input_stream),
            (&adopt.output_stream, &self.output_stream),
            (&adopt.bucket, &self.bucket),
            (&adopt.firehose_role, &self.firehose_role),
            (&adopt.delivery_stream, &self.delivery_stream),
            (&adopt.glue_database, &self.glue_database),
        ];
        let mut adopted: Vec<String> = named.into_iter().filter(|(asked, _)| asked.is_some()).map(|(_, name)| name.clone()).collect();
        if adopt.glue_table.is_some() {
            adopted.push(format!("{}.{}", self.glue_database, self.glue_table));
        }
        adopted
    }
}

/// `<namespace>/<name>`, or when that is longer than an AWS tag value may be (a namespace has up
/// to 63 characters, a name up to 253), its head, `/` and a hash of the whole. No Kubernetes
/// namespace or name holds a `/`, so a shortened value, with two, never equals a pipeline's
/// plain value, and the hash keeps shortened values apart.
pub fn owner_value(namespace: &str, name: &str) -> String {
    let plain = format!("{namespace}/{name}");
    if plain.chars().count() <= MAX_OWNER_LEN {
        return plain;
    }
    let digest = format!("{:016x}", fnv1a64(plain.as_bytes()));
    let head: String = plain.chars().take(MAX_OWNER_LEN - digest.len() - 1).collect();
    format!("{head}/{digest}")
}

/// `<namespace>-<name>`, made safe for every AWS name; shortened with a hash when too long.
fn default_prefix(namespace: &str, name: &str) -> String {
    let joined: String =
        format!("{namespace}-{name}").chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    if joined.len() <= MAX_PREFIX_LEN {
        return joined;
    }
    let digest = format!("{:08x}", fnv1a64(joined.as_bytes()) >> 32);
    let keep = MAX_PREFIX_LEN - digest.len() - 1;
    format!("{}-{digest}", joined[..keep].trim_end_matches('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(namespace: &'a str, name: &'a str) -> NameInputs<'a> {
        NameInputs {
            namespace,
            name,
            name_prefix: None,
            bucket_name: None,
            glue_database: None,
            glue_table: None,
            adopt: None,
            account_id: "123456789012",
            region: "eu-west-1",
        }
    }

    #[test]
    fn adopted_names_win_over_derived_ones_and_are_listed_as_each_resource_names_itself() {
        let adopt = AdoptSpec {
            input_stream: Some("legacy-input".into()),
            glue_database: Some("legacy".into()),
            glue_table: Some("aggregates".into()),
            ..AdoptSpec::default()
        };
        let names = PipelineNames::derive(&NameInputs { adopt: Some(&adopt), glue_table: Some("other"), ..inputs("team-a", "p") });
        assert_eq!((names.input_stream.as_str(), names.output_stream.as_str()), ("legacy-input", "team-a-p-output"));
        assert_eq!((names.glue_database.as_str(), names.glue_table.as_str()), ("legacy", "aggregates"));
        assert_eq!(names.adopted(&adopt), ["legacy-input", "legacy", "legacy.aggregates"]);
    }

    #[test]
    fn default_names_follow_namespace_and_name() {
        let names = PipelineNames::derive(&inputs("team-a", "metrics"));
        assert_eq!(names.prefix, "team-a-metrics");
        assert_eq!(names.input_stream, "team-a-metrics-input");
        assert_eq!(names.output_stream, "team-a-metrics-output");
        assert_eq!(names.delivery_stream, "team-a-metrics-delivery");
        assert_eq!(names.firehose_role, "team-a-metrics-firehose");
        assert_eq!(names.glue_database, "team_a_metrics");
        assert_eq!(names.glue_table, "metric_aggregates");
        assert_eq!(names.aggregator, "metrics-aggregator");
        assert_eq!(names.owner, "team-a/metrics");
        assert!(names.bucket.starts_with("team-a-metrics-") && names.bucket.len() == "team-a-metrics-".len() + 12);
    }

    #[test]
    fn names_are_deterministic_and_buckets_differ_per_account_and_region() {
        let first = PipelineNames::derive(&inputs("default", "p"));
        assert_eq!(first, PipelineNames::derive(&inputs("default", "p")));
        let other_account = PipelineNames::derive(&NameInputs { account_id: "210987654321", ..inputs("default", "p") });
        let other_region = PipelineNames::derive(&NameInputs { region: "us-east-1", ..inputs("default", "p") });
        assert_ne!(first.bucket, other_account.bucket);
        assert_ne!(first.bucket, other_region.bucket);
        assert_eq!(first.input_stream, other_account.input_stream);
    }

    #[test]
    fn long_names_are_shortened_with_a_hash_and_stay_distinct() {
        let long = "a".repeat(60);
        let one = PipelineNames::derive(&inputs("observability", &format!("{long}-one")));
        let two = PipelineNames::derive(&inputs("observability", &format!("{long}-two")));
        assert!(one.prefix.len() <= MAX_PREFIX_LEN, "{}", one.prefix);
        assert_ne!(one.prefix, two.prefix);
        assert!(one.bucket.len() <= 63 && one.delivery_stream.len() <= 64 && one.firehose_role.len() <= 64);
    }

    #[test]
    fn the_owner_value_fits_an_aws_tag_value_and_stays_unique_and_stable() {
        // The longest a namespace (63) and a name (253) can be.
        let namespace = "n".repeat(63);
        let (one, two) = (format!("{}1", "a".repeat(252)), format!("{}2", "a".repeat(252)));
        let owner = |name: &str| PipelineNames::derive(&inputs(&namespace, name)).owner;
        assert!(owner(&one).chars().count() <= 256, "{} characters", owner(&one).len());
        assert_eq!(owner(&one).matches('/').count(), 2, "unlike any value that fits: {}", owner(&one));
        assert_ne!(owner(&one), owner(&two));
        assert_eq!(owner(&one), owner(&one));
        assert!(owner(&one).starts_with(&format!("{namespace}/aaaa")), "still readable: {}", owner(&one));
        assert_eq!(owner("metrics"), format!("{namespace}/metrics"), "a value that fits is kept as it always was");
    }

    #[test]
    fn dots_in_kubernetes_names_become_hyphens() {
        assert_eq!(PipelineNames::derive(&inputs("default", "metrics.v2")).prefix, "default-metrics-v2");
    }

    #[test]
    fn explicit_names_win() {
        let names = PipelineNames::derive(&NameInputs {
            name_prefix: Some("shop"),
            bucket_name: Some("shop-metrics-archive"),
            glue_database: Some("analytics"),
            glue_table: Some("component_metrics"),
            ..inputs("default", "p")
        });
        assert_eq!(names.input_stream, "shop-input");
        assert_eq!(names.bucket, "shop-metrics-archive");
        assert_eq!(names.glue_database, "analytics");
        assert_eq!(names.glue_table, "component_metrics");
    }
}
