//! `metrics-pipeline-operator`: watches MetricsPipelines and reconciles their AWS resources.
//! Credentials come from the default chain (IRSA or pod identity in a cluster);
//! `AWS_ENDPOINT_URL` points it at an emulator.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use clap::Parser;
use metrics_pipeline_api::config::AwsTarget;
use metrics_pipeline_model::duration::parse_duration;
use metrics_pipeline_operator::aws::{AwsCalls, Memory};
use metrics_pipeline_operator::controller::{AwsAccount, Context, Settings, cluster_identity, run};
use metrics_pipeline_operator::leader::{LeaderElector, LeaseSettings};
use metrics_pipeline_operator::metrics::Metrics;
use metrics_pipeline_operator::workload::WorkloadSettings;
use metrics_pipeline_runtime::metrics::OPENMETRICS_CONTENT_TYPE;
use metrics_pipeline_runtime::process::{LogFormat, init_logging, shutdown_signal};
use metrics_pipeline_runtime::sdk::sdk_config;
use tokio::sync::watch;

#[derive(Parser)]
#[command(version, about = "Reconciles MetricsPipeline resources into Kinesis, S3, IAM, Firehose and Glue")]
struct Cli {
    /// Watch only this namespace (default: all).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Region of pipelines whose spec names none (default: the environment's).
    #[arg(long, env = "AWS_REGION")]
    region: Option<String>,
    /// How often a Ready pipeline is re-read to repair drift.
    #[arg(long, env = "RESYNC_PERIOD", default_value = "5m", value_parser = parse_duration)]
    resync_period: Duration,
    /// How long a pipeline may wait for AWS or its aggregator's rollout before the operator gives
    /// up on it (phase Failed, reason Stalled, a Warning event naming the cause) and looks again
    /// only at each resync and when its spec changes.
    #[arg(long, env = "PENDING_TIMEOUT", default_value = "15m", value_parser = parse_duration)]
    pending_timeout: Duration,
    /// Pipelines reconciled at most at once. AWS calls are also paced below each operation's
    /// documented per-account rate, so more only makes reconciles wait longer for their turn.
    #[arg(long, env = "MAX_CONCURRENT_RECONCILES", default_value_t = Settings::default().concurrency, value_parser = clap::value_parser!(u16).range(1..))]
    max_concurrent_reconciles: u16,
    /// Address of /healthz and /metrics.
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Log filter: a level (`debug`) or tracing directives (`metrics_pipeline_operator=debug,info`).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Aggregator image for pipelines whose spec names none.
    #[arg(long, env = "AGGREGATOR_IMAGE", default_value_t = WorkloadSettings::default().default_image)]
    aggregator_image: String,
    /// A Secret with static AWS credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) that
    /// every pipeline's namespace holds, for clusters without IRSA; the aggregators read it.
    #[arg(long, env = "AGGREGATOR_CREDENTIALS_SECRET")]
    aggregator_credentials_secret: Option<String>,
    /// Elect a leader on this Lease, so of several replicas only one reconciles (default: no
    /// election, for a single replica).
    #[arg(long, env = "LEASE_NAME")]
    lease_name: Option<String>,
    /// Namespace of the Lease (default: the operator's own, from its ServiceAccount or kubeconfig).
    #[arg(long, env = "LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// AWS endpoint override (an emulator, or a private endpoint); the aggregators get it too.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    aws_endpoint_url: Option<String>,
    /// This cluster's identity in the tags of every AWS resource its pipelines make, so that
    /// clusters sharing an AWS account never touch each other's (default: the UID of the
    /// kube-system namespace). Keep it when a cluster is rebuilt to go on managing its resources.
    #[arg(long, env = "CLUSTER_ID")]
    cluster_id: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(message) = init_logging(&cli.log_level, cli.log_format) {
        eprintln!("{message}");
        return ExitCode::from(2);
    }
    match operate(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn operate(cli: Cli) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await.map_err(|error| anyhow::anyhow!("cannot reach the Kubernetes API: {error}"))?;
    let sdk = sdk_config(cli.region.clone()).await;
    let identity = aws_sdk_sts::Client::new(&sdk).get_caller_identity().send().await.map_err(|error| {
        anyhow::anyhow!("cannot tell which AWS account to use (STS GetCallerIdentity): {}", aws_sdk_sts::error::DisplayErrorContext(&error))
    })?;
    let target = AwsTarget {
        account_id: identity.account.unwrap_or_default(),
        default_region: cli.region.or_else(|| sdk.region().map(ToString::to_string)),
    };
    tracing::info!(account = %target.account_id, region = ?target.default_region, namespace = ?cli.namespace, "starting");
    let calls = AwsCalls::default();
    let metrics = Arc::new(Metrics::new(&calls));
    let workload = WorkloadSettings {
        default_image: cli.aggregator_image,
        aws_endpoint_url: cli.aws_endpoint_url,
        credentials_secret: cli.aggregator_credentials_secret,
    };
    let settings = Settings {
        resync: cli.resync_period,
        pending_timeout: cli.pending_timeout,
        concurrency: cli.max_concurrent_reconciles,
        workload,
        ..Settings::default()
    };
    let cluster = match cli.cluster_id {
        Some(cluster) => {
            // What every service's tag values allow (Kinesis's, IAM's and S3's together).
            let allowed = |c: char| c.is_ascii_alphanumeric() || "+=.@/_-".contains(c);
            anyhow::ensure!(
                !cluster.is_empty() && cluster.len() <= 128 && cluster.chars().all(allowed),
                "--cluster-id `{cluster}` cannot be an AWS tag value: use 1 to 128 letters, digits and + = . @ / _ -"
            );
            cluster
        }
        None => cluster_identity(&client).await.map_err(|error| {
            anyhow::anyhow!(
                "cannot read the kube-system namespace's UID, this cluster's default identity ({error}): allow the operator to get \
                 namespace kube-system, or set --cluster-id"
            )
        })?,
    };
    tracing::info!(account = %target.account_id, %cluster, "ownership tags name this cluster");
    let context = Arc::new(Context::new(
        client,
        AwsAccount::new(sdk, target, calls, Memory::for_resync(settings.resync)),
        cluster,
        metrics.clone(),
        settings,
    ));

    let served = metrics.clone();
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(move || async move { ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], served.encode()) }));
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    tokio::spawn(async move { axum::serve(listener, router).await });

    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.send_replace(true);
    });
    let elector = cli.lease_name.map(|name| {
        let namespace = cli.lease_namespace.unwrap_or_else(|| context.client.default_namespace().to_owned());
        let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("{}-{}", hostname(), std::process::id()));
        LeaderElector::new(context.client.clone(), LeaseSettings::new(namespace, name, identity))
    });
    if let Some(elector) = &elector {
        tracing::info!("waiting for the leader lease");
        if !elector.acquire(&mut stopped.clone()).await {
            tracing::info!("stopped before leading");
            return Ok(());
        }
        tracing::info!("leading: this replica reconciles");
    }
    metrics.leader.set(1);
    let mut until_stopped = stopped.clone();
    let reconciling = run(context, cli.namespace, async move {
        let _ = until_stopped.wait_for(|stopped| *stopped).await;
    });
    // The leader renews its lease beside the controller; losing it drops the controller at once.
    if let Some(elector) = elector {
        if !elector.lead(reconciling).await {
            anyhow::bail!("lost the leader lease: stopped reconciling at once so that the new leader reconciles alone");
        }
        elector.release().await;
    } else {
        reconciling.await;
    }
    metrics.leader.set(0);
    tracing::info!("stopped");
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|name| name.trim().to_owned()).unwrap_or_else(|_| "operator".into())
}
