//! Parquet for the query check and the delivery stand-in: a Glue table's rows read from a
//! Parquet file as Athena's ParquetHiveSerDe would (columns by name, any case; a stored type
//! that does not fit the column's type fails), and JSON records written as Parquet with the
//! table's schema, as Firehose's record-format conversion (OpenX JSON in, Parquet out) does.

use std::sync::Arc;

use anyhow::{Context, bail};
use arrow_array::{Array, ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use aws_sdk_glue::types::Column;
use metrics_pipeline_model::event::EventTime;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, GzipLevel};
use parquet::file::properties::WriterProperties;
use serde_json::{Map, Value};

use crate::query::Row;

/// The rows of a Parquet file, in the table's columns; a column the file lacks reads as null.
pub fn read_rows(body: Vec<u8>, columns: &[Column]) -> anyhow::Result<Vec<Row>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(body)).context("not a Parquet file")?.build()?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch?;
        let schema = batch.schema();
        let stored: Vec<Option<&ArrayRef>> = columns
            .iter()
            .map(|column| {
                schema.fields().iter().position(|field| field.name().eq_ignore_ascii_case(column.name())).map(|i| batch.column(i))
            })
            .collect();
        for (column, array) in columns.iter().zip(&stored) {
            if let Some(array) = array {
                let kind = column.r#type().unwrap_or_default();
                let fits = matches!(
                    (kind, array.data_type()),
                    ("string", DataType::Utf8)
                        | ("double", DataType::Float64)
                        | ("bigint", DataType::Int64)
                        | ("int", DataType::Int32)
                        | ("timestamp", DataType::Timestamp(_, _))
                );
                if !fits {
                    bail!("column {} ({kind}) is stored as {}", column.name(), array.data_type());
                }
            }
        }
        for i in 0..batch.num_rows() {
            let row = columns
                .iter()
                .zip(&stored)
                .map(|(column, array)| (column.name().to_owned(), array.map_or(Value::Null, |array| value_at(array, i))));
            rows.push(row.collect());
        }
    }
    Ok(rows)
}

/// One cell as JSON; timestamps as the JSON path writes them, so both formats print alike.
fn value_at(array: &ArrayRef, i: usize) -> Value {
    if array.is_null(i) {
        return Value::Null;
    }
    let any = array.as_any();
    if let Some(strings) = any.downcast_ref::<StringArray>() {
        Value::String(strings.value(i).to_owned())
    } else if let Some(doubles) = any.downcast_ref::<Float64Array>() {
        serde_json::Number::from_f64(doubles.value(i)).map_or(Value::Null, Value::Number)
    } else if let Some(longs) = any.downcast_ref::<Int64Array>() {
        Value::from(longs.value(i))
    } else if let Some(ints) = any.downcast_ref::<Int32Array>() {
        Value::from(ints.value(i))
    } else if let Some(times) = any.downcast_ref::<TimestampMillisecondArray>() {
        Value::String(EventTime(times.value(i)).to_string())
    } else {
        Value::Null
    }
}

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
    use crate::query::tests::column;

    #[test]
    fn records_written_with_the_tables_schema_read_back_as_the_same_rows() {
        let columns = [
            column("metricname", "string"),
            column("minValue", "double"),
            column("count", "bigint"),
            column("fromTimestamp", "timestamp"),
            column("revision", "int"),
        ];
        let record = serde_json::json!({"metricName": "cpu", "minValue": 1.5, "count": 3, "fromTimestamp": "2021-09-09T11:30:00.000Z", "revision": 0});
        let body = write_rows(&[record.as_object().unwrap().clone()], &columns, Compression::SNAPPY).unwrap();
        let rows = read_rows(body, &columns).unwrap();
        let expected: Row = vec![
            ("metricname".into(), "cpu".into()),
            ("minValue".into(), 1.5.into()),
            ("count".into(), 3.into()),
            ("fromTimestamp".into(), "2021-09-09T11:30:00.000Z".into()),
            ("revision".into(), 0.into()),
        ];
        assert_eq!(rows, [expected]);
    }

    #[test]
    fn a_value_that_does_not_fit_its_column_fails_and_so_does_a_stored_type_that_does_not() {
        let columns = [column("count", "bigint")];
        let error = write_rows(&[serde_json::json!({"count": "many"}).as_object().unwrap().clone()], &columns, Compression::UNCOMPRESSED)
            .unwrap_err();
        assert!(error.to_string().contains("column count (bigint) cannot hold \"many\""), "{error}");
        let stored =
            write_rows(&[serde_json::json!({"count": 2}).as_object().unwrap().clone()], &columns, Compression::UNCOMPRESSED).unwrap();
        let error = read_rows(stored, &[column("count", "string")]).unwrap_err();
        assert!(error.to_string().contains("column count (string) is stored as Int64"), "{error}");
    }
}
