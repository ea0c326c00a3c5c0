//! A pipeline's identity in AWS (account, region, names), recorded in its status before it first
//! creates anything, and kept: every name is derived from the spec and the operator's settings,
//! so a renamed prefix, bucket, catalog or region, or an operator moved to another account, would
//! otherwise build a second stack and orphan the first. A spec change that would move a resource
//! is refused, naming the field; the pipeline goes on under the names it has.

use crate::MetricsPipelineSpec;
use crate::config::PipelineConfig;
use crate::naming::PipelineNames;
use crate::pipeline::PipelineIdentity;

impl PipelineIdentity {
    pub fn of(names: &PipelineNames, region: &str, account_id: &str) -> Self {
        Self {
            account_id: account_id.to_owned(),
            region: region.to_owned(),
            name_prefix: names.prefix.clone(),
            input_stream: names.input_stream.clone(),
            output_stream: names.output_stream.clone(),
            bucket: names.bucket.clone(),
            firehose_role: names.firehose_role.clone(),
            delivery_stream: names.delivery_stream.clone(),
            glue_database: names.glue_database.clone(),
            glue_table: names.glue_table.clone(),
        }
    }
}

impl PipelineIdentity {
    /// Puts `names` on the recorded names (the Kubernetes names and the owner stay).
    pub fn name(&self, names: &mut PipelineNames) {
        names.prefix = self.name_prefix.clone();
        names.input_stream = self.input_stream.clone();
        names.output_stream = self.output_stream.clone();
        names.bucket = self.bucket.clone();
        names.firehose_role = self.firehose_role.clone();
        names.firehose_role_policy = PipelineNames::role_policy(&self.name_prefix);
        names.delivery_stream = self.delivery_stream.clone();
        names.glue_database = self.glue_database.clone();
        names.glue_table = self.glue_table.clone();
    }

    /// Why an operator in `account_id` may not manage the resources, if it may not.
    pub fn foreign_account(&self, account_id: &str) -> Option<String> {
        (self.account_id != account_id).then(|| {
            format!(
                "this pipeline's AWS resources are in account {}, and the operator now works in account {account_id}: run the \
                 operator with credentials of account {} to manage or delete them",
                self.account_id, self.account_id
            )
        })
    }
}

/// A spec (or operator) change the recorded identity refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityChange {
    /// The resources are in another account than the operator's: nothing can be reconciled.
    pub account_moved: bool,
    pub message: String,
}

/// Puts `config` on the recorded identity, or records it on a first reconcile. Returns the
/// identity to keep in the status and what of the spec it refuses.
pub fn settle(
    config: &mut PipelineConfig,
    recorded: Option<&PipelineIdentity>,
    spec: &MetricsPipelineSpec,
    account_id: &str,
) -> (PipelineIdentity, Option<IdentityChange>) {
    let desired = PipelineIdentity::of(&config.names, &config.region, account_id);
    let Some(recorded) = recorded.cloned() else { return (desired, None) };
    if let Some(message) = recorded.foreign_account(account_id) {
        return (recorded, Some(IdentityChange { account_moved: true, message }));
    }
    let moves = moves(&recorded, &desired, spec);
    config.region = recorded.region.clone();
    recorded.name(&mut config.names);
    let refused = (!moves.is_empty()).then(|| IdentityChange {
        account_moved: false,
        message: format!(
            "{} would move this pipeline's AWS resources, which keep the account, region and names they were made with; the \
             change is not applied, everything else is. Set {} back; to start under new names, create another pipeline \
             (this one's data stays in its bucket when it is deleted with deletionPolicy: Retain)",
            moves.join("; "),
            if moves.len() == 1 { "it" } else { "them" }
        ),
    });
    (recorded, refused)
}

/// Each spec field whose change would move a resource, with its old and new value.
fn moves(recorded: &PipelineIdentity, desired: &PipelineIdentity, spec: &MetricsPipelineSpec) -> Vec<String> {
    let mut moves = Vec::new();
    let mut differs = |field: &str, old: &str, new: &str| {
        if old != new && !moves.iter().any(|change: &String| change.starts_with(field)) {
            moves.push(format!("{field} (from `{old}` to `{new}`)"));
        }
    };
    let region = if spec.region.is_some() { "spec.region" } else { "the operator's default region (spec.region unset)" };
    differs(region, &recorded.region, &desired.region);
    differs("spec.namePrefix", &recorded.name_prefix, &desired.name_prefix);
    let adopt = spec.adopt.clone().unwrap_or_default();
    // The field that names a resource: the adoption's, the spec's own name for it, or none.
    let field = |adopted: &Option<String>, adopt_field: &'static str, chosen: Option<&'static str>, derived: &'static str| {
        if adopted.is_some() { adopt_field } else { chosen.unwrap_or(derived) }
    };
    let bucket_name = spec.delivery.bucket_name.is_some().then_some("spec.delivery.bucketName");
    differs(field(&adopt.bucket, "spec.adopt.bucket", bucket_name, "the bucket's derived name"), &recorded.bucket, &desired.bucket);
    let database = spec.catalog.database.is_some().then_some("spec.catalog.database");
    let database = field(&adopt.glue_database, "spec.adopt.glueDatabase", database, "the Glue database's derived name");
    differs(database, &recorded.glue_database, &desired.glue_database);
    let table = field(&adopt.glue_table, "spec.adopt.glueTable", Some("spec.catalog.table"), "");
    differs(table, &recorded.glue_table, &desired.glue_table);
    // Derived from the prefix otherwise, whose own line then says why they move.
    let prefix_kept = recorded.name_prefix == desired.name_prefix;
    for (adopted, adopt_field, old, new) in [
        (&adopt.input_stream, "spec.adopt.inputStream", &recorded.input_stream, &desired.input_stream),
        (&adopt.output_stream, "spec.adopt.outputStream", &recorded.output_stream, &desired.output_stream),
        (&adopt.firehose_role, "spec.adopt.firehoseRole", &recorded.firehose_role, &desired.firehose_role),
        (&adopt.delivery_stream, "spec.adopt.deliveryStream", &recorded.delivery_stream, &desired.delivery_stream),
    ] {
        if adopted.is_some() || prefix_kept {
            differs(adopt_field, old, new);
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MetricsPipeline;
    use crate::config::AwsTarget;
    use crate::validation::validate;

    fn config(spec: serde_json::Value) -> (PipelineConfig, MetricsPipelineSpec) {
        let mut pipeline: MetricsPipeline =
            serde_json::from_value(serde_json::json!({"apiVersion": "pipelines.metrics.dev/v1alpha1", "kind": "MetricsPipeline",
                "metadata": {"name": "p", "namespace": "team-a"}, "spec": spec}))
            .unwrap();
        pipeline.metadata.uid = Some("u".into());
        let target = AwsTarget { account_id: "111111111111".into(), default_region: Some("eu-west-1".into()) };
        (validate(&pipeline, &target).unwrap(), pipeline.spec)
    }

    #[test]
    fn a_first_reconcile_records_the_identity_the_spec_derives() {
        let (mut first, spec) = config(serde_json::json!({}));
        let (identity, refused) = settle(&mut first, None, &spec, "111111111111");
        assert_eq!(refused, None);
        assert_eq!((identity.region.as_str(), identity.input_stream.as_str()), ("eu-west-1", "team-a-p-input"));
    }

    #[test]
    fn a_renamed_prefix_or_region_is_refused_and_the_recorded_names_are_kept() {
        let (mut first, spec) = config(serde_json::json!({}));
        let (recorded, _) = settle(&mut first, None, &spec, "111111111111");
        let (mut renamed, spec) = config(serde_json::json!({"namePrefix": "shop", "region": "us-east-1"}));
        let (kept, refused) = settle(&mut renamed, Some(&recorded), &spec, "111111111111");
        assert_eq!(kept, recorded);
        assert_eq!(
            (renamed.names.input_stream.as_str(), renamed.region.as_str()),
            ("team-a-p-input", "eu-west-1"),
            "reconciled as recorded"
        );
        let message = refused.unwrap().message;
        for expected in
            ["spec.region (from `eu-west-1` to `us-east-1`)", "spec.namePrefix (from `team-a-p` to `shop`)", "the bucket's derived name"]
        {
            assert!(message.contains(expected), "{expected}: {message}");
        }
    }

    #[test]
    fn an_operator_in_another_account_manages_nothing_of_it() {
        let (mut first, spec) = config(serde_json::json!({}));
        let (recorded, _) = settle(&mut first, None, &spec, "111111111111");
        let (mut again, spec) = config(serde_json::json!({}));
        let (_, refused) = settle(&mut again, Some(&recorded), &spec, "222222222222");
        let refused = refused.unwrap();
        assert!(refused.account_moved);
        assert!(
            refused.message.contains("in account 111111111111, and the operator now works in account 222222222222"),
            "{}",
            refused.message
        );
    }

    #[test]
    fn an_adopted_name_is_kept_like_any_other_once_recorded() {
        let adopt = |stream: &str| serde_json::json!({"adopt": {"inputStream": stream, "confirmed": true}});
        let (mut first, spec) = config(adopt("legacy-metrics"));
        let (recorded, _) = settle(&mut first, None, &spec, "111111111111");
        assert_eq!(recorded.input_stream, "legacy-metrics");
        let (mut renamed, spec) = config(adopt("other-metrics"));
        let (_, refused) = settle(&mut renamed, Some(&recorded), &spec, "111111111111");
        let message = refused.unwrap().message;
        assert!(message.starts_with("spec.adopt.inputStream (from `legacy-metrics` to `other-metrics`)"), "{message}");
        assert_eq!(renamed.names.input_stream, "legacy-metrics");
    }

    #[test]
    fn other_spec_changes_pass() {
        let (mut first, spec) = config(serde_json::json!({}));
        let (recorded, _) = settle(&mut first, None, &spec, "111111111111");
        let (mut changed, spec) = config(serde_json::json!({"streams": {"input": {"shardCount": 3}}}));
        assert_eq!(settle(&mut changed, Some(&recorded), &spec, "111111111111").1, None);
    }
}
