//! Events per second on one core for decode + window + aggregate, over in-memory batches of
//! Kinesis-like records, with 10,000 live keys; and the process's peak resident memory.
//!
//!     cargo bench -p metrics-aggregator --bench throughput
//!
//! Results and the machine they came from are in BENCHMARKS.md.

use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};

use metrics_aggregator::decode::decode;
use metrics_aggregator::window::WindowEngine;
use metrics_pipeline_crds::validation::WindowConfig;

const COMPONENTS: usize = 1_000;
const METRICS: usize = 10;
const BATCH: usize = 500;
const BATCHES: usize = 8_000;
const SHARDS: [&str; 4] = ["shardId-000000000000", "shardId-000000000001", "shardId-000000000002", "shardId-000000000003"];

fn main() {
    let mut engine = WindowEngine::new(&WindowConfig {
        window: Duration::from_secs(60),
        out_of_orderness: Duration::from_secs(5),
        allowed_lateness: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(30),
    });
    let mut records: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(160)).collect();
    let mut out = Vec::new();
    let mut busy = Duration::ZERO;
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let start_millis = 1_631_188_800_000_i64;
    let mut emitted = 0usize;
    for batch in 0..BATCHES {
        // Event time advances 1 ms per event; each event is up to 3 s out of order.
        for (index, record) in records.iter_mut().enumerate() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let sequence = batch * BATCH + index;
            let key = (seed % (COMPONENTS * METRICS) as u64) as usize;
            let at = start_millis + sequence as i64 - (seed >> 40) as i64 % 3_000;
            let timestamp = metrics_pipeline_crds::event::EventTime(at).to_rfc3339_bytes();
            record.clear();
            write!(
                record,
                r#"{{"componentName":"component-{}","metricName":"metric-{}","unit":"percent","value":{}.{},"timestamp":"{}"}}"#,
                key / METRICS,
                key % METRICS,
                seed % 100,
                seed % 10,
                std::str::from_utf8(&timestamp).unwrap()
            )
            .unwrap();
        }
        let shard = SHARDS[batch % SHARDS.len()];
        let began = Instant::now();
        for record in &records {
            let event = decode(record).expect("the generator writes valid records");
            black_box(engine.add(shard, &event));
        }
        engine.advance(&mut out);
        busy += began.elapsed();
        emitted += out.len();
        out.clear();
    }
    let events = BATCH * BATCHES;
    let peak_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| status.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.split_whitespace().nth(1).unwrap().to_owned()))
        .unwrap_or_default();
    println!("events:            {events}");
    println!("live keys:         {}", COMPONENTS * METRICS);
    println!("open windows now:  {}", engine.open_windows());
    println!("aggregates out:    {emitted}");
    println!("decode+window+agg: {:.2} s busy, {:.0} events/s on one core", busy.as_secs_f64(), events as f64 / busy.as_secs_f64());
    println!("peak resident:     {} MiB", peak_kib.parse::<u64>().unwrap_or(0) / 1024);
}
