//! The Glue database and table over the bucket, so Athena can query the aggregates, and their
//! partitions: one registered per `componentName=` prefix found in the bucket, or projection
//! over the components the spec lists. Ownership is recorded in the objects' parameters.

use std::collections::{BTreeSet, HashMap};

use aws_sdk_glue::types::{Column, Database, DatabaseInput, PartitionInput, SerDeInfo, StorageDescriptor, Table, TableInput};
use metrics_pipeline_api::config::PartitionConfig;
use metrics_pipeline_api::naming::OWNER_TAG;
use metrics_pipeline_api::pipeline::{AwsResourceRef, DeliveryFormat};

use super::{AwsClients, partition};
use crate::error::{AwsError, AwsErrorKind, AwsResultExt, Error};
use crate::managed::{Outcome, check_owner, holder};

/// Glue's answer for a database or table that does not exist.
const NOT_FOUND: &str = "EntityNotFoundException";

/// The partition column: Firehose's prefix writes `componentName=<value>/`.
pub const PARTITION_KEY: &str = "componentName";
/// Glue takes at most 100 partitions per BatchCreatePartition.
const MAX_PARTITIONS_PER_CALL: usize = 100;

/// The aggregate's fields as Athena reads them (names are case-insensitive there).
const COLUMNS: [(&str, &str); 12] = [
    ("metricName", "string"),
    ("unit", "string"),
    ("minValue", "double"),
    ("maxValue", "double"),
    ("avgValue", "double"),
    ("count", "bigint"),
    ("sum", "double"),
    ("fromTimestamp", "timestamp"),
    ("toTimestamp", "timestamp"),
    ("windowStart", "timestamp"),
    ("windowEnd", "timestamp"),
    ("windowId", "string"),
];
const REVISION_COLUMN: (&str, &str) = ("revision", "int");

/// What the table looks like: everything the operator decides about it.
pub struct TableSpec<'a> {
    pub database: &'a str,
    pub table: &'a str,
    pub bucket: &'a str,
    pub format: DeliveryFormat,
    pub partitions: &'a PartitionConfig,
    pub owner: &'a str,
}

fn columns() -> Vec<Column> {
    COLUMNS
        .iter()
        .chain([&REVISION_COLUMN])
        .map(|(name, kind)| Column::builder().name(*name).r#type(*kind).build().expect("name is set"))
        .collect()
}

/// Storage of the table, or of one partition at `location`.
pub fn storage(format: DeliveryFormat, location: String) -> StorageDescriptor {
    let (input, output, serde, parameters): (&str, &str, &str, &[(&str, &str)]) = match format {
        DeliveryFormat::Json => (
            "org.apache.hadoop.mapred.TextInputFormat",
            "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat",
            "org.openx.data.jsonserde.JsonSerDe",
            // Column names are lower case in Athena; the records are camelCase.
            &[("case.insensitive", "TRUE"), ("ignore.malformed.json", "FALSE")],
        ),
        DeliveryFormat::Parquet => (
            "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
            "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
            "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
            &[],
        ),
    };
    let serde_info = SerDeInfo::builder()
        .serialization_library(serde)
        .set_parameters(Some(parameters.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()))
        .build();
    StorageDescriptor::builder()
        .set_columns(Some(columns()))
        .location(location)
        .input_format(input)
        .output_format(output)
        .serde_info(serde_info)
        .build()
}

pub fn partition_location(bucket: &str, component: &str) -> String {
    format!("s3://{bucket}/{PARTITION_KEY}={component}/")
}

/// The exact TableInput of CreateTable/UpdateTable.
pub fn desired_table(spec: &TableSpec<'_>) -> TableInput {
    let mut parameters: HashMap<String, String> = [
        ("EXTERNAL", "TRUE"),
        ("classification", if spec.format == DeliveryFormat::Json { "json" } else { "parquet" }),
        (OWNER_TAG, spec.owner),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    if let PartitionConfig::Projected(components) = spec.partitions {
        parameters.insert("projection.enabled".into(), "true".into());
        parameters.insert(format!("projection.{PARTITION_KEY}.type"), "enum".into());
        parameters.insert(format!("projection.{PARTITION_KEY}.values"), components.join(","));
        parameters.insert("storage.location.template".into(), format!("s3://{}/{PARTITION_KEY}=${{{PARTITION_KEY}}}/", spec.bucket));
    }
    TableInput::builder()
        .name(spec.table)
        .description("Windowed metric aggregates written by Firehose; one partition per componentName")
        .table_type("EXTERNAL_TABLE")
        .set_parameters(Some(parameters))
        .storage_descriptor(storage(spec.format, format!("s3://{}/", spec.bucket)))
        .partition_keys(Column::builder().name(PARTITION_KEY).r#type("string").build().expect("name is set"))
        .build()
        .expect("name is set")
}

/// Whether the table as it is matches `desired` in everything the operator decides.
fn table_matches(found: &Table, desired: &TableInput) -> bool {
    let same_columns = |a: &[Column], b: &[Column]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.name().eq_ignore_ascii_case(y.name()) && x.r#type() == y.r#type())
    };
    let (Some(found_storage), Some(desired_storage)) = (found.storage_descriptor(), desired.storage_descriptor()) else { return false };
    found.parameters() == desired.parameters()
        && same_columns(found.partition_keys(), desired.partition_keys())
        && same_columns(found_storage.columns(), desired_storage.columns())
        && found_storage.location() == desired_storage.location()
        && found_storage.input_format() == desired_storage.input_format()
        && found_storage.serde_info().and_then(|s| s.serialization_library())
            == desired_storage.serde_info().and_then(|s| s.serialization_library())
}

pub fn database_arn(region: &str, account_id: &str, database: &str) -> String {
    format!("arn:{}:glue:{region}:{account_id}:database/{database}", partition(region))
}

pub fn table_arn(region: &str, account_id: &str, database: &str, table: &str) -> String {
    format!("arn:{}:glue:{region}:{account_id}:table/{database}/{table}", partition(region))
}

async fn observe_database(clients: &AwsClients, database: &str) -> Result<Option<Database>, Error> {
    let found = clients.glue.get_database().name(database).send().await;
    Ok(found.absent_on(&[NOT_FOUND], || format!("reading Glue database {database}"))?.and_then(|output| output.database))
}

async fn observe_table(clients: &AwsClients, database: &str, table: &str) -> Result<Option<Table>, Error> {
    let found = clients.glue.get_table().database_name(database).name(table).send().await;
    Ok(found.absent_on(&[NOT_FOUND], || format!("reading Glue table {database}.{table}"))?.and_then(|output| output.table))
}

/// Glue objects carry ownership as parameters, as AWS resources carry it as tags.
fn parameters(parameters: Option<&HashMap<String, String>>) -> impl Iterator<Item = (&str, &str)> {
    parameters.into_iter().flatten().map(|(key, value)| (key.as_str(), value.as_str()))
}

pub async fn ensure_database(
    clients: &AwsClients,
    database: &str,
    owner: &str,
    account_id: &str,
) -> Result<(AwsResourceRef, Outcome), Error> {
    let mut outcome = Outcome::default();
    match observe_database(clients, database).await? {
        Some(found) => check_owner("Glue database", database, owner, parameters(found.parameters()))?,
        None => {
            let input = DatabaseInput::builder()
                .name(database)
                .description(format!("Metrics pipeline {owner}"))
                .parameters(OWNER_TAG, owner)
                .build()
                .expect("name is set");
            clients.glue.create_database().database_input(input).send().await.or_aws(|| format!("creating Glue database {database}"))?;
            outcome.changed(format!("created Glue database {database}"));
        }
    }
    Ok((AwsResourceRef { name: database.to_owned(), arn: Some(database_arn(&clients.region, account_id, database)) }, outcome))
}

pub async fn ensure_table(clients: &AwsClients, spec: &TableSpec<'_>, account_id: &str) -> Result<(AwsResourceRef, Outcome), Error> {
    let mut outcome = Outcome::default();
    let (database, table) = (spec.database, spec.table);
    let desired = desired_table(spec);
    match observe_table(clients, database, table).await? {
        Some(found) => {
            check_owner("Glue table", &format!("{database}.{table}"), spec.owner, parameters(found.parameters()))?;
            if !table_matches(&found, &desired) {
                (clients.glue.update_table())
                    .database_name(database)
                    .table_input(desired)
                    .send()
                    .await
                    .or_aws(|| format!("updating Glue table {database}.{table}"))?;
                outcome.changed(format!("updated Glue table {database}.{table}"));
            }
        }
        None => {
            (clients.glue.create_table())
                .database_name(database)
                .table_input(desired)
                .send()
                .await
                .or_aws(|| format!("creating Glue table {database}.{table}"))?;
            outcome.changed(format!("created Glue table {database}.{table}"));
        }
    }
    if matches!(spec.partitions, PartitionConfig::Registered) {
        outcome.merge(register_partitions(clients, spec).await?);
    }
    Ok((AwsResourceRef { name: table.to_owned(), arn: Some(table_arn(&clients.region, account_id, database, table)) }, outcome))
}

/// Components with a `componentName=` prefix in the bucket.
async fn components_in_bucket(clients: &AwsClients, bucket: &str) -> Result<BTreeSet<String>, Error> {
    let mut components = BTreeSet::new();
    let mut token = None;
    loop {
        let listed = (clients.s3.list_objects_v2())
            .bucket(bucket)
            .prefix(format!("{PARTITION_KEY}="))
            .delimiter("/")
            .set_continuation_token(token)
            .send()
            .await
            .or_aws(|| format!("listing partitions in S3 bucket {bucket}"))?;
        for prefix in listed.common_prefixes().iter().filter_map(|p| p.prefix()) {
            if let Some(value) = prefix.strip_prefix(&format!("{PARTITION_KEY}=")).and_then(|rest| rest.strip_suffix('/')) {
                components.insert(value.to_owned());
            }
        }
        token = listed.next_continuation_token.filter(|_| listed.is_truncated == Some(true));
        if token.is_none() {
            return Ok(components);
        }
    }
}

async fn registered_partitions(clients: &AwsClients, database: &str, table: &str) -> Result<BTreeSet<String>, Error> {
    let mut registered = BTreeSet::new();
    let mut token = None;
    loop {
        let page = (clients.glue.get_partitions())
            .database_name(database)
            .table_name(table)
            .set_next_token(token)
            .send()
            .await
            .or_aws(|| format!("listing partitions of Glue table {database}.{table}"))?;
        registered.extend(page.partitions().iter().filter_map(|p| p.values().first().cloned()));
        token = page.next_token;
        if token.is_none() {
            return Ok(registered);
        }
    }
}

/// Registers a partition for every component found in the bucket and not yet in the table.
async fn register_partitions(clients: &AwsClients, spec: &TableSpec<'_>) -> Result<Outcome, Error> {
    let mut outcome = Outcome::default();
    let found = components_in_bucket(clients, spec.bucket).await?;
    if found.is_empty() {
        return Ok(outcome);
    }
    let registered = registered_partitions(clients, spec.database, spec.table).await?;
    let missing: Vec<&String> = found.difference(&registered).collect();
    for chunk in missing.chunks(MAX_PARTITIONS_PER_CALL) {
        let inputs = chunk.iter().map(|component| {
            PartitionInput::builder()
                .values(component.as_str())
                .storage_descriptor(storage(spec.format, partition_location(spec.bucket, component)))
                .build()
        });
        let created = (clients.glue.batch_create_partition())
            .database_name(spec.database)
            .table_name(spec.table)
            .set_partition_input_list(Some(inputs.collect()))
            .send()
            .await
            .or_aws(|| format!("registering partitions of Glue table {}.{}", spec.database, spec.table))?;
        // Registered meanwhile by someone else: fine, the partition is there.
        let failed: Vec<String> = created
            .errors()
            .iter()
            .filter(|e| e.error_detail().and_then(|d| d.error_code()) != Some("AlreadyExistsException"))
            .map(|e| format!("{:?}", e.partition_values()))
            .collect();
        if !failed.is_empty() {
            let action = format!("registering partitions of Glue table {}.{}", spec.database, spec.table);
            return Err(AwsError::new(action, AwsErrorKind::Unavailable, None, format!("refused for {}", failed.join(", "))).into());
        }
        outcome.changed(format!(
            "registered partitions {} of Glue table {}.{}",
            chunk.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", "),
            spec.database,
            spec.table
        ));
    }
    Ok(outcome)
}

/// Deletes the table (with its partitions) and the database if they are this pipeline's;
/// `true` once both are gone.
pub async fn delete(clients: &AwsClients, database: &str, table: &str, owner: &str) -> Result<bool, Error> {
    if let Some(found) = observe_table(clients, database, table).await? {
        match holder(owner, parameters(found.parameters())) {
            None => {
                let deleted = clients.glue.delete_table().database_name(database).name(table).send().await;
                deleted.absent_on(&[NOT_FOUND], || format!("deleting Glue table {database}.{table}"))?;
            }
            Some(holder) => tracing::info!(database, table, %holder, "not this pipeline's table; leaving it"),
        }
    }
    if let Some(found) = observe_database(clients, database).await? {
        match holder(owner, parameters(found.parameters())) {
            None => {
                let deleted = clients.glue.delete_database().name(database).send().await;
                deleted.absent_on(&[NOT_FOUND], || format!("deleting Glue database {database}"))?;
            }
            Some(holder) => tracing::info!(database, %holder, "not this pipeline's database; leaving it"),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(partitions: &PartitionConfig, format: DeliveryFormat) -> TableSpec<'_> {
        TableSpec { database: "p", table: "metric_aggregates", bucket: "p-bucket", format, partitions, owner: "ns/p" }
    }

    #[test]
    fn the_json_table_reads_the_aggregate_with_the_openx_serde_partitioned_by_component() {
        let table = desired_table(&spec(&PartitionConfig::Registered, DeliveryFormat::Json));
        let storage = table.storage_descriptor().unwrap();
        assert_eq!(storage.location(), Some("s3://p-bucket/"));
        assert_eq!(storage.serde_info().unwrap().serialization_library(), Some("org.openx.data.jsonserde.JsonSerDe"));
        let names: Vec<&str> = storage.columns().iter().map(Column::name).collect();
        assert_eq!(
            names,
            [
                "metricName",
                "unit",
                "minValue",
                "maxValue",
                "avgValue",
                "count",
                "sum",
                "fromTimestamp",
                "toTimestamp",
                "windowStart",
                "windowEnd",
                "windowId",
                "revision"
            ]
        );
        assert_eq!(table.partition_keys().iter().map(Column::name).collect::<Vec<_>>(), ["componentName"]);
        assert_eq!(table.parameters().unwrap()["EXTERNAL"], "TRUE");
        assert!(!table.parameters().unwrap().contains_key("projection.enabled"));
    }

    #[test]
    fn projection_lists_the_components_and_templates_the_location() {
        let components = PartitionConfig::Projected(vec!["user-service".into(), "order-service".into()]);
        let table = desired_table(&spec(&components, DeliveryFormat::Json));
        let parameters = table.parameters().unwrap();
        assert_eq!(parameters["projection.enabled"], "true");
        assert_eq!(parameters["projection.componentName.values"], "user-service,order-service");
        assert_eq!(parameters["storage.location.template"], "s3://p-bucket/componentName=${componentName}/");
    }

    #[test]
    fn parquet_tables_use_the_parquet_serde() {
        let table = desired_table(&spec(&PartitionConfig::Registered, DeliveryFormat::Parquet));
        let storage = table.storage_descriptor().unwrap();
        assert_eq!(
            storage.serde_info().unwrap().serialization_library(),
            Some("org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe")
        );
        assert_eq!(table.parameters().unwrap()["classification"], "parquet");
    }
}
