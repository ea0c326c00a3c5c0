//! The one contract every AWS resource of a pipeline keeps, and the two ways the controller uses
//! it: [`ensure`] (observe, check whose it is, claim, plan, apply) and [`delete`] (observe, check,
//! remove). Who owns what is decided here once for all of them: a resource is changed only once it
//! is the pipeline's, claimed only on its tags as they are now, and deleted only when it is the
//! pipeline's by its tags as they are now.

use std::future::Future;

use metrics_pipeline_api::pipeline::AwsResourceRef;

use super::{AwsClients, TagsAs};
use crate::error::{Error, Holder};
use crate::managed::{Outcome, Owner, Removal, Standing};

/// One kind of AWS resource a pipeline makes (a Kinesis stream, the bucket, …), named by the
/// value implementing it.
pub trait AwsResource: Sync {
    /// What people call this kind of resource ("Kinesis stream"), in messages and errors.
    const KIND: &'static str;
    /// What the pipeline's spec asks of the resource.
    type Desired: Sync;
    /// The resource as AWS describes it, with what says whose it is.
    type Observed: Send + Sync;
    /// The next step from what AWS has towards what the spec asks.
    type Plan: Send;

    /// What AWS and people know the resource by.
    fn name(&self) -> String;

    /// The resource as it is, or `None`; its tags as read lately when `tags` is [`TagsAs::Cached`].
    fn observe(&self, clients: &AwsClients, tags: TagsAs) -> impl Future<Output = Result<Option<Self::Observed>, Error>> + Send;

    /// Whose the resource found is, for `owner`.
    fn whose(owner: &Owner, observed: &Self::Observed) -> Standing;

    /// Adds `owner`'s tags (its ownership and `spec.tags`) to the resource found, keeping what
    /// others set: claims it (see [`Standing::Retag`]), or brings its tags up to the spec.
    fn claim(&self, clients: &AwsClients, owner: &Owner, observed: &Self::Observed) -> impl Future<Output = Result<(), Error>> + Send;

    /// The tags on the resource found, to compare `owner`'s with (ownership included, wherever
    /// the resource keeps it); `None` for a kind AWS does not tag (a Glue table).
    fn tags_of(observed: &Self::Observed) -> Option<Vec<(String, String)>>;

    /// Removes the tags `keys` from the resource found, keeping every other one.
    fn untag(&self, clients: &AwsClients, observed: &Self::Observed, keys: &[String]) -> impl Future<Output = Result<(), Error>> + Send;

    /// What to do, decided without AWS so that every case is unit-tested.
    fn plan(desired: &Self::Desired, observed: Option<&Self::Observed>) -> Self::Plan;

    /// Why carrying out `plan` deletes the resource to make it anew, if it does.
    fn replaces(_plan: &Self::Plan) -> Option<String> {
        None
    }

    /// Every way the resource found differs from `desired`, one line each, read without changing
    /// anything (what `plan` would act on one step at a time).
    fn drift(
        &self,
        clients: &AwsClients,
        desired: &Self::Desired,
        observed: &Self::Observed,
    ) -> impl Future<Output = Result<Vec<String>, Error>> + Send;

    /// The name and ARN of the resource found.
    fn reference(&self, clients: &AwsClients, observed: &Self::Observed) -> AwsResourceRef;

    /// Carries out `plan` on the resource found as `observed` (the pipeline's by then), adding to
    /// `outcome` what it changed, what is pending, and a change refused while the resource works.
    fn apply(
        &self,
        clients: &AwsClients,
        owner: &Owner,
        desired: &Self::Desired,
        observed: Option<Self::Observed>,
        plan: Self::Plan,
        outcome: Outcome,
    ) -> impl Future<Output = Result<(AwsResourceRef, Outcome), Error>> + Send;

    /// Deletes the resource found as `observed`, which is the pipeline's.
    fn remove(&self, clients: &AwsClients, observed: Self::Observed) -> impl Future<Output = Result<Removal, Error>> + Send;
}

/// Creates `resource` or brings it one step towards `desired`. One found under its name is
/// changed only once it is `owner`'s; one the pipeline may claim is claimed on its tags as they
/// are now, not as read lately.
pub async fn ensure<R: AwsResource>(
    resource: &R,
    clients: &AwsClients,
    owner: &Owner,
    desired: &R::Desired,
) -> Result<(AwsResourceRef, Outcome), Error> {
    let mut outcome = Outcome::default();
    let mut observed = resource.observe(clients, TagsAs::Cached).await?;
    if let Some(found) = &observed
        && claimable(resource, owner, found)?.is_some()
    {
        observed = resource.observe(clients, TagsAs::Fresh).await?;
        if let Some(found) = &observed
            && let Some(why) = claimable(resource, owner, found)?
        {
            resource.claim(clients, owner, found).await?;
            outcome.changed(format!("{} {}: {why}", R::KIND, resource.name()));
        }
    } else if let Some(found) = &observed {
        retag(resource, clients, owner, found, &mut outcome).await?;
    }
    let plan = R::plan(desired, observed.as_ref());
    if let Some(why) = R::replaces(&plan).filter(|_| !owner.policy.deletes()) {
        let what = format!("{} {}", R::KIND, resource.name());
        return Err(Error::DeletionRefused { what, why: format!("to be created again: {why}") });
    }
    resource.apply(clients, owner, desired, observed, plan, outcome).await
}

/// Brings the tags of `found`, the pipeline's, up to `spec.tags`: adds those it lacks or holds
/// with another value, and removes those the spec dropped.
async fn retag<R: AwsResource>(
    resource: &R,
    clients: &AwsClients,
    owner: &Owner,
    found: &R::Observed,
    outcome: &mut Outcome,
) -> Result<(), Error> {
    let Some(tags) = R::tags_of(found) else { return Ok(()) };
    let (missing, dropped) = owner.tag_changes(&tags);
    let named = format!("{} {}", R::KIND, resource.name());
    if !missing.is_empty() {
        resource.claim(clients, owner, found).await?;
        let tagged: Vec<String> = missing.iter().map(|(key, value)| format!("{key}={value}")).collect();
        outcome.changed(format!("{named}: tagged {}", tagged.join(", ")));
    }
    if !dropped.is_empty() {
        resource.untag(clients, found, &dropped).await?;
        outcome.changed(format!("{named}: removed the tags {} (dropped from spec.tags)", dropped.join(", ")));
    }
    Ok(())
}

/// How the tags of `found` differ from `owner`'s, for people.
fn tag_drift<R: AwsResource>(owner: &Owner, found: &R::Observed) -> Vec<String> {
    let Some(tags) = R::tags_of(found) else { return Vec::new() };
    let (missing, dropped) = owner.tag_changes(&tags);
    let mut drift: Vec<String> = missing.iter().map(|(key, value)| format!("lacks the tag {key}={value}")).collect();
    drift.extend(dropped.iter().map(|key| format!("holds the tag {key}, which spec.tags dropped")));
    drift
}

/// A resource as observing finds it: its reference when it exists, and how it differs from
/// what the pipeline's spec asks.
#[derive(Debug, Default)]
pub struct Inspection {
    pub found: Option<AwsResourceRef>,
    pub drift: Vec<String>,
}

/// Reads `resource` and says how it differs from `desired` and whose it is, changing nothing;
/// one somebody else holds is read too, so that a stack to adopt can be compared before.
pub async fn inspect<R: AwsResource>(resource: &R, clients: &AwsClients, owner: &Owner, desired: &R::Desired) -> Result<Inspection, Error> {
    let named = format!("{} {}", R::KIND, resource.name());
    let Some(found) = resource.observe(clients, TagsAs::Fresh).await? else {
        return Ok(Inspection { found: None, drift: vec![format!("{named}: missing (would be created)")] });
    };
    let mut drift = match standing(resource, owner, &found) {
        Standing::Ours => tag_drift::<R>(owner, &found).into_iter().map(|difference| format!("{named}: {difference}")).collect(),
        Standing::Retag(why) => vec![format!("{named}: would be tagged as this pipeline's ({why})")],
        Standing::Foreign(holder) => vec![format!("{named}: not this pipeline's ({holder})")],
    };
    drift.extend(resource.drift(clients, desired, &found).await?.into_iter().map(|difference| format!("{named}: {difference}")));
    Ok(Inspection { found: Some(resource.reference(clients, &found)), drift })
}

/// `Ok(None)` when the resource found is `owner`'s, `Ok(Some(why))` when `owner` may claim it, and
/// `NotOwned` (terminal) when it is somebody else's.
pub fn claimable<R: AwsResource>(resource: &R, owner: &Owner, observed: &R::Observed) -> Result<Option<String>, Error> {
    standing(resource, owner, observed).claim(R::KIND, &resource.name())
}

/// Whose the resource found is for `owner`, who may take over one nothing claims (no ownership
/// tag) when `spec.adopt` names it. One another pipeline made never is: that takes `adoptFrom`.
fn standing<R: AwsResource>(resource: &R, owner: &Owner, observed: &R::Observed) -> Standing {
    match R::whose(owner, observed) {
        Standing::Foreign(Holder::Untagged) if owner.adopting.contains(&resource.name()) => {
            Standing::Retag("adopted, as spec.adopt names it".to_owned())
        }
        standing => standing,
    }
}

/// Deletes `resource` if it is `owner`'s by its tags as they are now (one only adoptable is not
/// the pipeline's until adopted); one that is somebody else's is left, and the answer says whose.
pub async fn delete<R: AwsResource>(resource: &R, clients: &AwsClients, owner: &Owner) -> Result<Removal, Error> {
    let Some(found) = resource.observe(clients, TagsAs::Fresh).await? else { return Ok(Removal::Gone) };
    let deleting = Owner { adopt_from: None, ..owner.clone() };
    match R::whose(&deleting, &found) {
        Standing::Ours | Standing::Retag(_) => resource.remove(clients, found).await,
        Standing::Foreign(holder) => Ok(Removal::Left(format!("kept {} {}: {holder}", R::KIND, resource.name()))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::aws::fake::{FakeAws, owner};
    use crate::aws::streams::Stream;

    const DESCRIBED: &str = r#"{"StreamDescriptionSummary":{"StreamName":"p-input","StreamARN":"arn:aws:kinesis:eu-west-1:123456789012:stream/p-input","StreamStatus":"ACTIVE","StreamModeDetails":{"StreamMode":"PROVISIONED"},"RetentionPeriodHours":24,"StreamCreationTimestamp":1700000000,"EnhancedMonitoring":[],"OpenShardCount":2}}"#;
    /// Tagged by the earlier pipeline `u-0` of the same namespace and name, in this cluster.
    const EARLIER: &str = r#"{"Tags":[{"Key":"metrics.dev/pipeline","Value":"team-a/p"},{"Key":"metrics.dev/pipeline-uid","Value":"u-0"},{"Key":"metrics.dev/cluster","Value":"c-1"}],"HasMoreTags":false}"#;

    #[tokio::test]
    async fn a_resource_made_by_hand_is_taken_over_only_when_spec_adopt_names_it() {
        let hand_made = r#"{"Tags":[{"Key":"team","Value":"metrics"}],"HasMoreTags":false}"#;
        let aws = FakeAws::start(BTreeMap::from([
            ("DescribeStreamSummary", (200, DESCRIBED)),
            ("ListTagsForStream", (200, hand_made)),
            ("AddTagsToStream", (200, "{}")),
            ("UpdateShardCount", (200, "{}")),
        ]))
        .await;
        let desired = metrics_pipeline_api::config::StreamConfig {
            capacity: metrics_pipeline_api::config::StreamCapacity::Provisioned { shards: 2 },
            retention_hours: 24,
        };
        let stream = Stream::input("p-input");
        let refused = ensure(&stream, &aws.clients, &owner(), &desired).await.expect_err("not named: not taken");
        assert_eq!(refused.reason(), "NotOwned");
        let preview = inspect(&stream, &aws.clients, &Owner { adopting: vec!["p-input".into()], ..owner() }, &desired).await.unwrap();
        assert_eq!(preview.drift, ["Kinesis stream p-input: would be tagged as this pipeline's (adopted, as spec.adopt names it)"]);
        assert!(!aws.called().iter().any(|operation| operation == "AddTagsToStream"), "{:?}", aws.called());

        let adopting = Owner { adopting: vec!["p-input".into()], ..owner() };
        let (_, outcome) = ensure(&stream, &aws.clients, &adopting, &desired).await.unwrap();
        assert_eq!(outcome.changes, ["Kinesis stream p-input: adopted, as spec.adopt names it"]);
        assert!(aws.called().iter().any(|operation| operation == "AddTagsToStream"), "{:?}", aws.called());
        let left = delete(&stream, &aws.clients, &adopting).await.unwrap();
        assert!(matches!(left, Removal::Left(_)), "deleted only once its tags say it is the pipeline's: {left:?}");
    }

    #[tokio::test]
    async fn a_resource_the_pipeline_may_adopt_is_claimed_by_ensure_but_never_deleted_before() {
        let aws = FakeAws::start(BTreeMap::from([
            ("DescribeStreamSummary", (200, DESCRIBED)),
            ("ListTagsForStream", (200, EARLIER)),
            ("AddTagsToStream", (200, "{}")),
            ("DeleteStream", (200, "{}")),
        ]))
        .await;
        let adopting = Owner { adopt_from: Some("u-0".into()), ..owner() };
        let stream = Stream::input("p-input");
        let removal = delete(&stream, &aws.clients, &adopting).await.unwrap();
        assert!(matches!(&removal, Removal::Left(why) if why.contains("kept Kinesis stream p-input")), "{removal:?}");
        assert!(!aws.called().iter().any(|operation| operation == "DeleteStream"), "{:?}", aws.called());

        let desired = metrics_pipeline_api::config::StreamConfig {
            capacity: metrics_pipeline_api::config::StreamCapacity::Provisioned { shards: 2 },
            retention_hours: 24,
        };
        let (_, outcome) = ensure(&stream, &aws.clients, &adopting, &desired).await.unwrap();
        assert!(outcome.changes.iter().any(|change| change.contains("taken over from pipeline team-a/p (uid u-0)")), "{outcome:?}");
        assert!(aws.called().iter().any(|operation| operation == "AddTagsToStream"), "{:?}", aws.called());
        let other = delete(&stream, &aws.clients, &owner()).await.unwrap();
        assert!(matches!(other, Removal::Left(_)), "without adoptFrom the earlier pipeline's stream is not this one's: {other:?}");
    }
}
