//! The input and output Kinesis streams: created with the spec's capacity and retention, tagged,
//! changed in place (shard count, capacity mode, retention) one update at a time; the output
//! stream read for its newest records before the delivery stream that reads it is deleted.

use std::time::{Duration, SystemTime};

use aws_sdk_kinesis::types::{ScalingType, ShardIteratorType, StreamMode, StreamModeDetails, StreamStatus};
use metrics_pipeline_api::config::{StreamCapacity, StreamConfig};
use metrics_pipeline_api::pipeline::AwsResourceRef;

use super::{AwsClients, AwsResource, TagsAs};
use crate::error::{AwsErrorKind, AwsResultExt, Error};
use crate::managed::{Outcome, Owner, Removal, Standing, tag_pairs};

/// Kinesis's answer for a stream that does not exist.
const NOT_FOUND: &str = "ResourceNotFoundException";

/// A stream as DescribeStreamSummary and ListTagsForStream show it.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedStream {
    pub arn: String,
    pub status: StreamStatus,
    pub capacity: StreamCapacity,
    pub retention_hours: i32,
    pub tags: Vec<(String, String)>,
}

/// One in-place change; Kinesis takes one at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamChange {
    Capacity(StreamCapacity),
    /// One step towards the spec's shard count: see [`next_shard_count`].
    ShardCount(i32),
    Retention {
        from: i32,
        to: i32,
    },
}

/// What to change to make `observed` match `desired`, in the order AWS accepts: capacity mode
/// first (a shard count only applies to a provisioned stream), then shards, then retention.
pub fn changes(desired: &StreamConfig, observed: &ObservedStream) -> Vec<StreamChange> {
    let mut changes = Vec::new();
    match (desired.capacity, observed.capacity) {
        (StreamCapacity::OnDemand, StreamCapacity::Provisioned { .. }) => changes.push(StreamChange::Capacity(StreamCapacity::OnDemand)),
        (StreamCapacity::Provisioned { shards }, StreamCapacity::OnDemand) => {
            changes.push(StreamChange::Capacity(StreamCapacity::Provisioned { shards }));
        }
        (StreamCapacity::Provisioned { shards }, StreamCapacity::Provisioned { shards: current }) if shards != current => {
            changes.push(StreamChange::ShardCount(next_shard_count(current, shards)));
        }
        _ => {}
    }
    if desired.retention_hours != observed.retention_hours {
        changes.push(StreamChange::Retention { from: observed.retention_hours, to: desired.retention_hours });
    }
    changes
}

pub fn arn(region: &str, account_id: &str, name: &str) -> String {
    format!("arn:{}:kinesis:{region}:{account_id}:stream/{name}", super::partition(region))
}

/// Every way `observed` differs from `desired`, for people: what [`changes`] would change, stated
/// whole (a shard count reached in several steps is one difference).
pub fn differences(desired: &StreamConfig, observed: &ObservedStream) -> Vec<String> {
    let capacity = |capacity: StreamCapacity| match capacity {
        StreamCapacity::OnDemand => "ON_DEMAND".to_owned(),
        StreamCapacity::Provisioned { shards } => format!("PROVISIONED with {shards} open shard(s)"),
    };
    let mut differences = Vec::new();
    if desired.capacity != observed.capacity {
        differences.push(format!("capacity is {}, the spec asks {}", capacity(observed.capacity), capacity(desired.capacity)));
    }
    if desired.retention_hours != observed.retention_hours {
        differences
            .push(format!("retention is {} hours, the spec asks {} (retentionHours)", observed.retention_hours, desired.retention_hours));
    }
    differences
}

/// The next UpdateShardCount target on the way from `current` open shards to `target`: AWS
/// refuses more than double or less than half the open shard count in one call, so a larger
/// change takes several, each once the stream is ACTIVE again (1 → 5 is 1 → 2 → 4 → 5).
pub fn next_shard_count(current: i32, target: i32) -> i32 {
    if target > current { target.min(current.saturating_mul(2)) } else { target.max((current + 1) / 2) }
}

/// Every tag of the stream: ListTagsForStream answers a page at a time (`HasMoreTags`), and the
/// owner tag may be on any page once someone else has tagged the stream too.
async fn tags(clients: &AwsClients, name: &str) -> Result<Vec<(String, String)>, Error> {
    let mut tags: Vec<(String, String)> = Vec::new();
    loop {
        let after = tags.last().map(|(key, _)| key.clone());
        let page = (clients.kinesis.list_tags_for_stream())
            .stream_name(name)
            .set_exclusive_start_tag_key(after)
            .send()
            .await
            .or_aws(|| format!("listing tags of Kinesis stream {name}"))?;
        let more = page.has_more_tags && !page.tags.is_empty();
        tags.extend(page.tags.into_iter().map(|tag| (tag.key, tag.value.unwrap_or_default())));
        if !more {
            return Ok(tags);
        }
    }
}

/// One of a pipeline's Kinesis streams, and its place in the spec for the fix an error suggests.
pub struct Stream<'a> {
    pub name: &'a str,
    field: &'static str,
}

impl<'a> Stream<'a> {
    pub fn input(name: &'a str) -> Self {
        Self { name, field: "spec.streams.input" }
    }

    pub fn output(name: &'a str) -> Self {
        Self { name, field: "spec.streams.output" }
    }
}

/// What to do about a stream: Kinesis takes one change at a time, each once the stream is
/// ACTIVE again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamPlan {
    Create,
    /// Kinesis is working on it (CREATING, UPDATING, DELETING).
    Wait(StreamStatus),
    Change(StreamChange),
    Keep,
}

impl AwsResource for Stream<'_> {
    const KIND: &'static str = "Kinesis stream";
    type Desired = StreamConfig;
    type Observed = ObservedStream;
    type Plan = StreamPlan;

    fn name(&self) -> String {
        self.name.to_owned()
    }

    async fn observe(&self, clients: &AwsClients, tags_as: TagsAs) -> Result<Option<ObservedStream>, Error> {
        let name = self.name;
        let described = clients.kinesis.describe_stream_summary().stream_name(name).send().await;
        let Some(described) = described.absent_on(&[NOT_FOUND], || format!("describing Kinesis stream {name}"))? else {
            return Ok(None);
        };
        let summary = described.stream_description_summary.expect("DescribeStreamSummary always describes");
        let capacity = match summary.stream_mode_details.as_ref().map(StreamModeDetails::stream_mode) {
            Some(StreamMode::OnDemand) => StreamCapacity::OnDemand,
            _ => StreamCapacity::Provisioned { shards: summary.open_shard_count },
        };
        let created = summary.stream_creation_timestamp.secs().to_string();
        let tags = clients.tags.read_as(tags_as, &summary.stream_arn, created, tags(clients, name)).await?;
        Ok(Some(ObservedStream {
            arn: summary.stream_arn,
            status: summary.stream_status,
            capacity,
            retention_hours: summary.retention_period_hours,
            tags,
        }))
    }

    fn whose(owner: &Owner, observed: &ObservedStream) -> Standing {
        owner.standing(tag_pairs(&observed.tags))
    }

    async fn claim(&self, clients: &AwsClients, owner: &Owner, observed: &ObservedStream) -> Result<(), Error> {
        clients.tags.forget(&observed.arn);
        tag(clients, self.name, owner).await
    }

    fn tags_of(observed: &ObservedStream) -> Option<Vec<(String, String)>> {
        Some(observed.tags.clone())
    }

    async fn untag(&self, clients: &AwsClients, observed: &ObservedStream, keys: &[String]) -> Result<(), Error> {
        let name = self.name;
        clients.tags.forget(&observed.arn);
        let request = clients.kinesis.remove_tags_from_stream().stream_name(name).set_tag_keys(Some(keys.to_vec()));
        request.send().await.or_aws(|| format!("removing tags from Kinesis stream {name}"))?;
        Ok(())
    }

    fn plan(desired: &StreamConfig, observed: Option<&ObservedStream>) -> StreamPlan {
        match observed {
            None => StreamPlan::Create,
            Some(observed) if observed.status != StreamStatus::Active => StreamPlan::Wait(observed.status.clone()),
            Some(observed) => changes(desired, observed).into_iter().next().map_or(StreamPlan::Keep, StreamPlan::Change),
        }
    }

    async fn drift(&self, _clients: &AwsClients, desired: &StreamConfig, observed: &ObservedStream) -> Result<Vec<String>, Error> {
        Ok(differences(desired, observed))
    }

    fn reference(&self, _clients: &AwsClients, observed: &ObservedStream) -> AwsResourceRef {
        AwsResourceRef { name: self.name.to_owned(), arn: Some(observed.arn.clone()) }
    }

    /// A change AWS refuses leaves an ACTIVE stream usable as it is: it comes back as `degraded`,
    /// so that what reads or writes the stream goes on.
    async fn apply(
        &self,
        clients: &AwsClients,
        owner: &Owner,
        desired: &StreamConfig,
        observed: Option<ObservedStream>,
        plan: StreamPlan,
        mut outcome: Outcome,
    ) -> Result<(AwsResourceRef, Outcome), Error> {
        let name = self.name;
        let reference = AwsResourceRef { name: name.to_owned(), arn: observed.as_ref().map(|observed| observed.arn.clone()) };
        match (plan, observed) {
            (StreamPlan::Create, _) | (_, None) => {
                create(clients, name, owner, desired).await?;
                outcome.changed(format!("created Kinesis stream {name}"));
                outcome.pending = Some(format!("Kinesis stream {name} is being created"));
            }
            (StreamPlan::Keep, Some(_)) => {}
            (StreamPlan::Wait(status), Some(_)) => outcome.pending = Some(format!("Kinesis stream {name} is {}", status.as_str())),
            (StreamPlan::Change(change), Some(observed)) => {
                if let StreamChange::Retention { from, to } = change
                    && to < from
                {
                    // Records older than the new retention go: only on the tags as they are now.
                    owner.standing(tag_pairs(&tags(clients, name).await?)).claim(Self::KIND, name)?;
                }
                let applied = async {
                    apply(clients, name, &observed, &change).await.map_err(|error| refusal(error, name, desired, &observed, self.field))
                };
                match clients.ask(&format!("Kinesis stream {name}: {change}"), applied).await {
                    Ok(()) => {
                        outcome.changed(format!("Kinesis stream {name}: {change}"));
                        outcome.pending = Some(format!("Kinesis stream {name} is updating ({change})"));
                    }
                    Err(error) => outcome.degraded = Some(error),
                }
            }
        }
        Ok((reference, outcome))
    }

    async fn remove(&self, clients: &AwsClients, observed: ObservedStream) -> Result<Removal, Error> {
        let name = self.name;
        if observed.status != StreamStatus::Deleting {
            let request = clients.kinesis.delete_stream().stream_name(name).enforce_consumer_deletion(true);
            if request.send().await.absent_on(&[NOT_FOUND], || format!("deleting Kinesis stream {name}"))?.is_none() {
                return Ok(Removal::Gone);
            }
        }
        match self.observe(clients, TagsAs::Fresh).await? {
            None => Ok(Removal::Gone),
            Some(_) => Ok(Removal::Going(format!("Kinesis stream {name}"))),
        }
    }
}

/// A quota refusal of a scaling says which limit and what the user can do; others stay as they are.
fn refusal(error: Error, name: &str, desired: &StreamConfig, observed: &ObservedStream, field: &str) -> Error {
    let (StreamCapacity::Provisioned { shards: desired }, StreamCapacity::Provisioned { shards: current }) =
        (desired.capacity, observed.capacity)
    else {
        return error;
    };
    match error {
        Error::Aws(source) if source.kind == AwsErrorKind::QuotaExceeded => {
            Error::ShardScalingRefused { stream: name.to_owned(), current, desired, field: format!("{field}.shardCount"), source }
        }
        error => error,
    }
}

async fn create(clients: &AwsClients, name: &str, owner: &Owner, desired: &StreamConfig) -> Result<(), Error> {
    let request = clients.kinesis.create_stream().stream_name(name);
    let request = match desired.capacity {
        StreamCapacity::Provisioned { shards } => request.shard_count(shards),
        StreamCapacity::OnDemand => request.stream_mode_details(mode(StreamMode::OnDemand)),
    };
    let request = owner.tags().into_iter().fold(request, |request, (key, value)| request.tags(key, value));
    // A retention other than the default 24 h follows once the stream is ACTIVE, as a change.
    request.send().await.or_aws(|| format!("creating Kinesis stream {name}"))?;
    // CreateStream's tags are newer than some emulators: there, tag again (idempotent).
    if clients.endpoint_override { tag(clients, name, owner).await } else { Ok(()) }
}

/// Adds the pipeline's tags (AddTagsToStream keeps the others).
async fn tag(clients: &AwsClients, name: &str, owner: &Owner) -> Result<(), Error> {
    let request = clients.kinesis.add_tags_to_stream().stream_name(name);
    let request = owner.tags().into_iter().fold(request, |request, (key, value)| request.tags(key, value));
    request.send().await.or_aws(|| format!("tagging Kinesis stream {name}"))?;
    Ok(())
}

async fn apply(clients: &AwsClients, name: &str, observed: &ObservedStream, change: &StreamChange) -> Result<(), Error> {
    let action = || format!("updating Kinesis stream {name} ({change})");
    let kinesis = &clients.kinesis;
    match *change {
        StreamChange::Capacity(capacity) => {
            let target = if capacity == StreamCapacity::OnDemand { StreamMode::OnDemand } else { StreamMode::Provisioned };
            kinesis.update_stream_mode().stream_arn(&observed.arn).stream_mode_details(mode(target)).send().await.map(drop).or_aws(action)
        }
        StreamChange::ShardCount(shards) => (kinesis.update_shard_count())
            .stream_name(name)
            .target_shard_count(shards)
            .scaling_type(ScalingType::UniformScaling)
            .send()
            .await
            .map(drop)
            .or_aws(action),
        StreamChange::Retention { from, to } if to > from => {
            (kinesis.increase_stream_retention_period()).stream_name(name).retention_period_hours(to).send().await.map(drop).or_aws(action)
        }
        StreamChange::Retention { to, .. } => {
            (kinesis.decrease_stream_retention_period()).stream_name(name).retention_period_hours(to).send().await.map(drop).or_aws(action)
        }
    }
}

fn mode(mode: StreamMode) -> StreamModeDetails {
    StreamModeDetails::builder().stream_mode(mode).build().expect("stream mode is set")
}

impl std::fmt::Display for StreamChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Capacity(StreamCapacity::OnDemand) => f.write_str("capacity mode to ON_DEMAND"),
            Self::Capacity(StreamCapacity::Provisioned { .. }) => f.write_str("capacity mode to PROVISIONED"),
            Self::ShardCount(shards) => write!(f, "shard count to {shards}"),
            Self::Retention { to, .. } => write!(f, "retention to {to} hours"),
        }
    }
}

/// The newest record written to a stream within a window of time.
#[derive(Debug, PartialEq, Eq)]
pub enum Newest {
    /// None in the window (or no stream).
    Nothing,
    /// It arrived then.
    At(jiff::Timestamp),
    /// A shard holds more than one pass reads: newer records than those read may be there.
    NotReached,
}

/// When the newest record written to the stream within the last `window` arrived: every shard
/// (closed ones too) read from `window` ago to its end. The deletion of the delivery stream that
/// reads this stream waits on it.
pub async fn newest_record(clients: &AwsClients, name: &str, window: Duration) -> Result<Newest, Error> {
    let action = || format!("reading Kinesis stream {name} for what Firehose may not have delivered yet");
    let kinesis = &clients.kinesis;
    let since = aws_smithy_types::DateTime::from(SystemTime::now() - window);
    let mut shards = Vec::new();
    let mut next_token = None;
    loop {
        // ListShards takes either the stream's name or the previous page's token.
        let request = match next_token.take() {
            Some(token) => kinesis.list_shards().next_token(token),
            None => kinesis.list_shards().stream_name(name),
        };
        let Some(page) = request.send().await.absent_on(&[NOT_FOUND], action)? else { return Ok(Newest::Nothing) };
        shards.extend(page.shards.unwrap_or_default().into_iter().map(|shard| shard.shard_id));
        match page.next_token {
            Some(token) => next_token = Some(token),
            None => break,
        }
    }
    let mut newest = None;
    for shard in shards {
        let iterator = (kinesis.get_shard_iterator().stream_name(name).shard_id(shard))
            .shard_iterator_type(ShardIteratorType::AtTimestamp)
            .timestamp(since)
            .send()
            .await
            .or_aws(action)?;
        let mut iterator = iterator.shard_iterator;
        // A shard is read to its end in a few pages; the bound keeps a busy one from holding
        // the deletion's pass.
        for _ in 0..MAX_PAGES_PER_SHARD {
            // No iterator: a closed shard read to its end.
            let Some(current) = iterator.take() else { break };
            let page = kinesis.get_records().shard_iterator(current).send().await.or_aws(action)?;
            let arrivals =
                page.records.iter().filter_map(|record| jiff::Timestamp::from_second(record.approximate_arrival_timestamp?.secs()).ok());
            newest = newest.max(arrivals.max());
            if page.millis_behind_latest.unwrap_or(0) == 0 {
                break;
            }
            iterator = page.next_shard_iterator;
        }
        if iterator.is_some() {
            return Ok(Newest::NotReached);
        }
    }
    Ok(newest.map_or(Newest::Nothing, Newest::At))
}

/// GetRecords pages read per shard by [`newest_record`] (10,000 records each at most).
const MAX_PAGES_PER_SHARD: usize = 20;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::aws::fake::{FakeAws, owner};
    use crate::aws::resource::{delete, ensure, inspect};
    use crate::managed::Standing;

    const INPUT: Stream<'static> = Stream { name: "p-input", field: "spec.streams.input" };
    const DESCRIBED: &str = r#"{"StreamDescriptionSummary":{"StreamName":"p-input","StreamARN":"arn:aws:kinesis:eu-west-1:123456789012:stream/p-input","StreamStatus":"ACTIVE","StreamModeDetails":{"StreamMode":"PROVISIONED"},"RetentionPeriodHours":24,"StreamCreationTimestamp":1700000000,"EnhancedMonitoring":[],"OpenShardCount":2}}"#;
    const OURS: &str = r#"{"Tags":[{"Key":"metrics.dev/pipeline","Value":"team-a/p"},{"Key":"metrics.dev/pipeline-uid","Value":"u-1"},{"Key":"metrics.dev/cluster","Value":"c-1"}],"HasMoreTags":false}"#;

    #[tokio::test]
    async fn observing_a_stream_someone_else_made_reads_it_and_says_how_it_differs_without_a_change() {
        let hand_made = r#"{"Tags":[{"Key":"team","Value":"metrics"}],"HasMoreTags":false}"#;
        let aws =
            FakeAws::start(BTreeMap::from([("DescribeStreamSummary", (200, DESCRIBED)), ("ListTagsForStream", (200, hand_made))])).await;
        let desired = StreamConfig { capacity: StreamCapacity::Provisioned { shards: 4 }, retention_hours: 48 };
        let inspection = inspect(&INPUT, &aws.clients, &owner(), &desired).await.unwrap();
        assert_eq!(inspection.found.and_then(|found| found.arn).as_deref(), Some("arn:aws:kinesis:eu-west-1:123456789012:stream/p-input"));
        assert_eq!(
            inspection.drift,
            [
                "Kinesis stream p-input: not this pipeline's (it has no metrics.dev/pipeline tag, so something else made it)",
                "Kinesis stream p-input: capacity is PROVISIONED with 2 open shard(s), the spec asks PROVISIONED with 4 open shard(s)",
                "Kinesis stream p-input: retention is 24 hours, the spec asks 48 (retentionHours)",
            ]
        );
        assert_eq!(aws.called(), ["DescribeStreamSummary", "ListTagsForStream"], "read, nothing else");

        let missing = r#"{"__type":"ResourceNotFoundException","message":"not found"}"#;
        let empty = FakeAws::start(BTreeMap::from([("DescribeStreamSummary", (400, missing))])).await;
        let inspection = inspect(&INPUT, &empty.clients, &owner(), &desired).await.unwrap();
        assert_eq!((inspection.found, inspection.drift), (None, vec!["Kinesis stream p-input: missing (would be created)".to_owned()]));
    }

    #[tokio::test]
    async fn a_shard_not_read_to_its_end_in_one_pass_may_hold_newer_records() {
        // Two hours behind the tip after every page: an output stream someone floods.
        let behind = r#"{"Records":[{"SequenceNumber":"1","ApproximateArrivalTimestamp":1700000000,"Data":"e30=","PartitionKey":"k"}],"NextShardIterator":"it-2","MillisBehindLatest":7200000}"#;
        let aws = FakeAws::start(BTreeMap::from([
            ("ListShards", (200, r#"{"Shards":[{"ShardId":"shardId-0","HashKeyRange":{"StartingHashKey":"0","EndingHashKey":"1"},"SequenceNumberRange":{"StartingSequenceNumber":"0"}}]}"#)),
            ("GetShardIterator", (200, r#"{"ShardIterator":"it-1"}"#)),
            ("GetRecords", (200, behind)),
        ]))
        .await;
        let newest = newest_record(&aws.clients, "p-output", Duration::from_secs(90)).await.unwrap();
        assert_eq!(newest, Newest::NotReached, "not the 2023 record read: newer ones may follow");
    }

    #[tokio::test]
    async fn tags_read_once_serve_the_reconciles_that_follow_but_never_a_deletion() {
        let mut aws = FakeAws::start(BTreeMap::from([
            ("DescribeStreamSummary", (200, DESCRIBED)),
            ("ListTagsForStream", (200, OURS)),
            ("DeleteStream", (200, "{}")),
        ]))
        .await;
        aws.clients.tags = std::sync::Arc::new(crate::aws::TagCache::new(Duration::from_secs(3600)));
        let desired = StreamConfig { capacity: StreamCapacity::Provisioned { shards: 2 }, retention_hours: 24 };
        for _ in 0..3 {
            let (_, outcome) = ensure(&INPUT, &aws.clients, &owner(), &desired).await.unwrap();
            assert!(outcome.changes.is_empty() && outcome.degraded.is_none(), "{outcome:?}");
        }
        let reads = || aws.called().iter().filter(|operation| *operation == "ListTagsForStream").count();
        assert_eq!(reads(), 1, "three reconciles, one read of the tags");
        delete(&INPUT, &aws.clients, &owner()).await.unwrap();
        assert!(reads() >= 2, "a deletion reads the tags afresh");
        assert!(aws.called().iter().any(|operation| operation == "DeleteStream"));
    }

    #[tokio::test]
    async fn a_stream_is_claimed_only_on_its_tags_as_they_are_now() {
        // Read lately as tagged before UIDs and clusters were (the first cluster to look claims
        // it); another cluster's pipeline has claimed it since.
        let another_cluster = r#"{"Tags":[{"Key":"metrics.dev/pipeline","Value":"team-a/p"},{"Key":"metrics.dev/pipeline-uid","Value":"u-9"},{"Key":"metrics.dev/cluster","Value":"c-2"}],"HasMoreTags":false}"#;
        let mut aws = FakeAws::start(BTreeMap::from([
            ("DescribeStreamSummary", (200, DESCRIBED)),
            ("ListTagsForStream", (200, another_cluster)),
            ("AddTagsToStream", (200, "{}")),
        ]))
        .await;
        aws.clients.tags = std::sync::Arc::new(crate::aws::TagCache::new(Duration::from_secs(3600)));
        let legacy = vec![("metrics.dev/pipeline".to_owned(), "team-a/p".to_owned())];
        let arn = "arn:aws:kinesis:eu-west-1:123456789012:stream/p-input";
        let created = "1700000000".to_owned();
        aws.clients.tags.read(arn, created, std::future::ready(Ok(legacy))).await.unwrap();

        let desired = StreamConfig { capacity: StreamCapacity::Provisioned { shards: 2 }, retention_hours: 24 };
        let error = ensure(&INPUT, &aws.clients, &owner(), &desired).await.expect_err("another cluster's");
        assert_eq!(error.reason(), "NotOwned", "{error}");
        assert!(!aws.called().iter().any(|operation| operation == "AddTagsToStream"), "{:?}", aws.called());
    }

    #[test]
    fn a_large_shard_count_change_is_made_in_steps_of_at_most_double_or_half() {
        let step = |from: i32, to: i32| {
            let desired = StreamConfig { capacity: StreamCapacity::Provisioned { shards: to }, retention_hours: 24 };
            changes(&desired, &observed(StreamCapacity::Provisioned { shards: from }, 24))
        };
        // (open shards, spec) → the next UpdateShardCount target
        for (from, to, next) in
            [(1, 5, 2), (2, 5, 4), (4, 5, 5), (3, 6, 6), (1, 2, 2), (5, 1, 3), (3, 1, 2), (2, 1, 1), (8, 3, 4), (4, 3, 3)]
        {
            assert_eq!(step(from, to), [StreamChange::ShardCount(next)], "{from} → {to}");
        }
    }

    /// Ensures our ACTIVE 2-shard stream `p-input` with `shards` in the spec, UpdateShardCount
    /// answered with `refusal`.
    /// Two reconciles asking for `shards`, whose scaling AWS answers with `refusal`: what the
    /// second found, and the scalings asked by the first (with the SDK's retries) and by both.
    async fn scaling_refused(refusal: &'static str, shards: i32) -> (AwsResourceRef, Outcome, (usize, usize)) {
        let aws = FakeAws::start(BTreeMap::from([
            ("DescribeStreamSummary", (200, DESCRIBED)),
            ("ListTagsForStream", (200, OURS)),
            ("UpdateShardCount", (400, refusal)),
        ]))
        .await;
        let desired = StreamConfig { capacity: StreamCapacity::Provisioned { shards }, retention_hours: 24 };
        let scalings = || aws.called().iter().filter(|operation| *operation == "UpdateShardCount").count();
        ensure(&INPUT, &aws.clients, &owner(), &desired).await.unwrap();
        let first = scalings();
        let (reference, outcome) = ensure(&INPUT, &aws.clients, &owner(), &desired).await.unwrap();
        (reference, outcome, (first, scalings()))
    }

    #[tokio::test]
    async fn a_refused_scaling_past_the_daily_limit_is_not_retried_as_throttling() {
        let limit = r#"{"__type":"LimitExceededException","message":"Exceeded the limit of 10 UpdateShardCount calls per rolling 24-hour period for stream p-input under account 123456789012."}"#;
        let (reference, outcome, asked) = scaling_refused(limit, 3).await;
        assert_eq!(asked.1, asked.0, "the refusal holds until the next resync: the second reconcile does not ask again");
        assert_eq!(reference.arn.as_deref(), Some("arn:aws:kinesis:eu-west-1:123456789012:stream/p-input"), "still usable");
        let error = outcome.degraded.expect("the refusal is reported");
        assert!(error.is_terminal(), "a quota is not throttling: {error}");
        assert_eq!(error.reason(), "ScalingLimitExceeded", "{error}");
        let message = error.to_string();
        for expected in [
            "`p-input` from 2 towards 3 shards",
            "Exceeded the limit of 10 UpdateShardCount calls",
            "set spec.streams.input.shardCount to 2",
        ] {
            assert!(message.contains(expected), "{expected}: {message}");
        }
        assert!(outcome.pending.is_none() && outcome.changes.is_empty(), "{:?}", outcome.changes);
    }

    #[tokio::test]
    async fn a_throttled_scaling_is_retried_soon_and_the_stream_stays_usable() {
        let rate = r#"{"__type":"LimitExceededException","message":"Rate exceeded for stream p-input under account 123456789012."}"#;
        let (_, outcome, asked) = scaling_refused(rate, 4).await;
        assert_eq!(asked.1, 2 * asked.0, "throttling is retried");
        let error = outcome.degraded.expect("the refusal is reported");
        assert_eq!(error.aws_kind(), Some(AwsErrorKind::Throttled), "{error}");
        assert!(!error.is_terminal());
    }

    #[tokio::test]
    async fn the_owner_tag_is_found_on_a_later_page_of_tags() {
        let first = r#"{"Tags":[{"Key":"a","Value":"1"},{"Key":"b","Value":"2"}],"HasMoreTags":true}"#;
        let aws = FakeAws::start_in_turn(BTreeMap::from([
            ("DescribeStreamSummary", vec![(200, DESCRIBED)]),
            ("ListTagsForStream", vec![(200, first), (200, OURS)]),
        ]))
        .await;
        let observed = INPUT.observe(&aws.clients, TagsAs::Fresh).await.unwrap().expect("the stream exists");
        let standing = owner().standing(tag_pairs(&observed.tags));
        assert_eq!(standing, Standing::Ours, "{:?}", observed.tags);
        let pages = aws.bodies("ListTagsForStream");
        assert_eq!(pages.len(), 2, "{pages:?}");
        assert!(pages[1].contains(r#""ExclusiveStartTagKey":"b""#), "the second page starts after the first's last key: {}", pages[1]);
    }

    fn observed(capacity: StreamCapacity, retention_hours: i32) -> ObservedStream {
        ObservedStream { arn: "arn".into(), status: StreamStatus::Active, capacity, retention_hours, tags: Vec::new() }
    }

    #[test]
    fn a_stream_as_specified_needs_no_change() {
        let desired = StreamConfig { capacity: StreamCapacity::Provisioned { shards: 2 }, retention_hours: 24 };
        assert_eq!(changes(&desired, &observed(StreamCapacity::Provisioned { shards: 2 }, 24)), []);
        let on_demand = StreamConfig { capacity: StreamCapacity::OnDemand, retention_hours: 24 };
        assert_eq!(changes(&on_demand, &observed(StreamCapacity::OnDemand, 24)), []);
    }

    #[test]
    fn shard_count_and_retention_changes_are_found_in_order() {
        let desired = StreamConfig { capacity: StreamCapacity::Provisioned { shards: 4 }, retention_hours: 48 };
        assert_eq!(
            changes(&desired, &observed(StreamCapacity::Provisioned { shards: 1 }, 24)),
            [StreamChange::ShardCount(2), StreamChange::Retention { from: 24, to: 48 }]
        );
    }

    #[test]
    fn capacity_mode_changes_before_anything_else() {
        let desired = StreamConfig { capacity: StreamCapacity::OnDemand, retention_hours: 24 };
        assert_eq!(
            changes(&desired, &observed(StreamCapacity::Provisioned { shards: 3 }, 24)),
            [StreamChange::Capacity(StreamCapacity::OnDemand)]
        );
        let back = StreamConfig { capacity: StreamCapacity::Provisioned { shards: 2 }, retention_hours: 24 };
        assert_eq!(
            changes(&back, &observed(StreamCapacity::OnDemand, 24)),
            [StreamChange::Capacity(StreamCapacity::Provisioned { shards: 2 })]
        );
    }
}
