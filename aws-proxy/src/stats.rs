//! What the proxy saw: every call with its time, service, operation, resource and outcome, so a
//! test can count calls (an SDK retry is a call of its own), faults, refusals, and calls per
//! minute while a fault persists.

use std::collections::{BTreeMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::faults::Fault;
use crate::protocol::{Call, Service};

const MINUTE_MS: u64 = 60_000;

/// How many calls are kept; older ones are forgotten (a day of a busy dev-env).
const KEPT_CALLS: usize = 500_000;

/// The rule that refused a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Rule {
    /// UpdateShardCount beyond ×2 or ½, or over the daily number of scalings.
    ShardCount,
    /// Firehose naming a role IAM has not propagated yet.
    IamPropagation,
    /// DeleteObject of a held key, or a DeleteObjects of held keys only.
    ObjectHold,
    /// A change to a resource still CREATING or UPDATING.
    Transition,
    /// Above the operation's documented request rate for the account and region.
    Quota,
}

/// What became of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Outcome {
    /// Forwarded to the emulator, which answered with this HTTP status.
    Forwarded { status: u16 },
    /// A fault injected instead of (or, for a lost answer, after) forwarding.
    Injected { fault: Fault },
    /// Answered by the proxy with AWS's refusal.
    Refused { rule: Rule },
    /// The emulator did not answer; the caller got a 503.
    Unreachable,
}

/// One call as the proxy saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    /// When it arrived, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub service: Service,
    pub operation: String,
    /// The signing region, when the request is signed.
    #[serde(default)]
    pub region: Option<String>,
    /// The stream, delivery stream, Glue database, bucket or role it names, if any.
    pub resource: Option<String>,
    pub outcome: Outcome,
    /// Injected latency.
    pub delayed_ms: u64,
    /// DeleteObjects keys a hold kept (each got an `<Error>` in the answer).
    pub held_keys: usize,
}

impl CallRecord {
    pub fn new(call: &Call, at: SystemTime, outcome: Outcome) -> Self {
        CallRecord {
            at_ms: at.duration_since(UNIX_EPOCH).map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX)),
            service: call.service,
            operation: call.operation.clone(),
            region: call.region.clone(),
            resource: call.resource.clone(),
            outcome,
            delayed_ms: 0,
            held_keys: 0,
        }
    }

    pub fn is(&self, service: Service, operation: &str) -> bool {
        self.service == service && self.operation == operation
    }
}

/// Keeps the most recent calls.
#[derive(Debug, Default)]
pub struct Recorder {
    calls: VecDeque<CallRecord>,
}

impl Recorder {
    pub fn record(&mut self, call: CallRecord) {
        if self.calls.len() == KEPT_CALLS {
            self.calls.pop_front();
        }
        self.calls.push_back(call);
    }

    pub fn snapshot(&self) -> Stats {
        Stats { calls: self.calls.iter().cloned().collect() }
    }

    pub fn clear(&mut self) {
        self.calls.clear();
    }
}

/// Calls and outcomes of one operation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationSummary {
    pub service: Service,
    pub operation: String,
    pub calls: usize,
    pub forwarded: usize,
    pub throttled: usize,
    pub server_errors: usize,
    pub dropped: usize,
    pub lost_answers: usize,
    pub refused: usize,
    pub delayed: usize,
}

/// A snapshot of the calls the proxy saw, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub calls: Vec<CallRecord>,
}

impl Stats {
    /// Calls (every attempt, retries included) of one operation.
    pub fn calls(&self, service: Service, operation: &str) -> usize {
        self.count(|call| call.is(service, operation))
    }

    /// Calls matching `filter`, e.g. those naming one pipeline's resources.
    pub fn count(&self, filter: impl Fn(&CallRecord) -> bool) -> usize {
        self.calls.iter().filter(|call| filter(call)).count()
    }

    /// The outcomes of one operation's calls, in order.
    pub fn outcomes(&self, service: Service, operation: &str) -> Vec<Outcome> {
        self.calls.iter().filter(|call| call.is(service, operation)).map(|call| call.outcome).collect()
    }

    /// Calls matching `filter` per minute since the Unix epoch.
    pub fn per_minute(&self, filter: impl Fn(&CallRecord) -> bool) -> BTreeMap<u64, usize> {
        let mut minutes = BTreeMap::new();
        for call in self.calls.iter().filter(|call| filter(call)) {
            *minutes.entry(call.at_ms / MINUTE_MS).or_default() += 1;
        }
        minutes
    }

    /// The most calls matching `filter` in any 60 seconds: a bound on calls per minute that no
    /// alignment of minute boundaries can split.
    pub fn busiest_minute(&self, filter: impl Fn(&CallRecord) -> bool) -> usize {
        let times: Vec<u64> = self.calls.iter().filter(|call| filter(call)).map(|call| call.at_ms).collect();
        let mut start = 0;
        let mut busiest = 0;
        for (end, &at) in times.iter().enumerate() {
            while at - times[start] >= MINUTE_MS {
                start += 1;
            }
            busiest = busiest.max(end + 1 - start);
        }
        busiest
    }

    /// Calls and outcomes per operation, ordered by service and operation.
    pub fn summary(&self) -> Vec<OperationSummary> {
        let mut by_operation: BTreeMap<(Service, &str), OperationSummary> = BTreeMap::new();
        for call in &self.calls {
            let summary = by_operation.entry((call.service, &call.operation)).or_insert_with(|| OperationSummary {
                service: call.service,
                operation: call.operation.clone(),
                ..OperationSummary::default()
            });
            summary.calls += 1;
            summary.delayed += usize::from(call.delayed_ms > 0);
            match call.outcome {
                Outcome::Forwarded { .. } => summary.forwarded += 1,
                Outcome::Injected { fault: Fault::Throttle } | Outcome::Refused { rule: Rule::Quota } => summary.throttled += 1,
                Outcome::Injected { fault: Fault::InternalError | Fault::Unavailable } => summary.server_errors += 1,
                Outcome::Injected { fault: Fault::Drop } => summary.dropped += 1,
                Outcome::Injected { fault: Fault::LostAnswer } => summary.lost_answers += 1,
                Outcome::Refused { .. } => summary.refused += 1,
                Outcome::Unreachable => {}
            }
        }
        by_operation.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(ms: u64, operation: &str, outcome: Outcome) -> CallRecord {
        let call = Call { service: Service::Kinesis, operation: operation.into(), region: None, resource: Some("in".into()) };
        CallRecord::new(&call, UNIX_EPOCH + Duration::from_millis(ms), outcome)
    }

    #[test]
    fn counts_per_operation_outcome_and_minute() {
        let ok = Outcome::Forwarded { status: 200 };
        let throttled = Outcome::Injected { fault: Fault::Throttle };
        let stats = Stats {
            calls: vec![
                at(0, "ListShards", ok),
                at(10_000, "ListShards", throttled),
                at(59_000, "PutRecords", ok),
                at(61_000, "ListShards", ok),
                at(130_000, "ListShards", Outcome::Refused { rule: Rule::ShardCount }),
            ],
        };
        assert_eq!(stats.calls(Service::Kinesis, "ListShards"), 4);
        assert_eq!(stats.outcomes(Service::Kinesis, "ListShards")[1], throttled);
        assert_eq!(stats.per_minute(|call| call.operation == "ListShards"), BTreeMap::from([(0, 2), (1, 1), (2, 1)]));
        assert_eq!(stats.busiest_minute(|_| true), 3, "0 s, 10 s, 59 s; or 10 s, 59 s, 61 s");
        assert_eq!(stats.busiest_minute(|call| call.operation == "ListShards"), 2);
        let summary = stats.summary();
        assert_eq!(summary.iter().map(|s| s.operation.as_str()).collect::<Vec<_>>(), ["ListShards", "PutRecords"]);
        assert_eq!((summary[0].calls, summary[0].forwarded, summary[0].throttled, summary[0].refused), (4, 2, 1, 1));
    }

    #[test]
    fn the_oldest_calls_make_room() {
        let mut recorder = Recorder::default();
        for ms in 0..KEPT_CALLS as u64 + 2 {
            recorder.record(at(ms, "GetRecords", Outcome::Unreachable));
        }
        let stats = recorder.snapshot();
        assert_eq!((stats.calls.len(), stats.calls[0].at_ms), (KEPT_CALLS, 2));
    }
}
