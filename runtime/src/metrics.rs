//! What both programs' `/metrics` answer with.

/// The content type of prometheus-client's text encoding: OpenMetrics 1.0, which Prometheus
/// negotiates and reads with `# EOF`, units and created timestamps.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
