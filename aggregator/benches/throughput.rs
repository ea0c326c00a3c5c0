//! Events per second on one core for decode + window + aggregate, over in-memory batches of
//! Kinesis-like records, with 10,000 live keys; and the process's peak resident memory.
//!
//!     cargo bench -p metrics-aggregator --bench throughput
//!
//! This machine's speed drifts by a third from minute to minute, so it runs five passes and
//! prints the median and the best, and a reference loop (a derived serde_json parse + HashMap
//! update, no windows) runs in the same passes to show what the machine gives at that moment.
//! Results are in BENCHMARKS.md.

mod support;

use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};

use metrics_aggregator::decode::DecodedPage;
use metrics_aggregator::window::WindowEngine;
use metrics_pipeline_model::aggregation::WindowConfig;
use metrics_pipeline_model::event::EventTime;
use support::{Reference, summary};

const COMPONENTS: usize = 1_000;
const METRICS: usize = 10;
const BATCH: usize = 500;
const BATCHES: usize = 8_000;
const PASSES: usize = 5;
const SHARDS: [&str; 4] = ["shardId-000000000000", "shardId-000000000001", "shardId-000000000002", "shardId-000000000003"];

/// Kinesis-like records: event time advances 1 ms per event; each event is up to 3 s out of order.
struct Records {
    seed: u64,
    batch: Vec<Vec<u8>>,
}

impl Records {
    fn new() -> Self {
        Self { seed: 0x2545_f491_4f6c_dd1d, batch: (0..BATCH).map(|_| Vec::with_capacity(160)).collect() }
    }

    fn fill(&mut self, batch: usize) -> &[Vec<u8>] {
        for (index, record) in self.batch.iter_mut().enumerate() {
            let seed = &mut self.seed;
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            let sequence = batch * BATCH + index;
            let key = (*seed % (COMPONENTS * METRICS) as u64) as usize;
            let at = 1_631_188_800_000_i64 + sequence as i64 - (*seed >> 40) as i64 % 3_000;
            let timestamp = EventTime(at).to_rfc3339_bytes();
            record.clear();
            write!(
                record,
                r#"{{"componentName":"component-{}","metricName":"metric-{}","unit":"percent","value":{}.{},"timestamp":"{}"}}"#,
                key / METRICS,
                key % METRICS,
                *seed % 100,
                *seed % 10,
                std::str::from_utf8(&timestamp).unwrap()
            )
            .unwrap();
        }
        &self.batch
    }
}

/// decode (a page at a time, as the reading threads do) + window + aggregate: what the aggregator
/// does per record. Returns busy time.
fn engine_pass() -> (Duration, usize) {
    let mut engine = WindowEngine::new(&WindowConfig {
        window: Duration::from_secs(60),
        out_of_orderness: Duration::from_secs(5),
        allowed_lateness: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(30),
        max_future_skew: Duration::from_secs(300),
    });
    let mut records = Records::new();
    let (mut out, mut busy, mut emitted) = (Vec::new(), Duration::ZERO, 0);
    for batch in 0..BATCHES {
        let records = records.fill(batch);
        let shard = SHARDS[batch % SHARDS.len()];
        let began = Instant::now();
        black_box(engine.add_page(shard, &DecodedPage::of(records.iter().map(Vec::as_slice))));
        engine.advance(&mut out);
        busy += began.elapsed();
        emitted += out.len();
        out.clear();
    }
    (busy, emitted)
}

/// The reference: a bare serde_json parse and a HashMap update per record.
fn reference_pass() -> Duration {
    let mut reference = Reference::default();
    let mut records = Records::new();
    let mut busy = Duration::ZERO;
    for batch in 0..BATCHES {
        let records = records.fill(batch);
        let began = Instant::now();
        for record in records {
            reference.add(record);
        }
        busy += began.elapsed();
    }
    busy
}

fn main() {
    let events = (BATCH * BATCHES) as f64;
    let (mut engine_rates, mut reference_rates) = (Vec::new(), Vec::new());
    let mut emitted = 0;
    for pass in 1..=PASSES {
        let (busy, out) = engine_pass();
        emitted = out;
        let reference = reference_pass();
        engine_rates.push(events / busy.as_secs_f64());
        reference_rates.push(events / reference.as_secs_f64());
        println!("pass {pass}: aggregator {:>9.0} events/s, reference {:>9.0} events/s", engine_rates[pass - 1], reference_rates[pass - 1]);
    }
    let peak_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| status.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.split_whitespace().nth(1).unwrap().to_owned()))
        .unwrap_or_default();
    println!("events per pass:   {events}");
    println!("live keys:         {}", COMPONENTS * METRICS);
    println!("aggregates out:    {emitted}");
    let ((engine_median, engine_best), (reference_median, reference_best)) = (summary(engine_rates), summary(reference_rates));
    println!("aggregator:        {engine_median:.0} events/s median, {engine_best:.0} best, on one core");
    println!("reference:         {reference_median:.0} events/s median, {reference_best:.0} best, on one core");
    println!("peak resident:     {} MiB", peak_kib.parse::<u64>().unwrap_or(0) / 1024);
}
