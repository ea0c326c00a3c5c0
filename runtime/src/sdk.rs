//! AWS SDK settings shared by every binary and test: one TLS stack (rustls with ring, as kube
//! uses), the default credential chain (IRSA or pod identity in a cluster, the environment
//! locally), and the SDK's own endpoint settings for emulators: `AWS_ENDPOINT_URL` for every
//! service, `AWS_ENDPOINT_URL_KINESIS`, `AWS_ENDPOINT_URL_S3`, ... for one.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3control::config::endpoint::{DefaultResolver, EndpointFuture, Params, ResolveEndpoint};
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
    let path_style = endpoint_override(config, "S3").is_some();
    aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(config).force_path_style(path_style).build())
}

/// An S3 Control client (S3's account-level API, which tags buckets too). S3 Control puts the
/// account in the host name, with an endpoint override as well (`<account>.127.0.0.1`, which does
/// not resolve): an override, shared or S3 Control's own, is called as it is.
pub fn s3_control_client(config: &SdkConfig) -> aws_sdk_s3control::Client {
    let mut builder = aws_sdk_s3control::config::Builder::from(config);
    if let Some(endpoint) = endpoint_override(config, "S3 Control") {
        builder = builder.endpoint_resolver(AsGiven { endpoint, rules: DefaultResolver::new() });
    }
    aws_sdk_s3control::Client::from_conf(builder.build())
}

/// The endpoint set for every service (`AWS_ENDPOINT_URL`) or for `service_id`'s alone
/// (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL_S3_CONTROL`), if any.
fn endpoint_override(config: &SdkConfig, service_id: &str) -> Option<String> {
    let key = ServiceConfigKey::builder().service_id(service_id).env("AWS_ENDPOINT_URL").profile("endpoint_url").build();
    let own = || config.service_config().zip(key.ok()).and_then(|(services, key)| services.load_config(key));
    config.endpoint_url().map(str::to_owned).or_else(own)
}

/// S3 Control's own endpoint rules (how to sign, the headers), at the endpoint as given.
#[derive(Debug)]
struct AsGiven {
    endpoint: String,
    rules: DefaultResolver,
}

impl ResolveEndpoint for AsGiven {
    fn resolve_endpoint<'a>(&'a self, params: &'a Params) -> EndpointFuture<'a> {
        EndpointFuture::new(async move {
            let resolved = self.rules.resolve_endpoint(params).await?;
            Ok(resolved.into_builder().url(self.endpoint.clone()).build())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where S3 Control's TagResource for `bucket` goes, and whether it signs the path as it is.
    async fn tag_resource_endpoint(resolver: &impl ResolveEndpoint, endpoint: Option<&str>) -> (String, bool) {
        let params = Params::builder()
            .region("eu-west-1")
            .use_fips(false)
            .use_dual_stack(false)
            .set_endpoint(endpoint.map(str::to_owned))
            .requires_account_id(true)
            .account_id("123456789012")
            .resource_arn("arn:aws:s3:::bucket")
            .build()
            .unwrap();
        let resolved = resolver.resolve_endpoint(&params).await.unwrap();
        let as_is =
            resolved.auth_schemes().iter().any(|scheme| scheme.get("disableDoubleEncoding").and_then(|d| d.as_bool()) == Some(true));
        (resolved.url().to_owned(), as_is)
    }

    #[tokio::test]
    async fn s3_control_tags_a_bucket_at_the_account_s_host_on_aws_and_at_an_emulator_s_endpoint_as_given() {
        let on_aws = tag_resource_endpoint(&DefaultResolver::new(), None).await;
        assert_eq!(on_aws, ("https://123456789012.s3-control.eu-west-1.amazonaws.com".to_owned(), true));
        let emulator = "http://127.0.0.1:4566";
        let rules_alone = tag_resource_endpoint(&DefaultResolver::new(), Some(emulator)).await;
        assert_eq!(rules_alone.0, "http://123456789012.127.0.0.1:4566", "what AsGiven is for");
        let as_given = AsGiven { endpoint: emulator.to_owned(), rules: DefaultResolver::new() };
        assert_eq!(tag_resource_endpoint(&as_given, Some(emulator)).await, (emulator.to_owned(), true));
    }
}
