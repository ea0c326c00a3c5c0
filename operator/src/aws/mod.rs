//! The AWS side of a pipeline: one module per resource, each the same shape — `observe` reads
//! what exists, a pure `desired_*`/`changes`/`plan` says what should, `ensure` creates or updates
//! it, `delete` removes it — plus the clients they share. Ownership and outcomes live in
//! [`crate::managed`], error classification in [`crate::error`].

pub mod bucket;
pub mod catalog;
pub mod delivery;
#[cfg(test)]
mod fake;
pub mod limits;
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
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use metrics_pipeline_runtime::sdk::{http_client, s3_client};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use self::limits::RateLimits;
use crate::error::Error;

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

/// Changes AWS refused for good (a quota, a value it does not take), by what was asked. Within
/// `hold` (the resync period) of a refusal the same ask gets the same answer without a call, so
/// that a refusal is asked again at each resync as its message says, not at every reconcile a
/// rollout or another part's progress starts; a different ask (the spec changed) goes out at once.
#[derive(Debug)]
pub struct Refusals {
    hold: Duration,
    refused: Mutex<HashMap<String, Refused>>,
}

#[derive(Debug)]
struct Refused {
    at: Instant,
    reason: &'static str,
    message: String,
}

impl Refusals {
    pub fn new(hold: Duration) -> Self {
        Self { hold, refused: Mutex::default() }
    }

    /// Makes `change`, named by `key` (the resource and what it is asked to become), unless AWS
    /// refused that within `hold`: then the remembered refusal is the answer.
    pub async fn ask(&self, key: String, change: impl Future<Output = Result<(), Error>>) -> Result<(), Error> {
        if let Some(refused) = self.lock().get(&key).filter(|refused| refused.at.elapsed() < self.hold) {
            let ago = refused.at.elapsed().as_secs();
            return Err(Error::StillRefused { reason: refused.reason, message: refused.message.clone(), ago });
        }
        let result = change.await;
        let mut refused = self.lock();
        refused.retain(|_, refused| refused.at.elapsed() < self.hold);
        match &result {
            Err(error) if error.is_terminal() => {
                refused.insert(key, Refused { at: Instant::now(), reason: error.reason(), message: error.to_string() });
            }
            _ => {
                refused.remove(&key);
            }
        }
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Refused>> {
        self.refused.lock().expect("no panics while holding the lock")
    }
}

/// How an ownership check reads a resource's tags: as read lately while reconciling, afresh
/// before a deletion (nothing is deleted on an old answer).
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

/// Tags of resources read lately, by resource ARN and creation time (a resource deleted and
/// made again under its name is another). Tags change only when someone tags, so a reconcile
/// within `fresh` of the last read takes them from here: ListTagsForStream, 5 calls a second per
/// account, would otherwise cap an account at about 700 pipelines at the default resync. The
/// operator's own tagging forgets the resource; a deletion always reads afresh, and tags someone
/// else changes show within `fresh`.
#[derive(Debug)]
pub struct TagCache {
    fresh: Duration,
    read: Mutex<HashMap<String, ReadTags>>,
}

#[derive(Debug)]
struct ReadTags {
    created: String,
    at: Instant,
    tags: Vec<(String, String)>,
}

impl TagCache {
    pub fn new(fresh: Duration) -> Self {
        Self { fresh, read: Mutex::default() }
    }

    /// The tags of resource `arn` made at `created`: as read within `fresh`, else by `read`.
    pub async fn read(
        &self,
        arn: &str,
        created: String,
        read: impl Future<Output = Result<Vec<(String, String)>, Error>>,
    ) -> Result<Vec<(String, String)>, Error> {
        if let Some(known) = self.lock().get(arn).filter(|known| known.created == created && known.at.elapsed() < self.fresh) {
            return Ok(known.tags.clone());
        }
        let tags = read.await?;
        let mut cache = self.lock();
        cache.retain(|_, known| known.at.elapsed() < self.fresh);
        cache.insert(arn.to_owned(), ReadTags { created, at: Instant::now(), tags: tags.clone() });
        Ok(tags)
    }

    /// `arn`'s tags are about to change.
    pub fn forget(&self, arn: &str) {
        self.lock().remove(arn);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ReadTags>> {
        self.read.lock().expect("no panics while holding the lock")
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
    pub iam: aws_sdk_iam::Client,
    pub firehose: aws_sdk_firehose::Client,
    pub glue: aws_sdk_glue::Client,
}

impl AwsClients {
    /// Clients of their own, remembering refusals for the default resync period and reading
    /// tags afresh every time; the operator's share one memory per account ([`AwsClients::sharing`]).
    pub fn new(sdk: &SdkConfig, region: &str, calls: &AwsCalls) -> Self {
        let memory = Memory { refusals: Arc::new(Refusals::new(Duration::from_secs(300))), tags: Arc::new(TagCache::new(Duration::ZERO)) };
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
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .credentials_provider(
                aws_sdk_kinesis::config::SharedCredentialsProvider::new(aws_sdk_kinesis::config::Credentials::for_tests()),
            )
            .build();
        let clients = AwsClients::new(&sdk, "eu-west-1", &AwsCalls::default());
        let started = tokio::time::Instant::now();
        let answer = clients.kinesis.list_streams().send().await;
        let error = crate::error::AwsError::from_sdk("listing streams", answer.expect_err("no answer"));
        assert_eq!(error.kind, crate::error::AwsErrorKind::Unavailable, "{error}");
        assert!(started.elapsed() <= Duration::from_secs(61), "{:?}", started.elapsed());
        silent.abort();
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
        assert!(again.to_string().starts_with(&first.to_string()), "{again}");
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
