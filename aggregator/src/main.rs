//! `metrics-aggregator run` consumes the input stream and writes aggregates; `metrics-aggregator
//! generate` publishes test events. Every flag can also come from the environment, which is how
//! the operator's Deployment configures it.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_types::origin::Origin;
use clap::{Args, Parser, Subcommand};
use metrics_aggregator::generate::{Generator, GeneratorConfig, Metric, PartitionKey, publish};
use metrics_aggregator::kinesis::sink::KinesisSink;
use metrics_aggregator::kinesis::source::{InitialPosition, MIN_POLL_INTERVAL};
use metrics_aggregator::report::wall_clock;
use metrics_aggregator::run::{AggregatorConfig, run};
use metrics_aggregator::s3::bucket::Bucket;
use metrics_aggregator::s3::parquet_files::{ParquetCodec, ParquetSettings};
use metrics_aggregator::server::{Health, serve};
use metrics_pipeline_model::aggregation::{
    AggregationSettings, DEFAULT_ALLOWED_LATENESS, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_FUTURE_SKEW, DEFAULT_OUT_OF_ORDERNESS, DEFAULT_WINDOW,
    WindowConfig,
};
use metrics_pipeline_model::duration::parse_duration;
use metrics_pipeline_model::event::EventTime;
use metrics_pipeline_runtime::process::{LogFormat, init_logging, shutdown_signal};
use metrics_pipeline_runtime::sdk::{assuming, s3_client, sdk_config};
use tracing::Instrument;

#[derive(Parser)]
#[command(version, about = "Event-time windowed aggregation of metric events, Kinesis to Kinesis")]
struct Cli {
    /// Log filter: a level (`debug`) or tracing directives (`metrics_aggregator=debug,info`).
    #[arg(long, global = true, env = "AGGREGATOR_LOG_LEVEL", default_value = "info")]
    log_level: String,
    #[arg(long, global = true, env = "AGGREGATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Aggregate the input stream into the output stream until SIGTERM.
    Run(Box<RunArgs>),
    /// Publish generated metric events to a stream.
    Generate(Box<GenerateArgs>),
}

#[derive(Args)]
struct AwsArgs {
    /// AWS region (default: the environment's).
    #[arg(long, env = "AWS_REGION")]
    region: Option<String>,
    /// Endpoint of every service, for an AWS emulator. Without it the SDK's own settings apply:
    /// `AWS_ENDPOINT_URL` for every service, or `AWS_ENDPOINT_URL_KINESIS` and `AWS_ENDPOINT_URL_S3`
    /// for one (Kinesis and S3 in two emulators).
    #[arg(long)]
    endpoint_url: Option<String>,
    /// An IAM role to act as, assumed with the environment's credentials: the role the pipeline's
    /// namespace maps to (set by the operator).
    #[arg(long, env = "AGGREGATOR_ASSUME_ROLE_ARN")]
    assume_role_arn: Option<String>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    aws: AwsArgs,
    /// The MetricsPipeline this copy aggregates for (`<namespace>/<name>`), a field of every log line.
    #[arg(long, env = "AGGREGATOR_PIPELINE", default_value = "")]
    pipeline: String,
    #[arg(long, env = "AGGREGATOR_INPUT_STREAM")]
    input_stream: String,
    #[arg(long, env = "AGGREGATOR_OUTPUT_STREAM")]
    output_stream: String,
    /// The pipeline's bucket: checkpoint and dead letters go under `_aggregator/`.
    #[arg(long, env = "AGGREGATOR_BUCKET")]
    bucket: String,
    #[arg(long, env = "AGGREGATOR_WINDOW", default_value = DEFAULT_WINDOW)]
    window: String,
    #[arg(long, env = "AGGREGATOR_OUT_OF_ORDERNESS", default_value = DEFAULT_OUT_OF_ORDERNESS)]
    out_of_orderness: String,
    #[arg(long, env = "AGGREGATOR_ALLOWED_LATENESS", default_value = DEFAULT_ALLOWED_LATENESS)]
    allowed_lateness: String,
    #[arg(long, env = "AGGREGATOR_IDLE_TIMEOUT", default_value = DEFAULT_IDLE_TIMEOUT)]
    idle_timeout: String,
    /// Events stamped further ahead of the wall clock than this are kept as dead letters.
    #[arg(long, env = "AGGREGATOR_MAX_FUTURE_SKEW", default_value = DEFAULT_MAX_FUTURE_SKEW)]
    max_future_skew: String,
    #[arg(long, env = "AGGREGATOR_CHECKPOINT_KEY", default_value = "_aggregator/checkpoint.json")]
    checkpoint_key: String,
    #[arg(long, env = "AGGREGATOR_DEAD_LETTER_PREFIX", default_value = "_aggregator/dead-letters/")]
    dead_letter_prefix: String,
    /// How often a caught-up shard is polled; at least 200ms (5 GetRecords a second per shard).
    #[arg(long, env = "AGGREGATOR_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    poll_interval: Duration,
    /// Longest time between checkpoints while no window fires.
    #[arg(long, env = "AGGREGATOR_CHECKPOINT_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    checkpoint_interval: Duration,
    /// How often the data-flow report beside the checkpoint (`_aggregator/report.json`, shown in the
    /// pipeline's status) is written.
    #[arg(long, env = "AGGREGATOR_REPORT_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    report_interval: Duration,
    /// Where to start in shards on a first start (no checkpoint).
    #[arg(long, env = "AGGREGATOR_INITIAL_POSITION", value_enum, default_value_t = InitialPosition::TrimHorizon)]
    initial_position: InitialPosition,
    /// On a first start, read from this RFC 3339 time instead (AT_TIMESTAMP): when the job this
    /// aggregator replaces stopped, so that what it aggregated is not aggregated again.
    #[arg(long, env = "AGGREGATOR_READ_INPUT_FROM", value_parser = parse_event_time)]
    read_input_from: Option<EventTime>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "AGGREGATOR_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Also write the aggregates as Parquet files into the bucket, under `componentName=<name>/`
    /// (the direct sink, instead of Firehose's conversion); the value is the codec inside them.
    #[arg(long, env = "AGGREGATOR_PARQUET", value_enum)]
    parquet: Option<ParquetCodec>,
    /// Longest time fired aggregates wait for their Parquet file.
    #[arg(long, env = "AGGREGATOR_PARQUET_ROLL_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    parquet_roll_interval: Duration,
    /// Most aggregates in one roll of Parquet files; more roll early.
    #[arg(long, env = "AGGREGATOR_PARQUET_MAX_ROWS", default_value_t = 1_000_000)]
    parquet_max_rows: usize,
    /// Where fired aggregates wait for their Parquet roll (the checkpoint names them).
    #[arg(long, env = "AGGREGATOR_PARQUET_STAGING_PREFIX", default_value = "_aggregator/parquet-staging/")]
    parquet_staging_prefix: String,
    /// Who this copy is in the checkpoint's lease (default: the host name, which is the pod's name).
    #[arg(long, env = "AGGREGATOR_HOLDER_IDENTITY")]
    holder_identity: Option<String>,
    /// How long the checkpoint stays this copy's without a write: another copy (a new pod while
    /// this one's node is unreachable) waits that long after its last write before taking over.
    #[arg(long, env = "AGGREGATOR_LEASE_DURATION", default_value = "60s", value_parser = parse_duration)]
    lease_duration: Duration,
    /// Threads that aggregate a large page (2,000 records or more) at once, each over its share of
    /// the keys (default: the CPUs this process may use, its cgroup's CPU limit included, at most
    /// 8: a poll reads at most 4 answers, and past that aggregating is no longer what bounds a
    /// pod, BENCHMARKS.md).
    #[arg(long, env = "AGGREGATOR_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: Option<u16>,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    aws: AwsArgs,
    #[arg(long)]
    stream: String,
    /// Component names, comma-separated, or a number N for `component-0` .. `component-<N-1>`.
    #[arg(long, default_value = "user-service,order-service")]
    components: String,
    /// Metrics as `name:unit`, comma-separated, or a number N for `metric-0:count` ...
    #[arg(long, default_value = "cpu-usage:percent,ram-usage:MB")]
    metrics: String,
    /// Events to publish (default: until SIGTERM).
    #[arg(long)]
    count: Option<u64>,
    /// Events per second (default: as fast as the stream takes them).
    #[arg(long)]
    rate: Option<f64>,
    /// Event time of the first round, RFC 3339 (default: now).
    #[arg(long, value_parser = parse_event_time)]
    start: Option<EventTime>,
    /// Event time between rounds of one event per component and metric.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    step: Duration,
    /// Out-of-order jitter: each event's time moves back by a random amount up to this.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    jitter: Duration,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = PartitionKey::Component)]
    partition_key: PartitionKey,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(message) = init_logging(&cli.log_level, cli.log_format) {
        eprintln!("{message}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Run(args) => run_aggregator(*args).await,
        Command::Generate(args) => generate(*args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_aggregator(args: RunArgs) -> anyhow::Result<()> {
    let settings = AggregationSettings {
        window: &args.window,
        out_of_orderness: &args.out_of_orderness,
        allowed_lateness: &args.allowed_lateness,
        idle_timeout: &args.idle_timeout,
        max_future_skew: &args.max_future_skew,
    };
    let windowing = WindowConfig::parse(&settings).map_err(|problems| {
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("the aggregation settings cannot be used: {}", problems.join("; "))
    })?;
    anyhow::ensure!(
        args.poll_interval >= MIN_POLL_INTERVAL,
        "--poll-interval must be at least 200ms: Kinesis allows 5 GetRecords calls a second per shard"
    );
    anyhow::ensure!(args.dead_letter_prefix.ends_with('/'), "--dead-letter-prefix must end with `/`");
    anyhow::ensure!(args.parquet_staging_prefix.ends_with('/'), "--parquet-staging-prefix must end with `/`");
    anyhow::ensure!(args.lease_duration >= Duration::from_secs(1), "--lease-duration must be at least 1s");
    let sdk = aws(args.aws).await;
    let health = Arc::new(Health::new(args.lease_duration, stall_timeout(args.lease_duration)));
    let server = tokio::spawn(serve(args.listen, health.clone()));
    let config = AggregatorConfig {
        input_stream: args.input_stream,
        output_stream: args.output_stream,
        windowing,
        checkpoint_key: args.checkpoint_key,
        dead_letter_prefix: args.dead_letter_prefix,
        poll_interval: args.poll_interval,
        checkpoint_interval: args.checkpoint_interval,
        report_interval: args.report_interval,
        initial_position: args.initial_position,
        read_input_from: args.read_input_from,
        parquet: args.parquet.map(|codec| ParquetSettings {
            codec,
            roll_interval: args.parquet_roll_interval,
            max_rows: args.parquet_max_rows.max(1),
            staging_prefix: args.parquet_staging_prefix,
        }),
        holder: args.holder_identity.unwrap_or_else(host_name),
        lease_duration: args.lease_duration,
        key_partitions: args.threads.map_or_else(|| std::thread::available_parallelism().map_or(1, usize::from).min(8), usize::from),
    };
    let bucket = Bucket::new(s3_client(&sdk), args.bucket);
    let span = tracing::info_span!("aggregator", pipeline = %args.pipeline, input = %config.input_stream, output = %config.output_stream);
    let running = run(config, aws_sdk_kinesis::Client::new(&sdk), bucket, health, shutdown_signal()).instrument(span);
    tokio::select! {
        result = running => Ok(result?),
        served = server => Err(anyhow::anyhow!("the health and metrics server stopped: {:?}", served)),
    }
}

async fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let components = names(&args.components, "component", |name| Ok(name.to_owned()))?;
    let metrics = names(&args.metrics, "metric", |item| match item.split_once(':') {
        Some((name, unit)) if !name.is_empty() && !unit.is_empty() => Ok(Metric { name: name.into(), unit: unit.into() }),
        _ if !item.contains(':') && item.starts_with("metric-") => Ok(Metric { name: item.into(), unit: "count".into() }),
        _ => anyhow::bail!("--metrics entry `{item}` is not `name:unit`"),
    })?;
    if let Some(rate) = args.rate {
        anyhow::ensure!(rate > 0.0 && rate.is_finite(), "--rate must be a positive number of events per second");
    }
    let start = args.start.unwrap_or_else(wall_clock);
    let generator = Generator::new(GeneratorConfig { components, metrics, start, step: args.step, jitter: args.jitter, seed: args.seed });
    let sdk = aws(args.aws).await;
    let sink = KinesisSink::new(aws_sdk_kinesis::Client::new(&sdk), args.stream.clone());
    tracing::info!(stream = %args.stream, count = ?args.count, rate = ?args.rate, start = %start, "publishing");
    let published = publish(&sink, generator, args.partition_key, args.count, args.rate, shutdown_signal()).await;
    tracing::info!(published, stream = %args.stream, "done");
    Ok(())
}

/// A comma-separated list, or a number N for `<stem>-0` .. `<stem>-<N-1>`.
fn names<T>(list: &str, stem: &str, parse: impl Fn(&str) -> anyhow::Result<T>) -> anyhow::Result<Vec<T>> {
    let items: Vec<String> = match list.parse::<usize>() {
        Ok(count) => (0..count).map(|i| format!("{stem}-{i}")).collect(),
        Err(_) => list.split(',').map(str::trim).filter(|item| !item.is_empty()).map(str::to_owned).collect(),
    };
    anyhow::ensure!(!items.is_empty(), "give at least one {stem}");
    items.iter().map(|item| parse(item)).collect()
}

/// How long the loop may go without a sign of life before `/healthz` fails: three lease periods
/// (the loop checkpoints at least every third of one), at least two minutes, longer than a slow
/// AWS call's retries; every wait and retry of the loop is a sign of life.
fn stall_timeout(lease_duration: Duration) -> Duration {
    (lease_duration * 3).max(Duration::from_secs(120))
}

/// The host name: in a pod, the pod's name.
fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim();
    if name.is_empty() { "aggregator".to_owned() } else { name.to_owned() }
}

/// A `--start` that is not an event time.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not an RFC 3339 time such as 2021-09-09T12:00:00Z")]
struct NotRfc3339(String);

fn parse_event_time(text: &str) -> Result<EventTime, NotRfc3339> {
    EventTime::parse_rfc3339(text).ok_or_else(|| NotRfc3339(text.to_owned()))
}

/// The SDK settings, with a time limit on every attempt: without one an answer that never
/// comes (a half-open connection) would stall the aggregator for good; the attempt is retried.
async fn aws(args: AwsArgs) -> aws_config::SdkConfig {
    let timeouts =
        TimeoutConfig::builder().connect_timeout(Duration::from_secs(5)).operation_attempt_timeout(Duration::from_secs(30)).build();
    let mut sdk = sdk_config(args.region).await.into_builder().timeout_config(timeouts);
    if let Some(url) = args.endpoint_url {
        // Set here, it wins over every service's own endpoint setting.
        sdk.set_endpoint_url(Some(url));
        sdk.insert_origin("endpoint_url", Origin::shared_config());
    }
    let sdk = sdk.build();
    match args.assume_role_arn {
        Some(role) => assuming(&sdk, &role, "metrics-aggregator").await,
        None => sdk,
    }
}
