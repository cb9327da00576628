//! Filters: CommCare's `boolean_expression`, `property_match`, `and`,
//! `or`, `not` and `named`, with its operators (`corehq/apps/userreports/
//! operators.py`). Operators never raise for mismatched types: where
//! Python's comparison raises `TypeError`, the filter is false. One quirk
//! is kept on purpose: `gt` and `gte` say a string is greater than any
//! integer (and an integer never greater than a string), as CommCare does.

use crate::eval::{Ctx, EvalError};
use crate::expr::{Expr, Scope};
use crate::spec::{Node, SpecError};
use crate::value::Val;
use regex::Regex;
use std::cmp::Ordering;

/// A comparison operator.
#[derive(Debug)]
pub enum Op {
    /// `==`.
    Eq,
    /// `!=`.
    NotEq,
    /// `value in reference`.
    In,
    /// `reference in value.split(' ')` (a multiple-choice answer).
    InMulti,
    /// Any of `reference` in `value.split(' ')`.
    AnyInMulti,
    /// `re.search(reference, value)`; the pattern compiled at init when constant.
    Regex(Option<Regex>),
    /// `<`.
    Lt,
    /// `<=`.
    Lte,
    /// `>` (with CommCare's string/integer quirk).
    Gt,
    /// `>=` (with CommCare's string/integer quirk).
    Gte,
}

const OPERATORS: &str = "eq, not_eq, in, in_multi, any_in_multi, regex, lt, lte, gt, gte";

/// A filter.
#[derive(Debug)]
pub enum Filter {
    /// `operator(expression(item), property_value(item))`.
    Compare(Box<Expr>, Op, Box<Expr>),
    /// Every filter passes (an empty list passes nothing: CommCare refuses it).
    And(Vec<Filter>),
    /// Some filter passes.
    Or(Vec<Filter>),
    /// The filter fails.
    Not(Box<Filter>),
    /// A named filter, by index.
    Named(usize),
}

const TYPES: &str = "boolean_expression, property_match, and, or, not, named";

impl Filter {
    /// Parse a filter spec.
    ///
    /// # Errors
    ///
    /// An unknown type or operator, a missing or unknown property, an
    /// unknown name, a regular expression that does not compile.
    pub fn parse(node: &Node<'_>, scope: &Scope<'_>) -> Result<Filter, SpecError> {
        let o = node.object("a filter")?;
        let kind = match o.get("type") {
            Some(t) => t.text()?,
            None => return Err(node.error(format!("a filter needs a \"type\"; allowed: {TYPES}"))),
        };
        Ok(match kind.as_str() {
            "boolean_expression" => {
                o.only(&["type", "operator", "property_value", "expression"])?;
                let expression = Expr::parse(o.req("expression")?, scope)?;
                let Some(value) = o.get("property_value") else {
                    return Err(node
                        .error("\"property_value\" is required in a \"boolean_expression\" spec"));
                };
                let reference = Expr::parse(value, scope)?;
                let op = operator(o.req("operator")?, &reference)?;
                Filter::Compare(Box::new(expression), op, Box::new(reference))
            }
            "property_match" => {
                o.only(&["type", "property_name", "property_path", "property_value"])?;
                let getter = match (o.opt("property_name"), o.opt("property_path")) {
                    (Some(name), None) => {
                        let name = name.text()?;
                        if name.is_empty() {
                            return Err(o
                                .req("property_name")?
                                .error("property_name must not be empty"));
                        }
                        Expr::PropertyName {
                            name: Box::new(Expr::Constant(Val::str(name))),
                            datatype: None,
                        }
                    }
                    (None, Some(path)) => crate::expr::property_path(path, None)?,
                    _ => {
                        return Err(node.error(
                            "a \"property_match\" filter needs exactly one of property_name and property_path",
                        ));
                    }
                };
                let Some(value) = o.get("property_value") else {
                    return Err(
                        node.error("\"property_value\" is required in a \"property_match\" spec")
                    );
                };
                Filter::Compare(
                    Box::new(getter),
                    Op::Eq,
                    Box::new(Expr::parse(value, scope)?),
                )
            }
            "and" | "or" => {
                let Some(list) = o
                    .opt("filters")
                    .filter(|f| f.value.kind() == pillowtop_sdk::json::Kind::Array)
                else {
                    return Err(node.error(format!(
                        "an \"{kind}\" filter must include a \"filters\" list"
                    )));
                };
                let mut filters = Vec::new();
                for item in list.items()? {
                    filters.push(Filter::parse(&item, scope)?);
                }
                if filters.is_empty() {
                    return Err(
                        list.error(format!("an \"{kind}\" filter needs at least one filter"))
                    );
                }
                if kind == "and" {
                    Filter::And(filters)
                } else {
                    Filter::Or(filters)
                }
            }
            "not" => {
                o.only(&["type", "filter"])?;
                Filter::Not(Box::new(Filter::parse(o.req("filter")?, scope)?))
            }
            "named" => {
                o.only(&["type", "name"])?;
                let name = o.req_text("name")?;
                match scope.filters.iter().position(|n| *n == name) {
                    Some(i) => Filter::Named(i),
                    None => {
                        return Err(o.req("name")?.error(format!(
                            "no named filter \"{name}\" in named_filters (names: {})",
                            if scope.filters.is_empty() {
                                "none".into()
                            } else {
                                scope.filters.join(", ")
                            }
                        )));
                    }
                }
            }
            other => {
                return Err(o
                    .req("type")?
                    .error(format!("unknown filter type \"{other}\"; allowed: {TYPES}")));
            }
        })
    }

    /// Whether `item` passes.
    ///
    /// # Errors
    ///
    /// When an expression fails, or `in_multi` meets a value that is not
    /// text (Python's `AttributeError`, which CommCare does not catch).
    pub fn eval<'a>(&self, item: &Val<'a>, ctx: &Ctx<'_, 'a>) -> Result<bool, EvalError> {
        Ok(match self {
            Filter::Compare(expression, op, reference) => {
                let value = expression.eval(item, ctx)?;
                let reference = reference.eval(item, ctx)?;
                op.apply(&value, &reference)?
            }
            Filter::And(filters) => {
                for f in filters {
                    if !f.eval(item, ctx)? {
                        return Ok(false);
                    }
                }
                true
            }
            Filter::Or(filters) => {
                for f in filters {
                    if f.eval(item, ctx)? {
                        return Ok(true);
                    }
                }
                false
            }
            Filter::Not(f) => !f.eval(item, ctx)?,
            Filter::Named(i) => ctx.env.named_filters[*i].eval(item, ctx)?,
        })
    }
}

/// The operator named at `node`; a constant regex pattern compiles here.
fn operator(node: &Node<'_>, reference: &Expr) -> Result<Op, SpecError> {
    let name = node.text()?;
    Ok(match name.to_lowercase().as_str() {
        "eq" => Op::Eq,
        "not_eq" => Op::NotEq,
        "in" => Op::In,
        "in_multi" => Op::InMulti,
        "any_in_multi" => Op::AnyInMulti,
        "regex" => Op::Regex(match reference.constant() {
            Some(Val::Str(pattern)) => Some(compile(pattern).map_err(|m| node.error(m))?),
            _ => None,
        }),
        "lt" => Op::Lt,
        "lte" => Op::Lte,
        "gt" => Op::Gt,
        "gte" => Op::Gte,
        _ => {
            return Err(node.error(format!(
                "{name} is not a valid operator; allowed: {OPERATORS}"
            )));
        }
    })
}

fn compile(pattern: &str) -> Result<Regex, String> {
    Regex::new(pattern).map_err(|e| {
        format!("the regex {pattern:?} does not compile ({e}); patterns use Python's syntax without look-around and back-references")
    })
}

/// `(value or '').split(' ')`, or Python's `AttributeError` when `value`
/// is truthy and not text.
fn multiselect<'v>(value: &'v Val<'_>) -> Result<Vec<&'v str>, EvalError> {
    match value {
        Val::Str(s) => Ok(s.split(' ').collect()),
        v if !v.truthy() => Ok(vec![""]),
        v => Err(EvalError::permanent(format!(
            "in_multi/any_in_multi needs a text value, got {} (Python's AttributeError)",
            v.py_str()
        ))),
    }
}

fn in_(value: &Val<'_>, reference: &Val<'_>) -> bool {
    match reference {
        Val::List(items) => items.iter().any(|i| value.py_eq(i)),
        Val::Str(s) => value.as_str().is_some_and(|v| s.contains(v)),
        Val::Dict(members) => {
            !value.is_container() && members.iter().any(|(k, _)| value.as_str() == Some(k))
        }
        _ => false,
    }
}

impl Op {
    /// `operator(value, reference)` as CommCare's safe operator computes it.
    ///
    /// # Errors
    ///
    /// `in_multi`/`any_in_multi` on a non-text truthy value; a pattern
    /// given by an expression that does not compile.
    pub fn apply(&self, value: &Val<'_>, reference: &Val<'_>) -> Result<bool, EvalError> {
        let is_int = |v: &Val<'_>| matches!(v, Val::Int(_) | Val::Bool(_));
        Ok(match self {
            Op::Eq => value.py_eq(reference),
            Op::NotEq => !value.py_eq(reference),
            Op::In => in_(value, reference),
            Op::InMulti => {
                let parts = multiselect(value)?;
                reference.as_str().is_some_and(|r| parts.contains(&r))
            }
            Op::AnyInMulti => {
                let candidates: Vec<Val<'_>> = match reference {
                    Val::List(items) => items.iter().cloned().collect(),
                    Val::Str(s) => s.chars().map(|c| Val::str(c.to_string())).collect(),
                    Val::Dict(members) => members
                        .iter()
                        .map(|(k, _)| Val::str(k.to_string()))
                        .collect(),
                    _ => return Ok(false),
                };
                if candidates.is_empty() {
                    return Ok(false);
                }
                let parts = multiselect(value)?;
                candidates
                    .iter()
                    .any(|c| c.as_str().is_some_and(|c| parts.contains(&c)))
            }
            Op::Regex(compiled) => {
                let (Some(text), Some(pattern)) = (value.as_str(), reference.as_str()) else {
                    return Ok(false);
                };
                match compiled {
                    Some(re) => re.is_match(text),
                    None => compile(pattern)
                        .map_err(EvalError::permanent)?
                        .is_match(text),
                }
            }
            Op::Lt => value.py_cmp(reference) == Some(Ordering::Less),
            Op::Lte => matches!(
                value.py_cmp(reference),
                Some(Ordering::Less | Ordering::Equal)
            ),
            Op::Gt | Op::Gte if value.as_str().is_some() && is_int(reference) => true,
            Op::Gt | Op::Gte if is_int(value) && reference.as_str().is_some() => false,
            Op::Gt => value.py_cmp(reference) == Some(Ordering::Greater),
            Op::Gte => matches!(
                value.py_cmp(reference),
                Some(Ordering::Greater | Ordering::Equal)
            ),
        })
    }
}

impl Filter {
    /// Call `f` with every named expression or filter this filter refers
    /// to directly.
    pub fn each_ref(&self, f: &mut dyn FnMut(crate::expr::NamedRef)) {
        match self {
            Filter::Compare(a, _, b) => {
                a.each_ref(f);
                b.each_ref(f);
            }
            Filter::And(filters) | Filter::Or(filters) => {
                filters.iter().for_each(|x| x.each_ref(f))
            }
            Filter::Not(x) => x.each_ref(f),
            Filter::Named(i) => f(crate::expr::NamedRef::Filter(*i)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pillowtop_sdk::json::Value;

    fn v(json: &str) -> Val<'_> {
        Val::from_json(Value::parse(json).unwrap())
    }

    fn apply(op: Op, value: &str, reference: &str) -> String {
        match op.apply(&v(value), &v(reference)) {
            Ok(b) => b.to_string(),
            Err(e) => format!("error: {}", e.message),
        }
    }

    #[test]
    fn operators_as_commcare_tests_them() {
        // corehq/apps/userreports/tests/test_filters.py
        assert_eq!(apply(Op::Eq, "null", "null"), "true");
        assert_eq!(apply(Op::Eq, r#""""#, "null"), "false");
        assert_eq!(apply(Op::Lt, r#""2""#, "3"), "false");
        assert_eq!(apply(Op::Lte, "3", "3"), "true");
        assert_eq!(apply(Op::Gt, r#""2""#, "3"), "true");
        assert_eq!(apply(Op::Gte, r#""2""#, "3"), "true");
        assert_eq!(apply(Op::Gt, "2", r#""3""#), "false");
        assert_eq!(apply(Op::Gt, "4", "3"), "true");
        assert_eq!(apply(Op::InMulti, r#""b c a""#, r#""a""#), "true");
        assert_eq!(apply(Op::InMulti, r#""abc""#, r#""a""#), "false");
        assert_eq!(apply(Op::InMulti, "null", r#""""#), "true");
        assert!(apply(Op::InMulti, "5", r#""a""#).starts_with("error"));
        assert_eq!(apply(Op::AnyInMulti, r#""b c""#, r#"["x", "c"]"#), "true");
        assert_eq!(apply(Op::AnyInMulti, "5", "[]"), "false");
        assert_eq!(apply(Op::In, r#""b""#, r#"["a", "b"]"#), "true");
        assert_eq!(apply(Op::In, r#""ell""#, r#""hello""#), "true");
        assert_eq!(apply(Op::In, "1", r#""1""#), "false");
        assert_eq!(apply(Op::In, r#""k""#, r#"{"k": 1}"#), "true");
        assert_eq!(apply(Op::In, r#""a""#, "null"), "false");
        assert_eq!(apply(Op::Regex(None), r#""abc""#, r#""^a.c$""#), "true");
        assert_eq!(apply(Op::Regex(None), "5", r#""5""#), "false");
        assert!(apply(Op::Regex(None), r#""a""#, r#""(""#).starts_with("error"));
    }
}
