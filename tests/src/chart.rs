//! The Helm chart through Helm v4's own Go SDK (`tests/chart/helm.py` on `$HELM_PYTHON`, which
//! `scripts/dev-env up` installs): `render` is what `helm install` would create, values checked
//! against values.schema.json; `lint` is `helm lint --strict`; `apply` sends every document to the
//! API server with server-side apply, as `helm install` would create them.

use std::process::Command;

use anyhow::{Context, bail};
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::{Scope, pinned_kind};
use kube::{Client, ResourceExt};
use serde::Deserialize;

use crate::{FIELD_MANAGER, repo_path};

pub const CHART: &str = "charts/metrics-pipeline-operator";

/// `helm template <release> CHART --namespace <namespace> -f <values>` with the chart's CRDs
/// first; the error names the values the schema refuses.
pub fn render(namespace: &str, release: &str, values: &serde_json::Value) -> anyhow::Result<String> {
    helm(&["template", CHART, namespace, release], values)
}

/// `helm lint --strict CHART -f <values>`: Helm's findings, an error on any warning.
pub fn lint(values: &serde_json::Value) -> anyhow::Result<String> {
    helm(&["lint", CHART], values)
}

fn helm(args: &[&str], values: &serde_json::Value) -> anyhow::Result<String> {
    // Tests render the same release side by side: each call has a values file of its own.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let values_file = std::env::temp_dir().join(format!("chart-values-{}-{call}.json", std::process::id()));
    std::fs::write(&values_file, serde_json::to_vec(values)?)?;
    let python = std::env::var("HELM_PYTHON").context("HELM_PYTHON is not set: source .dev-env/env (scripts/dev-env up)")?;
    let output = Command::new(&python)
        .arg("tests/chart/helm.py")
        .args(args)
        .arg(&values_file)
        .current_dir(repo_path("."))
        .output()
        .with_context(|| format!("cannot run {python} (scripts/dev-env up installs Helm's SDK there)"))?;
    let _ = std::fs::remove_file(&values_file);
    if !output.status.success() {
        bail!("{}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// Applies every document of a rendered chart; returns the objects, as applied.
pub async fn apply(client: &Client, manifests: &str) -> anyhow::Result<Vec<DynamicObject>> {
    let mut applied = Vec::new();
    for document in serde_yaml::Deserializer::from_str(manifests) {
        let value = serde_json::Value::deserialize(document)?;
        if value.is_null() {
            continue;
        }
        let object: DynamicObject = serde_json::from_value(value)?;
        let types = object.types.clone().context("a document without apiVersion and kind")?;
        let gvk = GroupVersionKind::try_from(&types)?;
        let (resource, capabilities) = pinned_kind(client, &gvk).await?;
        let api: Api<DynamicObject> = match (capabilities.scope, object.namespace()) {
            (Scope::Namespaced, Some(namespace)) => Api::namespaced_with(client.clone(), &namespace, &resource),
            (Scope::Namespaced, None) => bail!("{} {} names no namespace", types.kind, object.name_any()),
            (Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
        };
        applied.push(api.patch(&object.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&object)).await?);
    }
    Ok(applied)
}
