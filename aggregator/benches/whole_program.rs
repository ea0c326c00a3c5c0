//! The whole aggregator program: the release binary reading a fake Kinesis stream from
//! TRIM_HORIZON (pre-encoded GetRecords answers, served from this process), aggregating, and
//! writing aggregates with PutRecords and checkpoints to a fake S3. It reports events per
//! CPU-second of the aggregator process (all its threads, from `/proc/<pid>/stat`, not wall
//! time), its peak resident memory, the time from a window's watermark passing to its aggregate
//! arriving in PutRecords, and, in the same run, the engine (`DecodedPage` + `WindowEngine`,
//! aggregates serialized) and the reference loop over the same records, in CPU time of their
//! thread.
//!
//!     cargo bench -p metrics-aggregator --bench whole_program
//!
//! The workload is set by environment variables: `BENCH_SHARDS` (8), `BENCH_PAGES` per shard
//! (25, of 10,000 records each), `BENCH_KEYS` (200; a multiple of 10: components × 10 metrics),
//! `BENCH_STEP_MS`, event time per record on a shard (3; 0 puts every event in one window, to
//! hold every key open at once). Events are up to 4 s out of order, 1-minute windows, 5 s
//! out-of-orderness. Results are in BENCHMARKS.md.

mod support;

use std::collections::HashSet;
use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use metrics_aggregator::engine::window::WindowEngine;
use metrics_aggregator::kinesis::decode::DecodedPage;
use metrics_pipeline_model::aggregation::WindowConfig;
use metrics_pipeline_model::event::EventTime;
use support::{Fake, Page, Reference, process_cpu, resident_mib, start_aggregator, summary, thread_cpu, write_record};

const RECORDS_PER_PAGE: usize = 10_000;
const METRICS: usize = 10;
const WINDOW_MS: i64 = 60_000;
const OUT_OF_ORDERNESS_MS: i64 = 5_000;
const JITTER_MS: u64 = 4_000;
const START: i64 = 1_631_188_800_000;
const REFERENCE_PASSES: usize = 3;

#[derive(Clone, Copy)]
struct Workload {
    shards: usize,
    pages: usize,
    keys: usize,
    step_ms: i64,
}

impl Workload {
    fn from_env() -> Self {
        let var = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
        let workload = Self {
            shards: var("BENCH_SHARDS", 8),
            pages: var("BENCH_PAGES", 25),
            keys: var("BENCH_KEYS", 200),
            step_ms: var("BENCH_STEP_MS", 3) as i64,
        };
        assert!(
            workload.keys >= METRICS * workload.shards && workload.keys.is_multiple_of(METRICS),
            "BENCH_KEYS: a multiple of 10, 10 per shard at least"
        );
        workload
    }

    fn events(&self) -> usize {
        self.shards * self.pages * RECORDS_PER_PAGE
    }

    /// The events of one page of one shard, each with its component and event time: components
    /// live on the shard `component % shards` (the partition key), keys are drawn at random
    /// among the shard's, and each event is up to 4 s older than its place in the shard.
    fn page(&self, shard: usize, page: usize, mut each: impl FnMut(usize, i64, &[u8])) {
        let mut seed = (shard as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (page as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
        let components_here = (self.keys / METRICS - shard).div_ceil(self.shards);
        let mut event = Vec::with_capacity(160);
        for index in 0..RECORDS_PER_PAGE {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let component = shard + self.shards * (seed % components_here as u64) as usize;
            let metric = (seed >> 20) % METRICS as u64;
            let at = START + (page * RECORDS_PER_PAGE + index) as i64 * self.step_ms - ((seed >> 32) % JITTER_MS) as i64;
            event.clear();
            write!(
                event,
                r#"{{"componentName":"component-{component}","metricName":"metric-{metric}","unit":"percent","value":{}.{},"timestamp":"{}"}}"#,
                seed % 100,
                (seed >> 8) % 10,
                EventTime(at)
            )
            .expect("writing to a Vec");
            each(component * METRICS + metric as usize, at, &event);
        }
    }

    /// Every shard's pages as GetRecords answers them, and how many aggregates they make.
    fn encode(&self) -> (Vec<Vec<Page>>, usize) {
        let mut windows = HashSet::new();
        let shards = (0..self.shards)
            .map(|shard| {
                (0..self.pages)
                    .map(|page| {
                        let (mut records, mut max_event_time, mut sequence) =
                            (Vec::with_capacity(RECORDS_PER_PAGE * 300), i64::MIN, page * RECORDS_PER_PAGE);
                        records.push(b'[');
                        self.page(shard, page, |key, at, event| {
                            if records.len() > 1 {
                                records.push(b',');
                            }
                            sequence += 1;
                            write_record(&mut records, sequence, &format!("component-{}", key / METRICS), event);
                            max_event_time = max_event_time.max(at);
                            windows.insert((key, at.div_euclid(WINDOW_MS)));
                        });
                        records.push(b']');
                        Page { records: Bytes::from(records), max_event_time }
                    })
                    .collect()
            })
            .collect();
        (shards, windows.len())
    }
}

/// decode + window + aggregate + serialize what fired, page by page, shards in turn: what the
/// aggregator does with records once it has them. Returns the CPU time of that work.
fn engine_pass(workload: &Workload) -> Duration {
    let mut engine = WindowEngine::new(&WindowConfig {
        window: Duration::from_millis(WINDOW_MS as u64),
        out_of_orderness: Duration::from_millis(OUT_OF_ORDERNESS_MS as u64),
        allowed_lateness: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(5),
        max_future_skew: Duration::from_secs(300),
    });
    let shards: Vec<String> = (0..workload.shards).map(|shard| format!("shardId-{shard:012}")).collect();
    let (mut events, mut out, mut busy) = (Vec::with_capacity(RECORDS_PER_PAGE), Vec::new(), Duration::ZERO);
    let wall_clock = EventTime(START + 86_400_000);
    for page in 0..workload.pages {
        for (index, shard) in shards.iter().enumerate() {
            events.clear();
            workload.page(index, page, |_, _, event| events.push(event.to_vec()));
            let records = support::page_of(events.iter().map(Vec::as_slice));
            let began = thread_cpu();
            engine.start_page(wall_clock);
            black_box(engine.add_page(shard, &DecodedPage::of(&records)));
            engine.advance(&mut out);
            for aggregate in out.drain(..) {
                black_box(serde_json::to_vec(&aggregate).expect("an aggregate serializes"));
            }
            busy += thread_cpu() - began;
        }
    }
    busy
}

/// The reference loop over the same records.
fn reference_pass(workload: &Workload) -> Duration {
    let (mut reference, mut events, mut busy) = (Reference::default(), Vec::with_capacity(RECORDS_PER_PAGE), Duration::ZERO);
    for page in 0..workload.pages {
        for shard in 0..workload.shards {
            events.clear();
            workload.page(shard, page, |_, _, event| events.push(event.to_vec()));
            let began = thread_cpu();
            for record in &events {
                reference.add(record);
            }
            busy += thread_cpu() - began;
        }
    }
    busy
}

/// Each thread of `pid` with its CPU time, busiest first.
fn threads(pid: u32) -> Vec<(String, Duration)> {
    let mut threads: Vec<(String, Duration)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| tasks.flatten().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|task| {
            let tid: u32 = task.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some((name.trim().to_owned(), Duration::from_millis(ticks * 10)))
        })
        .collect();
    threads.sort_by_key(|(_, cpu)| std::cmp::Reverse(*cpu));
    threads
}

#[tokio::main]
async fn main() {
    let workload = Workload::from_env();
    let events = workload.events() as f64;
    let (shards, expected) = workload.encode();
    let bytes: usize = shards.iter().flatten().map(|page| page.records.len()).sum();
    println!(
        "workload:          {} shards × {} pages × {RECORDS_PER_PAGE} records = {events} events, {} keys, {} MiB of GetRecords answers, {expected} aggregates",
        workload.shards,
        workload.pages,
        workload.keys,
        bytes / 1_048_576
    );
    let fake = Fake::new(shards, WINDOW_MS, OUT_OF_ORDERNESS_MS);
    let endpoint = fake.serve().await;

    let began = Instant::now();
    let mut aggregator = start_aggregator(&endpoint, &["--out-of-orderness", "5s", "--idle-timeout", "5s", "--max-future-skew", "5m"]);
    let pid = aggregator.id();
    fake.watch_cpu_of(pid);
    loop {
        let (served, put) = {
            let seen = fake.seen.lock().unwrap();
            (seen.pages_served, seen.records_put)
        };
        if served == fake.pages() && put >= expected {
            break;
        }
        assert!(aggregator.try_wait().unwrap().is_none(), "the aggregator exited");
        assert!(began.elapsed() < Duration::from_secs(900), "not done in 15 minutes: {served} pages served, {put} aggregates written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (cpu, wall, peak) = (process_cpu(pid), began.elapsed(), resident_mib(pid, "VmHWM:"));
    let threads = threads(pid);
    let _ = aggregator.kill();
    let _ = aggregator.wait();
    let seen = fake.seen.lock().unwrap();
    let (startup_cpu, first_page) = (seen.cpu_at_first_page.unwrap_or_default(), seen.first_page.expect("a page was served"));
    let reading = seen.last_page.expect("a page was served").duration_since(first_page);
    let working = cpu - startup_cpu;
    let latencies = seen.latencies();
    drop(seen);

    let (mut engine_rates, mut reference_rates) = (Vec::new(), Vec::new());
    for _ in 0..REFERENCE_PASSES {
        engine_rates.push(events / engine_pass(&workload).as_secs_f64());
        reference_rates.push(events / reference_pass(&workload).as_secs_f64());
    }
    let ((engine_median, engine_best), (reference_median, reference_best)) = (summary(engine_rates), summary(reference_rates));

    println!(
        "whole program:     {:.0} events per CPU-second ({:.2} CPU-s after start-up, {:.2} s start-up; {:.1} s wall from the first page, {:.2} cores busy)",
        events / working.as_secs_f64(),
        working.as_secs_f64(),
        startup_cpu.as_secs_f64(),
        (began + wall).duration_since(first_page).as_secs_f64(),
        working.as_secs_f64() / (began + wall).duration_since(first_page).as_secs_f64()
    );
    let busiest: Vec<String> =
        threads.iter().filter(|(_, cpu)| !cpu.is_zero()).map(|(name, cpu)| format!("{name} {:.2} s", cpu.as_secs_f64())).collect();
    println!("its threads:       {}", busiest.join(", "));
    println!(
        "pages read in:     {:.1} s wall, first to last page served ({:.0} events/s; GetRecords allows {} a second)",
        reading.as_secs_f64(),
        events / reading.as_secs_f64(),
        workload.shards * 5 * RECORDS_PER_PAGE
    );
    println!("peak resident:     {peak} MiB");
    if let (Some(first), Some(last)) = (latencies.first(), latencies.last()) {
        println!(
            "watermark → output: {} windows, median {:.0} ms, min {first:.0} ms, max {last:.0} ms",
            latencies.len(),
            latencies[latencies.len() / 2]
        );
    }
    println!("engine:            {engine_median:.0} events per CPU-second median, {engine_best:.0} best ({REFERENCE_PASSES} passes)");
    println!("reference loop:    {reference_median:.0} events per CPU-second median, {reference_best:.0} best");
}
