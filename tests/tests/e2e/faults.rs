//! The operator while AWS keeps failing: a service that answers only errors costs a number of
//! calls that falls over time (retries back off), not a call every few seconds for as long as
//! the outage lasts, and the pipeline is Ready soon after the service is back.

use std::time::Duration;

use metrics_pipeline_api::pipeline::Phase;
use metrics_pipeline_aws_proxy::{AwsProxy, FaultSettings, ProxySettings, Service, emulator_url};
use metrics_pipeline_e2e::in_process::{OperatorTest, example_named, quick_settings};
use metrics_pipeline_operator::controller::Settings;

/// How long Firehose answers nothing but errors.
const OUTAGE: Duration = Duration::from_secs(45);
/// Firehose calls the operator may make during the outage, SDK retries included. Retries start
/// at a second and double up to 16 s, so about 7 reconciles reach Firehose in 45 s, each making
/// up to 3 attempts (the SDK's standard retries); a fixed one-second retry makes more than 40.
const MOST_CALLS_DURING_OUTAGE: usize = 30;

#[tokio::test]
async fn a_service_that_keeps_failing_is_retried_with_backoff_and_the_pipeline_recovers_when_it_is_back() {
    let moto = emulator_url().expect("run `scripts/dev-env up` and `. .dev-env/env`");
    let firehose_down = FaultSettings { error_rate: 1.0, scope: vec!["firehose".parse().unwrap()], ..FaultSettings::none() };
    let proxy = AwsProxy::start(&moto, ProxySettings { faults: firehose_down, ..ProxySettings::default() }).await.unwrap();
    let settings = Settings { retry_base: Duration::from_secs(1), retry_cap: Duration::from_secs(16), ..quick_settings() };
    let test = OperatorTest::start_with("faults", Some(proxy.endpoint().to_owned()), settings).await;
    test.apply(&example_named("minimal.yaml", "outage")).await;

    let status = test
        .wait_for("outage", "DeliveryReady False for the outage", |s| {
            s.conditions.iter().any(|c| c.type_ == "DeliveryReady" && c.status == "False" && c.reason == "AwsUnavailable")
        })
        .await;
    assert_ne!(status.phase, Some(Phase::Failed), "an outage is waited out, not a failure: {status:#?}");
    let firehose_calls = || proxy.stats().calls.iter().filter(|call| call.service == Service::Firehose).count();
    let before = firehose_calls();
    tokio::time::sleep(OUTAGE).await;
    let during = firehose_calls() - before;
    assert!(
        during <= MOST_CALLS_DURING_OUTAGE,
        "{during} Firehose calls in {OUTAGE:?} of outage, at most {MOST_CALLS_DURING_OUTAGE} expected: {:#?}",
        proxy.stats().summary()
    );
    assert!(during > 0, "the operator kept trying");

    proxy.set_faults(FaultSettings::none()).unwrap();
    test.wait_for("outage", "Ready once Firehose is back", |s| s.phase == Some(Phase::Ready)).await;
    test.delete_and_check("outage").await;
    test.finish().await;
}
