//! Leader election on a coordination.k8s.io Lease, so that of several operator replicas exactly
//! one reconciles. The same protocol as client-go's: the holder renews the lease every `retry`
//! period; another replica takes it only once it has seen the lease unchanged for a lease
//! duration by its own clock (never by comparing the holder's `renewTime` with it: clocks of two
//! nodes differ), or when the holder released it on shutdown. Every write carries the
//! resourceVersion read, so two candidates can never both win: the loser gets 409 Conflict. The
//! leader's work is dropped, with every reconcile in flight, the moment it loses the lease.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's name in the lease: the pod's name in a cluster.
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub duration: Duration,
    /// How often the holder renews and the others try.
    pub retry: Duration,
}

impl LeaseSettings {
    /// client-go's defaults, scaled: a dead leader is replaced within 15 s.
    pub fn new(namespace: String, name: String, identity: String) -> Self {
        Self { namespace, name, identity, duration: Duration::from_secs(15), retry: Duration::from_secs(2) }
    }
}

pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The lease's resourceVersion as last read, and when this replica first read it so.
    observed: Mutex<Option<(String, Instant)>>,
    /// When the last attempt that took or renewed the lease began: the lease runs from no
    /// earlier than that.
    held_from: Mutex<Option<Instant>>,
}

impl LeaderElector {
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Self { api: Api::namespaced(client, &settings.namespace), settings, observed: Mutex::default(), held_from: Mutex::default() }
    }

    /// How long this replica has seen the lease at `version`: every renewal is a new version.
    fn unchanged_for(&self, version: &str) -> Duration {
        let mut observed = self.observed.lock().expect("no panics while holding the lock");
        match &*observed {
            Some((seen, since)) if seen == version => since.elapsed(),
            _ => {
                *observed = Some((version.to_owned(), Instant::now()));
                Duration::ZERO
            }
        }
    }

    /// One attempt to take or renew the lease; true when this replica holds it afterwards.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let sent = Instant::now();
        let held = self.attempt().await;
        if let Ok(true) = held {
            *self.held_from.lock().expect("no panics while holding the lock") = Some(sent);
        }
        held
    }

    async fn attempt(&self) -> Result<bool, kube::Error> {
        let now = jiff::Timestamp::now();
        let settings = &self.settings;
        let Some(mut lease) = self.api.get_opt(&settings.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(settings.name.clone()), ..ObjectMeta::default() },
                spec: Some(self.held_since(now, now, 0)),
            };
            return self.won(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|holder| !holder.is_empty());
        let ours = holder == Some(settings.identity.as_str());
        // The longer of the holder's duration and ours, counted on this replica's clock.
        let valid = settings.duration.max(Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64));
        let expired = self.unchanged_for(lease.metadata.resource_version.as_deref().unwrap_or_default()) >= valid;
        if !ours && holder.is_some() && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours { spec.acquire_time.map_or(now, |time| time.0) } else { now };
        lease.spec = Some(self.held_since(acquired, now, transitions));
        self.won(self.api.replace(&settings.name, &PostParams::default(), &lease).await)
    }

    fn held_since(&self, acquired: jiff::Timestamp, renewed: jiff::Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(self.settings.duration.as_secs() as i32),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// A conflict means another replica wrote first: it holds the lease, not us.
    fn won(&self, written: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
        match written {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Waits until this replica holds the lease; false when `stop` turned true first.
    pub async fn acquire(&self, stop: &mut watch::Receiver<bool>) -> bool {
        loop {
            match self.try_acquire().await {
                Ok(true) => return true,
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, lease = %self.settings.name, "cannot read or write the leader lease"),
            }
            tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return false,
                () = tokio::time::sleep(self.settings.retry) => {}
            }
        }
    }

    /// Renews the lease every `retry` period; returns once it is lost: taken by another replica,
    /// or not renewed in time. A renewal counts from when it was sent (another replica sees it
    /// no earlier), and may take what is left of the lease but a `retry` period, so that the work
    /// stops that long before another replica may take over.
    async fn hold(&self) {
        let settings = &self.settings;
        let started = Instant::now();
        loop {
            let renewed = self.held_from.lock().expect("no panics while holding the lock").unwrap_or(started);
            let deadline = renewed + settings.duration.saturating_sub(settings.retry);
            tokio::time::sleep_until((Instant::now() + settings.retry).min(deadline)).await;
            if Instant::now() >= deadline {
                return;
            }
            match tokio::time::timeout_at(deadline, self.try_acquire()).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => return,
                Ok(Err(error)) => tracing::warn!(%error, "cannot renew the leader lease"),
                Err(_) => tracing::warn!("renewing the leader lease took longer than the lease has left"),
            }
        }
    }

    /// Runs `work` while this replica holds the lease, renewing it until `work` ends, a graceful
    /// shutdown's drain included: the caller stops `work` itself, and releases the lease after.
    /// Losing the lease drops `work` at once, reconciles in flight included, so that nothing is
    /// written after another replica may have taken over; returns whether the lease was kept.
    pub async fn lead(&self, work: impl Future<Output = ()>) -> bool {
        tokio::select! {
            () = work => true,
            () = self.hold() => false,
        }
    }

    /// Gives the lease up at shutdown, so another replica takes over at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.settings.name).await else { return };
        let Some(spec) = lease.spec.as_mut().filter(|spec| spec.holder_identity.as_deref() == Some(self.settings.identity.as_str())) else {
            return;
        };
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(error) = self.api.replace(&self.settings.name, &PostParams::default(), &lease).await {
            tracing::warn!(%error, "cannot release the leader lease; another replica takes it when it expires");
        }
    }
}
