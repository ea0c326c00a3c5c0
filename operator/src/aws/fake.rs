//! A stand-in AWS endpoint for unit tests: answers each call by its operation with a canned
//! response (or, for paging, the next of several) and records which operations were called with
//! which body, so a test can make AWS answer what the emulator never does (throttling, a refusal,
//! a second page) at one exact step.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{AwsCalls, AwsClients};
use crate::managed::Owner;

/// The owner of the unit tests' pipeline `team-a/p`; its tags in Kinesis's and Firehose's JSON.
pub fn owner() -> Owner {
    Owner::named("team-a/p", "u-1", "c-1")
}

pub const OWNER_TAGS_JSON: &str = r#"[{"Key":"metrics.dev/pipeline","Value":"team-a/p"},{"Key":"metrics.dev/pipeline-uid","Value":"u-1"},{"Key":"metrics.dev/cluster","Value":"c-1"}]"#;

/// An SDK configuration for eu-west-1 with test credentials, calling `endpoint`.
pub fn sdk_at(endpoint: &str) -> aws_config::SdkConfig {
    let credentials = aws_sdk_kinesis::config::Credentials::for_tests();
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("eu-west-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_kinesis::config::SharedCredentialsProvider::new(credentials))
        .build()
}

/// An HTTP status and a JSON body.
pub type Answer = (u16, &'static str);

pub struct FakeAws {
    pub clients: AwsClients,
    /// What the clients count of their calls.
    pub calls: AwsCalls,
    /// `(operation, request body)` of every call, in order.
    requests: Arc<Mutex<Vec<(String, String)>>>,
}

impl FakeAws {
    /// Serves the JSON protocols (Kinesis, Firehose, Glue): `answers` maps an operation, as the
    /// `X-Amz-Target` header names it after the dot, to its answer; others get a 500.
    pub async fn start(answers: BTreeMap<&'static str, Answer>) -> Self {
        Self::start_in_turn(answers.into_iter().map(|(operation, answer)| (operation, vec![answer])).collect()).await
    }

    /// As [`start`](Self::start), with several answers per operation: each call gets the next,
    /// and the last one answers every call after it.
    pub async fn start_in_turn(answers: BTreeMap<&'static str, Vec<Answer>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
        let record = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut buffer = [0u8; 8192];
                // One request per connection: read until the headers and the body they announce are in.
                loop {
                    let read = stream.read(&mut buffer).await.unwrap_or(0);
                    request.extend_from_slice(&buffer[..read]);
                    let text = String::from_utf8_lossy(&request).into_owned();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else { if read == 0 { break } else { continue } };
                    let length = header(head, "content-length").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
                    if body.len() >= length || read == 0 {
                        let operation = header(head, "x-amz-target").and_then(|t| t.split('.').nth(1)).unwrap_or("?").to_owned();
                        let turn = {
                            let mut requests = record.lock().unwrap();
                            requests.push((operation.clone(), body.to_owned()));
                            requests.iter().filter(|(called, _)| *called == operation).count() - 1
                        };
                        let (status, body) = answers
                            .get(operation.as_str())
                            .and_then(|answers| answers.get(turn).or(answers.last()))
                            .copied()
                            .unwrap_or((500, r#"{"__type":"InternalFailure"}"#));
                        let response = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(response.as_bytes()).await;
                        break;
                    }
                }
            }
        });
        let sdk = sdk_at(&endpoint).to_builder().http_client(metrics_pipeline_runtime::sdk::http_client()).build();
        let calls = AwsCalls::default();
        Self { clients: AwsClients::new(&sdk, "eu-west-1", &calls), calls, requests }
    }

    /// The operations called so far, in order.
    pub fn called(&self) -> Vec<String> {
        self.requests.lock().unwrap().iter().map(|(operation, _)| operation.clone()).collect()
    }

    /// The request bodies of `operation`'s calls so far, in order.
    pub fn bodies(&self, operation: &str) -> Vec<String> {
        self.requests.lock().unwrap().iter().filter(|(called, _)| called == operation).map(|(_, body)| body.clone()).collect()
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().filter_map(|line| line.split_once(':')).find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.trim())
}
