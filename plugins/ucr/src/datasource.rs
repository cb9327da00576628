//! A data source: CommCare's `DataSourceConfiguration`, parsed once, and
//! what one document makes of it (rows to write, rows to delete).

use crate::eval::{Ctx, Env, EvalError, Lookup, NamedValues};
use crate::expr::{Expr, NamedRef, Scope};
use crate::filter::Filter;
use crate::indicator::{Cell, Column, Indicator};
use crate::reads::{Reads, Walk};
use crate::spec::{Node, Object, SpecError};
use crate::value::Val;
use std::collections::{BTreeMap, BTreeSet};

/// CommCare's `UCR_TABLE_PREFIX`.
pub const DEFAULT_PREFIX: &str = "ucr_";
/// CommCare keeps table names to 50 bytes (room for Citus); PostgreSQL allows 63.
const MAX_TABLE_NAME: usize = 50;

/// CommCare's `DELETED_DOC_TYPES`: doc types that mean "this document
/// of the referenced type was deleted".
fn deleted_doc_types(doc_type: &str) -> &'static [&'static str] {
    match doc_type {
        "CommCareCase" => &["CommCareCase-Deleted"],
        "XFormInstance" => &["XFormInstance-Deleted", "XFormArchived"],
        _ => &[],
    }
}

/// CommCare's table name for a data source: `{prefix}{domain}_{table_id}_`
/// and 8 hex digits of `sha1(sha1(domain) + "_" + table_id)`, cut to 50
/// bytes by its `truncate_value` (the first 41, `_`, 8 hex digits of the
/// whole name's SHA-1).
pub fn table_name(prefix: &str, domain: &str, table_id: &str) -> String {
    let sha1 = |s: &str| sha1_smol::Sha1::from(s.as_bytes()).digest().to_string();
    let hash = sha1(&format!("{}_{table_id}", sha1(domain)));
    let name = format!("{prefix}{domain}_{table_id}_{}", &hash[..8]);
    if name.len() <= MAX_TABLE_NAME {
        return name;
    }
    format!("{}_{}", &name[..MAX_TABLE_NAME - 9], &sha1(&name)[..8])
}

/// The parts of a data source that decide its rows, in this order: a
/// change to any of them changes the rows of documents already written.
const DEFINITION_KEYS: &[&str] = &[
    "referenced_doc_type",
    "configured_filter",
    "base_item_expression",
    "configured_indicators",
    "named_expressions",
    "named_filters",
];

/// The data source's definition: `sha1:` and the SHA-1 of its
/// [`DEFINITION_KEYS`] (those present) as compact JSON. Layout and the
/// other keys (`display_name`, `description`, ...) do not count.
fn definition(o: &Object<'_>) -> String {
    let mut text = String::from("{");
    for key in DEFINITION_KEYS {
        if let Some(node) = o.opt(key) {
            if text.len() > 1 {
                text.push(',');
            }
            text.push_str(&format!("{key:?}:"));
            crate::spec::compact(node.value, &mut text);
        }
    }
    text.push('}');
    format!("sha1:{}", sha1_smol::Sha1::from(text.as_bytes()).digest())
}

/// What a document means for one data source.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The document passes the filter: its rows (every row of the
    /// document is replaced by these; none means it has none).
    Rows(Vec<Vec<Cell>>),
    /// The document no longer passes (or was deleted): delete its rows.
    Delete,
    /// The document is not of this data source's domain and type.
    Ignore,
}

/// A parsed data source.
#[derive(Debug)]
pub struct DataSource {
    /// The file it was read from.
    pub file: String,
    /// Its domain.
    pub domain: String,
    /// Its `table_id`.
    pub table_id: String,
    /// The SQL table its rows go to.
    pub table: String,
    /// The doc type it reads (`referenced_doc_type`).
    pub doc_type: String,
    /// `is_deactivated`: a deactivated data source writes nothing.
    pub deactivated: bool,
    /// What decides its rows, as a hash: see [`definition`]. The host
    /// keeps it with the table and refuses to write a table built by
    /// another definition.
    pub definition: String,
    /// The columns, default ones first.
    pub columns: Vec<Column>,
    filter: Option<Filter>,
    base_item: Option<Expr>,
    indicators: Vec<Indicator>,
    named_expressions: Vec<Expr>,
    named_filters: Vec<Filter>,
    /// The names of the named expressions and filters, and the related
    /// document resources: what a probe is parsed with.
    names: (Vec<String>, Vec<String>, BTreeMap<String, String>),
}

/// One expression or filter evaluated on its own in a data source's scope
/// (its named expressions and filters): `pillowtop ucr eval --expression`
/// or `--filter`, CommCare's expression debugger.
#[derive(Debug)]
pub enum Probe {
    /// An expression: its value.
    Expression(Expr),
    /// A filter: whether the document passes.
    Filter(Filter),
}

/// Keys of a data source CommCare exports and this plugin reads or
/// knowingly ignores (report-side and server-side settings).
const KNOWN_KEYS: &[&str] = &[
    "domain",
    "table_id",
    "display_name",
    "referenced_doc_type",
    "configured_filter",
    "configured_indicators",
    "base_item_expression",
    "named_expressions",
    "named_filters",
    "is_deactivated",
    "description",
    "engine_id",
    "backend_id",
    "is_available_in_analytics",
    "asynchronous",
    "sql_column_indexes",
    "sql_settings",
    "disable_destructive_rebuild",
    "mirrored_engine_ids",
    "validations",
    "meta",
    "last_modified",
    "doc_type",
    "_id",
    "_rev",
    "data_source_type",
];

/// Check that the named expressions and filters do not refer to
/// themselves through each other (CommCare refuses a recursive cycle).
fn check_cycles(
    expressions: &[Expr],
    filters: &[Filter],
    names: (&[String], &[String]),
    node: &Node<'_>,
) -> Result<(), SpecError> {
    fn refs_of(r: NamedRef, expressions: &[Expr], filters: &[Filter]) -> Vec<NamedRef> {
        let mut out = Vec::new();
        match r {
            NamedRef::Expression(i) => expressions[i].each_ref(&mut |x| out.push(x)),
            NamedRef::Filter(i) => filters[i].each_ref(&mut |x| out.push(x)),
        }
        out
    }
    let all = (0..expressions.len())
        .map(NamedRef::Expression)
        .chain((0..filters.len()).map(NamedRef::Filter));
    for start in all {
        // Depth-first from `start`: reaching `start` again is a cycle.
        let mut seen = BTreeSet::new();
        let mut stack = refs_of(start, expressions, filters);
        while let Some(r) = stack.pop() {
            if r == start {
                let name = match start {
                    NamedRef::Expression(i) => format!("named expression \"{}\"", names.0[i]),
                    NamedRef::Filter(i) => format!("named filter \"{}\"", names.1[i]),
                };
                return Err(node.error(format!("{name} refers to itself (a recursive cycle)")));
            }
            let key = match r {
                NamedRef::Expression(i) => (0, i),
                NamedRef::Filter(i) => (1, i),
            };
            if seen.insert(key) {
                stack.extend(refs_of(r, expressions, filters));
            }
        }
    }
    Ok(())
}

/// Whether `s` is a valid part of a table name (a-z, 0-9, `_`, `-`).
fn name_part_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl DataSource {
    /// Parse the data source `node` read from `file`.
    ///
    /// # Errors
    ///
    /// The first problem, with its JSON path.
    pub fn parse(
        file: &str,
        node: &Node<'_>,
        prefix: &str,
        related: &BTreeMap<String, String>,
    ) -> Result<DataSource, SpecError> {
        let o = node.object("a data source")?;
        for (key, member) in o.members() {
            if !KNOWN_KEYS.contains(&key.as_str()) {
                return Err(member.error(format!(
                    "unknown data source property \"{key}\"; known: {}",
                    KNOWN_KEYS.join(", ")
                )));
            }
        }
        let domain = o.req_text("domain")?;
        let table_id = o.req_text("table_id")?;
        if !name_part_ok(&domain) {
            return Err(o.req("domain")?.error(
                "the domain must use a-z, 0-9, '_' and '-' (it is part of the table name)",
            ));
        }
        if !name_part_ok(&table_id) {
            return Err(o
                .req("table_id")?
                .error("table_id must use a-z, 0-9, '_' and '-' (it is part of the table name)"));
        }
        let doc_type = o.req_text("referenced_doc_type")?;
        let deactivated = o.bool_or("is_deactivated", false)?;

        // Names first, so that parts can refer to each other in any order.
        let expr_nodes = match o.opt("named_expressions") {
            Some(n) => n.object("named_expressions")?.members().to_vec(),
            None => Vec::new(),
        };
        let filter_nodes = match o.opt("named_filters") {
            Some(n) => n.object("named_filters")?.members().to_vec(),
            None => Vec::new(),
        };
        let expr_names: Vec<String> = expr_nodes.iter().map(|(k, _)| k.clone()).collect();
        let filter_names: Vec<String> = filter_nodes.iter().map(|(k, _)| k.clone()).collect();
        let scope = Scope {
            expressions: &expr_names,
            filters: &filter_names,
            related,
        };
        let named_expressions = expr_nodes
            .iter()
            .map(|(_, n)| Expr::parse(n, &scope))
            .collect::<Result<Vec<_>, _>>()?;
        let named_filters = filter_nodes
            .iter()
            .map(|(_, n)| Filter::parse(n, &scope))
            .collect::<Result<Vec<_>, _>>()?;
        check_cycles(
            &named_expressions,
            &named_filters,
            (&expr_names, &filter_names),
            &o.node,
        )?;

        let filter = match o.opt("configured_filter") {
            Some(f) if f.value.members().next().is_some() => Some(Filter::parse(f, &scope)?),
            _ => None,
        };
        let base_item = match o.opt("base_item_expression") {
            Some(e) if e.value.members().next().is_some() => Some(Expr::parse(e, &scope)?),
            _ => None,
        };
        let mut indicators = vec![Indicator::doc_id(), Indicator::inserted_at()];
        if base_item.is_some() {
            indicators.push(Indicator::repeat_iteration());
        }
        let configured = o.req("configured_indicators")?;
        for item in configured.items()? {
            indicators.push(Indicator::parse(&item, &scope)?);
        }
        let columns: Vec<Column> = indicators
            .iter()
            .flat_map(|i| i.columns().iter().cloned())
            .collect();
        let mut seen = BTreeSet::new();
        for c in &columns {
            if !seen.insert(c.name.as_str()) {
                return Err(configured.error(format!(
                    "duplicate column id \"{}\" (doc_id, inserted_at and repeat_iteration are the default columns)",
                    c.name
                )));
            }
            let ok = c.name.as_bytes()[0].is_ascii_lowercase()
                && c.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(configured.error(format!(
                    "column \"{}\": column names must use a-z, 0-9 and '_' and start with a letter",
                    c.name
                )));
            }
        }
        Ok(DataSource {
            definition: definition(&o),
            file: file.to_string(),
            table: table_name(prefix, &domain, &table_id),
            domain,
            table_id,
            doc_type,
            deactivated,
            columns,
            filter,
            base_item,
            indicators,
            named_expressions,
            named_filters,
            names: (expr_names, filter_names, related.clone()),
        })
    }

    /// Parse `node` as an expression (or, with `filter`, a filter) that
    /// may use this data source's named expressions and filters.
    ///
    /// # Errors
    ///
    /// The first problem, with its JSON path.
    pub fn parse_probe(&self, node: &Node<'_>, filter: bool) -> Result<Probe, SpecError> {
        let scope = Scope {
            expressions: &self.names.0,
            filters: &self.names.1,
            related: &self.names.2,
        };
        Ok(if filter {
            Probe::Filter(Filter::parse(node, &scope)?)
        } else {
            Probe::Expression(Expr::parse(node, &scope)?)
        })
    }

    /// Evaluate `probe` on `doc` (as its root document, whatever its
    /// domain and type): the expression's value, or the filter's verdict.
    ///
    /// # Errors
    ///
    /// The expression or filter fails on this document.
    pub fn eval_probe<'a>(
        &self,
        probe: &Probe,
        doc: &Val<'a>,
        lookup: &Lookup<'_>,
    ) -> Result<Val<'a>, EvalError> {
        let env = self.env(lookup);
        let named = self.named_values();
        let ctx = Ctx {
            root: doc,
            iteration: 0,
            env: &env,
            named: Some(&named),
        };
        match probe {
            Probe::Expression(e) => e.eval(doc, &ctx),
            Probe::Filter(f) => f.eval(doc, &ctx).map(Val::Bool),
        }
    }

    /// Room for the values of the named expressions on one document.
    fn named_values<'a>(&self) -> NamedValues<'a> {
        std::cell::RefCell::new(vec![None; self.named_expressions.len()])
    }

    /// What expressions of this data source evaluate in: its named
    /// expressions and filters, and the host lookup.
    fn env<'e>(&'e self, lookup: &'e Lookup<'e>) -> Env<'e> {
        Env {
            named_expressions: &self.named_expressions,
            named_filters: &self.named_filters,
            lookup,
        }
    }

    /// Whether this data source reads documents of `doc_type` in `domain`
    /// (or their deleted versions).
    pub fn concerns(&self, domain: Option<&str>, doc_type: Option<&str>) -> bool {
        domain.is_none_or(|d| d == self.domain)
            && doc_type.is_none_or(|t| {
                t == self.doc_type || deleted_doc_types(&self.doc_type).contains(&t)
            })
    }

    /// What `doc` means for this data source; `inserted_at` is the RFC 3339
    /// processing time that fills the `inserted_at` column.
    ///
    /// # Errors
    ///
    /// An expression, filter or indicator that fails on this document.
    pub fn process<'a>(
        &self,
        doc: &Val<'a>,
        inserted_at: &str,
        lookup: &Lookup<'_>,
    ) -> Result<Outcome, EvalError> {
        let domain = doc.get("domain").and_then(Val::as_str);
        let doc_type = doc.get("doc_type").and_then(Val::as_str);
        if domain != Some(self.domain.as_str()) {
            return Ok(Outcome::Ignore);
        }
        let env = self.env(lookup);
        let named = self.named_values();
        let ctx = Ctx {
            root: doc,
            iteration: 0,
            env: &env,
            named: Some(&named),
        };
        let passes = doc_type == Some(self.doc_type.as_str())
            && match &self.filter {
                Some(f) => f.eval(doc, &ctx)?,
                None => true,
            };
        if !passes {
            return Ok(if self.concerns(domain, doc_type) {
                Outcome::Delete
            } else {
                Outcome::Ignore
            });
        }
        let items: Vec<Val<'a>> = match &self.base_item {
            None => vec![doc.clone()],
            Some(e) => match e.eval(doc, &ctx)? {
                Val::Null => vec![],
                Val::List(items) => items.iter().cloned().collect(),
                other => vec![other],
            },
        };
        let mut rows = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let ctx = Ctx {
                root: doc,
                iteration: i as i64,
                env: &env,
                named: Some(&named),
            };
            let mut row = Vec::with_capacity(self.columns.len());
            for indicator in &self.indicators {
                indicator.cells(item, &ctx, inserted_at, &mut row)?;
            }
            rows.push(row);
        }
        Ok(Outcome::Rows(rows))
    }

    /// What evaluating this data source reads of a document.
    pub fn reads(&self) -> Reads {
        let mut walk = Walk::new(&self.named_expressions, &self.named_filters);
        if let Some(f) = &self.filter {
            walk.filter(f, true);
        }
        if let Some(e) = &self.base_item {
            walk.expr(e, true);
        }
        for indicator in &self.indicators {
            indicator.walk(&mut walk, self.base_item.is_none());
        }
        walk.reads
    }

    /// What evaluating `probe` in this data source's scope reads of a
    /// document.
    pub fn probe_reads(&self, probe: &Probe) -> Reads {
        let mut walk = Walk::new(&self.named_expressions, &self.named_filters);
        match probe {
            Probe::Expression(e) => walk.expr(e, true),
            Probe::Filter(f) => walk.filter(f, true),
        }
        walk.reads
    }

    /// Whether the primary key is `doc_id` alone, so that an upsert
    /// replaces the document's only row and no delete is needed first.
    pub fn keyed_by_doc_id(&self) -> bool {
        self.columns
            .iter()
            .filter(|c| c.primary_key)
            .map(|c| c.name.as_str())
            .eq(["doc_id"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definition_is_what_decides_rows_not_layout() {
        let parse = |text: &str| {
            let value = pillowtop_sdk::json::Value::parse(text).unwrap();
            DataSource::parse("t.json", &Node::root(value), "ucr_", &BTreeMap::new())
                .unwrap()
                .definition
        };
        let base = r#"{"domain": "d", "table_id": "t", "referenced_doc_type": "CommCareCase",
            "display_name": "One", "configured_indicators": [{"type": "count", "column_id": "n"}]}"#;
        let relaid = r#"{"table_id":"t","domain":"d","display_name":"Two","description":"x",
            "referenced_doc_type":"CommCareCase","configured_indicators":[{"type":"count","column_id":"n"}]}"#;
        let filtered = r#"{"domain": "d", "table_id": "t", "referenced_doc_type": "CommCareCase",
            "configured_filter": {"type": "property_match", "property_name": "a", "property_value": 1},
            "configured_indicators": [{"type": "count", "column_id": "n"}]}"#;
        assert!(parse(base).starts_with("sha1:") && parse(base).len() == 45);
        assert_eq!(parse(base), parse(relaid));
        assert_ne!(parse(base), parse(filtered));
    }

    #[test]
    fn table_names_follow_commcare() {
        // Expected values computed with CommCare's get_table_name in Python.
        assert_eq!(
            table_name("ucr_", "demo", "cases"),
            "ucr_demo_cases_53ec8c11"
        );
        assert_eq!(
            table_name(
                "ucr_",
                "a-very-long-project-space-name",
                "a_long_table_identifier"
            ),
            "ucr_a-very-long-project-space-name_a_long_69d2fbfe"
        );
        assert_eq!(
            crate::indicator::column_name(&"a".repeat(70)),
            format!("{}_ed6c69d9", "a".repeat(54))
        );
    }
}
