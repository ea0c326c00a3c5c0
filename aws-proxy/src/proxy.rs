//! The server: each request is identified, given its fault (if any), checked against AWS's
//! rules, forwarded to the emulator, and recorded.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use aws_config::Region;
use aws_sdk_kinesis::error::DisplayErrorContext;
use aws_sdk_kinesis::types::StreamMode;
use aws_sdk_s3::types::{Tag, Tagging};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::http::request::Parts;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::control;
use crate::faults::{Fault, FaultSettings, FaultStreams, server_error, throttling_error};
use crate::protocol::{AwsError, Call, Service, bucket_and_key, form_value, identify};
use crate::rules::RuleSettings;
use crate::rules::iam_propagation::{self, Propagation};
use crate::rules::object_hold::{self, Hold, ResultEntry};
use crate::rules::quotas::Quotas;
use crate::rules::shard_count::{self, ScalingHistory, UpdateShardCount};
use crate::rules::tags_on_create;
use crate::rules::transitions::{self, Transitions};
use crate::settings::ProxySettings;
use crate::stats::{CallRecord, Outcome, Recorder, Rule, Stats};

/// Headers that belong to one connection, not to the request or answer.
const HOP_BY_HOP: [&str; 7] = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

/// What the proxy is told and remembers, behind one lock held only briefly (never across I/O).
pub(crate) struct State {
    pub faults: FaultStreams,
    pub rules: RuleSettings,
    pub holds: Vec<Hold>,
    pub recorder: Recorder,
    scalings: ScalingHistory,
    propagation: Propagation,
    transitions: Transitions,
    quotas: Quotas,
}

pub(crate) struct Shared {
    upstream: String,
    client: Client<HttpConnector, Full<Bytes>>,
    /// For the proxy's own calls to the emulator; the region is set per call.
    kinesis: aws_sdk_kinesis::Config,
    s3: aws_sdk_s3::Config,
    /// Held for writing while a CreateBucket and its tags are carried out, for reading by bucket
    /// tag reads: none sees a bucket between the two, as none can on AWS.
    creating_tagged: tokio::sync::RwLock<()>,
    account_id: String,
    state: Mutex<State>,
    next_request_id: AtomicU64,
}

/// What can change while the proxy runs.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct InForce {
    pub faults: FaultSettings,
    pub rules: RuleSettings,
    pub holds: Vec<Hold>,
}

/// The answer to a call, and what to record about it.
struct Handled {
    response: Response<Bytes>,
    outcome: Outcome,
    held_keys: usize,
}

impl Handled {
    fn succeeded(&self) -> bool {
        matches!(self.outcome, Outcome::Forwarded { status } if (200..300).contains(&status))
    }
}

/// Makes hyper close the connection without answering: a failed service future ends it.
#[derive(Debug)]
pub(crate) struct CloseWithoutAnswer;

impl fmt::Display for CloseWithoutAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection closed without an answer")
    }
}

impl std::error::Error for CloseWithoutAnswer {}

impl Shared {
    pub fn new(upstream: &str, settings: ProxySettings, (kinesis, s3): (aws_sdk_kinesis::Config, aws_sdk_s3::Config)) -> Self {
        let state = State {
            faults: FaultStreams::new(settings.faults),
            rules: settings.rules,
            holds: settings.holds,
            recorder: Recorder::default(),
            scalings: ScalingHistory::default(),
            quotas: Quotas::default(),
            transitions: Transitions::default(),
            propagation: Propagation::default(),
        };
        Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            kinesis,
            s3,
            creating_tagged: tokio::sync::RwLock::new(()),
            account_id: settings.account_id,
            state: Mutex::new(state),
            next_request_id: AtomicU64::new(1),
        }
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn set_faults(&self, faults: FaultSettings) -> Result<(), String> {
        faults.validate()?;
        self.lock().faults = FaultStreams::new(faults);
        Ok(())
    }

    /// The settings in force.
    pub fn in_force(&self) -> InForce {
        let state = self.lock();
        InForce { faults: state.faults.settings().clone(), rules: state.rules.clone(), holds: state.holds.clone() }
    }

    /// Applies the one-line form (`throttle=0.1,seed=3`) to the settings in force.
    pub fn apply_spec(&self, spec: &str) -> Result<(), String> {
        let InForce { faults, rules, holds } = self.in_force();
        let mut settings = ProxySettings { faults, rules, holds, ..ProxySettings::default() };
        settings.apply_spec(spec)?;
        let mut state = self.lock();
        state.faults = FaultStreams::new(settings.faults);
        state.rules = settings.rules;
        state.holds = settings.holds;
        Ok(())
    }

    pub fn stats(&self) -> Stats {
        self.lock().recorder.snapshot()
    }

    fn request_id(&self) -> String {
        format!("proxy-{:016x}", self.next_request_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Answers one request; an error closes the connection without an answer.
    async fn handle(&self, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, CloseWithoutAnswer> {
        let (parts, body) = request.into_parts();
        let body = body.collect().await.map_err(|_| CloseWithoutAnswer)?.to_bytes();
        if parts.uri.path().starts_with(control::PREFIX) {
            return Ok(control::handle(self, &parts, &body).map(Full::new));
        }
        let call = identify(&parts.method, &parts.uri, &parts.headers, &body);
        let arrived = SystemTime::now();
        let decision = self.lock().faults.next(&call);
        if let Some(delay) = decision.delay {
            tokio::time::sleep(delay).await;
        }
        let (answer, mut record) = match decision.fault {
            None => {
                let handled = self.answer(&call, &parts, body).await;
                let mut record = CallRecord::new(&call, arrived, handled.outcome);
                record.held_keys = handled.held_keys;
                (Some(handled.response), record)
            }
            Some(fault @ Fault::Throttle) => {
                (Some(self.error(&call, &throttling_error(&call, &self.account_id))), injected(&call, arrived, fault))
            }
            Some(fault @ (Fault::InternalError | Fault::Unavailable)) => {
                (Some(self.error(&call, &server_error(&call, fault))), injected(&call, arrived, fault))
            }
            Some(fault @ Fault::Drop) => (None, injected(&call, arrived, fault)),
            Some(fault @ Fault::LostAnswer) => {
                self.answer(&call, &parts, body).await;
                (None, injected(&call, arrived, fault))
            }
        };
        record.delayed_ms = decision.delay.map_or(0, |delay| u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        tracing::debug!(service = %call.service, operation = %call.operation, resource = ?call.resource, outcome = ?record.outcome, "call");
        self.lock().recorder.record(record);
        answer.map(|response| response.map(Full::new)).ok_or(CloseWithoutAnswer)
    }

    /// Answers a call no fault took: the account's request rates, AWS's rules, then the emulator, then the transition the
    /// call starts or the transitional status it reads.
    async fn answer(&self, call: &Call, parts: &Parts, body: Bytes) -> Handled {
        let within_quota = {
            let mut state = self.lock();
            !state.rules.quotas || state.quotas.admit(call, Instant::now())
        };
        if !within_quota {
            return self.refuse(call, &throttling_error(call, &self.account_id), Rule::Quota);
        }
        if transitions::needs_active(call)
            && let Some(status) = self.lock().transitions.status(call, Instant::now())
        {
            return self.refuse(call, &transitions::not_active(call, status, &self.account_id), Rule::Transition);
        }
        let mut handled = self.apply_rules(call, parts, body).await;
        if !handled.succeeded() {
            return handled;
        }
        let mut state = self.lock();
        let duration = state.rules.transition;
        if let Some(status) = transitions::begins(call).filter(|_| !duration.is_zero()) {
            state.transitions.begin(call, status, Instant::now(), duration);
        }
        let reported = transitions::status_field(call).zip(state.transitions.status(call, Instant::now()));
        if let Some(body) = reported.and_then(|(field, status)| transitions::with_status(handled.response.body(), field, status)) {
            set_body(&mut handled.response, body.into());
        }
        handled
    }

    /// Applies the rule that governs `call`, if any, and forwards what it lets through.
    async fn apply_rules(&self, call: &Call, parts: &Parts, body: Bytes) -> Handled {
        let operation = call.operation.as_str();
        match call.service {
            Service::Kinesis if operation == "UpdateShardCount" => self.update_shard_count(call, parts, body).await,
            Service::Firehose if iam_propagation::ROLE_USES.contains(&operation) => {
                let refusal = {
                    let mut state = self.lock();
                    let delay = state.rules.iam_propagation;
                    state.propagation.check(&body, delay, Instant::now())
                };
                match refusal {
                    Some(error) => self.refuse(call, &error, Rule::IamPropagation),
                    None => self.forward(call, parts, body).await,
                }
            }
            Service::Iam if iam_propagation::ROLE_CHANGES.contains(&operation) => {
                let handled = self.forward(call, parts, body.clone()).await;
                if handled.succeeded()
                    && let Some(role) = form_value(&body, "RoleName")
                {
                    self.lock().propagation.role_changed(&role, Instant::now());
                }
                handled
            }
            Service::S3 if operation == "CreateBucket" => self.create_bucket(call, parts, body).await,
            Service::Kinesis if operation == "CreateStream" => self.create_stream(call, parts, body).await,
            Service::Kinesis if operation == "ListTagsForStream" => {
                let _no_creation_halfway = self.creating_tagged.read().await;
                self.forward(call, parts, body).await
            }
            Service::S3 if operation == "GetBucketTagging" => {
                let _no_creation_halfway = self.creating_tagged.read().await;
                self.forward(call, parts, body).await
            }
            Service::S3 if operation == "DeleteObjects" => self.delete_objects(call, parts, body).await,
            Service::S3 if operation == "DeleteObject" => {
                let (bucket, key) = bucket_and_key(&parts.uri);
                let key = key.map(|key| percent_encoding::percent_decode_str(key).decode_utf8_lossy().into_owned()).unwrap_or_default();
                if object_hold::is_held(&self.lock().holds, bucket.unwrap_or_default(), &key) {
                    self.refuse(call, &object_hold::delete_object_refusal(), Rule::ObjectHold)
                } else {
                    self.forward(call, parts, body).await
                }
            }
            _ => self.forward(call, parts, body).await,
        }
    }

    /// Refuses an UpdateShardCount beyond ×2 or ½ of the stream's open shards (asked of the
    /// emulator first), or past the daily number of scalings.
    async fn update_shard_count(&self, call: &Call, parts: &Parts, body: Bytes) -> Handled {
        let Ok(request) = serde_json::from_slice::<UpdateShardCount>(&body) else { return self.forward(call, parts, body).await };
        let region =
            call.region.clone().or_else(|| self.kinesis.region().map(|region| region.to_string())).unwrap_or_else(|| "us-east-1".into());
        let client = aws_sdk_kinesis::Client::from_conf(self.kinesis.to_builder().region(Region::new(region)).build());
        let described = client
            .describe_stream_summary()
            .set_stream_name(request.stream_name.clone())
            .set_stream_arn(request.stream_arn.clone())
            .send()
            .await;
        // A stream the emulator does not know, or an on-demand one: the emulator gives the answer.
        let summary = described.ok().and_then(|output| output.stream_description_summary);
        let Some(summary) =
            summary.filter(|summary| summary.stream_mode_details().map(|mode| mode.stream_mode()) != Some(&StreamMode::OnDemand))
        else {
            return self.forward(call, parts, body).await;
        };
        let arn = summary.stream_arn().to_owned();
        let account = arn.split(':').nth(4).unwrap_or(&self.account_id).to_owned();
        let open_shards = summary.open_shard_count().try_into().unwrap_or(0);
        let refusal = {
            let mut state = self.lock();
            let recent = state.scalings.recent(&arn, Instant::now());
            shard_count::refusal(
                open_shards,
                request.target_shard_count,
                recent,
                state.rules.scalings_per_day,
                summary.stream_name(),
                &account,
            )
        };
        if let Some(error) = refusal {
            return self.refuse(call, &error, Rule::ShardCount);
        }
        let handled = self.forward(call, parts, body).await;
        if handled.succeeded() {
            self.lock().scalings.record(&arn, Instant::now());
        }
        handled
    }

    /// Forwards CreateBucket and, when it made the bucket, sets the tags it carries before
    /// answering, as S3 does in the one call. [`tags_on_create`]
    async fn create_bucket(&self, call: &Call, parts: &Parts, body: Bytes) -> Handled {
        let tags = std::str::from_utf8(&body).map(tags_on_create::create_bucket_tags).unwrap_or_default();
        let _creating = self.creating_tagged.write().await;
        let mut handled = self.forward(call, parts, body).await;
        let bucket = bucket_and_key(&parts.uri).0.map(str::to_owned);
        let (Some(bucket), false, true) = (bucket, tags.is_empty(), handled.succeeded()) else { return handled };
        let region = call.region.clone().unwrap_or_else(|| "us-east-1".into());
        let s3 = aws_sdk_s3::Client::from_conf(self.s3.to_builder().region(Region::new(region)).build());
        let tags = tags.into_iter().map(|(key, value)| Tag::builder().key(key).value(value).build().expect("key and value are set"));
        let tagging = Tagging::builder().set_tag_set(Some(tags.collect())).build().expect("tags are set");
        if let Err(error) = s3.put_bucket_tagging().bucket(&bucket).tagging(tagging).send().await {
            let error =
                AwsError::new(500, "InternalError", format!("the proxy could not set CreateBucket's tags: {}", DisplayErrorContext(error)));
            handled.response = self.error(call, &error);
        }
        handled
    }

    /// Forwards CreateStream and, when it made the stream, adds the tags it carries before
    /// answering, as Kinesis does in the one call. [`tags_on_create`]
    async fn create_stream(&self, call: &Call, parts: &Parts, body: Bytes) -> Handled {
        let tagged = tags_on_create::create_stream_tags(&body);
        let _creating = self.creating_tagged.write().await;
        let mut handled = self.forward(call, parts, body).await;
        let (Some((stream, tags)), true) = (tagged, handled.succeeded()) else { return handled };
        let region = call.region.clone().unwrap_or_else(|| "us-east-1".into());
        let kinesis = aws_sdk_kinesis::Client::from_conf(self.kinesis.to_builder().region(Region::new(region)).build());
        let tagging =
            tags.into_iter().fold(kinesis.add_tags_to_stream().stream_name(stream), |request, (key, value)| request.tags(key, value));
        if let Err(error) = tagging.send().await {
            let error = AwsError::new(
                500,
                "InternalFailure",
                format!("the proxy could not set CreateStream's tags: {}", DisplayErrorContext(error)),
            );
            handled.response = self.error(call, &error);
        }
        handled
    }

    /// Forwards DeleteObjects without the held keys and answers with an `<Error>` for each of
    /// them next to moto's results (only errors in quiet mode, as S3 answers).
    async fn delete_objects(&self, call: &Call, parts: &Parts, body: Bytes) -> Handled {
        let parsed = std::str::from_utf8(&body).ok().and_then(|text| Some((text, object_hold::parse_delete_request(text)?)));
        let Some((text, request)) = parsed else { return self.forward(call, parts, body.clone()).await };
        let bucket = bucket_and_key(&parts.uri).0.unwrap_or_default();
        let (held, free): (Vec<_>, Vec<_>) = {
            let state = self.lock();
            request.objects.iter().cloned().partition(|object| object_hold::is_held(&state.holds, bucket, &object.key))
        };
        let held_errors = held.iter().map(ResultEntry::held);
        let mut handled = if free.is_empty() {
            // moto refuses an empty <Delete> as malformed; S3 answers 200 with the errors.
            let xml = object_hold::render_delete_result(&held_errors.collect::<Vec<_>>(), request.quiet);
            let mut response = Response::new(Bytes::from(xml));
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
            Handled { response, outcome: Outcome::Refused { rule: Rule::ObjectHold }, held_keys: 0 }
        } else {
            let forwarded = if held.is_empty() { body.clone() } else { Bytes::from(object_hold::without_objects(text, &held)) };
            let mut handled = self.forward(call, parts, forwarded).await;
            let results = std::str::from_utf8(handled.response.body()).ok().and_then(object_hold::parse_delete_result);
            if let (true, Some(mut entries)) = (handled.response.status().is_success(), results) {
                entries.extend(held_errors);
                set_body(&mut handled.response, object_hold::render_delete_result(&entries, request.quiet).into());
            }
            handled
        };
        handled.held_keys = held.len();
        handled
    }

    fn refuse(&self, call: &Call, error: &AwsError, rule: Rule) -> Handled {
        Handled { response: self.error(call, error), outcome: Outcome::Refused { rule }, held_keys: 0 }
    }

    fn error(&self, call: &Call, error: &AwsError) -> Response<Bytes> {
        error.response(call.service, &self.request_id())
    }

    async fn forward(&self, call: &Call, parts: &Parts, body: Bytes) -> Handled {
        match self.send_upstream(parts, body).await {
            Ok(response) => Handled { outcome: Outcome::Forwarded { status: response.status().as_u16() }, response, held_keys: 0 },
            Err(error) => {
                let error = AwsError::new(503, "ServiceUnavailable", format!("the AWS emulator behind the proxy did not answer: {error}"));
                Handled { response: self.error(call, &error), outcome: Outcome::Unreachable, held_keys: 0 }
            }
        }
    }

    /// The request as it came (Host included, which the signature covers), sent to the emulator.
    async fn send_upstream(&self, parts: &Parts, body: Bytes) -> Result<Response<Bytes>, String> {
        let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
        let mut request = Request::builder().method(parts.method.clone()).uri(format!("{}{path}", self.upstream));
        if let Some(headers) = request.headers_mut() {
            copy_end_to_end(&parts.headers, headers);
        }
        let request = request.body(Full::new(body)).map_err(|error| error.to_string())?;
        let response = self.client.request(request).await.map_err(|error| error.to_string())?;
        let (mut head, body) = response.into_parts();
        let body = body.collect().await.map_err(|error| error.to_string())?.to_bytes();
        let received = std::mem::take(&mut head.headers);
        copy_end_to_end(&received, &mut head.headers);
        Ok(Response::from_parts(head, body))
    }
}

fn injected(call: &Call, arrived: SystemTime, fault: Fault) -> CallRecord {
    CallRecord::new(call, arrived, Outcome::Injected { fault })
}

fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            to.append(name, value.clone());
        }
    }
}

fn set_body(response: &mut Response<Bytes>, body: Bytes) {
    response.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    *response.body_mut() = body;
}

/// A JSON answer of the control endpoint.
pub(crate) fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(serde_json::to_vec_pretty(value).unwrap_or_default()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Accepts connections until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, say: give the open connections time to end.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let shared = shared.clone();
                async move { shared.handle(request).await }
            });
            // A dropped connection ends here with the CloseWithoutAnswer it was asked for.
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
