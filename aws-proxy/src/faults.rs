//! Seeded fault injection: which calls fail, how, and what AWS would answer.
//!
//! Every call in scope draws three numbers from a random stream of its own (service, operation),
//! seeded from the settings' seed. So a call's fate depends only on the seed and on how many
//! calls of the same operation came before it — not on how the operator's, the aggregator's and
//! the tests' other calls interleave — and a run with the same seed and the same calls sees the
//! same faults.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use metrics_pipeline_model::stable_hash::{fnv1a64, fnv1a64_continue};

use crate::protocol::{AwsError, Call, Service};

/// What to inject, how often, and into which calls. Rates are fractions of the calls in scope
/// (0.1 = one call in ten); throttling, server errors, drops and lost answers exclude each
/// other, so their sum is at most 1. Latency is added on top, to `latency_rate` of the calls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultSettings {
    /// Seeds every operation's random stream: the same seed and the same calls give the same faults.
    pub seed: u64,
    /// Answered with the service's throttling error (Kinesis `LimitExceededException` or
    /// `ProvisionedThroughputExceededException`, S3 `SlowDown`, IAM `Throttling`, ...).
    pub throttle_rate: f64,
    /// Answered with a 500 `InternalFailure` or a 503 `ServiceUnavailable` (half each).
    pub error_rate: f64,
    /// Connection closed without an answer; the request never reaches the emulator.
    pub drop_rate: f64,
    /// The emulator carries out the request, then the connection is closed without the answer:
    /// the caller retries something that already happened.
    pub lost_answer_rate: f64,
    /// Added before the call is answered (or dropped).
    #[serde(rename = "latencyMs", with = "millis")]
    pub latency: Duration,
    /// Fraction of the calls in scope that get `latency`.
    pub latency_rate: f64,
    /// The calls faults apply to; empty means every call.
    pub scope: Vec<Selector>,
}

impl Default for FaultSettings {
    fn default() -> Self {
        FaultSettings {
            seed: 0,
            throttle_rate: 0.0,
            error_rate: 0.0,
            drop_rate: 0.0,
            lost_answer_rate: 0.0,
            latency: Duration::ZERO,
            latency_rate: 1.0,
            scope: Vec::new(),
        }
    }
}

impl FaultSettings {
    /// No faults at all.
    pub fn none() -> Self {
        FaultSettings::default()
    }

    /// Whether `call` is in scope.
    pub fn applies_to(&self, call: &Call) -> bool {
        self.scope.is_empty() || self.scope.iter().any(|selector| selector.matches(call))
    }

    /// Rates are fractions, and the exclusive ones add up to at most 1.
    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            ("throttle", self.throttle_rate),
            ("error", self.error_rate),
            ("drop", self.drop_rate),
            ("lost", self.lost_answer_rate),
            ("latency-rate", self.latency_rate),
        ];
        if let Some((name, rate)) = rates.iter().find(|(_, rate)| !(0.0..=1.0).contains(rate)) {
            return Err(format!("{name}={rate} is not a fraction between 0 and 1"));
        }
        let exclusive = self.throttle_rate + self.error_rate + self.drop_rate + self.lost_answer_rate;
        if exclusive > 1.0 {
            return Err(format!("throttle + error + drop + lost = {exclusive}, more than every call"));
        }
        Ok(())
    }
}

/// A service, or one operation of it: `kinesis`, `s3:DeleteObjects`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Selector {
    pub service: Service,
    pub operation: Option<String>,
}

impl Selector {
    pub fn matches(&self, call: &Call) -> bool {
        self.service == call.service && self.operation.as_ref().is_none_or(|operation| *operation == call.operation)
    }
}

impl FromStr for Selector {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (service, operation) = text.split_once(':').map_or((text, None), |(service, operation)| (service, Some(operation.to_owned())));
        Ok(Selector { service: service.parse()?, operation })
    }
}

impl TryFrom<String> for Selector {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<Selector> for String {
    fn from(selector: Selector) -> String {
        selector.to_string()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.operation {
            Some(operation) => write!(f, "{}:{operation}", self.service),
            None => write!(f, "{}", self.service),
        }
    }
}

/// A fault injected into one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Fault {
    Throttle,
    /// 500 `InternalFailure` (or S3 `InternalError`, IAM `ServiceFailure`).
    InternalError,
    /// 503 `ServiceUnavailable`.
    Unavailable,
    /// Closed without an answer, not forwarded.
    Drop,
    /// Forwarded, then closed without the answer.
    LostAnswer,
}

/// What happens to one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub delay: Option<Duration>,
    pub fault: Option<Fault>,
}

/// Maps a call's three uniform draws in [0, 1) to its fate: the first picks the fault by the
/// cumulative rates, the second whether it is delayed, the third 500 or 503.
pub fn decide(settings: &FaultSettings, [fault_draw, latency_draw, kind_draw]: [f64; 3]) -> Decision {
    let server_error = if kind_draw < 0.5 { Fault::InternalError } else { Fault::Unavailable };
    let bands = [
        (settings.drop_rate, Fault::Drop),
        (settings.lost_answer_rate, Fault::LostAnswer),
        (settings.throttle_rate, Fault::Throttle),
        (settings.error_rate, server_error),
    ];
    let mut upper = 0.0;
    let fault = bands.into_iter().find_map(|(rate, fault)| {
        upper += rate;
        (fault_draw < upper).then_some(fault)
    });
    let delay = (!settings.latency.is_zero() && latency_draw < settings.latency_rate).then_some(settings.latency);
    Decision { delay, fault }
}

/// The settings in force and one random stream per (service, operation).
#[derive(Debug)]
pub struct FaultStreams {
    settings: FaultSettings,
    streams: HashMap<(Service, String), Xoshiro256PlusPlus>,
}

impl FaultStreams {
    pub fn new(settings: FaultSettings) -> Self {
        FaultStreams { settings, streams: HashMap::new() }
    }

    pub fn settings(&self) -> &FaultSettings {
        &self.settings
    }

    /// The next call's fate. Calls out of scope draw nothing.
    pub fn next(&mut self, call: &Call) -> Decision {
        if !self.settings.applies_to(call) {
            return Decision::default();
        }
        let seed = self.settings.seed;
        let stream = self.streams.entry((call.service, call.operation.clone())).or_insert_with(|| {
            let stream_id = fnv1a64_continue(fnv1a64(call.service.to_string().as_bytes()), call.operation.as_bytes());
            Xoshiro256PlusPlus::seed_from_u64(seed ^ stream_id)
        });
        let draws = [stream.random(), stream.random(), stream.random()];
        decide(&self.settings, draws)
    }
}

/// Kinesis operations that are throttled per shard, with `ProvisionedThroughputExceededException`;
/// every other Kinesis operation is throttled per account or stream with `LimitExceededException`.
const KINESIS_DATA_PLANE: [&str; 5] = ["GetRecords", "GetShardIterator", "PutRecord", "PutRecords", "SubscribeToShard"];

/// The error AWS answers `call` with when it throttles it. Kinesis says `Rate exceeded` for
/// throttling and something else for quotas, which is how a caller tells the two
/// `LimitExceededException`s apart.
pub fn throttling_error(call: &Call, account: &str) -> AwsError {
    let stream = call.resource.as_deref();
    match call.service {
        Service::Kinesis if KINESIS_DATA_PLANE.contains(&call.operation.as_str()) => {
            let message = match stream {
                Some(stream) => format!("Rate exceeded for stream {stream} under account {account}."),
                None => format!("Rate exceeded for shard under account {account}."),
            };
            AwsError::new(400, "ProvisionedThroughputExceededException", message)
        }
        Service::Kinesis => {
            let message = match stream {
                Some(stream) => format!("Rate exceeded for stream {stream} under account {account}."),
                None => format!("Rate exceeded for account {account}."),
            };
            AwsError::new(400, "LimitExceededException", message)
        }
        Service::Firehose if call.operation.starts_with("PutRecord") => AwsError::new(503, "ServiceUnavailableException", "Slow down."),
        Service::Firehose => AwsError::new(400, "LimitExceededException", "Rate exceeded"),
        Service::Glue | Service::Other => AwsError::new(400, "ThrottlingException", "Rate exceeded"),
        // S3 Control documents no throttling code for its tagging calls: S3's is assumed.
        Service::S3 | Service::S3Control => AwsError::new(503, "SlowDown", "Please reduce your request rate."),
        Service::Iam | Service::Sts => AwsError::new(400, "Throttling", "Rate exceeded"),
    }
}

/// The 500 or 503 each service answers when it fails on its side.
pub fn server_error(call: &Call, fault: Fault) -> AwsError {
    let unavailable = "The request has failed due to a temporary failure of the server.";
    let internal = "The request processing has failed because of an unknown error, exception or failure.";
    match (call.service, fault) {
        (Service::S3 | Service::S3Control, Fault::Unavailable) => {
            AwsError::new(503, "ServiceUnavailable", "Service is unable to handle request.")
        }
        (Service::S3 | Service::S3Control, _) => AwsError::new(500, "InternalError", "We encountered an internal error. Please try again."),
        (_, Fault::Unavailable) => AwsError::new(503, "ServiceUnavailable", unavailable),
        (Service::Iam, _) => AwsError::new(500, "ServiceFailure", internal),
        _ => AwsError::new(500, "InternalFailure", internal),
    }
}

/// Durations as whole milliseconds in the control API's JSON.
pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(service: Service, operation: &str) -> Call {
        Call { service, operation: operation.into(), region: None, resource: Some("s".into()) }
    }

    #[test]
    fn draws_fall_into_the_bands_of_the_rates() {
        let settings =
            FaultSettings { drop_rate: 0.1, lost_answer_rate: 0.1, throttle_rate: 0.2, error_rate: 0.2, ..FaultSettings::none() };
        let fate = |draw| decide(&settings, [draw, 0.9, 0.7]).fault;
        assert_eq!(fate(0.05), Some(Fault::Drop));
        assert_eq!(fate(0.15), Some(Fault::LostAnswer));
        assert_eq!(fate(0.35), Some(Fault::Throttle));
        assert_eq!(fate(0.55), Some(Fault::Unavailable));
        assert_eq!(decide(&settings, [0.55, 0.0, 0.2]).fault, Some(Fault::InternalError));
        assert_eq!(fate(0.65), None);
        assert_eq!(decide(&FaultSettings::none(), [0.0, 0.0, 0.0]), Decision::default());
    }

    #[test]
    fn latency_goes_to_its_share_of_calls() {
        let settings = FaultSettings { latency: Duration::from_millis(200), latency_rate: 0.25, ..FaultSettings::none() };
        assert_eq!(decide(&settings, [0.9, 0.2, 0.0]).delay, Some(Duration::from_millis(200)));
        assert_eq!(decide(&settings, [0.9, 0.3, 0.0]).delay, None);
    }

    #[test]
    fn same_seed_same_faults_whatever_else_interleaves() {
        let settings = FaultSettings { seed: 7, throttle_rate: 0.3, error_rate: 0.1, ..FaultSettings::none() };
        let puts = call(Service::Kinesis, "PutRecords");
        let mut alone = FaultStreams::new(settings.clone());
        let expected: Vec<_> = (0..200).map(|_| alone.next(&puts)).collect();
        let mut interleaved = FaultStreams::new(settings.clone());
        let seen: Vec<_> = (0..200)
            .map(|i| {
                for _ in 0..i % 3 {
                    interleaved.next(&call(Service::S3, "PutObject"));
                }
                interleaved.next(&puts)
            })
            .collect();
        assert_eq!(seen, expected);
        let faults = expected.iter().filter(|decision| decision.fault.is_some()).count();
        assert!((50..110).contains(&faults), "{faults} faults in 200 calls at 40%");

        let mut other_seed = FaultStreams::new(FaultSettings { seed: 8, ..settings });
        assert_ne!((0..200).map(|_| other_seed.next(&puts)).collect::<Vec<_>>(), expected);
    }

    #[test]
    fn scope_limits_faults_to_services_or_operations() {
        let scope = vec!["s3".parse().unwrap(), "kinesis:PutRecords".parse().unwrap()];
        let mut streams = FaultStreams::new(FaultSettings { throttle_rate: 1.0, scope, ..FaultSettings::none() });
        assert_eq!(streams.next(&call(Service::S3, "GetObject")).fault, Some(Fault::Throttle));
        assert_eq!(streams.next(&call(Service::Kinesis, "PutRecords")).fault, Some(Fault::Throttle));
        assert_eq!(streams.next(&call(Service::Kinesis, "GetRecords")).fault, None);
        assert_eq!(streams.next(&call(Service::Iam, "GetRole")).fault, None);
    }

    #[test]
    fn rates_must_be_fractions_of_every_call() {
        assert!(
            FaultSettings { throttle_rate: 0.6, error_rate: 0.5, ..FaultSettings::none() }
                .validate()
                .unwrap_err()
                .contains("more than every call")
        );
        assert!(FaultSettings { drop_rate: 1.5, ..FaultSettings::none() }.validate().unwrap_err().contains("drop=1.5"));
        assert_eq!(FaultSettings { throttle_rate: 0.5, error_rate: 0.5, ..FaultSettings::none() }.validate(), Ok(()));
    }

    #[test]
    fn throttling_looks_like_each_service() {
        let code = |service, operation| throttling_error(&call(service, operation), "123456789012");
        let kinesis = code(Service::Kinesis, "DescribeStreamSummary");
        assert_eq!(
            (kinesis.code.as_str(), kinesis.message.as_str()),
            ("LimitExceededException", "Rate exceeded for stream s under account 123456789012.")
        );
        assert_eq!(code(Service::Kinesis, "GetRecords").code, "ProvisionedThroughputExceededException");
        assert_eq!(code(Service::Kinesis, "PutRecords").code, "ProvisionedThroughputExceededException");
        assert_eq!((code(Service::S3, "PutObject").code.as_str(), code(Service::S3, "PutObject").status.as_u16()), ("SlowDown", 503));
        assert_eq!(code(Service::Iam, "CreateRole").code, "Throttling");
        assert_eq!(code(Service::Firehose, "CreateDeliveryStream").code, "LimitExceededException");
        assert_eq!(code(Service::Glue, "GetTable").code, "ThrottlingException");
        assert_eq!(server_error(&call(Service::S3, "GetObject"), Fault::InternalError).code, "InternalError");
        assert_eq!(server_error(&call(Service::Glue, "GetTable"), Fault::Unavailable).status.as_u16(), 503);
    }

    #[test]
    fn settings_read_and_write_the_control_json() {
        let settings = FaultSettings {
            seed: 3,
            throttle_rate: 0.5,
            latency: Duration::from_millis(40),
            scope: vec!["s3:DeleteObjects".parse().unwrap()],
            ..FaultSettings::none()
        };
        let json = serde_json::to_value(&settings).unwrap();
        assert_eq!(json["latencyMs"], 40);
        assert_eq!(json["scope"], serde_json::json!(["S3:DeleteObjects"]));
        assert_eq!(serde_json::from_value::<FaultSettings>(json).unwrap(), settings);
        let partial: FaultSettings = serde_json::from_str(r#"{"throttleRate":0.1}"#).unwrap();
        assert_eq!(partial, FaultSettings { throttle_rate: 0.1, ..FaultSettings::none() });
    }
}
