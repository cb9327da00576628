//! Comparing a plugin's declared mappings with an existing index's, pure.
//!
//! Elasticsearch can add fields to a mapping but never change a field's
//! type; an index whose fields disagree with what the plugin declares
//! would reject or silently mis-index documents, so it is a startup error.

use serde_json::{Map, Value};

/// A field mapped differently in the index than the plugin declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// Dotted field path (`case_properties.value.exact` for a multi-field).
    pub field: String,
    /// Its type in the index.
    pub existing: String,
    /// The type the plugin declares.
    pub declared: String,
}

/// What comparing mappings found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Fields whose types differ.
    pub conflicts: Vec<Conflict>,
    /// Declared fields the index lacks (they can be added).
    pub missing: Vec<String>,
}

/// Compare `existing` (an index's `mappings` object) with `declared` (the
/// plugin's).
pub fn compare(existing: &Value, declared: &Value) -> Comparison {
    let mut out = Comparison::default();
    walk(
        "",
        properties(existing, "properties"),
        properties(declared, "properties"),
        &mut out,
    );
    out
}

fn properties<'a>(v: &'a Value, key: &str) -> Option<&'a Map<String, Value>> {
    v.get(key).and_then(Value::as_object)
}

/// A field's type; a field with sub-properties and no type is an object.
fn kind(field: &Value) -> &str {
    field
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("object")
}

fn walk(
    prefix: &str,
    existing: Option<&Map<String, Value>>,
    declared: Option<&Map<String, Value>>,
    out: &mut Comparison,
) {
    let Some(declared) = declared else { return };
    for (name, want) in declared {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let Some(have) = existing.and_then(|e| e.get(name)) else {
            out.missing.push(path);
            continue;
        };
        if kind(have) != kind(want) {
            out.conflicts.push(Conflict {
                field: path,
                existing: kind(have).to_owned(),
                declared: kind(want).to_owned(),
            });
            continue;
        }
        walk(
            &path,
            properties(have, "properties"),
            properties(want, "properties"),
            out,
        );
        walk(
            &path,
            properties(have, "fields"),
            properties(want, "fields"),
            out,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn declared() -> Value {
        json!({
            "dynamic": true,
            "properties": {
                "domain": {"type": "keyword"},
                "closed": {"type": "boolean"},
                "case_properties": {
                    "type": "nested",
                    "properties": {
                        "key": {"type": "keyword"},
                        "value": {"type": "text", "fields": {"exact": {"type": "keyword"}}}
                    }
                }
            }
        })
    }

    #[test]
    fn the_same_mapping_matches() {
        // Servers echo mappings back with settings spelled differently
        // ("dynamic": "true"); only field types matter.
        let mut existing = declared();
        existing["dynamic"] = json!("true");
        assert_eq!(compare(&existing, &declared()), Comparison::default());
    }

    #[test]
    fn changed_types_are_conflicts_and_new_fields_are_missing() {
        let existing = json!({
            "properties": {
                "domain": {"type": "text"},
                "case_properties": {
                    "type": "nested",
                    "properties": {
                        "key": {"type": "keyword"},
                        "value": {"type": "text", "fields": {"exact": {"type": "wildcard"}}}
                    }
                },
                "extra": {"type": "long"}
            }
        });
        let c = compare(&existing, &declared());
        assert_eq!(
            c.conflicts,
            vec![
                Conflict {
                    field: "case_properties.value.exact".into(),
                    existing: "wildcard".into(),
                    declared: "keyword".into(),
                },
                Conflict {
                    field: "domain".into(),
                    existing: "text".into(),
                    declared: "keyword".into(),
                },
            ]
        );
        assert_eq!(c.missing, vec!["closed".to_owned()]);
    }

    #[test]
    fn an_object_is_not_a_nested_field() {
        let existing = json!({"properties": {"case_properties": {"properties": {"key": {"type": "keyword"}}}}});
        let c = compare(&existing, &declared());
        assert_eq!(c.conflicts[0].field, "case_properties");
        assert_eq!(c.conflicts[0].existing, "object");
        assert_eq!(c.conflicts[0].declared, "nested");
    }
}
