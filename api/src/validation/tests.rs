use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::config::WindowConfig;
use crate::pipeline::{AdoptSpec, Compression, MetricsPipelineSpec, PartitionMode};

fn target() -> AwsTarget {
    AwsTarget { account_id: "123456789012".into(), default_region: Some("eu-west-1".into()) }
}

fn pipeline(edit: impl FnOnce(&mut MetricsPipelineSpec)) -> MetricsPipeline {
    let mut spec: MetricsPipelineSpec = serde_json::from_str("{}").expect("an empty spec takes every default");
    edit(&mut spec);
    let mut pipeline = MetricsPipeline::new("metrics", spec);
    pipeline.metadata.namespace = Some("team-a".into());
    pipeline
}

/// Asserts that validation fails with exactly one error, on `field`, saying `hint`.
fn assert_rejected(edit: impl FnOnce(&mut MetricsPipelineSpec), field: &str, hint: &str) {
    let errors = validate(&pipeline(edit), &target()).expect_err("the spec should be rejected").0;
    assert_eq!(errors.len(), 1, "expected one error, got {errors:?}");
    assert_eq!(errors[0].field, field);
    assert!(errors[0].message.contains(hint), "{:?} should contain {hint:?}", errors[0].message);
}

#[test]
fn defaults_make_a_valid_pipeline() {
    let config = validate(&pipeline(|_| {}), &target()).expect("defaults are valid");
    assert_eq!(config.region, "eu-west-1");
    assert_eq!(config.input_stream, StreamConfig { capacity: StreamCapacity::Provisioned { shards: 1 }, retention_hours: 24 });
    assert_eq!(
        config.windowing,
        WindowConfig {
            window: Duration::from_secs(60),
            out_of_orderness: Duration::from_secs(10),
            allowed_lateness: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
            max_future_skew: Duration::from_secs(300),
        }
    );
    assert_eq!(config.delivery.buffer_interval_seconds, 60);
    assert_eq!(config.delivery.buffer_size_mib, 64);
    assert_eq!(config.delivery.compression, Compression::Gzip);
    assert_eq!(config.partitions, PartitionConfig::Registered);
    assert_eq!(config.names.input_stream, "team-a-metrics-input");
}

#[test]
fn spec_region_wins_over_the_operator_default() {
    let config = validate(&pipeline(|s| s.region = Some("us-east-2".into())), &target()).unwrap();
    assert_eq!(config.region, "us-east-2");
}

#[test]
fn a_region_is_required_somewhere() {
    let errors = validate(&pipeline(|_| {}), &AwsTarget { default_region: None, ..target() }).unwrap_err().0;
    assert_eq!(errors[0].field, "spec.region");
    assert!(errors[0].message.contains("set spec.region"));
}

#[test]
fn name_prefix_must_be_safe_for_every_aws_name() {
    assert_rejected(|s| s.name_prefix = Some("Team_A".into()), "spec.namePrefix", "lowercase letters, digits and hyphens");
    assert_rejected(|s| s.name_prefix = Some("a".repeat(41)), "spec.namePrefix", "1 to 40");
    assert_rejected(|s| s.name_prefix = Some("-metrics".into()), "spec.namePrefix", "starting and ending");
}

#[test]
fn zero_shards_are_refused() {
    assert_rejected(|s| s.streams.input.shard_count = Some(0), "spec.streams.input.shardCount", "1 to 10000 shards");
}

#[test]
fn on_demand_streams_take_no_shard_count() {
    assert_rejected(
        |s| {
            s.streams.output.capacity_mode = CapacityMode::OnDemand;
            s.streams.output.shard_count = Some(2);
        },
        "spec.streams.output.shardCount",
        "remove shardCount",
    );
    let config = validate(&pipeline(|s| s.streams.output.capacity_mode = CapacityMode::OnDemand), &target()).unwrap();
    assert_eq!(config.output_stream.capacity, StreamCapacity::OnDemand);
}

#[test]
fn retention_must_be_what_kinesis_keeps() {
    assert_rejected(|s| s.streams.input.retention_hours = 12, "spec.streams.input.retentionHours", "24 to 8760");
    assert_rejected(|s| s.streams.output.retention_hours = 9000, "spec.streams.output.retentionHours", "24 to 8760");
}

#[test]
fn bucket_names_follow_the_s3_rules() {
    let field = "spec.delivery.bucketName";
    let cases = [
        ("MyBucket", "no capitals"),
        ("my_bucket", "no underscores"),
        ("ab", "3 to 63"),
        (&"a".repeat(64), "3 to 63"),
        ("-bucket", "start and end with a letter or digit"),
        ("my..bucket", "two dots in a row"),
        ("my.-bucket", "dot next to a hyphen"),
        ("192.168.5.4", "IP address"),
        ("xn--bucket", "`xn--`"),
        ("sthree-bucket", "`sthree-`"),
        ("bucket-s3alias", "`-s3alias`"),
        ("bucket--ol-s3", "`--ol-s3`"),
    ];
    for (bucket, hint) in cases {
        assert_rejected(|s| s.delivery.bucket_name = Some(bucket.to_owned()), field, hint);
    }
    let config = validate(&pipeline(|s| s.delivery.bucket_name = Some("acme.metrics-2021".into())), &target()).unwrap();
    assert_eq!(config.names.bucket, "acme.metrics-2021");
}

#[test]
fn catalog_names_must_be_queryable_by_athena() {
    assert_rejected(|s| s.catalog.database = Some("my-db".into()), "spec.catalog.database", "underscores");
    assert_rejected(|s| s.catalog.table = Some("Metrics".into()), "spec.catalog.table", "lowercase");
}

#[test]
fn durations_must_parse() {
    assert_rejected(|s| s.aggregation.window = "1 minute".into(), "spec.aggregation.window", "not a duration");
    assert_rejected(|s| s.aggregation.out_of_orderness = "5".into(), "spec.aggregation.outOfOrderness", "`5`");
    assert_rejected(|s| s.aggregation.allowed_lateness = "1.5m".into(), "spec.aggregation.allowedLateness", "not a duration");
    assert_rejected(|s| s.aggregation.idle_timeout = "".into(), "spec.aggregation.idleTimeout", "not a duration");
}

#[test]
fn window_length_must_be_between_a_second_and_a_day() {
    assert_rejected(|s| s.aggregation.window = "500ms".into(), "spec.aggregation.window", "1s to 1d");
    assert_rejected(|s| s.aggregation.window = "2d".into(), "spec.aggregation.window", "1s to 1d");
}

#[test]
fn state_holding_durations_are_bounded() {
    assert_rejected(
        |s| {
            s.aggregation.out_of_orderness = "2d".into();
            s.aggregation.idle_timeout = "3d".into();
        },
        "spec.aggregation.outOfOrderness",
        "1d or less",
    );
    assert_rejected(|s| s.aggregation.allowed_lateness = "8d".into(), "spec.aggregation.allowedLateness", "7d or less");
    assert_rejected(
        |s| (s.aggregation.window, s.aggregation.allowed_lateness) = ("1s".into(), "1h".into()),
        "spec.aggregation.allowedLateness",
        "keeps 3600 fired windows of `1s` per key, more than 1440: use at most 1440s",
    );
}

#[test]
fn the_future_skew_is_a_duration_between_a_second_and_a_day() {
    assert_rejected(|s| s.aggregation.max_future_skew = "soon".into(), "spec.aggregation.maxFutureSkew", "not a duration");
    assert_rejected(|s| s.aggregation.max_future_skew = "0s".into(), "spec.aggregation.maxFutureSkew", "use 1s to 1d");
    assert_rejected(|s| s.aggregation.max_future_skew = "2d".into(), "spec.aggregation.maxFutureSkew", "use 1s to 1d");
}

#[test]
fn idle_timeout_must_not_undercut_out_of_orderness() {
    assert_rejected(|s| s.aggregation.idle_timeout = "200ms".into(), "spec.aggregation.idleTimeout", "at least 1s");
    assert_rejected(
        |s| {
            s.aggregation.out_of_orderness = "1m".into();
            s.aggregation.idle_timeout = "30s".into();
        },
        "spec.aggregation.idleTimeout",
        "at least as long as outOfOrderness",
    );
}

#[test]
fn buffering_meets_the_dynamic_partitioning_minimums() {
    assert_rejected(|s| s.delivery.buffer_interval_seconds = 30, "spec.delivery.bufferIntervalSeconds", "60 to 900 seconds");
    assert_rejected(|s| s.delivery.buffer_size_mib = 5, "spec.delivery.bufferSizeMiB", "64 to 128 MiB when dynamic partitioning is on");
    assert_rejected(
        |s| {
            s.delivery.format = DeliveryFormat::Parquet;
            s.delivery.buffer_size_mib = 32;
        },
        "spec.delivery.bufferSizeMiB",
        "Parquet conversion",
    );
}

#[test]
fn the_aggregator_writes_parquet_only() {
    assert_rejected(|s| s.delivery.writer = DeliveryWriter::Aggregator, "spec.delivery.writer", "set format: Parquet, or writer: Firehose");
    let direct = |s: &mut MetricsPipelineSpec| {
        s.delivery.writer = DeliveryWriter::Aggregator;
        s.delivery.format = DeliveryFormat::Parquet;
    };
    assert_eq!(validate(&pipeline(direct), &target()).unwrap().delivery.writer, DeliveryWriter::Aggregator);
}

#[test]
fn expiry_must_be_a_positive_number_of_days() {
    assert_rejected(|s| s.delivery.expire_after_days = Some(0), "spec.delivery.expireAfterDays", "1 or more");
}

#[test]
fn projected_partitions_need_a_clean_component_list() {
    let field = "spec.catalog.partitions.components";
    assert_rejected(|s| s.catalog.partitions.mode = PartitionMode::Projected, field, "needs the list");
    assert_rejected(|s| s.catalog.partitions.components = vec!["user-service".into()], field, "only with mode: Projected");
    fn projected(components: &[&str]) -> impl FnOnce(&mut MetricsPipelineSpec) {
        let components: Vec<String> = components.iter().map(|c| c.to_string()).collect();
        move |s| {
            s.catalog.partitions.mode = PartitionMode::Projected;
            s.catalog.partitions.components = components;
        }
    }
    assert_rejected(projected(&["user-service", "a,b"]), "spec.catalog.partitions.components[1]", "cannot be a partition value");
    assert_rejected(projected(&["a", "a"]), "spec.catalog.partitions.components[1]", "listed twice");
    let config = validate(&pipeline(projected(&["user-service", "order-service"])), &target()).unwrap();
    assert_eq!(config.partitions, PartitionConfig::Projected(vec!["user-service".into(), "order-service".into()]));
}

#[test]
fn one_aggregator_replica_at_most() {
    assert_rejected(|s| s.aggregator.replicas = 2, "spec.aggregator.replicas", "more than once");
}

#[test]
fn an_empty_image_is_refused() {
    assert_rejected(|s| s.aggregator.image = Some(String::new()), "spec.aggregator.image", "leave the field out");
}

#[test]
fn irsa_annotation_must_hold_a_role_arn() {
    let field = "spec.aggregator.serviceAccountAnnotations[eks.amazonaws.com/role-arn]";
    let annotate = |arn: &str| {
        let arn = arn.to_owned();
        move |s: &mut MetricsPipelineSpec| {
            s.aggregator.service_account_annotations.insert("eks.amazonaws.com/role-arn".into(), arn);
        }
    };
    assert_rejected(annotate("my-role"), field, "not an IAM role ARN");
    assert_rejected(annotate("arn:aws:iam::1234:role/x"), field, "12-digit");
    assert!(validate(&pipeline(annotate("arn:aws:iam::123456789012:role/metrics")), &target()).is_ok());
}

#[test]
fn service_account_annotation_keys_must_be_kubernetes_keys() {
    let annotate = |key: &str| {
        let key = key.to_owned();
        move |s: &mut MetricsPipelineSpec| {
            s.aggregator.service_account_annotations.insert(key, "x".into());
        }
    };
    assert_rejected(annotate("team owner"), "spec.aggregator.serviceAccountAnnotations[team owner]", "not a Kubernetes annotation key");
    assert_rejected(annotate("Example.com/owner"), "spec.aggregator.serviceAccountAnnotations[Example.com/owner]", "DNS subdomain");
    assert_rejected(annotate("a/b/c"), "spec.aggregator.serviceAccountAnnotations[a/b/c]", "the name `b/c`");
    assert_rejected(annotate(&"x".repeat(64)), &format!("spec.aggregator.serviceAccountAnnotations[{}]", "x".repeat(64)), "at most 63");
    assert_rejected(annotate("-owner"), "spec.aggregator.serviceAccountAnnotations[-owner]", "starting and ending");
    assert_rejected(annotate("metrics.dev/pipeline"), "spec.aggregator.serviceAccountAnnotations[metrics.dev/pipeline]", "ownership mark");
    for key in ["owner", "team.example.com/cost-center", "eks.amazonaws.com/sts-regional-endpoints", "a_b.c-d"] {
        assert!(validate(&pipeline(annotate(key)), &target()).is_ok(), "{key} is a valid key");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let errors = validate(
        &pipeline(|s| {
            s.streams.input.shard_count = Some(0);
            s.delivery.bucket_name = Some("Bad".into());
            s.aggregation.window = "soon".into();
        }),
        &target(),
    )
    .unwrap_err();
    let fields: Vec<_> = errors.0.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["spec.delivery.bucketName", "spec.streams.input.shardCount", "spec.aggregation.window"]);
    assert!(errors.to_string().starts_with("spec.delivery.bucketName: `Bad`"), "{errors}");
}

#[test]
fn a_toleration_with_a_field_no_toleration_has_is_refused_by_name() {
    // Dropped, `effct` would leave a toleration of every effect, NoExecute included.
    let misspelt = serde_json::json!({"key": "dedicated", "operator": "Equal", "value": "streaming", "effct": "NoSchedule"});
    assert_rejected(
        |spec| spec.aggregator.tolerations = vec![misspelt],
        "spec.aggregator.tolerations[0]",
        "`effct` is not a field of a toleration",
    );
    let valid = serde_json::json!({"key": "dedicated", "operator": "Equal", "value": "streaming", "effect": "NoSchedule"});
    assert!(validate(&pipeline(|spec| spec.aggregator.tolerations = vec![valid]), &target()).is_ok());
}

#[test]
fn an_affinity_with_a_field_no_pod_has_is_refused_by_name() {
    let misspelt = serde_json::json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpresions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}});
    assert_rejected(
        |spec| spec.aggregator.affinity = Some(misspelt),
        "spec.aggregator.affinity",
        "nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpresions",
    );
    let spread = serde_json::json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "metrics-aggregator"}}}}]}});
    let valid = pipeline(|spec| spec.aggregator.affinity = Some(spread));
    assert!(validate(&valid, &target()).is_ok());
}

#[test]
fn an_adoption_names_the_resources_the_pipeline_uses_and_where_the_aggregator_starts() {
    let adopt = AdoptSpec {
        input_stream: Some("legacy-metrics".into()),
        bucket: Some("legacy-archive".into()),
        read_input_from: Some("2026-12-07T10:00:00Z".into()),
        ..AdoptSpec::default()
    };
    let config = validate(&pipeline(|s| s.adopt = Some(adopt)), &target()).unwrap();
    assert_eq!((config.names.input_stream.as_str(), config.names.bucket.as_str()), ("legacy-metrics", "legacy-archive"));
    assert_eq!(config.names.output_stream, "team-a-metrics-output", "a part not named is made as usual");
    assert_eq!(config.read_input_from.map(|from| from.to_string()).as_deref(), Some("2026-12-07T10:00:00.000Z"));
}

#[test]
fn an_adopted_delivery_stream_needs_the_role_it_reads_its_source_with() {
    let adopt =
        AdoptSpec { delivery_stream: Some("legacy-to-s3".into()), output_stream: Some("legacy-aggregates".into()), ..AdoptSpec::default() };
    assert_rejected(|s| s.adopt = Some(adopt), "spec.adopt.firehoseRole", "replacing the delivery stream would lose what it buffers");
    let adopt =
        AdoptSpec { delivery_stream: Some("legacy-to-s3".into()), firehose_role: Some("legacy-role".into()), ..AdoptSpec::default() };
    assert_rejected(|s| s.adopt = Some(adopt), "spec.adopt.outputStream", "name the stream the adopted delivery stream reads");
}

#[test]
fn an_adoption_that_names_a_resource_twice_or_a_start_that_is_no_time_is_refused() {
    let adopt = AdoptSpec { glue_database: Some("legacy".into()), ..AdoptSpec::default() };
    assert_rejected(
        |s| {
            s.adopt = Some(adopt);
            s.catalog.database = Some("other".into());
        },
        "spec.adopt.glueDatabase",
        "leave spec.catalog.database out",
    );
    let adopt = AdoptSpec { read_input_from: Some("yesterday".into()), ..AdoptSpec::default() };
    assert_rejected(|s| s.adopt = Some(adopt), "spec.adopt.readInputFrom", "not an RFC 3339 time");
}

#[test]
fn tags_follow_aws_rules_and_leave_the_operators_own_alone() {
    let with = |pairs: &[(&str, &str)]| {
        let tags: BTreeMap<String, String> = pairs.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect();
        move |spec: &mut MetricsPipelineSpec| spec.tags = tags
    };
    assert!(validate(&pipeline(with(&[("team", "metrics"), ("cost center:EU", "ÉQUIPE + data@x")])), &target()).is_ok());
    assert_rejected(with(&[("aws:createdBy", "me")]), "spec.tags[aws:createdBy]", "reserved");
    assert_rejected(with(&[("metrics.dev/pipeline", "other/p")]), "spec.tags[metrics.dev/pipeline]", "reserved");
    assert_rejected(with(&[("app.kubernetes.io/managed-by", "helm")]), "spec.tags[app.kubernetes.io/managed-by]", "reserved");
    assert_rejected(with(&[("team", "a"), ("Team", "b")]), "spec.tags[team]", "differs from the key `Team` only in case");
    assert_rejected(with(&[("team!", "a")]), "spec.tags[team!]", "letters, digits, spaces");
    let long = "é".repeat(129);
    assert_rejected(with(&[("team", &long)]), "spec.tags[team]", "at most 256 bytes");
    let many: Vec<(String, String)> = (0..47).map(|n| (format!("k{n}"), String::new())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect();
    assert_rejected(with(&many), "spec.tags", "keep at most 46");
}
