//! The alert rules the chart ships (charts/metrics-pipeline-operator/rules/alerts.yaml), checked and
//! tested by Prometheus's own promtool: each alert fires in the case that must raise it, with its
//! labels and annotations, and stays quiet in the case beside it that must not (a stream quiet at
//! night, a reader catching up, a rolling update of the operator).

use std::process::Command;

use metrics_pipeline_e2e::repo_path;

fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(repo_path("."))
        .output()
        .expect("promtool runs (scripts/dev-env up installs Debian's prometheus package)");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool {}:\n{said}", args.join(" "));
    said
}

#[test]
fn the_rules_are_valid_prometheus_rules() {
    let said = promtool(&["check", "rules", "charts/metrics-pipeline-operator/rules/alerts.yaml"]);
    assert!(said.contains("SUCCESS: 11 rules found"), "{said}");
}

#[test]
fn every_alert_fires_when_it_must_and_stays_quiet_when_it_must_not() {
    let said = promtool(&["test", "rules", "tests/alerts/alerts_test.yaml"]);
    assert!(said.contains("SUCCESS"), "{said}");
}
