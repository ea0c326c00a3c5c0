//! The checkpoint's size and the CPU it costs, at 10,000 and 1,000,000 keys: every key with one
//! open and one fired window (kept for allowedLateness), as after a window boundary.
//!
//!     cargo bench -p metrics-aggregator --bench checkpoint
//!
//! Times the engine's snapshot plus its JSON (what each checkpoint write serializes) and the
//! reverse (what a start reads), median of five; the S3 write itself is `aggregator_checkpoint_write_seconds`
//! in a real pipeline. Results are in BENCHMARKS.md.

mod support;

use std::borrow::Borrow;
use std::hint::black_box;
use std::time::{Duration, Instant};

use metrics_aggregator::engine::window::{EngineSnapshot, KeyedEvent, MetricKey, WindowEngine};
use metrics_pipeline_model::aggregation::WindowConfig;
use metrics_pipeline_model::event::EventTime;

const PASSES: usize = 5;
const NOON: i64 = 1_631_188_800_000;

fn config() -> WindowConfig {
    WindowConfig {
        window: Duration::from_secs(60),
        out_of_orderness: Duration::from_secs(5),
        allowed_lateness: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(30),
        max_future_skew: Duration::from_secs(300),
    }
}

/// An engine holding `keys` keys, each with a fired window (noon) and an open one (a minute later).
fn engine(keys: usize) -> WindowEngine {
    let mut engine = WindowEngine::new(&config());
    let names: Vec<MetricKey> =
        (0..keys).map(|key| MetricKey::new(&format!("component-{}", key / 10), &format!("metric-{}", key % 10), "percent")).collect();
    let add = |engine: &mut WindowEngine, at: i64| {
        engine.start_page(EventTime(NOON + 3_600_000));
        for (index, key) in names.iter().enumerate() {
            let event = KeyedEvent { key: key.borrow(), value: index as f64 * 0.1, timestamp: EventTime(at), arrival: None };
            black_box(engine.add_keyed("shardId-000000000000", &event));
        }
        engine.advance(&mut Vec::new());
    };
    add(&mut engine, NOON + 1_000);
    add(&mut engine, NOON + 66_000);
    engine
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() {
    for keys in [10_000, 1_000_000] {
        let engine = engine(keys);
        let (mut writes, mut reads, mut bytes) = (Vec::new(), Vec::new(), 0);
        for _ in 0..PASSES {
            let began = Instant::now();
            let json = serde_json::to_vec(&engine.snapshot()).expect("a snapshot serializes");
            writes.push(began.elapsed());
            bytes = json.len();
            let began = Instant::now();
            let snapshot: EngineSnapshot = serde_json::from_slice(&json).expect("a snapshot reads back");
            black_box(WindowEngine::restore(&config(), snapshot, &mut Vec::new()));
            reads.push(began.elapsed());
        }
        println!(
            "{keys:>9} keys: {:>7.1} MiB, {:>5.0} bytes a key; snapshot + JSON {:>7.1} ms, read + restore {:>7.1} ms (medians of {PASSES})",
            bytes as f64 / 1_048_576.0,
            bytes as f64 / keys as f64,
            median(writes).as_secs_f64() * 1000.0,
            median(reads).as_secs_f64() * 1000.0,
        );
    }
    println!("peak resident:     {} MiB", support::resident_mib(std::process::id(), "VmHWM:"));
}
