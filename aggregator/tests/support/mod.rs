#![allow(dead_code)] // Each test crate uses a part of it.
//! Running the aggregator binary against the AWS emulator: streams, bucket, the process, and
//! reading what it wrote.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aws_sdk_kinesis::types::{ShardIteratorType, StreamStatus};
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use metrics_aggregator::engine::window::{Accumulator, WindowAssigner};
use metrics_aggregator::kinesis::sink::OutputRecord;
use metrics_pipeline_model::event::{MetricAggregate, MetricEvent, deduplicate};
use metrics_pipeline_runtime::sdk::{s3_client, sdk_config};
use metrics_pipeline_test_support::{Identity, free_port, wait_for};

/// Streams and a bucket of one test, named uniquely; the emulator is discarded after the run.
pub struct Emulator {
    pub kinesis: aws_sdk_kinesis::Client,
    pub s3: aws_sdk_s3::Client,
    pub input: String,
    pub output: String,
    pub bucket: String,
    /// Where Kinesis is when it is not where the rest of AWS is: kinesis-mock's address.
    kinesis_endpoint: Option<String>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Emulator {
    /// Fresh input (with `input_shards`) and output streams and a bucket, named after `test`.
    pub async fn new(test: &str, input_shards: i32) -> Self {
        Self::with_kinesis_at(None, test, input_shards).await
    }

    /// [`Self::new`] with the streams in kinesis-mock (`KINESIS_MOCK_URL`, which `scripts/dev-env`
    /// starts), which reshards as AWS does, and the bucket where the rest of AWS is.
    pub async fn on_kinesis_mock(test: &str, input_shards: i32) -> Self {
        let endpoint = std::env::var("KINESIS_MOCK_URL").expect("KINESIS_MOCK_URL is set: run the tests with scripts/test");
        Self::with_kinesis_at(Some(endpoint), test, input_shards).await
    }

    async fn with_kinesis_at(kinesis_endpoint: Option<String>, test: &str, input_shards: i32) -> Self {
        let sdk = sdk_config(None).await;
        let mut kinesis_config = aws_sdk_kinesis::config::Builder::from(&sdk);
        if let Some(endpoint) = &kinesis_endpoint {
            kinesis_config.set_endpoint_url(Some(endpoint.clone()));
        }
        let kinesis = aws_sdk_kinesis::Client::from_conf(kinesis_config.build());
        let s3 = s3_client(&sdk);
        let unique = format!("{test}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let (input, output, bucket) = (format!("{unique}-in"), format!("{unique}-out"), format!("{unique}-bucket"));
        let emulator = Self { kinesis, s3, input, output, bucket, kinesis_endpoint };
        for (stream, shards) in [(&emulator.input, input_shards), (&emulator.output, 1)] {
            emulator.kinesis.create_stream().stream_name(stream).shard_count(shards).send().await.unwrap();
            emulator.wait_active(stream).await;
        }
        let region = sdk.region().expect("AWS_REGION is set").to_string();
        let location = CreateBucketConfiguration::builder().location_constraint(BucketLocationConstraint::from(region.as_str())).build();
        emulator.s3.create_bucket().bucket(&emulator.bucket).create_bucket_configuration(location).send().await.unwrap();
        emulator
    }

    /// Waits until `stream` is ACTIVE (after a create or a reshard).
    pub async fn wait_active(&self, stream: &str) {
        wait_for(&format!("stream {stream} ACTIVE"), Duration::from_secs(10), async || {
            let described = self.kinesis.describe_stream_summary().stream_name(stream).send().await.unwrap();
            let status = described.stream_description_summary().unwrap().stream_status().clone();
            if status == StreamStatus::Active { Ok(()) } else { Err(status.as_str().to_owned()) }
        })
        .await
        .unwrap();
    }

    /// Starts `metrics-aggregator run` on these streams and bucket with `extra` flags; its debug
    /// log goes to a file under the target directory, named in every failure.
    pub fn start_aggregator(&self, extra: &[&str]) -> Aggregator {
        self.start_aggregator_with_env(extra, &[])
    }

    /// [`Self::start_aggregator`] with extra environment variables, as the Deployment sets them.
    pub fn start_aggregator_with_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Aggregator {
        let port = free_port().unwrap();
        let listen = format!("127.0.0.1:{port}");
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{port}.log", self.input));
        let child = Command::new(env!("CARGO_BIN_EXE_metrics-aggregator"))
            .args(["run", "--input-stream", &self.input, "--output-stream", &self.output, "--bucket", &self.bucket])
            .args(["--listen", &listen, "--poll-interval", "200ms", "--log-level", "metrics_aggregator=debug,warn"])
            .args(extra)
            // The aggregator's own identity (its shipped IAM policy) when the emulator enforces IAM.
            .envs(Identity::Aggregator.env().into_iter().flatten())
            // The SDK's own per-service setting, as a user pointing Kinesis elsewhere sets it.
            .envs(self.kinesis_endpoint.iter().map(|endpoint| ("AWS_ENDPOINT_URL_KINESIS", endpoint)))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("the aggregator binary starts");
        Aggregator { child, listen, log }
    }

    /// Every record on every shard of `stream`, shard after shard.
    pub async fn read_stream(&self, stream: &str) -> Vec<Vec<u8>> {
        let shards = self.kinesis.list_shards().stream_name(stream).send().await.unwrap();
        let mut data = Vec::new();
        for shard in shards.shards() {
            let mut iterator = (self.kinesis.get_shard_iterator())
                .stream_name(stream)
                .shard_id(shard.shard_id())
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await
                .unwrap()
                .shard_iterator
                .unwrap();
            loop {
                let page = self.kinesis.get_records().shard_iterator(&iterator).limit(10_000).send().await.unwrap();
                if page.records().is_empty() {
                    break;
                }
                data.extend(page.records().iter().map(|record| record.data().as_ref().to_vec()));
                match page.next_shard_iterator() {
                    Some(next) => iterator = next.to_owned(),
                    None => break,
                }
            }
        }
        data
    }

    /// The output stream's aggregates, duplicates removed: per `windowId` the most complete one,
    /// the highest count (a window only grows), then the highest revision.
    pub async fn latest_aggregates(&self) -> BTreeMap<String, MetricAggregate> {
        let aggregates = self
            .read_stream(&self.output)
            .await
            .into_iter()
            .map(|data| serde_json::from_slice::<MetricAggregate>(&data).expect("the output stream holds aggregates"));
        deduplicate(aggregates)
    }

    /// Waits until the deduplicated aggregates count `events` events in all, and returns them.
    pub async fn wait_for_aggregates(&self, events: u64, aggregator: &mut Aggregator) -> BTreeMap<String, MetricAggregate> {
        let what = format!("aggregates counting {events} events (the aggregator's log: {})", aggregator.log.display());
        wait_for(&what, Duration::from_secs(60), async || {
            aggregator.assert_running();
            let latest = self.latest_aggregates().await;
            let counted = latest.values().map(|aggregate| aggregate.count).sum::<u64>();
            if counted >= events { Ok(latest) } else { Err(format!("{counted} events counted")) }
        })
        .await
        .unwrap()
    }

    /// Keys and bodies of the objects under `prefix` in the bucket.
    pub async fn objects(&self, prefix: &str) -> BTreeMap<String, Vec<u8>> {
        let listed = self.s3.list_objects_v2().bucket(&self.bucket).prefix(prefix).send().await.unwrap();
        let mut objects = BTreeMap::new();
        for object in listed.contents() {
            let key = object.key().unwrap().to_owned();
            let body = self.s3.get_object().bucket(&self.bucket).key(&key).send().await.unwrap().body.collect().await.unwrap();
            objects.insert(key, body.to_vec());
        }
        objects
    }
}

/// A running `metrics-aggregator run` process.
pub struct Aggregator {
    child: Child,
    pub listen: String,
    pub log: PathBuf,
}

impl Aggregator {
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the aggregator exited: {status}; its log: {}", self.log.display());
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        assert!(Command::new("kill").args([&format!("-{signal}"), &self.pid().to_string()]).status().unwrap().success());
    }

    /// The exit status once the process has exited on its own, waiting at most `timeout`.
    pub async fn exited_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let what = format!("the aggregator to exit (its log: {})", self.log.display());
        wait_for(&what, timeout, async || self.child.try_wait().unwrap().ok_or_else(|| "still running".to_owned())).await.ok()
    }

    /// CPU time (user + system) the process has used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name (which may hold spaces) start at the state, field 3;
        // utime and stime are fields 14 and 15, in clock ticks.
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        let per_second: u64 =
            String::from_utf8(Command::new("getconf").arg("CLK_TCK").output().unwrap().stdout).unwrap().trim().parse().unwrap();
        Duration::from_millis(ticks * 1000 / per_second)
    }

    /// Peak resident memory of the process so far (`VmHWM`), while it runs.
    pub fn peak_resident_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let kib = status.lines().find_map(|line| line.strip_prefix("VmHWM:"))?.split_whitespace().next()?.parse::<u64>().ok()?;
        Some(kib * 1024)
    }

    /// The exit status if the process has exited, without waiting.
    pub fn exited_now(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// SIGKILL: no chance to flush or checkpoint.
    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and the exit status once it stopped.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }

    /// GET a path of the health and metrics endpoint: (HTTP status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        metrics_pipeline_test_support::http_get(&format!("http://{}{path}", self.listen))
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self) {
        let what = format!("the aggregator ready (its log: {})", self.log.display());
        wait_for(&what, Duration::from_secs(20), async || {
            self.assert_running();
            let (status, body) = self.get("/readyz");
            if status == 200 { Ok(()) } else { Err(format!("{status} {body}")) }
        })
        .await
        .unwrap();
    }
}

impl Drop for Aggregator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a batch computation over all events gives, keyed like the output: (component, metric,
/// unit, window start in ms).
pub fn batch_aggregates(events: &[MetricEvent<'_>], window: Duration) -> BTreeMap<(String, String, String, i64), Accumulator> {
    let assigner = WindowAssigner::new(window);
    let mut windows = BTreeMap::new();
    for event in events {
        let key = (
            event.component_name.to_string(),
            event.metric_name.to_string(),
            event.unit.to_string(),
            assigner.window_start(event.timestamp),
        );
        windows
            .entry(key)
            .and_modify(|accumulator: &mut Accumulator| assert!(accumulator.add(event.value, event.timestamp), "small values"))
            .or_insert_with(|| Accumulator::new(event.value, event.timestamp));
    }
    windows
}

/// Asserts that the deduplicated output equals the batch computation, window by window.
pub fn assert_matches_batch(latest: &BTreeMap<String, MetricAggregate>, expected: &BTreeMap<(String, String, String, i64), Accumulator>) {
    let actual: BTreeMap<(String, String, String, i64), &MetricAggregate> =
        latest.values().map(|a| ((a.component_name.clone(), a.metric_name.clone(), a.unit.clone(), a.window_start.0), a)).collect();
    assert_eq!(actual.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "one aggregate per key and window");
    for (key, accumulator) in expected {
        let aggregate = actual[key];
        assert_eq!(aggregate.count, accumulator.count, "count of {key:?}");
        assert_eq!((aggregate.min_value, aggregate.max_value), (accumulator.min_value, accumulator.max_value), "min/max of {key:?}");
        assert!((aggregate.sum - accumulator.sum).abs() < 1e-6, "sum of {key:?}: {} vs {}", aggregate.sum, accumulator.sum);
        assert_eq!((aggregate.from_timestamp, aggregate.to_timestamp), (accumulator.first_time, accumulator.last_time), "times of {key:?}");
    }
}

/// AWS Labs' KPL aggregation library (`KPL_PYTHON`), in one Python process for a whole test.
pub struct KplLibrary {
    child: Child,
    requests: ChildStdin,
    answers: BufReader<ChildStdout>,
}

impl KplLibrary {
    pub fn start() -> Self {
        const SCRIPT: &str = r#"
import base64, json, sys
import aws_kinesis_agg.aggregator as agg
for line in sys.stdin:
    aggregator = agg.RecordAggregator()
    for key, data in json.loads(line):
        assert aggregator.add_user_record(key, base64.b64decode(data)) is None
    key, _, data = aggregator.clear_and_get().get_contents()
    print(key + "\t" + base64.b64encode(data).decode(), flush=True)
"#;
        let python = std::env::var("KPL_PYTHON").expect("KPL_PYTHON is set: run the tests with scripts/test");
        let mut child = Command::new(python).args(["-c", SCRIPT]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let (requests, answers) = (child.stdin.take().unwrap(), BufReader::new(child.stdout.take().unwrap()));
        Self { child, requests, answers }
    }

    /// One Kinesis record holding `user_records` as the KPL packs them.
    pub fn aggregate(&mut self, user_records: &[OutputRecord]) -> OutputRecord {
        let request: Vec<(&str, String)> =
            user_records.iter().map(|user| (user.partition_key.as_str(), aws_smithy_types::base64::encode(&user.data))).collect();
        writeln!(self.requests, "{}", serde_json::to_string(&request).unwrap()).unwrap();
        let mut answer = String::new();
        self.answers.read_line(&mut answer).unwrap();
        let (partition_key, data) = answer.trim_end().split_once('\t').expect("the library answers");
        OutputRecord { partition_key: partition_key.to_owned(), data: aws_smithy_types::base64::decode(data).unwrap() }
    }
}

impl Drop for KplLibrary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
