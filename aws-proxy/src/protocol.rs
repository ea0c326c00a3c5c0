//! How AWS tells services and operations apart on the wire, and how each protocol writes an
//! error so that the AWS SDK reads back its code.
//!
//! - The service comes from the SigV4 credential scope (`Credential=<key>/<date>/<region>/<service>/aws4_request`),
//!   as AWS's front door routes it; without a signature, from the protocol's own markers.
//! - JSON protocols (Kinesis, Firehose, Glue) name the operation in `X-Amz-Target`
//!   (`Kinesis_20131202.PutRecords`); query protocols (IAM, STS) in the form body's `Action=`;
//!   S3 by method, path (path-style addressing, `/<bucket>/<key>`) and sub-resource query; S3
//!   Control, which signs as `s3` too, by its path (`/v20180820/...`) and method.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode, Uri};
use serde::{Deserialize, Serialize};

/// The AWS services the pipeline calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Service {
    Kinesis,
    Firehose,
    Glue,
    S3,
    /// S3's account-level API (`/v20180820/...`), here its tagging of buckets.
    S3Control,
    Iam,
    Sts,
    /// Anything else the emulator serves (its own `/moto-api`, other services).
    #[default]
    Other,
}

/// The three wire protocols of those services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `awsJson1_1`: Kinesis, Firehose, Glue.
    Json,
    /// `restXml`: S3, S3 Control.
    RestXml,
    /// `awsQuery`: IAM, STS.
    Query,
}

impl Service {
    pub const ALL: [Service; 7] =
        [Service::Kinesis, Service::Firehose, Service::Glue, Service::S3, Service::S3Control, Service::Iam, Service::Sts];

    pub fn protocol(self) -> Protocol {
        match self {
            Service::Kinesis | Service::Firehose | Service::Glue | Service::Other => Protocol::Json,
            Service::S3 | Service::S3Control => Protocol::RestXml,
            Service::Iam | Service::Sts => Protocol::Query,
        }
    }

    /// The name a fault's scope uses: the SigV4 signing name, as a credential scope has it, but
    /// `s3control` for S3 Control, which signs as `s3`.
    fn name(self) -> &'static str {
        match self {
            Service::Kinesis => "kinesis",
            Service::Firehose => "firehose",
            Service::Glue => "glue",
            Service::S3 => "s3",
            Service::S3Control => "s3control",
            Service::Iam => "iam",
            Service::Sts => "sts",
            Service::Other => "other",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl FromStr for Service {
    type Err = String;

    /// A service by its name or signing name, in any case: `Kinesis`, `kinesis`, `s3`, `IAM`.
    fn from_str(name: &str) -> Result<Self, String> {
        Service::ALL
            .into_iter()
            .find(|service| service.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("unknown service `{name}`; one of kinesis, firehose, glue, s3, s3control, iam, sts"))
    }
}

/// One request as AWS would route it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub service: Service,
    /// The operation as the API reference names it: `PutRecords`, `CreateRole`, `DeleteObjects`.
    pub operation: String,
    /// The signing region, when the request is signed.
    pub region: Option<String>,
    /// The resource the call is about, when it names one: the stream, delivery stream, Glue
    /// database, bucket or role name. Lets a test count the calls of one pipeline.
    pub resource: Option<String>,
}

/// Identifies a request's service, operation, region and resource from its method, URI,
/// headers and (complete) body.
pub fn identify(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Call {
    let scope = headers.get(AUTHORIZATION).and_then(|value| value.to_str().ok()).and_then(credential_scope);
    let target = headers.get("x-amz-target").and_then(|value| value.to_str().ok());
    let service = scope.as_ref().and_then(|(_, service)| service.parse().ok()).unwrap_or_else(|| unsigned_service(target, uri, body));
    let service = if service == Service::S3 && uri.path().starts_with(S3_CONTROL_PATH) { Service::S3Control } else { service };
    let region = scope.map(|(region, _)| region);
    let (operation, resource) = match service.protocol() {
        Protocol::Json => (target.and_then(|t| t.split_once('.')).map_or("Unknown", |(_, op)| op).to_owned(), json_resource(body)),
        Protocol::Query => query_operation(uri, body),
        Protocol::RestXml if service == Service::S3Control => s3_control_operation(method, uri),
        Protocol::RestXml => {
            let (bucket, key) = bucket_and_key(uri);
            (s3_operation(method, uri, headers, bucket.is_some(), key.is_some()), bucket.map(str::to_owned))
        }
    };
    Call { service, operation, region, resource }
}

/// `(region, service)` from `AWS4-HMAC-SHA256 Credential=AKID/20240101/eu-west-1/kinesis/aws4_request, ...`.
fn credential_scope(authorization: &str) -> Option<(String, String)> {
    let credential = authorization.split("Credential=").nth(1)?.split([',', ' ']).next()?;
    let mut parts = credential.split('/').skip(2);
    Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
}

fn unsigned_service(target: Option<&str>, uri: &Uri, body: &[u8]) -> Service {
    match target.and_then(|t| t.split_once('.')).map(|(prefix, _)| prefix) {
        Some(prefix) if prefix.starts_with("Kinesis_") => Service::Kinesis,
        Some(prefix) if prefix.starts_with("Firehose_") => Service::Firehose,
        Some("AWSGlue") => Service::Glue,
        Some(_) => Service::Other,
        None if uri.path().starts_with("/moto-api") => Service::Other,
        None => match form_value(body, "Version").or_else(|| form_value(uri.query().unwrap_or("").as_bytes(), "Version")).as_deref() {
            Some("2010-05-08") => Service::Iam,
            Some("2011-06-15") => Service::Sts,
            _ => Service::S3,
        },
    }
}

/// A form (or query string) parameter.
pub fn form_value(form: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(form).find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
}

fn query_operation(uri: &Uri, body: &[u8]) -> (String, Option<String>) {
    let operation = form_value(body, "Action").or_else(|| form_value(uri.query().unwrap_or("").as_bytes(), "Action"));
    (operation.unwrap_or_else(|| "Unknown".to_owned()), form_value(body, "RoleName"))
}

/// The name a JSON request is about: a stream, delivery stream or Glue database.
fn json_resource(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Named {
        stream_name: Option<String>,
        #[serde(rename = "StreamARN")]
        stream_arn: Option<String>,
        delivery_stream_name: Option<String>,
        database_name: Option<String>,
        database_input: Option<NameOnly>,
        name: Option<String>,
        shard_iterator: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct NameOnly {
        name: Option<String>,
    }
    let named: Named = serde_json::from_slice(body).ok()?;
    let arn_name = named.stream_arn.and_then(|arn| arn.rsplit('/').next().map(str::to_owned));
    named
        .stream_name
        .or(arn_name)
        .or_else(|| named.shard_iterator.as_deref().and_then(iterator_stream))
        .or(named.delivery_stream_name)
        .or(named.database_name)
        .or(named.database_input.and_then(|d| d.name))
        .or(named.name)
}

/// The stream a GetRecords reads, so that the aggregator's busiest call counts for its pipeline:
/// the emulator's shard iterators are base64 of `<stream>:<shard>:<sequence>` (AWS's are opaque).
fn iterator_stream(iterator: &str) -> Option<String> {
    let compact: String = iterator.chars().filter(|c| !c.is_whitespace()).collect();
    let decoded = String::from_utf8(aws_smithy_types::base64::decode(compact).ok()?).ok()?;
    decoded.split(':').next().filter(|stream| !stream.is_empty()).map(str::to_owned)
}

/// Bucket and key of a path-style S3 URI: `/<bucket>/<key>`.
pub fn bucket_and_key(uri: &Uri) -> (Option<&str>, Option<&str>) {
    let path = uri.path().trim_start_matches('/');
    let (bucket, key) = path.split_once('/').map_or((path, None), |(bucket, key)| (bucket, Some(key)));
    (Some(bucket).filter(|b| !b.is_empty()), key.filter(|k| !k.is_empty()))
}

/// Bucket sub-resources (a query parameter without value) and the name their operations share:
/// `GET /b?tagging` is GetBucketTagging.
const BUCKET_SUBRESOURCES: &[(&str, &str)] = &[
    ("tagging", "BucketTagging"),
    ("encryption", "BucketEncryption"),
    ("lifecycle", "BucketLifecycleConfiguration"),
    ("publicAccessBlock", "PublicAccessBlock"),
    ("policy", "BucketPolicy"),
    ("versioning", "BucketVersioning"),
    ("acl", "BucketAcl"),
    ("cors", "BucketCors"),
    ("ownershipControls", "BucketOwnershipControls"),
    ("object-lock", "ObjectLockConfiguration"),
    ("notification", "BucketNotificationConfiguration"),
    ("location", "BucketLocation"),
];

/// Object sub-resources, likewise: `PUT /b/k?tagging` is PutObjectTagging.
const OBJECT_SUBRESOURCES: &[(&str, &str)] =
    &[("tagging", "ObjectTagging"), ("legal-hold", "ObjectLegalHold"), ("retention", "ObjectRetention"), ("acl", "ObjectAcl")];

fn s3_operation(method: &Method, uri: &Uri, headers: &HeaderMap, has_bucket: bool, has_key: bool) -> String {
    let query: Vec<String> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).map(|(key, _)| key.into_owned()).collect();
    let has = |name: &str| query.iter().any(|key| key == name);
    let verb = match *method {
        Method::GET => "Get",
        Method::PUT => "Put",
        Method::DELETE => "Delete",
        _ => "",
    };
    if has_bucket && !verb.is_empty() {
        let table = if has_key { OBJECT_SUBRESOURCES } else { BUCKET_SUBRESOURCES };
        if let Some((_, name)) = table.iter().find(|(key, _)| has(key)) {
            // The one irregular name: a lifecycle is put and got as a configuration, deleted as itself.
            return if verb == "Delete" && *name == "BucketLifecycleConfiguration" {
                "DeleteBucketLifecycle".to_owned()
            } else {
                format!("{verb}{name}")
            };
        }
    }
    let operation = match (method.as_str(), has_bucket, has_key) {
        ("GET", false, _) => "ListBuckets",
        ("POST", true, false) if has("delete") => "DeleteObjects",
        ("GET", true, false) if has("versions") => "ListObjectVersions",
        ("GET", true, false) if has("uploads") => "ListMultipartUploads",
        ("GET", true, false) if has("list-type") => "ListObjectsV2",
        ("GET", true, false) => "ListObjects",
        ("PUT", true, false) => "CreateBucket",
        ("DELETE", true, false) => "DeleteBucket",
        ("HEAD", true, false) => "HeadBucket",
        ("PUT", true, true) if has("uploadId") => "UploadPart",
        ("PUT", true, true) if headers.contains_key("x-amz-copy-source") => "CopyObject",
        ("PUT", true, true) => "PutObject",
        ("GET", true, true) if has("uploadId") => "ListParts",
        ("GET", true, true) => "GetObject",
        ("HEAD", true, true) => "HeadObject",
        ("DELETE", true, true) if has("uploadId") => "AbortMultipartUpload",
        ("DELETE", true, true) => "DeleteObject",
        ("POST", true, true) if has("uploads") => "CreateMultipartUpload",
        ("POST", true, true) if has("uploadId") => "CompleteMultipartUpload",
        _ => return format!("{method} {}", uri.path()),
    };
    operation.to_owned()
}

/// Where every S3 Control operation's path begins.
const S3_CONTROL_PATH: &str = "/v20180820/";

/// S3 Control's tagging operation and the bucket it tags: `POST /v20180820/tags/arn%3Aaws%3As3%3A%3A%3A<bucket>`.
fn s3_control_operation(method: &Method, uri: &Uri) -> (String, Option<String>) {
    let path = uri.path().strip_prefix(S3_CONTROL_PATH).unwrap_or_default();
    let Some(arn) = path.strip_prefix("tags/") else { return (format!("{method} {}", uri.path()), None) };
    let arn = percent_encoding::percent_decode_str(arn).decode_utf8_lossy();
    let bucket = arn.split_once(":::").map(|(_, bucket)| bucket.to_owned());
    let operation = match *method {
        Method::GET => "ListTagsForResource",
        Method::POST => "TagResource",
        Method::DELETE => "UntagResource",
        _ => return (format!("{method} {}", uri.path()), bucket),
    };
    (operation.to_owned(), bucket)
}

/// An error as AWS answers it: HTTP status, error code, message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl AwsError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        AwsError { status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST), code: code.to_owned(), message: message.into() }
    }

    /// The answer in `service`'s wire format, so that the SDK reads back `code`:
    /// JSON `{"__type": code, "message": ..}` plus `x-amzn-errortype`; S3 `<Error><Code>`, S3
    /// Control `<ErrorResponse><Error><Code>`; IAM/STS
    /// `<ErrorResponse><Error><Type>Sender|Receiver</Type><Code>`.
    pub fn response(&self, service: Service, request_id: &str) -> Response<Bytes> {
        let (content_type, body) = match service.protocol() {
            Protocol::Json => {
                let body = serde_json::json!({ "__type": self.code, "message": self.message });
                ("application/x-amz-json-1.1", body.to_string())
            }
            Protocol::RestXml => {
                let mut body = String::from(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
                let mut writer = aws_smithy_xml::encode::XmlWriter::new(&mut body);
                let fill = |mut error: aws_smithy_xml::encode::ScopeWriter<'_, '_>, with_id: bool| {
                    write_element(&mut error, "Code", &self.code);
                    write_element(&mut error, "Message", &self.message);
                    if with_id {
                        write_element(&mut error, "RequestId", request_id);
                    }
                    error.finish();
                };
                if service == Service::S3Control {
                    let mut wrapper = writer.start_el("ErrorResponse").finish();
                    fill(wrapper.start_el("Error").finish(), false);
                    write_element(&mut wrapper, "RequestId", request_id);
                    wrapper.finish();
                } else {
                    fill(writer.start_el("Error").finish(), true);
                }
                ("application/xml", body)
            }
            Protocol::Query => {
                let namespace = if service == Service::Sts {
                    "https://sts.amazonaws.com/doc/2011-06-15/"
                } else {
                    "https://iam.amazonaws.com/doc/2010-05-08/"
                };
                let mut body = String::new();
                let mut writer = aws_smithy_xml::encode::XmlWriter::new(&mut body);
                let mut root = writer.start_el("ErrorResponse").write_ns(namespace, None).finish();
                let mut error = root.start_el("Error").finish();
                write_element(&mut error, "Type", if self.status.is_server_error() { "Receiver" } else { "Sender" });
                write_element(&mut error, "Code", &self.code);
                write_element(&mut error, "Message", &self.message);
                error.finish();
                write_element(&mut root, "RequestId", request_id);
                root.finish();
                ("text/xml", body)
            }
        };
        let mut response = Response::new(Bytes::from(body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Ok(id) = HeaderValue::from_str(request_id) {
            let s3 = service.protocol() == Protocol::RestXml;
            headers.insert(if s3 { "x-amz-request-id" } else { "x-amzn-requestid" }, id);
        }
        if service.protocol() == Protocol::Json
            && let Ok(code) = HeaderValue::from_str(&self.code)
        {
            headers.insert("x-amzn-errortype", code);
        }
        response
    }
}

/// `<name>text</name>` inside `parent`.
pub fn write_element(parent: &mut aws_smithy_xml::encode::ScopeWriter<'_, '_>, name: &str, text: &str) {
    parent.start_el(name).finish().data(text);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> Call {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        identify(&method.parse().unwrap(), &uri.parse().unwrap(), &map, body.as_bytes())
    }

    fn signed(service: &str) -> (&'static str, String) {
        (
            "authorization",
            format!("AWS4-HMAC-SHA256 Credential=AKID/20240101/eu-west-1/{service}/aws4_request, SignedHeaders=host, Signature=ab"),
        )
    }

    #[test]
    fn json_protocols_by_target_and_credential_scope() {
        let (name, value) = signed("kinesis");
        let call =
            request("POST", "/", &[(name, &value), ("x-amz-target", "Kinesis_20131202.PutRecords")], r#"{"StreamName":"in","Records":[]}"#);
        assert_eq!(
            call,
            Call {
                service: Service::Kinesis,
                operation: "PutRecords".into(),
                region: Some("eu-west-1".into()),
                resource: Some("in".into())
            }
        );

        let arn = r#"{"StreamARN":"arn:aws:kinesis:eu-west-1:123456789012:stream/out"}"#;
        assert_eq!(
            request("POST", "/", &[("x-amz-target", "Kinesis_20131202.DescribeStreamSummary")], arn).resource.as_deref(),
            Some("out")
        );
        let firehose = request("POST", "/", &[("x-amz-target", "Firehose_20150804.CreateDeliveryStream")], r#"{"DeliveryStreamName":"d"}"#);
        assert_eq!(
            (firehose.service, firehose.operation.as_str(), firehose.resource.as_deref()),
            (Service::Firehose, "CreateDeliveryStream", Some("d"))
        );
        let iterator = aws_smithy_types::base64::encode("in-stream:shardId-000000000000:0");
        let body = format!(r#"{{"ShardIterator":"{iterator}\n"}}"#);
        assert_eq!(request("POST", "/", &[("x-amz-target", "Kinesis_20131202.GetRecords")], &body).resource.as_deref(), Some("in-stream"));
        let glue = request("POST", "/", &[("x-amz-target", "AWSGlue.CreateDatabase")], r#"{"DatabaseInput":{"Name":"db"}}"#);
        assert_eq!((glue.service, glue.operation.as_str(), glue.resource.as_deref()), (Service::Glue, "CreateDatabase", Some("db")));
    }

    #[test]
    fn query_protocols_by_action() {
        let (name, value) = signed("iam");
        let call = request("POST", "/", &[(name, &value)], "Action=CreateRole&Version=2010-05-08&RoleName=r-firehose");
        assert_eq!((call.service, call.operation.as_str(), call.resource.as_deref()), (Service::Iam, "CreateRole", Some("r-firehose")));
        let sts = request("POST", "/", &[], "Action=GetCallerIdentity&Version=2011-06-15");
        assert_eq!((sts.service, sts.operation.as_str()), (Service::Sts, "GetCallerIdentity"));
    }

    #[test]
    fn s3_operations_by_method_path_and_subresource() {
        let (name, value) = signed("s3");
        let s3 = |method: &str, uri: &str| request(method, uri, &[(name, &value)], "").operation;
        let cases = [
            ("GET", "/", "ListBuckets"),
            ("PUT", "/bucket", "CreateBucket"),
            ("HEAD", "/bucket", "HeadBucket"),
            ("PUT", "/bucket?tagging", "PutBucketTagging"),
            ("GET", "/bucket?tagging", "GetBucketTagging"),
            ("PUT", "/bucket?publicAccessBlock", "PutPublicAccessBlock"),
            ("GET", "/bucket?lifecycle", "GetBucketLifecycleConfiguration"),
            ("DELETE", "/bucket?lifecycle", "DeleteBucketLifecycle"),
            ("GET", "/bucket?versioning", "GetBucketVersioning"),
            ("GET", "/bucket?list-type=2&prefix=a%2F", "ListObjectsV2"),
            ("GET", "/bucket?versions", "ListObjectVersions"),
            ("POST", "/bucket?delete", "DeleteObjects"),
            ("DELETE", "/bucket", "DeleteBucket"),
            ("PUT", "/bucket/a/b.json", "PutObject"),
            ("GET", "/bucket/a/b.json", "GetObject"),
            ("HEAD", "/bucket/a/b.json", "HeadObject"),
            ("DELETE", "/bucket/a/b.json?versionId=3", "DeleteObject"),
            ("PUT", "/bucket/a?tagging", "PutObjectTagging"),
            ("POST", "/bucket/a?uploads", "CreateMultipartUpload"),
            ("PUT", "/bucket/a?partNumber=1&uploadId=x", "UploadPart"),
        ];
        for (method, uri, operation) in cases {
            assert_eq!(s3(method, uri), operation, "{method} {uri}");
        }
        let call = request("PUT", "/bucket/a", &[(name, &value), ("x-amz-copy-source", "/bucket/b")], "");
        assert_eq!((call.operation.as_str(), call.resource.as_deref()), ("CopyObject", Some("bucket")));
    }

    #[test]
    fn s3_control_by_its_path_though_it_signs_as_s3() {
        let (name, value) = signed("s3");
        let control = |method: &str| request(method, "/v20180820/tags/arn%3Aaws%3As3%3A%3A%3Abucket", &[(name, &value)], "");
        for (method, operation) in [("POST", "TagResource"), ("DELETE", "UntagResource"), ("GET", "ListTagsForResource")] {
            let call = control(method);
            assert_eq!((call.service, call.operation.as_str(), call.resource.as_deref()), (Service::S3Control, operation, Some("bucket")));
        }
        assert_eq!("s3control:TagResource".split_once(':').unwrap().0.parse::<Service>(), Ok(Service::S3Control));
    }

    #[test]
    fn services_parse_by_name_in_any_case() {
        assert_eq!("KINESIS".parse::<Service>(), Ok(Service::Kinesis));
        assert_eq!("s3".parse::<Service>(), Ok(Service::S3));
        assert!("lambda".parse::<Service>().unwrap_err().contains("unknown service `lambda`"));
    }

    #[test]
    fn errors_in_each_wire_format() {
        let throttled = AwsError::new(400, "ThrottlingException", "Rate exceeded");
        let json = throttled.response(Service::Glue, "req-1");
        assert_eq!(json.headers()["x-amzn-errortype"], "ThrottlingException");
        assert_eq!(json.body().as_ref(), br#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#);

        let slow = AwsError::new(503, "SlowDown", "Please reduce your request rate.").response(Service::S3, "req-2");
        assert_eq!(slow.status(), 503);
        assert_eq!(
            std::str::from_utf8(slow.body()).unwrap(),
            r#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>req-2</RequestId></Error>"#
        );

        let control = AwsError::new(503, "SlowDown", "Slow down.").response(Service::S3Control, "req-4");
        assert_eq!(
            std::str::from_utf8(control.body()).unwrap(),
            r#"<?xml version="1.0" encoding="UTF-8"?><ErrorResponse><Error><Code>SlowDown</Code><Message>Slow down.</Message></Error><RequestId>req-4</RequestId></ErrorResponse>"#
        );

        let iam = AwsError::new(500, "ServiceFailure", "a < b").response(Service::Iam, "req-3");
        assert_eq!(
            std::str::from_utf8(iam.body()).unwrap(),
            r#"<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><Error><Type>Receiver</Type><Code>ServiceFailure</Code><Message>a &lt; b</Message></Error><RequestId>req-3</RequestId></ErrorResponse>"#
        );
    }
}
