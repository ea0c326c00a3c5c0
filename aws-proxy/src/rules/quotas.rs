//! AWS's documented request rates per account and region, which moto does not enforce: a call
//! above its operation's rate is throttled with the service's own error, as AWS does. One token
//! bucket per (region, service, operation), holding at most one second's calls.
//!
//! Kinesis: "KDS Control Plane API Limits", docs.aws.amazon.com/streams/latest/dev/service-sizes-and-limits.html
//! ("The following limits apply per AWS account per Region"), and each operation's API reference
//! (ListTagsForStream "has a limit of five transactions per second per account"). Firehose:
//! docs.aws.amazon.com/firehose/latest/dev/limits.html, five invocations per second per
//! operation, a hard limit. Glue and IAM document no per-operation rates; per-stream and
//! per-shard rates (retention changes, ListShards, the data plane) are not modelled.

use std::collections::HashMap;
use std::time::Instant;

use crate::protocol::{Call, Service};

/// Calls per second per account and region.
pub const DOCUMENTED: &[(Service, &str, f64)] = &[
    (Service::Kinesis, "AddTagsToStream", 5.0),
    (Service::Kinesis, "CreateStream", 5.0),
    (Service::Kinesis, "DeleteStream", 5.0),
    (Service::Kinesis, "DescribeStream", 10.0),
    (Service::Kinesis, "DescribeStreamSummary", 20.0),
    (Service::Kinesis, "ListStreams", 5.0),
    (Service::Kinesis, "ListTagsForStream", 5.0),
    (Service::Kinesis, "UpdateShardCount", 10.0),
    (Service::Firehose, "CreateDeliveryStream", 5.0),
    (Service::Firehose, "DeleteDeliveryStream", 5.0),
    (Service::Firehose, "DescribeDeliveryStream", 5.0),
    (Service::Firehose, "ListDeliveryStreams", 5.0),
    (Service::Firehose, "ListTagsForDeliveryStream", 5.0),
    (Service::Firehose, "TagDeliveryStream", 5.0),
    (Service::Firehose, "UntagDeliveryStream", 5.0),
    (Service::Firehose, "UpdateDestination", 5.0),
];

/// The token buckets of the calls seen so far.
#[derive(Debug, Default)]
pub struct Quotas {
    buckets: HashMap<(Option<String>, Service, String), (f64, Instant)>,
}

impl Quotas {
    /// Whether `call`, arriving `now`, is within its operation's rate; it takes its token if so.
    pub fn admit(&mut self, call: &Call, now: Instant) -> bool {
        let Some(&(_, _, rate)) =
            DOCUMENTED.iter().find(|(service, operation, _)| *service == call.service && *operation == call.operation)
        else {
            return true;
        };
        let key = (call.region.clone(), call.service, call.operation.clone());
        let (tokens, updated) = self.buckets.entry(key).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*updated).as_secs_f64() * rate).min(rate);
        *updated = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn call(service: Service, operation: &str, region: &str) -> Call {
        Call { service, operation: operation.into(), region: Some(region.into()), resource: None }
    }

    #[test]
    fn calls_above_the_documented_rate_are_throttled_per_operation_and_region() {
        let mut quotas = Quotas::default();
        let start = Instant::now();
        let tags = call(Service::Kinesis, "ListTagsForStream", "eu-west-1");
        let admitted = (0..8).filter(|_| quotas.admit(&tags, start)).count();
        assert_eq!(admitted, 5, "five a second");
        assert!(quotas.admit(&call(Service::Kinesis, "ListTagsForStream", "us-west-2"), start), "another region's quota");
        assert!(quotas.admit(&call(Service::Kinesis, "DescribeStreamSummary", "eu-west-1"), start), "another operation's quota");
        assert!(quotas.admit(&call(Service::Glue, "GetTable", "eu-west-1"), start), "no documented rate");
        assert!(!quotas.admit(&tags, start + Duration::from_millis(100)));
        assert!(quotas.admit(&tags, start + Duration::from_millis(200)), "a token every 200 ms");
        let later = start + Duration::from_secs(60);
        assert_eq!((0..8).filter(|_| quotas.admit(&tags, later)).count(), 5, "idle time refills at most a second's worth");
    }
}
