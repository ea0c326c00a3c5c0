//! From what a reconcile found and did to the resource's status: a condition per part, `Ready`,
//! a phase, and every name and ARN. Pure, so every combination is unit-tested.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use metrics_pipeline_api::pipeline::{AggregatorStatus, AwsResourceRef, MetricsPipelineStatus, PAUSED_ANNOTATION, Phase, PipelineIdentity};
use metrics_pipeline_model::report::DataFlowReport;

use crate::data_flow::{self, DATA_FLOWING, Judgement};
use crate::error::Error;

pub const READY: &str = "Ready";

/// A part of the pipeline, reported by one condition of the status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The account, region and names the pipeline's AWS resources were made with.
    Identity,
    /// The input and the output Kinesis stream.
    Streams,
    Bucket,
    /// The Glue database and table.
    Catalog,
    /// The Firehose delivery stream and its IAM role, or the aggregator writing the files.
    Delivery,
    Aggregator,
}

impl Part {
    /// The type of the condition that reports the part.
    pub fn condition(self) -> &'static str {
        match self {
            Part::Identity => "IdentityKept",
            Part::Streams => "StreamsReady",
            Part::Bucket => "BucketReady",
            Part::Catalog => "CatalogReady",
            Part::Delivery => "DeliveryReady",
            Part::Aggregator => "AggregatorReady",
        }
    }
}

/// Where one part of the pipeline stands.
#[derive(Debug)]
pub enum PartState {
    Ready(String),
    /// AWS is still working on it, or it waits for another part.
    Pending(String),
    Failed(Error),
    /// It works as it stands, so what depends on it goes on, but a change to it failed (a stream
    /// that may not be scaled again today).
    Degraded(Error),
}

impl PartState {
    /// The state of a part made of two resources (the input and the output stream): the one
    /// that needs attention first — a failure, then one still coming up (looked at again soon),
    /// then a degradation — or both ready.
    pub fn and(self, other: PartState) -> PartState {
        let rank = |state: &PartState| match state {
            PartState::Ready(_) => 0,
            PartState::Degraded(_) => 1,
            PartState::Pending(_) => 2,
            PartState::Failed(_) => 3,
        };
        match (self, other) {
            (PartState::Ready(one), PartState::Ready(two)) => PartState::Ready(format!("{one}; {two}")),
            (one, two) if rank(&two) > rank(&one) => two,
            (one, _) => one,
        }
    }
}

/// Where each part stands after one reconcile; `None` for a part not reached (the spec is
/// invalid, the identity was refused, or the reconcile stopped before it). Gone through only by
/// destructuring every field, so that a part added here does not compile until it is handled.
#[derive(Debug, Default)]
pub struct Parts {
    pub identity: Option<PartState>,
    pub streams: Option<PartState>,
    pub bucket: Option<PartState>,
    pub catalog: Option<PartState>,
    pub delivery: Option<PartState>,
    pub aggregator: Option<PartState>,
}

impl Parts {
    /// The parts reached, in dependency order.
    pub fn reached(&self) -> impl Iterator<Item = (Part, &PartState)> {
        let Self { identity, streams, bucket, catalog, delivery, aggregator } = self;
        [
            (Part::Identity, identity),
            (Part::Streams, streams),
            (Part::Bucket, bucket),
            (Part::Catalog, catalog),
            (Part::Delivery, delivery),
            (Part::Aggregator, aggregator),
        ]
        .into_iter()
        .filter_map(|(part, state)| state.as_ref().map(|state| (part, state)))
    }

    fn states_mut(&mut self) -> impl Iterator<Item = &mut PartState> {
        let Self { identity, streams, bucket, catalog, delivery, aggregator } = self;
        [identity, streams, bucket, catalog, delivery, aggregator].into_iter().flatten()
    }
}

/// Everything one reconcile learnt.
#[derive(Debug, Default)]
pub struct Report {
    pub parts: Parts,
    /// The spec could not be validated: nothing was attempted.
    pub invalid_spec: Option<Error>,
    pub input_stream: Option<AwsResourceRef>,
    pub output_stream: Option<AwsResourceRef>,
    pub bucket: Option<AwsResourceRef>,
    pub firehose_role: Option<AwsResourceRef>,
    pub delivery_stream: Option<AwsResourceRef>,
    pub glue_database: Option<AwsResourceRef>,
    pub glue_table: Option<AwsResourceRef>,
    pub aggregator: Option<AggregatorStatus>,
    /// The aggregator writes the files (`writer: Aggregator`): no delivery stream or role to name.
    pub without_firehose: bool,
    /// What was changed in AWS, for events.
    pub changes: Vec<String>,
    /// Where the pipeline's AWS resources are (see `metrics_pipeline_api::identity`).
    pub identity: Option<PipelineIdentity>,
    /// The aggregator's last report and what it says, when the aggregator runs.
    pub data_flow: Option<DataFlow>,
    /// Observing only (`managementPolicy: ObserveOnly`, an adoption not confirmed): every part
    /// was read and nothing changed, until what this says; what differs is in the parts' `Drift`.
    pub observing: Option<&'static str>,
    /// The `spec.tags` keys this reconcile put on the resources it reached; `None`: it reached
    /// none (invalid spec, observing).
    pub tag_keys: Option<Vec<String>>,
    /// The shards the spec asks, when the namespace let it through; `None`: the spec was invalid
    /// or refused, and the pipeline keeps what it held.
    pub shards: Option<i32>,
}

/// The aggregator's last report (none yet, or unreadable) and the `DataFlowing` condition's verdict.
#[derive(Debug)]
pub struct DataFlow {
    pub report: Option<DataFlowReport>,
    pub judgement: Judgement,
}

/// How the reconcile ended, for the requeue decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ready,
    Pending,
    Retryable,
    Terminal,
}

impl Report {
    pub fn verdict(&self) -> Verdict {
        if self.invalid_spec.is_some() {
            return Verdict::Terminal;
        }
        let failed = worst(self.parts.reached().filter_map(|(_, state)| match state {
            PartState::Failed(error) => Some(error),
            _ => None,
        }));
        if failed != Verdict::Ready {
            return failed;
        }
        // A degraded part works: parts still coming up are looked at soon, and its failure
        // decides the next look only once nothing else is under way.
        if self.parts.reached().any(|(_, state)| matches!(state, PartState::Pending(_))) {
            return Verdict::Pending;
        }
        worst(self.parts.reached().filter_map(|(_, state)| match state {
            PartState::Degraded(error) => Some(error),
            _ => None,
        }))
    }

    /// The parts still coming up, in dependency order.
    pub fn pending_parts(&self) -> Vec<Part> {
        self.parts.reached().filter(|(_, state)| matches!(state, PartState::Pending(_))).map(|(part, _)| part).collect()
    }

    /// Every part still pending has waited `waited`, past the operator's time limit: each is a
    /// failure now, which says what it waited for.
    pub fn give_up(&mut self, waited: &str) {
        for state in self.parts.states_mut() {
            if let PartState::Pending(why) = state {
                *state = PartState::Failed(Error::Stalled { waited: waited.to_owned(), why: std::mem::take(why) });
            }
        }
    }

    /// Every part works, even if some not as specified: nothing failed outright.
    fn usable(&self) -> bool {
        self.invalid_spec.is_none() && !self.parts.reached().any(|(_, state)| matches!(state, PartState::Failed(_)))
    }

    /// Every difference from the spec that observing found, part by part.
    pub fn drift(&self) -> Vec<String> {
        self.parts
            .reached()
            .flat_map(|(_, state)| match state {
                PartState::Degraded(Error::Drift { drift, .. }) => drift.clone(),
                _ => Vec::new(),
            })
            .collect()
    }

    /// The first problem, as (reason, message), for the Ready condition and events; observing,
    /// every difference found.
    pub fn first_problem(&self) -> Option<(&'static str, String)> {
        if let Some(error) = &self.invalid_spec {
            return Some((error.reason(), error.to_string()));
        }
        let failed = |degraded: bool| {
            self.parts.reached().find_map(|(_, state)| match state {
                PartState::Failed(error) if !degraded => Some((error.reason(), error.to_string())),
                PartState::Degraded(error) if degraded => Some((error.reason(), error.to_string())),
                _ => None,
            })
        };
        let drift = self.drift();
        if let Some(until) = self.observing.filter(|_| failed(false).is_none() && !drift.is_empty()) {
            let all = Error::Drift { drift, until };
            return Some((all.reason(), all.to_string()));
        }
        failed(false).or_else(|| failed(true)).or_else(|| {
            self.parts.reached().find_map(|(_, state)| match state {
                PartState::Pending(message) => Some(("Provisioning", message.clone())),
                _ => None,
            })
        })
    }
}

/// The verdict of these failures: terminal if any is, else retryable; `Ready` without any.
fn worst<'a>(errors: impl Iterator<Item = &'a Error>) -> Verdict {
    errors.fold(Verdict::Ready, |verdict, error| match (verdict, error.is_terminal()) {
        (_, true) | (Verdict::Terminal, _) => Verdict::Terminal,
        _ => Verdict::Retryable,
    })
}

/// Whether the pipeline worked at some point: Ready or Degraded before, or, while an update is
/// pending (phase Provisioning), every part already named, which happens only once each was ready.
/// A failure then is a degradation, not a pipeline that never came up.
fn has_been_ready(previous: &MetricsPipelineStatus, without_firehose: bool) -> bool {
    let named = [&previous.input_stream, &previous.output_stream, &previous.bucket, &previous.glue_database, &previous.glue_table]
        .iter()
        .all(|r| r.is_some())
        && (without_firehose || previous.delivery_stream.is_some());
    matches!(previous.phase, Some(Phase::Ready | Phase::Degraded)) || named
}

/// A condition of `kind`, keeping the transition time of the previous one while its status holds.
fn condition(
    previous: &[Condition],
    kind: &str,
    holds: Option<bool>,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = match holds {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    };
    let since = previous.iter().find(|c| c.type_ == kind && c.status == status).map(|c| c.last_transition_time.clone());
    Condition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        // An empty message fails server-side apply on v1.20; every message says something.
        message: if message.is_empty() { reason.to_owned() } else { message },
        last_transition_time: since.unwrap_or_else(|| now.clone()),
        observed_generation: generation,
    }
}

/// The status to write: conditions keep their transition time while their status holds.
pub fn build(report: &Report, generation: Option<i64>, previous: Option<&MetricsPipelineStatus>, now: Time) -> MetricsPipelineStatus {
    // Every field, so that one added to the report cannot be left out of the status.
    let Report {
        parts,
        invalid_spec: _,
        input_stream,
        output_stream,
        bucket,
        firehose_role,
        delivery_stream,
        glue_database,
        glue_table,
        aggregator,
        without_firehose,
        changes: _,
        identity,
        data_flow,
        observing,
        tag_keys,
        shards,
    } = report;
    let previous_conditions = previous.map(|status| status.conditions.as_slice()).unwrap_or_default();
    let condition = |kind: &str, ready: bool, reason: &str, message: String| {
        condition(previous_conditions, kind, Some(ready), reason, message, generation, &now)
    };
    let mut conditions: Vec<Condition> = parts
        .reached()
        .map(|(part, state)| match state {
            PartState::Ready(message) => condition(part.condition(), true, "Ready", message.clone()),
            PartState::Pending(message) => condition(part.condition(), false, "Provisioning", message.clone()),
            PartState::Failed(error) | PartState::Degraded(error) => condition(part.condition(), false, error.reason(), error.to_string()),
        })
        .collect();
    // A reconcile that stopped before the aggregator (an AWS outage, a refused change) keeps what
    // the last one saw of the data; a paused or absent aggregator reports none.
    let data_flow_kept = data_flow.is_none() && parts.aggregator.is_none();
    match data_flow {
        Some(DataFlow { judgement: Judgement { flowing, reason, message }, .. }) => {
            conditions.push(self::condition(previous_conditions, DATA_FLOWING, *flowing, reason, message.clone(), generation, &now));
        }
        None if data_flow_kept => conditions.extend(previous_conditions.iter().find(|c| c.type_ == DATA_FLOWING).cloned()),
        None => {}
    }
    let verdict = report.verdict();
    conditions.push(match report.first_problem() {
        None if observing.is_some() => {
            condition(READY, true, "AsSpecified", "every AWS resource is as the spec asks (observed only)".into())
        }
        None => condition(READY, true, "PipelineReady", "every part of the pipeline is in place".into()),
        Some((reason, message)) => condition(READY, false, reason, message),
    });
    let was_ready = previous.is_some_and(|previous| has_been_ready(previous, *without_firehose));
    let phase = match verdict {
        _ if observing.is_some() => Phase::Observing,
        Verdict::Ready => Phase::Ready,
        Verdict::Pending => Phase::Provisioning,
        Verdict::Retryable | Verdict::Terminal if report.usable() => Phase::Degraded,
        Verdict::Retryable if was_ready => Phase::Degraded,
        Verdict::Retryable => Phase::Provisioning,
        Verdict::Terminal => Phase::Failed,
    };
    // A part not reached this time keeps the reference found before; observing reaches every one.
    let keep = |found: &Option<AwsResourceRef>, before: fn(&MetricsPipelineStatus) -> &Option<AwsResourceRef>| {
        found.clone().or_else(|| previous.filter(|_| observing.is_none()).and_then(|status| before(status).clone()))
    };
    let drift = report.drift();
    let with_firehose = |reference: Option<AwsResourceRef>| reference.filter(|_| !without_firehose);
    MetricsPipelineStatus {
        observed_generation: generation,
        phase: Some(phase),
        conditions,
        input_stream: keep(input_stream, |s| &s.input_stream),
        output_stream: keep(output_stream, |s| &s.output_stream),
        bucket: keep(bucket, |s| &s.bucket),
        firehose_role: with_firehose(keep(firehose_role, |s| &s.firehose_role)),
        delivery_stream: with_firehose(keep(delivery_stream, |s| &s.delivery_stream)),
        glue_database: keep(glue_database, |s| &s.glue_database),
        glue_table: keep(glue_table, |s| &s.glue_table),
        aggregator: aggregator.clone().or_else(|| previous.and_then(|status| status.aggregator.clone())),
        identity: identity.clone().or_else(|| previous.and_then(|status| status.identity.clone())),
        data_flow: match data_flow {
            Some(data_flow) => data_flow.report.as_ref().map(data_flow::status),
            None if data_flow_kept => previous.and_then(|status| status.data_flow.clone()),
            None => None,
        },
        drift,
        tag_keys: kept_tag_keys(tag_keys.as_deref(), verdict, previous),
        shards: shards.or_else(|| previous.and_then(|status| status.shards)),
    }
}

/// The tag keys to remember: those put on now; while some part was not reached or failed, also
/// those put on before, so that one the spec dropped is still removed from it later.
fn kept_tag_keys(put: Option<&[String]>, verdict: Verdict, previous: Option<&MetricsPipelineStatus>) -> Vec<String> {
    let before = previous.map(|status| status.tag_keys.clone()).unwrap_or_default();
    match put {
        None => before,
        Some(put) if verdict == Verdict::Ready => put.to_vec(),
        Some(put) => {
            let mut keys: Vec<String> = before.into_iter().chain(put.iter().cloned()).collect();
            keys.sort();
            keys.dedup();
            keys
        }
    }
}

/// The status while the pipeline is deleted: phase Deleting, and `Ready` saying what the deletion
/// waits for or what stops it. Everything else stays as it was.
pub fn deleting(previous: Option<&MetricsPipelineStatus>, problem: &Error, now: Time) -> MetricsPipelineStatus {
    let status = previous.cloned().unwrap_or_default();
    held(status, Phase::Deleting, problem.reason(), problem.to_string(), now)
}

/// The status while reconciling is paused by [`PAUSED_ANNOTATION`]: phase Paused, and `Ready`
/// saying so; what the parts last reported stays.
pub fn paused(previous: Option<&MetricsPipelineStatus>, generation: Option<i64>, now: Time) -> MetricsPipelineStatus {
    let message = format!(
        "reconciling is paused by the annotation {PAUSED_ANNOTATION}: \"true\": nothing in AWS or Kubernetes is read or changed, \
         and a deletion waits; remove the annotation to resume"
    );
    let status = MetricsPipelineStatus { observed_generation: generation, ..previous.cloned().unwrap_or_default() };
    held(status, Phase::Paused, "Paused", message, now)
}

/// The message of `status`'s `Ready` condition.
pub fn ready_message(status: &MetricsPipelineStatus) -> String {
    status.conditions.iter().find(|c| c.type_ == READY).map(|c| c.message.clone()).unwrap_or_default()
}

/// `status` in `phase`, its `Ready` condition false for `reason`.
fn held(mut status: MetricsPipelineStatus, phase: Phase, reason: &str, message: String, now: Time) -> MetricsPipelineStatus {
    let ready = condition(&status.conditions, READY, Some(false), reason, message, status.observed_generation, &now);
    status.phase = Some(phase);
    status.conditions.retain(|c| c.type_ != READY);
    status.conditions.push(ready);
    status
}

#[cfg(test)]
mod tests {
    use metrics_pipeline_api::validation::{FieldError, ValidationErrors};

    use super::*;
    use crate::error::{AwsError, AwsErrorKind, Holder};

    fn outage(action: &str, message: &str) -> Error {
        AwsError::new(action, AwsErrorKind::Unavailable, None, message).into()
    }

    fn at(seconds: i64) -> Time {
        Time(jiff::Timestamp::from_second(seconds).unwrap())
    }

    fn ready_report() -> Report {
        Report {
            parts: Parts {
                streams: Some(PartState::Ready("streams a and b are active".into())),
                bucket: Some(PartState::Ready("bucket c".into())),
                ..Parts::default()
            },
            bucket: Some(AwsResourceRef { name: "c".into(), arn: Some("arn:aws:s3:::c".into()) }),
            ..Report::default()
        }
    }

    #[test]
    fn observing_shows_every_difference_and_no_reference_to_what_is_not_there() {
        let before = build(&ready_report(), Some(1), None, at(10));
        let drift = vec!["Kinesis stream a: retention is 24 hours, the spec asks 48 (retentionHours)".to_owned()];
        let observed = Report {
            parts: Parts {
                streams: Some(PartState::Degraded(Error::Drift { drift: drift.clone(), until: "Full" })),
                bucket: Some(PartState::Degraded(Error::Drift {
                    drift: vec!["S3 bucket c: missing (would be created)".into()],
                    until: "Full",
                })),
                ..Parts::default()
            },
            observing: Some("Full"),
            ..Report::default()
        };
        let status = build(&observed, Some(2), Some(&before), at(20));
        assert_eq!(status.phase, Some(Phase::Observing));
        assert_eq!(status.drift, [drift[0].clone(), "S3 bucket c: missing (would be created)".to_owned()]);
        assert_eq!(status.bucket, None, "the bucket named before is not there now");
        let ready = condition(&status, READY);
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "Drift"));
        assert!(ready.message.starts_with("2 difference(s) from the spec, left as they are"), "{}", ready.message);

        let as_asked = Report { parts: ready_report().parts, observing: Some("Full"), ..Report::default() };
        let status = build(&as_asked, Some(3), Some(&status), at(30));
        assert_eq!((status.phase, status.drift.len()), (Some(Phase::Observing), 0));
        assert_eq!(condition(&status, READY).reason, "AsSpecified");
    }

    #[test]
    fn a_paused_pipeline_keeps_what_its_parts_said_and_says_why_nothing_moves() {
        let before = build(&ready_report(), Some(1), None, at(10));
        let paused = paused(Some(&before), Some(2), at(20));
        assert_eq!((paused.phase, paused.observed_generation), (Some(Phase::Paused), Some(2)));
        assert_eq!(paused.bucket, before.bucket);
        assert_eq!(condition(&paused, "BucketReady").status, "True");
        let ready = condition(&paused, READY);
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "Paused"));
        assert!(ready.message.contains("remove the annotation to resume"), "{}", ready.message);
    }

    #[test]
    fn what_data_flows_is_kept_through_a_reconcile_that_stops_early_and_dropped_when_the_aggregator_pauses() {
        let judged = |flowing| DataFlow {
            report: Some(DataFlowReport { written_at_ms: 60_000, interval_ms: 30_000, records_read: 5, ..DataFlowReport::default() }),
            judgement: Judgement { flowing, reason: "NoWindowFires", message: "stalled".into() },
        };
        let running = Parts { aggregator: Some(PartState::Ready("running".into())), ..ready_report().parts };
        let before = build(&Report { parts: running, data_flow: Some(judged(Some(false))), ..ready_report() }, Some(1), None, at(10));
        assert_eq!(condition(&before, DATA_FLOWING).reason, "NoWindowFires");
        assert_eq!(before.data_flow.as_ref().map(|flow| flow.records_in), Some(5));

        // An outage stopped the reconcile before the aggregator: nothing new was learnt.
        let outage = build(&ready_report(), Some(1), Some(&before), at(20));
        assert_eq!(condition(&outage, DATA_FLOWING).last_transition_time, at(10), "kept, not flapping");
        assert_eq!(outage.data_flow, before.data_flow);

        let paused = Parts { aggregator: Some(PartState::Pending("paused".into())), ..ready_report().parts };
        let paused = build(&Report { parts: paused, ..ready_report() }, Some(1), Some(&before), at(30));
        assert!(paused.conditions.iter().all(|c| c.type_ != DATA_FLOWING) && paused.data_flow.is_none(), "{paused:?}");
    }

    #[test]
    fn a_failure_during_an_update_of_a_pipeline_that_worked_is_degraded() {
        let named = |name: &str| Some(AwsResourceRef { name: name.into(), arn: None });
        let updating = MetricsPipelineStatus {
            phase: Some(Phase::Provisioning),
            input_stream: named("in"),
            output_stream: named("out"),
            bucket: named("b"),
            glue_database: named("d"),
            glue_table: named("t"),
            delivery_stream: named("s"),
            ..MetricsPipelineStatus::default()
        };
        let failed = || Report {
            parts: Parts { streams: Some(PartState::Failed(outage("describing stream in", "unreachable"))), ..Parts::default() },
            ..Report::default()
        };
        assert_eq!(build(&failed(), Some(2), Some(&updating), at(10)).phase, Some(Phase::Degraded));
        let never_ready = MetricsPipelineStatus { delivery_stream: None, ..updating };
        let failed = failed();
        assert_eq!(build(&failed, Some(1), Some(&never_ready), at(10)).phase, Some(Phase::Provisioning), "still coming up");
    }

    #[test]
    fn a_pipeline_given_up_on_is_failed_and_says_what_each_part_waited_for() {
        let mut report = ready_report();
        let image = "aggregator rollout: 0/1 ready, 1 updated, 1 running; pod a-1: ImagePullBackOff: Back-off pulling image";
        report.parts.aggregator = Some(PartState::Pending(image.into()));
        assert_eq!(report.verdict(), Verdict::Pending);
        report.give_up("900 s");
        assert_eq!(report.verdict(), Verdict::Terminal, "looked at again at the resync, not in seconds");
        let status = build(&report, Some(1), None, at(10));
        assert_eq!(status.phase, Some(Phase::Failed));
        let ready = status.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(ready.reason, "Stalled");
        assert!(ready.message.starts_with(&format!("gave up waiting after 900 s: {image}")), "{}", ready.message);
        assert!(status.conditions.iter().any(|c| c.type_ == Part::Streams.condition() && c.status == "True"), "ready parts stay ready");
    }

    #[test]
    fn without_firehose_the_status_names_no_delivery_stream_even_one_named_before() {
        let delivery_stream = Some(AwsResourceRef { name: "p-delivery".into(), arn: None });
        let before = MetricsPipelineStatus {
            delivery_stream: delivery_stream.clone(),
            firehose_role: delivery_stream,
            ..MetricsPipelineStatus::default()
        };
        let kept = build(&ready_report(), Some(2), Some(&before), at(10));
        assert!(kept.delivery_stream.is_some(), "a part not reached keeps its reference");
        let switched = build(&Report { without_firehose: true, ..ready_report() }, Some(2), Some(&before), at(10));
        assert_eq!((switched.delivery_stream, switched.firehose_role), (None, None));
    }

    fn condition<'a>(status: &'a MetricsPipelineStatus, kind: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == kind).unwrap()
    }

    #[test]
    fn all_parts_ready_make_the_pipeline_ready() {
        let status = build(&ready_report(), Some(3), None, at(100));
        assert_eq!(status.phase, Some(Phase::Ready));
        assert_eq!(status.observed_generation, Some(3));
        let ready = condition(&status, READY);
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "PipelineReady"));
        assert_eq!(status.bucket.unwrap().arn.as_deref(), Some("arn:aws:s3:::c"));
    }

    #[test]
    fn an_invalid_spec_fails_with_the_field_and_the_fix() {
        let errors =
            ValidationErrors(vec![FieldError { field: "spec.delivery.bufferSizeMiB".into(), message: "must be at least 64".into() }]);
        let report = Report { invalid_spec: Some(Error::InvalidSpec(errors)), ..Report::default() };
        let status = build(&report, Some(1), None, at(100));
        assert_eq!(status.phase, Some(Phase::Failed));
        let ready = condition(&status, READY);
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "InvalidSpec"));
        assert!(ready.message.contains("spec.delivery.bufferSizeMiB: must be at least 64"), "{}", ready.message);
    }

    #[test]
    fn an_outage_after_ready_degrades_and_before_ready_still_provisions() {
        let mut report = ready_report();
        report.parts.delivery = Some(PartState::Failed(outage("describing x", "down")));
        let before = build(&report, Some(1), None, at(100));
        assert_eq!(before.phase, Some(Phase::Provisioning));
        let was_ready = build(&ready_report(), Some(1), None, at(100));
        let after = build(&report, Some(1), Some(&was_ready), at(200));
        assert_eq!(after.phase, Some(Phase::Degraded));
        assert_eq!(condition(&after, READY).reason, "AwsUnavailable");
        assert_eq!(condition(&after, Part::Delivery.condition()).message, "describing x: down");
    }

    #[test]
    fn the_shards_let_through_are_kept_while_a_later_spec_is_invalid_or_refused() {
        let granted = build(&Report { shards: Some(4), ..ready_report() }, Some(1), None, at(100));
        assert_eq!(granted.shards, Some(4));
        let refused = Report {
            invalid_spec: Some(Error::InvalidSpec(ValidationErrors(vec![FieldError {
                field: "spec.streams".into(),
                message: "the streams ask 8 shard(s)".into(),
            }]))),
            ..Report::default()
        };
        assert_eq!(build(&refused, Some(2), Some(&granted), at(200)).shards, Some(4), "the streams keep what they have");
        let lowered = build(&Report { shards: Some(2), ..ready_report() }, Some(3), Some(&granted), at(300));
        assert_eq!(lowered.shards, Some(2));
    }

    #[test]
    fn transition_times_move_only_when_a_condition_flips() {
        let first = build(&ready_report(), Some(1), None, at(100));
        let again = build(&ready_report(), Some(1), Some(&first), at(200));
        assert_eq!(condition(&again, READY).last_transition_time, at(100));
        let mut pending = ready_report();
        pending.parts.streams = Some(PartState::Pending("stream a is CREATING".into()));
        let flipped = build(&pending, Some(2), Some(&again), at(300));
        assert_eq!(condition(&flipped, READY).last_transition_time, at(300));
        assert_eq!(condition(&flipped, Part::Bucket.condition()).last_transition_time, at(100));
        assert_eq!(flipped.phase, Some(Phase::Provisioning));
    }

    fn scaling_refused() -> Error {
        Error::ShardScalingRefused {
            stream: "a".into(),
            current: 2,
            desired: 4,
            field: "spec.streams.input.shardCount".into(),
            source: Box::new(AwsError::new("updating a", AwsErrorKind::QuotaExceeded, None, "limit")),
        }
    }

    #[test]
    fn a_part_usable_despite_a_refused_change_degrades_the_pipeline_and_waits_for_the_resync() {
        let mut report = ready_report();
        report.parts.streams = Some(PartState::Degraded(scaling_refused()));
        assert_eq!(report.verdict(), Verdict::Terminal, "the user or the next day must act: looked at again at the resync");
        let status = build(&report, Some(2), None, at(100));
        assert_eq!(status.phase, Some(Phase::Degraded), "it works, only not as specified");
        assert_eq!(condition(&status, Part::Streams.condition()).reason, "ScalingLimitExceeded");
        assert_eq!(condition(&status, READY).reason, "ScalingLimitExceeded");
        assert_eq!(condition(&status, Part::Bucket.condition()).status, "True");

        report.parts.delivery = Some(PartState::Pending("delivery stream d is CREATING".into()));
        assert_eq!(report.verdict(), Verdict::Pending, "a part still coming up is looked at soon");
        report.parts.catalog = Some(PartState::Failed(outage("a", "b")));
        assert_eq!(report.verdict(), Verdict::Retryable);
        assert_eq!(build(&report, Some(2), None, at(100)).phase, Some(Phase::Provisioning), "a part failed outright");
    }

    #[test]
    fn two_resources_of_one_part_show_the_one_needing_attention_first() {
        let ready = |m: &str| PartState::Ready(m.into());
        let pending = || PartState::Pending("b is UPDATING".into());
        assert!(matches!(ready("a is active").and(ready("b is active")), PartState::Ready(m) if m == "a is active; b is active"));
        assert!(matches!(ready("a").and(PartState::Degraded(scaling_refused())), PartState::Degraded(_)));
        assert!(matches!(PartState::Degraded(scaling_refused()).and(pending()), PartState::Pending(_)));
        assert!(matches!(PartState::Failed(outage("a", "b")).and(pending()), PartState::Failed(_)));
    }

    #[test]
    fn a_terminal_failure_outranks_a_retryable_one() {
        let mut report = ready_report();
        report.parts.delivery = Some(PartState::Failed(outage("a", "b")));
        report.parts.catalog =
            Some(PartState::Failed(Error::NotOwned { kind: "Glue table", name: "d.t".into(), holder: Holder::Untagged }));
        assert_eq!(report.verdict(), Verdict::Terminal);
    }

    #[test]
    fn a_deletion_that_cannot_finish_says_why_in_ready() {
        let ready = build(&ready_report(), Some(1), None, at(100));
        let held = Error::from(AwsError::new(
            "cannot delete s3://c/held/1",
            AwsErrorKind::AccessDenied,
            Some("AccessDenied".into()),
            "Access Denied because object protected by object lock.",
        ));
        let first = deleting(Some(&ready), &held, at(200));
        assert_eq!(first.phase, Some(Phase::Deleting));
        let ready_now = condition(&first, READY);
        assert_eq!((ready_now.status.as_str(), ready_now.reason.as_str()), ("False", "AwsRefused"));
        assert!(ready_now.message.starts_with("cannot delete s3://c/held/1: AccessDenied: "), "{}", ready_now.message);
        assert_eq!(first.bucket, ready.bucket, "names stay");
        let again = deleting(Some(&first), &Error::Deleting("Kinesis stream a".into()), at(300));
        assert_eq!(condition(&again, READY).last_transition_time, at(200), "still not ready: the time holds");
        assert_eq!(again.conditions.iter().filter(|c| c.type_ == READY).count(), 1);
    }
}
