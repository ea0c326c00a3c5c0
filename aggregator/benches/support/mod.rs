#![allow(dead_code)] // Each bench uses a part of it.
//! What the benches share: a fast fake of the Kinesis and S3 calls the aggregator binary makes,
//! serving pre-encoded GetRecords answers (moto serves a few hundred records a second, far too
//! slow to measure the aggregator), the reference loop, and CPU time and memory from `/proc`.

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_pipeline_model::event::EventTime;

/// One GetRecords answer with records: the JSON array of its records, and the latest event
/// time among them (to tell when the watermark passes a window's end).
#[derive(Clone)]
pub struct Page {
    pub records: Bytes,
    pub max_event_time: i64,
}

/// A GetRecords record as Kinesis answers it, written into `out` (the array's separator is the
/// caller's).
/// A page of records as the aggregator reads a GetRecords answer into it.
pub fn page_of<'a>(data: impl Iterator<Item = &'a [u8]>) -> metrics_aggregator::kinesis::get_records::Records {
    let mut records = metrics_aggregator::kinesis::get_records::Records::default();
    for (sequence, data) in data.enumerate() {
        let sequence = sequence.to_string();
        records.push(metrics_aggregator::kinesis::get_records::InputRecord {
            sequence_number: &sequence,
            partition_key: "k",
            data,
            arrival: None,
        });
    }
    records
}

pub fn write_record(out: &mut Vec<u8>, sequence: usize, partition_key: &str, data: &[u8]) {
    use std::io::Write;
    write!(
        out,
        r#"{{"SequenceNumber":"{sequence:056}","ApproximateArrivalTimestamp":1.6311888E9,"Data":"{}","PartitionKey":"{partition_key}"}}"#,
        aws_smithy_types::base64::encode(data)
    )
    .expect("writing to a Vec");
}

/// What the fake saw, for the bench to judge.
#[derive(Default)]
pub struct Seen {
    pub pages_served: usize,
    /// When the first page with records was served: the aggregator's start-up is over.
    pub first_page: Option<Instant>,
    pub last_page: Option<Instant>,
    /// The aggregator's CPU time then: what its start-up cost.
    pub cpu_at_first_page: Option<Duration>,
    /// Records written with PutRecords.
    pub records_put: usize,
    /// The latest event time served per shard.
    clocks: Vec<Option<i64>>,
    /// Per window end: when the served pages took every shard's clock past it plus the
    /// out-of-orderness, and when its aggregate first came in a PutRecords call.
    pub watermark_passed: BTreeMap<i64, Instant>,
    pub first_output: BTreeMap<i64, Instant>,
}

impl Seen {
    /// Milliseconds from the watermark passing a window's end to its aggregate's PutRecords.
    pub fn latencies(&self) -> Vec<f64> {
        let mut latencies: Vec<f64> = (self.watermark_passed.iter())
            .filter_map(|(end, passed)| Some(self.first_output.get(end)?.saturating_duration_since(*passed).as_secs_f64() * 1000.0))
            .collect();
        latencies.sort_by(f64::total_cmp);
        latencies
    }
}

/// The fake Kinesis stream `in` (and any output stream) and S3 bucket. The operation is in
/// `X-Amz-Target`; a shard iterator is `<shard index>/<page>`. Objects are held in memory.
pub struct Fake {
    /// Per shard, its pages in order; past the last one a shard answers empty and caught up.
    shards: Vec<Vec<Page>>,
    window_ms: i64,
    out_of_orderness_ms: i64,
    objects: Mutex<HashMap<String, Bytes>>,
    /// The aggregator process, once started (0 before).
    aggregator: AtomicU32,
    pub seen: Mutex<Seen>,
}

impl Fake {
    /// A stream whose shards hold `shards`' pages; windows of `window_ms`, for the latency.
    pub fn new(shards: Vec<Vec<Page>>, window_ms: i64, out_of_orderness_ms: i64) -> Arc<Self> {
        let seen = Seen { clocks: vec![None; shards.len()], ..Seen::default() };
        Arc::new(Self {
            shards,
            window_ms,
            out_of_orderness_ms,
            objects: Mutex::default(),
            aggregator: AtomicU32::new(0),
            seen: Mutex::new(seen),
        })
    }

    /// Takes the aggregator's CPU time when the first page is served.
    pub fn watch_cpu_of(&self, pid: u32) {
        self.aggregator.store(pid, Ordering::Relaxed);
    }

    pub fn pages(&self) -> usize {
        self.shards.iter().map(Vec::len).sum()
    }

    /// Serves Kinesis and S3 on a local port; returns the endpoint URL.
    pub async fn serve(self: &Arc<Self>) -> String {
        let router = Router::new()
            .route("/", post(kinesis))
            .route("/{bucket}/{*key}", get(get_object).put(put_object))
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        endpoint
    }

    fn served(&self, shard: usize, page: &Page) {
        let mut seen = self.seen.lock().unwrap();
        seen.pages_served += 1;
        seen.last_page = Some(Instant::now());
        if seen.first_page.is_none() {
            seen.first_page = Some(Instant::now());
            seen.cpu_at_first_page = Some(process_cpu(self.aggregator.load(Ordering::Relaxed)));
        }
        let clock = &mut seen.clocks[shard];
        *clock = Some(clock.map_or(page.max_event_time, |max| max.max(page.max_event_time)));
        let Some(watermark) = seen.clocks.iter().copied().min().flatten().map(|min| min - self.out_of_orderness_ms) else { return };
        let passed = seen.watermark_passed.last_key_value().map_or(i64::MIN, |(end, _)| *end);
        let mut end = watermark.div_euclid(self.window_ms) * self.window_ms;
        let now = Instant::now();
        while end > passed && end > watermark - 100 * self.window_ms {
            seen.watermark_passed.insert(end, now);
            end -= self.window_ms;
        }
    }

    fn get_records(&self, iterator: &str) -> Response {
        let (shard, page) = iterator.split_once('/').unwrap_or_default();
        let (shard, page): (usize, usize) = (shard.parse().unwrap_or(0), page.parse().unwrap_or(usize::MAX));
        let pages = self.shards.get(shard).map_or(&[][..], Vec::as_slice);
        let Some(served) = pages.get(page) else {
            return kinesis_json(format!(r#"{{"Records":[],"MillisBehindLatest":0,"NextShardIterator":"{shard}/{page}"}}"#).into());
        };
        let behind = (pages.len() - page) * 10_000;
        let head = format!(r#"{{"MillisBehindLatest":{behind},"NextShardIterator":"{shard}/{}","Records":"#, page + 1);
        let mut body = Vec::with_capacity(head.len() + served.records.len() + 1);
        body.extend_from_slice(head.as_bytes());
        body.extend_from_slice(&served.records);
        body.push(b'}');
        self.served(shard, served);
        kinesis_json(body.into())
    }

    fn put_records(&self, request: &serde_json::Value) -> Response {
        let records = request["Records"].as_array().map_or(&[][..], Vec::as_slice);
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap();
        seen.records_put += records.len();
        for record in records {
            let data = record["Data"].as_str().and_then(|data| aws_smithy_types::base64::decode(data).ok()).unwrap_or_default();
            let aggregate: serde_json::Value = serde_json::from_slice(&data).unwrap_or_default();
            if let Some(end) = aggregate["windowEnd"].as_str().and_then(EventTime::parse_rfc3339) {
                seen.first_output.entry(end.0).or_insert(now);
            }
        }
        let results = vec![serde_json::json!({"SequenceNumber": "1", "ShardId": "shardId-000000000000"}); records.len()];
        kinesis_json(serde_json::json!({"FailedRecordCount": 0, "Records": results}).to_string().into())
    }
}

fn kinesis_json(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/x-amz-json-1.1")], body).into_response()
}

async fn kinesis(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let shards = fake.shards.len();
    let json = |body: serde_json::Value| kinesis_json(body.to_string().into());
    match target.split('.').nth(1).unwrap_or_default() {
        "DescribeStreamSummary" => json(serde_json::json!({"StreamDescriptionSummary": {
            "StreamName": "in", "StreamARN": "arn:aws:kinesis:eu-west-1:123456789012:stream/in", "StreamStatus": "ACTIVE",
            "RetentionPeriodHours": 24, "StreamCreationTimestamp": 1_631_188_800.0, "EnhancedMonitoring": [],
            "OpenShardCount": shards, "ConsumerCount": 0}})),
        "ListShards" => json(serde_json::json!({"Shards": (0..shards).map(|i| serde_json::json!({
            "ShardId": format!("shardId-{i:012}"), "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "1"},
            "SequenceNumberRange": {"StartingSequenceNumber": "0"}})).collect::<Vec<_>>()})),
        "GetShardIterator" => {
            let shard = request["ShardId"].as_str().and_then(|id| id.strip_prefix("shardId-")?.parse::<usize>().ok()).unwrap_or(0);
            json(serde_json::json!({"ShardIterator": format!("{shard}/0")}))
        }
        "GetRecords" => fake.get_records(request["ShardIterator"].as_str().unwrap_or_default()),
        "PutRecords" => fake.put_records(&request),
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

/// The release aggregator binary reading stream `in` at `endpoint`, with `flags` added;
/// `AGGREGATOR_BIN` runs another build of it instead (an older one, to compare), and
/// `AGGREGATOR_CPUS` (a `taskset` list such as `0` or `0,1`) confines it to those cores.
pub fn start_aggregator(endpoint: &str, flags: &[&str]) -> Child {
    let binary = std::env::var("AGGREGATOR_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_metrics-aggregator").to_owned());
    let mut command = match std::env::var("AGGREGATOR_CPUS") {
        // taskset executes the binary in its own process: the child's pid stays the aggregator's.
        Ok(cpus) => {
            let mut taskset = Command::new("taskset");
            taskset.args(["-c", &cpus, &binary]);
            taskset
        }
        Err(_) => Command::new(binary),
    };
    command
        .args(["run", "--input-stream", "in", "--output-stream", "out", "--bucket", "b", "--listen", "127.0.0.1:0"])
        .args(["--log-level", "warn"])
        .args(flags)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .stdin(Stdio::null())
        .spawn()
        .expect("the aggregator binary starts")
}

/// A `/proc/<pid>/status` field in MiB (`VmHWM:` is the peak resident set, `VmRSS:` the current).
pub fn resident_mib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status.lines().find_map(|line| line.strip_prefix(field)).and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok());
    kib.unwrap_or(0) / 1024
}

/// CPU time (user + system) of process `pid` so far, all its threads, from `/proc/<pid>/stat`.
pub fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses; utime and stime are
    // the 14th and 15th fields, in clock ticks of 1/100 s (USER_HZ on Linux).
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|field| field.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// CPU time of the calling thread so far, in nanoseconds (`/proc/thread-self/schedstat`).
pub fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    Duration::from_nanos(stat.split_whitespace().next().and_then(|ns| ns.parse().ok()).unwrap_or(0))
}

/// The reference record type: what `#[derive(Deserialize)]` gives, borrowing strings.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct BareEvent<'a> {
    component_name: &'a str,
    metric_name: &'a str,
    #[allow(dead_code)]
    unit: &'a str,
    value: f64,
    #[allow(dead_code)]
    timestamp: &'a str,
}

/// The reference loop: a bare serde_json parse and a HashMap update per record, no windows,
/// no validation, no timestamp parsing.
#[derive(Default)]
pub struct Reference {
    sums: HashMap<String, HashMap<String, (f64, u64)>>,
}

impl Reference {
    pub fn add(&mut self, record: &[u8]) {
        let event: BareEvent<'_> = serde_json::from_slice(record).unwrap();
        let metrics = match self.sums.get_mut(event.component_name) {
            Some(metrics) => metrics,
            None => self.sums.entry(event.component_name.to_owned()).or_default(),
        };
        match metrics.get_mut(event.metric_name) {
            Some((sum, count)) => {
                *sum += event.value;
                *count += 1;
            }
            None => {
                metrics.insert(event.metric_name.to_string(), (event.value, 1));
            }
        }
        black_box(&self.sums);
    }
}

/// (median, best): the machine only ever adds noise, so the best pass is the steadier figure.
pub fn summary(mut rates: Vec<f64>) -> (f64, f64) {
    rates.sort_by(f64::total_cmp);
    (rates[rates.len() / 2], rates[rates.len() - 1])
}
