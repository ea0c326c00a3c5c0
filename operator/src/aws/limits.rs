//! Request rates below AWS's documented per-account, per-region quotas, so that a thousand
//! pipelines reconciling (all of them at once after a restart) never make AWS throttle the
//! operator, or the other tools of the account that share the quota. Kinesis and Firehose
//! document their control-plane rates per operation; Glue, IAM and S3 document none for what the
//! operator calls, so they are not limited here (the SDK and the backoff retry their throttling).
//!
//! Every client of one region shares one [`RateLimits`]: a call waits for its operation's slot in
//! the HTTP connector, below the SDK's retries, so retries are paced too. A call whose slot would
//! be more than [`MAX_WAIT`] away is not sent: it fails at once as throttled, and the reconcile
//! backs off, instead of holding a turn while others queue behind it.
//!
//! The budget is this process's: two operators in one account and region (two clusters) share
//! AWS's quota but not these limits, so together they may reach it; AWS then throttles, and the
//! SDK and the backoff retry. Give each its share with fewer concurrent reconciles if that shows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, SharedHttpClient, SharedHttpConnector, http_client_fn,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use tokio::time::Instant;

use crate::error::RateLimited;

/// Calls per second the operator allows itself per operation and region: 80 % of what AWS
/// documents, leaving room for people and other tools in the account. Kinesis: "KDS Control
/// Plane API Limits", docs.aws.amazon.com/streams/latest/dev/service-sizes-and-limits.html
/// (ListTagsForStream 5, DescribeStreamSummary 20, AddTagsToStream, CreateStream, DeleteStream
/// 5; UpdateShardCount "TPS over 10 will trigger the LimitExceededException"; the retention
/// changes 5). UpdateStreamMode has no documented rate and is paced like the other stream
/// changes. GetShardIterator and GetRecords are limited per shard, not per account: a deletion's
/// drain reads each shard one page at a time, and Kinesis's throttling of a shard is retried by
/// the SDK. Firehose: five
/// invocations per second per operation, a hard limit, docs.aws.amazon.com/firehose/latest/dev/limits.html.
/// Keyed by `X-Amz-Target`, the operation's name on the wire.
const BUDGET: &[(&str, f64)] = &[
    ("Kinesis_20131202.AddTagsToStream", 4.0),
    ("Kinesis_20131202.CreateStream", 4.0),
    ("Kinesis_20131202.DecreaseStreamRetentionPeriod", 4.0),
    ("Kinesis_20131202.DeleteStream", 4.0),
    ("Kinesis_20131202.DescribeStreamSummary", 16.0),
    ("Kinesis_20131202.IncreaseStreamRetentionPeriod", 4.0),
    ("Kinesis_20131202.ListTagsForStream", 4.0),
    ("Kinesis_20131202.UpdateShardCount", 8.0),
    ("Kinesis_20131202.UpdateStreamMode", 4.0),
    ("Firehose_20150804.CreateDeliveryStream", 4.0),
    ("Firehose_20150804.DeleteDeliveryStream", 4.0),
    ("Firehose_20150804.DescribeDeliveryStream", 4.0),
    ("Firehose_20150804.ListTagsForDeliveryStream", 4.0),
    ("Firehose_20150804.TagDeliveryStream", 4.0),
    ("Firehose_20150804.UpdateDestination", 4.0),
];

/// One region's request rates, per operation: a token bucket each, holding one call (no burst:
/// a bucket of a second's calls lets almost two seconds' worth through within one, above AWS's
/// rate), whose tokens a waiting call reserves ahead (it goes negative), so that calls go in the
/// order they came.
#[derive(Debug, Default)]
pub struct RateLimits {
    buckets: Mutex<HashMap<&'static str, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    updated: Instant,
}

/// The longest a call waits for its slot; beyond it, the call fails as throttled.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

impl RateLimits {
    /// How long a call of `operation` (its `X-Amz-Target`) made now must wait, its slot taken;
    /// `None`, and no slot taken, when that would be longer than [`MAX_WAIT`].
    pub fn reserve(&self, operation: &str) -> Option<Duration> {
        let Some(&(name, rate)) = BUDGET.iter().find(|(name, _)| *name == operation) else { return Some(Duration::ZERO) };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("no panics while holding the lock");
        let bucket = buckets.entry(name).or_insert(Bucket { rate, tokens: 1.0, updated: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * bucket.rate).min(1.0);
        bucket.updated = now;
        let wait = Duration::from_secs_f64((1.0 - bucket.tokens).max(0.0) / bucket.rate);
        if wait > MAX_WAIT {
            return None;
        }
        bucket.tokens -= 1.0;
        Some(wait)
    }

    /// Gives back the slot of a call of `operation` that was dropped before it was sent (its
    /// reconcile was cancelled), so that the calls booked after it do not wait for nothing.
    fn refund(&self, operation: &str) {
        let mut buckets = self.buckets.lock().expect("no panics while holding the lock");
        if let Some(bucket) = BUDGET.iter().find(|(name, _)| *name == operation).and_then(|(name, _)| buckets.get_mut(name)) {
            bucket.tokens = (bucket.tokens + 1.0).min(1.0);
        }
    }

    /// `inner`, each call first waiting for its slot in `limits`.
    pub fn around(limits: Arc<RateLimits>, inner: SharedHttpClient) -> SharedHttpClient {
        http_client_fn(move |settings, components| {
            SharedHttpConnector::new(Paced { inner: inner.http_connector(settings, components), limits: limits.clone() })
        })
    }
}

#[derive(Debug)]
struct Paced {
    inner: SharedHttpConnector,
    limits: Arc<RateLimits>,
}

impl HttpConnector for Paced {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let operation = request.headers().get("x-amz-target").unwrap_or_default().to_owned();
        let Some(wait) = self.limits.reserve(&operation) else {
            // No error kind: the SDK does not retry it (a retry would spend its retry tokens and
            // hold the reconcile's turn); the reconcile backs off (see `RateLimited`).
            let refused = RateLimited { operation, booked_ahead: MAX_WAIT };
            return HttpConnectorFuture::ready(Err(ConnectorError::other(refused.into(), None)));
        };
        let inner = self.inner.clone();
        let unsent = Unsent { limits: self.limits.clone(), operation: Some(operation) };
        HttpConnectorFuture::new(async move {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            unsent.sent();
            inner.call(request).await
        })
    }
}

/// A paced call's slot while it waits: given back if the call is dropped before it goes out.
struct Unsent {
    limits: Arc<RateLimits>,
    operation: Option<String>,
}

impl Unsent {
    fn sent(mut self) {
        self.operation.take();
    }
}

impl Drop for Unsent {
    fn drop(&mut self) {
        if let Some(operation) = &self.operation {
            self.limits.refund(operation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn calls_beyond_an_operations_budget_wait_their_turn_and_others_do_not() {
        let limits = RateLimits::default();
        let tags = "Kinesis_20131202.ListTagsForStream";
        let waits: Vec<Duration> = (0..3).map(|_| limits.reserve(tags).unwrap()).collect();
        assert_eq!(waits, [Duration::ZERO, Duration::from_millis(250), Duration::from_millis(500)], "four a second, in order, no burst");
        assert_eq!(limits.reserve("Kinesis_20131202.DescribeStreamSummary"), Some(Duration::ZERO), "each operation has its own quota");
        assert_eq!(limits.reserve("AWSGlue.GetTable"), Some(Duration::ZERO), "no documented quota, no limit");
        tokio::time::advance(Duration::from_secs(10)).await;
        let again: Vec<Duration> = (0..2).map(|_| limits.reserve(tags).unwrap()).collect();
        assert_eq!(again, [Duration::ZERO, Duration::from_millis(250)], "idle time saves up no burst");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_booked_beyond_the_longest_wait_is_refused_and_a_dropped_one_gives_its_slot_back() {
        let limits = RateLimits::default();
        let tags = "Kinesis_20131202.ListTagsForStream";
        let booked: Vec<Duration> = std::iter::from_fn(|| limits.reserve(tags)).take(100).collect();
        assert_eq!(booked.last(), Some(&MAX_WAIT), "4 a second for ten seconds: {booked:?}");
        assert_eq!(booked.len(), 41);
        assert_eq!(limits.reserve(tags), None, "eleven seconds ahead: refused, no slot taken");
        limits.refund(tags);
        assert_eq!(limits.reserve(tags), Some(MAX_WAIT), "a cancelled call's slot goes to the next");
    }

    /// Counts the attempts that reach the connector it wraps.
    #[derive(Debug)]
    struct Counting(SharedHttpConnector, Arc<std::sync::atomic::AtomicU32>);

    impl HttpConnector for Counting {
        fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.0.call(request)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_refused_by_the_limit_fails_as_throttled_at_once_without_reaching_aws() {
        let limits = Arc::new(RateLimits::default());
        while limits.reserve("Kinesis_20131202.ListTagsForStream").is_some() {}
        let attempts = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let paced = RateLimits::around(limits, metrics_pipeline_runtime::sdk::http_client());
        let counted = attempts.clone();
        let counting = http_client_fn(move |settings, components| {
            SharedHttpConnector::new(Counting(paced.http_connector(settings, components), counted.clone()))
        });
        // Nothing listens there: a call that went out would fail as an outage. The SDK's default
        // retries are on.
        let sdk = crate::aws::fake::sdk_at("http://127.0.0.1:1").to_builder().http_client(counting).build();
        let kinesis = aws_sdk_kinesis::Client::new(&sdk);
        let answer = kinesis.list_tags_for_stream().stream_name("s").send().await;
        let error = crate::error::AwsError::from_sdk("reading tags", answer.expect_err("refused"));
        assert_eq!(error.kind, crate::error::AwsErrorKind::Throttled, "{error}");
        assert!(error.message.contains("rate limit for Kinesis_20131202.ListTagsForStream"), "{error}");
        assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 1, "tried once: the SDK does not retry it");
    }
}
