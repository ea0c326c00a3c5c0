//! What the tests' pods need from the cluster they run on, the local node (`scripts/dev-env`) or
//! kind (`scripts/kind-e2e`): the images of this checkout, the AWS endpoint as pods reach it, and
//! static AWS credentials in a Secret of each namespace (neither cluster has IRSA).

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use metrics_pipeline_operator::workload::WorkloadSettings;
use metrics_pipeline_test_support::Identity;
use serde_json::json;

use crate::FIELD_MANAGER;

/// The Secret with AWS credentials that the aggregators read: the aggregator's identity
/// (`scripts/aws-identities`) when the emulator enforces IAM.
pub const CREDENTIALS_SECRET: &str = "aws-credentials";
/// The Secret with the operator's AWS credentials, for the operator's pods (the chart's
/// `awsCredentialsSecret`).
pub const OPERATOR_CREDENTIALS_SECRET: &str = "aws-operator-credentials";
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

/// Creates `namespace` if it does not exist, with the credentials Secrets of the aggregator's and
/// the operator's identities (what IRSA would give the pods on EKS; the tests' own credentials
/// when the emulator does not enforce IAM).
pub async fn prepare_namespace(client: &Client, namespace: &str) -> anyhow::Result<()> {
    let apply = PatchParams::apply(FIELD_MANAGER);
    let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
    Api::<Namespace>::all(client.clone()).patch(namespace, &apply, &Patch::Apply(object)).await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for (name, identity) in [(CREDENTIALS_SECRET, Identity::Aggregator), (OPERATOR_CREDENTIALS_SECRET, Identity::Operator)] {
        let data: serde_json::Map<String, serde_json::Value> =
            identity.env_or_tests().into_iter().map(|(key, value)| (key.to_owned(), value.into())).collect();
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data});
        secrets.patch(name, &apply, &Patch::Apply(secret)).await?;
    }
    Ok(())
}
