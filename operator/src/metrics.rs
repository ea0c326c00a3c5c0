//! Prometheus metrics of the operator: reconciles by what they ended in, their duration, and AWS
//! calls.

use std::time::Duration;

use metrics_pipeline_api::pipeline::Phase;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
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
            Self::Status(phase, reason) => {
                let result = match phase {
                    Phase::Ready => "ready",
                    Phase::Provisioning => "provisioning",
                    Phase::Degraded => "degraded",
                    Phase::Failed => "failed",
                    Phase::Deleting => "deleting",
                };
                (result, reason.unwrap_or_default())
            }
            Self::Deleting => ("deleting", ""),
            Self::Deleted => ("deleted", ""),
            Self::Error(reason) => ("error", reason),
        };
        vec![("result", result.to_owned()), ("reason", reason.to_owned())]
    }
}

pub struct Metrics {
    registry: Registry,
    reconciles: Family<Vec<(&'static str, String)>, Counter>,
    duration: Histogram,
}

impl Metrics {
    pub fn new(aws_calls: &AwsCalls) -> Self {
        let mut registry = Registry::with_prefix("operator");
        let reconciles = Family::default();
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
        registry.register(
            "reconciles",
            "Reconciles by what the status showed after them (ready, provisioning, degraded, failed, deleting, deleted) or error, with the reason",
            reconciles.clone(),
        );
        registry.register("reconcile_duration_seconds", "How long one reconcile took", duration.clone());
        registry.register("aws_calls", "AWS API calls by service and operation", aws_calls.0.clone());
        Self { registry, reconciles, duration }
    }

    pub fn observe_reconcile(&self, took: Duration, result: ReconcileResult) {
        self.reconciles.get_or_create(&result.labels()).inc();
        self.duration.observe(took.as_secs_f64());
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
        metrics.observe_reconcile(Duration::from_millis(5), ReconcileResult::Status(Phase::Failed, Some("AwsRefused")));
        metrics.observe_reconcile(Duration::from_millis(5), ReconcileResult::Status(Phase::Ready, None));
        let text = metrics.encode();
        assert!(text.contains(r#"operator_reconciles_total{result="failed",reason="AwsRefused"} 1"#), "{text}");
        assert!(text.contains(r#"operator_reconciles_total{result="ready",reason=""} 1"#), "{text}");
        assert!(!text.contains(r#"result="ok""#), "{text}");
    }
}
