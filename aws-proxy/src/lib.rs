//! An unforgiving AWS for the tests: a proxy between the programs (operator, aggregator, tests)
//! and the moto emulator that forwards every request, except where it enforces AWS's rules that
//! moto lacks or injects faults. Test-only, never shipped.
//!
//! **AWS's rules** (each checked against the AWS API references):
//! - `UpdateShardCount` may at most double or halve the open shard count per call and may run
//!   [`RuleSettings::scalings_per_day`] times per stream per rolling 24 hours (AWS: 10); beyond
//!   that, `LimitExceededException`. The proxy asks moto (`DescribeStreamSummary`) for the
//!   current open shard count first. [`rules::shard_count`]
//! - IAM propagation: for [`RuleSettings::iam_propagation`] after `CreateRole`, `PutRolePolicy`,
//!   `UpdateAssumeRolePolicy` or `AttachRolePolicy` of a role, Firehose `CreateDeliveryStream`
//!   and `UpdateDestination` naming that role get `InvalidArgumentException` with, in turn, each
//!   message Firehose gives ("Firehose is unable to assume role", "is not authorized to",
//!   "Access was denied", "Verify that the IAM role has access"). [`rules::iam_propagation`]
//! - Held keys ([`Hold`]: bucket and key prefix, as object lock or a legal hold would keep them):
//!   `DeleteObjects` answers 200 with an `<Error><Code>AccessDenied</Code>` per held key (and
//!   only errors in `Quiet` mode), `DeleteObject` answers 403; versions included. [`rules::object_hold`]
//! - S3 `CreateBucket` and Kinesis `CreateStream` set the tags they carry before they answer,
//!   as AWS does in the one call (moto ignores them). [`rules::tags_on_create`]
//! - Creating and scaling take time: for [`RuleSettings::transition`] a new or scaled stream and a
//!   new delivery stream report `CREATING` or `UPDATING`, and UpdateShardCount / UpdateDestination
//!   meanwhile get `ResourceInUseException`. [`rules::transitions`]
//! - Request rates: with [`RuleSettings::quotas`], a call above its operation's documented
//!   per-account, per-region rate (Kinesis and Firehose control planes) is throttled with the
//!   service's own error. [`rules::quotas`]
//!
//! **Faults** on every service ([`FaultSettings`]): throttling with each service's own error
//! (Kinesis `LimitExceededException` or `ProvisionedThroughputExceededException`, Firehose
//! `LimitExceededException`, Glue `ThrottlingException`, S3 503 `SlowDown`, IAM and STS
//! `Throttling`), 500/503 server errors, added latency, dropped connections and lost answers
//! (carried out, then the connection closed), each at a rate, for every call or a [`Selector`]ed
//! few. A seed makes a run repeatable: each (service, operation) draws from its own seeded
//! stream, so the same calls get the same faults however other calls interleave.
//!
//! **Stats**: every call with its time, operation, resource and outcome ([`Stats`]); an SDK
//! retry is a call of its own (the SDK's standard mode makes up to 3 attempts).
//!
//! Requests are identified as AWS does ([`protocol`]): the service by the SigV4 credential
//! scope, the operation by `X-Amz-Target` (JSON protocols), `Action=` (IAM, STS) or method,
//! path and sub-resource (S3, path-style addressing as the clients use with an endpoint override).
//! Errors are written in each protocol's wire format, so the SDK reads back their codes.
//!
//! # In a test
//!
//! ```no_run
//! use metrics_pipeline_aws_proxy::{AwsProxy, FaultSettings, ProxySettings, Service};
//!
//! # async fn example() -> anyhow::Result<()> {
//! let moto = metrics_pipeline_aws_proxy::emulator_url().expect("run `scripts/dev-env up` and `. .dev-env/env`");
//! let proxy = AwsProxy::start(&moto, ProxySettings::default()).await?;
//! let kinesis = aws_sdk_kinesis::Client::new(&proxy.sdk_config().await);
//!
//! let scope = vec!["kinesis:ListStreams".parse().unwrap()];
//! proxy.set_faults(FaultSettings { throttle_rate: 1.0, scope, ..FaultSettings::none() }).unwrap();
//! let error = kinesis.list_streams().send().await.unwrap_err();
//! assert_eq!(aws_sdk_kinesis::error::ProvideErrorMetadata::code(&error), Some("LimitExceededException"));
//! assert_eq!(proxy.stats().calls(Service::Kinesis, "ListStreams"), 3); // the SDK tried three times
//!
//! proxy.hold_prefix("my-bucket", "componentName=");
//! # Ok(())
//! # }
//! ```
//!
//! Programs started by a test reach it by `AWS_ENDPOINT_URL=<proxy.endpoint()>`. The binary
//! `aws-proxy` runs the same proxy on its own (`scripts/dev-env up` starts it in front of moto
//! when `AWS_FAULTS` is set) and is controlled over HTTP under `/_proxy/` ([`control`]).

pub mod control;
pub mod faults;
pub mod protocol;
mod proxy;
pub mod rules;
pub mod settings;
pub mod stats;

use std::sync::Arc;

use anyhow::Context;
use aws_config::SdkConfig;
use aws_types::origin::Origin;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use crate::faults::{Fault, FaultSettings, Selector};
pub use crate::protocol::Service;
pub use crate::rules::RuleSettings;
pub use crate::rules::object_hold::Hold;
pub use crate::settings::ProxySettings;
pub use crate::stats::{CallRecord, Outcome, Rule, Stats};

/// The emulator's own address: `AWS_EMULATOR_URL` when `scripts/dev-env up` runs a proxy in
/// front of it (then `AWS_ENDPOINT_URL` is that proxy), else `AWS_ENDPOINT_URL`.
pub fn emulator_url() -> Option<String> {
    std::env::var("AWS_EMULATOR_URL").or_else(|_| std::env::var("AWS_ENDPOINT_URL")).ok()
}

/// The workspace's SDK settings ([`metrics_pipeline_runtime::sdk::sdk_config`]: credentials and
/// region from the environment) pointed at `endpoint`. The endpoint is marked as set in code, so
/// that clients made from these settings use it even when `AWS_ENDPOINT_URL` in the environment
/// names the emulator (the SDK otherwise prefers the environment's per-service setting).
pub async fn sdk_config_for(endpoint: &str) -> SdkConfig {
    let mut builder = metrics_pipeline_runtime::sdk::sdk_config(None).await.into_builder();
    builder.set_endpoint_url(Some(endpoint.to_owned()));
    builder.insert_origin("endpoint_url", Origin::shared_config());
    builder.build()
}

/// A running proxy; it stops when dropped.
pub struct AwsProxy {
    shared: Arc<proxy::Shared>,
    endpoint: String,
    server: JoinHandle<()>,
}

impl AwsProxy {
    /// Starts a proxy in front of the emulator at `upstream` (e.g. `http://127.0.0.1:5000`).
    pub async fn start(upstream: &str, settings: ProxySettings) -> anyhow::Result<AwsProxy> {
        settings.faults.validate().map_err(anyhow::Error::msg)?;
        let listener = TcpListener::bind(settings.listen).await.with_context(|| format!("cannot listen on {}", settings.listen))?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let sdk = metrics_pipeline_runtime::sdk::sdk_config(None).await;
        let mut kinesis = aws_sdk_kinesis::config::Builder::from(&sdk).endpoint_url(upstream);
        let mut s3 = aws_sdk_s3::config::Builder::from(&sdk).endpoint_url(upstream).force_path_style(true);
        if let Some(credentials) = settings.upstream_credentials.clone() {
            kinesis = kinesis.credentials_provider(credentials.clone());
            s3 = s3.credentials_provider(credentials);
        }
        let shared = Arc::new(proxy::Shared::new(upstream, settings, (kinesis.build(), s3.build())));
        let server = tokio::spawn(proxy::serve(listener, shared.clone()));
        Ok(AwsProxy { shared, endpoint, server })
    }

    /// Where to point the SDK (`endpoint_url`, `AWS_ENDPOINT_URL`): `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The emulator behind the proxy.
    pub fn upstream(&self) -> &str {
        self.shared.upstream()
    }

    /// The workspace's SDK settings with the proxy as endpoint; see [`sdk_config_for`].
    pub async fn sdk_config(&self) -> SdkConfig {
        sdk_config_for(self.endpoint()).await
    }

    /// Replaces the faults in force; the random streams start again from the new seed.
    pub fn set_faults(&self, faults: FaultSettings) -> Result<(), String> {
        self.shared.set_faults(faults)
    }

    pub fn faults(&self) -> FaultSettings {
        self.shared.in_force().faults
    }

    pub fn set_rules(&self, rules: RuleSettings) {
        self.shared.lock().rules = rules;
    }

    pub fn rules(&self) -> RuleSettings {
        self.shared.in_force().rules
    }

    /// Keys of `bucket` starting with `prefix` are no longer deleted.
    pub fn hold_prefix(&self, bucket: &str, prefix: &str) {
        self.shared.lock().holds.push(Hold::new(bucket, prefix));
    }

    /// Lifts the hold on `prefix` in `bucket`.
    pub fn release_prefix(&self, bucket: &str, prefix: &str) {
        self.shared.lock().holds.retain(|hold| *hold != Hold::new(bucket, prefix));
    }

    pub fn holds(&self) -> Vec<Hold> {
        self.shared.in_force().holds
    }

    /// Applies the one-line form (`throttle=0.1,error=0.02,seed=7`, see [`ProxySettings::apply_spec`]).
    pub fn apply_spec(&self, spec: &str) -> Result<(), String> {
        self.shared.apply_spec(spec)
    }

    /// Every call seen so far (or since [`reset_stats`](Self::reset_stats)).
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    pub fn reset_stats(&self) {
        self.shared.lock().recorder.clear();
    }
}

impl Drop for AwsProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}
