//! What the tests' pods need from the cluster they run on, the local node (`scripts/dev-env`) or
//! kind (`scripts/kind-e2e`): the images of this checkout, the AWS endpoint as pods reach it, and
//! static AWS credentials in a Secret of each namespace (neither cluster has IRSA).

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use metrics_pipeline_operator::workload::WorkloadSettings;
use serde_json::json;

use crate::FIELD_MANAGER;

/// The Secret with AWS credentials that the operator's pods and the aggregators read.
pub const CREDENTIALS_SECRET: &str = "aws-credentials";
/// Set by kind-e2e: the AWS endpoint as pods reach it, when it differs from the tests' own
/// `AWS_ENDPOINT_URL` (which, on the local node, pods reach as well).
pub const POD_AWS_ENDPOINT_ENV: &str = "METRICS_PIPELINE_POD_AWS_ENDPOINT";

/// The image of one of this checkout's programs, as `scripts/dev-env images` (or kind-e2e) named it.
pub fn image(program: &str) -> String {
    format!("{}/{program}:{}", image_registry(), image_tag())
}

/// Where the images are, as the chart's `image.repository` prefix.
pub fn image_registry() -> String {
    std::env::var("METRICS_PIPELINE_IMAGE_REGISTRY").unwrap_or_else(|_| "metrics-pipeline.local".into())
}

pub fn image_tag() -> String {
    std::env::var("METRICS_PIPELINE_IMAGE_TAG").unwrap_or_else(|_| "dev".into())
}

/// The AWS endpoint the pods are given.
pub fn pod_aws_endpoint() -> Option<String> {
    std::env::var(POD_AWS_ENDPOINT_ENV).or_else(|_| std::env::var("AWS_ENDPOINT_URL")).ok()
}

/// The operator's workload settings for this cluster: this checkout's aggregator image, the
/// emulator as the pods reach it, credentials from the namespace's Secret.
pub fn workload_settings() -> WorkloadSettings {
    WorkloadSettings {
        default_image: image("metrics-aggregator"),
        aws_endpoint_url: pod_aws_endpoint(),
        credentials_secret: Some(CREDENTIALS_SECRET.into()),
    }
}

/// Creates `namespace` if it does not exist, with the credentials Secret of the tests' own
/// environment (what IRSA would give the pods on EKS).
pub async fn prepare_namespace(client: &Client, namespace: &str) -> anyhow::Result<()> {
    let apply = PatchParams::apply(FIELD_MANAGER);
    let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
    Api::<Namespace>::all(client.clone()).patch(namespace, &apply, &Patch::Apply(object)).await?;
    let keys = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"];
    let data: serde_json::Map<String, serde_json::Value> =
        keys.iter().filter_map(|key| std::env::var(key).ok().map(|value| (key.to_string(), value.into()))).collect();
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": CREDENTIALS_SECRET}, "stringData": data});
    Api::<Secret>::namespaced(client.clone(), namespace).patch(CREDENTIALS_SECRET, &apply, &Patch::Apply(secret)).await?;
    Ok(())
}
