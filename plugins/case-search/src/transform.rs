//! The case-search transform, as plain Rust (no Wasm types), so the same
//! code runs in the component and natively in benchmarks.
//!
//! Output, for a case document: every top-level field except the raw
//! property map `case_json` (and any stale `case_properties`), copied
//! verbatim, plus `case_properties`: a list of `{"key", "value"}` with, first,
//! CommCare's special properties in CommCare's order and then every dynamic
//! property of `case_json` in document order with its value as a string.

use pillowtop_sdk::json::{self, Kind, Value};
use std::fmt;

/// Why a case could not be transformed. Always permanent: the same document
/// will fail the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransformError {
    /// The document is not valid JSON.
    InvalidJson(json::Error),
    /// The document is JSON but not an object.
    NotAnObject,
    /// `case_json` is present but not an object.
    CaseJsonNotAnObject,
}

impl fmt::Display for TransformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransformError::InvalidJson(e) => write!(f, "case document is not valid JSON: {e}"),
            TransformError::NotAnObject => write!(f, "case document is not a JSON object"),
            TransformError::CaseJsonNotAnObject => {
                write!(
                    f,
                    "case document field `case_json` must be an object of case properties"
                )
            }
        }
    }
}

/// The document fields CommCare's special case properties are read from.
#[derive(Default)]
struct Special<'a> {
    id: Option<Value<'a>>,
    case_type: Option<Value<'a>>,
    owner_id: Option<Value<'a>>,
    closed: Option<Value<'a>>,
    name: Option<Value<'a>>,
    external_id: Option<Value<'a>>,
    opened_on: Option<Value<'a>>,
    closed_on: Option<Value<'a>>,
    modified_on: Option<Value<'a>>,
}

/// Transform the case document `doc` (JSON text) of change `change_id` into
/// its case-search document, appended to `out`.
///
/// # Errors
///
/// Fails when `doc` is not a JSON object or `case_json` is not an object.
pub fn case_search_document(
    change_id: &str,
    doc: &str,
    out: &mut String,
) -> Result<(), TransformError> {
    let mut walk = json::walk_object(doc).map_err(|e| match e.reason {
        "expected a JSON object" => TransformError::NotAnObject,
        _ => TransformError::InvalidJson(e),
    })?;
    out.reserve(doc.len() + doc.len() / 2 + 256);
    out.push('{');
    let mut special = Special::default();
    let mut case_json_kind = None;
    // Dynamic properties are written while `case_json` is read, in the same
    // pass over the document, and appended after the special ones.
    let mut dynamic = String::with_capacity(doc.len());
    let mut first = true;
    while let Some(member) = walk.next_expanding("case_json", |key, value| {
        dynamic.push_str(",{\"key\":");
        dynamic.push_str(key.raw());
        dynamic.push_str(",\"value\":");
        string_value(&mut dynamic, value);
        dynamic.push('}');
    }) {
        let (key, value) = member.map_err(TransformError::InvalidJson)?;
        let name = key.raw();
        let name = &name[1..name.len() - 1];
        match name {
            "case_json" => {
                case_json_kind = Some(value.kind());
                continue;
            }
            "case_properties" => continue,
            // The document id, not part of the source: Elasticsearch
            // refuses `_id` inside a document (CommCare's adapters drop it too).
            "_id" => {
                special.id = Some(value);
                continue;
            }
            "type" => special.case_type = Some(value),
            "owner_id" => special.owner_id = Some(value),
            "closed" => special.closed = Some(value),
            "name" => special.name = Some(value),
            "external_id" => special.external_id = Some(value),
            "opened_on" => special.opened_on = Some(value),
            "closed_on" => special.closed_on = Some(value),
            "modified_on" => special.modified_on = Some(value),
            _ => {}
        }
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(key.raw());
        out.push(':');
        out.push_str(value.raw());
    }
    if case_json_kind.is_some_and(|k| k != Kind::Object) {
        return Err(TransformError::CaseJsonNotAnObject);
    }
    if !first {
        out.push(',');
    }
    out.push_str("\"case_properties\":[");

    fn raw_or_null<'a>(v: Option<Value<'a>>) -> &'a str {
        v.map_or("null", |v| v.raw())
    }
    match special.id {
        Some(id) => property(out, "@case_id", id.raw()),
        None => {
            let mut quoted = String::with_capacity(change_id.len() + 2);
            json::write_str(&mut quoted, change_id);
            property(out, "@case_id", &quoted);
        }
    }
    out.push(',');
    property(out, "@case_type", raw_or_null(special.case_type));
    out.push(',');
    property(out, "@owner_id", raw_or_null(special.owner_id));
    out.push(',');
    let closed = special.closed.and_then(|v| v.as_bool()).unwrap_or(false);
    property(
        out,
        "@status",
        if closed { "\"closed\"" } else { "\"open\"" },
    );
    out.push(',');
    property(out, "name", raw_or_null(special.name));
    out.push(',');
    property(out, "case_name", raw_or_null(special.name));
    out.push(',');
    let external_id = special.external_id.filter(|v| !v.is_null());
    property(out, "external_id", external_id.map_or("\"\"", |v| v.raw()));
    out.push(',');
    property(out, "date_opened", raw_or_null(special.opened_on));
    out.push(',');
    property(out, "closed_on", raw_or_null(special.closed_on));
    out.push(',');
    property(out, "last_modified", raw_or_null(special.modified_on));

    out.push_str(&dynamic);
    out.push_str("]}");
    Ok(())
}

/// `{"key":"<key>","value":<raw JSON>}`; `key` needs no escaping.
fn property(out: &mut String, key: &str, raw_value: &str) {
    out.push_str("{\"key\":\"");
    out.push_str(key);
    out.push_str("\",\"value\":");
    out.push_str(raw_value);
    out.push('}');
}

/// A dynamic property value as a JSON string: strings as they are, numbers
/// and booleans as their JSON text, `null` as `""`, arrays and objects as
/// their compact JSON text.
fn string_value(out: &mut String, value: Value<'_>) {
    match value.kind() {
        Kind::String => out.push_str(value.raw()),
        Kind::Null => out.push_str("\"\""),
        Kind::Number | Kind::Bool => {
            out.push('"');
            out.push_str(value.raw());
            out.push('"');
        }
        Kind::Array | Kind::Object => {
            let mut compact = String::with_capacity(value.raw().len());
            json::write_compact(&mut compact, value.raw());
            out.push('"');
            json::write_escaped(out, &compact);
            out.push('"');
        }
    }
}

/// Which domains have case search enabled (CommCare's per-domain switch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Domains {
    /// Every domain (`"domains": "*"`).
    All,
    /// Only these domains.
    Only(Vec<String>),
}

impl Domains {
    /// Whether `domain` is enabled.
    pub fn enabled(&self, domain: &str) -> bool {
        match self {
            Domains::All => true,
            Domains::Only(list) => list.iter().any(|d| d == domain),
        }
    }
}

/// The plugin's `[config]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The index written to (default `case-search`).
    pub index: String,
    /// Domains with case search enabled.
    pub domains: Domains,
}

impl Config {
    /// Parse the `[config]` table as JSON, as the host passes it to `init`.
    ///
    /// # Errors
    ///
    /// Says which key is wrong and what is valid.
    pub fn parse(text: &str) -> Result<Config, String> {
        let root = Value::parse(text).map_err(|e| format!("config is not valid JSON: {e}"))?;
        let mut index = "case-search".to_string();
        let mut domains = None;
        for (key, value) in root.members() {
            match &*key.decoded() {
                "index" => {
                    index = value
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .ok_or("config key `index` must be a non-empty string, e.g. index = \"case-search\"")?
                        .into_owned();
                }
                "domains" => {
                    domains = Some(match value.kind() {
                        Kind::String if value.as_str().as_deref() == Some("*") => Domains::All,
                        Kind::Array => {
                            let names = value
                                .elements()
                                .map(|d| d.as_str().map(|s| s.into_owned()))
                                .collect::<Option<Vec<_>>>()
                                .ok_or("config key `domains` must list domain names as strings")?;
                            // `["*"]` means every domain too, not a domain named "*".
                            if names.iter().any(|d| d == "*") {
                                Domains::All
                            } else {
                                Domains::Only(names)
                            }
                        }
                        _ => {
                            return Err("config key `domains` must be \"*\" (all domains) or a list of domain names".into());
                        }
                    });
                }
                other => {
                    return Err(format!(
                        "unknown config key `{other}`; valid keys: index, domains"
                    ));
                }
            }
        }
        let domains = domains.ok_or(
            "config key `domains` is required: \"*\" for every domain, or a list such as [\"demo\"]",
        )?;
        Ok(Config { index, domains })
    }
}

/// The index mappings declared to the host (`case_properties` is nested so
/// key/value pairs are queried together, as CommCare's case search does).
pub const MAPPINGS: &str = include_str!("../mappings.json");

#[cfg(test)]
mod tests {
    use super::*;

    fn run(doc: &str) -> String {
        let mut out = String::new();
        case_search_document("c1", doc, &mut out).unwrap();
        out
    }

    #[test]
    fn output_is_valid_json_with_special_then_dynamic_properties() {
        let out =
            run(r#"{"_id":"c1","type":"patient","closed":false,"case_json":{"age":3,"x":"y"}}"#);
        let v = Value::parse(&out).unwrap();
        let props: Vec<_> = v.get("case_properties").unwrap().elements().collect();
        let keys: Vec<_> = props
            .iter()
            .map(|p| p.get("key").unwrap().as_str().unwrap().into_owned())
            .collect();
        assert_eq!(
            keys,
            [
                "@case_id",
                "@case_type",
                "@owner_id",
                "@status",
                "name",
                "case_name",
                "external_id",
                "date_opened",
                "closed_on",
                "last_modified",
                "age",
                "x"
            ]
        );
        assert_eq!(props[10].get("value").unwrap().raw(), "\"3\"");
        assert!(v.get("case_json").is_none());
        assert!(v.get("_id").is_none(), "_id is the document id, not source");
        assert!(v.get("type").is_some());
    }

    #[test]
    fn missing_id_falls_back_to_the_change_id() {
        let out = run(r#"{"type":"t"}"#);
        assert!(out.contains(r#"{"key":"@case_id","value":"c1"}"#), "{out}");
    }

    #[test]
    fn rejects_bad_documents() {
        let mut out = String::new();
        assert_eq!(
            case_search_document("c", "[1]", &mut out),
            Err(TransformError::NotAnObject)
        );
        assert!(matches!(
            case_search_document("c", "{\"a\":}", &mut out),
            Err(TransformError::InvalidJson(_))
        ));
        assert_eq!(
            case_search_document("c", r#"{"case_json":[1]}"#, &mut out),
            Err(TransformError::CaseJsonNotAnObject)
        );
    }

    #[test]
    fn config_parsing() {
        assert_eq!(
            Config::parse(r#"{"domains":"*"}"#).unwrap(),
            Config {
                index: "case-search".into(),
                domains: Domains::All
            }
        );
        let c = Config::parse(r#"{"index":"cs","domains":["a","b"]}"#).unwrap();
        assert!(c.domains.enabled("b") && !c.domains.enabled("c"));
        assert!(
            Config::parse(r#"{"domain":"*"}"#)
                .unwrap_err()
                .contains("unknown config key `domain`")
        );
        assert!(
            Config::parse(r#"{}"#)
                .unwrap_err()
                .contains("`domains` is required")
        );
        assert!(
            Config::parse(r#"{"domains":3}"#)
                .unwrap_err()
                .contains("\"*\"")
        );
    }

    #[test]
    fn a_list_holding_star_means_every_domain() {
        let all = Config::parse(r#"{"domains": ["*"]}"#).unwrap();
        assert_eq!(all.domains, Domains::All);
        let some = Config::parse(r#"{"domains": ["demo"]}"#).unwrap();
        assert!(some.domains.enabled("demo") && !some.domains.enabled("other"));
    }
}
