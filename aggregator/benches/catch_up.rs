//! Peak resident memory of the aggregator binary catching up on 20 shards that are all far
//! behind, each GetRecords answer the largest Kinesis gives (10,000 records, 10 MiB).
//!
//!     cargo bench -p metrics-aggregator --bench catch_up
//!
//! moto serves a few hundred records a second, so a fake endpoint in this process plays Kinesis
//! (ListShards, DescribeStreamSummary, GetShardIterator, GetRecords with `MillisBehindLatest`,
//! PutRecords) and S3 (objects in memory, path-style). Every shard has `PAGES` full pages behind,
//! then answers empty and caught up. Results are in BENCHMARKS.md.

mod support;

use std::time::{Duration, Instant};

use axum::body::Bytes;
use metrics_pipeline_model::event::EventTime;
use support::{Fake, Page, resident_mib, start_aggregator, write_record};

const SHARDS: usize = 20;
const PAGES: usize = 5;
const RECORDS_PER_PAGE: usize = 10_000;
/// A valid metric event padded (an ignored field) to about 1 KiB: 10,000 make a 10 MiB page.
const RECORD_BYTES: usize = 1_040;

/// One full GetRecords answer's records, served for every page of every shard.
fn full_page() -> Page {
    let start = EventTime::parse_rfc3339("2021-09-09T12:00:00Z").unwrap().0;
    let mut records = b"[".to_vec();
    for i in 0..RECORDS_PER_PAGE {
        let event = format!(
            r#"{{"componentName":"component-{}","metricName":"cpu","unit":"percent","value":{}.5,"timestamp":"{}","pad":"{}"}}"#,
            i % 100,
            i % 97,
            EventTime(start + i as i64 * 10),
            "x".repeat(RECORD_BYTES - 150)
        );
        if i > 0 {
            records.push(b',');
        }
        write_record(&mut records, i + 1, &format!("component-{}", i % 100), event.as_bytes());
    }
    records.push(b']');
    Page { records: Bytes::from(records), max_event_time: start + RECORDS_PER_PAGE as i64 * 10 }
}

#[tokio::main]
async fn main() {
    let page = full_page();
    println!("page: {} records, {:.1} MiB as GetRecords answers it", RECORDS_PER_PAGE, page.records.len() as f64 / 1_048_576.0);
    let answers = (SHARDS * PAGES * page.records.len()) as f64 / 1_048_576.0;
    let fake = Fake::new(vec![vec![page; PAGES]; SHARDS], 60_000, 1_000);
    let endpoint = fake.serve().await;

    let began = Instant::now();
    let mut aggregator = start_aggregator(&endpoint, &["--out-of-orderness", "1s", "--idle-timeout", "5s", "--max-future-skew", "1d"]);
    let pid = aggregator.id();
    while fake.seen.lock().unwrap().pages_served < SHARDS * PAGES {
        assert!(aggregator.try_wait().unwrap().is_none(), "the aggregator exited");
        assert!(began.elapsed() < Duration::from_secs(600), "catching up took over 10 minutes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The last pages are read; give them time to be aggregated.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (peak, now) = (resident_mib(pid, "VmHWM:"), resident_mib(pid, "VmRSS:"));
    let elapsed = began.elapsed();
    let _ = aggregator.kill();
    let _ = aggregator.wait();
    println!("shards behind:     {SHARDS}, {PAGES} full pages each ({answers:.0} MiB of answers)");
    println!(
        "caught up in:      {:.1} s ({:.0} records/s)",
        elapsed.as_secs_f64(),
        (SHARDS * PAGES * RECORDS_PER_PAGE) as f64 / elapsed.as_secs_f64()
    );
    println!("peak resident:     {peak} MiB (resident at the end: {now} MiB; the Deployment's default limit: 512 MiB)");
}
