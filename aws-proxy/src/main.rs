//! `aws-proxy`: the unforgiving AWS as a process, in front of the emulator `scripts/dev-env up`
//! starts. Controlled at run time over HTTP under `/_proxy/` (see the library's `control`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use metrics_pipeline_aws_proxy::settings::duration_arg;
use metrics_pipeline_aws_proxy::{AwsProxy, Hold, ProxySettings, Selector};
use metrics_pipeline_runtime::process::{LogFormat, init_logging, shutdown_signal};

#[derive(Parser)]
#[command(about = "A proxy in front of the AWS emulator that enforces AWS's rules and injects seeded faults")]
struct Cli {
    /// The emulator to forward to.
    #[arg(long, env = "AWS_EMULATOR_URL")]
    upstream: String,
    /// Where to listen; port 0 picks a free one (the log says which).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Everything below in one line: `throttle=0.1,error=0.02,seed=7,latency=50ms,scope=kinesis+s3,iam-propagation=10s,hold=bucket/prefix`.
    /// The flags below override it.
    #[arg(long, env = "AWS_FAULTS", default_value = "")]
    faults: String,
    /// Seed of the fault streams: the same seed and the same calls give the same faults.
    #[arg(long)]
    seed: Option<u64>,
    /// Fraction of calls answered with the service's throttling error.
    #[arg(long)]
    throttle_rate: Option<f64>,
    /// Fraction of calls answered with a 500 or 503.
    #[arg(long)]
    error_rate: Option<f64>,
    /// Fraction of calls whose connection is closed before they reach the emulator.
    #[arg(long)]
    drop_rate: Option<f64>,
    /// Fraction of calls carried out whose answer is lost (connection closed).
    #[arg(long)]
    lost_answer_rate: Option<f64>,
    /// Latency added to calls (`200ms`).
    #[arg(long, value_parser = duration_arg)]
    latency: Option<Duration>,
    /// Fraction of calls that get the latency (default all).
    #[arg(long)]
    latency_rate: Option<f64>,
    /// Calls faults apply to (`kinesis`, `s3:DeleteObjects`); default all.
    #[arg(long, value_delimiter = ',')]
    scope: Vec<Selector>,
    /// How long Firehose refuses a role after it was created or its policy changed (`10s`).
    #[arg(long, value_parser = duration_arg)]
    iam_propagation: Option<Duration>,
    /// UpdateShardCount calls per stream per rolling 24 hours (AWS: 10).
    #[arg(long)]
    scalings_per_day: Option<u32>,
    /// How long new or scaled streams and new delivery streams stay CREATING or UPDATING (`5s`).
    #[arg(long, value_parser = duration_arg)]
    transition: Option<Duration>,
    /// Keys not deleted: `<bucket>/<key prefix>`; repeatable.
    #[arg(long = "hold", value_parser = hold_arg)]
    holds: Vec<Hold>,
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

impl Cli {
    fn settings(&self) -> Result<ProxySettings, String> {
        let mut settings = ProxySettings { listen: self.listen, ..ProxySettings::default() };
        settings.apply_spec(&self.faults)?;
        let faults = &mut settings.faults;
        let overrides = [
            (self.throttle_rate, &mut faults.throttle_rate),
            (self.error_rate, &mut faults.error_rate),
            (self.drop_rate, &mut faults.drop_rate),
            (self.lost_answer_rate, &mut faults.lost_answer_rate),
            (self.latency_rate, &mut faults.latency_rate),
        ];
        for (flag, rate) in overrides {
            if let Some(value) = flag {
                *rate = value;
            }
        }
        faults.seed = self.seed.unwrap_or(faults.seed);
        faults.latency = self.latency.unwrap_or(faults.latency);
        if !self.scope.is_empty() {
            faults.scope.clone_from(&self.scope);
        }
        settings.rules.iam_propagation = self.iam_propagation.unwrap_or(settings.rules.iam_propagation);
        settings.rules.scalings_per_day = self.scalings_per_day.unwrap_or(settings.rules.scalings_per_day);
        settings.rules.transition = self.transition.unwrap_or(settings.rules.transition);
        settings.holds.extend(self.holds.iter().cloned());
        settings.faults.validate()?;
        Ok(settings)
    }
}

fn hold_arg(text: &str) -> Result<Hold, String> {
    text.split_once('/').map(|(bucket, prefix)| Hold::new(bucket, prefix)).ok_or_else(|| format!("`{text}`: write <bucket>/<key prefix>"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(message) = init_logging(&cli.log_level, cli.log_format) {
        eprintln!("{message}");
        return ExitCode::from(2);
    }
    let settings = match cli.settings() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("aws-proxy: {message}");
            return ExitCode::from(2);
        }
    };
    let (faults, rules, holds) = (settings.faults.clone(), settings.rules.clone(), settings.holds.clone());
    let proxy = match AwsProxy::start(&cli.upstream, settings).await {
        Ok(proxy) => proxy,
        Err(error) => {
            eprintln!("aws-proxy: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(endpoint = proxy.endpoint(), upstream = proxy.upstream(), ?faults, ?rules, ?holds, "aws-proxy listening");
    shutdown_signal().await;
    ExitCode::SUCCESS
}
