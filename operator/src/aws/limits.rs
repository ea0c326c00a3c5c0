//! Request rates below AWS's documented per-account, per-region quotas, so that a thousand
//! pipelines reconciling (all of them at once after a restart) never make AWS throttle the
//! operator, or the other tools of the account that share the quota. Kinesis and Firehose
//! document their control-plane rates per operation; Glue, IAM and S3 document none for what the
//! operator calls, so they are not limited here (the SDK and the backoff retry their throttling).
//!
//! Every client of one region shares one [`RateLimits`]: a call waits for its operation's slot in
//! the HTTP connector, below the SDK's retries, so retries are paced too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, SharedHttpClient, SharedHttpConnector, http_client_fn,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use tokio::time::Instant;

/// Calls per second the operator allows itself per operation and region: 80 % of what AWS
/// documents, leaving room for people and other tools in the account. Kinesis: "KDS Control
/// Plane API Limits", docs.aws.amazon.com/streams/latest/dev/service-sizes-and-limits.html
/// (ListTagsForStream 5, DescribeStreamSummary 20, AddTagsToStream, CreateStream, DeleteStream
/// 5; UpdateShardCount "TPS over 10 will trigger the LimitExceededException"). Firehose: five
/// invocations per second per operation, a hard limit, docs.aws.amazon.com/firehose/latest/dev/limits.html.
/// Keyed by `X-Amz-Target`, the operation's name on the wire.
const BUDGET: &[(&str, f64)] = &[
    ("Kinesis_20131202.AddTagsToStream", 4.0),
    ("Kinesis_20131202.CreateStream", 4.0),
    ("Kinesis_20131202.DeleteStream", 4.0),
    ("Kinesis_20131202.DescribeStreamSummary", 16.0),
    ("Kinesis_20131202.ListTagsForStream", 4.0),
    ("Kinesis_20131202.UpdateShardCount", 8.0),
    ("Firehose_20150804.CreateDeliveryStream", 4.0),
    ("Firehose_20150804.DeleteDeliveryStream", 4.0),
    ("Firehose_20150804.DescribeDeliveryStream", 4.0),
    ("Firehose_20150804.ListTagsForDeliveryStream", 4.0),
    ("Firehose_20150804.TagDeliveryStream", 4.0),
    ("Firehose_20150804.UpdateDestination", 4.0),
];

/// One region's request rates, per operation: a token bucket each, holding at most one second's
/// calls, whose tokens a waiting call reserves ahead (it goes negative), so that calls go in
/// the order they came.
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

impl RateLimits {
    /// How long a call of `operation` (its `X-Amz-Target`) made now must wait; its slot is taken.
    pub fn reserve(&self, operation: &str) -> Duration {
        let Some(&(name, rate)) = BUDGET.iter().find(|(name, _)| *name == operation) else { return Duration::ZERO };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("no panics while holding the lock");
        let bucket = buckets.entry(name).or_insert(Bucket { rate, tokens: rate, updated: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * bucket.rate).min(bucket.rate);
        bucket.updated = now;
        bucket.tokens -= 1.0;
        if bucket.tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-bucket.tokens / bucket.rate) }
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
        let operation = request.headers().get("x-amz-target").unwrap_or_default();
        let wait = self.limits.reserve(operation);
        let inner = self.inner.clone();
        HttpConnectorFuture::new(async move {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn calls_beyond_an_operations_budget_wait_their_turn_and_others_do_not() {
        let limits = RateLimits::default();
        let tags = "Kinesis_20131202.ListTagsForStream";
        let waits: Vec<Duration> = (0..6).map(|_| limits.reserve(tags)).collect();
        assert_eq!(&waits[..4], [Duration::ZERO; 4], "a second's worth at once");
        assert_eq!((waits[4], waits[5]), (Duration::from_millis(250), Duration::from_millis(500)), "then four a second, in order");
        assert_eq!(limits.reserve("Kinesis_20131202.DescribeStreamSummary"), Duration::ZERO, "each operation has its own quota");
        assert_eq!(limits.reserve("AWSGlue.GetTable"), Duration::ZERO, "no documented quota, no limit");
        tokio::time::advance(Duration::from_secs(10)).await;
        let again: Vec<Duration> = (0..5).map(|_| limits.reserve(tags)).collect();
        assert_eq!(again.iter().filter(|wait| wait.is_zero()).count(), 4, "idle time refills at most a second's worth");
    }
}
