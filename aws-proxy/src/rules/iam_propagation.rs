//! IAM is eventually consistent: a role or policy just created or changed is not usable by
//! Firehose for seconds to minutes. Meanwhile `CreateDeliveryStream` and `UpdateDestination`
//! naming that role fail with `InvalidArgumentException` (400) and one of several messages,
//! depending on which check inside Firehose trips first. These are the messages Firehose gives
//! (as Terraform's AWS provider retries them); the refusals rotate through all of them so a
//! caller must recognise each.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::protocol::AwsError;

/// IAM operations after which a role is not yet usable.
pub const ROLE_CHANGES: [&str; 4] = ["CreateRole", "PutRolePolicy", "UpdateAssumeRolePolicy", "AttachRolePolicy"];

/// Firehose operations that hand Firehose a role to assume.
pub const ROLE_USES: [&str; 2] = ["CreateDeliveryStream", "UpdateDestination"];

/// The refusal messages, in rotation; `denied` is the action and resource the role is "not
/// authorized to" use.
pub fn refusal_message(rotation: usize, role_arn: &str, (action, resource): (&str, &str)) -> String {
    match rotation % 4 {
        0 => format!("Firehose is unable to assume role {role_arn}. Please check the role provided."),
        1 => format!("Role {role_arn} is not authorized to perform: {action} on resource {resource}."),
        2 => "Access was denied when calling Glue. Please ensure that the role specified in the data format conversion configuration has the necessary permissions.".to_owned(),
        _ => "Verify that the IAM role has access to the Elasticsearch domain.".to_owned(),
    }
}

/// Every IAM role ARN in a JSON request body (`RoleARN` fields at any depth).
pub fn role_arns(body: &[u8]) -> Vec<String> {
    fn collect(value: &serde_json::Value, arns: &mut Vec<String>) {
        match value {
            serde_json::Value::String(text) if role_name(text).is_some() => arns.push(text.clone()),
            serde_json::Value::Array(items) => items.iter().for_each(|item| collect(item, arns)),
            serde_json::Value::Object(fields) => fields.values().for_each(|field| collect(field, arns)),
            _ => {}
        }
    }
    let mut arns = Vec::new();
    if let Ok(value) = serde_json::from_slice(body) {
        collect(&value, &mut arns);
    }
    arns.dedup();
    arns
}

/// `name` of `arn:<partition>:iam::<account>:role/<path>/<name>`.
pub fn role_name(arn: &str) -> Option<&str> {
    let (prefix, path) = arn.split_once(":role/")?;
    (prefix.starts_with("arn:") && prefix.contains(":iam::")).then(|| path.rsplit('/').next()).flatten()
}

/// What Firehose checks the role against first: reading the source stream, else writing the bucket.
fn first_checked_access(body: &[u8]) -> (&'static str, String) {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = |pointer: &str| value.pointer(pointer).and_then(serde_json::Value::as_str).map(str::to_owned);
    let bucket = || {
        ["/ExtendedS3DestinationConfiguration/BucketARN", "/ExtendedS3DestinationUpdate/BucketARN", "/S3DestinationConfiguration/BucketARN"]
            .into_iter()
            .find_map(text)
    };
    match text("/KinesisStreamSourceConfiguration/KinesisStreamARN") {
        Some(stream) => ("kinesis:DescribeStream", stream),
        None => ("s3:ListBucket", bucket().unwrap_or_else(|| "the destination bucket".to_owned())),
    }
}

/// When each role last changed, and how many refusals were given since a role last changed.
#[derive(Debug, Default)]
pub struct Propagation {
    changed: HashMap<String, Instant>,
    refusals: usize,
}

impl Propagation {
    /// A change starts the rotation of messages again, so that what a caller sees first after
    /// it does not depend on how often it asked before.
    pub fn role_changed(&mut self, role_name: &str, now: Instant) {
        self.changed.insert(role_name.to_owned(), now);
        self.refusals = 0;
    }

    /// The refusal for a Firehose request naming a role changed less than `delay` before `now`.
    pub fn check(&mut self, body: &[u8], delay: Duration, now: Instant) -> Option<AwsError> {
        let unsettled = role_arns(body).into_iter().find(|arn| {
            role_name(arn).and_then(|name| self.changed.get(name)).is_some_and(|&changed| now.duration_since(changed) < delay)
        })?;
        let (action, resource) = first_checked_access(body);
        let message = refusal_message(self.refusals, &unsettled, (action, &resource));
        self.refusals += 1;
        Some(AwsError::new(400, "InvalidArgumentException", message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE: &str = "arn:aws:iam::123456789012:role/ns-metrics-firehose";

    fn create_delivery_stream(role: &str) -> Vec<u8> {
        serde_json::json!({
            "DeliveryStreamName": "ns-metrics",
            "KinesisStreamSourceConfiguration": {"KinesisStreamARN": "arn:aws:kinesis:eu-west-1:123456789012:stream/out", "RoleARN": role},
            "ExtendedS3DestinationConfiguration": {"RoleARN": role, "BucketARN": "arn:aws:s3:::b"},
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn role_arns_anywhere_in_the_request() {
        assert_eq!(role_arns(&create_delivery_stream(ROLE)), [ROLE]);
        assert_eq!(role_name(ROLE), Some("ns-metrics-firehose"));
        assert_eq!(role_name("arn:aws:iam::123456789012:role/service-role/r"), Some("r"));
        assert_eq!(role_name("arn:aws:s3:::role/x"), None);
        assert!(role_arns(b"not json").is_empty());
    }

    #[test]
    fn refused_until_the_role_settles_with_every_message_in_turn() {
        let mut propagation = Propagation::default();
        let start = Instant::now();
        let body = create_delivery_stream(ROLE);
        assert_eq!(propagation.check(&body, Duration::from_secs(10), start), None, "unchanged roles are usable");
        propagation.role_changed("ns-metrics-firehose", start);
        let messages: Vec<String> = (0..5)
            .map(|i| {
                let error = propagation.check(&body, Duration::from_secs(10), start + Duration::from_secs(i)).unwrap();
                assert_eq!((error.status.as_u16(), error.code.as_str()), (400, "InvalidArgumentException"));
                error.message
            })
            .collect();
        assert!(messages[0].starts_with(&format!("Firehose is unable to assume role {ROLE}")));
        assert_eq!(
            messages[1],
            format!(
                "Role {ROLE} is not authorized to perform: kinesis:DescribeStream on resource arn:aws:kinesis:eu-west-1:123456789012:stream/out."
            )
        );
        assert!(messages[2].starts_with("Access was denied"));
        assert!(messages[3].starts_with("Verify that the IAM role has access"));
        assert_eq!(messages[4], messages[0]);
        assert_eq!(propagation.check(&body, Duration::from_secs(10), start + Duration::from_secs(10)), None);
        assert_eq!(
            propagation.check(&create_delivery_stream("arn:aws:iam::123456789012:role/other"), Duration::from_secs(10), start),
            None
        );
    }
}
