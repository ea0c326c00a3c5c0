//! Peak resident memory of the aggregator binary catching up on 20 shards that are all far
//! behind, each GetRecords answer the largest Kinesis gives (10,000 records, 10 MiB).
//!
//!     cargo bench -p metrics-aggregator --bench catch_up
//!
//! moto serves a few hundred records a second, so a fake endpoint in this process plays Kinesis
//! (ListShards, DescribeStreamSummary, GetShardIterator, GetRecords with `MillisBehindLatest`,
//! PutRecords) and S3 (objects in memory, path-style). Every shard has `PAGES` full pages behind,
//! then answers empty and caught up. Results are in BENCHMARKS.md.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_pipeline_model::event::EventTime;

const SHARDS: usize = 20;
const PAGES: usize = 5;
const RECORDS_PER_PAGE: usize = 10_000;
/// A valid metric event padded (an ignored field) to about 1 KiB: 10,000 make a 10 MiB page.
const RECORD_BYTES: usize = 1_040;

struct Fake {
    /// One full GetRecords answer, served for every page of every shard.
    page: Bytes,
    objects: Mutex<HashMap<String, Bytes>>,
    pages_served: Mutex<usize>,
}

fn full_page() -> Bytes {
    let start = EventTime::parse_rfc3339("2021-09-09T12:00:00Z").unwrap().0;
    let records: Vec<serde_json::Value> = (0..RECORDS_PER_PAGE)
        .map(|i| {
            let event = format!(
                r#"{{"componentName":"component-{}","metricName":"cpu","unit":"percent","value":{}.5,"timestamp":"{}","pad":"{}"}}"#,
                i % 100,
                i % 97,
                EventTime(start + i as i64 * 10),
                "x".repeat(RECORD_BYTES - 150)
            );
            serde_json::json!({
                "Data": aws_smithy_types::base64::encode(event.as_bytes()),
                "PartitionKey": format!("component-{}", i % 100),
                "SequenceNumber": format!("{:056}", i + 1),
                "ApproximateArrivalTimestamp": 1_631_188_800.0,
            })
        })
        .collect();
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({"Records": records, "MillisBehindLatest": 3_600_000, "NextShardIterator": "NEXT"})).unwrap(),
    )
}

fn json(body: serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "application/x-amz-json-1.1")], body.to_string()).into_response()
}

/// Kinesis: the operation is in `X-Amz-Target`; an iterator is `<shard>/<page>`.
async fn kinesis(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    match target.split('.').nth(1).unwrap_or_default() {
        "DescribeStreamSummary" => json(serde_json::json!({"StreamDescriptionSummary": {
            "StreamName": "in", "StreamARN": "arn:aws:kinesis:eu-west-1:123456789012:stream/in", "StreamStatus": "ACTIVE",
            "RetentionPeriodHours": 24, "StreamCreationTimestamp": 1_631_188_800.0, "EnhancedMonitoring": [],
            "OpenShardCount": SHARDS, "ConsumerCount": 0}})),
        "ListShards" => json(serde_json::json!({"Shards": (0..SHARDS).map(|i| serde_json::json!({
            "ShardId": format!("shardId-{i:012}"), "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "1"},
            "SequenceNumberRange": {"StartingSequenceNumber": "0"}})).collect::<Vec<_>>()})),
        "GetShardIterator" => json(serde_json::json!({"ShardIterator": format!("{}/0", request["ShardId"].as_str().unwrap_or_default())})),
        "GetRecords" => {
            let iterator = request["ShardIterator"].as_str().unwrap_or_default();
            let (shard, page) = iterator.rsplit_once('/').unwrap_or_default();
            let page: usize = page.parse().unwrap_or(PAGES);
            let next = format!("{shard}/{}", page + 1);
            if page >= PAGES {
                return json(serde_json::json!({"Records": [], "MillisBehindLatest": 0, "NextShardIterator": next}));
            }
            *fake.pages_served.lock().unwrap() += 1;
            let body = String::from_utf8(fake.page.to_vec()).unwrap().replacen("\"NEXT\"", &format!("\"{next}\""), 1);
            ([(header::CONTENT_TYPE, "application/x-amz-json-1.1")], body).into_response()
        }
        "PutRecords" => {
            let count = request["Records"].as_array().map_or(0, Vec::len);
            json(
                serde_json::json!({"FailedRecordCount": 0, "Records": vec![serde_json::json!({"SequenceNumber": "1", "ShardId": "shardId-000000000000"}); count]}),
            )
        }
        other => (StatusCode::BAD_REQUEST, format!("{{\"__type\":\"UnknownOperationException\",\"message\":\"{other}\"}}")).into_response(),
    }
}

async fn get_object(State(fake): State<Arc<Fake>>, Path((_, key)): Path<(String, String)>) -> Response {
    match fake.objects.lock().unwrap().get(&key) {
        Some(body) => ([(header::ETAG, "\"e\"")], body.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, "<Error><Code>NoSuchKey</Code><Message>no such key</Message></Error>").into_response(),
    }
}

async fn put_object(State(fake): State<Arc<Fake>>, Path((_, key)): Path<(String, String)>, body: Bytes) -> Response {
    fake.objects.lock().unwrap().insert(key, body);
    ([(header::ETAG, "\"e\"")], "").into_response()
}

fn resident(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status.lines().find_map(|line| line.strip_prefix(field)).and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok());
    kib.unwrap_or(0) / 1024
}

#[tokio::main]
async fn main() {
    let fake = Arc::new(Fake { page: full_page(), objects: Mutex::default(), pages_served: Mutex::new(0) });
    println!("page: {} records, {:.1} MiB as GetRecords answers it", RECORDS_PER_PAGE, fake.page.len() as f64 / 1_048_576.0);
    let router = Router::new()
        .route("/", post(kinesis))
        .route("/{bucket}/{*key}", get(get_object).put(put_object))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let began = Instant::now();
    let mut aggregator = Command::new(env!("CARGO_BIN_EXE_metrics-aggregator"))
        .args(["run", "--input-stream", "in", "--output-stream", "out", "--bucket", "b", "--listen", "127.0.0.1:0"])
        .args(["--log-level", "warn", "--out-of-orderness", "1s", "--idle-timeout", "5s", "--max-future-skew", "1d"])
        .env("AWS_ENDPOINT_URL", &endpoint)
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .stdin(Stdio::null())
        .spawn()
        .expect("the aggregator binary starts");
    let pid = aggregator.id();
    while *fake.pages_served.lock().unwrap() < SHARDS * PAGES {
        assert!(aggregator.try_wait().unwrap().is_none(), "the aggregator exited");
        assert!(began.elapsed() < Duration::from_secs(600), "catching up took over 10 minutes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The last pages are read; give them time to be aggregated.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (peak, now) = (resident(pid, "VmHWM:"), resident(pid, "VmRSS:"));
    let elapsed = began.elapsed();
    let _ = aggregator.kill();
    let _ = aggregator.wait();
    let mib = (SHARDS * PAGES * fake.page.len()) as f64 / 1_048_576.0;
    println!("shards behind:     {SHARDS}, {PAGES} full pages each ({mib:.0} MiB of answers)");
    println!(
        "caught up in:      {:.1} s ({:.0} records/s)",
        elapsed.as_secs_f64(),
        (SHARDS * PAGES * RECORDS_PER_PAGE) as f64 / elapsed.as_secs_f64()
    );
    println!("peak resident:     {peak} MiB (resident at the end: {now} MiB; the Deployment's default limit: 256 MiB)");
}
