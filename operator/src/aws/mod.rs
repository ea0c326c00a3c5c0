//! The AWS side of a pipeline: one module per resource, each the same shape — `observe` reads
//! what exists, a pure `desired_*`/`changes` says what should, `ensure` creates or updates it,
//! `delete` removes it — plus what they share: clients, ownership tags, error classification.

pub mod bucket;
pub mod catalog;
pub mod delivery;
pub mod role;
pub mod streams;

use std::fmt;

use aws_config::SdkConfig;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use metrics_pipeline_crds::aws::s3_client;
use metrics_pipeline_crds::naming::OWNER_TAG;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::error::Error;

/// Tag telling people which tool manages a resource.
pub const MANAGED_BY_TAG: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "metrics-pipeline-operator";

/// The tags every resource of a pipeline carries.
pub fn pipeline_tags(owner: &str) -> Vec<(String, String)> {
    vec![(OWNER_TAG.to_owned(), owner.to_owned()), (MANAGED_BY_TAG.to_owned(), MANAGED_BY.to_owned())]
}

/// Whether a resource found under one of our names may be managed: it must carry our ownership
/// tag with this pipeline's value; anything else is somebody else's and is never touched.
pub fn check_owner<'a>(
    kind: &'static str,
    name: &str,
    owner: &str,
    tags: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), Error> {
    let found = tags.into_iter().find(|(key, _)| *key == OWNER_TAG).map(|(_, value)| value.to_owned());
    if found.as_deref() == Some(owner) {
        return Ok(());
    }
    Err(Error::NotOwned { kind, name: name.to_owned(), owner: owner.to_owned(), found })
}

/// Counts AWS calls by service and operation, so steady state can be shown to mutate nothing.
#[derive(Clone, Debug, Default)]
pub struct AwsCalls(pub Family<Vec<(&'static str, String)>, Counter>);

impl Intercept for AwsCalls {
    fn name(&self) -> &'static str {
        "AwsCalls"
    }

    // Not `read_before_execution`: a client's interceptors run that before the operation's
    // metadata is in the bag.
    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(metadata) = cfg.load::<Metadata>() {
            self.0.get_or_create(&vec![("service", metadata.service().to_owned()), ("operation", metadata.name().to_owned())]).inc();
        }
        Ok(())
    }
}

impl AwsCalls {
    /// Calls so far, `(service, operation, count)`.
    pub fn snapshot(&self) -> Vec<(String, String, u64)> {
        let mut calls = Vec::new();
        // Family offers no iteration; its encoding lists every series.
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("calls", "", self.0.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encoding to a String");
        for line in text.lines().filter(|line| line.starts_with("calls_total{")) {
            let label = |name: &str| {
                line.split(&format!("{name}=\"")).nth(1).and_then(|rest| rest.split('"').next()).unwrap_or_default().to_owned()
            };
            let count = line.rsplit(' ').next().and_then(|count| count.parse().ok()).unwrap_or(0);
            calls.push((label("service"), label("operation"), count));
        }
        calls
    }
}

/// One client per service for one region, all counting their calls.
#[derive(Clone, Debug)]
pub struct AwsClients {
    pub region: String,
    pub kinesis: aws_sdk_kinesis::Client,
    pub s3: aws_sdk_s3::Client,
    pub iam: aws_sdk_iam::Client,
    pub firehose: aws_sdk_firehose::Client,
    pub glue: aws_sdk_glue::Client,
}

impl AwsClients {
    pub fn new(sdk: &SdkConfig, region: &str, calls: &AwsCalls) -> Self {
        let sdk = sdk.to_builder().region(aws_config::Region::new(region.to_owned())).build();
        // Service configs also read AWS_ENDPOINT_URL from the environment; the SdkConfig's
        // endpoint, when set, is the one that counts. Every client counts its calls.
        let endpoint = sdk.endpoint_url().map(str::to_owned);
        macro_rules! client {
            ($service:ident, $builder:expr) => {{
                let mut builder = $builder;
                builder.set_endpoint_url(endpoint.clone());
                $service::Client::from_conf(builder.interceptor(calls.clone()).build())
            }};
        }
        Self {
            region: region.to_owned(),
            kinesis: client!(aws_sdk_kinesis, aws_sdk_kinesis::config::Builder::from(&sdk)),
            s3: client!(aws_sdk_s3, s3_client(&sdk).config().to_builder()),
            iam: client!(aws_sdk_iam, aws_sdk_iam::config::Builder::from(&sdk)),
            firehose: client!(aws_sdk_firehose, aws_sdk_firehose::config::Builder::from(&sdk)),
            glue: client!(aws_sdk_glue, aws_sdk_glue::config::Builder::from(&sdk)),
        }
    }
}

/// Error codes that mean "not now": throttling, contention, the service's own trouble.
const RETRYABLE_CODES: [&str; 14] = [
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "LimitExceededException",
    "ProvisionedThroughputExceededException",
    "SlowDown",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalFailure",
    "InternalError",
    "InternalServiceError",
    "ResourceInUseException",
    "ConcurrentModificationException",
];

/// An AWS call failed while doing `action`: retryable when the service was unreachable, slow,
/// throttling or busy; otherwise the message is the service's, for the user to act on.
pub fn aws_error<E, R>(action: impl Into<String>, error: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: fmt::Debug + Send + Sync + 'static,
{
    let action = action.into();
    match &error {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("Unknown").to_owned();
            let message = service.err().message().unwrap_or_default().to_owned();
            let retryable = RETRYABLE_CODES.contains(&code.as_str());
            Error::Aws { action, message: format!("{code}: {message}"), retryable }
        }
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => Error::Aws {
            action,
            message: format!("the service could not be reached: {}", aws_smithy_types::error::display::DisplayErrorContext(&error)),
            retryable: true,
        },
        _ => Error::Aws { action, message: format!("{}", aws_smithy_types::error::display::DisplayErrorContext(&error)), retryable: false },
    }
}

/// The service error code of a failed call, to tell "not found" from real failures.
pub fn error_code<E: ProvideErrorMetadata, R>(error: &SdkError<E, R>) -> Option<&str> {
    match error {
        SdkError::ServiceError(service) => service.err().code(),
        _ => None,
    }
}

/// What one `ensure` did, for events and conditions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Human-readable changes made, e.g. "created stream x".
    pub changes: Vec<String>,
    /// `Some(reason)` while the resource is not usable yet (creating, updating).
    pub pending: Option<String>,
}

impl Outcome {
    pub fn changed(&mut self, change: impl Into<String>) {
        self.changes.push(change.into());
    }

    pub fn merge(&mut self, other: Outcome) {
        self.changes.extend(other.changes);
        if self.pending.is_none() {
            self.pending = other.pending;
        }
    }
}

/// ARNs in one partition (`aws`, `aws-cn`, `aws-us-gov`) from the region.
pub fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_are_counted_by_service_and_operation() {
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("eu-west-1"))
            .endpoint_url("http://127.0.0.1:1")
            .credentials_provider(
                aws_sdk_kinesis::config::SharedCredentialsProvider::new(aws_sdk_kinesis::config::Credentials::for_tests()),
            )
            .build();
        let calls = AwsCalls::default();
        let clients = AwsClients::new(&sdk, "eu-west-1", &calls);
        let _ = clients.kinesis.list_streams().send().await;
        let _ = clients.glue.get_databases().send().await;
        let _ = clients.glue.get_databases().send().await;
        let mut counted = calls.snapshot();
        counted.sort();
        assert_eq!(
            counted,
            [("Glue".into(), "GetDatabases".into(), 2), ("Kinesis".into(), "ListStreams".into(), 1)],
            "{:?}",
            calls.snapshot()
        );
    }
}
