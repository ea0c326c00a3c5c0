//! What every part the operator manages shares, in AWS and in Kubernetes alike: who manages it
//! (the field manager, the managed-by marker, the ownership tag and the one check of it) and what
//! one `ensure` did ([`Outcome`]), and the status it writes. The AWS modules, the workload, the
//! claims and the controller import this; it imports none of them.

use kube::api::{Api, Patch, PatchParams};
use metrics_pipeline_api::naming::OWNER_TAG;
use metrics_pipeline_api::pipeline::{MetricsPipeline, MetricsPipelineStatus};

use crate::error::{Error, Holder};

/// Field manager of everything the operator writes with server-side apply, and the name it
/// records events and marks resources as managed by.
pub const FIELD_MANAGER: &str = "metrics-pipeline-operator";
/// Tag (AWS) and label (Kubernetes) telling people which tool manages a resource.
pub const MANAGED_BY_KEY: &str = "app.kubernetes.io/managed-by";

/// The tags every AWS resource of a pipeline carries; `owner` is `<namespace>/<name>`.
pub fn pipeline_tags(owner: &str) -> Vec<(String, String)> {
    vec![(OWNER_TAG.to_owned(), owner.to_owned()), (MANAGED_BY_KEY.to_owned(), FIELD_MANAGER.to_owned())]
}

/// Whose a resource found under one of this pipeline's names is, by its tags (AWS), parameters
/// (Glue) or annotations (Kubernetes). Reading them must have succeeded: a resource whose tags
/// could not be read is neither ours nor somebody else's, and its error goes to the caller.
pub fn holder<'a>(owner: &str, tags: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<Holder> {
    match tags.into_iter().find(|(key, _)| *key == OWNER_TAG) {
        Some((_, value)) if value == owner => None,
        Some((_, value)) => Some(Holder::Pipeline(value.to_owned())),
        None => Some(Holder::Untagged),
    }
}

/// `Ok` when the resource is this pipeline's; `NotOwned` (terminal) when it is somebody else's.
pub fn check_owner<'a>(
    kind: &'static str,
    name: &str,
    owner: &str,
    tags: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), Error> {
    match holder(owner, tags) {
        None => Ok(()),
        Some(holder) => Err(Error::NotOwned { kind, name: name.to_owned(), holder }),
    }
}

/// What one `ensure` did, for events and conditions.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Human-readable changes made, e.g. "created Kinesis stream x".
    pub changes: Vec<String>,
    /// `Some(reason)` while the resource is not usable yet (creating, updating).
    pub pending: Option<String>,
    /// A change that failed while the resource as it stands works: what depends on it goes on,
    /// and its condition reports the failure.
    pub degraded: Option<Error>,
}

impl Outcome {
    pub fn changed(&mut self, change: impl Into<String>) {
        self.changes.push(change.into());
    }

    pub fn merge(&mut self, other: Outcome) {
        self.changes.extend(other.changes);
        if self.pending.is_none() {
            self.pending = other.pending;
        }
        if self.degraded.is_none() {
            self.degraded = other.degraded;
        }
    }
}

/// Replaces the status with `status` (server-side apply: what it leaves out goes).
pub async fn write_status(api: &Api<MetricsPipeline>, name: &str, status: &MetricsPipelineStatus) -> Result<(), Error> {
    let patch = serde_json::json!({
        "apiVersion": "pipelines.metrics.dev/v1alpha1",
        "kind": "MetricsPipeline",
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_own_tag_value_makes_a_resource_ours() {
        let tagged = |value: &'static str| [(OWNER_TAG, value), (MANAGED_BY_KEY, FIELD_MANAGER)];
        assert_eq!(holder("team-a/metrics", tagged("team-a/metrics")), None);
        assert_eq!(holder("team-a/metrics", tagged("team-b/metrics")), Some(Holder::Pipeline("team-b/metrics".into())));
        assert_eq!(holder("team-a/metrics", [("Name", "x")]), Some(Holder::Untagged));
    }
}
