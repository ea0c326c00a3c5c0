//! Prometheus metrics of the operator: reconciles by result, their duration, and AWS calls.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::aws::AwsCalls;
use crate::error::Error;

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
        registry.register("reconciles", "Reconciles by result (ok, or the error's reason)", reconciles.clone());
        registry.register("reconcile_duration_seconds", "How long one reconcile took", duration.clone());
        registry.register("aws_calls", "AWS API calls by service and operation", aws_calls.0.clone());
        Self { registry, reconciles, duration }
    }

    pub fn observe_reconcile(&self, took: Duration, error: Option<&Error>) {
        let result = error.map_or("ok", Error::reason);
        self.reconciles.get_or_create(&vec![("result", result.to_owned())]).inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}
