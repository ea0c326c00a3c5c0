//! Questions to the pipeline's Glue tables, answered by `scripts/query`: DuckDB over the objects
//! fetched through the S3 API, with the tables built from the Glue catalog (columns and types,
//! SerDe, partitions) as Athena reads them. The tests read what the pipeline delivered through
//! the same command a user runs, and a record a query engine could not read fails the query.

use anyhow::{Context, bail};
use metrics_pipeline_aws_proxy::emulator_url;
use serde_json::{Map, Value};
use tokio::process::Command;

use crate::repo_path;

/// How `scripts/query` prints the result.
#[derive(Clone, Copy, Debug)]
pub enum Format {
    /// A table for people: a header, a rule, one line a row.
    Table,
    /// One JSON object a row, keyed by column name (lower case, as Athena names columns).
    Json,
    /// A header line, then one comma-separated line a row.
    Csv,
}

/// Runs one SQL statement with `scripts/query` against the emulator, past the AWS proxy (the
/// query stands in for Athena, which is not the program under test); its output, or its error
/// message.
pub async fn query(sql: &str, format: Format) -> anyhow::Result<String> {
    let format = match format {
        Format::Table => "table",
        Format::Json => "json",
        Format::Csv => "csv",
    };
    let mut command = Command::new(repo_path("scripts/query"));
    if let Some(emulator) = emulator_url() {
        command.env("AWS_ENDPOINT_URL", emulator);
    }
    let output = command
        .args(["--format", format, sql])
        .output()
        .await
        .context("cannot run scripts/query (`scripts/dev-env up` installs what it needs)")?;
    if !output.status.success() {
        bail!("{}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// The rows of `sql`, each a column name → value map.
pub async fn select(sql: &str) -> anyhow::Result<Vec<Map<String, Value>>> {
    let output = query(sql, Format::Json).await?;
    output.lines().map(|line| serde_json::from_str(line).with_context(|| format!("scripts/query printed `{line}`"))).collect()
}
