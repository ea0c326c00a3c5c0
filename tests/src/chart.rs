//! The Helm chart without Helm: `tests/chart/render.go` renders it as `helm template` does
//! (text/template, sprig, values checked against values.schema.json), and `apply` sends every
//! document to the API server with server-side apply, as `helm install` would create them.

use std::process::Command;

use anyhow::{Context, bail};
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::{Scope, pinned_kind};
use kube::{Client, ResourceExt};
use serde::Deserialize;

use crate::{FIELD_MANAGER, repo_path};

pub const CHART: &str = "charts/metrics-pipeline-operator";

/// `helm template <release> CHART --namespace <namespace> -f <values>`; the error names the
/// values the schema refuses.
pub fn render(namespace: &str, release: &str, values: &serde_json::Value) -> anyhow::Result<String> {
    // Tests render the same release side by side: each render has a file of its own.
    static RENDERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let render = RENDERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let values_file = std::env::temp_dir().join(format!("chart-values-{namespace}-{release}-{}-{render}.yaml", std::process::id()));
    // JSON is YAML.
    std::fs::write(&values_file, serde_json::to_vec(values)?)?;
    let output = Command::new("go")
        .args(["run", "render.go"])
        .arg(repo_path(CHART))
        .args([namespace, release])
        .arg(&values_file)
        .current_dir(repo_path("tests/chart"))
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .output()
        .context("cannot run `go` (Debian: golang-go; scripts/dev-env up installs it)")?;
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
