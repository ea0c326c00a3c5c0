//! Reading the input stream: every shard, in order, following resharding, within the GetRecords
//! limits, resuming from checkpointed sequence numbers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{DisplayErrorContext, SdkError};
use aws_sdk_kinesis::operation::get_records::GetRecordsError;
use aws_sdk_kinesis::types::{Shard, ShardIteratorType};
use aws_smithy_types::DateTime;
use futures::future::join_all;
use metrics_pipeline_model::event::EventTime;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::kinesis::decode::DecodedPage;
use crate::kinesis::get_records::{Answer, ChildShard, DivertedBody, InputRecord, Records, parse};
use crate::kinesis::sink::error_code;

/// Kinesis allows 5 GetRecords calls per second per shard.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Most records one GetRecords call may return.
const MAX_RECORDS_PER_CALL: i32 = 10_000;
/// Most GetRecords answers one poll holds. An answer holds at most 10 MiB of records (about
/// 14 MiB as base64 in JSON, freed once read) and its decoded page about 1 MiB (up to the
/// records' size when names are huge), so however many shards are behind, a poll holds at most
/// about 100 MiB at once (150 MiB at worst), inside the Deployment's default 512 MiB limit; the
/// shards left over are read by the next poll.
pub const MAX_READS_PER_POLL: usize = 4;

/// A shard as ListShards describes it: enough to order parents before children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    pub id: String,
    pub parents: Vec<String>,
}

impl From<&Shard> for ShardInfo {
    fn from(shard: &Shard) -> Self {
        let parents = [shard.parent_shard_id(), shard.adjacent_parent_shard_id()].into_iter().flatten().map(str::to_owned);
        Self { id: shard.shard_id().to_owned(), parents: parents.collect() }
    }
}

impl From<&ChildShard> for ShardInfo {
    fn from(child: &ChildShard) -> Self {
        Self { id: child.shard_id.clone(), parents: child.parent_shards.clone() }
    }
}

/// Shards that may be read now: not drained yet, and every parent either drained or gone from
/// the listing (trimmed past retention) and not being read, so a key's events are read in order
/// across a reshard.
pub fn readable_shards<'a>(listed: &'a [ShardInfo], drained: &BTreeSet<String>, reading: &BTreeSet<&str>) -> Vec<&'a str> {
    let listed_ids: BTreeSet<&str> = listed.iter().map(|shard| shard.id.as_str()).collect();
    let parent_done =
        |parent: &String| drained.contains(parent) || !(listed_ids.contains(parent.as_str()) || reading.contains(parent.as_str()));
    listed
        .iter()
        .filter(|shard| !drained.contains(&shard.id))
        .filter(|shard| shard.parents.iter().all(parent_done))
        .map(|shard| shard.id.as_str())
        .collect()
}

/// ListShards may leave out a shard for a moment (a child just after a split, as AWS's own
/// tools have seen): a shard counts as gone only once this many listings in a row lack it.
const LISTINGS_BEFORE_GONE: u32 = 3;

/// Where reading stands, as the checkpoint stores it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamPosition {
    /// Sequence number of the last record taken from each shard being read.
    pub shards: BTreeMap<String, String>,
    /// Shards read to their end (closed by a reshard); their children are readable.
    pub drained: BTreeSet<String>,
    /// With `--initial-position latest`: when the aggregator first started; with
    /// `--read-input-from`, that time. A shard nothing was taken from yet is read from there
    /// (AT_TIMESTAMP), so the start survives restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_since: Option<EventTime>,
}

impl StreamPosition {
    /// A first start: from the oldest record, or from `now` on.
    pub fn first_start(initial: InitialPosition, now: EventTime) -> Self {
        let latest_since = (initial == InitialPosition::Latest).then_some(now);
        Self { latest_since, ..Self::default() }
    }

    /// A first start from `since` on.
    pub fn starting_at(since: EventTime) -> Self {
        Self { latest_since: Some(since), ..Self::default() }
    }

    /// A shard read to its end: its children become readable, and it needs no sequence number.
    fn drain(&mut self, shard: &str) {
        self.shards.remove(shard);
        self.drained.insert(shard.to_owned());
    }

    /// Forgets shards gone from the stream (expired past retention): their children no longer
    /// wait for them, and their sequence numbers are of no use.
    fn forget(&mut self, gone: &BTreeSet<String>) {
        self.drained.retain(|shard| !gone.contains(shard));
        self.shards.retain(|shard, _| !gone.contains(shard));
    }

    /// Where to start reading `shard` when there is no iterator.
    fn start_of(&self, shard: &str) -> ShardStart {
        match (self.shards.get(shard), self.latest_since) {
            (Some(sequence), _) => ShardStart::After(sequence.clone()),
            (None, Some(since)) => ShardStart::At(since),
            (None, None) => ShardStart::TrimHorizon,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ShardStart {
    After(String),
    At(EventTime),
    TrimHorizon,
}

/// Where to start in a shard nothing has been read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InitialPosition {
    /// The oldest record still in the stream: nothing published before the aggregator started
    /// is missed.
    TrimHorizon,
    /// Only records published from now on.
    Latest,
}

/// Records of one GetRecords call.
#[derive(Debug)]
pub struct ShardBatch {
    pub shard: String,
    pub records: Records,
    /// `records`, decoded.
    pub events: DecodedPage,
    pub millis_behind_latest: Option<i64>,
}

/// What one poll brought: record batches, plus shards that appeared or finished.
#[derive(Debug, Default)]
pub struct Poll {
    /// One per GetRecords answer, empty ones included.
    pub batches: Vec<ShardBatch>,
    /// Shards whose call was throttled or failed: how far behind they are is unknown.
    pub unanswered: Vec<String>,
    /// Error codes of the calls that failed (throttling is `throttled`).
    pub errors: Vec<String>,
    /// Shards whose checkpointed position the stream no longer holds (past its retention): read
    /// again from the oldest record.
    pub reset: Vec<String>,
    /// Shards gone from the listing (expired past retention): no longer read.
    pub vanished: Vec<String>,
    /// Shards read from now on: found by ListShards, or named by a drained shard's last answer.
    pub started: Vec<ShardInfo>,
    pub drained: Vec<String>,
    pub throttled: u64,
}

struct ShardReader {
    iterator: Option<String>,
    next_poll: Instant,
    backoff: Backoff,
}

/// The input stream.
pub struct KinesisSource {
    client: Client,
    stream: String,
    poll_interval: Duration,
    discovery_interval: Duration,
    position: StreamPosition,
    readers: BTreeMap<String, ShardReader>,
    /// Known shards the last listings lacked, and in how many listings in a row.
    unlisted: BTreeMap<String, u32>,
    next_discovery: Instant,
}

// One per shard a poll reads, moved once into its batch: boxing the answer would only add an allocation.
#[expect(clippy::large_enum_variant)]
enum Fetch {
    Records {
        records: Records,
        events: DecodedPage,
        next_iterator: Option<String>,
        millis_behind_latest: Option<i64>,
        child_shards: Vec<ChildShard>,
    },
    Throttled,
    IteratorExpired,
    /// The checkpointed sequence number is refused: the stream no longer holds it.
    PositionLost,
    /// The error's code.
    Failed(String),
}

impl Fetch {
    /// An answer, its records decoded.
    fn answered(answer: Answer) -> Self {
        let events = DecodedPage::of(&answer.records);
        let Answer { records, next_shard_iterator, millis_behind_latest, child_shards } = answer;
        let child_shards = child_shards.unwrap_or_default();
        Self::Records { records, events, next_iterator: next_shard_iterator, millis_behind_latest, child_shards }
    }
}

impl KinesisSource {
    /// `position` is the checkpoint's, or [`StreamPosition::first_start`].
    pub fn new(client: Client, stream: String, poll_interval: Duration, position: StreamPosition) -> Self {
        Self {
            client,
            stream,
            poll_interval: poll_interval.max(MIN_POLL_INTERVAL),
            discovery_interval: Duration::from_secs(30),
            position,
            readers: BTreeMap::new(),
            unlisted: BTreeMap::new(),
            next_discovery: Instant::now(),
        }
    }

    pub fn position(&self) -> &StreamPosition {
        &self.position
    }

    pub fn shard_count(&self) -> usize {
        self.readers.len()
    }

    /// Lists the stream's shards, stops reading those gone from it and starts reading those that
    /// became readable; returns (started, vanished).
    pub async fn discover(
        &mut self,
    ) -> Result<(Vec<ShardInfo>, Vec<String>), SdkError<aws_sdk_kinesis::operation::list_shards::ListShardsError>> {
        let mut listed = Vec::new();
        let mut next_token = None;
        loop {
            let request = match next_token.take() {
                Some(token) => self.client.list_shards().next_token(token),
                None => self.client.list_shards().stream_name(&self.stream),
            };
            let page = request.send().await?;
            listed.extend(page.shards().iter().map(ShardInfo::from));
            match page.next_token() {
                Some(token) => next_token = Some(token.to_owned()),
                None => break,
            }
        }
        let gone = self.gone(&listed);
        self.position.forget(&gone);
        let vanished: Vec<String> = gone.into_iter().filter(|shard| self.readers.remove(shard).is_some()).collect();
        for shard in &vanished {
            tracing::warn!(shard, stream = %self.stream, "shard gone from the stream (expired past retention): no longer read");
        }
        let reading: BTreeSet<&str> = self.readers.keys().map(String::as_str).collect();
        let readable: BTreeSet<&str> = readable_shards(&listed, &self.position.drained, &reading).into_iter().collect();
        let started = listed.iter().filter(|shard| readable.contains(shard.id.as_str())).filter(|shard| self.start_reading(shard)).cloned();
        let started = started.collect();
        self.next_discovery = Instant::now() + self.discovery_interval;
        Ok((started, vanished))
    }

    /// Known shards (read, positioned or drained) that [`LISTINGS_BEFORE_GONE`] listings in a row
    /// have lacked.
    fn gone(&mut self, listed: &[ShardInfo]) -> BTreeSet<String> {
        let listed: BTreeSet<&str> = listed.iter().map(|shard| shard.id.as_str()).collect();
        let known: BTreeSet<String> =
            (self.readers.keys().chain(self.position.shards.keys()).chain(&self.position.drained)).cloned().collect();
        self.unlisted.retain(|shard, _| known.contains(shard) && !listed.contains(shard.as_str()));
        for shard in known.into_iter().filter(|shard| !listed.contains(shard.as_str())) {
            *self.unlisted.entry(shard).or_default() += 1;
        }
        let gone: BTreeSet<String> =
            self.unlisted.iter().filter(|(_, listings)| **listings >= LISTINGS_BEFORE_GONE).map(|(shard, _)| shard.clone()).collect();
        self.unlisted.retain(|shard, _| !gone.contains(shard));
        gone
    }

    /// Starts reading `shard` unless it is read already; whether it started.
    fn start_reading(&mut self, shard: &ShardInfo) -> bool {
        if self.readers.contains_key(&shard.id) {
            return false;
        }
        tracing::debug!(shard = shard.id, start = ?self.position.start_of(&shard.id), "reading shard");
        let reader = ShardReader { iterator: None, next_poll: Instant::now(), backoff: Backoff::default() };
        self.readers.insert(shard.id.clone(), reader);
        true
    }

    /// Waits until a shard may be polled again, then calls GetRecords on the shards that may,
    /// concurrently, at most [`MAX_READS_PER_POLL`] of them, those waiting longest first. Returns
    /// early, with nothing, when `deadline` comes first.
    pub async fn poll(&mut self, deadline: Instant) -> Poll {
        let mut poll = Poll::default();
        if Instant::now() >= self.next_discovery {
            match self.discover().await {
                Ok((started, vanished)) => (poll.started, poll.vanished) = (started, vanished),
                Err(error) => {
                    tracing::warn!(error = %DisplayErrorContext(&error), stream = %self.stream, "ListShards failed; retrying later")
                }
            }
        }
        let wake = self.readers.values().map(|reader| reader.next_poll).min().unwrap_or(self.next_discovery).min(self.next_discovery);
        tokio::time::sleep_until(wake.min(deadline)).await;
        let now = Instant::now();
        let (client, stream, position) = (&self.client, &self.stream, &self.position);
        let fetches = reads_due(&self.readers, now).into_iter().map(|(shard, reader)| {
            let (shard, iterator, start) = (shard.clone(), reader.iterator.clone(), position.start_of(shard));
            async move {
                let fetch = fetch(client, stream, &shard, iterator, start).await;
                (shard, fetch)
            }
        });
        for (shard, fetch) in join_all(fetches).await {
            let reader = self.readers.get_mut(&shard).expect("polled shards have readers");
            match fetch {
                Fetch::Records { records, events, next_iterator, millis_behind_latest, child_shards } => {
                    reader.backoff = Backoff::default();
                    let caught_up = records.is_empty() || millis_behind_latest == Some(0);
                    reader.next_poll = Instant::now() + if caught_up { self.poll_interval } else { MIN_POLL_INTERVAL };
                    if let Some(last) = records.last() {
                        self.position.shards.insert(shard.clone(), last.sequence_number.to_owned());
                    }
                    // A closed shard's end names its children; an answer with neither is not one (the
                    // KCL refuses it too): ask again from the last record.
                    let ended = next_iterator.is_none();
                    let drained = ended && !child_shards.is_empty();
                    if ended && !drained {
                        tracing::warn!(shard, "GetRecords answered no next iterator and no child shards; asking again");
                        poll.errors.push("end_without_children".into());
                    }
                    reader.iterator = next_iterator;
                    poll.batches.push(ShardBatch { shard: shard.clone(), records, events, millis_behind_latest });
                    if drained {
                        tracing::debug!(shard, children = ?child_shards, "shard closed and read to its end");
                        self.readers.remove(&shard);
                        self.position.drain(&shard);
                        // Its children, read from this poll on once all their parents are drained (a
                        // merge waits for both); ListShards confirms them soon after.
                        for child in child_shards.iter().map(ShardInfo::from) {
                            if child.parents.iter().all(|parent| self.position.drained.contains(parent)) && self.start_reading(&child) {
                                poll.started.push(child);
                            }
                        }
                        self.next_discovery = Instant::now();
                        poll.drained.push(shard);
                    }
                }
                Fetch::Throttled => {
                    poll.throttled += 1;
                    reader.next_poll = Instant::now() + reader.backoff.next_delay();
                    poll.unanswered.push(shard);
                }
                Fetch::IteratorExpired => {
                    tracing::debug!(shard, "shard iterator expired; getting a new one");
                    reader.iterator = None;
                    poll.unanswered.push(shard);
                }
                Fetch::PositionLost => {
                    let lost = self.position.shards.remove(&shard);
                    tracing::warn!(
                        shard, sequence_number = ?lost, stream = %self.stream,
                        "the stream no longer holds the checkpointed position (past its retention): reading the shard from its oldest record; what expired in between was never read"
                    );
                    reader.iterator = None;
                    poll.reset.push(shard.clone());
                    poll.unanswered.push(shard);
                }
                Fetch::Failed(code) => {
                    reader.next_poll = Instant::now() + reader.backoff.next_delay();
                    // A shard that is gone may be gone from the listing too: look soon.
                    if code == "ResourceNotFoundException" {
                        self.next_discovery = self.next_discovery.min(Instant::now() + Duration::from_secs(5));
                    }
                    poll.errors.push(code);
                    poll.unanswered.push(shard);
                }
            }
        }
        poll
    }
}

/// The shards to read now: those due, waiting longest first, at most [`MAX_READS_PER_POLL`].
fn reads_due(readers: &BTreeMap<String, ShardReader>, now: Instant) -> Vec<(&String, &ShardReader)> {
    let mut due: Vec<(&String, &ShardReader)> = readers.iter().filter(|(_, reader)| reader.next_poll <= now).collect();
    due.sort_by_key(|(_, reader)| reader.next_poll);
    due.truncate(MAX_READS_PER_POLL);
    due
}

/// One GetRecords call, getting an iterator at `start` first when there is none.
async fn fetch(client: &Client, stream: &str, shard: &str, iterator: Option<String>, start: ShardStart) -> Fetch {
    let iterator = match iterator {
        Some(iterator) => iterator,
        None => {
            let request = client.get_shard_iterator().stream_name(stream).shard_id(shard);
            let from_sequence_number = matches!(start, ShardStart::After(_));
            let request = match start {
                ShardStart::After(sequence) => {
                    request.shard_iterator_type(ShardIteratorType::AfterSequenceNumber).starting_sequence_number(sequence)
                }
                ShardStart::At(since) => {
                    request.shard_iterator_type(ShardIteratorType::AtTimestamp).timestamp(DateTime::from_millis(since.0))
                }
                ShardStart::TrimHorizon => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
            };
            match request.send().await {
                Ok(output) => match output.shard_iterator {
                    Some(iterator) => iterator,
                    None => return Fetch::answered(Answer::default()),
                },
                Err(error) if error.as_service_error().is_some_and(|e| e.is_provisioned_throughput_exceeded_exception()) => {
                    return Fetch::Throttled;
                }
                // Not for a sequence number of another shard ("... encodes shardId-..."): a checkpoint
                // that holds one is wrong, and reading the shard again would count it twice.
                Err(error)
                    if from_sequence_number
                        && error.as_service_error().is_some_and(|e| {
                            e.is_invalid_argument_exception() && !e.meta().message().unwrap_or_default().contains("encodes")
                        }) =>
                {
                    return Fetch::PositionLost;
                }
                Err(error) => {
                    tracing::warn!(error = %DisplayErrorContext(&error), shard, "GetShardIterator failed; retrying");
                    return Fetch::Failed(error_code(&error));
                }
            }
        }
    };
    let diverted = DivertedBody::default();
    let call = client.get_records().shard_iterator(iterator).limit(MAX_RECORDS_PER_CALL).customize().interceptor(diverted.clone());
    match call.send().await {
        // Reading an answer and decoding its records cost more than aggregating them (BENCHMARKS.md):
        // the answers of one poll's shards (at most MAX_READS_PER_POLL) are read and decoded at once,
        // on tokio's blocking threads.
        Ok(output) => match diverted.take().map(|body| {
            tokio::task::spawn_blocking(move || {
                let answer = parse(&body);
                drop(body);
                answer.map(Fetch::answered)
            })
        }) {
            Some(reading) => match reading.await {
                Ok(Ok(fetch)) => fetch,
                Ok(Err(problem)) => {
                    tracing::warn!(error = %DisplayErrorContext(&problem), shard, "GetRecords answered what cannot be read; retrying");
                    Fetch::Failed("unreadable_answer".into())
                }
                Err(stopped) => {
                    tracing::warn!(error = %stopped, shard, "reading a GetRecords answer stopped; retrying");
                    Fetch::Failed("unreadable_answer".into())
                }
            },
            // A CBOR answer (only if the client were set to CBOR), read by the SDK and decoded here,
            // on this task.
            None => {
                let mut records = Records::default();
                for record in &output.records {
                    records.push(InputRecord {
                        sequence_number: &record.sequence_number,
                        partition_key: record.partition_key.as_deref().unwrap_or_default(),
                        data: record.data.as_ref(),
                        arrival: record.approximate_arrival_timestamp.and_then(|at| at.to_millis().ok()).map(EventTime),
                    });
                }
                let child_shards = (output.child_shards.iter().flatten())
                    .map(|child| ChildShard { shard_id: child.shard_id.clone(), parent_shards: child.parent_shards.clone() })
                    .collect();
                let child_shards = Some(child_shards);
                Fetch::answered(Answer {
                    records,
                    next_shard_iterator: output.next_shard_iterator,
                    millis_behind_latest: output.millis_behind_latest,
                    child_shards,
                })
            }
        },
        Err(error) => match error.as_service_error() {
            Some(GetRecordsError::ProvisionedThroughputExceededException(_)) => Fetch::Throttled,
            Some(GetRecordsError::ExpiredIteratorException(_)) => Fetch::IteratorExpired,
            _ => {
                tracing::warn!(error = %DisplayErrorContext(&error), shard, "GetRecords failed; retrying");
                Fetch::Failed(error_code(&error))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinesis::decode::InvalidReason;

    fn shard(id: &str, parents: &[&str]) -> ShardInfo {
        ShardInfo { id: id.into(), parents: parents.iter().map(|p| p.to_string()).collect() }
    }

    fn drained(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|id| id.to_string()).collect()
    }

    /// A Kinesis endpoint answering each call with the next of `answers` (status, body).
    async fn kinesis_answering(answers: Vec<(u16, &'static str)>) -> Client {
        use axum::http::StatusCode;
        let answers = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(answers)));
        let router = axum::Router::new().route(
            "/",
            axum::routing::post(async move || {
                let (status, body) = answers.lock().unwrap().pop_front().expect("one answer per call");
                (StatusCode::from_u16(status).unwrap(), [("content-type", "application/x-amz-json-1.1")], body)
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let config = aws_sdk_kinesis::Config::builder()
            .behavior_version_latest()
            .http_client(metrics_pipeline_runtime::sdk::http_client())
            .endpoint_url(endpoint)
            .region(aws_sdk_kinesis::config::Region::new("eu-west-1"))
            .credentials_provider(aws_sdk_kinesis::config::Credentials::new("test", "test", None, None, "test"))
            .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled())
            .build();
        Client::from_conf(config)
    }

    #[tokio::test]
    async fn get_records_answers_are_read_here_and_errors_by_the_sdk() {
        let client = kinesis_answering(vec![
            (200, r#"{"Records":[{"SequenceNumber":"7","Data":"eyJhIjoxfQ==","PartitionKey":"k"}],"NextShardIterator":"B","MillisBehindLatest":0}"#),
            (200, r#"{"Records":[],"ChildShards":[{"ShardId":"s1","ParentShards":["shardId-0"],"HashKeyRange":{"StartingHashKey":"0","EndingHashKey":"1"}}]}"#),
            (400, r#"{"__type":"ProvisionedThroughputExceededException","message":"Rate exceeded"}"#),
            (400, r#"{"__type":"ExpiredIteratorException","message":"Iterator expired"}"#),
            (200, r#"{"Records":[{"SequenceNumber":"8","Data":"%%%","PartitionKey":"k"}],"NextShardIterator":"C"}"#),
            (500, r#"{"__type":"InternalFailure"}"#),
        ])
        .await;
        let fetch = || super::fetch(&client, "in", "shardId-0", Some("A".into()), ShardStart::TrimHorizon);
        let Fetch::Records { records, events, next_iterator, millis_behind_latest, .. } = fetch().await else { panic!("records expected") };
        let record = records.last().expect("one record");
        assert_eq!((records.len(), record.sequence_number, record.data), (1, "7", &br#"{"a":1}"#[..]));
        assert_eq!(events.events().collect::<Vec<_>>(), [Err(InvalidReason::MissingField("componentName"))], "decoded where it was read");
        assert_eq!((next_iterator.as_deref(), millis_behind_latest), (Some("B"), Some(0)));
        let Fetch::Records { records, next_iterator: None, .. } = fetch().await else { panic!("a closed shard's end expected") };
        assert!(records.is_empty());
        assert!(matches!(fetch().await, Fetch::Throttled));
        assert!(matches!(fetch().await, Fetch::IteratorExpired));
        assert!(
            matches!(fetch().await, Fetch::Failed(code) if code == "unreadable_answer"),
            "an answer with a record that is not base64 is refused whole"
        );
        assert!(matches!(fetch().await, Fetch::Failed(code) if code == "InternalFailure"));
    }

    #[tokio::test]
    async fn a_position_the_stream_no_longer_holds_is_told_from_other_refusals() {
        let refused = r#"{"__type":"InvalidArgumentException","message":"StartingSequenceNumber 4959 is past the trim horizon"}"#;
        let client = kinesis_answering(vec![(400, refused), (400, refused)]).await;
        let after = super::fetch(&client, "in", "shardId-0", None, ShardStart::After("4959".into())).await;
        assert!(matches!(after, Fetch::PositionLost), "read again from the oldest record");
        let trim_horizon = super::fetch(&client, "in", "shardId-0", None, ShardStart::TrimHorizon).await;
        assert!(matches!(trim_horizon, Fetch::Failed(code) if code == "InvalidArgumentException"), "no position to lose");
    }

    #[tokio::test]
    async fn shards_gone_from_three_listings_in_a_row_are_no_longer_read() {
        let both = r#"{"Shards":[{"ShardId":"s0","HashKeyRange":{"StartingHashKey":"0","EndingHashKey":"1"},"SequenceNumberRange":{"StartingSequenceNumber":"1"}},{"ShardId":"s1","HashKeyRange":{"StartingHashKey":"2","EndingHashKey":"3"},"SequenceNumberRange":{"StartingSequenceNumber":"1"}}]}"#;
        let one = r#"{"Shards":[{"ShardId":"s1","HashKeyRange":{"StartingHashKey":"2","EndingHashKey":"3"},"SequenceNumberRange":{"StartingSequenceNumber":"1"}}]}"#;
        let client = kinesis_answering(vec![(200, both), (200, one), (200, one), (200, both), (200, one), (200, one), (200, one)]).await;
        let mut source = KinesisSource::new(client, "in".into(), Duration::from_secs(1), StreamPosition::default());
        let (started, vanished) = source.discover().await.unwrap();
        assert_eq!((started.len(), vanished.len()), (2, 0));
        for _ in 0..2 {
            assert_eq!(source.discover().await.unwrap().1, Vec::<String>::new(), "a listing may lack a shard for a moment");
        }
        assert_eq!(source.discover().await.unwrap(), (vec![], vec![]), "listed again: the count starts over");
        for _ in 0..2 {
            assert_eq!(source.discover().await.unwrap().1, Vec::<String>::new());
        }
        assert_eq!(source.discover().await.unwrap(), (vec![], vec!["s0".to_owned()]), "three listings in a row without it");
        assert_eq!(source.shard_count(), 1);
    }

    #[test]
    fn children_wait_until_their_parent_is_drained() {
        let listed = [shard("s0", &[]), shard("s1", &["s0"]), shard("s2", &["s0"])];
        assert_eq!(readable_shards(&listed, &drained(&[]), &BTreeSet::new()), ["s0"]);
        assert_eq!(readable_shards(&listed, &drained(&["s0"]), &BTreeSet::new()), ["s1", "s2"]);
    }

    #[test]
    fn a_merged_shard_waits_for_both_parents() {
        let listed = [shard("a", &[]), shard("b", &[]), shard("ab", &["a", "b"])];
        assert_eq!(readable_shards(&listed, &drained(&["a"]), &BTreeSet::new()), ["b"]);
        assert_eq!(readable_shards(&listed, &drained(&["a", "b"]), &BTreeSet::new()), ["ab"]);
    }

    #[test]
    fn a_parent_trimmed_from_the_stream_no_longer_blocks_its_children() {
        let listed = [shard("s1", &["s0"]), shard("s2", &["s0"])];
        assert_eq!(readable_shards(&listed, &drained(&[]), &BTreeSet::new()), ["s1", "s2"]);
        assert_eq!(readable_shards(&listed, &drained(&[]), &BTreeSet::from(["s0"])), [] as [&str; 0], "unless it is still being read");
    }

    #[test]
    fn a_poll_reads_at_most_four_shards_however_many_are_behind_longest_waiting_first() {
        let now = Instant::now();
        let reader =
            |waiting: u64| ShardReader { iterator: None, next_poll: now - Duration::from_millis(waiting), backoff: Backoff::default() };
        let mut readers: BTreeMap<String, ShardReader> = (0..20).map(|i| (format!("shard-{i:02}"), reader(i))).collect();
        readers.insert("not-due".into(), ShardReader { next_poll: now + Duration::from_secs(1), ..reader(0) });
        let due: Vec<&str> = reads_due(&readers, now).into_iter().map(|(shard, _)| shard.as_str()).collect();
        assert_eq!(due, ["shard-19", "shard-18", "shard-17", "shard-16"], "20 shards behind: one poll holds 4 answers (40 MiB)");
    }

    #[test]
    fn drained_and_expired_shards_leave_the_position() {
        let mut position = StreamPosition::default();
        position.shards.extend([("s0".to_owned(), "10".to_owned()), ("s1".to_owned(), "20".to_owned())]);
        position.drain("s0");
        assert_eq!(position.shards.keys().map(String::as_str).collect::<Vec<_>>(), ["s1"]);
        assert_eq!(position.drained.iter().map(String::as_str).collect::<Vec<_>>(), ["s0"]);
        position.forget(&drained(&["s0", "s1"]));
        assert!(position.shards.is_empty() && position.drained.is_empty(), "{position:?}");
    }

    #[test]
    fn with_latest_a_shard_never_read_starts_at_the_first_start_and_one_read_after_its_last_record() {
        let since = EventTime(1_631_188_800_000);
        let mut position = StreamPosition::first_start(InitialPosition::Latest, since);
        position.shards.insert("s0".into(), "42".into());
        assert_eq!(position.start_of("s0"), ShardStart::After("42".into()));
        assert_eq!(position.start_of("s1"), ShardStart::At(since), "a quiet shard too, after any restart");
        let stored: StreamPosition = serde_json::from_slice(&serde_json::to_vec(&position).unwrap()).unwrap();
        assert_eq!(stored, position);
        assert_eq!(StreamPosition::first_start(InitialPosition::TrimHorizon, since).start_of("s1"), ShardStart::TrimHorizon);
    }
}
