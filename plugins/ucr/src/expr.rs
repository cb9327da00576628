//! Expressions: parsed once from a data source, evaluated per item.
//!
//! The types and their behaviour are CommCare's (`corehq/apps/userreports/
//! expressions`: `specs.py`, `list_specs.py`, `date_specs.py`): a spec that
//! is not an object is a constant; a missing property is null, never an
//! error; list expressions treat a non-list as an empty list.

use crate::datatype::{self, Datatype};
use crate::eval::{Ctx, EvalError};
use crate::evaluator::Program;
use crate::filter::Filter;
use crate::spec::{Node, Object, SpecError, to_static};
use crate::value::Val;
use pillowtop_sdk::json::Value;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::rc::Rc;

/// Names a data source's parts can refer to, known before they are parsed.
pub struct Scope<'n> {
    /// Named expressions, in the order of their table.
    pub expressions: &'n [String],
    /// Named filters, in the order of their table.
    pub filters: &'n [String],
    /// Document type to the lookup resource serving it (`related_doc`).
    pub related: &'n BTreeMap<String, String>,
}

/// How `reduce_items` aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    /// Number of items.
    Count,
    /// Python's `sum` (null when it raises).
    Sum,
    /// Python's `min` (null for no items or when it raises).
    Min,
    /// Python's `max`.
    Max,
    /// The first item.
    FirstItem,
    /// The last item.
    LastItem,
    /// Items' `str()` joined, null items as empty.
    Join,
}

/// An expression.
#[derive(Debug)]
pub enum Expr {
    /// The item itself (`identity`).
    Identity,
    /// A constant.
    Constant(Val<'static>),
    /// `item.get(name)` of a dict item, then the datatype.
    PropertyName {
        /// The name (itself an expression; usually a constant).
        name: Box<Expr>,
        /// Optional coercion.
        datatype: Option<Datatype>,
    },
    /// A path into nested dicts, then the datatype.
    PropertyPath {
        /// The keys.
        path: Vec<String>,
        /// Optional coercion.
        datatype: Option<Datatype>,
    },
    /// `if_true` when `test` passes, else `if_false`.
    Conditional(Box<Filter>, Box<Expr>, Box<Expr>),
    /// The case whose key equals the value, else the default.
    Switch(Box<Expr>, Vec<(String, Expr)>, Box<Expr>),
    /// The value, or the default when it is null or `""`.
    Coalesce(Box<Expr>, Box<Expr>),
    /// Non-null values' `str()` joined by a separator.
    ConcatenateStrings(Vec<Expr>, String),
    /// `str.split(delimiter)`, then optionally one item.
    SplitString {
        /// The string.
        string: Box<Expr>,
        /// Optional index.
        index: Option<Box<Expr>>,
        /// `None`: split on runs of whitespace.
        delimiter: Option<String>,
    },
    /// `list[index]`.
    ArrayIndex(Box<Expr>, Box<Expr>),
    /// The values of several expressions, optionally filtered.
    Iterator(Vec<Expr>, Option<Box<Filter>>),
    /// An expression on the root document.
    RootDoc(Box<Expr>),
    /// A named expression, by index.
    Named(usize),
    /// `value` evaluated on the result of `argument`.
    Nested(Box<Expr>, Box<Expr>),
    /// A dict of expressions.
    Dict(Vec<(String, Expr)>),
    /// An aggregation of a list.
    ReduceItems(Box<Expr>, Aggregation),
    /// Items passing a filter.
    FilterItems(Box<Expr>, Box<Filter>),
    /// An expression applied to each item.
    MapItems(Box<Expr>, Box<Expr>),
    /// Items sorted by an expression.
    SortItems(Box<Expr>, Box<Expr>, bool),
    /// A list of lists, flattened one level.
    Flatten(Box<Expr>),
    /// Arithmetic over named values.
    Evaluator(Box<Program>, Option<Vec<(String, Expr)>>, Option<Datatype>),
    /// A date plus days.
    AddDays(Box<Expr>, Box<Expr>),
    /// A date plus calendar months.
    AddMonths(Box<Expr>, Box<Expr>),
    /// The first day of a date's month.
    MonthStartDate(Box<Expr>),
    /// The last day of a date's month.
    MonthEndDate(Box<Expr>),
    /// Days from one date to another.
    DiffDays(Box<Expr>, Box<Expr>),
    /// The repeat iteration.
    BaseIterationNumber,
    /// A value from another document, read through a host lookup.
    RelatedDoc {
        /// The lookup resource serving the document type.
        resource: String,
        /// The related document's id.
        doc_id: Box<Expr>,
        /// What to read from it.
        value: Box<Expr>,
    },
}

/// Every expression type, for error messages.
pub const TYPES: &str = "identity, constant, property_name, property_path, conditional, switch, coalesce, \
concatenate_strings, split_string, array_index, iterator, root_doc, named, nested, dict, reduce_items, \
filter_items, map_items, sort_items, flatten, evaluator, add_days, add_months, month_start_date, \
month_end_date, diff_days, base_iteration_number, related_doc";

fn boxed(node: &Node<'_>, scope: &Scope<'_>) -> Result<Box<Expr>, SpecError> {
    Ok(Box::new(Expr::parse(node, scope)?))
}

/// A `property_path` getter: a non-empty list of keys (CommCare refuses an
/// empty path at spec time). Also the getter of `property_match` filters
/// and `raw` / `choice_list` indicators.
pub(crate) fn property_path(
    path: &Node<'_>,
    datatype: Option<Datatype>,
) -> Result<Expr, SpecError> {
    let mut keys = Vec::new();
    for key in path.items()? {
        keys.push(key.text()?);
    }
    if keys.is_empty() {
        return Err(path.error("property_path must not be empty"));
    }
    Ok(Expr::PropertyPath {
        path: keys,
        datatype,
    })
}

fn datatype(o: &Object<'_>) -> Result<Option<Datatype>, SpecError> {
    match o.opt("datatype") {
        None => Ok(None),
        Some(n) => {
            let name = n.text()?;
            Datatype::parse(&name).map(Some).ok_or_else(|| {
                n.error(format!(
                    "unknown datatype \"{name}\"; allowed: {}",
                    datatype::NAMES
                ))
            })
        }
    }
}

impl Expr {
    /// Parse an expression spec (a non-object is a constant).
    ///
    /// # Errors
    ///
    /// An unknown type, a missing or mistyped property, an unknown name.
    pub fn parse(node: &Node<'_>, scope: &Scope<'_>) -> Result<Expr, SpecError> {
        if node.value.kind() != pillowtop_sdk::json::Kind::Object {
            return Ok(Expr::Constant(node.literal()));
        }
        let o = node.object("an expression")?;
        let kind = match o.get("type") {
            Some(t) => t.text()?,
            None => {
                return Err(node.error(format!("an expression needs a \"type\"; allowed: {TYPES}")));
            }
        };
        let e = |key: &str| boxed(o.req(key)?, scope);
        Ok(match kind.as_str() {
            "identity" => Expr::Identity,
            "constant" => match o.get("constant") {
                Some(c) => Expr::Constant(c.literal()),
                None => return Err(node.error("\"constant\" is required in a \"constant\" spec")),
            },
            "property_name" => Expr::PropertyName {
                name: e("property_name")?,
                datatype: datatype(&o)?,
            },
            "property_path" => property_path(o.req("property_path")?, datatype(&o)?)?,
            "conditional" => Expr::Conditional(
                Box::new(Filter::parse(o.req("test")?, scope)?),
                e("expression_if_true")?,
                e("expression_if_false")?,
            ),
            "switch" => {
                let cases = o.req("cases")?.object("\"cases\"")?;
                let mut parsed = Vec::new();
                for (key, case) in cases.members() {
                    parsed.push((key.clone(), Expr::parse(case, scope)?));
                }
                Expr::Switch(e("switch_on")?, parsed, e("default")?)
            }
            "coalesce" => Expr::Coalesce(e("expression")?, e("default_expression")?),
            "concatenate_strings" => {
                let mut parts = Vec::new();
                for item in o.req("expressions")?.items()? {
                    parts.push(Expr::parse(&item, scope)?);
                }
                Expr::ConcatenateStrings(parts, o.opt_text("separator")?.unwrap_or_default())
            }
            "split_string" => {
                let delimiter = o.opt_text("delimiter")?;
                if delimiter.as_deref() == Some("") {
                    return Err(o.req("delimiter")?.error(
                        "an empty delimiter cannot split (Python raises \"empty separator\"); leave it out to split on whitespace",
                    ));
                }
                Expr::SplitString {
                    string: e("string_expression")?,
                    index: o
                        .opt("index_expression")
                        .map(|n| boxed(n, scope))
                        .transpose()?,
                    delimiter,
                }
            }
            "array_index" => Expr::ArrayIndex(e("array_expression")?, e("index_expression")?),
            "iterator" => {
                let mut parts = Vec::new();
                for item in o.req("expressions")?.items()? {
                    parts.push(Expr::parse(&item, scope)?);
                }
                let test = match o.opt("test") {
                    // An empty test means "keep every value".
                    Some(t) if t.value.members().next().is_some() => {
                        Some(Box::new(Filter::parse(t, scope)?))
                    }
                    _ => None,
                };
                Expr::Iterator(parts, test)
            }
            "root_doc" => Expr::RootDoc(e("expression")?),
            "named" => {
                let name = o.req_text("name")?;
                match scope.expressions.iter().position(|n| *n == name) {
                    Some(i) => Expr::Named(i),
                    None => {
                        return Err(o.req("name")?.error(format!(
                            "no named expression \"{name}\" in named_expressions (names: {})",
                            list(scope.expressions)
                        )));
                    }
                }
            }
            "nested" => Expr::Nested(e("argument_expression")?, e("value_expression")?),
            "dict" => {
                let properties = o.req("properties")?.object("\"properties\"")?;
                let mut parsed = Vec::new();
                for (key, value) in properties.members() {
                    parsed.push((key.clone(), Expr::parse(value, scope)?));
                }
                Expr::Dict(parsed)
            }
            "reduce_items" => {
                let name = o.req_text("aggregation_fn")?;
                let aggregation = match name.as_str() {
                    "count" => Aggregation::Count,
                    "sum" => Aggregation::Sum,
                    "min" => Aggregation::Min,
                    "max" => Aggregation::Max,
                    "first_item" => Aggregation::FirstItem,
                    "last_item" => Aggregation::LastItem,
                    "join" => Aggregation::Join,
                    _ => {
                        return Err(o.req("aggregation_fn")?.error(format!(
                            "unknown aggregation_fn \"{name}\"; allowed: count, sum, min, max, first_item, last_item, join"
                        )));
                    }
                };
                Expr::ReduceItems(e("items_expression")?, aggregation)
            }
            "filter_items" => Expr::FilterItems(
                e("items_expression")?,
                Box::new(Filter::parse(o.req("filter_expression")?, scope)?),
            ),
            "map_items" => Expr::MapItems(e("items_expression")?, e("map_expression")?),
            "sort_items" => {
                let desc = match o.opt_text("order")?.as_deref() {
                    None | Some("ASC") => false,
                    Some("DESC") => true,
                    Some(other) => {
                        return Err(o.req("order")?.error(format!(
                            "order must be \"ASC\" or \"DESC\", not \"{other}\""
                        )));
                    }
                };
                Expr::SortItems(e("items_expression")?, e("sort_expression")?, desc)
            }
            "flatten" => Expr::Flatten(e("items_expression")?),
            "evaluator" => {
                let statement = o.req("statement")?;
                let program = Program::parse(&statement.text()?).map_err(|m| statement.error(m))?;
                let variables = match o.opt("context_variables") {
                    None => None,
                    Some(vars) => {
                        let vars = vars.object("\"context_variables\"")?;
                        let mut parsed = Vec::new();
                        for (name, value) in vars.members() {
                            parsed.push((name.clone(), Expr::parse(value, scope)?));
                        }
                        // CommCare: no variables means the item is the namespace.
                        (!parsed.is_empty()).then_some(parsed)
                    }
                };
                Expr::Evaluator(Box::new(program), variables, datatype(&o)?)
            }
            "add_days" => Expr::AddDays(e("date_expression")?, e("count_expression")?),
            "add_months" => Expr::AddMonths(e("date_expression")?, e("months_expression")?),
            "month_start_date" => Expr::MonthStartDate(e("date_expression")?),
            "month_end_date" => Expr::MonthEndDate(e("date_expression")?),
            "diff_days" => Expr::DiffDays(e("from_date_expression")?, e("to_date_expression")?),
            "base_iteration_number" => Expr::BaseIterationNumber,
            "related_doc" => {
                let doc_type = o.req_text("related_doc_type")?;
                let Some(resource) = scope.related.get(&doc_type) else {
                    return Err(o.req("related_doc_type")?.error(format!(
                        "no lookup serves documents of type \"{doc_type}\": add it to the plugin's [config.related_docs] (document type = lookup resource) and grant the resource in capabilities.lookups"
                    )));
                };
                Expr::RelatedDoc {
                    resource: resource.clone(),
                    doc_id: e("doc_id_expression")?,
                    value: e("value_expression")?,
                }
            }
            other => {
                return Err(o.req("type")?.error(format!(
                    "unknown expression type \"{other}\"; allowed: {TYPES}"
                )));
            }
        })
    }

    /// Evaluate on `item`.
    ///
    /// # Errors
    ///
    /// Only where CommCare's Python raises (see [`EvalError`]).
    pub fn eval<'a>(&self, item: &Val<'a>, ctx: &Ctx<'_, 'a>) -> Result<Val<'a>, EvalError> {
        Ok(match self {
            Expr::Identity => item.clone(),
            Expr::Constant(v) => v.clone(),
            Expr::PropertyName { name, datatype } => {
                let value = match (item, name.as_ref()) {
                    // The usual constant name, read without a copy of it.
                    (Val::Dict(_), Expr::Constant(Val::Str(key))) => {
                        item.get(key).cloned().unwrap_or(Val::Null)
                    }
                    (Val::Dict(_), name) => match name.eval(item, ctx)? {
                        Val::Str(key) => item.get(&key).cloned().unwrap_or(Val::Null),
                        // A dict read from JSON has only string keys.
                        _ => Val::Null,
                    },
                    _ => Val::Null,
                };
                coerce(*datatype, value)?
            }
            Expr::PropertyPath { path, datatype } => {
                let mut at = item;
                let mut found = !path.is_empty();
                for key in path {
                    match at.get(key) {
                        Some(v) => at = v,
                        None => {
                            found = false;
                            break;
                        }
                    }
                }
                coerce(*datatype, if found { at.clone() } else { Val::Null })?
            }
            Expr::Conditional(test, t, f) => {
                if test.eval(item, ctx)? {
                    t.eval(item, ctx)?
                } else {
                    f.eval(item, ctx)?
                }
            }
            Expr::Switch(on, cases, default) => {
                let value = on.eval(item, ctx)?;
                match cases
                    .iter()
                    .find(|(k, _)| value.as_str() == Some(k.as_str()))
                {
                    Some((_, e)) => e.eval(item, ctx)?,
                    None => default.eval(item, ctx)?,
                }
            }
            Expr::Coalesce(e, default) => {
                let value = e.eval(item, ctx)?;
                let fallback = default.eval(item, ctx)?;
                if value.is_null() || value.as_str() == Some("") {
                    fallback
                } else {
                    value
                }
            }
            Expr::ConcatenateStrings(parts, separator) => {
                let mut out = String::new();
                let mut first = true;
                for part in parts {
                    let value = part.eval(item, ctx)?;
                    if value.is_null() {
                        continue;
                    }
                    if !first {
                        out.push_str(separator);
                    }
                    first = false;
                    value.write_py(&mut out, false);
                }
                Val::str(out)
            }
            Expr::SplitString {
                string,
                index,
                delimiter,
            } => {
                let Val::Str(s) = string.eval(item, ctx)? else {
                    return Ok(Val::Null);
                };
                let index = match index {
                    None => None,
                    Some(i) => match i.eval(item, ctx)?.as_int() {
                        Some(i) => Some(i),
                        None => return Ok(Val::Null),
                    },
                };
                let parts: Vec<&str> = match delimiter {
                    Some(d) => s.split(d.as_str()).collect(),
                    None => s.split_whitespace().collect(),
                };
                match index {
                    None => Val::List(Rc::new(
                        parts.into_iter().map(|p| Val::str(p.to_string())).collect(),
                    )),
                    Some(i) => py_index(parts.len(), i)
                        .map_or(Val::Null, |i| Val::str(parts[i].to_string())),
                }
            }
            Expr::ArrayIndex(array, index) => {
                let array = array.eval(item, ctx)?;
                let Some(items) = array.as_list() else {
                    return Ok(Val::Null);
                };
                match index.eval(item, ctx)?.as_int() {
                    Some(i) => py_index(items.len(), i).map_or(Val::Null, |i| items[i].clone()),
                    None => Val::Null,
                }
            }
            Expr::Iterator(parts, test) => {
                let mut values = Vec::with_capacity(parts.len());
                for part in parts {
                    let value = part.eval(item, ctx)?;
                    if match test {
                        Some(t) => t.eval(&value, ctx)?,
                        None => true,
                    } {
                        values.push(value);
                    }
                }
                Val::List(Rc::new(values))
            }
            Expr::RootDoc(e) => e.eval(ctx.root, ctx)?,
            Expr::Named(i) => {
                let slot = ctx.named_slot(item);
                let kept = slot.and_then(|values| values.borrow().get(*i).cloned().flatten());
                match kept {
                    Some(v) => v,
                    None => {
                        let v = ctx.env.named_expressions[*i].eval(item, ctx)?;
                        if let Some(values) = slot
                            && let Some(place) = values.borrow_mut().get_mut(*i)
                        {
                            *place = Some(v.clone());
                        }
                        v
                    }
                }
            }
            Expr::Nested(argument, value) => {
                let argument = argument.eval(item, ctx)?;
                value.eval(&argument, ctx)?
            }
            Expr::Dict(properties) => {
                let mut members = Vec::with_capacity(properties.len());
                for (key, e) in properties {
                    members.push((key.clone().into(), e.eval(item, ctx)?));
                }
                Val::Dict(Rc::new(members))
            }
            Expr::ReduceItems(items, aggregation) => {
                let items = list_of(items.eval(item, ctx)?);
                reduce(&items, *aggregation)
            }
            Expr::FilterItems(items, filter) => {
                let items = list_of(items.eval(item, ctx)?);
                let mut kept = Vec::new();
                for i in items.iter() {
                    if filter.eval(i, ctx)? {
                        kept.push(i.clone());
                    }
                }
                Val::List(Rc::new(kept))
            }
            Expr::MapItems(items, map) => {
                let items = list_of(items.eval(item, ctx)?);
                let mut mapped = Vec::with_capacity(items.len());
                for i in items.iter() {
                    mapped.push(map.eval(i, ctx)?);
                }
                Val::List(Rc::new(mapped))
            }
            Expr::SortItems(items, key, desc) => {
                let items = list_of(items.eval(item, ctx)?);
                let mut keyed = Vec::with_capacity(items.len());
                for i in items.iter() {
                    keyed.push((key.eval(i, ctx)?, i.clone()));
                }
                // CommCare sorts by (0 if the key is None else 1, key): an
                // item without a key comes first (last in DESC), two such
                // items keep their order. Python's sorted raises TypeError
                // when two keys do not compare; CommCare then returns an
                // empty list.
                let mut incomparable = false;
                keyed.sort_by(|(a, _), (b, _)| {
                    let order = match (a.is_null(), b.is_null()) {
                        (true, true) => Ordering::Equal,
                        (true, false) => Ordering::Less,
                        (false, true) => Ordering::Greater,
                        (false, false) => a.py_cmp(b).unwrap_or_else(|| {
                            incomparable = true;
                            Ordering::Equal
                        }),
                    };
                    if *desc { order.reverse() } else { order }
                });
                if incomparable {
                    Val::List(Rc::new(vec![]))
                } else {
                    Val::List(Rc::new(keyed.into_iter().map(|(_, v)| v).collect()))
                }
            }
            Expr::Flatten(items) => {
                let items = list_of(items.eval(item, ctx)?);
                let mut flat = Vec::new();
                for i in items.iter() {
                    match i.as_list() {
                        Some(inner) => flat.extend(inner.iter().cloned()),
                        None => return Ok(Val::List(Rc::new(vec![]))),
                    }
                }
                Val::List(Rc::new(flat))
            }
            Expr::Evaluator(program, variables, datatype) => {
                let mut names: Vec<(std::borrow::Cow<'_, str>, Val<'a>)> = Vec::new();
                match variables {
                    Some(vars) => {
                        for (name, e) in vars {
                            names.push((name.as_str().into(), e.eval(item, ctx)?));
                        }
                    }
                    None => {
                        if let Val::Dict(members) = item {
                            names.extend(members.iter().cloned());
                        }
                    }
                }
                coerce(*datatype, program.run(&names)?)?
            }
            Expr::AddDays(date, count) => {
                let date = datatype::to_date(&date.eval(item, ctx)?);
                let count = Datatype::Integer.transform(count.eval(item, ctx)?)?;
                match (date, count) {
                    (Val::Date(d), Val::Int(n)) => Val::Date(d.add_days(n).ok_or_else(|| {
                        EvalError::permanent(
                            "add_days: the date is out of range (Python's OverflowError)",
                        )
                    })?),
                    _ => Val::Null,
                }
            }
            Expr::AddMonths(date, months) => {
                let date = datatype::to_date(&date.eval(item, ctx)?);
                let months = Datatype::Integer.transform(months.eval(item, ctx)?)?;
                match (date, months) {
                    (Val::Date(d), Val::Int(n)) => Val::Date(d.add_months(n).ok_or_else(|| {
                        EvalError::permanent(
                            "add_months: the date is out of range (Python's ValueError)",
                        )
                    })?),
                    _ => Val::Null,
                }
            }
            Expr::MonthStartDate(date) => match datatype::to_date(&date.eval(item, ctx)?) {
                Val::Date(d) => Val::Date(d.month_start()),
                _ => Val::Null,
            },
            Expr::MonthEndDate(date) => match datatype::to_date(&date.eval(item, ctx)?) {
                Val::Date(d) => Val::Date(d.month_end()),
                _ => Val::Null,
            },
            Expr::DiffDays(from, to) => {
                let from = datatype::to_date(&from.eval(item, ctx)?);
                let to = datatype::to_date(&to.eval(item, ctx)?);
                match (from, to) {
                    (Val::Date(a), Val::Date(b)) => Val::Int((b.0 - a.0) as i64),
                    _ => Val::Null,
                }
            }
            Expr::BaseIterationNumber => Val::Int(ctx.iteration),
            Expr::RelatedDoc {
                resource,
                doc_id,
                value,
            } => {
                let id = doc_id.eval(item, ctx)?;
                if !id.truthy() {
                    return Ok(Val::Null);
                }
                let domain = ctx.root.get("domain").cloned().unwrap_or(Val::Null);
                let text = (ctx.env.lookup)(resource, &id.py_str())?;
                let parsed;
                let related = match &text {
                    Some(t) => {
                        parsed = Value::parse(t).map_err(|e| {
                            EvalError::permanent(format!(
                                "related_doc: lookup {resource:?} answered invalid JSON: {e}"
                            ))
                        })?;
                        let doc = Val::from_json(parsed);
                        // CommCare reads a related document only from the same domain.
                        if doc.get("domain").is_some_and(|d| d.py_eq(&domain)) {
                            doc
                        } else {
                            Val::Null
                        }
                    }
                    None => Val::Null,
                };
                let inner = Ctx {
                    root: &related,
                    iteration: 0,
                    env: ctx.env,
                    named: None,
                };
                to_static(value.eval(&related, &inner)?)
            }
        })
    }

    /// Whether this expression is a constant (and which).
    pub fn constant(&self) -> Option<&Val<'static>> {
        match self {
            Expr::Constant(v) => Some(v),
            _ => None,
        }
    }
}

fn coerce<'a>(datatype: Option<Datatype>, value: Val<'a>) -> Result<Val<'a>, EvalError> {
    match datatype {
        Some(d) => d.transform(value),
        None => Ok(value),
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Python's index `i` into a sequence of `len` (negative from the end).
fn py_index(len: usize, i: i64) -> Option<usize> {
    let len = len as i64;
    let at = if i < 0 { len + i } else { i };
    (0..len).contains(&at).then_some(at as usize)
}

/// CommCare's `_evaluate_items_expression`: a list, or no items.
fn list_of(value: Val<'_>) -> Rc<Vec<Val<'_>>> {
    match value {
        Val::List(items) => items,
        _ => Rc::new(Vec::new()),
    }
}

/// CommCare's `aggregate_items`.
fn reduce<'a>(items: &[Val<'a>], aggregation: Aggregation) -> Val<'a> {
    match aggregation {
        Aggregation::Count => Val::Int(items.len() as i64),
        Aggregation::Sum => sum(items),
        Aggregation::Min | Aggregation::Max => {
            let Some(first) = items.first() else {
                return Val::Null;
            };
            let mut best = first;
            for i in &items[1..] {
                match i.py_cmp(best) {
                    None => return Val::Null,
                    Some(Ordering::Less) if aggregation == Aggregation::Min => best = i,
                    Some(Ordering::Greater) if aggregation == Aggregation::Max => best = i,
                    _ => {}
                }
            }
            best.clone()
        }
        Aggregation::FirstItem => items.first().cloned().unwrap_or(Val::Null),
        Aggregation::LastItem => items.last().cloned().unwrap_or(Val::Null),
        Aggregation::Join => {
            let mut out = String::new();
            for i in items {
                if !i.is_null() {
                    i.write_py(&mut out, false);
                }
            }
            Val::str(out)
        }
    }
}

/// Python's `sum(items)` (from `0`): ints stay ints, a float makes a
/// float, anything that is not a number raises `TypeError` (null).
fn sum<'a>(items: &[Val<'a>]) -> Val<'a> {
    let mut int: i64 = 0;
    let mut float: Option<f64> = None;
    let mut decimal = false;
    for i in items {
        match i {
            Val::Int(_) | Val::Bool(_) => {
                let n = i.as_int().unwrap_or(0);
                match float {
                    Some(f) => float = Some(f + n as f64),
                    None => match int.checked_add(n) {
                        Some(s) => int = s,
                        None => float = Some(int as f64 + n as f64),
                    },
                }
            }
            Val::Float(f) => {
                if decimal {
                    // Decimal + float raises TypeError.
                    return Val::Null;
                }
                float = Some(float.unwrap_or(int as f64) + f);
            }
            Val::Decimal(f, _) => {
                if float.is_some() && !decimal {
                    return Val::Null;
                }
                decimal = true;
                float = Some(float.unwrap_or(int as f64) + f);
            }
            _ => return Val::Null,
        }
    }
    match float {
        Some(f) if decimal => {
            let mut text = String::new();
            pillowtop_sdk::python::write_float(&mut text, f);
            Val::Decimal(f, text.into())
        }
        Some(f) => Val::Float(f),
        None => Val::Int(int),
    }
}

/// A reference to a named part of the data source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamedRef {
    /// A named expression, by index.
    Expression(usize),
    /// A named filter, by index.
    Filter(usize),
}

impl Expr {
    /// Call `f` with every named expression or filter this expression
    /// refers to directly (through its sub-expressions and filters, not
    /// through the named parts themselves).
    pub fn each_ref(&self, f: &mut dyn FnMut(NamedRef)) {
        let mut e = |x: &Expr| x.each_ref(f);
        match self {
            Expr::Identity
            | Expr::Constant(_)
            | Expr::PropertyPath { .. }
            | Expr::BaseIterationNumber => {}
            Expr::Named(i) => f(NamedRef::Expression(*i)),
            Expr::PropertyName { name, .. } => e(name),
            Expr::Conditional(test, t, no) => {
                test.each_ref(f);
                t.each_ref(f);
                no.each_ref(f);
            }
            Expr::Switch(on, cases, default) => {
                on.each_ref(f);
                for (_, c) in cases {
                    c.each_ref(f);
                }
                default.each_ref(f);
            }
            Expr::ConcatenateStrings(parts, _) => parts.iter().for_each(e),
            Expr::Iterator(parts, test) => {
                for p in parts {
                    p.each_ref(f);
                }
                if let Some(t) = test {
                    t.each_ref(f);
                }
            }
            Expr::SplitString { string, index, .. } => {
                string.each_ref(f);
                if let Some(i) = index {
                    i.each_ref(f);
                }
            }
            Expr::Dict(members) => members.iter().for_each(|(_, x)| x.each_ref(f)),
            Expr::Evaluator(_, vars, _) => {
                for (_, x) in vars.iter().flatten() {
                    x.each_ref(f);
                }
            }
            Expr::FilterItems(items, filter) => {
                items.each_ref(f);
                filter.each_ref(f);
            }
            Expr::RootDoc(x)
            | Expr::ReduceItems(x, _)
            | Expr::Flatten(x)
            | Expr::MonthStartDate(x)
            | Expr::MonthEndDate(x) => x.each_ref(f),
            Expr::Coalesce(a, b)
            | Expr::ArrayIndex(a, b)
            | Expr::Nested(a, b)
            | Expr::MapItems(a, b)
            | Expr::SortItems(a, b, _)
            | Expr::AddDays(a, b)
            | Expr::AddMonths(a, b)
            | Expr::DiffDays(a, b) => {
                a.each_ref(f);
                b.each_ref(f);
            }
            Expr::RelatedDoc { doc_id, value, .. } => {
                doc_id.each_ref(f);
                value.each_ref(f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::Env;
    use crate::spec::Node;

    /// Evaluate expression `spec` on document `doc`, as `str()` of the value.
    fn eval(spec: &str, doc: &str) -> String {
        let related = BTreeMap::new();
        let scope = Scope {
            expressions: &[],
            filters: &[],
            related: &related,
        };
        let expr = Expr::parse(&Node::root(Value::parse(spec).unwrap()), &scope).unwrap();
        let doc = Val::from_json(Value::parse(doc).unwrap());
        let lookup = |_: &str, _: &str| Ok(None);
        let env = Env {
            named_expressions: &[],
            named_filters: &[],
            lookup: &lookup,
        };
        let ctx = Ctx {
            root: &doc,
            iteration: 0,
            env: &env,
            named: None,
        };
        match expr.eval(&doc, &ctx) {
            Ok(v) => v.py_str(),
            Err(e) => format!("error: {}", e.message),
        }
    }

    fn parse_error(spec: &str) -> String {
        let related = BTreeMap::new();
        let scope = Scope {
            expressions: &[],
            filters: &[],
            related: &related,
        };
        Expr::parse(&Node::root(Value::parse(spec).unwrap()), &scope)
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn literals_that_look_like_dates_are_dates() {
        assert_eq!(eval(r#""2015-01-31""#, "{}"), "2015-01-31");
        assert_eq!(
            eval(r#"{"type": "constant", "constant": "2015-01-31"}"#, "{}"),
            "2015-01-31"
        );
        // As a date, it is no longer equal to the text of a document.
        assert_eq!(
            eval(
                r#"{"type": "conditional", "test": {"type": "boolean_expression", "expression": {"type": "property_name", "property_name": "d"}, "operator": "eq", "property_value": "2015-01-31"}, "expression_if_true": "same", "expression_if_false": "differs"}"#,
                r#"{"d": "2015-01-31"}"#
            ),
            "differs"
        );
        assert_eq!(eval(r#""1.50""#, "{}"), "1.50");
        // Items of a list literal are not converted.
        assert_eq!(eval(r#"["2015-01-31"]"#, "{}"), "['2015-01-31']");
    }

    #[test]
    fn properties_and_paths() {
        assert_eq!(
            eval(
                r#"{"type": "property_name", "property_name": "a"}"#,
                r#"{"a": 1}"#
            ),
            "1"
        );
        assert_eq!(
            eval(
                r#"{"type": "property_name", "property_name": "b"}"#,
                r#"{"a": 1}"#
            ),
            "None"
        );
        assert_eq!(
            eval(
                r#"{"type": "property_path", "property_path": ["a", "b"]}"#,
                r#"{"a": {"b": [1]}}"#
            ),
            "[1]"
        );
        assert_eq!(
            eval(
                r#"{"type": "property_path", "property_path": ["a", "0"]}"#,
                r#"{"a": [1]}"#
            ),
            "None"
        );
        // CommCare refuses an empty path at spec time (test_expressions.py
        // test_property_path_empty_path).
        assert!(
            parse_error(r#"{"type": "property_path", "property_path": []}"#)
                .contains("must not be empty")
        );
        assert_eq!(
            eval(
                r#"{"type": "property_name", "property_name": {"type": "property_name", "property_name": "which"}}"#,
                r#"{"which": "x", "x": "found"}"#
            ),
            "found"
        );
    }

    #[test]
    fn lists() {
        let items = r#"{"items": [{"k": 2, "v": "b"}, {"v": "x"}, {"k": 1, "v": "a"}]}"#;
        // A missing sort key is None: CommCare's current sort_items puts
        // it first (earlier versions gave an empty list).
        assert_eq!(
            eval(
                r#"{"type": "sort_items", "items_expression": {"type": "property_name", "property_name": "items"}, "sort_expression": {"type": "property_name", "property_name": "k"}}"#,
                items
            ),
            "[{'v': 'x'}, {'k': 1, 'v': 'a'}, {'k': 2, 'v': 'b'}]"
        );
        let sorted = r#"{"type": "map_items", "map_expression": {"type": "property_name", "property_name": "v"}, "items_expression": {"type": "sort_items", "items_expression": {"type": "property_name", "property_name": "items"}, "sort_expression": {"type": "property_name", "property_name": "v"}}}"#;
        assert_eq!(eval(sorted, items), "['a', 'b', 'x']");
        assert_eq!(
            eval(
                r#"{"type": "reduce_items", "aggregation_fn": "sum", "items_expression": [1, 2.5, true]}"#,
                "{}"
            ),
            "4.5"
        );
        assert_eq!(
            eval(
                r#"{"type": "reduce_items", "aggregation_fn": "sum", "items_expression": []}"#,
                "{}"
            ),
            "0"
        );
        assert_eq!(
            eval(
                r#"{"type": "reduce_items", "aggregation_fn": "max", "items_expression": []}"#,
                "{}"
            ),
            "None"
        );
        assert_eq!(
            eval(
                r#"{"type": "reduce_items", "aggregation_fn": "min", "items_expression": [3, "a"]}"#,
                "{}"
            ),
            "None"
        );
        assert_eq!(
            eval(
                r#"{"type": "reduce_items", "aggregation_fn": "count", "items_expression": "abc"}"#,
                "{}"
            ),
            "0"
        );
        assert_eq!(
            eval(
                r#"{"type": "reduce_items", "aggregation_fn": "join", "items_expression": ["a", null, 1]}"#,
                "{}"
            ),
            "a1"
        );
        assert_eq!(
            eval(
                r#"{"type": "array_index", "array_expression": [1, 2, 3], "index_expression": -4}"#,
                "{}"
            ),
            "None"
        );
        assert_eq!(
            eval(
                r#"{"type": "array_index", "array_expression": [1, 2, 3], "index_expression": true}"#,
                "{}"
            ),
            "2"
        );
        assert_eq!(
            eval(
                r#"{"type": "array_index", "array_expression": [1, 2, 3], "index_expression": "0"}"#,
                "{}"
            ),
            "None"
        );
        assert_eq!(
            eval(
                r#"{"type": "flatten", "items_expression": [[1], [], [2, [3]]]}"#,
                "{}"
            ),
            "[1, 2, [3]]"
        );
    }

    #[test]
    fn text() {
        let split = |s: &str, rest: &str| {
            eval(
                &format!(r#"{{"type": "split_string", "string_expression": {s}{rest}}}"#),
                "{}",
            )
        };
        assert_eq!(split(r#""  a b ""#, ""), "['a', 'b']");
        assert_eq!(
            split(r#""a,,b""#, r#", "delimiter": ",""#),
            "['a', '', 'b']"
        );
        assert_eq!(
            split(r#""a,b""#, r#", "delimiter": ",", "index_expression": 5"#),
            "None"
        );
        assert_eq!(split("5", ""), "None");
        assert_eq!(
            eval(
                r#"{"type": "concatenate_strings", "expressions": ["a", null, "", 1.0, true], "separator": "-"}"#,
                "{}"
            ),
            "a--1.0-True"
        );
        assert_eq!(
            eval(
                r#"{"type": "coalesce", "expression": 0, "default_expression": 5}"#,
                "{}"
            ),
            "0"
        );
        assert_eq!(
            eval(
                r#"{"type": "coalesce", "expression": "", "default_expression": 5}"#,
                "{}"
            ),
            "5"
        );
        assert_eq!(
            eval(
                r#"{"type": "switch", "switch_on": 4, "cases": {"4": "four"}, "default": "no"}"#,
                "{}"
            ),
            "no"
        );
    }

    #[test]
    fn config_errors_name_the_path_and_what_is_allowed() {
        assert!(
            parse_error(r#"{"type": "nope"}"#)
                .contains("unknown expression type \"nope\"; allowed: identity")
        );
        assert!(
            parse_error(r#"{"type": "property_name"}"#).contains("\"property_name\" is required")
        );
        let e = parse_error(
            r#"{"type": "nested", "argument_expression": {"type": "identity"}, "value_expression": {"type": "property_path", "property_path": "a"}}"#,
        );
        assert!(
            e.starts_with("at value_expression.property_path: must be a list"),
            "{e}"
        );
        assert!(
            parse_error(r#"{"type": "named", "name": "x"}"#).contains("no named expression \"x\"")
        );
        assert!(
            parse_error(r#"{"type": "evaluator", "statement": "a +"}"#).contains("does not parse")
        );
        assert!(parse_error(r#"{"type": "related_doc", "related_doc_type": "CommCareCase", "doc_id_expression": 1, "value_expression": 1}"#)
            .contains("[config.related_docs]"));
    }
}
