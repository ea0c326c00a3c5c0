//! The field reference of `MetricsPipeline`, generated from the CRD's schema (the same text
//! `kubectl explain` shows), so that the document cannot say other than what the API server
//! enforces.

use serde_json::Value;

use crate::crd::crd;

/// Where the generated reference is committed, relative to the repository root.
pub const FIELDS_PATH: &str = "docs/reference/metricspipeline-fields.md";

/// Every field of `spec` and `status`: its path, type, default, the rules the API server checks,
/// and its description.
pub fn field_reference() -> String {
    let crd = serde_json::to_value(crd()).expect("a CRD always serializes");
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
    let mut document = String::from(
        "# MetricsPipeline fields\n\n\
         Generated from the CRD's schema by `cargo run -p metrics-pipeline-api --bin crdgen`; do not edit. \
         `kubectl explain metricspipeline.spec` shows the same descriptions; the operator checks the rules \
         a schema cannot express (see [the resource](metricspipeline.md)).\n",
    );
    for (part, title) in [("spec", "what you write"), ("status", "what the operator reports")] {
        document.push_str(&format!(
            "\n## `{part}`: {title}\n\n| field | type | default | rules | description |\n| --- | --- | --- | --- | --- |\n"
        ));
        let mut rows = Vec::new();
        fields(part, &schema[part], &mut rows);
        for row in rows {
            document.push_str(&row);
        }
    }
    document
}

/// One table row per field below `schema`, depth first, in the schema's (alphabetical) order.
fn fields(path: &str, schema: &Value, rows: &mut Vec<String>) {
    let Some(properties) = schema["properties"].as_object() else { return };
    let required: Vec<&str> = schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    for (name, field) in properties {
        let path = format!("{path}.{name}");
        rows.push(row(&path, field, required.contains(&name.as_str())));
        match field["type"].as_str() {
            Some("object") => fields(&path, field, rows),
            Some("array") => fields(&format!("{path}[]"), &field["items"], rows),
            _ => {}
        }
    }
}

fn row(path: &str, field: &Value, required: bool) -> String {
    let default = match &field["default"] {
        Value::Null => String::new(),
        value => format!("`{value}`"),
    };
    let description = cell(field["description"].as_str().unwrap_or_default());
    format!("| `{path}` | {} | {default} | {} | {description} |\n", kind(field), cell(&rules(field, required)))
}

/// The field's type as a reader says it: `string`, `integer`, `list of object`, `map of string`.
fn kind(field: &Value) -> String {
    if field["x-kubernetes-int-or-string"] == Value::Bool(true) {
        return "integer or string".into();
    }
    match field["type"].as_str() {
        Some("array") => format!("list of {}", kind(&field["items"])),
        Some("object") if field["additionalProperties"].is_object() => format!("map of {}", kind(&field["additionalProperties"])),
        Some(kind) => match field["format"].as_str() {
            Some(format) => format!("{kind} ({format})"),
            None => kind.to_owned(),
        },
        None => "any".into(),
    }
}

/// What the API server checks of the field's value.
fn rules(field: &Value, required: bool) -> String {
    let mut rules = Vec::new();
    if required {
        rules.push("required".to_owned());
    }
    if let Some(values) = field["enum"].as_array() {
        let values: Vec<String> =
            values.iter().map(|value| format!("`{}`", value.as_str().map_or_else(|| value.to_string(), str::to_owned))).collect();
        rules.push(format!("one of {}", values.join(", ")));
    }
    for (key, word) in [("minimum", "at least"), ("maximum", "at most"), ("minLength", "length at least"), ("maxLength", "length at most")]
    {
        if let Some(bound) = field[key].as_f64() {
            rules.push(format!("{word} {bound}"));
        }
    }
    if let Some(pattern) = field["pattern"].as_str() {
        rules.push(format!("matches `{pattern}`"));
    }
    rules.join("; ")
}

/// Text fit for one table cell: one line, and no `|` that would end it.
fn cell(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::assert_committed;

    #[test]
    fn committed_field_reference_matches_the_schema() {
        assert_committed(FIELDS_PATH, &field_reference());
    }

    #[test]
    fn every_spec_field_is_listed_with_its_rules() {
        let reference = field_reference();
        let row = |path: &str| reference.lines().find(|line| line.starts_with(&format!("| `{path}` |"))).unwrap_or_default().to_owned();
        assert!(
            row("spec.streams.input.capacityMode").contains("one of `Provisioned`, `OnDemand`"),
            "{}",
            row("spec.streams.input.capacityMode")
        );
        assert!(row("spec.aggregator.replicas").contains("| `1` |") && row("spec.aggregator.replicas").contains("at most 1"));
        assert!(row("spec.aggregator.resources.limits").starts_with("| `spec.aggregator.resources.limits` | map of integer or string |"));
        assert!(row("status.conditions[].type").contains("required"), "{}", row("status.conditions[].type"));
    }
}
