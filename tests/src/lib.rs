//! Test harness shared by the integration and end-to-end tests: clients for the local control
//! plane, node and AWS emulator that `scripts/dev-env up` starts, per-test isolation, and the
//! Firehose delivery stand-in (`delivery`), since the emulator does not run Firehose's data path.

pub mod chart;
pub mod cluster;
pub mod delivery;
pub mod in_process;
pub mod parquet;
pub mod produce;
pub mod query;
pub mod quickstart;
pub mod relay;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use metrics_pipeline_api::crd::crd;

/// Field manager of everything the tests apply.
pub const FIELD_MANAGER: &str = "metrics-pipeline-tests";

pub use metrics_pipeline_test_support::repo_path;

/// The owner of the Glue table a test makes by hand (`pipeline` as `<namespace>/<name>`).
pub fn table_owner(pipeline: &str) -> metrics_pipeline_operator::managed::Owner {
    metrics_pipeline_operator::managed::Owner::named(pipeline, "test", "test")
}

/// The directory holding this workspace's programs: the one the running executable was built into.
pub fn workspace_bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // Test executables live in target/<profile>/deps, binaries in target/<profile>.
    exe.ancestors()
        .skip(1)
        .take(2)
        .find(|dir| dir.join("metrics-pipeline-operator").is_file())
        .map(std::path::Path::to_path_buf)
        .context("metrics-pipeline-operator is not built next to this program: run `cargo build --workspace --bins` first")
}

/// The tests' own AWS settings: the environment's credentials (the allow-everything identity),
/// straight to the emulator. With `AWS_FAULTS` the programs under test reach it through the AWS
/// proxy; a test's own reads and writes (its checks, the Firehose stand-in, the producer) go past
/// it, so an injected fault is met by the program under test, never by the test itself.
pub async fn emulator_sdk() -> aws_config::SdkConfig {
    let emulator = metrics_pipeline_aws_proxy::emulator_url().expect("run `scripts/dev-env up` and `. .dev-env/env`");
    metrics_pipeline_aws_proxy::sdk_config_for(&emulator).await
}

/// A client for the API server named by `KUBECONFIG` (`. .dev-env/env` after `scripts/dev-env up`).
pub async fn kube_client() -> anyhow::Result<Client> {
    if std::env::var_os("KUBECONFIG").is_none() {
        bail!("KUBECONFIG is not set: run `scripts/dev-env up` and `. .dev-env/env`, or run the tests with `scripts/test`");
    }
    Client::try_default().await.context("cannot reach the API server named by KUBECONFIG")
}

/// Installs the generated CRD with server-side apply and waits until it is Established.
pub async fn install_crd(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let definition = crd();
    let name = definition.name_any();
    crds.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&definition)).await?;
    let established = await_condition(crds, &name, conditions::is_crd_established());
    tokio::time::timeout(Duration::from_secs(30), established).await.context("the CRD did not become Established in 30s")??;
    Ok(())
}

/// A namespace of its own for one test, with the AWS credentials its pods read; `delete` removes
/// it and everything in it.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// Creates `<prefix>-<pid>-<n>`, unique across parallel tests and repeated runs.
    pub async fn create(client: &Client, prefix: &str) -> anyhow::Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!("{prefix}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        cluster::prepare_namespace(client, &name).await?;
        Ok(Self { name, client: client.clone() })
    }

    pub async fn delete(self) -> anyhow::Result<()> {
        Api::<Namespace>::all(self.client).delete(&self.name, &DeleteParams::default()).await?;
        Ok(())
    }
}

/// Runs `program` with `input` on stdin and returns its stdout (gzip, jq).
pub fn pipe_through(program: &str, args: &[&str], input: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = input.to_vec();
    // Written from another thread so a large input cannot deadlock against a full stdout pipe.
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output()?;
    let _ = writer.join().expect("the writer does not panic");
    if !output.status.success() {
        bail!("{program}: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(output.stdout)
}
