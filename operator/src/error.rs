//! What can go wrong in a reconcile, sorted by who must act: the user (terminal: the spec or
//! something outside the operator must change) or time (retryable: throttling, outages, AWS
//! still creating something). AWS failures keep the SDK's error as their source and say what
//! kind of failure it was.

use std::fmt;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use metrics_pipeline_api::naming::OWNER_TAG;
use metrics_pipeline_api::validation::ValidationErrors;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the spec is invalid: {0}")]
    InvalidSpec(ValidationErrors),

    #[error(
        "{kind} `{name}` already exists and is not this pipeline's ({holder}); the operator never takes over what it did not \
         create unless asked: choose other names (spec.namePrefix, spec.delivery.bucketName, spec.catalog) or remove that {kind}"
    )]
    NotOwned { kind: &'static str, name: String, holder: Holder },

    #[error(transparent)]
    Aws(Box<AwsError>),

    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    /// The finalizer helper refused the object itself (no name, a malformed finalizer).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),

    /// The aggregator's container was killed for exceeding its memory limit: only a higher limit helps.
    #[error(
        "the aggregator was killed for using more memory than its limit of {limit} (OOMKilled): raise \
         spec.aggregator.resources.limits.memory"
    )]
    AggregatorOutOfMemory { limit: String },

    /// AWS refused an UpdateShardCount for a quota: the stream works at its current shard count,
    /// and waiting a day, a higher quota or a lower spec is what helps, not retrying soon.
    #[error(
        "AWS refused to scale Kinesis stream `{stream}` from {current} towards {desired} shards ({source}). A stream may be \
         scaled only a limited number of times per rolling 24 hours (10 by default) and by at most double or half its open \
         shards at a time; the operator tries again at each resync. To stay at {current} shards set {field} to {current}; to \
         scale sooner, ask AWS for a higher limit (Service Quotas)"
    )]
    ShardScalingRefused { stream: String, current: i32, desired: i32, field: String, source: Box<AwsError> },

    /// A spec change AWS would accept but that would leave written data unreadable; the message
    /// says how to migrate instead.
    #[error("{field} {message}")]
    UnsafeChange { field: &'static str, message: String },

    /// The pipeline's namespace carries an annotation that says nothing usable: an administrator
    /// must correct it.
    #[error("{0}")]
    NamespacePolicy(String),

    /// A change that needs a resource deleted, which `managementPolicy: NoDelete` forbids.
    #[error(
        "{what} would have to be deleted ({why}), and managementPolicy: NoDelete forbids deleting: undo the spec change, \
         or set spec.managementPolicy to Full for it"
    )]
    DeletionRefused { what: String, why: String },

    /// Observing only, how the AWS resources differ from the spec, and what ends the observing.
    #[error("{} difference(s) from the spec, left as they are until {until}: {}", .drift.len(), .drift.join("; "))]
    Drift { drift: Vec<String>, until: &'static str },

    /// A spec change (or an operator in another account) that would move the pipeline's AWS
    /// resources away from where they were made.
    #[error("{0}")]
    IdentityChange(String),

    /// A part still not in place after the operator's time limit (`--pending-timeout`), or a
    /// rollout past its Deployment's progress deadline: waiting longer is not what helps.
    #[error(
        "gave up waiting after {waited}: {why}. The operator looks again at each resync, and at once when the spec \
         changes"
    )]
    Stalled { waited: String, why: String },

    /// A change AWS refused for good a moment ago (a quota, an invalid value): asked again only
    /// after the resync period, not at every reconcile (see [`crate::aws::Refusals`]).
    #[error("{message} (asked again at the next resync)")]
    StillRefused { reason: &'static str, message: String },

    /// Deletion started and AWS or Kubernetes is still removing these: expected, not a failure.
    #[error("waiting for the deletion of {0}")]
    Deleting(String),

    /// Deletion waits for Firehose to deliver what it may still buffer, until `left` from now.
    #[error("waiting for the deletion: {why}")]
    Draining { why: String, left: std::time::Duration },
}

/// A call the operator did not send: its own rate limit for the operation (see
/// [`crate::aws::limits`]) is booked further ahead than a call may wait.
#[derive(Debug, thiserror::Error)]
#[error("not sent: the operator's rate limit for {operation} is booked more than {booked_ahead:?} ahead")]
pub struct RateLimited {
    pub operation: String,
    pub booked_ahead: std::time::Duration,
}

/// Who holds a resource found under one of this pipeline's names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// Another pipeline's value of the ownership tag.
    Pipeline(String),
    /// No ownership tag: made by hand, or by another tool.
    Untagged,
    /// Another AWS account (S3 bucket names are global).
    OtherAccount,
    /// A pipeline of the same namespace and name deleted since (with `Retain`), in this cluster.
    EarlierPipeline { uid: String },
    /// A pipeline of another cluster sharing the account and region.
    OtherCluster { cluster: String, pipeline: String, uid: Option<String> },
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pipeline(owner) => write!(f, "its {OWNER_TAG} tag names pipeline `{owner}`"),
            Self::Untagged => write!(f, "it has no {OWNER_TAG} tag, so something else made it"),
            Self::OtherAccount => f.write_str("another AWS account owns it: S3 answers 403 Forbidden for it"),
            Self::EarlierPipeline { uid } => write!(
                f,
                "an earlier pipeline of this name made it (uid {uid}), deleted since; to take it over with its data set \
                 spec.adoptFrom.pipelineUid to {uid}"
            ),
            Self::OtherCluster { cluster, pipeline, uid: Some(uid) } => write!(
                f,
                "pipeline `{pipeline}` of cluster {cluster} made it (uid {uid}); to move it to this cluster set \
                 spec.adoptFrom.pipelineUid to {uid}, and stop that pipeline from managing it"
            ),
            Self::OtherCluster { cluster, pipeline, uid: None } => write!(f, "pipeline `{pipeline}` of cluster {cluster} made it"),
        }
    }
}

/// What kind of refusal or failure an AWS call met; decides whether waiting can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AwsErrorKind {
    /// A request rate was exceeded: retry later.
    Throttled,
    /// An account or resource quota is used up: someone must raise it or free capacity.
    QuotaExceeded,
    /// What was asked for does not exist (where its absence is unexpected).
    NotFound,
    /// The resource is being changed by another operation: retry when it is done.
    Busy,
    /// The credentials may not do this: a policy must change.
    AccessDenied,
    /// AWS refused the request as written.
    InvalidRequest,
    /// The service could not be reached, timed out or failed on its side.
    Unavailable,
}

impl AwsErrorKind {
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Throttled | Self::NotFound | Self::Busy | Self::Unavailable)
    }

    /// The kind of a service's error code and message (the codes of Kinesis, S3, IAM, Firehose,
    /// Glue and STS).
    pub fn of(code: &str, message: &str) -> Self {
        match code {
            // Kinesis and Firehose answer both a request rate and a quota with this code; only
            // the message tells them apart ("Rate exceeded for stream …" against "Exceeded the
            // limit of 10 UpdateShardCount calls …", "… would exceed the shard limit …").
            "LimitExceededException" if is_rate(message) => Self::Throttled,
            "LimitExceededException" => Self::QuotaExceeded,
            "Throttling"
            | "ThrottlingException"
            | "TooManyRequestsException"
            | "RequestLimitExceeded"
            | "SlowDown"
            | "ProvisionedThroughputExceededException" => Self::Throttled,
            "LimitExceeded" | "ServiceQuotaExceededException" | "ResourceNumberLimitExceededException" | "TooManyBuckets" => {
                Self::QuotaExceeded
            }
            "ResourceInUseException"
            | "ConcurrentModificationException"
            | "ConcurrentModification"
            | "OperationAbortedException"
            | "OperationAborted"
            | "ConflictException" => Self::Busy,
            "AccessDenied"
            | "AccessDeniedException"
            | "UnauthorizedOperation"
            | "InvalidClientTokenId"
            | "ExpiredToken"
            | "ExpiredTokenException"
            | "SignatureDoesNotMatch" => Self::AccessDenied,
            "ServiceUnavailable"
            | "ServiceUnavailableException"
            | "InternalFailure"
            | "InternalError"
            | "InternalServiceError"
            | "InternalServiceException"
            | "KMSThrottlingException" => Self::Unavailable,
            code if code.starts_with("NoSuch") || code.contains("NotFound") => Self::NotFound,
            _ => Self::InvalidRequest,
        }
    }
}

/// Whether a refusal's message speaks of a request rate rather than a quota.
fn is_rate(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    ["rate exceeded", "throttl", "too many requests", "slow down"].iter().any(|rate| message.contains(rate))
}

/// One failed AWS call: what the operator was doing, what AWS said, and the SDK's error.
#[derive(Debug)]
pub struct AwsError {
    pub action: String,
    pub kind: AwsErrorKind,
    /// The service's error code, when the service answered.
    pub code: Option<String>,
    pub message: String,
    pub source: Option<BoxError>,
}

impl fmt::Display for AwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{}: {code}: {}", self.action, self.message),
            None => write!(f, "{}: {}", self.action, self.message),
        }
    }
}

impl std::error::Error for AwsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|source| source as &(dyn std::error::Error + 'static))
    }
}

impl AwsError {
    /// A failure AWS reported without an SDK error to keep (a per-entry error of a batch call).
    pub fn new(action: impl Into<String>, kind: AwsErrorKind, code: Option<String>, message: impl Into<String>) -> Self {
        Self { action: action.into(), kind, code, message: message.into(), source: None }
    }

    /// Classifies a failed call made while doing `action`.
    pub fn from_sdk<E>(action: impl Into<String>, error: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let action = action.into();
        let (kind, code, message) = match &error {
            SdkError::ServiceError(service) => {
                let code = service.err().code().map(str::to_owned);
                let status = service.raw().status().as_u16();
                let kind = match code.as_deref() {
                    Some(code) => AwsErrorKind::of(code, service.err().message().unwrap_or_default()),
                    // S3's HEAD answers carry no body, so no code: the status says it.
                    None if status == 404 => AwsErrorKind::NotFound,
                    None if status == 403 => AwsErrorKind::AccessDenied,
                    None if status == 503 || status == 429 => AwsErrorKind::Throttled,
                    None if status >= 500 => AwsErrorKind::Unavailable,
                    None => AwsErrorKind::InvalidRequest,
                };
                // A server error is the service's trouble whatever its code says: tried again
                // (but for 501, which says the service does not do this at all).
                let kind = if status >= 500 && status != 501 && !kind.is_retryable() { AwsErrorKind::Unavailable } else { kind };
                let message = service.err().message().map_or_else(|| format!("HTTP {status}"), str::to_owned);
                (kind, code, message)
            }
            // Not sent: the operator's own rate limit for the operation is booked too far ahead.
            SdkError::DispatchFailure(failure)
                if failure.as_connector_error().and_then(std::error::Error::source).is_some_and(|source| source.is::<RateLimited>()) =>
            {
                (AwsErrorKind::Throttled, None, aws_smithy_types::error::display::DisplayErrorContext(&error).to_string())
            }
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => (
                AwsErrorKind::Unavailable,
                None,
                format!("the service could not be reached: {}", aws_smithy_types::error::display::DisplayErrorContext(&error)),
            ),
            _ => (AwsErrorKind::InvalidRequest, None, aws_smithy_types::error::display::DisplayErrorContext(&error).to_string()),
        };
        Self { action, kind, code, message, source: Some(Box::new(error)) }
    }
}

impl From<AwsError> for Error {
    fn from(error: AwsError) -> Self {
        Self::Aws(Box::new(error))
    }
}

impl Error {
    /// The user must change something before a retry can succeed.
    pub fn is_terminal(&self) -> bool {
        match self {
            Self::InvalidSpec(_)
            | Self::NotOwned { .. }
            | Self::UnsafeChange { .. }
            | Self::AggregatorOutOfMemory { .. }
            | Self::ShardScalingRefused { .. }
            | Self::Stalled { .. }
            | Self::StillRefused { .. }
            | Self::IdentityChange(_)
            | Self::DeletionRefused { .. }
            | Self::NamespacePolicy(_)
            | Self::Drift { .. } => true,
            Self::Aws(error) => !error.kind.is_retryable(),
            Self::Kube(_) | Self::Finalizer(_) | Self::Deleting(_) | Self::Draining { .. } => false,
        }
    }

    /// The AWS failure's kind, if this is one.
    pub fn aws_kind(&self) -> Option<AwsErrorKind> {
        match self {
            Self::Aws(error) => Some(error.kind),
            Self::ShardScalingRefused { source, .. } => Some(source.kind),
            _ => None,
        }
    }

    /// A CamelCase reason for conditions, events and the reconcile metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => "InvalidSpec",
            Self::NotOwned { .. } => "NotOwned",
            Self::UnsafeChange { .. } => "UnsafeChange",
            Self::Aws(error) if error.kind.is_retryable() => "AwsUnavailable",
            Self::Aws(_) => "AwsRefused",
            Self::AggregatorOutOfMemory { .. } => "OOMKilled",
            Self::ShardScalingRefused { .. } => "ScalingLimitExceeded",
            Self::IdentityChange(_) => "IdentityChangeRefused",
            Self::DeletionRefused { .. } => "DeletionRefused",
            Self::NamespacePolicy(_) => "NamespacePolicyInvalid",
            Self::Drift { .. } => "Drift",
            Self::Stalled { .. } => "Stalled",
            Self::StillRefused { reason, .. } => reason,
            Self::Kube(_) => "KubernetesError",
            Self::Finalizer(_) => "FinalizerError",
            Self::Deleting(_) | Self::Draining { .. } => "Deleting",
        }
    }
}

/// Turns an SDK call's result into the operator's, naming what was being done.
pub trait AwsResultExt<T> {
    /// Any failure is an [`Error::Aws`].
    fn or_aws(self, action: impl FnOnce() -> String) -> Result<T, Error>;
    /// `None` when AWS answers one of `absent` (the codes meaning "there is no such thing").
    fn absent_on(self, absent: &[&str], action: impl FnOnce() -> String) -> Result<Option<T>, Error>;
}

impl<T, E> AwsResultExt<T> for Result<T, SdkError<E, HttpResponse>>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    fn or_aws(self, action: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|error| AwsError::from_sdk(action(), error).into())
    }

    fn absent_on(self, absent: &[&str], action: impl FnOnce() -> String) -> Result<Option<T>, Error> {
        match self {
            Ok(value) => Ok(Some(value)),
            Err(error) if error_code(&error).is_some_and(|code| absent.contains(&code)) => Ok(None),
            Err(error) => Err(AwsError::from_sdk(action(), error).into()),
        }
    }
}

/// The service error code of a failed call.
pub fn error_code<E: ProvideErrorMetadata, R>(error: &SdkError<E, R>) -> Option<&str> {
    match error {
        SdkError::ServiceError(service) => service.err().code(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_sorted_into_kinds() {
        let kinds = ["ThrottlingException", "LimitExceeded", "ResourceInUseException", "AccessDeniedException", "ValidationException"]
            .map(|code| AwsErrorKind::of(code, "x"));
        use AwsErrorKind::*;
        assert_eq!(kinds, [Throttled, QuotaExceeded, Busy, AccessDenied, InvalidRequest]);
        assert_eq!(AwsErrorKind::of("NoSuchBucket", ""), NotFound);
        assert_eq!(AwsErrorKind::of("EntityNotFoundException", ""), NotFound);
        // IAM: another call is changing the same role or policy; it passes once that is done.
        assert_eq!(AwsErrorKind::of("ConcurrentModification", "Rate exceeded"), Busy);
        assert!(Busy.is_retryable());
    }

    #[test]
    fn a_limit_exceeded_is_throttling_or_a_quota_by_its_message() {
        let kind = |message| AwsErrorKind::of("LimitExceededException", message);
        use AwsErrorKind::*;
        // Kinesis's and Firehose's rate answers.
        assert_eq!(kind("Rate exceeded for stream p-input under account 123456789012."), Throttled);
        assert_eq!(kind("Rate exceeded"), Throttled);
        // Kinesis's quotas: scalings per day, ×2 per scaling, shards per account.
        assert_eq!(
            kind("Exceeded the limit of 10 UpdateShardCount calls per rolling 24-hour period for stream p under account 1."),
            QuotaExceeded
        );
        assert_eq!(kind("UpdateShardCount cannot scale up over double your current open shard count."), QuotaExceeded);
        assert_eq!(kind("This request would exceed the shard limit for the account 123456789012 in eu-west-1."), QuotaExceeded);
        assert!(!QuotaExceeded.is_retryable());
    }

    #[test]
    fn an_aws_error_keeps_its_cause_and_says_what_was_being_done() {
        let cause = std::io::Error::other("connection reset");
        let error =
            AwsError { source: Some(Box::new(cause)), ..AwsError::new("describing stream in", AwsErrorKind::Unavailable, None, "down") };
        assert_eq!(error.to_string(), "describing stream in: down");
        assert_eq!(std::error::Error::source(&error).map(ToString::to_string).as_deref(), Some("connection reset"));
        assert!(!Error::from(error).is_terminal());
    }

    #[test]
    fn a_foreign_resource_says_who_holds_it() {
        let error = Error::NotOwned { kind: "S3 bucket", name: "b".into(), holder: Holder::OtherAccount };
        let message = error.to_string();
        assert!(message.starts_with("S3 bucket `b` already exists and is not this pipeline's (another AWS account owns it"), "{message}");
        assert!(!message.contains("``"), "no empty name in the message: {message}");
    }
}
