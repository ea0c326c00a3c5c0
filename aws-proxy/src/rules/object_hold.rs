//! Objects S3 will not delete: object lock, a legal hold, a missing permission. `DeleteObjects`
//! then still answers 200, with an `<Error>` per key it kept; `DeleteObject` answers 403.
//! Keys under a hold (bucket and key prefix) behave that way here: the proxy takes them out of
//! the `DeleteObjects` it forwards and adds their errors to moto's answer.
//!
//! The forwarded body keeps its length and everything but the held `<Object>` elements, which
//! become spaces: the request's SigV4 signature (which covers `Content-Length` and the
//! `x-amz-content-sha256` header, the latter all moto compares) stays valid when the emulator
//! checks signatures. moto does not verify the body's checksum headers.

use std::ops::Range;

use aws_smithy_xml::decode::{Document, ScopedDecoder, XmlDecodeError, try_data};
use aws_smithy_xml::encode::XmlWriter;
use serde::{Deserialize, Serialize};

use crate::protocol::{AwsError, write_element};

/// The message S3 gives for a key object lock protects.
pub const HELD_MESSAGE: &str = "Access Denied because object protected by object lock.";

const S3_NAMESPACE: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// Keys in `bucket` starting with `prefix` are not deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub bucket: String,
    pub prefix: String,
}

impl Hold {
    pub fn new(bucket: &str, prefix: &str) -> Self {
        Hold { bucket: bucket.to_owned(), prefix: prefix.to_owned() }
    }
}

pub fn is_held(holds: &[Hold], bucket: &str, key: &str) -> bool {
    holds.iter().any(|hold| hold.bucket == bucket && key.starts_with(&hold.prefix))
}

/// The 403 `DeleteObject` gets for a held key.
pub fn delete_object_refusal() -> AwsError {
    AwsError::new(403, "AccessDenied", HELD_MESSAGE)
}

/// One `<Object>` of a `DeleteObjects` request, with where it sits in the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectToDelete {
    pub key: String,
    pub version_id: Option<String>,
    span: Range<usize>,
}

/// A parsed `<Delete>` request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteRequest {
    pub objects: Vec<ObjectToDelete>,
    pub quiet: bool,
}

/// Parses a `DeleteObjects` body. `None` when it is not one the SDK writes; it is then forwarded
/// untouched and moto judges it.
pub fn parse_delete_request(body: &str) -> Option<DeleteRequest> {
    let mut objects = Vec::new();
    let mut quiet = false;
    let mut document = Document::new(body);
    let mut root = document.root_element().ok()?;
    while let Some(mut element) = root.next_tag() {
        match element.start_el().local() {
            "Object" => {
                let fields = read_fields(&mut element).ok()?;
                let field = |name: &str| fields.iter().find(|(field, _)| field == name).map(|(_, value)| value.clone());
                objects.push(ObjectToDelete { key: field("Key")?, version_id: field("VersionId"), span: 0..0 });
            }
            "Quiet" => quiet = try_data(&mut element).ok()?.trim() == "true",
            _ => {}
        }
    }
    // Objects do not nest and their text is escaped, so the elements' spans are where the tags are.
    let spans: Vec<Range<usize>> = body
        .match_indices("<Object>")
        .map(|(start, _)| body[start..].find("</Object>").map(|end| start..start + end + "</Object>".len()))
        .collect::<Option<_>>()?;
    if spans.len() != objects.len() {
        return None;
    }
    objects.iter_mut().zip(spans).for_each(|(object, span)| object.span = span);
    Some(DeleteRequest { objects, quiet })
}

/// The request body without `removed`, same length: each removed element turned to spaces.
pub fn without_objects(body: &str, removed: &[ObjectToDelete]) -> String {
    let mut bytes = body.as_bytes().to_vec();
    for object in removed {
        bytes[object.span.clone()].fill(b' ');
    }
    String::from_utf8(bytes).expect("only whole elements, which end on character boundaries, are blanked")
}

/// One `<Deleted>` or `<Error>` entry of a `<DeleteResult>`, its fields in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultEntry {
    pub error: bool,
    pub fields: Vec<(String, String)>,
}

impl ResultEntry {
    /// The `<Error>` S3 gives for a held object.
    pub fn held(object: &ObjectToDelete) -> Self {
        let mut fields = vec![("Key".to_owned(), object.key.clone())];
        fields.extend(object.version_id.iter().map(|version| ("VersionId".to_owned(), version.clone())));
        fields.push(("Code".to_owned(), "AccessDenied".to_owned()));
        fields.push(("Message".to_owned(), HELD_MESSAGE.to_owned()));
        ResultEntry { error: true, fields }
    }
}

/// The entries of a `<DeleteResult>` answer; `None` when it is not one.
pub fn parse_delete_result(body: &str) -> Option<Vec<ResultEntry>> {
    let mut document = Document::new(body);
    let mut root = document.root_element().ok()?;
    if !root.start_el().matches("DeleteResult") {
        return None;
    }
    let mut entries = Vec::new();
    while let Some(mut element) = root.next_tag() {
        let error = match element.start_el().local() {
            "Deleted" => false,
            "Error" => true,
            _ => continue,
        };
        entries.push(ResultEntry { error, fields: read_fields(&mut element).ok()? });
    }
    Some(entries)
}

/// A `<DeleteResult>` of `entries`; in quiet mode only the errors, as S3 answers.
pub fn render_delete_result(entries: &[ResultEntry], quiet: bool) -> String {
    let mut body = String::from(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let mut writer = XmlWriter::new(&mut body);
    let mut root = writer.start_el("DeleteResult").write_ns(S3_NAMESPACE, None).finish();
    for entry in entries.iter().filter(|entry| entry.error || !quiet) {
        let mut element = root.start_el(if entry.error { "Error" } else { "Deleted" }).finish();
        for (name, value) in &entry.fields {
            write_element(&mut element, name, value);
        }
        element.finish();
    }
    root.finish();
    body
}

/// The child elements of `element` as (name, text) pairs.
fn read_fields(element: &mut ScopedDecoder<'_, '_>) -> Result<Vec<(String, String)>, XmlDecodeError> {
    let mut fields = Vec::new();
    while let Some(mut field) = element.next_tag() {
        let name = field.start_el().local().to_owned();
        fields.push((name, try_data(&mut field)?.into_owned()));
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &str = r#"<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Object><Key>keep/a&amp;b</Key></Object><Object><Key>held/1</Key><VersionId>v1</VersionId></Object><Object><Key>keep/c</Key></Object><Quiet>true</Quiet></Delete>"#;

    #[test]
    fn holds_are_per_bucket_and_prefix() {
        let holds = [Hold::new("b", "held/")];
        assert!(is_held(&holds, "b", "held/1"));
        assert!(!is_held(&holds, "b", "kept/held/1"));
        assert!(!is_held(&holds, "other", "held/1"));
    }

    #[test]
    fn held_objects_leave_the_request_which_keeps_its_length() {
        let request = parse_delete_request(REQUEST).unwrap();
        assert!(request.quiet);
        let keys: Vec<_> = request.objects.iter().map(|object| (object.key.as_str(), object.version_id.as_deref())).collect();
        assert_eq!(keys, [("keep/a&b", None), ("held/1", Some("v1")), ("keep/c", None)]);

        let forwarded = without_objects(REQUEST, &request.objects[1..2]);
        assert_eq!(forwarded.len(), REQUEST.len());
        let left = parse_delete_request(&forwarded).unwrap();
        assert_eq!(left.objects.iter().map(|object| object.key.as_str()).collect::<Vec<_>>(), ["keep/a&b", "keep/c"]);
        assert!(left.quiet);
        assert_eq!(parse_delete_request("<Delete><Object><Key>k</Key></Object><Object><Key>x</Key>"), None);
        assert_eq!(parse_delete_request("not xml"), None);
    }

    #[test]
    fn held_keys_join_the_answer_as_errors() {
        let moto = r#"<?xml version="1.0" encoding="UTF-8"?><DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Deleted><Key>keep/a&amp;b</Key></Deleted><Deleted><Key>keep/c</Key><VersionId>v9</VersionId></Deleted></DeleteResult>"#;
        let mut entries = parse_delete_result(moto).unwrap();
        assert_eq!(entries.len(), 2);
        let request = parse_delete_request(REQUEST).unwrap();
        entries.push(ResultEntry::held(&request.objects[1]));

        let loud = render_delete_result(&entries, false);
        assert_eq!(parse_delete_result(&loud).unwrap(), entries);
        assert!(loud.contains("<Error><Key>held/1</Key><VersionId>v1</VersionId><Code>AccessDenied</Code><Message>Access Denied because object protected by object lock.</Message></Error>"), "{loud}");
        let quiet = render_delete_result(&entries, true);
        assert_eq!(parse_delete_result(&quiet).unwrap(), entries[2..]);
        assert_eq!(parse_delete_result("<Error><Code>NoSuchBucket</Code></Error>"), None);
    }
}
