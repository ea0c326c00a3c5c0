//! AWS creates and scales asynchronously: a new Kinesis stream is `CREATING` and a scaled one
//! `UPDATING` for seconds to minutes, a new Firehose delivery stream `CREATING`; moto is
//! `ACTIVE` at once. For a while after each such call the proxy reports the transitional status
//! in the describe answers and refuses what AWS refuses meanwhile (`ResourceInUseException`,
//! 400), so a caller must wait for `ACTIVE`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::protocol::{AwsError, Call, Service};

/// The status a successful `call` puts its resource in, if it starts a transition.
pub fn begins(call: &Call) -> Option<&'static str> {
    match (call.service, call.operation.as_str()) {
        (Service::Kinesis, "CreateStream") | (Service::Firehose, "CreateDeliveryStream") => Some("CREATING"),
        (Service::Kinesis, "UpdateShardCount" | "UpdateStreamMode") => Some("UPDATING"),
        _ => None,
    }
}

/// Where a describe answer carries the status, for the calls that read it.
pub fn status_field(call: &Call) -> Option<&'static str> {
    match (call.service, call.operation.as_str()) {
        (Service::Kinesis, "DescribeStreamSummary") => Some("/StreamDescriptionSummary/StreamStatus"),
        (Service::Kinesis, "DescribeStream") => Some("/StreamDescription/StreamStatus"),
        (Service::Firehose, "DescribeDeliveryStream") => Some("/DeliveryStreamDescription/DeliveryStreamStatus"),
        _ => None,
    }
}

/// Whether AWS refuses `call` while its resource is not `ACTIVE`.
pub fn needs_active(call: &Call) -> bool {
    matches!(
        (call.service, call.operation.as_str()),
        (Service::Kinesis, "UpdateShardCount" | "UpdateStreamMode") | (Service::Firehose, "UpdateDestination")
    )
}

/// The refusal of a call that needs an `ACTIVE` resource.
pub fn not_active(call: &Call, status: &str, account: &str) -> AwsError {
    let name = call.resource.as_deref().unwrap_or_default();
    let message = match call.service {
        Service::Kinesis => format!("Stream {name} under account {account} not ACTIVE, instead in state {status}"),
        _ => format!("Firehose {name} under account {account} is not ACTIVE, instead in state {status}"),
    };
    AwsError::new(400, "ResourceInUseException", message)
}

/// The describe answer `body` with `status` at `field`; `None` when it has no such field.
pub fn with_status(body: &[u8], field: &str, status: &str) -> Option<Vec<u8>> {
    let mut answer: serde_json::Value = serde_json::from_slice(body).ok()?;
    *answer.pointer_mut(field)? = status.into();
    serde_json::to_vec(&answer).ok()
}

/// Resources in transition, by service, region and name, until when.
#[derive(Debug, Default)]
pub struct Transitions {
    until: HashMap<(Service, String), (Instant, &'static str)>,
}

impl Transitions {
    pub fn begin(&mut self, call: &Call, status: &'static str, now: Instant, duration: Duration) {
        if let Some(key) = key(call) {
            self.until.insert(key, (now + duration, status));
        }
    }

    /// The transitional status of `call`'s resource at `now`, if it is still in one.
    pub fn status(&mut self, call: &Call, now: Instant) -> Option<&'static str> {
        let key = key(call)?;
        match self.until.get(&key) {
            Some(&(until, status)) if now < until => Some(status),
            Some(_) => {
                self.until.remove(&key);
                None
            }
            None => None,
        }
    }
}

fn key(call: &Call) -> Option<(Service, String)> {
    Some((call.service, format!("{}/{}", call.region.as_deref().unwrap_or_default(), call.resource.as_deref()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(service: Service, operation: &str, name: &str) -> Call {
        Call { service, operation: operation.into(), region: Some("eu-west-1".into()), resource: Some(name.into()) }
    }

    #[test]
    fn a_created_or_scaled_resource_is_in_transition_for_a_while() {
        let mut transitions = Transitions::default();
        let start = Instant::now();
        let create = call(Service::Kinesis, "CreateStream", "in");
        assert_eq!(begins(&create), Some("CREATING"));
        transitions.begin(&create, "CREATING", start, Duration::from_secs(5));
        let describe = call(Service::Kinesis, "DescribeStreamSummary", "in");
        assert_eq!(transitions.status(&describe, start + Duration::from_secs(4)), Some("CREATING"));
        assert_eq!(transitions.status(&call(Service::Kinesis, "DescribeStreamSummary", "out"), start), None);
        assert_eq!(transitions.status(&call(Service::Firehose, "DescribeDeliveryStream", "in"), start), None, "per service");
        assert_eq!(transitions.status(&describe, start + Duration::from_secs(5)), None);
        assert_eq!(begins(&call(Service::Kinesis, "UpdateShardCount", "in")), Some("UPDATING"));
        assert_eq!(begins(&describe), None);
    }

    #[test]
    fn describe_answers_show_the_transition_and_updates_wait_for_active() {
        let summary = br#"{"StreamDescriptionSummary":{"StreamName":"in","StreamStatus":"ACTIVE","OpenShardCount":1}}"#;
        let describe = call(Service::Kinesis, "DescribeStreamSummary", "in");
        let updating = with_status(summary, status_field(&describe).unwrap(), "UPDATING").unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&updating).unwrap();
        assert_eq!(
            (answer["StreamDescriptionSummary"]["StreamStatus"].as_str(), answer["StreamDescriptionSummary"]["OpenShardCount"].as_u64()),
            (Some("UPDATING"), Some(1))
        );
        assert_eq!(with_status(b"{}", "/StreamDescription/StreamStatus", "UPDATING"), None);

        let update = call(Service::Kinesis, "UpdateShardCount", "in");
        assert!(needs_active(&update) && !needs_active(&describe));
        let refusal = not_active(&update, "UPDATING", "123456789012");
        assert_eq!(
            (refusal.code.as_str(), refusal.message.as_str()),
            ("ResourceInUseException", "Stream in under account 123456789012 not ACTIVE, instead in state UPDATING")
        );
    }
}
