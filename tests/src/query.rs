//! The query check: reads a Glue table and its partitions from the emulator, reads the objects
//! under each partition's location the way Athena's OpenX JSON SerDe (keys matched without regard
//! to case, values converted to the column types) or Parquet SerDe would, and fails on any row a
//! query engine could not read. What `SELECT * FROM <table> WHERE componentName = '…'` would return.

use anyhow::{Context, bail, ensure};
use aws_sdk_glue::types::Column;
use metrics_pipeline_model::event::EventTime;
use serde_json::Value;

const JSON_SERDE: &str = "org.openx.data.jsonserde.JsonSerDe";
const PARQUET_SERDE: &str = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe";

/// One row: column name (as the table spells it) to value, partition column last.
pub type Row = Vec<(String, Value)>;

pub struct QueryCheck {
    glue: aws_sdk_glue::Client,
    s3: aws_sdk_s3::Client,
}

impl QueryCheck {
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        Self { glue: aws_sdk_glue::Client::new(sdk), s3: metrics_pipeline_runtime::sdk::s3_client(sdk) }
    }

    /// `SELECT * FROM database.table WHERE <partition key> = value`, every row checked.
    pub async fn select_partition(&self, database: &str, table: &str, value: &str) -> anyhow::Result<Vec<Row>> {
        let found = self
            .glue
            .get_table()
            .database_name(database)
            .name(table)
            .send()
            .await
            .context("reading the table")?
            .table
            .context("no table")?;
        let storage = found.storage_descriptor().context("the table has no storage descriptor")?;
        let serde = storage.serde_info().and_then(|s| s.serialization_library()).unwrap_or_default();
        let parquet = match serde {
            JSON_SERDE => false,
            PARQUET_SERDE => true,
            other => bail!("the check reads JSON and Parquet tables; this one uses {other}"),
        };
        let columns: Vec<Column> = storage.columns().to_vec();
        let partition_key = found.partition_keys().first().context("the table is not partitioned")?.name().to_owned();
        let location = self.partition_location(&found, database, table, &partition_key, value).await?;
        let (bucket, prefix) = location.strip_prefix("s3://").and_then(|rest| rest.split_once('/')).context("an s3:// location")?;

        let listed = self.s3.list_objects_v2().bucket(bucket).prefix(prefix).send().await.context("listing the partition")?;
        let mut rows = Vec::new();
        for object in listed.contents() {
            let key = object.key().unwrap_or_default();
            let body = self.s3.get_object().bucket(bucket).key(key).send().await?.body.collect().await?.to_vec();
            let unreadable = || format!("s3://{bucket}/{key}: a query engine could not read it");
            let mut found = if parquet {
                crate::parquet::read_rows(body, &columns).with_context(unreadable)?
            } else {
                let text = if key.ends_with(".gz") { gunzip(&body)? } else { String::from_utf8(body)? };
                let lines = text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty());
                lines
                    .map(|(number, line)| read_row(line, &columns).with_context(|| format!("{} (line {})", unreadable(), number + 1)))
                    .collect::<anyhow::Result<_>>()?
            };
            for row in &mut found {
                row.push((partition_key.clone(), Value::String(value.to_owned())));
            }
            rows.extend(found);
        }
        Ok(rows)
    }

    /// The partition's location: registered in Glue, or from the projection template.
    async fn partition_location(
        &self,
        table: &aws_sdk_glue::types::Table,
        database: &str,
        name: &str,
        key: &str,
        value: &str,
    ) -> anyhow::Result<String> {
        let parameters = table.parameters().cloned().unwrap_or_default();
        if parameters.get("projection.enabled").map(String::as_str) == Some("true") {
            let values = parameters.get(&format!("projection.{key}.values")).cloned().unwrap_or_default();
            ensure!(values.split(',').any(|v| v == value), "`{value}` is not among the projected values {values}");
            let template = parameters.get("storage.location.template").context("projection without storage.location.template")?;
            return Ok(template.replace(&format!("${{{key}}}"), value));
        }
        let partition = self.glue.get_partition().database_name(database).table_name(name).partition_values(value).send().await;
        let partition =
            partition.with_context(|| format!("no partition {key}={value} is registered"))?.partition.context("no partition")?;
        Ok(partition.storage_descriptor().and_then(|s| s.location()).context("a partition without location")?.to_owned())
    }
}

/// One JSON line as the OpenX SerDe reads it into the columns; a value of the wrong type fails.
fn read_row(line: &str, columns: &[Column]) -> anyhow::Result<Row> {
    let object: serde_json::Map<String, Value> = serde_json::from_str(line).context("not a JSON object")?;
    columns
        .iter()
        .map(|column| {
            let value =
                object.iter().find(|(key, _)| key.eq_ignore_ascii_case(column.name())).map(|(_, v)| v.clone()).unwrap_or(Value::Null);
            let kind = column.r#type().unwrap_or_default();
            let ok = match (&value, kind) {
                (Value::Null, _) => true,
                (Value::String(_), "string") => true,
                (Value::Number(_), "double") => true,
                (Value::Number(number), "bigint" | "int") => number.is_i64() || number.is_u64(),
                (Value::String(text), "timestamp") => EventTime::parse_rfc3339(text).is_some(),
                _ => false,
            };
            if !ok {
                bail!("column {} ({kind}) cannot hold {value}", column.name());
            }
            Ok((column.name().to_owned(), value))
        })
        .collect()
}

/// Rows as a query result table, one line a row.
pub fn format_rows(rows: &[Row], columns: &[&str]) -> String {
    let cell = |row: &Row, column: &str| {
        row.iter().find(|(name, _)| name == column).map_or(String::new(), |(_, value)| match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        })
    };
    let widths: Vec<usize> = columns.iter().map(|c| rows.iter().map(|r| cell(r, c).len()).chain([c.len()]).max().unwrap_or(0)).collect();
    let line = |cells: Vec<String>| cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join(" | ");
    let mut out = vec![line(columns.iter().map(|c| c.to_string()).collect())];
    out.push(widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-+-"));
    out.extend(rows.iter().map(|row| line(columns.iter().map(|c| cell(row, c)).collect())));
    out.join("\n")
}

pub fn gunzip(bytes: &[u8]) -> anyhow::Result<String> {
    Ok(String::from_utf8(crate::pipe_through("gzip", &["-dc"], bytes)?)?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn column(name: &str, kind: &str) -> Column {
        Column::builder().name(name).r#type(kind).build().unwrap()
    }

    #[test]
    fn camel_case_keys_fill_lower_case_columns_and_wrong_types_fail() {
        let columns = [column("minvalue", "double"), column("count", "bigint"), column("fromtimestamp", "timestamp")];
        let row = read_row(r#"{"minValue":43.0,"count":3,"fromTimestamp":"2021-09-09T11:30:00.000Z"}"#, &columns).unwrap();
        assert_eq!(row[0], ("minvalue".to_owned(), serde_json::json!(43.0)));
        assert!(read_row(r#"{"minValue":"lots"}"#, &columns).is_err());
        assert!(read_row(r#"{"count":1.5}"#, &columns).is_err());
        assert!(read_row(r#"{"fromTimestamp":"yesterday"}"#, &columns).is_err());
    }
}
