//! The direct Parquet sink: aggregate rows per second encoded into Parquet files (one per
//! component, as a roll writes them), and bytes per row beside the JSON lines Firehose would
//! store (uncompressed and gzip, its default).
//!
//!     cargo bench -p metrics-aggregator --bench parquet
//!
//! A roll of 100,000 aggregates over 100 components and 10 metrics (100 one-minute windows per
//! series); five passes, median and best, as the throughput bench does. Results in BENCHMARKS.md.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use metrics_aggregator::s3::parquet_files::{ParquetCodec, Roll, files_of};
use metrics_pipeline_model::event::{EventTime, MetricAggregate};

const COMPONENTS: usize = 100;
const METRICS: usize = 10;
const WINDOWS: usize = 100;
const PASSES: usize = 5;

fn rows() -> Vec<MetricAggregate> {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 10_000) as f64 / 100.0
    };
    let mut rows = Vec::with_capacity(COMPONENTS * METRICS * WINDOWS);
    for component in 0..COMPONENTS {
        for metric in 0..METRICS {
            for window in 0..WINDOWS {
                let start = 1_631_188_800_000 + window as i64 * 60_000;
                let (a, b) = (random(), random());
                let count = 60;
                let avg = (a + b) / 2.0;
                rows.push(MetricAggregate {
                    component_name: format!("component-{component}"),
                    metric_name: format!("metric-{metric}"),
                    unit: "percent".into(),
                    min_value: a.min(b),
                    max_value: a.max(b),
                    avg_value: avg,
                    count,
                    sum: avg * count as f64,
                    from_timestamp: EventTime(start + 312),
                    to_timestamp: EventTime(start + 59_870),
                    window_start: EventTime(start),
                    window_end: EventTime(start + 60_000),
                    window_id: format!("{:016x}", (component * 1_000_003 + metric * 1_009 + window) as u64 * 0x9e37_79b9),
                    revision: 0,
                });
            }
        }
    }
    rows
}

fn gzip(body: &[u8]) -> usize {
    let mut child = Command::new("gzip").arg("-c").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("gzip runs");
    let mut stdin = child.stdin.take().expect("piped");
    let input = body.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().expect("gzip finishes");
    writer.join().expect("no panic").expect("gzip reads");
    output.stdout.len()
}

fn main() {
    let roll = Roll { run: "bench".into(), part: 0, staged: Vec::new(), rows: Vec::new() };
    let rows = rows();
    let count = rows.len() as f64;
    println!("{} aggregate rows, {COMPONENTS} components (files per roll)", rows.len());
    for codec in [ParquetCodec::Snappy, ParquetCodec::Gzip] {
        let mut rates = Vec::new();
        let mut bytes = 0;
        for _ in 0..PASSES {
            let started = Instant::now();
            let files = files_of(&roll, &rows, codec);
            rates.push(count / started.elapsed().as_secs_f64());
            bytes = files.iter().map(|(_, body)| body.len()).sum::<usize>();
        }
        rates.sort_by(f64::total_cmp);
        println!(
            "parquet {codec:?}: median {:.0} rows/s, best {:.0} rows/s, {:.1} bytes/row",
            rates[PASSES / 2],
            rates[PASSES - 1],
            bytes as f64 / count
        );
    }
    let mut json = Vec::new();
    for row in &rows {
        serde_json::to_writer(&mut json, row).expect("serializes");
        json.push(b'\n');
    }
    println!("json lines: {:.1} bytes/row, gzip {:.1} bytes/row", json.len() as f64 / count, gzip(&json) as f64 / count);
}
