//! Many pipelines within the account's request rates: through the AWS proxy enforcing AWS's
//! documented per-account rates (Kinesis and Firehose control planes), twenty pipelines made at
//! once, reconciled all again after a restart and deleted at once never get throttled, because
//! the operator paces its calls below those rates and bounds its concurrent reconciles.

use std::time::Duration;

use futures::future::join_all;
use metrics_pipeline_aws_proxy::{AwsProxy, Outcome, ProxySettings, Rule, RuleSettings, emulator_url};
use metrics_pipeline_e2e::in_process::{OperatorTest, delete_and_wait, example_named, quick_settings};
use metrics_pipeline_test_support::wait_for;

const PIPELINES: usize = 20;

#[tokio::test]
async fn twenty_pipelines_made_restarted_and_deleted_at_once_stay_within_the_accounts_request_rates() {
    let rules = RuleSettings { quotas: true, ..RuleSettings::default() };
    let moto = emulator_url().expect("run `. /work/main/.dev-env/env` (AWS_ENDPOINT_URL)");
    let proxy = AwsProxy::start(&moto, ProxySettings { rules, ..ProxySettings::default() }).await.unwrap();
    let mut test = OperatorTest::start_with("quotas", Some(proxy.endpoint().to_owned()), quick_settings()).await;
    let names: Vec<String> = (0..PIPELINES).map(|i| format!("p{i}")).collect();
    for name in &names {
        let mut pipeline = example_named("minimal.yaml", name);
        pipeline.spec.aggregator.replicas = 0;
        // A region of their own: the quotas are per region, and so is moto's 50 delivery streams.
        pipeline.spec.region = Some("eu-north-1".into());
        test.apply(&pipeline).await;
    }
    for name in &names {
        test.ready(name).await;
    }
    let throttled = |proxy: &AwsProxy| proxy.stats().count(|call| call.outcome == Outcome::Refused { rule: Rule::Quota });
    assert_eq!(throttled(&proxy), 0, "making them: {:#?}", proxy.stats().summary());

    // A restart (or a new leader) reconciles every pipeline at once.
    test.stop_operator().await;
    test.start_operator().await;
    wait_for("every pipeline reconciled again", Duration::from_secs(120), async || {
        let reconciles = test.operator().reconciles();
        if reconciles >= PIPELINES as f64 { Ok(()) } else { Err(format!("{reconciles} reconciles")) }
    })
    .await
    .unwrap();
    assert_eq!(throttled(&proxy), 0, "after the restart: {:#?}", proxy.stats().summary());

    join_all(names.iter().map(|name| delete_and_wait(&test.pipelines, name))).await;
    assert_eq!(throttled(&proxy), 0, "deleting them: {:#?}", proxy.stats().summary());
    assert!(proxy.stats().calls(metrics_pipeline_aws_proxy::Service::Kinesis, "ListTagsForStream") > 0, "the proxy saw the calls");
    test.finish().await;
}
