//! `quickstart`: runs the example pipeline end to end on the local control plane and the AWS
//! emulator (`scripts/dev-env up`), then shows a query over the Glue table and its result, as
//! `scripts/query` answers it. The pipeline is deleted at the end but keeps its bucket and table
//! (`deletionPolicy: Retain`), so you can ask your own questions afterwards; the next run first
//! removes what the last one kept. `scripts/quickstart` builds everything and runs this.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use metrics_pipeline_api::MetricsPipeline;
use metrics_pipeline_api::config::AwsTarget;
use metrics_pipeline_api::naming::{CLUSTER_TAG, PIPELINE_UID_TAG};
use metrics_pipeline_api::pipeline::DeletionPolicy;
use metrics_pipeline_api::validation::validate;
use metrics_pipeline_e2e::cluster::prepare_namespace;
use metrics_pipeline_e2e::kube_client;
use metrics_pipeline_e2e::query::{Format, query};
use metrics_pipeline_e2e::quickstart::{default_log_dir, example, run};
use metrics_pipeline_operator::aws::bucket::Bucket;
use metrics_pipeline_operator::aws::catalog::{GlueDatabase, GlueTable};
use metrics_pipeline_operator::aws::resource::delete;
use metrics_pipeline_operator::aws::{AwsCalls, AwsClients};
use metrics_pipeline_operator::managed::Owner;
use metrics_pipeline_runtime::sdk::sdk_config;

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
    let mut pipeline = example()?;
    pipeline.spec.deletion_policy = DeletionPolicy::Retain;
    remove_what_the_last_run_kept(&pipeline).await?;
    let outcome = run(&client, NAMESPACE, &pipeline, &default_log_dir(), &progress).await?;

    let sql = format!(
        "SELECT componentName, metricName, unit, minValue, maxValue, fromTimestamp, toTimestamp\nFROM {}.{}\nORDER BY componentName, metricName, windowStart",
        outcome.database, outcome.table
    );
    println!("\n{sql}\n{}", query(&sql, Format::Table).await?);
    println!(
        "{} events in, {} aggregate rows out, in {:.0}s",
        outcome.events.len(),
        outcome.rows.values().map(Vec::len).sum::<usize>(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "\nThe bucket and the table stay until the next quickstart (or `scripts/dev-env down`). Ask your own question:\n  \
         . .dev-env/env && scripts/query \"SELECT metricName, avg(avgValue) FROM {}.{} GROUP BY metricName\"",
        outcome.database, outcome.table
    );
    Ok(())
}

/// The bucket and Glue table a previous quickstart kept, removed so that this run's table holds
/// only this run's windows.
async fn remove_what_the_last_run_kept(pipeline: &MetricsPipeline) -> anyhow::Result<()> {
    let mut pipeline = pipeline.clone();
    pipeline.metadata.namespace = Some(NAMESPACE.to_owned());
    let sdk = sdk_config(None).await;
    let account_id = aws_sdk_sts::Client::new(&sdk).get_caller_identity().send().await?.account.context("no account")?;
    let target = AwsTarget { account_id, default_region: sdk.region().map(ToString::to_string) };
    let config = validate(&pipeline, &target).map_err(|errors| anyhow::anyhow!("{errors}"))?;
    let (clients, names) = (AwsClients::new(&sdk, &config.region, &AwsCalls::default()), &config.names);
    // The earlier run's pipeline (another UID) made them: its tags name it.
    let Ok(tagging) = clients.s3.get_bucket_tagging().bucket(&names.bucket).send().await else { return Ok(()) };
    let tag = |key: &str| tagging.tag_set().iter().find(|tag| tag.key() == key).map(|tag| tag.value().to_owned());
    let (Some(uid), Some(cluster)) = (tag(PIPELINE_UID_TAG), tag(CLUSTER_TAG)) else { return Ok(()) };
    let earlier = Owner::named(names.owner.clone(), uid, cluster);
    let account_id = &target.account_id;
    delete(&GlueTable { database: &names.glue_database, table: &names.glue_table, account_id }, &clients, &earlier).await?;
    delete(&GlueDatabase { name: &names.glue_database, account_id }, &clients, &earlier).await?;
    delete(&Bucket { name: &names.bucket, account_id }, &clients, &earlier).await?;
    Ok(())
}
