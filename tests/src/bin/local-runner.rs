//! `local-runner`: runs the aggregator pods of a namespace on this machine, as a kubelet would
//! (see `metrics_pipeline_e2e::local_runner`), until Ctrl-C. With it, a pipeline applied by hand on
//! the local control plane becomes Ready and aggregates for real.
//!
//!     cargo run -p metrics-pipeline-e2e --bin local-runner -- [NAMESPACE]

use std::process::ExitCode;

use metrics_pipeline_e2e::kube_client;
use metrics_pipeline_e2e::local_runner::{LocalRunner, workspace_bin_dir};
use metrics_pipeline_e2e::quickstart::default_log_dir;
use metrics_pipeline_operator::workload::aggregator_selector;

#[tokio::main]
async fn main() -> ExitCode {
    let namespace = std::env::args().nth(1).unwrap_or_else(|| "default".into());
    let started = async {
        let client = kube_client().await?;
        let log_dir = default_log_dir();
        let runner = LocalRunner::start(&client, &namespace, &aggregator_selector(), workspace_bin_dir()?, log_dir.clone()).await?;
        println!("running the aggregator pods of namespace {namespace}; their logs are in {}; Ctrl-C stops them", log_dir.display());
        anyhow::Ok(runner)
    };
    match started.await {
        Ok(runner) => {
            let _ = tokio::signal::ctrl_c().await;
            runner.stop().await;
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("local-runner: {error:#}");
            ExitCode::FAILURE
        }
    }
}
