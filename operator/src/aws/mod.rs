//! The AWS side of a pipeline: one module per resource, each the same shape — `observe` reads
//! what exists, a pure `desired_*`/`changes`/`plan` says what should, `ensure` creates or updates
//! it, `delete` removes it — plus the clients they share. Ownership and outcomes live in
//! [`crate::managed`], error classification in [`crate::error`].

pub mod bucket;
pub mod catalog;
pub mod delivery;
#[cfg(test)]
mod fake;
pub mod role;
pub mod streams;

use aws_config::SdkConfig;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use metrics_pipeline_runtime::sdk::s3_client;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

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

/// One client per service for one region, all counting their calls.
#[derive(Clone, Debug)]
pub struct AwsClients {
    pub region: String,
    /// An endpoint other than AWS's (an emulator): some of AWS's guarantees may not hold.
    pub endpoint_override: bool,
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
            endpoint_override: endpoint.is_some(),
            kinesis: client!(aws_sdk_kinesis, aws_sdk_kinesis::config::Builder::from(&sdk)),
            s3: client!(aws_sdk_s3, s3_client(&sdk).config().to_builder()),
            iam: client!(aws_sdk_iam, aws_sdk_iam::config::Builder::from(&sdk)),
            firehose: client!(aws_sdk_firehose, aws_sdk_firehose::config::Builder::from(&sdk)),
            glue: client!(aws_sdk_glue, aws_sdk_glue::config::Builder::from(&sdk)),
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
        let count = |service: &str, operation: &str| {
            calls.0.get_or_create(&vec![("service", service.to_owned()), ("operation", operation.to_owned())]).get()
        };
        assert_eq!((count("Glue", "GetDatabases"), count("Kinesis", "ListStreams"), count("Kinesis", "CreateStream")), (2, 1, 0));
    }
}
