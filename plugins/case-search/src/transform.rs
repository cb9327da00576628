//! The case-search transform, as plain Rust (no Wasm types), so the same
//! code runs in the component and natively in benchmarks.
//!
//! The document is the one CommCare's case-search adapter writes
//! (`ElasticCaseSearch._from_dict` in `corehq/apps/es/case_search.py`,
//! `_get_case_properties` in `corehq/pillows/case_search.py`):
//!
//! - every top-level property of CommCare's case-search mapping ([`FIELDS`]),
//!   copied from the case (the last of a repeated key, as Python's `json`
//!   reads it) or `null` when the case lacks it, and no other field;
//! - `doc_id`: the case's `_id` (which is the Elasticsearch id, never part
//!   of the source);
//! - `@indexed_on`: when the host processed the change, as CommCare's
//!   `json_format_datetime` writes it (`2026-01-03T09:00:00.000000Z`);
//! - `case_properties`: CommCare's special properties in CommCare's order,
//!   with their values as the case has them, then each property of
//!   `case_json` as `{"key", "value"}` with the value as Python's `str()`
//!   gives it (`True`, `None`, `['a', 'b']`, `100000.0`); a key written
//!   twice keeps its first place and its last value.

use pillowtop_sdk::json::{self, Key, Kind, Value};
use pillowtop_sdk::python;
use pillowtop_sdk::time::format_rfc3339_ms;
use std::borrow::Cow;
use std::fmt;

/// The top-level properties of CommCare's case-search mapping
/// (`corehq/apps/es/mappings/case_search_mapping.py`) that are copied from
/// the case, in the mapping's order; `case_properties` and `@indexed_on`
/// (CommCare's `SYSTEM_PROPERTIES`) are written by the transform.
pub const FIELDS: [&str; 18] = [
    "closed",
    "closed_by",
    "closed_on",
    "doc_id",
    "doc_type",
    "domain",
    "external_id",
    "indices",
    "location_id",
    "modified_on",
    "name",
    "opened_by",
    "opened_on",
    "owner_id",
    "server_modified_on",
    "type",
    "user_id",
    TOMBSTONE,
];

/// The property CommCare reserves for its reindexing tombstones: a case
/// that sets it truthy is refused, as CommCare's adapter refuses it.
const TOMBSTONE: &str = "__is_tombstone__";

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
    /// The case sets CommCare's reserved `__is_tombstone__`.
    Tombstone,
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
            TransformError::Tombstone => write!(
                f,
                "case document sets `{TOMBSTONE}`, which CommCare reserves for index tombstones; remove it from the case"
            ),
        }
    }
}

/// What the transform made of a case document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The case-search document was appended to the output.
    Document,
    /// The case is a deleted one (its `doc_type` ends in `-Deleted`): its
    /// document is to be deleted, nothing was written.
    Deleted,
}

/// Whether `doc_type` names a deleted document (CommCare's `-Deleted` suffix).
pub fn is_deleted_type(doc_type: &str) -> bool {
    doc_type.ends_with("-Deleted")
}

/// Whether the case document `doc` is a live case: its `doc_type` is set
/// and is not a deleted one. CommCare's `ElasticProcessor` deletes nothing
/// for a deletion change whose current document is live (the case was
/// restored after the deletion was published).
pub fn is_live(doc: &str) -> bool {
    Value::parse(doc)
        .ok()
        .and_then(|v| v.get_last("doc_type"))
        .is_some_and(|t| t.truthy() && !t.as_str().is_some_and(|t| is_deleted_type(&t)))
}

/// What a case holds that the document is made of.
#[derive(Default)]
struct Read<'a> {
    id: Option<Value<'a>>,
    fields: [Option<Value<'a>>; FIELDS.len()],
    case_json: Option<Value<'a>>,
    /// How many `case_json` members the document has (Python reads the last).
    case_json_members: usize,
    /// `case_json`'s keys as written, to find a repeated one.
    keys: Vec<Key<'a>>,
}

impl<'a> Read<'a> {
    fn field(&self, name: &str) -> Option<Value<'a>> {
        FIELDS
            .iter()
            .position(|f| *f == name)
            .and_then(|i| self.fields[i])
    }
}

/// Transform the case document `doc` (JSON text) of change `change_id`,
/// processed at `indexed_on_ms` (epoch milliseconds), into its case-search
/// document, appended to `out`; a case whose `doc_type` is a deleted one
/// writes nothing and gives [`Outcome::Deleted`].
///
/// # Errors
///
/// Fails when `doc` is not a JSON object, `case_json` is not an object,
/// or the case sets `__is_tombstone__`.
pub fn case_search_document(
    change_id: &str,
    doc: &str,
    indexed_on_ms: i64,
    out: &mut String,
) -> Result<Outcome, TransformError> {
    let mut walk = json::walk_object(doc).map_err(|e| match e.reason {
        "expected a JSON object" => TransformError::NotAnObject,
        _ => TransformError::InvalidJson(e),
    })?;
    let mut read = Read::default();
    // Dynamic properties are written while `case_json` is read, in the same
    // pass over the document, and appended after the special ones.
    let mut dynamic = String::with_capacity(doc.len());
    let mut keys = Vec::new();
    while let Some(member) = walk.next_expanding("case_json", |key, value| {
        keys.push(key);
        dynamic_property(&mut dynamic, key.raw(), value);
    }) {
        let (key, value) = member.map_err(TransformError::InvalidJson)?;
        let name = key_name(&key);
        match &*name {
            "_id" => read.id = Some(value),
            "case_json" => {
                read.case_json = Some(value);
                read.case_json_members += 1;
            }
            name => {
                if let Some(i) = FIELDS.iter().position(|f| *f == name) {
                    read.fields[i] = Some(value);
                }
            }
        }
    }
    read.keys = keys;
    let case_json = read.case_json;
    if case_json.is_some_and(|v| v.kind() != Kind::Object) {
        return Err(TransformError::CaseJsonNotAnObject);
    }
    // The walk wrote each property as it came. A key written twice (or a
    // document with `case_json` twice, whose every object the walk
    // expanded) is written again as Python's dict holds the last one.
    if let Some(case_json) = case_json
        && (read.case_json_members > 1 || repeats(&read.keys))
    {
        dynamic.clear();
        for (key, value) in python::dict_items(case_json) {
            let mut quoted = String::with_capacity(key.len() + 2);
            json::write_str(&mut quoted, &key);
            dynamic_property(&mut dynamic, &quoted, value);
        }
    }
    if read
        .field("doc_type")
        .and_then(|t| t.as_str())
        .is_some_and(|t| is_deleted_type(&t))
    {
        return Ok(Outcome::Deleted);
    }
    if read.field(TOMBSTONE).is_some_and(|v| v.truthy()) {
        return Err(TransformError::Tombstone);
    }

    let id_text;
    let id: &str = match read.id {
        Some(id) => id.raw(),
        None => {
            let mut quoted = String::with_capacity(change_id.len() + 2);
            json::write_str(&mut quoted, change_id);
            id_text = quoted;
            &id_text
        }
    };
    out.reserve(doc.len() + doc.len() / 2 + 512);
    out.push('{');
    for (name, value) in FIELDS.iter().zip(read.fields) {
        out.push('"');
        out.push_str(name);
        out.push_str("\":");
        if *name == "doc_id" {
            out.push_str(id);
        } else {
            out.push_str(value.map_or("null", |v| v.raw()));
        }
        out.push(',');
    }
    out.push_str("\"@indexed_on\":\"");
    let time = format_rfc3339_ms(indexed_on_ms);
    // CommCare writes microseconds: `.mmm` becomes `.mmm000`.
    out.push_str(time.trim_end_matches('Z'));
    out.push_str("000Z\",\"case_properties\":[");

    fn raw_or_null<'a>(v: Option<Value<'a>>) -> &'a str {
        v.map_or("null", |v| v.raw())
    }
    property(out, "@case_id", id);
    out.push(',');
    property(out, "@case_type", raw_or_null(read.field("type")));
    out.push(',');
    property(out, "@owner_id", raw_or_null(read.field("owner_id")));
    out.push(',');
    let closed = read.field("closed").is_some_and(|v| v.truthy());
    property(
        out,
        "@status",
        if closed { "\"closed\"" } else { "\"open\"" },
    );
    out.push(',');
    let name = raw_or_null(read.field("name"));
    property(out, "name", name);
    out.push(',');
    property(out, "case_name", name);
    out.push(',');
    // `doc.get('external_id', '')`: "" only when the case lacks the key.
    property(
        out,
        "external_id",
        read.field("external_id").map_or("\"\"", |v| v.raw()),
    );
    out.push(',');
    property(out, "date_opened", raw_or_null(read.field("opened_on")));
    out.push(',');
    property(out, "closed_on", raw_or_null(read.field("closed_on")));
    out.push(',');
    property(out, "last_modified", raw_or_null(read.field("modified_on")));

    out.push_str(&dynamic);
    out.push_str("]}");
    Ok(Outcome::Document)
}

/// A member's name: as written when it has no escapes (nearly always).
fn key_name<'a>(key: &Key<'a>) -> Cow<'a, str> {
    let raw = key.raw();
    if raw.contains('\\') {
        key.decoded()
    } else {
        Cow::Borrowed(&raw[1..raw.len() - 1])
    }
}

/// Whether a key of `case_json` is written twice (compared as decoded
/// text, so `"a"` and `"\u0061"` are one key).
fn repeats(keys: &[Key<'_>]) -> bool {
    let mut names: Vec<Cow<'_, str>> = keys.iter().map(key_name).collect();
    names.sort_unstable();
    names.windows(2).any(|w| w[0] == w[1])
}

/// `,{"key":<key>,"value":<Python's str() of the value>}`.
fn dynamic_property(out: &mut String, raw_key: &str, value: Value<'_>) {
    out.push_str(",{\"key\":");
    out.push_str(raw_key);
    out.push_str(",\"value\":");
    if value.kind() == Kind::String {
        out.push_str(value.raw());
    } else {
        let mut text = String::new();
        python::write_str(&mut text, value);
        json::write_str(out, &text);
    }
    out.push('}');
}

/// `{"key":"<key>","value":<raw JSON>}`; `key` needs no escaping.
fn property(out: &mut String, key: &str, raw_value: &str) {
    out.push_str("{\"key\":\"");
    out.push_str(key);
    out.push_str("\",\"value\":");
    out.push_str(raw_value);
    out.push('}');
}

/// Which domains are indexed: every one but those left out, as CommCare
/// runs it (`domain_needs_search_index`: not in `DomainsNotInCaseSearchIndex`),
/// or, as an option, only some.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domains {
    /// Only these (`None`: every domain).
    pub only: Option<Vec<String>>,
    /// Never these (CommCare's `DomainsNotInCaseSearchIndex`).
    pub excluded: Vec<String>,
}

impl Domains {
    /// Whether changes of `domain` are indexed. A change without a domain
    /// never is (CommCare skips it too).
    pub fn enabled(&self, domain: &str) -> bool {
        !domain.is_empty()
            && !self.excluded.iter().any(|d| d == domain)
            && self
                .only
                .as_ref()
                .is_none_or(|only| only.iter().any(|d| d == domain))
    }
}

/// CommCare's case-search index (`HQ_CASE_SEARCH_INDEX_NAME` in
/// `corehq/apps/es/const.py`).
pub const DEFAULT_INDEX: &str = "case-search-20230524";

/// The plugin's `[config]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The index written to (default CommCare's, [`DEFAULT_INDEX`]).
    pub index: String,
    /// An alias the host points at the index, for query code that reads
    /// through one (CommCare's older `case_search`); none by default.
    pub alias: Option<String>,
    /// Which domains are indexed.
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
        let mut config = Config {
            index: DEFAULT_INDEX.to_string(),
            alias: None,
            domains: Domains {
                only: None,
                excluded: vec![],
            },
        };
        for (key, value) in root.members() {
            match &*key.decoded() {
                "index" => config.index = name(value, "index", DEFAULT_INDEX)?,
                "alias" => config.alias = Some(name(value, "alias", "case_search")?),
                "exclude_domains" => {
                    config.domains.excluded = domain_list(value).ok_or(
                        "config key `exclude_domains` must list domain names, e.g. exclude_domains = [\"big-project\"]",
                    )?;
                }
                "domains" => {
                    config.domains.only = match value.kind() {
                        Kind::String if value.as_str().as_deref() == Some("*") => None,
                        Kind::Array => {
                            let names = domain_list(value)
                                .ok_or("config key `domains` must list domain names as strings")?;
                            // `["*"]` means every domain too, not a domain named "*".
                            (!names.iter().any(|d| d == "*")).then_some(names)
                        }
                        _ => {
                            return Err("config key `domains` must be \"*\" (every domain, the default) or a list of the only domains to index".into());
                        }
                    };
                }
                other => {
                    return Err(format!(
                        "unknown config key `{other}`; valid keys: index, alias, exclude_domains, domains"
                    ));
                }
            }
        }
        if config.alias.as_deref() == Some(config.index.as_str()) {
            return Err(format!(
                "config key `alias` must differ from `index` (both are {:?})",
                config.index
            ));
        }
        Ok(config)
    }
}

/// A non-empty string config value.
fn name(value: Value<'_>, key: &str, example: &str) -> Result<String, String> {
    value
        .as_str()
        .filter(|s| !s.is_empty())
        .map(Cow::into_owned)
        .ok_or_else(|| {
            format!("config key `{key}` must be a non-empty string, e.g. {key} = {example:?}")
        })
}

fn domain_list(value: Value<'_>) -> Option<Vec<String>> {
    if value.kind() != Kind::Array {
        return None;
    }
    value
        .elements()
        .map(|d| d.as_str().map(Cow::into_owned))
        .collect()
}

/// The index mappings declared to the host: CommCare's case-search mapping
/// (see the plugin's README for what is left out and why).
pub const MAPPINGS: &str = include_str!("../mappings.json");

#[cfg(test)]
mod tests {
    use super::*;

    fn run(doc: &str) -> String {
        let mut out = String::new();
        case_search_document("c1", doc, 0, &mut out).unwrap();
        out
    }

    fn properties(out: &str) -> Vec<(String, String)> {
        let v = Value::parse(out).unwrap();
        v.get("case_properties")
            .unwrap()
            .elements()
            .map(|p| {
                (
                    p.get("key").unwrap().as_str().unwrap().into_owned(),
                    p.get("value").unwrap().raw().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn output_holds_exactly_the_mapping_fields_then_indexed_on_and_properties() {
        let out = run(
            r#"{"_id":"c1","type":"patient","closed":false,"extra":1,"case_json":{"age":3,"x":"y"}}"#,
        );
        let v = Value::parse(&out).unwrap();
        let names: Vec<_> = v.members().map(|(k, _)| k.decoded().into_owned()).collect();
        let mut expected: Vec<String> = FIELDS.iter().map(|f| f.to_string()).collect();
        expected.push("@indexed_on".into());
        expected.push("case_properties".into());
        assert_eq!(names, expected);
        assert_eq!(v.get("doc_id").unwrap().raw(), "\"c1\"");
        assert!(v.get("owner_id").unwrap().is_null());
        assert_eq!(
            v.get("@indexed_on").unwrap().raw(),
            "\"1970-01-01T00:00:00.000000Z\""
        );
        let keys: Vec<_> = properties(&out).into_iter().map(|(k, _)| k).collect();
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
    }

    #[test]
    fn indexed_on_is_the_processing_time_in_microseconds() {
        let mut out = String::new();
        case_search_document("c", r#"{"_id":"c"}"#, 1_767_430_800_123, &mut out).unwrap();
        let v = Value::parse(&out).unwrap();
        assert_eq!(
            v.get("@indexed_on").unwrap().as_str().unwrap(),
            "2026-01-03T09:00:00.123000Z"
        );
    }

    #[test]
    fn a_repeated_key_keeps_its_first_place_and_last_value() {
        let out = run(r#"{"_id":"c1","case_json":{"a":"1","b":"2","\u0061":"3"}}"#);
        let dynamic: Vec<_> = properties(&out).into_iter().skip(10).collect();
        assert_eq!(
            dynamic,
            [("a".into(), "\"3\"".into()), ("b".into(), "\"2\"".into())]
        );
        // Two `case_json` members: the last one counts.
        let out = run(r#"{"_id":"c1","case_json":{"a":"1"},"case_json":{"b":true}}"#);
        let dynamic: Vec<_> = properties(&out).into_iter().skip(10).collect();
        assert_eq!(dynamic, [("b".into(), "\"True\"".into())]);
        // A repeated top-level field: the last value.
        let out = run(r#"{"_id":"c1","type":"a","type":"b"}"#);
        assert_eq!(
            Value::parse(&out).unwrap().get("type").unwrap().raw(),
            "\"b\""
        );
    }

    #[test]
    fn status_and_external_id_follow_python() {
        let status = |closed: &str| {
            let out = run(&format!(r#"{{"_id":"c1","closed":{closed}}}"#));
            properties(&out)[3].1.clone()
        };
        assert_eq!(status("true"), "\"closed\"");
        assert_eq!(status("\"yes\""), "\"closed\"");
        assert_eq!(status("1"), "\"closed\"");
        assert_eq!(status("false"), "\"open\"");
        assert_eq!(status("\"\""), "\"open\"");
        assert_eq!(status("0"), "\"open\"");
        assert_eq!(status("null"), "\"open\"");
        // external_id: null stays null; only a missing key is "".
        assert_eq!(
            properties(&run(r#"{"_id":"c1","external_id":null}"#))[6].1,
            "null"
        );
        assert_eq!(properties(&run(r#"{"_id":"c1"}"#))[6].1, "\"\"");
    }

    #[test]
    fn missing_id_falls_back_to_the_change_id() {
        let out = run(r#"{"type":"t"}"#);
        assert!(out.contains(r#"{"key":"@case_id","value":"c1"}"#), "{out}");
        assert!(out.contains(r#""doc_id":"c1""#), "{out}");
    }

    #[test]
    fn rejects_bad_documents() {
        let mut out = String::new();
        let mut check = |doc: &str| case_search_document("c", doc, 0, &mut out);
        assert_eq!(check("[1]"), Err(TransformError::NotAnObject));
        assert!(matches!(
            check("{\"a\":}"),
            Err(TransformError::InvalidJson(_))
        ));
        assert_eq!(
            check(r#"{"case_json":[1]}"#),
            Err(TransformError::CaseJsonNotAnObject)
        );
        assert_eq!(
            check(r#"{"case_json":{"a":1},"case_json":"x"}"#),
            Err(TransformError::CaseJsonNotAnObject)
        );
        assert_eq!(
            check(r#"{"__is_tombstone__":true}"#),
            Err(TransformError::Tombstone)
        );
        assert!(check(r#"{"__is_tombstone__":false}"#).is_ok());
        assert_eq!(
            check(r#"{"doc_type":"CommCareCase-Deleted","__is_tombstone__":true}"#),
            Ok(Outcome::Deleted)
        );
    }

    #[test]
    fn live_and_deleted_documents() {
        assert!(is_live(r#"{"doc_type":"CommCareCase"}"#));
        assert!(!is_live(r#"{"doc_type":"CommCareCase-Deleted"}"#));
        assert!(!is_live(r#"{"doc_type":""}"#));
        assert!(!is_live(r#"{"_id":"c"}"#));
        assert!(!is_live("not json"));
    }

    #[test]
    fn config_parsing() {
        let default = Config::parse("{}").unwrap();
        assert_eq!(default.index, DEFAULT_INDEX);
        assert_eq!(default.alias, None);
        assert!(default.domains.enabled("any") && !default.domains.enabled(""));
        let c = Config::parse(
            r#"{"index":"cs","alias":"case_search","exclude_domains":["big"],"domains":["a","big"]}"#,
        )
        .unwrap();
        assert_eq!(c.alias.as_deref(), Some("case_search"));
        assert!(c.domains.enabled("a"));
        assert!(!c.domains.enabled("big"), "the deny-list wins");
        assert!(!c.domains.enabled("c"));
        for (bad, says) in [
            (r#"{"domain":"*"}"#, "unknown config key `domain`"),
            (r#"{"domains":3}"#, "\"*\""),
            (r#"{"exclude_domains":"big"}"#, "exclude_domains = ["),
            (r#"{"index":""}"#, "non-empty string"),
            (r#"{"index":"x","alias":"x"}"#, "must differ"),
        ] {
            let e = Config::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn a_list_holding_star_means_every_domain() {
        let all = Config::parse(r#"{"domains": ["*"]}"#).unwrap();
        assert_eq!(all.domains.only, None);
        let some = Config::parse(r#"{"domains": ["demo"]}"#).unwrap();
        assert!(some.domains.enabled("demo") && !some.domains.enabled("other"));
    }

    #[test]
    fn mappings_are_commcares_properties() {
        let m = Value::parse(MAPPINGS).unwrap();
        assert_eq!(m.get("dynamic").unwrap().raw(), "false");
        let props: Vec<_> = m
            .get("properties")
            .unwrap()
            .members()
            .map(|(k, _)| k.decoded().into_owned())
            .collect();
        for field in FIELDS.iter().chain(&["@indexed_on", "case_properties"]) {
            assert!(props.iter().any(|p| p == field), "{field} not mapped");
        }
        assert_eq!(props.len(), FIELDS.len() + 2);
    }
}
