//! Prometheus metrics of the operator, `metrics_pipeline_operator_*` in base units, served as
//! OpenMetrics: reconciles by what they ended in and how long they took, pipelines by phase, AWS
//! calls and their attempts and errors by operation and error code (see [`crate::aws::AwsCalls`]),
//! whether this replica leads, and the build.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use metrics_pipeline_api::pipeline::Phase;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::aws::AwsCalls;

/// What one reconcile ended in, as the resource's status shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconcileResult {
    /// A status was written: its phase, and the reason of its first problem.
    Status(Phase, Option<&'static str>),
    /// Deletion goes on: AWS or Kubernetes is still removing something.
    Deleting,
    /// Everything was removed and the finalizer released.
    Deleted,
    /// The reconcile itself failed (the API server, the finalizer); the error's reason.
    Error(&'static str),
}

impl ReconcileResult {
    /// `(result, reason)` labels: `ready`, `provisioning`, `degraded`, `failed` with the status's
    /// reason; `deleting`, `deleted`; `error` with the error's reason.
    fn labels(self) -> Vec<(&'static str, String)> {
        let (result, reason) = match self {
            Self::Status(phase, reason) => (phase_label(phase), reason.unwrap_or_default()),
            Self::Deleting => ("deleting", ""),
            Self::Deleted => ("deleted", ""),
            Self::Error(reason) => ("error", reason),
        };
        vec![("result", result.to_owned()), ("reason", reason.to_owned())]
    }
}

fn phase_label(phase: Phase) -> &'static str {
    match phase {
        Phase::Ready => "ready",
        Phase::Provisioning => "provisioning",
        Phase::Degraded => "degraded",
        Phase::Failed => "failed",
        Phase::Deleting => "deleting",
        Phase::Observing => "observing",
        Phase::Paused => "paused",
    }
}

const PHASES: [Phase; 7] =
    [Phase::Provisioning, Phase::Ready, Phase::Degraded, Phase::Failed, Phase::Deleting, Phase::Observing, Phase::Paused];

/// The `phase` label of the pipelines gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct PhaseLabel(Phase);

impl EncodeLabelSet for PhaseLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("phase", phase_label(self.0)).encode(encoder.encode_label())
    }
}

/// One pipeline's series of the per-pipeline phase gauge: `pipeline_namespace` rather than
/// `namespace`, which the scrape gives the operator's own pod.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct PipelinePhase {
    pipeline: String,
    phase: Phase,
}

impl EncodeLabelSet for PipelinePhase {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let (namespace, name) = self.pipeline.split_once('/').unwrap_or(("", &self.pipeline));
        ("pipeline_namespace", namespace).encode(encoder.encode_label())?;
        ("pipeline", name).encode(encoder.encode_label())?;
        ("phase", phase_label(self.phase)).encode(encoder.encode_label())
    }
}

pub struct Metrics {
    registry: Registry,
    reconciles: Family<Vec<(&'static str, String)>, Counter>,
    duration: Histogram,
    pipelines: Family<PhaseLabel, Gauge>,
    /// 1 for each pipeline, in the phase its status shows: how long one pipeline stays unready.
    pipeline_phase: Family<PipelinePhase, Gauge>,
    /// The phase each pipeline's status last showed, by `<namespace>/<name>`: what `pipelines` counts.
    phases: Mutex<HashMap<String, Phase>>,
    /// 1 while this replica reconciles (it holds the leader lease, or runs without election).
    pub leader: Gauge,
}

impl Metrics {
    pub fn new(aws_calls: &AwsCalls) -> Self {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("metrics_pipeline_operator");
        let reconciles = Family::default();
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
        let (pipelines, pipeline_phase, leader) = (Family::default(), Family::default(), Gauge::default());
        registry.register(
            "reconciles",
            "Reconciles by what the status showed after them (ready, provisioning, degraded, failed, deleting, deleted) or error, with the reason",
            reconciles.clone(),
        );
        registry.register("reconcile_duration_seconds", "How long one reconcile took", duration.clone());
        registry.register("pipelines", "MetricsPipelines by the phase their status shows", pipelines.clone());
        registry.register(
            "pipeline_phase",
            "1 for each MetricsPipeline, labelled with the phase its status shows (one series per pipeline)",
            pipeline_phase.clone(),
        );
        registry.register("leader", "1 while this replica reconciles (holds the leader lease)", leader.clone());
        registry.register("build", "The operator's version", Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]));
        aws_calls.register(registry);
        Self { registry: root, reconciles, duration, pipelines, pipeline_phase, phases: Mutex::default(), leader }
    }

    /// Counts one reconcile of `pipeline` (`<namespace>/<name>`), and the phase its status shows now.
    pub fn observe_reconcile(&self, pipeline: &str, took: Duration, result: ReconcileResult) {
        self.reconciles.get_or_create(&result.labels()).inc();
        self.duration.observe(took.as_secs_f64());
        match result {
            ReconcileResult::Status(phase, _) => self.show_phase(pipeline, Some(phase)),
            ReconcileResult::Deleting => self.show_phase(pipeline, Some(Phase::Deleting)),
            ReconcileResult::Deleted => self.show_phase(pipeline, None),
            ReconcileResult::Error(_) => {}
        }
    }

    /// `pipeline` is gone without a last reconcile: it counts no more.
    pub fn forget_pipeline(&self, pipeline: &str) {
        self.show_phase(pipeline, None);
    }

    /// Records the phase `pipeline`'s status shows now (`None`: it is gone) in both gauges.
    fn show_phase(&self, pipeline: &str, shown: Option<Phase>) {
        let mut phases = self.phases.lock().expect("no panics while holding the lock");
        let before = match shown {
            Some(phase) => phases.insert(pipeline.to_owned(), phase),
            None => phases.remove(pipeline),
        };
        if before != shown {
            let series = |phase| PipelinePhase { pipeline: pipeline.to_owned(), phase };
            if let Some(before) = before {
                self.pipeline_phase.remove(&series(before));
            }
            if let Some(shown) = shown {
                self.pipeline_phase.get_or_create(&series(shown)).set(1);
            }
        }
        for phase in PHASES {
            let count = phases.values().filter(|shown| **shown == phase).count();
            self.pipelines.get_or_create(&PhaseLabel(phase)).set(count as i64);
        }
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconcile_counts_as_what_the_status_shows() {
        let metrics = Metrics::new(&AwsCalls::default());
        metrics.observe_reconcile("a/p", Duration::from_millis(5), ReconcileResult::Status(Phase::Failed, Some("AwsRefused")));
        metrics.observe_reconcile("a/q", Duration::from_millis(5), ReconcileResult::Status(Phase::Ready, None));
        let text = metrics.encode();
        assert!(text.contains(r#"metrics_pipeline_operator_reconciles_total{result="failed",reason="AwsRefused"} 1"#), "{text}");
        assert!(text.contains(r#"metrics_pipeline_operator_reconciles_total{result="ready",reason=""} 1"#), "{text}");
        assert!(!text.contains(r#"result="ok""#), "{text}");
    }

    #[test]
    fn pipelines_are_counted_by_the_phase_their_status_shows_until_they_are_gone() {
        let metrics = Metrics::new(&AwsCalls::default());
        let took = Duration::from_millis(5);
        metrics.observe_reconcile("a/p", took, ReconcileResult::Status(Phase::Provisioning, None));
        metrics.observe_reconcile("a/q", took, ReconcileResult::Status(Phase::Provisioning, None));
        metrics.observe_reconcile("a/p", took, ReconcileResult::Status(Phase::Ready, None));
        metrics.observe_reconcile("a/q", took, ReconcileResult::Error("Kube"));
        let count = |phase: &str| {
            let series = format!("metrics_pipeline_operator_pipelines{{phase=\"{phase}\"}} ");
            let text = metrics.encode();
            text.lines().find_map(|line| line.strip_prefix(&series).map(str::to_owned)).unwrap_or_else(|| panic!("{text}"))
        };
        assert_eq!((count("ready"), count("provisioning"), count("failed")), ("1".into(), "1".into(), "0".into()));
        metrics.observe_reconcile("a/p", took, ReconcileResult::Deleting);
        metrics.observe_reconcile("a/q", took, ReconcileResult::Deleted);
        assert_eq!((count("ready"), count("provisioning"), count("deleting")), ("0".into(), "0".into(), "1".into()));
        let text = metrics.encode();
        assert!(
            text.contains(r#"metrics_pipeline_operator_pipeline_phase{pipeline_namespace="a",pipeline="p",phase="deleting"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"pipeline="q""#) && !text.contains(r#"phase="ready"} 1"#),
            "one series per pipeline, while it lives: {text}"
        );
        metrics.forget_pipeline("a/p");
        assert_eq!(count("deleting"), "0", "a pipeline gone without a last reconcile counts no more");
        assert!(!metrics.encode().contains("pipeline_phase{"), "{}", metrics.encode());
        assert!(metrics.encode().contains(r#"metrics_pipeline_operator_build_info{version=""#), "{}", metrics.encode());
    }

    #[test]
    fn every_series_the_shipped_alerts_and_dashboard_query_is_one_the_operator_exposes() {
        let aws = AwsCalls::default();
        let metrics = Metrics::new(&aws);
        // A family shows only once it has a series: one of each.
        metrics.observe_reconcile("a/p", Duration::from_millis(5), ReconcileResult::Status(Phase::Ready, None));
        aws.calls("Kinesis", "ListShards");
        aws.attempts.get_or_create(&crate::aws::Operation { service: "Kinesis".into(), operation: "ListShards".into() }).inc();
        let failed = crate::aws::FailedAttempt { service: "Kinesis".into(), operation: "ListShards".into(), code: "timeout".into() };
        aws.errors.get_or_create(&failed).inc();
        metrics.leader.set(1);
        let exposed = metrics_pipeline_test_support::exposed_series(&metrics.encode());
        let queried = metrics_pipeline_test_support::shipped_queries_of("metrics_pipeline_operator_");
        assert!(queried.len() >= 5, "{queried:?}");
        let missing: Vec<_> = queried.difference(&exposed).collect();
        assert!(missing.is_empty(), "queried but never exposed: {missing:?}; exposed: {exposed:?}");
    }
}
