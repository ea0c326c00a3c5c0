//! What a pipeline is creating, recorded in its status (`status.creating`, by ARN) before the
//! create call. Creating a resource and tagging it as the pipeline's can be two AWS calls (S3:
//! CreateBucket, then PutBucketTagging); should the second fail, or the operator stop between
//! them, the resource exists without the ownership tag, which otherwise marks it as somebody
//! else's. The record tells the next reconcile that it is this pipeline's, to be finished; a
//! resource found untagged and not recorded stays somebody else's.

use std::collections::BTreeSet;
use std::sync::Mutex;

use kube::ResourceExt;
use kube::api::Api;
use metrics_pipeline_api::pipeline::MetricsPipeline;

use crate::error::Error;
use crate::managed::write_status;

/// One reconcile's view of a pipeline's records.
pub struct Claims {
    api: Api<MetricsPipeline>,
    name: String,
    /// Recorded as far as this reconcile knows: the status it started from, and its own records.
    recorded: Mutex<BTreeSet<String>>,
    /// Settled in this reconcile: finished, or found to be somebody else's. The next status write
    /// drops them.
    settled: Mutex<BTreeSet<String>>,
}

impl Claims {
    pub fn new(api: Api<MetricsPipeline>, pipeline: &MetricsPipeline) -> Self {
        let recorded = pipeline.status.iter().flat_map(|status| status.creating.iter().cloned()).collect();
        Self { api, name: pipeline.name_any(), recorded: Mutex::new(recorded), settled: Mutex::default() }
    }

    /// Records `arn` in the stored status; call it before the create call, and create nothing
    /// when it fails.
    pub async fn record(&self, arn: &str) -> Result<(), Error> {
        // The stored status, not the cached one: writing back a stale status would undo the
        // last reconcile's.
        let mut status = self.api.get_status(&self.name).await?.status.unwrap_or_default();
        if !status.creating.iter().any(|recorded| recorded == arn) {
            status.creating.push(arn.to_owned());
            write_status(&self.api, &self.name, &status).await?;
        }
        self.recorded.lock().expect("no panics while holding the lock").insert(arn.to_owned());
        Ok(())
    }

    /// Whether this pipeline recorded `arn` as being created. The stored status is read when the
    /// cached one does not have it: the watch may not have delivered the last record yet.
    pub async fn is_recorded(&self, arn: &str) -> Result<bool, Error> {
        if self.recorded.lock().expect("no panics while holding the lock").contains(arn) {
            return Ok(true);
        }
        let stored = self.api.get_status(&self.name).await?.status.unwrap_or_default();
        Ok(stored.creating.iter().any(|recorded| recorded == arn))
    }

    /// `arn` is finished (created and tagged) or somebody else's: no longer a record.
    pub fn settle(&self, arn: &str) {
        self.settled.lock().expect("no panics while holding the lock").insert(arn.to_owned());
    }

    /// The ARNs settled in this reconcile.
    pub fn settled(&self) -> Vec<String> {
        self.settled.lock().expect("no panics while holding the lock").iter().cloned().collect()
    }
}
