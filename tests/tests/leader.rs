//! Leader election against a real API server: a lease its holder renews stays its lease however
//! far the holder's clock is from ours; one left unrenewed is taken after a lease duration by our
//! own clock; the leader's work stops the moment another replica holds the lease; and a leader
//! finishing its work after a stop keeps its lease until it is done.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use metrics_pipeline_e2e::{TestNamespace, kube_client};
use metrics_pipeline_operator::leader::{LeaderElector, LeaseSettings};

const LEASE: &str = "metrics-pipeline-operator";

/// A replica's lease record, renewed now by a clock `behind` ours.
fn held_by(holder: &str, behind: jiff::SignedDuration) -> LeaseSpec {
    let renewed = MicroTime(jiff::Timestamp::now() - behind);
    LeaseSpec {
        holder_identity: Some(holder.into()),
        lease_duration_seconds: Some(2),
        acquire_time: Some(renewed.clone()),
        renew_time: Some(renewed),
        ..LeaseSpec::default()
    }
}

/// Writes `spec` into the lease, as its holder renewing it does.
async fn renew(leases: &Api<Lease>, spec: LeaseSpec) {
    let mut lease = leases.get(LEASE).await.unwrap();
    lease.spec = Some(spec);
    leases.replace(LEASE, &PostParams::default(), &lease).await.unwrap();
}

fn elector(client: kube::Client, namespace: &str) -> LeaderElector {
    replica(client, namespace, "this-replica")
}

fn replica(client: kube::Client, namespace: &str, identity: &str) -> LeaderElector {
    let settings = LeaseSettings::new(namespace.into(), LEASE.into(), identity.into());
    LeaderElector::new(client, LeaseSettings { duration: Duration::from_secs(2), retry: Duration::from_millis(200), ..settings })
}

#[tokio::test]
async fn a_lease_renewed_by_a_replica_whose_clock_is_an_hour_behind_is_kept_until_it_stops_renewing() {
    let client = kube_client().await.unwrap();
    let namespace = TestNamespace::create(&client, "lease-skew").await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace.name);
    let hour = jiff::SignedDuration::from_hours(1);
    let metadata = ObjectMeta { name: Some(LEASE.into()), ..ObjectMeta::default() };
    leases.create(&PostParams::default(), &Lease { metadata, spec: Some(held_by("other-replica", hour)) }).await.unwrap();
    let elector = elector(client.clone(), &namespace.name);

    for _ in 0..3 {
        assert!(!elector.try_acquire().await.unwrap(), "its holder renews it: by our clock its renewTime is an hour old");
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        renew(&leases, held_by("other-replica", hour)).await;
    }
    assert!(!elector.try_acquire().await.unwrap());
    // The holder stops renewing: a lease duration later by this replica's clock, it is ours.
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    assert!(elector.try_acquire().await.unwrap(), "unrenewed for a lease duration");
    let spec = leases.get(LEASE).await.unwrap().spec.unwrap();
    assert_eq!((spec.holder_identity.as_deref(), spec.lease_transitions), (Some("this-replica"), Some(1)));
    namespace.delete().await.unwrap();
}

#[tokio::test]
async fn the_leaders_work_is_dropped_the_moment_another_replica_holds_the_lease() {
    let client = kube_client().await.unwrap();
    let namespace = TestNamespace::create(&client, "lease-lost").await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace.name);
    let elector = elector(client.clone(), &namespace.name);
    assert!(elector.try_acquire().await.unwrap(), "no lease yet: created, and held");

    // The work: a reconcile that keeps writing.
    let writes = Arc::new(AtomicU32::new(0));
    let counting = writes.clone();
    let work = async move {
        loop {
            counting.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let leading = tokio::spawn(async move { elector.lead(work).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(writes.load(Ordering::SeqCst) > 0);

    // Another replica takes the lease (its view of it had expired, say).
    renew(&leases, held_by("other-replica", jiff::SignedDuration::ZERO)).await;
    let kept = tokio::time::timeout(Duration::from_secs(5), leading).await.expect("the next renewal finds it lost").unwrap();
    assert!(!kept, "lost");
    let after = writes.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(writes.load(Ordering::SeqCst), after, "nothing written once the lease is lost");
    namespace.delete().await.unwrap();
}

#[tokio::test]
async fn a_leader_draining_its_reconciles_after_a_stop_keeps_its_lease_until_they_end() {
    let client = kube_client().await.unwrap();
    let namespace = TestNamespace::create(&client, "lease-drain").await.unwrap();
    let elector = elector(client.clone(), &namespace.name);
    assert!(elector.try_acquire().await.unwrap());
    // Stopped: the reconciles in flight finish, which takes longer than two lease durations.
    let draining = async { tokio::time::sleep(Duration::from_secs(5)).await };
    let leading = tokio::spawn(async move { elector.lead(draining).await });
    let rival = replica(client.clone(), &namespace.name, "other-replica");
    for _ in 0..18 {
        assert!(!rival.try_acquire().await.unwrap(), "the draining leader's lease is renewed, so no other replica reconciles beside it");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(leading.await.unwrap(), "kept to the end");
    namespace.delete().await.unwrap();
}
