//! `pillowtop ucr eval` (here) and `pillowtop ucr rebuild` ([`rebuild`]).
//!
//! `pillowtop ucr eval`: a UCR data source, expression or filter evaluated
//! on one document through the UCR plugin itself (its component, limits
//! and lookups), so what it prints is what a pillow would write. The tool
//! a data source's author debugs with, and the way CommCare's own test
//! vectors run against the plugin.
//!
//! The plugin is asked through its config: `data_sources` is the one file
//! given, and `eval` is `{}` (the data source's rows), `{"expression":
//! SPEC}` or `{"filter": SPEC}` (the value, written as the one row of the
//! plugin's `{prefix}eval` table). Nothing is written anywhere.

pub mod rebuild;

use crate::action::{Action, Cell, ColumnType, TableSpec};
use crate::change::Change;
use crate::fixtures;
use crate::manifest::{Manifest, ManifestError};
use crate::wasm::{LoadError, Runtime, RuntimeOptions};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Largest file read (a data source, a document, a spec, lookups).
const MAX_FILE_BYTES: u64 = 16 << 20;

/// What to evaluate.
#[derive(Debug, Clone)]
pub enum Probe {
    /// The data source's rows for the document.
    Rows,
    /// The value of the expression in this file.
    Expression(PathBuf),
    /// Whether the document passes the filter in this file.
    Filter(PathBuf),
}

/// One evaluation.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    /// The UCR plugin's manifest (its component, limits and `[config]`).
    pub manifest: PathBuf,
    /// The data source (CommCare's JSON export).
    pub data_source: PathBuf,
    /// The document (a case or form as JSON).
    pub doc: PathBuf,
    /// What to evaluate.
    pub probe: Probe,
    /// What `related_doc` finds: resource -> document id -> document
    /// (a fixture's `"lookups"`); absent: nothing is found.
    pub lookups: Option<PathBuf>,
    /// Compile cache directory.
    pub compile_cache: PathBuf,
}

/// What an evaluation gave.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalOutput {
    /// The data source's rows for the document, each as column -> value
    /// (empty when the document has none: see `passes`).
    Rows {
        /// The table they go to.
        table: String,
        /// Whether the document is of the data source's domain and type
        /// and passes its filter.
        passes: bool,
        /// The rows.
        rows: Vec<Map<String, Value>>,
    },
    /// The expression's value, or the filter's verdict.
    Value(Value),
}

/// Why an evaluation could not be made.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The plugin does not load, or refuses the data source or spec (its
    /// `init` names the file, the JSON path and what is allowed).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A file could not be read or is not JSON.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The plugin failed on the document (as a pillow would record it).
    #[error("the plugin failed on the document: {0}")]
    Failed(String),
    /// The plugin answered something this command does not understand.
    #[error("unexpected answer from the plugin: {0}")]
    Unexpected(String),
    /// The runtime could not start, or the worker thread failed.
    #[error("{0}")]
    Runtime(String),
}

/// Evaluate `request`. Compiling and running the plugin happen on a
/// blocking thread.
///
/// # Errors
///
/// See [`EvalError`].
pub async fn eval(request: EvalRequest) -> Result<EvalOutput, EvalError> {
    tokio::task::spawn_blocking(move || eval_blocking(&request))
        .await
        .map_err(|e| EvalError::Runtime(format!("the evaluation's worker thread failed: {e}")))?
}

fn eval_blocking(request: &EvalRequest) -> Result<EvalOutput, EvalError> {
    let mut manifest = Manifest::load(&request.manifest)?;
    let data_source = read_json(&request.data_source)?;
    let doc = read_json(&request.doc)?;
    let eval = match &request.probe {
        Probe::Rows => "{}".to_string(),
        Probe::Expression(p) => format!(r#"{{"expression":{}}}"#, read_json(p)?.get()),
        Probe::Filter(p) => format!(r#"{{"filter":{}}}"#, read_json(p)?.get()),
    };
    let file = request.data_source.display().to_string();
    manifest.config_json =
        eval_config(&manifest.config_json, &file, &data_source, &eval).map_err(|e| {
            EvalError::File {
                path: manifest.path.clone(),
                message: e,
            }
        })?;
    let lookups = match &request.lookups {
        None => BTreeMap::new(),
        Some(path) => {
            serde_json::from_str(read_json(path)?.get()).map_err(|e| EvalError::File {
                path: path.clone(),
                message: format!(
                    "lookups are {{\"resource\": {{\"document id\": document}}}}: {e}"
                ),
            })?
        }
    };
    let change = change_of(&doc).map_err(|e| EvalError::File {
        path: request.doc.clone(),
        message: e,
    })?;

    let runtime = Runtime::new(RuntimeOptions {
        compile_cache_dir: Some(request.compile_cache.clone()),
        ..RuntimeOptions::default()
    })
    .map_err(|e| EvalError::Runtime(format!("cannot start the WebAssembly runtime: {e:#}")))?;
    let (mut processor, _) = runtime.load(&manifest)?;
    processor.set_lookups(std::sync::Arc::new(fixtures::memory_lookups(&lookups)));
    let actions = processor
        .process(&change)
        .map_err(|f| EvalError::Failed(f.to_string()))?;
    let tables = &processor.plugin().info().tables;
    match request.probe {
        Probe::Rows => rows_output(tables, actions),
        Probe::Expression(_) | Probe::Filter(_) => value_output(actions),
    }
}

/// The manifest's `[config]` with `data_sources` the one file given (as
/// written) and `eval` set; `include_ucrs` / `exclude_ucrs` dropped.
fn eval_config(config: &str, file: &str, spec: &RawValue, eval: &str) -> Result<String, String> {
    let mut config: BTreeMap<String, Box<RawValue>> =
        serde_json::from_str(config).map_err(|e| format!("[config] is not a table: {e}"))?;
    config.remove("include_ucrs");
    config.remove("exclude_ucrs");
    let raw = |text: String| RawValue::from_string(text).map_err(|e| e.to_string());
    let file = serde_json::to_string(file).map_err(|e| e.to_string())?;
    config.insert(
        "data_sources".into(),
        raw(format!(r#"[{{"file":{file},"spec":{}}}]"#, spec.get()))?,
    );
    config.insert("eval".into(), raw(eval.to_string())?);
    serde_json::to_string(&config).map_err(|e| e.to_string())
}

/// A change of `doc` as a pillow would see it: its `_id`, `domain` and
/// `doc_type`, processed now.
fn change_of(doc: &RawValue) -> Result<Change, String> {
    let fields: Map<String, Value> = serde_json::from_str(doc.get())
        .map_err(|_| "the document must be a JSON object".to_string())?;
    let text = |key: &str| fields.get(key).and_then(Value::as_str).map(str::to_owned);
    let mut change = Change::new(text("_id").unwrap_or_else(|| "doc".into()), "eval", 0, 0)
        .with_document(doc.get());
    change.domain = text("domain");
    change.document_type = text("doc_type");
    change.processing_time_ms = crate::time::now_ms();
    Ok(change)
}

fn rows_output(tables: &[TableSpec], actions: Vec<Action>) -> Result<EvalOutput, EvalError> {
    let Some(spec) = tables.iter().find(|t| !t.name.ends_with("eval")) else {
        return Err(EvalError::Unexpected(
            "the plugin declared no data source table".into(),
        ));
    };
    let mut rows = Vec::new();
    let mut passes = None;
    for action in actions {
        match action {
            Action::DeleteRows { table, .. } if table == spec.name => {}
            Action::UpsertRows {
                table,
                rows: upserts,
            } if table == spec.name => {
                for row in upserts {
                    rows.push(row_object(spec, row)?);
                }
            }
            Action::UpsertRows { rows: upserts, .. } => {
                passes = Some(eval_value(upserts)? == Value::Bool(true));
            }
            other => return Err(EvalError::Unexpected(format!("{other:?}"))),
        }
    }
    let passes = passes.ok_or_else(|| {
        EvalError::Unexpected(
            "no verdict in the eval table (is the plugin older than this command?)".into(),
        )
    })?;
    Ok(EvalOutput::Rows {
        table: spec.name.clone(),
        passes,
        rows,
    })
}

fn value_output(actions: Vec<Action>) -> Result<EvalOutput, EvalError> {
    match actions.into_iter().next() {
        Some(Action::UpsertRows { rows, .. }) => Ok(EvalOutput::Value(eval_value(rows)?)),
        other => Err(EvalError::Unexpected(format!("{other:?}"))),
    }
}

/// The JSON value of the eval table's one row (`doc_id`, `value`).
fn eval_value(rows: Vec<Vec<Cell>>) -> Result<Value, EvalError> {
    match rows.as_slice() {
        [row] => match row.as_slice() {
            [_, Cell::Text(json)] => serde_json::from_str(json)
                .map_err(|e| EvalError::Unexpected(format!("eval value {json:?}: {e}"))),
            other => Err(EvalError::Unexpected(format!("eval row {other:?}"))),
        },
        other => Err(EvalError::Unexpected(format!("eval rows {other:?}"))),
    }
}

/// A row as column -> JSON value: numbers and booleans as such, JSON
/// columns parsed, dates and timestamps as their text.
fn row_object(spec: &TableSpec, row: Vec<Cell>) -> Result<Map<String, Value>, EvalError> {
    spec.columns
        .iter()
        .zip(row)
        .map(|(column, cell)| {
            let value = match cell {
                Cell::Null => Value::Null,
                Cell::Boolean(b) => Value::Bool(b),
                Cell::Integer(i) => Value::from(i),
                Cell::Float(f) => Value::from(f),
                Cell::Text(t) if column.kind == ColumnType::Json => serde_json::from_str(&t)
                    .map_err(|e| EvalError::Unexpected(format!("column {}: {e}", column.name)))?,
                Cell::Text(t) => Value::String(t),
            };
            Ok((column.name.clone(), value))
        })
        .collect()
}

fn read_json(path: &Path) -> Result<Box<RawValue>, EvalError> {
    let fail = |message: String| EvalError::File {
        path: path.to_owned(),
        message,
    };
    let text = crate::file::read_text_bounded(path, MAX_FILE_BYTES, "at most 16 MiB")
        .map_err(|e| fail(format!("cannot read it: {e}")))?;
    serde_json::from_str(&text).map_err(|e| fail(format!("not JSON: {e}")))
}
