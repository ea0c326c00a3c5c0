//! `quickstart`: runs the example pipeline end to end on the local control plane and the AWS
//! emulator (`scripts/dev-env up`), then prints what Athena would return for each component.
//! `scripts/quickstart` builds everything and runs this.

use std::process::ExitCode;
use std::time::Instant;

use metrics_pipeline_e2e::cluster::prepare_namespace;
use metrics_pipeline_e2e::kube_client;
use metrics_pipeline_e2e::query::format_rows;
use metrics_pipeline_e2e::quickstart::{COMPONENTS, SHOWN_COLUMNS, as_rows, default_log_dir, example, run};

const NAMESPACE: &str = "quickstart";

#[tokio::main]
async fn main() -> ExitCode {
    match quickstart().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("quickstart failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn quickstart() -> anyhow::Result<()> {
    let started = Instant::now();
    let progress = move |line: String| println!("[{:>5.1}s] {line}", started.elapsed().as_secs_f64());
    let client = kube_client().await?;
    prepare_namespace(&client, NAMESPACE).await?;
    let outcome = run(&client, NAMESPACE, &example()?, &default_log_dir(), &progress).await?;
    for component in COMPONENTS {
        println!("\nSELECT * FROM {}.{} WHERE componentName = '{component}'", outcome.database, outcome.table);
        println!("{}", format_rows(&as_rows(&outcome.rows[component]), &SHOWN_COLUMNS));
    }
    println!(
        "\n{} events in, {} aggregate rows out, in {:.0}s",
        outcome.events.len(),
        outcome.rows.values().map(Vec::len).sum::<usize>(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
