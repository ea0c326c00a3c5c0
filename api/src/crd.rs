//! The CRD manifest generated from the Rust types, and where it is committed.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;

use crate::MetricsPipeline;

/// Where the generated CRD is committed, relative to the repository root: inside the Helm chart,
/// whose `templates/crd.yaml` installs and upgrades it with the release (not `crds/`, which Helm
/// never upgrades), and for `kubectl apply -f`.
pub const CRD_PATH: &str = "charts/metrics-pipeline-operator/crd/metricspipelines.yaml";

/// The `MetricsPipeline` CRD.
///
/// Optional fields lose `nullable: true`: the operator never writes nulls, an API server of
/// v1.20 or later prunes nulls a user writes, and v1.20 publishes a nullable field without its
/// type, so `kubectl explain` would show `<>` instead of `<string>`.
pub fn crd() -> CustomResourceDefinition {
    let mut json = serde_json::to_value(MetricsPipeline::crd()).expect("a CRD always serializes");
    strip_nullable(&mut json);
    serde_json::from_value(json).expect("removing `nullable` keeps a valid CRD")
}

fn strip_nullable(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("nullable");
            map.values_mut().for_each(strip_nullable);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nullable),
        _ => {}
    }
}

/// The repository root, for this package's own programs and tests: the checkout cargo runs them
/// from (`CARGO_MANIFEST_DIR` at run time), not the one `env!` saw when a shared build cache
/// compiled them.
pub fn repository_root() -> std::path::PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    std::path::Path::new(&manifest_dir).join("..")
}

/// The CRD as YAML, exactly as committed.
pub fn crd_yaml() -> String {
    let body = serde_yaml::to_string(&crd()).expect("a CRD always serializes");
    format!("# Generated from api/src/pipeline.rs by `cargo run -p metrics-pipeline-api --bin crdgen`; do not edit.\n{body}")
}

/// Fails unless the file committed at `relative` (to the repository root) is `generated`.
#[cfg(test)]
pub(crate) fn assert_committed(relative: &str, generated: &str) {
    let path = repository_root().join(relative);
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    assert!(committed == generated, "{relative} is out of date with the Rust types: run `cargo run -p metrics-pipeline-api --bin crdgen`");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crd_matches_the_types() {
        assert_committed(CRD_PATH, &crd_yaml());
    }

    #[test]
    fn no_field_is_published_without_a_type() {
        assert!(!crd_yaml().contains("nullable"));
    }
}
