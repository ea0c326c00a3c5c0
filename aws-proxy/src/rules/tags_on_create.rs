//! The tags of S3 CreateBucket (`CreateBucketConfiguration.Tags`) and Kinesis CreateStream
//! (`Tags`), which moto ignores: AWS sets them in the same call, so nothing created with tags is
//! ever seen untagged. The proxy tags the bucket or stream (PutBucketTagging, AddTagsToStream, as
//! the emulator's administrator) before it answers the create call.

/// CreateStream's stream name and `Tags`, when its body carries both.
pub fn create_stream_tags(body: &[u8]) -> Option<(String, Vec<(String, String)>)> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct CreateStream {
        stream_name: String,
        #[serde(default)]
        tags: std::collections::BTreeMap<String, String>,
    }
    let request: CreateStream = serde_json::from_slice(body).ok()?;
    (!request.tags.is_empty()).then(|| (request.stream_name, request.tags.into_iter().collect()))
}

use aws_smithy_xml::decode::{Document, try_data};

/// The `<Tags>` of a `CreateBucketConfiguration` body, as (key, value); empty when it has none or
/// is not one the SDK writes (moto then judges it alone).
pub fn create_bucket_tags(body: &str) -> Vec<(String, String)> {
    let mut tags = Vec::new();
    let mut document = Document::new(body);
    let Ok(mut root) = document.root_element() else { return tags };
    while let Some(mut element) = root.next_tag() {
        if element.start_el().local() != "Tags" {
            continue;
        }
        while let Some(mut tag) = element.next_tag() {
            let (mut key, mut value) = (None, None);
            while let Some(mut field) = tag.next_tag() {
                let name = field.start_el().local().to_owned();
                let Ok(text) = try_data(&mut field) else { return Vec::new() };
                match name.as_str() {
                    "Key" => key = Some(text.into_owned()),
                    "Value" => value = Some(text.into_owned()),
                    _ => {}
                }
            }
            if let (Some(key), Some(value)) = (key, value) {
                tags.push((key, value));
            }
        }
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_streams_tags_are_read_from_its_body() {
        let body = br#"{"StreamName":"p-input","ShardCount":1,"Tags":{"metrics.dev/pipeline":"ns/p"}}"#;
        assert_eq!(create_stream_tags(body), Some(("p-input".into(), vec![("metrics.dev/pipeline".into(), "ns/p".into())])));
        assert_eq!(create_stream_tags(br#"{"StreamName":"p-input","ShardCount":1}"#), None, "no tags, nothing to set");
    }

    #[test]
    fn the_tags_of_a_create_bucket_configuration_are_read() {
        let body = r#"<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><LocationConstraint>eu-west-1</LocationConstraint><Tags><Tag><Key>metrics.dev/pipeline</Key><Value>a/b&amp;c</Value></Tag><Tag><Key>k</Key><Value></Value></Tag></Tags></CreateBucketConfiguration>"#;
        assert_eq!(create_bucket_tags(body), [("metrics.dev/pipeline".to_owned(), "a/b&c".to_owned()), ("k".to_owned(), String::new())]);
        assert_eq!(
            create_bucket_tags("<CreateBucketConfiguration><LocationConstraint>eu-west-1</LocationConstraint></CreateBucketConfiguration>"),
            []
        );
        assert_eq!(create_bucket_tags(""), []);
    }
}
