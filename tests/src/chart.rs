//! The Helm chart through Helm v4's own Go SDK (`tests/chart/helm.py` on `$HELM_PYTHON`, which
//! `scripts/dev-env up` installs): `render` is what `helm install` would create, values checked
//! against values.schema.json; `lint` is `helm lint --strict`; `apply` sends every document to the
//! API server with server-side apply, as `helm install` would create them; `install`, `upgrade`,
//! `rollback` and `uninstall` are Helm's own release actions on the cluster, with `--wait`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::{Scope, pinned_kind};
use kube::{Client, ResourceExt};
use serde::Deserialize;

use crate::cluster::{CREDENTIALS_SECRET, OPERATOR_CREDENTIALS_SECRET, image_registry, image_tag, pod_aws_endpoint};
use crate::{FIELD_MANAGER, repo_path};

pub const CHART: &str = "charts/metrics-pipeline-operator";

/// The chart's values for this checkout's images (imported into the node) and the emulator.
pub fn local_values(watch_namespace: &str, replicas: i32) -> serde_json::Value {
    serde_json::json!({
        "replicas": replicas,
        "image": {"repository": format!("{}/metrics-pipeline-operator", image_registry()), "tag": image_tag(), "pullPolicy": "Never"},
        "region": std::env::var("AWS_REGION").unwrap_or_default(),
        "awsEndpointUrl": pod_aws_endpoint().unwrap_or_default(),
        "awsCredentialsSecret": OPERATOR_CREDENTIALS_SECRET,
        "aggregatorCredentialsSecret": CREDENTIALS_SECRET,
        "watchNamespace": watch_namespace,
        "resyncPeriod": "5s",
        "logFormat": "text",
    })
}

/// `helm template <release> CHART --namespace <namespace> -f <values>` with the chart's CRDs
/// first; the error names the values the schema refuses.
pub fn render(namespace: &str, release: &str, values: &serde_json::Value) -> anyhow::Result<String> {
    helm(&["template", CHART, namespace, release], Some(values))
}

/// `helm lint --strict CHART -f <values>`: Helm's findings, an error on any warning.
pub fn lint(values: &serde_json::Value) -> anyhow::Result<String> {
    helm(&["lint", CHART], Some(values))
}

/// One revision of a release, as `helm history` lists it.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct Revision {
    pub revision: u32,
    pub status: String,
    pub chart_version: String,
}

/// `helm install <release> <chart> --namespace <namespace> --wait`: the release's history.
pub fn install(chart: &Path, namespace: &str, release: &str, values: &serde_json::Value) -> anyhow::Result<Vec<Revision>> {
    history_of(helm(&["install", &chart.to_string_lossy(), namespace, release], Some(values))?)
}

/// `helm upgrade <release> <chart> --namespace <namespace> --wait`: the release's history.
pub fn upgrade(chart: &Path, namespace: &str, release: &str, values: &serde_json::Value) -> anyhow::Result<Vec<Revision>> {
    history_of(helm(&["upgrade", &chart.to_string_lossy(), namespace, release], Some(values))?)
}

/// `helm rollback <release> <revision> --namespace <namespace> --wait`: the release's history.
pub fn rollback(namespace: &str, release: &str, revision: u32) -> anyhow::Result<Vec<Revision>> {
    history_of(helm(&["rollback", namespace, release, &revision.to_string()], None)?)
}

/// `helm uninstall <release> --namespace <namespace> --wait`.
pub fn uninstall(namespace: &str, release: &str) -> anyhow::Result<()> {
    helm(&["uninstall", namespace, release], None).map(drop)
}

fn history_of(output: String) -> anyhow::Result<Vec<Revision>> {
    serde_json::from_str(&output).with_context(|| format!("not a release history: {output}"))
}

/// The chart as committed at `commit`, extracted from this checkout's git history into a
/// directory of its own: a release published before this checkout.
pub fn at_commit(commit: &str) -> anyhow::Result<PathBuf> {
    let directory = std::env::temp_dir().join(format!("chart-{commit}-{}", std::process::id()));
    std::fs::create_dir_all(&directory)?;
    let archive = Command::new("git")
        .args(["archive", "--format=tar", commit, CHART])
        .current_dir(repo_path("."))
        .output()
        .context("cannot run git")?;
    if !archive.status.success() {
        bail!(
            "git archive {commit}: {} (the test needs this checkout's history: clone without --depth)",
            String::from_utf8_lossy(&archive.stderr).trim()
        );
    }
    let mut tar = Command::new("tar").args(["-x", "-C"]).arg(&directory).stdin(std::process::Stdio::piped()).spawn()?;
    std::io::Write::write_all(&mut tar.stdin.take().context("tar's stdin")?, &archive.stdout)?;
    if !tar.wait()?.success() {
        bail!("cannot extract the chart of {commit} into {}", directory.display());
    }
    Ok(directory.join(CHART))
}

fn helm(args: &[&str], values: Option<&serde_json::Value>) -> anyhow::Result<String> {
    // Tests render the same release side by side: each call has a values file of its own.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let values_file = std::env::temp_dir().join(format!("chart-values-{}-{call}.json", std::process::id()));
    if let Some(values) = values {
        std::fs::write(&values_file, serde_json::to_vec(values)?)?;
    }
    let python = std::env::var("HELM_PYTHON").context("HELM_PYTHON is not set: source .dev-env/env (scripts/dev-env up)")?;
    let output = Command::new(&python)
        .arg("tests/chart/helm.py")
        .args(args)
        .args(values.map(|_| &values_file))
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

/// Deletes the cluster-wide RBAC objects among those `apply` applied (a namespace's deletion takes
/// the rest; the CRD stays, other tests' pipelines live in it).
pub async fn remove_cluster_scoped(client: &Client, applied: &[DynamicObject]) -> anyhow::Result<()> {
    for object in applied.iter().filter(|o| o.namespace().is_none() && o.types.as_ref().is_some_and(|t| t.kind.starts_with("Cluster"))) {
        let kind = &object.types.as_ref().context("applied objects have their kind")?.kind;
        let resource = kube::api::ApiResource::from_gvk(&GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", kind));
        Api::<DynamicObject>::all_with(client.clone(), &resource).delete(&object.name_any(), &kube::api::DeleteParams::default()).await?;
    }
    Ok(())
}
