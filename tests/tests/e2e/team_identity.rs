//! One AWS identity per team: an administrator annotates each namespace with the IAM role its
//! pipelines act as, the regions they may use and a ceiling on their shards. With moto enforcing
//! the policies of assumed roles, each team's pipeline comes up with its role, and a pipeline of
//! one team that names another team's bucket is refused by AWS itself (not by the operator's tags,
//! which the role would have passed over); a region or shards beyond the namespace's allowance are
//! refused before any AWS call.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use metrics_pipeline_api::namespace::{MAX_SHARDS_ANNOTATION, REGIONS_ANNOTATION, ROLE_ANNOTATION};
use metrics_pipeline_api::pipeline::{DeletionPolicy, Phase};
use metrics_pipeline_api::{MetricsPipeline, MetricsPipelineStatus};
use metrics_pipeline_e2e::emulator_sdk;
use metrics_pipeline_e2e::in_process::{OperatorTest, condition, delete_and_wait, example_named, quick_settings};
use metrics_pipeline_runtime::sdk::s3_client;

/// An IAM role a team's pipelines act as: everything the operator does, but S3 only on buckets
/// named after the team's namespace.
async fn team_role(namespace: &str) -> String {
    let iam = aws_sdk_iam::Client::new(&emulator_sdk().await);
    // Trusting the operator's and the aggregators' identities by name (moto does not read `root`
    // as the whole account).
    let trusted = PROGRAMS.map(|user| format!("arn:aws:iam::123456789012:user/{user}"));
    let trust = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Principal": {"AWS": trusted}, "Action": "sts:AssumeRole"}]});
    let role = iam.create_role().role_name(namespace).assume_role_policy_document(trust.to_string()).send().await.unwrap();
    let grants = serde_json::json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["kinesis:*", "firehose:*", "glue:*", "iam:*", "s3:ListAllMyBuckets"], "Resource": "*"},
        {"Effect": "Allow", "Action": "s3:*",
         "Resource": [format!("arn:aws:s3:::{namespace}-*"), format!("arn:aws:s3:::{namespace}-*/*")]}]});
    let policy = iam.put_role_policy().role_name(namespace).policy_name("pipelines").policy_document(grants.to_string());
    policy.send().await.unwrap();
    role.role.unwrap().arn
}

/// What an administrator grants the operator and the aggregators besides their shipped policies:
/// assuming the teams' roles.
async fn let_the_programs_assume(roles: &[String]) {
    let iam = aws_sdk_iam::Client::new(&emulator_sdk().await);
    let grant =
        serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": roles}]});
    for user in PROGRAMS {
        let policy = iam.put_user_policy().user_name(user).policy_name(format!("assume-{}", std::process::id()));
        policy.policy_document(grant.to_string()).send().await.unwrap();
    }
}

/// An explicit Deny of the aggregators' own identity on team `namespace`'s buckets: what an
/// aggregator writes there it writes as the team's role, whose sessions that Deny does not reach.
async fn deny_the_aggregators_own_identity(namespace: &str) {
    let iam = aws_sdk_iam::Client::new(&emulator_sdk().await);
    let deny = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "s3:*",
        "Resource": [format!("arn:aws:s3:::{namespace}-*"), format!("arn:aws:s3:::{namespace}-*/*")]}]});
    let policy = iam.put_user_policy().user_name(PROGRAMS[1]).policy_name(format!("deny-{namespace}"));
    policy.policy_document(deny.to_string()).send().await.unwrap();
}

/// The IAM users the operator and the aggregators act as (`scripts/aws-identities`).
const PROGRAMS: [&str; 2] = ["metrics-pipeline-operator", "metrics-pipeline-aggregator"];

async fn annotate(test: &OperatorTest, annotations: BTreeMap<&str, String>) {
    let namespaces: Api<Namespace> = Api::all(test.client.clone());
    let patch = serde_json::json!({"metadata": {"annotations": annotations}});
    namespaces.patch(&test.namespace.name, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
}

/// The smallest pipeline, its aggregator paused (no pod to wait for).
fn paused(name: &str) -> MetricsPipeline {
    let mut pipeline = example_named("minimal.yaml", name);
    pipeline.spec.aggregator.replicas = 0;
    pipeline
}

async fn refused(test: &OperatorTest, name: &str) -> (String, String) {
    let status = test.wait_for(name, "Failed", |s| s.phase == Some(Phase::Failed)).await;
    let (_, reason, message) = condition(&status, "Ready").unwrap();
    (reason.to_owned(), message.to_owned())
}

#[tokio::test]
async fn each_team_acts_with_its_own_role_within_its_regions_and_shards_and_cannot_touch_another_teams_bucket() {
    let (team_a, team_b) = (
        OperatorTest::start_with("team-a", None, quick_settings()).await,
        OperatorTest::start_with("team-b", None, quick_settings()).await,
    );
    let roles = [team_role(&team_a.namespace.name).await, team_role(&team_b.namespace.name).await];
    for (team, role) in [(&team_a, &roles[0]), (&team_b, &roles[1])] {
        let allowances = BTreeMap::from([
            (ROLE_ANNOTATION, role.clone()),
            (REGIONS_ANNOTATION, "eu-west-1".into()),
            (MAX_SHARDS_ANNOTATION, "4".into()),
        ]);
        annotate(team, allowances).await;
    }

    // Until the operator may assume the role, the condition says what to allow.
    team_a.apply(&paused("metrics")).await;
    let status = team_a.wait_for("metrics", "the role refused", |s| s.phase == Some(Phase::Failed)).await;
    let (_, reason, message) = condition(&status, "Ready").unwrap();
    assert_eq!(reason, "AwsRefused", "{message}");
    assert!(message.contains(&format!("assuming IAM role {}: AccessDenied: the operator may not assume it", roles[0])), "{message}");
    let_the_programs_assume(&roles).await;
    deny_the_aggregators_own_identity(&team_a.namespace.name).await;

    // Each team's pipeline comes up with its role (A's at its next look: a spec change), and A's
    // aggregator runs as the role too: its checkpoint goes to a bucket only the role may write.
    let mut retried = example_named("minimal.yaml", "metrics");
    retried.spec.streams.input.retention_hours = 25;
    team_a.apply(&retried).await;
    team_b.apply(&paused("metrics")).await;
    let status_a = team_a.ready("metrics").await;
    let bucket_a = status_a.bucket.unwrap().name;
    let deployments: Api<Deployment> = Api::namespaced(team_a.client.clone(), &team_a.namespace.name);
    let deployment = deployments.get("metrics-aggregator").await.unwrap();
    let env = deployment.spec.unwrap().template.spec.unwrap().containers[0].env.clone().unwrap_or_default();
    let assumed = env.iter().find(|var| var.name == "AGGREGATOR_ASSUME_ROLE_ARN").and_then(|var| var.value.clone());
    assert_eq!(assumed.as_ref(), Some(&roles[0]));
    let s3 = s3_client(&emulator_sdk().await);
    s3.head_object().bucket(&bucket_a).key("_aggregator/checkpoint.json").send().await.expect("the aggregator checkpointed as the role");
    let bucket_b = team_b.ready("metrics").await.bucket.unwrap().name;

    // Team A naming team B's bucket: its role may not even look at it. Both ways.
    for (team, other_bucket) in [(&team_a, &bucket_b), (&team_b, &bucket_a)] {
        let tags_before = s3.get_bucket_tagging().bucket(other_bucket).send().await.unwrap().tag_set().to_vec();
        let mut intruder = paused("intruder");
        intruder.spec.delivery.bucket_name = Some(other_bucket.clone());
        // Its deletion must not ask for the bucket it may not see.
        intruder.spec.deletion_policy = DeletionPolicy::Retain;
        team.apply(&intruder).await;
        let status = team
            .wait_for("intruder", "the bucket refused", |s| s.conditions.iter().any(|c| c.type_ == "BucketReady" && c.status == "False"))
            .await;
        let (_, reason, message) = condition(&status, "BucketReady").unwrap();
        assert_eq!(reason, "AwsRefused", "AWS refuses the role, not the operator's tags: {message}");
        assert!(message.contains("AccessDenied") && message.contains(other_bucket.as_str()), "{message}");
        let tags_after = s3.get_bucket_tagging().bucket(other_bucket).send().await.unwrap().tag_set().to_vec();
        assert_eq!(tags_after, tags_before, "the other team's bucket is untouched");
        delete_and_wait(&team.pipelines, "intruder").await;
    }

    // What the namespace does not allow is refused before any AWS call, naming the allowance.
    let mut abroad = paused("abroad");
    abroad.spec.region = Some("us-east-1".into());
    team_a.apply(&abroad).await;
    let (reason, message) = refused(&team_a, "abroad").await;
    assert_eq!(reason, "InvalidSpec");
    assert!(message.contains("spec.region: `us-east-1` is not a region namespace") && message.contains(REGIONS_ANNOTATION), "{message}");
    let mut greedy = paused("greedy");
    greedy.spec.streams.input.shard_count = Some(2);
    team_a.apply(&greedy).await;
    let (_, message) = refused(&team_a, "greedy").await;
    assert!(message.contains("the streams ask 3 shard(s), and namespace") && message.contains("hold 2 (metrics 2)"), "{message}");

    // The ceiling counts what every other pipeline holds, the newer included: lowered to fit,
    // `greedy` is let through, and then the oldest may not grow over it; refused, it keeps what
    // it holds, and `greedy` keeps counting it.
    greedy.spec.streams.input.shard_count = Some(1);
    team_a.apply(&greedy).await;
    assert_eq!(team_a.ready("greedy").await.shards, Some(2));
    let mut grown = retried.clone();
    grown.spec.streams.input.shard_count = Some(2);
    team_a.apply(&grown).await;
    let refused_growth = |s: &MetricsPipelineStatus| s.conditions.iter().any(|c| c.type_ == "Ready" && c.reason == "InvalidSpec");
    let status = team_a.wait_for("metrics", "its growth refused", refused_growth).await;
    let (_, _, message) = condition(&status, "Ready").unwrap();
    assert!(message.contains("the streams ask 3 shard(s)") && message.contains("hold 2 (greedy 2)"), "{message}");
    assert_eq!(status.shards, Some(2), "the streams keep their shards");
    team_a.apply(&retried).await;
    team_a.ready("metrics").await;
    delete_and_wait(&team_a.pipelines, "greedy").await;

    let namespace_a = team_a.namespace.name.clone();
    for team in [team_a, team_b] {
        team.delete_and_check("metrics").await;
        team.finish().await;
    }
    let iam = aws_sdk_iam::Client::new(&emulator_sdk().await);
    for user in PROGRAMS {
        iam.delete_user_policy().user_name(user).policy_name(format!("assume-{}", std::process::id())).send().await.unwrap();
    }
    iam.delete_user_policy().user_name(PROGRAMS[1]).policy_name(format!("deny-{}", namespace_a)).send().await.unwrap();
}
