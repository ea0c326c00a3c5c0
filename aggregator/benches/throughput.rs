//! Events per second on one core for decode + window + aggregate, over in-memory batches of
//! Kinesis-like records, with 10,000 live keys; and the process's peak resident memory. Then the
//! cost of decoding alone, per event, for plain records and for the same events packed by the
//! KPL's aggregation format (`KPL_USER_RECORDS` to a Kinesis record, digest checked).
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

use md5::Digest;
use metrics_aggregator::engine::window::WindowEngine;
use metrics_aggregator::kinesis::decode::DecodedPage;
use metrics_aggregator::kinesis::kpl::MAGIC;
use metrics_pipeline_model::aggregation::WindowConfig;
use metrics_pipeline_model::event::EventTime;
use support::{Reference, page_of, summary};

const COMPONENTS: usize = 1_000;
const METRICS: usize = 10;
const BATCH: usize = 500;
const BATCHES: usize = 8_000;
const PASSES: usize = 5;
/// User records in one KPL aggregate: about what its default 50 KiB aggregate holds of these events.
const KPL_USER_RECORDS: usize = 250;
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
        let records = page_of(records.fill(batch).iter().map(Vec::as_slice));
        let shard = SHARDS[batch % SHARDS.len()];
        let began = Instant::now();
        black_box(engine.add_page(shard, &DecodedPage::of(&records)));
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

/// `events` as the KPL packs them: `KPL_USER_RECORDS` to an aggregate, each with its own
/// partition key, then the MD5 of the protocol buffer.
fn kpl_aggregates(events: &[Vec<u8>]) -> Vec<Vec<u8>> {
    fn varint(out: &mut Vec<u8>, mut value: usize) {
        while value >= 0x80 {
            out.push(value as u8 | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }
    fn field(out: &mut Vec<u8>, number: u8, bytes: &[u8]) {
        out.push(number << 3 | 2);
        varint(out, bytes.len());
        out.extend_from_slice(bytes);
    }
    events
        .chunks(KPL_USER_RECORDS)
        .map(|chunk| {
            let mut body = Vec::new();
            for (index, event) in chunk.iter().enumerate() {
                field(&mut body, 1, format!("key-{index}").as_bytes());
                let mut record = vec![0x08];
                varint(&mut record, index);
                field(&mut record, 3, event);
                field(&mut body, 3, &record);
            }
            [&MAGIC[..], &body, &md5::Md5::digest(&body)[..]].concat()
        })
        .collect()
}

/// Decoding alone, as the reading threads do it: nanoseconds per event for plain records, and
/// for the same events in KPL aggregates.
fn decode_pass() -> (f64, f64) {
    let mut records = Records::new();
    let (mut plain, mut packed) = (Duration::ZERO, Duration::ZERO);
    for batch in 0..BATCHES / 4 {
        let events = records.fill(batch).to_vec();
        let (plain_page, kpl_page) = (page_of(events.iter().map(Vec::as_slice)), kpl_aggregates(&events));
        let kpl_page = page_of(kpl_page.iter().map(Vec::as_slice));
        let began = Instant::now();
        black_box(DecodedPage::of(&plain_page));
        plain += began.elapsed();
        let began = Instant::now();
        let decoded = black_box(DecodedPage::of(&kpl_page));
        packed += began.elapsed();
        assert_eq!(decoded.packed_records(), BATCH, "every user record unpacked");
    }
    let per_event = |busy: Duration| busy.as_nanos() as f64 / (BATCH * BATCHES / 4) as f64;
    (per_event(plain), per_event(packed))
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
    let (mut plain, mut packed) = (Vec::new(), Vec::new());
    for _ in 0..PASSES {
        let (plain_ns, packed_ns) = decode_pass();
        plain.push(plain_ns);
        packed.push(packed_ns);
    }
    // `summary` reports the largest as best: for a cost, the best is the smallest.
    let (plain_median, _) = summary(plain.clone());
    let (packed_median, _) = summary(packed.clone());
    let least = |costs: Vec<f64>| costs.into_iter().fold(f64::INFINITY, f64::min);
    println!("decode, plain:     {plain_median:.0} ns/event median, {:.0} least", least(plain));
    println!(
        "decode, KPL:       {packed_median:.0} ns/event median, {:.0} least ({KPL_USER_RECORDS} user records an aggregate)",
        least(packed)
    );
}
