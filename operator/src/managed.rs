//! What every part the operator manages shares, in AWS and in Kubernetes alike: who manages it
//! (the field manager, the managed-by marker, the ownership tags and the one check of them) and
//! what one `ensure` did ([`Outcome`]), and the status it writes. The AWS modules, the workload
//! and the controller import this; it imports none of them.

use kube::api::{Api, Patch, PatchParams};
use std::collections::BTreeMap;

use metrics_pipeline_api::naming::{CLUSTER_TAG, OWNER_TAG, PIPELINE_UID_TAG, PipelineNames};
use metrics_pipeline_api::pipeline::{ManagementPolicy, MetricsPipeline, MetricsPipelineStatus};

use crate::error::{Error, Holder};

/// Field manager of everything the operator writes with server-side apply, and the name it
/// records events and marks resources as managed by.
pub const FIELD_MANAGER: &str = "metrics-pipeline-operator";
pub use metrics_pipeline_api::naming::MANAGED_BY_KEY;

/// Who a pipeline's AWS resources belong to. Each carries the pipeline's `<namespace>/<name>`
/// (for people), its UID (a pipeline created again under the same name is another) and the
/// cluster's identity (two clusters in one account and region, each with a pipeline of the same
/// namespace and name), as tags (Glue: parameters); a resource is the pipeline's only when all
/// three match, and it proves so by itself: nothing in the pipeline's status counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// `<namespace>/<name>`, see [`metrics_pipeline_api::naming::owner_value`].
    pub pipeline: String,
    pub uid: String,
    pub cluster: String,
    /// The UID of an earlier pipeline whose resources this one takes over (`spec.adoptFrom`).
    pub adopt_from: Option<String>,
    /// What the operator may do to them (`spec.managementPolicy`).
    pub policy: ManagementPolicy,
    /// Resources made by something else that the pipeline takes over (`spec.adopt`), as each
    /// names itself.
    pub adopting: Vec<String>,
    /// The user's tags (`spec.tags`), beside the ownership tags on every taggable resource.
    pub user_tags: Vec<(String, String)>,
    /// Keys of user tags put on the resources before and dropped from the spec since: removed.
    pub dropped_tags: Vec<String>,
}

/// Tags read as owned pairs, as [`Owner`]'s checks take them.
pub fn tag_pairs(tags: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> {
    tags.iter().map(|(key, value)| (key.as_str(), value.as_str()))
}

/// Whose a resource found under one of a pipeline's names is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    Ours,
    /// The pipeline's once tagged as such: adopted, or made by an operator that did not tag
    /// the UID and the cluster yet. Says which, for the change it makes.
    Retag(String),
    Foreign(Holder),
}

impl Owner {
    /// A pipeline that adopts nothing and manages fully (as the tests and tools name one).
    pub fn named(pipeline: impl Into<String>, uid: impl Into<String>, cluster: impl Into<String>) -> Self {
        Self {
            pipeline: pipeline.into(),
            uid: uid.into(),
            cluster: cluster.into(),
            adopt_from: None,
            policy: ManagementPolicy::Full,
            adopting: Vec::new(),
            user_tags: Vec::new(),
            dropped_tags: Vec::new(),
        }
    }

    /// The owner of `pipeline`'s resources (named `names`) in `cluster`.
    pub fn of(pipeline: &MetricsPipeline, names: &PipelineNames, cluster: &str) -> Self {
        Self {
            pipeline: names.owner.clone(),
            uid: pipeline.metadata.uid.clone().unwrap_or_default(),
            cluster: cluster.to_owned(),
            adopt_from: pipeline.spec.adopt_from.as_ref().map(|adopt| adopt.pipeline_uid.clone()),
            policy: pipeline.spec.management_policy,
            adopting: pipeline.spec.adopt.as_ref().map(|adopt| names.adopted(adopt)).unwrap_or_default(),
            user_tags: pipeline.spec.tags.iter().map(|(key, value)| (key.clone(), value.clone())).collect(),
            dropped_tags: (pipeline.status.iter().flat_map(|status| &status.tag_keys))
                .filter(|key| !pipeline.spec.tags.contains_key(*key))
                .cloned()
                .collect(),
        }
    }

    /// The tags of every AWS resource the pipeline makes: its ownership, then `spec.tags`.
    pub fn tags(&self) -> Vec<(String, String)> {
        let mut tags = self.ownership();
        tags.extend(self.user_tags.iter().cloned());
        tags
    }

    /// What marks a resource as the pipeline's (on Glue objects, as parameters).
    pub fn ownership(&self) -> Vec<(String, String)> {
        vec![
            (OWNER_TAG.to_owned(), self.pipeline.clone()),
            (PIPELINE_UID_TAG.to_owned(), self.uid.clone()),
            (CLUSTER_TAG.to_owned(), self.cluster.clone()),
            (MANAGED_BY_KEY.to_owned(), FIELD_MANAGER.to_owned()),
        ]
    }

    /// What of `spec.tags` a resource with `found` tags lacks (or holds with another value), and
    /// which of its tags are user tags the spec dropped. Its ownership is [`Owner::standing`]'s.
    pub fn tag_changes(&self, found: &[(String, String)]) -> (Vec<(String, String)>, Vec<String>) {
        let missing = self.user_tags.iter().filter(|tag| !found.contains(tag)).cloned().collect();
        let dropped = self.dropped_tags.iter().filter(|key| found.iter().any(|(found, _)| found == *key)).cloned().collect();
        (missing, dropped)
    }

    /// Whose a resource with `tags` is. Reading them must have succeeded: a resource whose tags
    /// could not be read is neither ours nor somebody else's, and its error goes to the caller.
    pub fn standing<'a>(&self, tags: impl IntoIterator<Item = (&'a str, &'a str)>) -> Standing {
        let tags: BTreeMap<&str, &str> = tags.into_iter().collect();
        let tag = |key: &str| tags.get(key).map(|value| (*value).to_owned());
        let (Some(pipeline), uid, cluster) = (tag(OWNER_TAG), tag(PIPELINE_UID_TAG), tag(CLUSTER_TAG)) else {
            return Standing::Foreign(Holder::Untagged);
        };
        // Only from an earlier pipeline of this namespace and name: a UID is no secret, and
        // another namespace's pipeline must never be able to take a live pipeline's resources.
        if uid.is_some() && uid == self.adopt_from && pipeline == self.pipeline {
            let uid = uid.unwrap_or_default();
            return Standing::Retag(format!("taken over from pipeline {pipeline} (uid {uid}) as spec.adoptFrom asks"));
        }
        match (uid, cluster) {
            (Some(uid), Some(cluster)) if pipeline == self.pipeline && uid == self.uid && cluster == self.cluster => Standing::Ours,
            // Tagged before UIDs and clusters were: the first cluster to look claims it.
            (None, None) if pipeline == self.pipeline => {
                Standing::Retag("tagged with this pipeline's UID and this cluster's identity".to_owned())
            }
            (uid, Some(cluster)) if cluster != self.cluster => Standing::Foreign(Holder::OtherCluster { cluster, pipeline, uid }),
            (Some(uid), _) if pipeline == self.pipeline => Standing::Foreign(Holder::EarlierPipeline { uid }),
            _ => Standing::Foreign(Holder::Pipeline(pipeline)),
        }
    }
}

impl Standing {
    /// `Ok(None)` when the resource is the pipeline's, `Ok(Some(why))` when the pipeline may claim
    /// it (see [`Standing::Retag`]), and `NotOwned` (terminal) when it is somebody else's.
    pub fn claim(self, kind: &'static str, name: &str) -> Result<Option<String>, Error> {
        match self {
            Standing::Ours => Ok(None),
            Standing::Retag(why) => Ok(Some(why)),
            Standing::Foreign(holder) => Err(Error::NotOwned { kind, name: name.to_owned(), holder }),
        }
    }
}

/// Whose a Kubernetes object found under one of this pipeline's names is, by its ownership
/// annotation (`<namespace>/<name>`; the pipeline's ownerReference carries its UID).
pub fn holder<'a>(owner: &str, annotations: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<Holder> {
    match annotations.into_iter().find(|(key, _)| *key == OWNER_TAG) {
        Some((_, value)) if value == owner => None,
        Some((_, value)) => Some(Holder::Pipeline(value.to_owned())),
        None => Some(Holder::Untagged),
    }
}

/// `Ok` when the Kubernetes object is this pipeline's; `NotOwned` (terminal) when it is somebody else's.
pub fn check_owner<'a>(
    kind: &'static str,
    name: &str,
    owner: &str,
    annotations: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), Error> {
    match holder(owner, annotations) {
        None => Ok(()),
        Some(holder) => Err(Error::NotOwned { kind, name: name.to_owned(), holder }),
    }
}

/// Where the deletion of one AWS resource stands: the same three answers from every part.
#[derive(Debug, PartialEq, Eq)]
pub enum Removal {
    /// Gone, or never there.
    Gone,
    /// AWS is still deleting it: the resource, as the status names what the deletion waits for.
    Going(String),
    /// Left in place, and why: it is not this pipeline's, or it holds what is not.
    Left(String),
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

    fn owner() -> Owner {
        Owner::named("team-a/metrics", "u-1", "blue")
    }

    fn tags<'a>(pipeline: &'a str, uid: Option<&'a str>, cluster: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
        let mut tags = vec![(OWNER_TAG, pipeline), (MANAGED_BY_KEY, FIELD_MANAGER)];
        tags.extend(uid.map(|uid| (PIPELINE_UID_TAG, uid)));
        tags.extend(cluster.map(|cluster| (CLUSTER_TAG, cluster)));
        tags
    }

    #[test]
    fn a_resource_is_ours_only_when_pipeline_uid_and_cluster_all_match() {
        let owner = owner();
        assert_eq!(owner.standing(tags("team-a/metrics", Some("u-1"), Some("blue"))), Standing::Ours);
        let green = Holder::OtherCluster { cluster: "green".into(), pipeline: "team-a/metrics".into(), uid: Some("u-1".into()) };
        assert_eq!(owner.standing(tags("team-a/metrics", Some("u-1"), Some("green"))), Standing::Foreign(green), "another cluster");
        let earlier = Holder::EarlierPipeline { uid: "u-0".into() };
        assert_eq!(owner.standing(tags("team-a/metrics", Some("u-0"), Some("blue"))), Standing::Foreign(earlier), "re-created");
        let other = Holder::Pipeline("team-b/metrics".into());
        assert_eq!(owner.standing(tags("team-b/metrics", Some("u-2"), Some("blue"))), Standing::Foreign(other));
        assert_eq!(owner.standing([("Name", "x")]), Standing::Foreign(Holder::Untagged));
    }

    #[test]
    fn only_the_named_earlier_pipeline_is_taken_over_and_never_by_deleting() {
        let adopting = Owner { adopt_from: Some("u-0".into()), ..owner() };
        let retained = tags("team-a/metrics", Some("u-0"), Some("green"));
        assert!(matches!(adopting.standing(retained.clone()), Standing::Retag(why) if why.contains("uid u-0")));
        let other = tags("team-a/metrics", Some("u-9"), Some("blue"));
        assert_eq!(adopting.standing(other), Standing::Foreign(Holder::EarlierPipeline { uid: "u-9".into() }));
        let elsewhere = tags("team-b/metrics", Some("u-0"), Some("blue"));
        assert_eq!(
            adopting.standing(elsewhere),
            Standing::Foreign(Holder::Pipeline("team-b/metrics".into())),
            "another namespace's, UID or not"
        );
    }

    #[test]
    fn a_resource_tagged_before_uids_and_clusters_is_claimed_by_its_pipeline() {
        let legacy = tags("team-a/metrics", None, None);
        assert!(matches!(owner().standing(legacy.clone()), Standing::Retag(_)));
        assert_eq!(owner().standing(tags("team-b/metrics", None, None)), Standing::Foreign(Holder::Pipeline("team-b/metrics".into())));
    }

    #[test]
    fn tags_to_put_on_are_those_missing_or_changed_and_to_take_off_only_those_the_spec_dropped() {
        let owner = Owner {
            user_tags: vec![("team".into(), "platform".into())],
            dropped_tags: vec!["cost-center".into(), "never-put".into()],
            ..owner()
        };
        let mut found = owner.ownership();
        found.extend([("team".into(), "metrics".into()), ("cost-center".into(), "obs".into()), ("backup".into(), "daily".into())]);
        let (missing, dropped) = owner.tag_changes(&found);
        assert_eq!(missing, [("team".to_owned(), "platform".to_owned())]);
        assert_eq!(dropped, ["cost-center"], "a tag others set stays, and one not there is not removed");
        let mut up_to_date = owner.tags();
        up_to_date.push(("backup".into(), "daily".into()));
        assert_eq!(owner.tag_changes(&up_to_date), (Vec::new(), Vec::new()));
    }

    #[test]
    fn kubernetes_objects_are_ours_by_their_annotation() {
        let annotated = |value: &'static str| [(OWNER_TAG, value), (MANAGED_BY_KEY, FIELD_MANAGER)];
        assert_eq!(holder("team-a/metrics", annotated("team-a/metrics")), None);
        assert_eq!(holder("team-a/metrics", annotated("team-b/metrics")), Some(Holder::Pipeline("team-b/metrics".into())));
        assert_eq!(holder("team-a/metrics", [("Name", "x")]), Some(Holder::Untagged));
    }
}
