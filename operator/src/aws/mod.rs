//! The AWS side of a pipeline: one module per resource, each implementing the one contract of
//! [`resource::AwsResource`] (observe, whose, claim, plan, apply, remove), plus the clients they
//! share. Ownership and outcomes live in [`crate::managed`], error classification in
//! [`crate::error`].

pub mod bucket;
pub mod catalog;
pub mod delivery;
#[cfg(test)]
mod fake;
pub mod limits;
pub mod resource;
pub mod role;
pub mod streams;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use aws_config::timeout::TimeoutConfig;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use metrics_pipeline_runtime::sdk::{http_client, s3_client, s3_control_client};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use self::limits::RateLimits;
pub use self::resource::AwsResource;
use crate::error::Error;

/// AWS calls by service and operation (steady state can be shown to mutate nothing), their
/// attempts (the SDK's retries included), and the attempts that failed by error code: AWS's
/// (`ThrottlingException`), or when no answer came `timeout`, `connection`, `rate_limited` (this
/// operator's own pacing, see [`limits`]) or `client` (nothing sent: credentials, signing).
#[derive(Clone, Debug, Default)]
pub struct AwsCalls {
    calls: Family<Operation, Counter>,
    pub(crate) attempts: Family<Operation, Counter>,
    pub(crate) errors: Family<FailedAttempt, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Operation {
    pub service: String,
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailedAttempt {
    pub service: String,
    pub operation: String,
    pub code: String,
}

impl AwsCalls {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("aws_calls", "AWS API calls by service and operation", self.calls.clone());
        registry.register("aws_attempts", "Attempts of AWS API calls, the SDK's retries included", self.attempts.clone());
        registry.register(
            "aws_attempt_errors",
            "Attempts of AWS API calls that failed, by error code (timeout, connection, rate_limited when no answer came)",
            self.errors.clone(),
        );
    }

    /// Calls of `operation` of `service` so far.
    pub fn calls(&self, service: &str, operation: &str) -> u64 {
        self.calls.get_or_create(&Operation { service: service.to_owned(), operation: operation.to_owned() }).get()
    }
}

fn operation(cfg: &ConfigBag) -> Option<Operation> {
    cfg.load::<Metadata>().map(|metadata| Operation { service: metadata.service().to_owned(), operation: metadata.name().to_owned() })
}

/// What an attempt that failed failed with: the code AWS answered (JSON protocols name it in a
/// header or `__type`, the XML ones in `<Code>`), else what kind of failure it was.
fn failure_code(context: &FinalizerInterceptorContextRef<'_>) -> Option<String> {
    let failure = context.output_or_error()?.err()?;
    if failure.as_connector_error().and_then(std::error::Error::source).is_some_and(|source| source.is::<crate::error::RateLimited>()) {
        return Some("rate_limited".to_owned());
    }
    if failure.is_timeout_error() || failure.as_connector_error().is_some_and(|connector| connector.is_timeout()) {
        return Some("timeout".to_owned());
    }
    let Some(response) = context.response() else {
        // No answer: the network, or the SDK before sending (credentials, signing, the endpoint).
        return Some(if failure.is_connector_error() { "connection" } else { "client" }.to_owned());
    };
    let status = response.status().as_u16();
    // `Code:http://...` or `ns#Code`: the code alone.
    let code_of = |text: &str| text.split(':').next().unwrap_or(text).rsplit('#').next().unwrap_or(text).to_owned();
    if let Some(code) = response.headers().get("x-amzn-errortype") {
        return Some(code_of(code));
    }
    let body = String::from_utf8_lossy(response.body().bytes().unwrap_or_default());
    let json = serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|value| value["__type"].as_str().map(str::to_owned));
    let xml = || body.split_once("<Code>").and_then(|(_, rest)| rest.split_once("</Code>")).map(|(code, _)| code.to_owned());
    // A JSON `__type` may carry a namespace: `com.amazonaws.kinesis#ThrottlingException`.
    Some(json.map(|code| code_of(&code)).or_else(xml).unwrap_or_else(|| format!("http_{status}")))
}

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
        if let Some(operation) = operation(cfg) {
            self.calls.get_or_create(&operation).inc();
        }
        Ok(())
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(operation) = operation(cfg) {
            self.attempts.get_or_create(&operation).inc();
        }
        Ok(())
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let (Some(Operation { service, operation }), Some(code)) = (operation(cfg), failure_code(context)) {
            self.errors.get_or_create(&FailedAttempt { service, operation, code }).inc();
        }
        Ok(())
    }
}

/// Answers remembered for a while, by key: what [`Refusals`] and [`TagCache`] keep.
#[derive(Debug)]
struct Recent<V> {
    hold: Duration,
    entries: Mutex<HashMap<String, (Instant, V)>>,
}

impl<V: Clone> Recent<V> {
    fn new(hold: Duration) -> Self {
        Self { hold, entries: Mutex::default() }
    }

    /// What was remembered for `key` within the hold.
    fn get(&self, key: &str) -> Option<V> {
        self.lock().get(key).filter(|(at, _)| at.elapsed() < self.hold).map(|(_, value)| value.clone())
    }

    /// Remembers `value` for `key` from now, and forgets what is past its hold.
    fn put(&self, key: String, value: V) {
        let mut entries = self.lock();
        entries.retain(|_, (at, _)| at.elapsed() < self.hold);
        entries.insert(key, (Instant::now(), value));
    }

    fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, V)>> {
        self.entries.lock().expect("no panics while holding the lock")
    }
}

/// Changes AWS refused for good (a quota, a value it does not take), by what was asked. Within
/// the hold of a refusal the same ask gets the same answer without a call, so that a refusal is
/// asked again at each resync as its message says, not at every reconcile a rollout or another
/// part's progress starts; a different ask (the spec changed) goes out at once.
#[derive(Debug)]
pub struct Refusals(Recent<(&'static str, String)>);

impl Refusals {
    /// Refusals held for `hold`: shorter than the shortest resync, so that the resync asks again.
    pub fn new(hold: Duration) -> Self {
        Self(Recent::new(hold))
    }

    /// Makes `change`, named by `key` (the resource and what it is asked to become), unless AWS
    /// refused that within the hold: then the remembered refusal is the answer.
    pub async fn ask(&self, key: String, change: impl Future<Output = Result<(), Error>>) -> Result<(), Error> {
        if let Some((reason, message)) = self.0.get(&key) {
            return Err(Error::StillRefused { reason, message });
        }
        let result = change.await;
        match &result {
            Err(error) if error.is_terminal() => self.0.put(key, (error.reason(), error.to_string())),
            _ => self.0.forget(&key),
        }
        result
    }
}

/// How an ownership check reads a resource's tags: as read lately while reconciling, afresh
/// before anything that loses data (a deletion, a re-creation, a shorter retention).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagsAs {
    Cached,
    Fresh,
}

/// What the operator remembers of AWS across reconciles, shared by the clients of every region.
#[derive(Clone, Debug)]
pub struct Memory {
    pub refusals: Arc<Refusals>,
    pub tags: Arc<TagCache>,
}

impl Memory {
    /// Refusals held for most of a `resync` period; tags trusted for six, so most reconciles read none.
    pub fn for_resync(resync: Duration) -> Self {
        Self { refusals: Arc::new(Refusals::new(resync.mul_f64(0.8))), tags: Arc::new(TagCache::new(resync * 6)) }
    }

    /// The memory of another account: refusals of its own (they are keyed by resource name, which
    /// two accounts may share), tags shared (keyed by ARN, which holds the account).
    pub fn for_another_account(&self) -> Self {
        Self { refusals: Arc::new(Refusals::new(self.refusals.0.hold)), tags: self.tags.clone() }
    }
}

/// Tags of resources read lately, by resource ARN and creation time (a resource deleted and
/// made again under its name is another). Tags change only when someone tags, so a reconcile
/// within the hold of the last read takes them from here: ListTagsForStream, 5 calls a second per
/// account, would otherwise cap an account at about 700 pipelines at the default resync. The
/// operator's own tagging forgets the resource; what loses data reads afresh, and tags someone
/// else changes show within the hold.
#[derive(Debug)]
pub struct TagCache(Recent<(String, Vec<(String, String)>)>);

impl TagCache {
    pub fn new(fresh: Duration) -> Self {
        Self(Recent::new(fresh))
    }

    /// The tags of resource `arn` made at `created`: as read within the hold, else by `read`.
    pub async fn read(
        &self,
        arn: &str,
        created: String,
        read: impl Future<Output = Result<Vec<(String, String)>, Error>>,
    ) -> Result<Vec<(String, String)>, Error> {
        if let Some((known, tags)) = self.0.get(arn)
            && known == created
        {
            return Ok(tags);
        }
        let tags = read.await?;
        self.0.put(arn.to_owned(), (created, tags.clone()));
        Ok(tags)
    }

    /// The tags of resource `arn` made at `created`, read as `tags_as` says: through [`read`](Self::read)
    /// for a reconcile, by `read` alone before anything that loses data.
    pub async fn read_as(
        &self,
        tags_as: TagsAs,
        arn: &str,
        created: String,
        read: impl Future<Output = Result<Vec<(String, String)>, Error>>,
    ) -> Result<Vec<(String, String)>, Error> {
        match tags_as {
            TagsAs::Cached => self.read(arn, created, read).await,
            TagsAs::Fresh => read.await,
        }
    }

    /// `arn`'s tags are about to change.
    pub fn forget(&self, arn: &str) {
        self.0.forget(arn);
    }
}

/// One client per service for one region, all counting their calls.
#[derive(Clone, Debug)]
pub struct AwsClients {
    pub region: String,
    /// Shared by every region's clients of one account; keyed by region here.
    refusals: Arc<Refusals>,
    /// Shared likewise; keyed by ARNs, which name the region.
    pub tags: Arc<TagCache>,
    /// An endpoint other than AWS's (an emulator): some of AWS's guarantees may not hold.
    pub endpoint_override: bool,
    pub kinesis: aws_sdk_kinesis::Client,
    pub s3: aws_sdk_s3::Client,
    /// Tags buckets: TagResource adds and UntagResource removes keys, where S3's PutBucketTagging
    /// replaces the whole set (and refuses a set holding a CloudFormation stack's `aws:` tags).
    pub s3control: aws_sdk_s3control::Client,
    pub iam: aws_sdk_iam::Client,
    pub firehose: aws_sdk_firehose::Client,
    pub glue: aws_sdk_glue::Client,
}

impl AwsClients {
    /// Clients of their own, remembering refusals for most of the default resync period and reading
    /// tags afresh every time; the operator's share one memory per account ([`AwsClients::sharing`]).
    pub fn new(sdk: &SdkConfig, region: &str, calls: &AwsCalls) -> Self {
        let memory = Memory { refusals: Arc::new(Refusals::new(Duration::from_secs(240))), tags: Arc::new(TagCache::new(Duration::ZERO)) };
        Self::sharing(sdk, region, calls, &memory)
    }

    /// Makes `change` to the resource named in `key` unless AWS refused the same lately (see [`Refusals`]).
    pub async fn ask(&self, key: &str, change: impl Future<Output = Result<(), Error>>) -> Result<(), Error> {
        self.refusals.ask(format!("{}: {key}", self.region), change).await
    }

    pub fn sharing(sdk: &SdkConfig, region: &str, calls: &AwsCalls, memory: &Memory) -> Self {
        // One region's clients share its request rates (see `limits`).
        let paced = RateLimits::around(Arc::default(), sdk.http_client().unwrap_or_else(http_client));
        let region_name = aws_config::Region::new(region.to_owned());
        let sdk = sdk.to_builder().region(region_name).timeout_config(timeouts()).http_client(paced).build();
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
            refusals: memory.refusals.clone(),
            tags: memory.tags.clone(),
            endpoint_override: endpoint.is_some(),
            kinesis: client!(aws_sdk_kinesis, aws_sdk_kinesis::config::Builder::from(&sdk)),
            s3: client!(aws_sdk_s3, s3_client(&sdk).config().to_builder()),
            s3control: client!(aws_sdk_s3control, s3_control_client(&sdk).config().to_builder()),
            iam: client!(aws_sdk_iam, aws_sdk_iam::config::Builder::from(&sdk)),
            firehose: client!(aws_sdk_firehose, aws_sdk_firehose::config::Builder::from(&sdk)),
            glue: client!(aws_sdk_glue, aws_sdk_glue::config::Builder::from(&sdk)),
        }
    }
}

/// Time limits of every AWS call. Without them one stalled answer (a half-open connection, a
/// proxy that never replies) holds a reconcile, and the shutdown waiting for it, for ever; with
/// them it is an outage like any other, retried by the SDK and then by the reconcile's backoff.
pub fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(20))
        .operation_timeout(Duration::from_secs(60))
        .build()
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
        let sdk = fake::sdk_at("http://127.0.0.1:1");
        let calls = AwsCalls::default();
        let clients = AwsClients::new(&sdk, "eu-west-1", &calls);
        let _ = clients.kinesis.list_streams().send().await;
        let _ = clients.glue.get_databases().send().await;
        let _ = clients.glue.get_databases().send().await;
        let count = |service: &str, operation: &str| calls.calls(service, operation);
        assert_eq!((count("Glue", "GetDatabases"), count("Kinesis", "ListStreams"), count("Kinesis", "CreateStream")), (2, 1, 0));
    }

    #[tokio::test]
    async fn failed_attempts_are_counted_by_the_code_aws_answered_retries_included() {
        let throttled = r#"{"__type":"com.amazonaws.kinesis#ThrottlingException","message":"Rate exceeded"}"#;
        let aws = fake::FakeAws::start(std::collections::BTreeMap::from([("ListStreams", (400, throttled))])).await;
        let _ = aws.clients.kinesis.list_streams().send().await;
        let mut registry = Registry::default();
        aws.calls.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let count = |series: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(series)?.trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{series}: {text}"))
        };
        let attempts = count(r#"aws_attempts_total{service="Kinesis",operation="ListStreams"}"#);
        assert_eq!(count(r#"aws_calls_total{service="Kinesis",operation="ListStreams"}"#), 1);
        assert!(attempts > 1, "the SDK retries throttling: {attempts}");
        assert_eq!(count(r#"aws_attempt_errors_total{service="Kinesis",operation="ListStreams",code="ThrottlingException"}"#), attempts);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_whose_answer_never_comes_fails_as_an_outage_within_the_time_limit() {
        // Accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let silent = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((connection, _)) = listener.accept().await {
                open.push(connection);
            }
        });
        let sdk = fake::sdk_at(&endpoint);
        let clients = AwsClients::new(&sdk, "eu-west-1", &AwsCalls::default());
        let started = tokio::time::Instant::now();
        let answer = clients.kinesis.list_streams().send().await;
        let error = crate::error::AwsError::from_sdk("listing streams", answer.expect_err("no answer"));
        assert_eq!(error.kind, crate::error::AwsErrorKind::Unavailable, "{error}");
        assert!(started.elapsed() <= Duration::from_secs(61), "{:?}", started.elapsed());
        silent.abort();
    }

    #[tokio::test]
    async fn a_server_error_is_tried_again_whatever_its_code() {
        let unknown = r#"{"__type":"InternalServerError","message":"We encountered an internal error. Please try again."}"#;
        let aws = fake::FakeAws::start(std::collections::BTreeMap::from([("DescribeStreamSummary", (500, unknown))])).await;
        let error = streams::Stream::input("s").observe(&aws.clients, TagsAs::Fresh).await.expect_err("a 500");
        assert_eq!(error.aws_kind(), Some(crate::error::AwsErrorKind::Unavailable), "{error}");
        assert!(!error.is_terminal(), "{error}");
    }

    #[tokio::test]
    async fn a_change_refused_for_good_is_not_asked_again_until_the_resync_but_another_is() {
        use crate::error::{AwsError, AwsErrorKind};
        let refusals = Refusals::new(Duration::from_secs(300));
        let asked = std::sync::atomic::AtomicU32::new(0);
        let refuse = |kind| {
            asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::ready(Err(Error::from(AwsError::new("updating x", kind, Some("LimitExceededException".into()), "no"))))
        };
        let first = refusals.ask("stream x: shard count to 8".into(), refuse(AwsErrorKind::QuotaExceeded)).await.unwrap_err();
        let again = refusals.ask("stream x: shard count to 8".into(), async { panic!("asked AWS again") }).await.unwrap_err();
        assert_eq!((again.reason(), again.is_terminal()), (first.reason(), true));
        assert_eq!(again.to_string(), format!("{first} (asked again at the next resync)"), "the same words at every reconcile");
        let other = refusals.ask("stream x: shard count to 4".into(), std::future::ready(Ok(()))).await;
        assert!(other.is_ok(), "a different ask goes out");
        // Throttling is for the backoff: the next reconcile asks again.
        for _ in 0..2 {
            let _ = refusals.ask("stream y: retention to 48 hours".into(), refuse(AwsErrorKind::Throttled)).await;
        }
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 3);
        let forgetful = Refusals::new(Duration::ZERO);
        let _ = forgetful.ask("stream x".into(), refuse(AwsErrorKind::QuotaExceeded)).await;
        let _ = forgetful.ask("stream x".into(), refuse(AwsErrorKind::QuotaExceeded)).await;
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 5, "after the hold, asked again");
    }
}
