//! The plugin's configuration and what one change makes of every data
//! source: CommCare's `ConfigurableReportPillowProcessor`, without I/O.

use crate::datasource::{DEFAULT_PREFIX, DataSource, Outcome, Probe};
use crate::eval::{EvalError, Lookup};
use crate::indicator::{Cell, Column, ColumnKind};
use crate::reads::Reads;
use crate::spec::{Node, SpecError};
use crate::value::Val;
use pillowtop_sdk::json::{Kind, Reader, Value};
use std::collections::BTreeMap;

/// A change, as much of it as the processor reads.
#[derive(Debug, Clone, Copy)]
pub struct ChangeView<'c> {
    /// The document id.
    pub id: &'c str,
    /// The change's domain, when known.
    pub domain: Option<&'c str>,
    /// The change's document type, when known.
    pub doc_type: Option<&'c str>,
    /// Whether the document was deleted.
    pub is_deletion: bool,
    /// The document JSON, when the change has it.
    pub document: Option<&'c str>,
    /// When the host processes the change (fills `inserted_at`).
    pub processing_time_ms: i64,
}

/// What to do to a table.
#[derive(Debug, Clone, PartialEq)]
pub enum TableAction {
    /// Delete the document's rows.
    DeleteRows {
        /// The table.
        table: String,
        /// The document.
        doc_id: String,
    },
    /// Upsert rows (one value per column, in column order).
    UpsertRows {
        /// The table.
        table: String,
        /// The rows.
        rows: Vec<Vec<Cell>>,
    },
}

/// Why a change failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeError {
    /// What failed, naming the data source.
    pub message: String,
    /// Whether a retry may pass.
    pub retryable: bool,
}

/// The loaded data sources of one plugin instance.
#[derive(Debug)]
pub struct Processor {
    /// Data sources this pillow writes (after include/exclude and
    /// without deactivated ones), in file order.
    pub sources: Vec<DataSource>,
    /// Set by `[config] eval` (`pillowtop ucr eval`): one data source, and
    /// the expression or filter to evaluate instead of its rows.
    pub eval: Option<EvalMode>,
    /// What the data sources (or the probe) read of a document: only that
    /// is converted to Python values.
    reads: Reads,
}

/// `pillowtop ucr eval`'s mode: a probe's value (or, for rows, whether the
/// document passes) is written as the one row of a table `{prefix}eval`
/// (`doc_id`, `value` as JSON), which the command reads from the plugin's
/// actions and prints.
#[derive(Debug)]
pub struct EvalMode {
    /// `{prefix}eval`.
    pub table: String,
    /// `doc_id` and `value`.
    pub columns: Vec<Column>,
    /// The expression or filter; `None`: the data source's rows.
    pub probe: Option<Probe>,
}

const CONFIG_KEYS: &[&str] = &[
    "data_sources",
    "table_prefix",
    "include_ucrs",
    "exclude_ucrs",
    "related_docs",
    "eval",
];

fn names(node: Option<&Node<'_>>) -> Result<Option<Vec<String>>, SpecError> {
    node.map(|n| n.items()?.iter().map(Node::text).collect())
        .transpose()
}

impl Processor {
    /// Read the plugin's `[config]` (JSON): `data_sources` (a list of
    /// `{"file", "spec"}`, filled by the host from `[config_files]`),
    /// `table_prefix` (default `ucr_`), `include_ucrs` / `exclude_ucrs`
    /// (table ids this pillow writes or skips, CommCare's split of UCRs
    /// across pillows) and `related_docs` (document type to the lookup
    /// resource that serves `related_doc`).
    ///
    /// # Errors
    ///
    /// Which file, where in it and what is wrong; or what is wrong in `[config]`.
    pub fn from_config(config: &str) -> Result<Processor, String> {
        let value = Value::parse(config).map_err(|e| format!("[config] is not JSON: {e}"))?;
        let root = Node::root(value);
        let o = root.object("[config]").map_err(|e| e.to_string())?;
        let in_config = |e: SpecError| format!("[config] {e}");
        o.only(CONFIG_KEYS).map_err(in_config)?;
        let prefix = o
            .opt_text("table_prefix")
            .map_err(in_config)?
            .unwrap_or_else(|| DEFAULT_PREFIX.into());
        if prefix.is_empty()
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(
                "[config] table_prefix must be a-z, 0-9 and '_' (the manifest grants tables by it)"
                    .into(),
            );
        }
        let include = names(o.opt("include_ucrs")).map_err(in_config)?;
        let exclude = names(o.opt("exclude_ucrs"))
            .map_err(in_config)?
            .unwrap_or_default();
        let mut related = BTreeMap::new();
        if let Some(r) = o.opt("related_docs") {
            for (doc_type, resource) in r.object("related_docs").map_err(in_config)?.members() {
                related.insert(doc_type.clone(), resource.text().map_err(in_config)?);
            }
        }
        let Some(list) = o.opt("data_sources") else {
            return Err("[config] has no data_sources: list the data source files in the manifest's [config_files] data_sources".into());
        };
        let mut sources: Vec<DataSource> = Vec::new();
        for entry in list.items().map_err(in_config)? {
            let entry = entry.object("a data_sources entry").map_err(in_config)?;
            let file = entry.req_text("file").map_err(in_config)?;
            let spec = entry.req("spec").map_err(in_config)?;
            let spec = Node::root(spec.value);
            let source = DataSource::parse(&file, &spec, &prefix, &related)
                .map_err(|e| format!("data source {file}: {e}"))?;
            if let Some(other) = sources.iter().find(|s| s.table == source.table) {
                return Err(format!(
                    "data source {file}: domain {:?} and table_id {:?} are also those of {}; each data source needs its own",
                    source.domain, source.table_id, other.file
                ));
            }
            sources.push(source);
        }
        let unknown = include
            .iter()
            .flatten()
            .chain(&exclude)
            .find(|id| !sources.iter().any(|s| &s.table_id == *id));
        if let Some(id) = unknown {
            return Err(format!(
                "[config] include_ucrs/exclude_ucrs name table_id {id:?}, which no data source has (table ids: {})",
                sources
                    .iter()
                    .map(|s| s.table_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let eval = match o.opt("eval") {
            None => None,
            Some(spec) => Some(eval_mode(spec, &sources, &prefix).map_err(in_config)?),
        };
        if eval.is_none() {
            sources.retain(|s| {
                !s.deactivated
                    && include.as_ref().is_none_or(|ids| ids.contains(&s.table_id))
                    && !exclude.contains(&s.table_id)
            });
        }
        // A probe reads what it reads (so `ucr eval` and CommCare's test
        // vectors run the partial conversion the rows get); rows, what
        // every data source reads.
        let reads = match &eval {
            Some(EvalMode {
                probe: Some(probe), ..
            }) => sources[0].probe_reads(probe),
            _ => {
                let mut reads = Reads::default();
                for s in &sources {
                    reads.merge(&s.reads());
                }
                reads
            }
        };
        Ok(Processor {
            sources,
            eval,
            reads,
        })
    }

    /// Every table this instance writes: name, columns and definition
    /// (the eval table last, in eval mode, without one).
    pub fn tables(&self) -> Vec<(&str, &[Column], Option<&str>)> {
        let mut tables: Vec<(&str, &[Column], Option<&str>)> = self
            .sources
            .iter()
            .map(|s| {
                (
                    s.table.as_str(),
                    s.columns.as_slice(),
                    Some(s.definition.as_str()),
                )
            })
            .collect();
        if let Some(e) = &self.eval {
            tables.push((&e.table, &e.columns, None));
        }
        tables
    }

    /// The table actions one change makes.
    ///
    /// # Errors
    ///
    /// A change that is not a deletion and has no document (CommCare's
    /// `DocumentMissingError`, retryable), a document that is not an
    /// object, or a data source that fails on it.
    pub fn process(
        &self,
        change: &ChangeView<'_>,
        lookup: &Lookup<'_>,
    ) -> Result<Vec<TableAction>, ChangeError> {
        let delete = |table: &str| TableAction::DeleteRows {
            table: table.to_string(),
            doc_id: change.id.to_string(),
        };
        if change.is_deletion {
            return Ok(self
                .sources
                .iter()
                .filter(|s| s.concerns(change.domain, change.doc_type))
                .map(|s| delete(&s.table))
                .collect());
        }
        let Some(text) = change.document else {
            return Err(ChangeError {
                message: format!(
                    "the change of {} has no document (not yet readable?)",
                    change.id
                ),
                retryable: true,
            });
        };
        // Most changes of a feed are of domains and types no data source
        // reads (the data sources' own test, on the document, would give
        // nothing): skip them before reading the document. The change's
        // `domain` and `document_type` are the document's (CommCare's
        // ChangeMeta); when absent, the document decides. `ucr eval`
        // probes whatever the document is.
        if self.eval.is_none()
            && !self
                .sources
                .iter()
                .any(|s| s.concerns(change.domain, change.doc_type))
        {
            return Ok(Vec::new());
        }
        // One pass over the text: what the data sources read is
        // converted, the rest only validated.
        let mut reader = Reader::new(text);
        let doc = match reader.kind() {
            Ok(Kind::Object) => Val::read(&mut reader, &self.reads)
                .and_then(|doc| reader.end().map(|()| doc))
                .map_err(|e| permanent(format!("the document is not JSON: {e}")))?,
            Ok(_) => return Err(permanent("the document is not a JSON object".into())),
            Err(e) => return Err(permanent(format!("the document is not JSON: {e}"))),
        };
        if let Some(EvalMode {
            table,
            probe: Some(probe),
            ..
        }) = &self.eval
        {
            let source = &self.sources[0];
            let value = source
                .eval_probe(probe, &doc, lookup)
                .map_err(|e| ChangeError {
                    message: format!("data source {}: {}", source.file, e.message),
                    retryable: e.retryable,
                })?;
            let mut json = String::new();
            value.write_json(&mut json);
            return Ok(vec![TableAction::UpsertRows {
                table: table.clone(),
                rows: vec![vec![Cell::Text(change.id.to_string()), Cell::Text(json)]],
            }]);
        }
        let inserted_at = pillowtop_sdk::time::format_rfc3339_ms(change.processing_time_ms);
        let mut actions = Vec::new();
        for source in &self.sources {
            let outcome = source
                .process(&doc, &inserted_at, lookup)
                .map_err(|e: EvalError| ChangeError {
                    message: format!(
                        "data source {} ({}): {}",
                        source.table_id, source.file, e.message
                    ),
                    retryable: e.retryable,
                })?;
            if let Some(eval) = &self.eval {
                // Rows mode: the verdict too, which the rows alone do not
                // tell (no rows: not passing, or no item).
                let passes = matches!(outcome, Outcome::Rows(_));
                actions.push(TableAction::UpsertRows {
                    table: eval.table.clone(),
                    rows: vec![vec![
                        Cell::Text(change.id.to_string()),
                        Cell::Text(passes.to_string()),
                    ]],
                });
            }
            match outcome {
                Outcome::Ignore => {}
                Outcome::Delete => actions.push(delete(&source.table)),
                Outcome::Rows(rows) => {
                    if !(source.keyed_by_doc_id() && rows.len() == 1) {
                        actions.push(delete(&source.table));
                    }
                    if !rows.is_empty() {
                        actions.push(TableAction::UpsertRows {
                            table: source.table.clone(),
                            rows,
                        });
                    }
                }
            }
        }
        Ok(actions)
    }
}

/// Read `[config] eval`: `{}` (the data source's rows, even when it is
/// deactivated), `{"expression": SPEC}` or `{"filter": SPEC}`, with
/// exactly one data source.
fn eval_mode(spec: &Node<'_>, sources: &[DataSource], prefix: &str) -> Result<EvalMode, SpecError> {
    let o = spec.object("eval")?;
    o.only(&["expression", "filter"])?;
    let [source] = sources else {
        return Err(spec.error(format!(
            "eval needs exactly one data source; data_sources has {}",
            sources.len()
        )));
    };
    let probe = match (o.opt("expression"), o.opt("filter")) {
        (Some(_), Some(_)) => {
            return Err(spec.error("give an expression or a filter, not both"));
        }
        (Some(e), None) => Some(source.parse_probe(e, false)?),
        (None, Some(f)) => Some(source.parse_probe(f, true)?),
        (None, None) => None,
    };
    let column = |name: &str, kind, primary_key: bool| Column {
        name: name.into(),
        kind,
        nullable: !primary_key,
        primary_key,
        create_index: false,
    };
    Ok(EvalMode {
        table: format!("{prefix}eval"),
        columns: vec![
            column("doc_id", ColumnKind::Text, true),
            column("value", ColumnKind::Json, false),
        ],
        probe,
    })
}

fn permanent(message: String) -> ChangeError {
    ChangeError {
        message,
        retryable: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = r#"{"domain": "demo", "table_id": "t", "referenced_doc_type": "CommCareCase",
        "named_expressions": {"age": {"type": "property_name", "property_name": "age", "datatype": "integer"}},
        "named_filters": {"adult": {"type": "boolean_expression", "operator": "gte",
            "expression": {"type": "named", "name": "age"}, "property_value": 18}},
        "configured_indicators": [{"type": "expression", "column_id": "age", "datatype": "integer",
            "expression": {"type": "named", "name": "age"}}]}"#;

    fn config(eval: &str, sources: usize) -> String {
        let list: Vec<String> = (0..sources)
            .map(|i| {
                let spec = SOURCE.replace(r#""table_id": "t""#, &format!(r#""table_id": "t{i}""#));
                format!(r#"{{"file": "t{i}.json", "spec": {spec}}}"#)
            })
            .collect();
        let list = list.join(",");
        format!(r#"{{"data_sources": [{list}], "eval": {eval}}}"#)
    }

    fn run(processor: &Processor, doc: &str) -> Result<Vec<TableAction>, ChangeError> {
        let view = ChangeView {
            id: "d1",
            domain: Some("other"),
            doc_type: Some("XFormInstance"),
            is_deletion: false,
            document: Some(doc),
            processing_time_ms: 0,
        };
        processor.process(&view, &|_, _| Ok(None))
    }

    fn value(actions: &[TableAction]) -> &str {
        match actions {
            [TableAction::UpsertRows { table, rows }] if table == "ucr_eval" => match &rows[..] {
                [row] => match &row[..] {
                    [Cell::Text(id), Cell::Text(v)] if id == "d1" => v,
                    other => panic!("eval row {other:?}"),
                },
                other => panic!("eval rows {other:?}"),
            },
            other => panic!("eval actions {other:?}"),
        }
    }

    #[test]
    fn eval_mode_evaluates_a_probe_in_the_data_sources_scope() {
        let doc = r#"{"age": "41", "domain": "x", "doc_type": "y"}"#;
        let expression = r#"{"expression": {"type": "named", "name": "age"}}"#;
        let p = Processor::from_config(&config(expression, 1)).unwrap();
        let tables: Vec<&str> = p.tables().iter().map(|t| t.0).collect();
        // CommCare's name for domain demo, table id t0 (Python: sha1 of
        // sha1("demo") + "_t0").
        assert_eq!(tables, ["ucr_demo_t0_0339ed2b", "ucr_eval"]);
        // The named expression's datatype made "41" an integer; the probe
        // runs whatever the document's domain and type.
        assert_eq!(value(&run(&p, doc).unwrap()), "41");

        let filter = r#"{"filter": {"type": "named", "name": "adult"}}"#;
        let p = Processor::from_config(&config(filter, 1)).unwrap();
        assert_eq!(value(&run(&p, doc).unwrap()), "true");
        assert_eq!(value(&run(&p, r#"{"age": "9"}"#).unwrap()), "false");
    }

    /// A document with more than any probe below reads: nested dicts, a
    /// list of dicts, a repeated key.
    const RICH: &str = r#"{"_id": "d1", "domain": "x", "doc_type": "y", "type": "patient",
        "name": "Asha Kumar", "age": "41", "a": 2, "b": 3,
        "case_json": {"age": "41", "dob": "1985-03-02", "tags": "a b", "other": [1, 2]},
        "items": [{"n": 2, "v": "x", "w": {"z": 1}}, {"n": 1, "v": "y"}],
        "extra": {"deep": {"x": 1, "y": [true]}, "flat": "f"}, "dup": 1, "dup": 2}"#;

    /// Every construct that changes what of the document is read: each
    /// probe's value from the partly converted document equals its value
    /// from the whole one (what `from_json` gives), and the partial
    /// conversion is really partial where it can be.
    #[test]
    fn a_partly_converted_document_gives_what_the_whole_one_gives() {
        let probes = [
            r#"{"expression": {"type": "identity"}}"#,
            r#"{"expression": {"type": "property_path", "property_path": ["case_json", "dob"]}}"#,
            r#"{"expression": {"type": "property_name", "property_name": "dup"}}"#,
            r#"{"expression": {"type": "property_name", "property_name": "case_json"}}"#,
            r#"{"expression": {"type": "map_items", "items_expression": {"type": "property_name", "property_name": "items"},
                "map_expression": {"type": "root_doc", "expression": {"type": "property_name", "property_name": "name"}}}}"#,
            r#"{"expression": {"type": "map_items", "items_expression": {"type": "property_name", "property_name": "items"},
                "map_expression": {"type": "root_doc", "expression": {"type": "identity"}}}}"#,
            r#"{"expression": {"type": "nested", "argument_expression": {"type": "property_name", "property_name": "extra"},
                "value_expression": {"type": "property_path", "property_path": ["deep", "y"]}}}"#,
            r#"{"expression": {"type": "nested", "argument_expression": {"type": "property_path", "property_path": ["extra", "deep"]},
                "value_expression": {"type": "identity"}}}"#,
            r#"{"expression": {"type": "nested", "argument_expression": {"type": "property_name", "property_name": "extra"},
                "value_expression": {"type": "root_doc", "expression": {"type": "property_name", "property_name": "age"}}}}"#,
            r#"{"expression": {"type": "evaluator", "statement": "a + b"}}"#,
            r#"{"expression": {"type": "evaluator", "statement": "a * 2", "context_variables": {"a": {"type": "property_name", "property_name": "b"}}}}"#,
            r#"{"expression": {"type": "named", "name": "age"}}"#,
            r#"{"expression": {"type": "iterator", "expressions": [{"type": "property_name", "property_name": "name"}, {"type": "property_name", "property_name": "extra"}],
                "test": {"type": "boolean_expression", "expression": {"type": "property_name", "property_name": "x"}, "operator": "eq", "property_value": 1}}}"#,
            r#"{"expression": {"type": "sort_items", "items_expression": {"type": "property_name", "property_name": "items"},
                "sort_expression": {"type": "property_name", "property_name": "n"}}}"#,
            r#"{"expression": {"type": "filter_items", "items_expression": {"type": "property_name", "property_name": "items"},
                "filter_expression": {"type": "boolean_expression", "expression": {"type": "root_doc", "expression": {"type": "property_name", "property_name": "type"}},
                "operator": "eq", "property_value": "patient"}}}"#,
            r#"{"expression": {"type": "property_name", "property_name": {"type": "property_name", "property_name": "type"}}}"#,
            r#"{"expression": {"type": "dict", "properties": {"n": {"type": "property_name", "property_name": "name"}, "t": {"type": "property_path", "property_path": ["case_json", "tags"]}}}}"#,
            r#"{"filter": {"type": "and", "filters": [{"type": "named", "name": "adult"},
                {"type": "property_match", "property_path": ["extra", "flat"], "property_value": "f"}]}}"#,
        ];
        for probe in probes {
            let partial = Processor::from_config(&config(probe, 1)).unwrap();
            let mut whole = Processor::from_config(&config(probe, 1)).unwrap();
            whole.reads = Reads::All;
            let got = run(&partial, RICH).unwrap();
            assert_eq!(got, run(&whole, RICH).unwrap(), "{probe}");
        }
        // Paths read, and only those: the keys the host reads, a dict
        // trimmed to the key read under it.
        let p = Processor::from_config(&config(probes[1], 1)).unwrap();
        let mut expected = Reads::default();
        for path in [
            &["_id"][..],
            &["domain"],
            &["doc_type"],
            &["case_json", "dob"],
        ] {
            expected.path(path);
        }
        assert_eq!(p.reads, expected);
        let p = Processor::from_config(&config(probes[0], 1)).unwrap();
        assert_eq!(p.reads, Reads::All);
    }

    /// A document is read in one pass that converts only what is read,
    /// but bad JSON anywhere in it, read or not, fails the change for
    /// good, and so does a document that is not an object.
    #[test]
    fn bad_json_is_refused_where_nothing_reads_it() {
        let probe = r#"{"expression": {"type": "property_name", "property_name": "age"}}"#;
        let p = Processor::from_config(&config(probe, 1)).unwrap();
        assert_eq!(
            value(&run(&p, r#"{"age": 3, "x": {"y": [1]}}"#).unwrap()),
            "3"
        );
        for (doc, says) in [
            (r#"{"age": 3, "x": {"y": [1,]}}"#, "not JSON"),
            (r#"{"age": 3, "x": "\q"}"#, "not JSON"),
            (r#"{"age": 3} {}"#, "trailing characters"),
            (r#"{"age": 3"#, "not JSON"),
            ("[1]", "not a JSON object"),
        ] {
            let e = run(&p, doc).unwrap_err();
            assert!(!e.retryable && e.message.contains(says), "{doc}: {e:?}");
        }
    }

    /// A named expression's value is kept per document only where it
    /// cannot change: the same named expression read through `root_doc`
    /// from each item of a repeat gives each iteration its own number.
    #[test]
    fn a_named_value_is_kept_only_where_it_is_the_same() {
        let spec = r#"{"domain": "other", "table_id": "r", "referenced_doc_type": "XFormInstance",
            "base_item_expression": {"type": "property_name", "property_name": "items"},
            "named_expressions": {"it": {"type": "base_iteration_number"},
                "first": {"type": "array_index", "array_expression": {"type": "property_name", "property_name": "items"}, "index_expression": 0}},
            "configured_filter": {"type": "boolean_expression", "expression": {"type": "named", "name": "first"}, "operator": "eq", "property_value": "a"},
            "configured_indicators": [
                {"type": "expression", "column_id": "n", "datatype": "integer",
                 "expression": {"type": "root_doc", "expression": {"type": "named", "name": "it"}}},
                {"type": "expression", "column_id": "first", "datatype": "string",
                 "expression": {"type": "root_doc", "expression": {"type": "named", "name": "first"}}}]}"#;
        let config = format!(r#"{{"data_sources": [{{"file": "r.json", "spec": {spec}}}]}}"#);
        let p = Processor::from_config(&config).unwrap();
        let actions = run(&p, r#"{"_id": "d1", "domain": "other", "doc_type": "XFormInstance", "items": ["a", "b", "c"]}"#).unwrap();
        let rows: Vec<(Cell, Cell)> = actions
            .iter()
            .flat_map(|a| match a {
                TableAction::UpsertRows { rows, .. } => rows.clone(),
                TableAction::DeleteRows { .. } => vec![],
            })
            .map(|r| {
                let at = |name: &str| {
                    p.sources[0]
                        .columns
                        .iter()
                        .position(|c| c.name == name)
                        .unwrap()
                };
                (r[at("n")].clone(), r[at("first")].clone())
            })
            .collect();
        let a = || Cell::Text("a".into());
        assert_eq!(
            rows,
            [
                (Cell::Int(0), a()),
                (Cell::Int(1), a()),
                (Cell::Int(2), a())
            ]
        );
    }

    #[test]
    fn eval_mode_refuses_what_it_cannot_answer() {
        let cases = [
            (
                config(r#"{"expression": {"type": "constant", "constant": 1}}"#, 2),
                "exactly one data source; data_sources has 2",
            ),
            (config(r#"{"expression": {}, "filter": {}}"#, 1), "not both"),
            (
                config(r#"{"expression": {"type": "named", "name": "nope"}}"#, 1),
                "nope",
            ),
            (config(r#"{"rows": true}"#, 1), "rows"),
        ];
        for (config, needle) in cases {
            let err = Processor::from_config(&config).unwrap_err();
            assert!(err.contains(needle), "{needle:?} in {err}");
        }
    }
}
