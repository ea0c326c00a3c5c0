//! AWS SDK settings shared by every binary and test: one TLS stack (rustls with ring, as kube
//! uses), the default credential chain (IRSA or pod identity in a cluster, the environment
//! locally), and the SDK's own endpoint settings for emulators: `AWS_ENDPOINT_URL` for every
//! service, `AWS_ENDPOINT_URL_KINESIS`, `AWS_ENDPOINT_URL_S3`, ... for one.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_http_client::tls::Provider;
use aws_smithy_http_client::tls::rustls_provider::CryptoMode;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_types::sdk_config::SharedCredentialsProvider;
use aws_types::service_config::ServiceConfigKey;

/// The HTTP client every AWS client uses: rustls with ring, for https and plain http endpoints.
pub fn http_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https()
}

/// Loads the SDK configuration; `region` overrides the environment's region when given.
pub async fn sdk_config(region: Option<String>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http_client());
    if let Some(region) = region {
        loader = loader.region(Region::new(region));
    }
    loader.load().await
}

/// `config` acting as the IAM role `role_arn`: STS AssumeRole with `config`'s own credentials,
/// renewed before they expire. A namespace's pipelines act so (see the API's `namespace` module),
/// the operator for their AWS calls and their aggregators for theirs.
pub async fn assuming(config: &SdkConfig, role_arn: &str, session: &str) -> SdkConfig {
    let provider = aws_config::sts::AssumeRoleProvider::builder(role_arn).session_name(session).configure(config).build().await;
    config.to_builder().credentials_provider(SharedCredentialsProvider::new(provider)).build()
}

/// An S3 client; path-style addressing when an endpoint override (an emulator) is set, shared or
/// S3's own, since `<bucket>.127.0.0.1` does not resolve.
pub fn s3_client(config: &SdkConfig) -> aws_sdk_s3::Client {
    let key = ServiceConfigKey::builder().service_id("S3").env("AWS_ENDPOINT_URL").profile("endpoint_url").build();
    let own_endpoint = config.service_config().zip(key.ok()).and_then(|(services, key)| services.load_config(key));
    let path_style = config.endpoint_url().is_some() || own_endpoint.is_some();
    aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(config).force_path_style(path_style).build())
}
