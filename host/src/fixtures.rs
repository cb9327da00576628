//! Golden fixtures: a change in, the exact actions (or error) out.
//!
//! A plugin's `fixtures` directory holds one JSON file per case:
//!
//! ```json
//! {
//!   "description": "a closed case becomes a case-search document",
//!   "topic": "case-sql", "partition": 0, "offset": 42,
//!   "change": { "document_id": "c1", "document_type": "CommCareCase", "domain": "demo", "document": { ... } },
//!   "expect": [ { "index_document": { "index": "case-search", "id": "c1", "document": { ... } } } ]
//! }
//! ```
//!
//! `expect` lists actions as `index_document`, `create_document`, `delete_document`,
//! `upsert_rows` (rows of JSON scalars) or `delete_rows`; documents are
//! compared as JSON values (member order does not matter, array order
//! does). Instead of `expect`, `expect_error` names the error kind.
//! `"lookups": {"users": {"u1": {...}}}` is what the plugin's lookups find
//! (everything else is absent) and `processing_time_ms` the change's
//! processing time (default 0). Each
//! fixture runs several times on one instance ([`DEFAULT_RUNS`], or
//! `plugin check --runs N`) and once more on a fresh one: all runs must
//! give the same result (plugins must be deterministic and must not depend
//! on state left by earlier calls). Failures describe a large output by a
//! summary, never whole.

use crate::action::{Action, Cell};
use crate::change::Change;
use crate::feed::{Message, TopicPartition};
use crate::lookup::MemoryLookups;
use crate::wasm::{Failure, Processor};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One fixture file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// Topic the change appears on (default `fixtures`).
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Partition (default 0).
    #[serde(default)]
    pub partition: u32,
    /// Offset (default 0); it is the version of written documents.
    #[serde(default)]
    pub offset: u64,
    /// The feed message value: ChangeMeta plus `document`, kept as written
    /// (member order matters to plugins that preserve it).
    pub change: Box<serde_json::value::RawValue>,
    /// Expected actions.
    #[serde(default)]
    pub expect: Option<Vec<Value>>,
    /// Expected error kind instead (`permanent`, `retryable`, `trap`, ...).
    #[serde(default)]
    pub expect_error: Option<String>,
    /// What the plugin's lookups find: resource -> key -> value (any JSON
    /// value; the plugin receives its text). Keys not listed are absent.
    #[serde(default)]
    pub lookups: BTreeMap<String, BTreeMap<String, Value>>,
    /// The change's processing time (epoch milliseconds; default 0), so
    /// a plugin that stamps it (CommCare's `@indexed_on`) is checked.
    #[serde(default)]
    pub processing_time_ms: i64,
}

impl Fixture {
    /// Its lookups as the runtime serves them.
    fn lookups(&self) -> MemoryLookups {
        memory_lookups(&self.lookups)
    }
}

/// Lookups given as JSON (resource -> key -> value, as in a fixture's
/// `"lookups"`) as the runtime serves them: a string value is the text
/// the plugin receives, any other value its JSON text.
pub fn memory_lookups(lookups: &BTreeMap<String, BTreeMap<String, Value>>) -> MemoryLookups {
    MemoryLookups(
        lookups
            .iter()
            .map(|(resource, keys)| {
                let keys = keys
                    .iter()
                    .map(|(k, v)| {
                        let text = match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (k.clone(), text)
                    })
                    .collect();
                (resource.clone(), keys)
            })
            .collect(),
    )
}

fn default_topic() -> String {
    "fixtures".into()
}

/// Calls of each fixture on one instance (a fresh instance runs it once more).
pub const DEFAULT_RUNS: usize = 3;

/// Largest fixture file read.
const MAX_FIXTURE_BYTES: u64 = 16 << 20;

/// Longest rendering of an output or action in a failure message.
const MAX_SHOWN_CHARS: usize = 2000;

/// The result of one fixture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureResult {
    /// File name.
    pub name: String,
    /// What went wrong, if anything.
    pub failure: Option<String>,
    /// Fuel used by the first run.
    pub fuel_used: u64,
    /// Peak linear memory of the instance that ran it, in bytes.
    pub memory_bytes: usize,
}

/// Why fixtures could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// The directory or a file could not be read.
    #[error("cannot read fixtures {path}: {source}")]
    Read {
        /// Path.
        path: PathBuf,
        /// Error.
        source: crate::file::ReadError,
    },
    /// A file is not a valid fixture.
    #[error("invalid fixture {path}: {message}")]
    Invalid {
        /// Path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Load every `*.json` fixture under `dir`, sorted by name.
///
/// # Errors
///
/// See [`FixtureError`].
pub fn load(dir: &Path) -> Result<Vec<(String, Fixture)>, FixtureError> {
    let read = |source: std::io::Error| FixtureError::Read {
        path: dir.to_owned(),
        source: source.into(),
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = crate::file::read_text_bounded(
                &path,
                MAX_FIXTURE_BYTES,
                "a fixture is at most 16 MiB",
            )
            .map_err(|source| FixtureError::Read {
                path: path.clone(),
                source,
            })?;
            let fixture: Fixture =
                serde_json::from_str(&text).map_err(|e| FixtureError::Invalid {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            if fixture.expect.is_some() == fixture.expect_error.is_some() {
                return Err(FixtureError::Invalid {
                    path,
                    message: "give exactly one of `expect` and `expect_error`".into(),
                });
            }
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok((name, fixture))
        })
        .collect()
}

/// Run one fixture through `processor`, [`DEFAULT_RUNS`] times on one
/// instance and once on a fresh one.
pub fn run(processor: &mut Processor, name: &str, fixture: &Fixture) -> FixtureResult {
    run_times(processor, name, fixture, DEFAULT_RUNS)
}

/// Run one fixture through `processor`, `runs` times (at least 2) on one
/// instance and once on a fresh one; every result must be the same.
pub fn run_times(
    processor: &mut Processor,
    name: &str,
    fixture: &Fixture,
    runs: usize,
) -> FixtureResult {
    let message = Message {
        tp: TopicPartition::new(&fixture.topic, fixture.partition),
        offset: fixture.offset,
        key: None,
        value: fixture.change.get().as_bytes().to_vec(),
        timestamp_ms: None,
    };
    let fail = |failure: String, fuel_used| FixtureResult {
        name: name.to_owned(),
        failure: Some(failure),
        fuel_used,
        memory_bytes: 0,
    };
    let mut change = match crate::change::decode(message) {
        Ok(c) => c,
        Err(e) => return fail(format!("the fixture's change does not decode: {e}"), 0),
    };
    change.processing_time_ms = fixture.processing_time_ms;
    processor.set_lookups(Arc::new(fixture.lookups()));
    let result = run_change(processor, &change, runs, fail);
    processor.reset_lookups();
    let Ran {
        first,
        fuel_used,
        memory_bytes,
    } = match result {
        Ok(ran) => ran,
        Err(failed) => return failed,
    };
    let failure = match (&fixture.expect, &fixture.expect_error, first) {
        (Some(expected), _, Ok(actions)) => compare(expected, &actions).err(),
        (Some(_), _, Err(f)) => Some(format!("expected actions, got error {f}")),
        (None, Some(kind), Err(f)) if f.kind.as_str() == kind => None,
        (None, Some(kind), Err(f)) => Some(format!("expected error kind {kind}, got {f}")),
        (None, Some(kind), Ok(actions)) => Some(format!(
            "expected error kind {kind}, got {} actions",
            actions.len()
        )),
        (None, None, _) => Some("fixture has neither expect nor expect_error".into()),
    };
    FixtureResult {
        name: name.to_owned(),
        failure,
        fuel_used,
        memory_bytes,
    }
}

/// What the runs of one fixture gave, when they agreed.
struct Ran {
    first: Result<Vec<Action>, Failure>,
    fuel_used: u64,
    memory_bytes: usize,
}

/// Run `change` `runs` times on one instance and once on a fresh one:
/// the first result, its fuel and memory, or the fixture's failure.
fn run_change(
    processor: &mut Processor,
    change: &Change,
    runs: usize,
    fail: impl Fn(String, u64) -> FixtureResult,
) -> Result<Ran, FixtureResult> {
    // Several runs on one instance, then one on a fresh instance. All must
    // agree: a plugin may not depend on state left by earlier calls (the
    // host replaces instances after a trap and after a reload).
    let first = processor.process(change);
    let fuel_used = processor.last_fuel_used();
    for call in 2..=runs.max(2) {
        let again = processor.process(change);
        if first != again {
            return Err(fail(
                format!(
                    "not deterministic: call {call} of the same change on one instance gave {} where call 1 gave {}",
                    summarize(&again),
                    summarize(&first)
                ),
                fuel_used,
            ));
        }
    }
    let memory_bytes = processor.memory_bytes();
    if let Err(e) = processor.reinstantiate() {
        return Err(fail(
            format!("a fresh instance could not start: {e}"),
            fuel_used,
        ));
    }
    let fresh = processor.process(change);
    if first != fresh {
        return Err(fail(
            format!(
                "depends on earlier calls: the same change gave {} on a used instance and {} on a fresh one",
                summarize(&first),
                summarize(&fresh)
            ),
            fuel_used,
        ));
    }
    Ok(Ran {
        first,
        fuel_used,
        memory_bytes,
    })
}

/// A call's result for a message: whole when short, else its size and
/// kinds and the start of its first action.
pub fn summarize(result: &Result<Vec<Action>, Failure>) -> String {
    let actions = match result {
        Err(f) => {
            return format!(
                "error {}",
                crate::wasm::check::clip(&f.to_string(), MAX_SHOWN_CHARS)
            );
        }
        Ok(actions) => actions,
    };
    let bytes: usize = actions.iter().map(text_bytes).sum();
    if actions.len() <= 20 && bytes <= MAX_SHOWN_CHARS {
        return Value::from(actions.iter().map(action_json).collect::<Vec<_>>()).to_string();
    }
    let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
    for a in actions {
        *kinds.entry(a.kind()).or_default() += 1;
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    format!(
        "{} actions ({}) holding {bytes} bytes of text, starting {}",
        actions.len(),
        kinds.join(", "),
        shown(&action_json(&actions[0]))
    )
}

/// The text an action carries, in bytes.
fn text_bytes(a: &Action) -> usize {
    match a {
        Action::IndexDocument {
            index,
            id,
            document,
        }
        | Action::CreateDocument {
            index,
            id,
            document,
        } => index.len() + id.len() + document.len(),
        Action::DeleteDocument { index, id } => index.len() + id.len(),
        Action::UpsertRows { table, rows } => {
            table.len()
                + rows
                    .iter()
                    .flatten()
                    .map(|c| match c {
                        Cell::Text(t) => t.len(),
                        _ => 8,
                    })
                    .sum::<usize>()
        }
        Action::DeleteRows { table, doc_id } => table.len() + doc_id.len(),
    }
}

/// A JSON value for a message, cut to [`MAX_SHOWN_CHARS`].
fn shown(v: &Value) -> String {
    crate::wasm::check::clip(&v.to_string(), MAX_SHOWN_CHARS)
}

/// An action as fixture JSON.
pub fn action_json(action: &Action) -> Value {
    let cell = |c: &Cell| match c {
        Cell::Null => Value::Null,
        Cell::Boolean(b) => Value::Bool(*b),
        Cell::Integer(i) => Value::from(*i),
        Cell::Float(f) => Value::from(*f),
        Cell::Text(t) => Value::String(t.clone()),
    };
    match action {
        Action::IndexDocument {
            index,
            id,
            document,
        } => serde_json::json!({"index_document": {
            "index": index, "id": id, "document": document_json(document),
        }}),
        Action::CreateDocument {
            index,
            id,
            document,
        } => serde_json::json!({"create_document": {
            "index": index, "id": id, "document": document_json(document),
        }}),
        Action::DeleteDocument { index, id } => {
            serde_json::json!({"delete_document": {"index": index, "id": id}})
        }
        Action::UpsertRows { table, rows } => serde_json::json!({"upsert_rows": {
            "table": table,
            "rows": rows.iter().map(|r| r.iter().map(cell).collect::<Vec<_>>()).collect::<Vec<_>>(),
        }}),
        Action::DeleteRows { table, doc_id } => {
            serde_json::json!({"delete_rows": {"table": table, "doc_id": doc_id}})
        }
    }
}

/// A document as a JSON value (as text when it is not JSON).
fn document_json(document: &str) -> Value {
    serde_json::from_str::<Value>(document).unwrap_or_else(|_| Value::String(document.to_owned()))
}

fn compare(expected: &[Value], actual: &[Action]) -> Result<(), String> {
    if expected.len() != actual.len() {
        return Err(format!(
            "expected {} actions, got {}: {}",
            expected.len(),
            actual.len(),
            summarize(&Ok(actual.to_vec()))
        ));
    }
    for (i, (e, a)) in expected.iter().zip(actual).enumerate() {
        let a = action_json(a);
        if *e != a {
            return Err(format!(
                "action {i} differs{}\n  expected: {}\n  actual:   {}",
                first_difference(e, &a)
                    .map(|p| format!(" at {p}"))
                    .unwrap_or_default(),
                shown(e),
                shown(&a)
            ));
        }
    }
    Ok(())
}

/// Where `e` and `a` first differ: a path, with "(missing)" for a key
/// only `e` has, "(unexpected)" for one only `a` has, the lengths of
/// arrays of different lengths.
fn first_difference(e: &Value, a: &Value) -> Option<String> {
    use crate::json_diff::Difference;
    let first = crate::json_diff::differences(e, a, 1).pop()?;
    Some(match &first {
        Difference::Missing { .. } => format!("{} (missing)", first.path()),
        Difference::Unexpected { .. } => format!("{} (unexpected)", first.path()),
        Difference::Length { left, right, .. } => {
            format!("{} (length {left} vs {right})", first.path())
        }
        Difference::Value { .. } => first.path().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn points_at_the_first_difference() {
        let e = json!({"a": {"b": [1, {"c": 2}]}});
        let a = json!({"a": {"b": [1, {"c": 3}]}});
        assert_eq!(first_difference(&e, &a).as_deref(), Some(".a.b[1].c"));
        assert_eq!(
            first_difference(&json!({"x": 1}), &json!({})).as_deref(),
            Some(".x (missing)")
        );
        assert_eq!(
            first_difference(&json!({}), &json!({"y": 1})).as_deref(),
            Some(".y (unexpected)")
        );
        assert_eq!(first_difference(&json!(1), &json!(1)), None);
    }

    #[test]
    fn compares_documents_as_json() {
        let actual = vec![Action::IndexDocument {
            index: "i".into(),
            id: "a".into(),
            document: r#"{"y":2,"x":1}"#.into(),
        }];
        assert!(compare(&[json!({"index_document": {"index": "i", "id": "a", "document": {"x": 1, "y": 2}}})], &actual).is_ok());
        let err = compare(
            &[json!({"index_document": {"index": "i", "id": "a", "document": {"x": 1, "y": 3}}})],
            &actual,
        )
        .unwrap_err();
        assert!(err.contains("at .index_document.document.y"), "{err}");
        assert!(
            compare(&[], &actual)
                .unwrap_err()
                .contains("expected 0 actions, got 1")
        );
    }

    #[test]
    fn large_outputs_are_summarized_not_printed() {
        let doc = format!("{{\"pad\":\"{}\"}}", "x".repeat(100_000));
        let actions: Vec<Action> = (0..1000)
            .map(|i| Action::IndexDocument {
                index: "i".into(),
                id: format!("d{i}"),
                document: doc.clone(),
            })
            .collect();
        let message = compare(&[], &actions).unwrap_err();
        assert!(
            message.len() < 3 * MAX_SHOWN_CHARS,
            "{} bytes",
            message.len()
        );
        assert!(
            message.contains("1000 actions (1000 index-document) holding 100"),
            "{}",
            &message[..200]
        );
        let small = summarize(&Ok(vec![Action::DeleteDocument {
            index: "i".into(),
            id: "a".into(),
        }]));
        assert_eq!(small, r#"[{"delete_document":{"id":"a","index":"i"}}]"#);
        // One huge action that differs is cut too.
        let one = compare(
            &[json!({"index_document": {"index": "i", "id": "d0", "document": {}}})],
            &actions[..1],
        )
        .unwrap_err();
        assert!(one.len() < 3 * MAX_SHOWN_CHARS, "{} bytes", one.len());
        assert!(
            one.contains("at .index_document.document.pad (unexpected)"),
            "{}",
            &one[..200]
        );
    }
}
