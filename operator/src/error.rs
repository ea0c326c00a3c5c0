//! What can go wrong in a reconcile, sorted by who must act: the user (terminal: the spec or
//! something outside the operator must change) or time (retryable: throttling, outages, AWS
//! still creating something).

use metrics_pipeline_crds::naming::OWNER_TAG;
use metrics_pipeline_crds::validation::ValidationErrors;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the spec is invalid: {0}")]
    InvalidSpec(ValidationErrors),

    #[error(
        "{kind} `{name}` already exists and is not this pipeline's (its {OWNER_TAG} tag is {}, not `{owner}`); \
         the operator never takes over what it did not create: choose other names (spec.namePrefix, \
         spec.delivery.bucketName, spec.catalog) or remove that {kind}",
        found.as_deref().map_or("missing".to_owned(), |found| format!("`{found}`"))
    )]
    NotOwned { kind: &'static str, name: String, owner: String, found: Option<String> },

    #[error("{action}: {message}")]
    Aws { action: String, message: String, retryable: bool },

    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    #[error("finalizer: {0}")]
    Finalizer(String),

    /// Deletion started and AWS is still removing these.
    #[error("waiting for the deletion of {0}")]
    Deleting(String),
}

impl Error {
    /// The user must change something before a retry can succeed.
    pub fn is_terminal(&self) -> bool {
        match self {
            Self::InvalidSpec(_) | Self::NotOwned { .. } => true,
            Self::Aws { retryable, .. } => !retryable,
            Self::Kube(_) | Self::Finalizer(_) | Self::Deleting(_) => false,
        }
    }

    /// A CamelCase reason for conditions, events and the error metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => "InvalidSpec",
            Self::NotOwned { .. } => "NotOwned",
            Self::Aws { retryable: true, .. } => "AwsUnavailable",
            Self::Aws { retryable: false, .. } => "AwsRefused",
            Self::Kube(_) => "KubernetesError",
            Self::Finalizer(_) => "FinalizerError",
            Self::Deleting(_) => "Deleting",
        }
    }
}
