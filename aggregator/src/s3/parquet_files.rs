//! The direct Parquet sink, as Flink's bulk-encoded FileSink does it: aggregates become Parquet
//! files in the bucket under `componentName=<name>/`, so Athena reads them through the
//! pipeline's Parquet table without Firehose.
//!
//! Exactly once, with the checkpoint as the commit. Fired rows wait for a roll (on size, on time,
//! at shutdown); each flush first stages its new rows as one small object under the staging
//! prefix, and the checkpoint names the staged objects, never the rows, so its size does not grow
//! with the rows waiting. A roll is recorded in the checkpoint first, with its number and its
//! staged objects, and only then written, one S3 PUT per component, so each file is visible only
//! when complete; then its staged objects are deleted. A crash before the checkpoint replays the
//! rows into a later roll; a crash after it writes the same roll again on restart: same names,
//! same contents (a roll whose staged objects are gone was written already). Nothing is lost and
//! no file is duplicated. A name carries the run that made the roll (random per process start)
//! and the roll's number, so names never repeat, not even after the checkpoint was started over;
//! and each PUT is conditional (If-None-Match), so no file is ever overwritten.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::{ArrowError, DataType, Field, Schema, TimeUnit};
use aws_sdk_s3::error::DisplayErrorContext;
use metrics_pipeline_model::event::{EventTime, MetricAggregate};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, GzipLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::metrics::Metrics;
use crate::s3::bucket::{Bucket, Condition};

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
    /// Key prefix of the staged rows in the bucket, ending in `/`.
    pub staging_prefix: String,
}

/// What the checkpoint keeps of the sink: object keys, not rows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilesState {
    /// Number of the next roll; every file of a roll carries it in its name.
    pub next_part: u64,
    /// Staged objects holding the rows fired since the last roll, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub staged: Vec<String>,
    /// Rows of a checkpoint written before rows were staged: read once, staged by the next flush.
    #[serde(default, skip_serializing)]
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
    /// Staged objects holding the roll's rows, deleted once its files are written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub staged: Vec<String>,
    /// Rows of a checkpoint written before rows were staged: read once.
    #[serde(default, skip_serializing)]
    pub rows: Vec<MetricAggregate>,
}

/// The rows of staged objects, by key, as read back on a restart.
pub type StagedRows = BTreeMap<String, Vec<MetricAggregate>>;

pub struct ParquetFiles {
    settings: ParquetSettings,
    state: FilesState,
    /// This process's run id, for the names of the rolls and staged objects it makes.
    run: String,
    /// Number of the next staged object of this run.
    next_stage: u64,
    /// The rows of `state.staged`, oldest first.
    staged_rows: Vec<MetricAggregate>,
    /// Rows fired since the last flush, staged by the next.
    unstaged: Vec<MetricAggregate>,
    /// The rows of `state.committing`; `None` when its files were written before a restart.
    committing_rows: Option<Vec<MetricAggregate>>,
    /// When the oldest row waiting for a roll arrived.
    oldest: Option<Instant>,
}

impl ParquetFiles {
    /// As the checkpoint left it, its staged rows read back from the bucket.
    pub async fn resume(settings: ParquetSettings, state: FilesState, run: &str, bucket: &Bucket, metrics: &Metrics) -> Self {
        let staged = read_staged(bucket, &state).await;
        let missing = state.staged.iter().filter(|key| !staged.contains_key(*key)).count();
        if missing > 0 {
            // Only a hand (or a lifecycle rule) deletes staged rows before their roll is written.
            tracing::error!(objects = missing, prefix = %settings.staging_prefix, "staged Parquet rows named by the checkpoint are gone from the bucket: their rows will be in no file");
            metrics.parquet_staging_missing.inc_by(missing as u64);
        }
        Self::restore(settings, state, run, staged)
    }

    /// As the checkpoint left it, with the rows of its staged objects that are still there.
    pub fn restore(settings: ParquetSettings, mut state: FilesState, run: &str, mut staged: StagedRows) -> Self {
        // Staged objects are deleted only after every file of their roll is written.
        let written = state.committing.as_ref().is_some_and(|roll| roll.staged.iter().any(|key| !staged.contains_key(key)));
        let mut rows_of = |keys: &[String]| keys.iter().filter_map(|key| staged.remove(key)).flatten().collect::<Vec<_>>();
        let committing_rows = state.committing.as_mut().and_then(|roll| {
            if !roll.rows.is_empty() {
                return Some(std::mem::take(&mut roll.rows));
            }
            (!written).then(|| rows_of(&roll.staged))
        });
        let staged_rows = rows_of(&state.staged);
        let unstaged = std::mem::take(&mut state.in_progress);
        let oldest = (!staged_rows.is_empty() || !unstaged.is_empty()).then(Instant::now);
        Self { settings, state, run: run.to_owned(), next_stage: 0, staged_rows, unstaged, committing_rows, oldest }
    }

    pub fn add(&mut self, rows: &[MetricAggregate]) {
        if !rows.is_empty() && self.oldest.is_none() {
            self.oldest = Some(Instant::now());
        }
        self.unstaged.extend_from_slice(rows);
    }

    pub fn roll_due(&self) -> bool {
        self.staged_rows.len() + self.unstaged.len() >= self.settings.max_rows || self.roll_at().is_some_and(|at| at <= Instant::now())
    }

    /// When the rows waiting now roll on time.
    pub fn roll_at(&self) -> Option<Instant> {
        self.oldest.map(|oldest| oldest + self.settings.roll_interval)
    }

    /// Writes the rows fired since the last flush as one staged object, before the checkpoint
    /// that names it.
    pub async fn stage(&mut self, bucket: &Bucket) {
        if let Some((key, body)) = self.next_staged_object() {
            // A key of this run is never taken: a 412 is this very write, its answer lost.
            bucket.put(&key, body, "application/json", Condition::Absent).await;
        }
    }

    /// The key and body of the next staged object, the unstaged rows counted as staged under it.
    fn next_staged_object(&mut self) -> Option<(String, Vec<u8>)> {
        if self.unstaged.is_empty() {
            return None;
        }
        let key = format!("{}{}-{:010}.json", self.settings.staging_prefix, self.run, self.next_stage);
        self.next_stage += 1;
        let body = serde_json::to_vec(&self.unstaged).expect("aggregates always serialize");
        self.staged_rows.append(&mut self.unstaged);
        self.state.staged.push(key.clone());
        Some((key, body))
    }

    /// Turns the staged rows into the roll the next checkpoint commits.
    pub fn roll(&mut self) {
        if self.staged_rows.is_empty() || self.state.committing.is_some() {
            return;
        }
        let staged = std::mem::take(&mut self.state.staged);
        self.state.committing = Some(Roll { run: self.run.clone(), part: self.state.next_part, staged, rows: Vec::new() });
        self.committing_rows = Some(std::mem::take(&mut self.staged_rows));
        self.state.next_part += 1;
        self.oldest = (!self.unstaged.is_empty()).then(Instant::now);
    }

    /// For the checkpoint.
    pub fn state(&self) -> &FilesState {
        &self.state
    }

    /// Writes the committed roll's files, once the checkpoint recording it is stored, then
    /// deletes its staged objects. Returns how many files were written; one already there
    /// (written before a restart) is left as it is.
    pub async fn commit(&mut self, bucket: &Bucket) -> usize {
        let Some(roll) = self.state.committing.take() else { return 0 };
        let mut written = 0;
        for (key, body) in files_of(&roll, self.committing_rows.take().as_deref().unwrap_or_default(), self.settings.codec) {
            if bucket.put(&key, body, "application/vnd.apache.parquet", Condition::Absent).await.is_some() {
                written += 1;
            }
        }
        for key in &roll.staged {
            // Left behind, a staged object costs storage, never correctness: no checkpoint
            // after this one names it.
            if let Err(error) = bucket.delete(key).await {
                tracing::warn!(error = %DisplayErrorContext(&error), "a staged object of a written roll stays in the bucket");
            }
        }
        written
    }

    /// Deletes staged objects no checkpoint will name: those of a copy stopped between staging
    /// and its checkpoint, or of a copy fenced since. Only after this copy's first checkpoint,
    /// which fences every other copy, so that none of theirs can still name them.
    pub async fn sweep(&self, bucket: &Bucket) {
        let named = |key: &String| self.state.staged.contains(key) || self.state.committing.iter().any(|roll| roll.staged.contains(key));
        let keys = match bucket.keys(&self.settings.staging_prefix).await {
            Ok(keys) => keys,
            Err(error) => {
                return tracing::warn!(error = %DisplayErrorContext(&error), "staged objects of earlier copies stay in the bucket until the next start");
            }
        };
        for key in keys.iter().filter(|key| !named(key)) {
            if let Err(error) = bucket.delete(key).await {
                tracing::warn!(error = %DisplayErrorContext(&error), "a staged object of an earlier copy stays in the bucket until the next start");
            }
        }
    }
}

/// The rows of the staged objects `state` names, retrying until S3 answers; an object that is
/// gone is left out.
async fn read_staged(bucket: &Bucket, state: &FilesState) -> StagedRows {
    let keys = state.staged.iter().chain(state.committing.iter().flat_map(|roll| &roll.staged));
    let mut staged = StagedRows::new();
    for key in keys {
        let mut backoff = Backoff::default();
        let stored = loop {
            match bucket.get(key).await {
                Ok(stored) => break stored,
                Err(error) => tracing::warn!(error = %DisplayErrorContext(&error), "cannot read staged Parquet rows yet; retrying"),
            }
            tokio::time::sleep(backoff.next_delay()).await;
        };
        let Some((body, _)) = stored else { continue };
        match serde_json::from_slice(&body) {
            Ok(rows) => {
                staged.insert(key.clone(), rows);
            }
            Err(error) => tracing::error!(%error, bucket = bucket.name(), key, "staged Parquet rows cannot be read: left out"),
        }
    }
    staged
}

/// One file per component: `componentName=<name>/part-<run>-<roll>.parquet`, rows ordered by
/// metric, unit and window.
pub fn files_of(roll: &Roll, rows: &[MetricAggregate], codec: ParquetCodec) -> Vec<(String, Vec<u8>)> {
    let mut by_component: BTreeMap<&str, Vec<&MetricAggregate>> = BTreeMap::new();
    for row in rows {
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

/// Why [`decode`] cannot read a file: it is not one [`encode`] writes.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("cannot read the file as Parquet")]
    NotParquet(#[from] ParquetError),
    #[error("cannot read the file's rows")]
    Rows(#[from] ArrowError),
    #[error("column {0} is missing or of another type")]
    Column(&'static str),
}

/// The rows of one file of `component`, for checks and tools (the inverse of [`encode`]).
pub fn decode(body: Vec<u8>, component: &str) -> Result<Vec<MetricAggregate>, DecodeError> {
    use arrow_array::Array;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(body))?.build()?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch?;
        fn column<'a, T: Array + 'static>(batch: &'a RecordBatch, name: &'static str) -> Result<&'a T, DecodeError> {
            batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<T>()).ok_or(DecodeError::Column(name))
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
        ParquetSettings {
            codec: ParquetCodec::Snappy,
            roll_interval: Duration::from_secs(60),
            max_rows: 3,
            staging_prefix: "_aggregator/parquet-staging/".into(),
        }
    }

    fn fresh(run: &str) -> ParquetFiles {
        ParquetFiles::restore(settings(), FilesState::default(), run, StagedRows::new())
    }

    /// Stages what was added, as a flush does, and returns the staged object as S3 would hold it.
    fn stage(files: &mut ParquetFiles) -> StagedRows {
        let (key, body) = files.next_staged_object().expect("rows to stage");
        StagedRows::from([(key, serde_json::from_slice(&body).unwrap())])
    }

    fn committing(files: &ParquetFiles) -> Vec<(String, Vec<u8>)> {
        let roll = files.state().committing.as_ref().expect("a roll");
        files_of(roll, files.committing_rows.as_deref().expect("rows not written yet"), ParquetCodec::Gzip)
    }

    /// A roll of two components' rows staged by two flushes, and the bucket's staged objects.
    fn rolled_after_two_flushes() -> (ParquetFiles, StagedRows) {
        let mut files = fresh("run-1");
        files.add(&[aggregate("a", "cpu", 0, 1)]);
        let mut bucket = stage(&mut files);
        files.add(&[aggregate("b", "ram", 0, 2)]);
        bucket.extend(stage(&mut files));
        files.roll();
        (files, bucket)
    }

    #[test]
    fn a_roll_writes_one_file_per_component_with_typed_columns() {
        let rows = vec![aggregate("b", "cpu", 60_000, 2), aggregate("a", "ram", 0, 3), aggregate("a", "cpu", 0, 1)];
        let roll = Roll { run: "5eed".into(), part: 7, staged: Vec::new(), rows: Vec::new() };
        let files = files_of(&roll, &rows, ParquetCodec::Snappy);
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
        assert_eq!(decoded, [rows[2].clone(), rows[1].clone()], "every field reads back");
    }

    #[test]
    fn rows_roll_on_size_once_staged_and_a_roll_waits_for_its_commit() {
        let mut files = fresh("run-1");
        files.add(&[aggregate("a", "cpu", 0, 1), aggregate("a", "cpu", 60_000, 1)]);
        assert!(!files.roll_due());
        files.add(&[aggregate("a", "cpu", 120_000, 1)]);
        assert!(files.roll_due(), "3 rows reach max_rows");
        files.roll();
        assert_eq!(files.state().committing, None, "rows roll only once a staged object holds them");
        stage(&mut files);
        files.roll();
        let state = files.state().clone();
        let roll = state.committing.as_ref().unwrap();
        assert_eq!((state.next_part, state.staged.len(), roll.part, roll.staged.len()), (1, 0, 0, 1));
        files.add(&[aggregate("a", "cpu", 180_000, 1)]);
        stage(&mut files);
        files.roll();
        assert_eq!(files.state().committing.as_ref().map(|r| r.part), Some(0), "a second roll waits until the first is written");
    }

    #[test]
    fn the_checkpoint_names_staged_objects_never_rows() {
        let mut files = fresh("run-1");
        files.add(&[aggregate("a", "cpu", 0, 1), aggregate("b", "ram", 0, 2)]);
        let staged = stage(&mut files);
        let checkpoint = serde_json::to_string(files.state()).unwrap();
        assert_eq!(checkpoint, r#"{"nextPart":0,"staged":["_aggregator/parquet-staging/run-1-0000000000.json"]}"#);
        assert_eq!(staged.values().next().unwrap().len(), 2, "the staged object holds the rows");
        assert_eq!(files.next_staged_object(), None, "each row is staged once");
    }

    #[test]
    fn a_restart_after_the_checkpoint_writes_the_same_files_again() {
        let (before_crash, bucket) = rolled_after_two_flushes();
        let checkpoint: FilesState = serde_json::from_slice(&serde_json::to_vec(before_crash.state()).unwrap()).unwrap();
        let restarted = ParquetFiles::restore(settings(), checkpoint, "run-2", bucket);
        assert_eq!(committing(&before_crash), committing(&restarted), "same names, same bytes: the rewrite replaces, never adds");
    }

    #[test]
    fn a_roll_whose_staged_objects_are_gone_was_written_and_is_not_written_again() {
        let (before_crash, mut bucket) = rolled_after_two_flushes();
        bucket.pop_first();
        let restarted = ParquetFiles::restore(settings(), before_crash.state().clone(), "run-2", bucket);
        assert!(restarted.state().committing.is_some(), "its remaining staged object is still to delete");
        assert_eq!(restarted.committing_rows, None, "a part of its rows would make files that differ");
    }

    #[test]
    fn staged_rows_waiting_for_their_roll_survive_a_restart() {
        let mut before_crash = fresh("run-1");
        before_crash.add(&[aggregate("a", "cpu", 0, 1)]);
        let bucket = stage(&mut before_crash);
        let mut restarted = ParquetFiles::restore(settings(), before_crash.state().clone(), "run-2", bucket);
        restarted.add(&[aggregate("a", "cpu", 60_000, 1)]);
        stage(&mut restarted);
        restarted.roll();
        let roll = restarted.state().committing.as_ref().unwrap();
        assert_eq!(roll.staged.len(), 2, "both staged objects are the roll's");
        let windows: Vec<_> = restarted.committing_rows.as_ref().unwrap().iter().map(|row| row.window_start.0).collect();
        assert_eq!(windows, [0, 60_000]);
    }

    #[test]
    fn a_checkpoint_that_held_rows_is_read_once() {
        let row = serde_json::to_value(aggregate("a", "cpu", 0, 1)).unwrap();
        let legacy: FilesState = serde_json::from_value(serde_json::json!({
            "nextPart": 4, "inProgress": [row], "committing": {"run": "old", "part": 3, "rows": [row]}
        }))
        .unwrap();
        let mut files = ParquetFiles::restore(settings(), legacy, "run-2", StagedRows::new());
        assert_eq!(committing(&files).len(), 1, "the committing roll's rows are written");
        let staged = stage(&mut files);
        assert_eq!(staged.values().next().unwrap().len(), 1, "the waiting rows are staged by the next flush");
        let checkpoint = serde_json::to_string(files.state()).unwrap();
        assert!(!checkpoint.contains("cpu"), "no rows in the checkpoint: {checkpoint}");
    }

    #[test]
    fn a_run_that_started_over_names_its_files_and_staged_objects_apart_from_every_earlier_run() {
        let names = |run: &str| {
            let mut files = fresh(run);
            files.add(&[aggregate("a", "cpu", 0, 1)]);
            let mut names: Vec<String> = stage(&mut files).into_keys().collect();
            files.roll();
            names.extend(committing(&files).into_iter().map(|(key, _)| key));
            names
        };
        let (first, second) = (names("run-1"), names("run-2"));
        assert!(first.iter().all(|name| !second.contains(name)), "both runs start at roll 0: {first:?} {second:?}");
    }

    #[test]
    fn rows_roll_on_time() {
        let mut files = ParquetFiles::restore(
            ParquetSettings { roll_interval: Duration::ZERO, ..settings() },
            FilesState::default(),
            "run-1",
            StagedRows::new(),
        );
        assert!(!files.roll_due(), "nothing to roll");
        files.add(&[aggregate("a", "cpu", 0, 1)]);
        assert!(files.roll_due());
    }
}
