//! The direct Parquet sink, as Flink's bulk-encoded FileSink does it: aggregates become Parquet
//! files in the bucket under `componentName=<name>/`, so Athena reads them through the
//! pipeline's Parquet table without Firehose.
//!
//! Exactly once, with the checkpoint as the commit: fired rows wait in the checkpoint until a
//! roll (on size, on time, at shutdown). A roll is recorded in the checkpoint first, with its
//! number and its rows, and only then written, one S3 PUT per component, so each file is visible
//! only when complete. A crash before the checkpoint replays the rows into a later roll; a crash
//! after it writes the same roll again on restart: same names, same contents. Nothing is lost and
//! no file is duplicated. A name carries the run that made the roll (random per process start)
//! and the roll's number, so names never repeat, not even after the checkpoint was started over;
//! and each PUT is conditional (If-None-Match), so no file is ever overwritten.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use metrics_pipeline_model::event::{EventTime, MetricAggregate};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, GzipLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::bucket::{Bucket, Condition};

/// The codec inside the files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ParquetCodec {
    Snappy,
    Gzip,
    Uncompressed,
}

#[derive(Clone, Debug)]
pub struct ParquetSettings {
    pub codec: ParquetCodec,
    /// Longest time fired rows wait for their file.
    pub roll_interval: Duration,
    /// Most rows in one roll; more roll early.
    pub max_rows: usize,
}

/// What the checkpoint keeps of the sink.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilesState {
    /// Number of the next roll; every file of a roll carries it in its name.
    pub next_part: u64,
    /// Rows fired since the last roll.
    pub in_progress: Vec<MetricAggregate>,
    /// The roll this checkpoint commits; written after the checkpoint, and again on a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committing: Option<Roll>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Roll {
    /// The run that made the roll: its files are named after it.
    #[serde(default)]
    pub run: String,
    pub part: u64,
    pub rows: Vec<MetricAggregate>,
}

pub struct ParquetFiles {
    settings: ParquetSettings,
    state: FilesState,
    /// This process's run id, for the names of the rolls it makes.
    run: String,
    /// When the oldest in-progress row arrived.
    oldest: Option<Instant>,
}

impl ParquetFiles {
    pub fn restore(settings: ParquetSettings, state: FilesState, run: &str) -> Self {
        let oldest = (!state.in_progress.is_empty()).then(Instant::now);
        Self { settings, state, run: run.to_owned(), oldest }
    }

    pub fn add(&mut self, rows: &[MetricAggregate]) {
        if !rows.is_empty() && self.oldest.is_none() {
            self.oldest = Some(Instant::now());
        }
        self.state.in_progress.extend_from_slice(rows);
    }

    pub fn roll_due(&self) -> bool {
        self.state.in_progress.len() >= self.settings.max_rows || self.roll_at().is_some_and(|at| at <= Instant::now())
    }

    /// When the rows waiting now roll on time.
    pub fn roll_at(&self) -> Option<Instant> {
        self.oldest.map(|oldest| oldest + self.settings.roll_interval)
    }

    /// Turns the in-progress rows into the roll the next checkpoint commits.
    pub fn roll(&mut self) {
        if self.state.in_progress.is_empty() || self.state.committing.is_some() {
            return;
        }
        let rows = std::mem::take(&mut self.state.in_progress);
        self.state.committing = Some(Roll { run: self.run.clone(), part: self.state.next_part, rows });
        self.state.next_part += 1;
        self.oldest = None;
    }

    /// For the checkpoint.
    pub fn state(&self) -> &FilesState {
        &self.state
    }

    /// Writes the committed roll's files, once the checkpoint recording it is stored. Returns how
    /// many files were written; one already there (written before a restart) is left as it is.
    pub async fn commit(&mut self, bucket: &Bucket) -> usize {
        let Some(roll) = self.state.committing.take() else { return 0 };
        let mut written = 0;
        for (key, body) in files_of(&roll, self.settings.codec) {
            if bucket.put(&key, body, "application/vnd.apache.parquet", Condition::Absent).await.is_some() {
                written += 1;
            }
        }
        written
    }
}

/// One file per component: `componentName=<name>/part-<run>-<roll>.parquet`, rows ordered by
/// metric, unit and window.
pub fn files_of(roll: &Roll, codec: ParquetCodec) -> Vec<(String, Vec<u8>)> {
    let mut by_component: BTreeMap<&str, Vec<&MetricAggregate>> = BTreeMap::new();
    for row in &roll.rows {
        by_component.entry(row.component_name.as_str()).or_default().push(row);
    }
    by_component
        .into_iter()
        .map(|(component, mut rows)| {
            rows.sort_by(|a, b| {
                (&a.metric_name, &a.unit, a.window_start, a.revision).cmp(&(&b.metric_name, &b.unit, b.window_start, b.revision))
            });
            (format!("componentName={component}/part-{}-{:010}.parquet", roll.run, roll.part), encode(&rows, codec))
        })
        .collect()
}

/// The table's columns, with Parquet's logical types: the partition column, `componentName`,
/// is in the path, as Hive-style tables expect.
pub fn schema() -> Schema {
    let timestamp = || DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Schema::new(vec![
        Field::new("metricName", DataType::Utf8, false),
        Field::new("unit", DataType::Utf8, false),
        Field::new("minValue", DataType::Float64, false),
        Field::new("maxValue", DataType::Float64, false),
        Field::new("avgValue", DataType::Float64, false),
        Field::new("count", DataType::Int64, false),
        Field::new("sum", DataType::Float64, false),
        Field::new("fromTimestamp", timestamp(), false),
        Field::new("toTimestamp", timestamp(), false),
        Field::new("windowStart", timestamp(), false),
        Field::new("windowEnd", timestamp(), false),
        Field::new("windowId", DataType::Utf8, false),
        Field::new("revision", DataType::Int32, false),
    ])
}

pub fn encode(rows: &[&MetricAggregate], codec: ParquetCodec) -> Vec<u8> {
    let strings =
        |field: fn(&MetricAggregate) -> &str| Arc::new(StringArray::from_iter_values(rows.iter().map(|row| field(row)))) as ArrayRef;
    let doubles =
        |field: fn(&MetricAggregate) -> f64| Arc::new(Float64Array::from_iter_values(rows.iter().map(|row| field(row)))) as ArrayRef;
    let times = |field: fn(&MetricAggregate) -> i64| {
        Arc::new(TimestampMillisecondArray::from_iter_values(rows.iter().map(|row| field(row))).with_timezone("UTC")) as ArrayRef
    };
    let columns = vec![
        strings(|r| &r.metric_name),
        strings(|r| &r.unit),
        doubles(|r| r.min_value),
        doubles(|r| r.max_value),
        doubles(|r| r.avg_value),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|row| i64::try_from(row.count).unwrap_or(i64::MAX)))) as ArrayRef,
        doubles(|r| r.sum),
        times(|r| r.from_timestamp.0),
        times(|r| r.to_timestamp.0),
        times(|r| r.window_start.0),
        times(|r| r.window_end.0),
        strings(|r| &r.window_id),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|row| i32::try_from(row.revision).unwrap_or(i32::MAX)))) as ArrayRef,
    ];
    let batch = RecordBatch::try_new(Arc::new(schema()), columns).expect("columns match the schema");
    let compression = match codec {
        ParquetCodec::Snappy => Compression::SNAPPY,
        ParquetCodec::Gzip => Compression::GZIP(GzipLevel::default()),
        ParquetCodec::Uncompressed => Compression::UNCOMPRESSED,
    };
    let properties = WriterProperties::builder().set_compression(compression).build();
    let mut body = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut body, batch.schema(), Some(properties)).expect("a valid schema");
    writer.write(&batch).expect("writing to memory cannot fail");
    writer.close().expect("writing to memory cannot fail");
    body
}

/// The rows of one file of `component`, for checks and tools (the inverse of [`encode`]).
pub fn decode(body: Vec<u8>, component: &str) -> anyhow::Result<Vec<MetricAggregate>> {
    use anyhow::Context;
    use arrow_array::Array;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(body))?.build()?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch?;
        fn column<'a, T: Array + 'static>(batch: &'a RecordBatch, name: &str) -> anyhow::Result<&'a T> {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<T>())
                .with_context(|| format!("column {name} is missing or of another type"))
        }
        let text = |name| column::<StringArray>(&batch, name);
        let double = |name| column::<Float64Array>(&batch, name);
        let time = |name| column::<TimestampMillisecondArray>(&batch, name);
        let (metric, unit, id) = (text("metricName")?, text("unit")?, text("windowId")?);
        let (min, max, avg, sum) = (double("minValue")?, double("maxValue")?, double("avgValue")?, double("sum")?);
        let (from, to, start, end) = (time("fromTimestamp")?, time("toTimestamp")?, time("windowStart")?, time("windowEnd")?);
        let (count, revision) = (column::<Int64Array>(&batch, "count")?, column::<Int32Array>(&batch, "revision")?);
        for i in 0..batch.num_rows() {
            rows.push(MetricAggregate {
                component_name: component.to_owned(),
                metric_name: metric.value(i).to_owned(),
                unit: unit.value(i).to_owned(),
                min_value: min.value(i),
                max_value: max.value(i),
                avg_value: avg.value(i),
                count: u64::try_from(count.value(i)).unwrap_or(0),
                sum: sum.value(i),
                from_timestamp: EventTime(from.value(i)),
                to_timestamp: EventTime(to.value(i)),
                window_start: EventTime(start.value(i)),
                window_end: EventTime(end.value(i)),
                window_id: id.value(i).to_owned(),
                revision: u32::try_from(revision.value(i)).unwrap_or(0),
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;

    fn aggregate(component: &str, metric: &str, start: i64, count: u64) -> MetricAggregate {
        MetricAggregate {
            component_name: component.into(),
            metric_name: metric.into(),
            unit: "percent".into(),
            min_value: 1.5,
            max_value: 9.0,
            avg_value: 4.0,
            count,
            sum: 4.0 * count as f64,
            from_timestamp: EventTime(start + 1_000),
            to_timestamp: EventTime(start + 59_000),
            window_start: EventTime(start),
            window_end: EventTime(start + 60_000),
            window_id: format!("{component}-{metric}-{start}"),
            revision: 0,
        }
    }

    fn settings() -> ParquetSettings {
        ParquetSettings { codec: ParquetCodec::Snappy, roll_interval: Duration::from_secs(60), max_rows: 3 }
    }

    #[test]
    fn a_roll_writes_one_file_per_component_with_typed_columns() {
        let rows = vec![aggregate("b", "cpu", 60_000, 2), aggregate("a", "ram", 0, 3), aggregate("a", "cpu", 0, 1)];
        let roll = Roll { run: "5eed".into(), part: 7, rows };
        let files = files_of(&roll, ParquetCodec::Snappy);
        let keys: Vec<&str> = files.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(keys, ["componentName=a/part-5eed-0000000007.parquet", "componentName=b/part-5eed-0000000007.parquet"]);
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(files[0].1.clone())).unwrap();
        let metadata = reader.metadata().clone();
        let batch = reader.build().unwrap().next().unwrap().unwrap();
        assert_eq!(batch.num_rows(), 2);
        let metrics = batch.column_by_name("metricName").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!((metrics.value(0), metrics.value(1)), ("cpu", "ram"), "ordered by metric");
        assert_eq!(batch.column_by_name("count").unwrap().data_type(), &DataType::Int64);
        assert_eq!(
            batch.column_by_name("windowStart").unwrap().data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
        );
        let column = metadata.row_group(0).column(0);
        assert_eq!(column.compression(), Compression::SNAPPY);
        assert!(batch.column_by_name("componentName").is_none(), "the partition column is the path");
        let decoded = decode(files[0].1.clone(), "a").unwrap();
        assert_eq!(decoded, [roll.rows[2].clone(), roll.rows[1].clone()], "every field reads back");
    }

    #[test]
    fn rows_roll_on_size_and_a_roll_waits_for_its_commit() {
        let mut files = ParquetFiles::restore(settings(), FilesState::default(), "run-1");
        files.add(&[aggregate("a", "cpu", 0, 1), aggregate("a", "cpu", 60_000, 1)]);
        assert!(!files.roll_due());
        files.add(&[aggregate("a", "cpu", 120_000, 1)]);
        assert!(files.roll_due(), "3 rows reach max_rows");
        files.roll();
        let state = files.state().clone();
        assert_eq!(
            (state.next_part, state.in_progress.len(), state.committing.as_ref().map(|r| (r.part, r.rows.len()))),
            (1, 0, Some((0, 3)))
        );
        files.add(&[aggregate("a", "cpu", 180_000, 1)]);
        files.roll();
        assert_eq!(files.state().committing.as_ref().map(|r| r.part), Some(0), "a second roll waits until the first is written");
    }

    #[test]
    fn a_restart_after_the_checkpoint_writes_the_same_files_again() {
        let mut before_crash = ParquetFiles::restore(settings(), FilesState::default(), "run-1");
        before_crash.add(&[aggregate("a", "cpu", 0, 1), aggregate("b", "ram", 0, 2)]);
        before_crash.roll();
        let checkpoint: FilesState = serde_json::from_slice(&serde_json::to_vec(before_crash.state()).unwrap()).unwrap();
        let first = files_of(before_crash.state().committing.as_ref().unwrap(), ParquetCodec::Gzip);
        let restarted = ParquetFiles::restore(settings(), checkpoint, "run-2");
        let again = files_of(restarted.state().committing.as_ref().unwrap(), ParquetCodec::Gzip);
        assert_eq!(first, again, "same names, same bytes: the rewrite replaces, never adds");
    }

    #[test]
    fn a_run_that_started_over_names_its_files_apart_from_every_earlier_run() {
        let names = |run: &str| {
            let mut files = ParquetFiles::restore(settings(), FilesState::default(), run);
            files.add(&[aggregate("a", "cpu", 0, 1)]);
            files.roll();
            files_of(files.state().committing.as_ref().unwrap(), ParquetCodec::Snappy).into_iter().map(|(key, _)| key).collect::<Vec<_>>()
        };
        assert_ne!(names("run-1"), names("run-2"), "both runs start at roll 0");
    }

    #[test]
    fn rows_roll_on_time() {
        let mut files =
            ParquetFiles::restore(ParquetSettings { roll_interval: Duration::ZERO, ..settings() }, FilesState::default(), "run-1");
        assert!(!files.roll_due(), "nothing to roll");
        files.add(&[aggregate("a", "cpu", 0, 1)]);
        assert!(files.roll_due());
    }
}
