//! Indicators: a data source's columns and how each row value is computed
//! (`corehq/apps/userreports/indicators`). CommCare's indicator specs allow
//! no unknown properties; neither do these.

use crate::datatype::{self, Datatype};
use crate::eval::{Ctx, EvalError};
use crate::expr::{Expr, Scope};
use crate::filter::{Filter, Op};
use crate::reads::Walk;
use crate::spec::{Node, Object, SpecError};
use crate::value::Val;

/// The SQL type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// Text.
    Text,
    /// A 64-bit integer.
    Integer,
    /// A 64-bit float (CommCare's `decimal` is exact; see the README).
    Float,
    /// A boolean.
    Boolean,
    /// A date.
    Date,
    /// A timestamp.
    Timestamp,
    /// JSON (CommCare's `array` columns).
    Json,
}

/// One column of a data source's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The column name in the table.
    pub name: String,
    /// Its type.
    pub kind: ColumnKind,
    /// Whether it takes null.
    pub nullable: bool,
    /// Whether it is part of the primary key.
    pub primary_key: bool,
    /// `create_index` (recorded; see the README).
    pub create_index: bool,
}

/// One cell of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// SQL null.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// Text (also dates, timestamps and JSON).
    Text(String),
}

/// How an indicator computes its cells.
#[derive(Debug)]
enum Compute {
    /// An expression (or a property getter), coerced to the datatype.
    Value(Expr, Datatype),
    /// 1 when the filter passes, else 0.
    Flag(Filter),
    /// Always 1 (`count`).
    One,
    /// One 1/0 cell per choice: the value equals it (single select) or
    /// lists it (multiple select).
    Choices(Expr, Vec<Val<'static>>, bool),
    /// The root document's `_id`.
    DocId,
    /// When the change was processed.
    InsertedAt,
    /// The repeat iteration.
    RepeatIteration,
}

/// A parsed indicator: its columns and how to compute them.
#[derive(Debug)]
pub struct Indicator {
    columns: Vec<Column>,
    compute: Compute,
}

const TYPES: &str = "expression, boolean, small_boolean, raw, count, choice_list";

fn kind_of(datatype: Datatype) -> ColumnKind {
    match datatype {
        Datatype::String => ColumnKind::Text,
        Datatype::Integer | Datatype::SmallInteger => ColumnKind::Integer,
        Datatype::Decimal => ColumnKind::Float,
        Datatype::Date => ColumnKind::Date,
        Datatype::DateTime => ColumnKind::Timestamp,
        Datatype::Boolean => ColumnKind::Boolean,
        Datatype::Array => ColumnKind::Json,
    }
}

/// CommCare's `truncate_value` for a column name: past 63 bytes, the last
/// 54 and `_` and 8 hex digits of its SHA-1.
pub fn column_name(id: &str) -> String {
    const MAX: usize = 63;
    if id.len() <= MAX {
        return id.to_string();
    }
    let keep = MAX - 9;
    let mut start = id.len() - keep;
    while !id.is_char_boundary(start) {
        start += 1;
    }
    let hash = sha1_smol::Sha1::from(id.as_bytes()).digest().to_string();
    format!("{}_{}", &id[start..], &hash[..8])
}

fn datatype_of(o: &Object<'_>) -> Result<Datatype, SpecError> {
    let node = o.req("datatype")?;
    let name = node.text()?;
    Datatype::parse(&name).ok_or_else(|| {
        node.error(format!(
            "unknown datatype \"{name}\"; allowed: {}",
            datatype::NAMES
        ))
    })
}

/// A `property_name` or `property_path` getter (raw and choice_list indicators).
fn getter(o: &Object<'_>, datatype: Option<Datatype>) -> Result<Expr, SpecError> {
    match (
        o.opt("property_name")
            .filter(|n| n.value.as_str().is_some_and(|s| !s.is_empty())),
        o.opt("property_path"),
    ) {
        (Some(name), None) => Ok(Expr::PropertyName {
            name: Box::new(Expr::Constant(Val::str(name.text()?))),
            datatype,
        }),
        (None, Some(path)) => crate::expr::property_path(path, datatype),
        _ => Err(o
            .node
            .error("give exactly one of property_name and property_path")),
    }
}

impl Indicator {
    /// Parse one of `configured_indicators`.
    ///
    /// # Errors
    ///
    /// An unknown type or property, a missing `column_id`, a bad datatype
    /// or expression.
    pub fn parse(node: &Node<'_>, scope: &Scope<'_>) -> Result<Indicator, SpecError> {
        let o = node.object("an indicator")?;
        let kind = match o.get("type") {
            Some(t) => t.text()?,
            None => {
                return Err(node.error(format!("an indicator needs a \"type\"; allowed: {TYPES}")));
            }
        };
        const BASE: &[&str] = &["type", "column_id", "display_name", "comment"];
        let allowed: Vec<&str> = BASE
            .iter()
            .chain(match kind.as_str() {
                "expression" => &[
                    "datatype",
                    "is_nullable",
                    "is_primary_key",
                    "create_index",
                    "expression",
                    "transform",
                ][..],
                "raw" => &[
                    "datatype",
                    "is_nullable",
                    "is_primary_key",
                    "create_index",
                    "property_name",
                    "property_path",
                ][..],
                "boolean" | "small_boolean" => &["filter", "create_index"][..],
                "count" => &[][..],
                "choice_list" => &["property_name", "property_path", "choices", "select_style"][..],
                other => {
                    return Err(o.req("type")?.error(format!(
                        "unknown indicator type \"{other}\"; allowed: {TYPES}"
                    )));
                }
            })
            .copied()
            .collect();
        o.only(&allowed)?;
        let id_node = o.req("column_id")?;
        let id = id_node.text()?;
        if id.is_empty() {
            return Err(id_node.error("column_id must not be empty"));
        }
        let column = |kind: ColumnKind| -> Result<Column, SpecError> {
            let primary_key = o.bool_or("is_primary_key", false)?;
            Ok(Column {
                name: column_name(&id),
                kind,
                nullable: o.bool_or("is_nullable", true)? && !primary_key,
                primary_key,
                create_index: o.bool_or("create_index", false)?,
            })
        };
        let (columns, compute) = match kind.as_str() {
            "expression" => {
                if o.opt("transform")
                    .is_some_and(|t| t.value.members().next().is_some())
                {
                    return Err(o.req("transform")?.error(
                        "indicator transforms (CommCare's report-side \"transform\") are not supported; compute the value in the expression",
                    ));
                }
                let datatype = datatype_of(&o)?;
                let expr = Expr::parse(o.req("expression")?, scope)?;
                (
                    vec![column(kind_of(datatype))?],
                    Compute::Value(expr, datatype),
                )
            }
            "raw" => {
                let datatype = datatype_of(&o)?;
                (
                    vec![column(kind_of(datatype))?],
                    Compute::Value(getter(&o, None)?, datatype),
                )
            }
            "boolean" | "small_boolean" => {
                let filter = Filter::parse(o.req("filter")?, scope)?;
                let mut c = column(ColumnKind::Integer)?;
                c.nullable = true;
                (vec![c], Compute::Flag(filter))
            }
            "count" => (vec![column(ColumnKind::Integer)?], Compute::One),
            "choice_list" => {
                let multiple = match o.opt_text("select_style")?.as_deref() {
                    None | Some("single") => false,
                    Some("multiple") => true,
                    Some(other) => {
                        return Err(o.req("select_style")?.error(format!(
                            "select_style must be \"single\" or \"multiple\", not \"{other}\""
                        )));
                    }
                };
                let mut choices = Vec::new();
                let mut columns = Vec::new();
                for choice in o.req("choices")?.items()? {
                    let value = choice.literal();
                    let name =
                        column_name(&format!("{id}_{}", Val::from_json(choice.value).py_str()));
                    columns.push(Column {
                        name,
                        kind: ColumnKind::Integer,
                        nullable: true,
                        primary_key: false,
                        create_index: false,
                    });
                    choices.push(value);
                }
                (
                    columns,
                    Compute::Choices(getter(&o, None)?, choices, multiple),
                )
            }
            _ => unreachable!("checked above"),
        };
        Ok(Indicator { columns, compute })
    }

    /// The default `doc_id` column (primary key).
    pub fn doc_id() -> Indicator {
        Indicator::builtin("doc_id", ColumnKind::Text, true, Compute::DocId)
    }

    /// The default `inserted_at` column.
    pub fn inserted_at() -> Indicator {
        Indicator::builtin(
            "inserted_at",
            ColumnKind::Timestamp,
            false,
            Compute::InsertedAt,
        )
    }

    /// The `repeat_iteration` column of a data source with a base item
    /// expression (primary key).
    pub fn repeat_iteration() -> Indicator {
        Indicator::builtin(
            "repeat_iteration",
            ColumnKind::Integer,
            true,
            Compute::RepeatIteration,
        )
    }

    fn builtin(name: &str, kind: ColumnKind, primary_key: bool, compute: Compute) -> Indicator {
        Indicator {
            columns: vec![Column {
                name: name.into(),
                kind,
                nullable: false,
                primary_key,
                create_index: name == "inserted_at",
            }],
            compute,
        }
    }

    /// The columns this indicator fills.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// Append this indicator's cells for `item` to `row`.
    ///
    /// # Errors
    ///
    /// An expression that fails, a null in a column that takes none, a
    /// value a boolean column cannot hold.
    pub fn cells<'a>(
        &self,
        item: &Val<'a>,
        ctx: &Ctx<'_, 'a>,
        inserted_at: &str,
        row: &mut Vec<Cell>,
    ) -> Result<(), EvalError> {
        match &self.compute {
            Compute::Value(expr, datatype) => {
                let value = datatype.transform(expr.eval(item, ctx)?)?;
                row.push(cell(&self.columns[0], value)?);
            }
            Compute::Flag(filter) => row.push(Cell::Int(filter.eval(item, ctx)? as i64)),
            Compute::One => row.push(Cell::Int(1)),
            Compute::Choices(getter, choices, multiple) => {
                let value = getter.eval(item, ctx)?;
                for choice in choices {
                    let hit = if *multiple {
                        Op::InMulti.apply(&value, choice)?
                    } else {
                        Op::Eq.apply(&value, choice)?
                    };
                    row.push(Cell::Int(hit as i64));
                }
            }
            Compute::DocId => match ctx.root.get("_id") {
                Some(Val::Null) | None => {
                    return Err(EvalError::permanent(
                        "the document has no _id for the doc_id column",
                    ));
                }
                Some(id) => row.push(Cell::Text(id.py_str())),
            },
            Compute::InsertedAt => row.push(Cell::Text(inserted_at.to_string())),
            Compute::RepeatIteration => row.push(Cell::Int(ctx.iteration)),
        }
        Ok(())
    }
}

impl Indicator {
    /// Note what the indicator reads, evaluated on the root document
    /// (`root`) or on an item of `base_item_expression`.
    pub(crate) fn walk(&self, walk: &mut Walk<'_>, root: bool) {
        match &self.compute {
            Compute::Value(e, _) | Compute::Choices(e, _, _) => walk.expr(e, root),
            Compute::Flag(f) => walk.filter(f, root),
            Compute::One | Compute::DocId | Compute::InsertedAt | Compute::RepeatIteration => {}
        }
    }
}

/// The cell a coerced value becomes in `column`.
fn cell(column: &Column, value: Val<'_>) -> Result<Cell, EvalError> {
    let c = match (column.kind, value) {
        (_, Val::Null) => Cell::Null,
        (ColumnKind::Text, Val::Str(s)) => Cell::Text(s.into_owned()),
        (ColumnKind::Text, v) => Cell::Text(v.py_str()),
        (ColumnKind::Integer, v) => v.as_int().map_or(Cell::Null, Cell::Int),
        (ColumnKind::Float, v) => v.as_number().map_or(Cell::Null, Cell::Float),
        (ColumnKind::Date, Val::Date(d)) => Cell::Text(d.iso()),
        (ColumnKind::Timestamp, Val::DateTime(d)) => Cell::Text(d.rfc3339()),
        (ColumnKind::Date | ColumnKind::Timestamp, _) => Cell::Null,
        (ColumnKind::Boolean, Val::Bool(b)) => Cell::Bool(b),
        (ColumnKind::Boolean, Val::Int(i @ (0 | 1))) => Cell::Bool(i == 1),
        (ColumnKind::Boolean, v) => {
            return Err(EvalError::permanent(format!(
                "column {}: {} is not a boolean value (true, false, 1 or 0)",
                column.name,
                v.py_str()
            )));
        }
        (ColumnKind::Json, v) => {
            let mut text = String::new();
            v.write_json(&mut text);
            Cell::Text(text)
        }
    };
    if c == Cell::Null && !column.nullable {
        return Err(EvalError::permanent(format!(
            "column {} is not nullable (is_nullable false or is_primary_key true) but its value is null",
            column.name
        )));
    }
    Ok(c)
}
