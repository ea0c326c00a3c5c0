//! The `aws-proxy` binary as `scripts/dev-env up` runs it: flags and `AWS_FAULTS` for the first
//! settings, the HTTP control endpoint under `/_proxy/` for changes and stats.

mod common;

use std::time::Duration;

use aws_sdk_kinesis::error::ProvideErrorMetadata;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use metrics_pipeline_aws_proxy::{emulator_url, sdk_config_for};
use metrics_pipeline_test_support::{free_port, terminate, wait_for};

/// Sends a control request; the status and the body as JSON (or text).
async fn control(endpoint: &str, method: Method, path: &str, body: &str) -> Result<(u16, serde_json::Value), String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = Request::builder().method(method).uri(format!("{endpoint}{path}")).body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let response = client.request(request).await.map_err(|error| error.to_string())?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|error| error.to_string())?.to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or_else(|_| String::from_utf8_lossy(&body).into())))
}

#[tokio::test]
async fn the_binary_starts_with_its_flags_and_changes_over_http() {
    let endpoint = format!("http://127.0.0.1:{}", free_port().unwrap());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_aws-proxy"))
        .args(["--upstream", &emulator_url().expect("AWS_ENDPOINT_URL is not set: run `scripts/dev-env up`")])
        .args(["--listen", endpoint.trim_start_matches("http://"), "--scope", "kinesis:ListStreams", "--seed", "3"])
        .env("AWS_FAULTS", "throttle=0.5,iam-propagation=2s")
        .env("LOG_LEVEL", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (status, faults) =
        wait_for("the proxy to listen", Duration::from_secs(20), async || control(&endpoint, Method::GET, "/_proxy/faults", "").await)
            .await
            .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        (faults["throttleRate"].as_f64(), faults["seed"].as_u64(), &faults["scope"]),
        (Some(0.5), Some(3), &serde_json::json!(["Kinesis:ListStreams"]))
    );
    assert_eq!(control(&endpoint, Method::GET, "/_proxy/rules", "").await.unwrap().1["iamPropagationMs"], 2000);

    let (status, settings) = control(&endpoint, Method::PUT, "/_proxy/settings", "throttle=1,hold=bucket/held/").await.unwrap();
    assert_eq!((status, settings["holds"].clone()), (200, serde_json::json!([{ "bucket": "bucket", "prefix": "held/" }])));
    let config = sdk_config_for(&endpoint).await;
    let kinesis = aws_sdk_kinesis::Client::new(&common::without_retries(&config));
    assert_eq!(kinesis.list_streams().send().await.unwrap_err().code(), Some("LimitExceededException"));
    assert!(kinesis.list_shards().stream_name("absent").send().await.unwrap_err().code() == Some("ResourceNotFoundException"));

    let (_, stats) = control(&endpoint, Method::GET, "/_proxy/stats", "").await.unwrap();
    let operations = stats["operations"].as_array().unwrap();
    let summary = |operation: &str| operations.iter().find(|summary| summary["operation"] == operation).cloned().unwrap_or_default();
    assert_eq!((summary("ListStreams")["calls"].as_u64(), summary("ListStreams")["throttled"].as_u64()), (Some(1), Some(1)));
    assert_eq!(summary("ListShards")["forwarded"].as_u64(), Some(1));
    let (_, calls) = control(&endpoint, Method::GET, "/_proxy/calls", "").await.unwrap();
    assert_eq!(calls["calls"][0]["outcome"], serde_json::json!({ "kind": "injected", "fault": "Throttle" }));

    let (status, refused) = control(&endpoint, Method::PUT, "/_proxy/settings", "throttle=1.5").await.unwrap();
    assert_eq!((status, refused["error"].as_str()), (400, Some("throttle=1.5 is not a fraction between 0 and 1")));
    let (status, missing) = control(&endpoint, Method::GET, "/_proxy/nothing", "").await.unwrap();
    assert!(status == 404 && missing["endpoints"].as_str().unwrap().contains("/_proxy/faults"), "{missing}");
    assert!(terminate(&mut child, Duration::from_secs(5)).await.is_some_and(|status| status.success()));
}
