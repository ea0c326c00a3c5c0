//! Parquet for the delivery stand-in: JSON records written as Parquet with the Glue table's
//! schema, as Firehose's record-format conversion (OpenX JSON in, Parquet out) does.
//! `scripts/query` reads them back.

use std::sync::Arc;

use anyhow::bail;
use arrow_array::{Array, ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use aws_sdk_glue::types::Column;
use metrics_pipeline_model::event::EventTime;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, GzipLevel};
use parquet::file::properties::WriterProperties;
use serde_json::{Map, Value};

/// JSON records as one Parquet file with the table's columns; keys match without regard to
/// case. A value that does not fit its column fails, as Firehose's conversion does.
pub fn write_rows(records: &[Map<String, Value>], columns: &[Column], compression: Compression) -> anyhow::Result<Vec<u8>> {
    let field = |record: &Map<String, Value>, name: &str| {
        record.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.clone()).unwrap_or(Value::Null)
    };
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for column in columns {
        let name = column.name();
        let values: Vec<Value> = records.iter().map(|record| field(record, name)).collect();
        let wrong = |value: &Value| anyhow::anyhow!("column {name} ({}) cannot hold {value}", column.r#type().unwrap_or_default());
        let (kind, array): (DataType, ArrayRef) = match column.r#type().unwrap_or_default() {
            "string" => (DataType::Utf8, Arc::new(values.iter().map(|v| v.as_str().map(str::to_owned)).collect::<StringArray>())),
            "double" => (DataType::Float64, Arc::new(values.iter().map(Value::as_f64).collect::<Float64Array>())),
            "bigint" => (DataType::Int64, Arc::new(values.iter().map(Value::as_i64).collect::<Int64Array>())),
            "int" => {
                (DataType::Int32, Arc::new(values.iter().map(|v| v.as_i64().and_then(|n| i32::try_from(n).ok())).collect::<Int32Array>()))
            }
            "timestamp" => {
                let times = values
                    .iter()
                    .map(|v| v.as_str().and_then(EventTime::parse_rfc3339).map(|t| t.0))
                    .collect::<TimestampMillisecondArray>();
                (DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), Arc::new(times.with_timezone("UTC")))
            }
            other => bail!("column {name}: the stand-in does not convert {other}"),
        };
        if let Some(bad) = values.iter().zip(0..).find(|(value, i)| !value.is_null() && array.is_null(*i)).map(|(value, _)| value) {
            return Err(wrong(bad));
        }
        fields.push(Field::new(name, kind, true));
        arrays.push(array);
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?;
    let mut body = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut body, batch.schema(), Some(WriterProperties::builder().set_compression(compression).build()))?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(body)
}

/// Firehose's ParquetCompression as the codec inside the file.
pub fn codec(compression: &aws_sdk_firehose::types::ParquetCompression) -> anyhow::Result<Compression> {
    use aws_sdk_firehose::types::ParquetCompression;
    Ok(match compression {
        ParquetCompression::Snappy => Compression::SNAPPY,
        ParquetCompression::Gzip => Compression::GZIP(GzipLevel::default()),
        ParquetCompression::Uncompressed => Compression::UNCOMPRESSED,
        other => bail!("unknown Parquet compression {other:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_that_does_not_fit_its_column_fails() {
        let columns = [Column::builder().name("count").r#type("bigint").build().unwrap()];
        let error = write_rows(&[serde_json::json!({"count": "many"}).as_object().unwrap().clone()], &columns, Compression::UNCOMPRESSED)
            .unwrap_err();
        assert!(error.to_string().contains("column count (bigint) cannot hold \"many\""), "{error}");
    }
}
