//! Reading a data source's JSON with the path of every part, so that a
//! config error names the file, where in it, and what is allowed.

use crate::dates::{self, Literal};
use crate::value::Val;
use pillowtop_sdk::json::{Kind, Value};
use std::fmt;

/// A config error: where (a JSON path such as
/// `configured_indicators[2].expression.type`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// JSON path from the data source's root.
    pub path: String,
    /// What is wrong and what would be valid.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "at {}: {}", self.path, self.message)
        }
    }
}

/// A part of the spec and its path.
#[derive(Debug, Clone)]
pub struct Node<'s> {
    /// The JSON value.
    pub value: Value<'s>,
    /// Its JSON path.
    pub path: String,
}

impl<'s> Node<'s> {
    /// The root of a spec.
    pub fn root(value: Value<'s>) -> Node<'s> {
        Node {
            value,
            path: String::new(),
        }
    }

    /// An error at this node.
    pub fn error(&self, message: impl Into<String>) -> SpecError {
        SpecError {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    /// The member `key` of this object (not checked to exist).
    fn child(&self, key: &str, value: Value<'s>) -> Node<'s> {
        let path = if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        };
        Node { value, path }
    }

    /// The elements of this array, each with its path.
    ///
    /// # Errors
    ///
    /// When this is not an array.
    pub fn items(&self) -> Result<Vec<Node<'s>>, SpecError> {
        if self.value.kind() != Kind::Array {
            return Err(self.error(format!("must be a list, not {}", describe(self.value))));
        }
        Ok(self
            .value
            .elements()
            .enumerate()
            .map(|(i, value)| Node {
                value,
                path: format!("{}[{i}]", self.path),
            })
            .collect())
    }

    /// This node as an object whose members can be taken by name.
    ///
    /// # Errors
    ///
    /// When this is not an object.
    pub fn object(&self, what: &str) -> Result<Object<'s>, SpecError> {
        if self.value.kind() != Kind::Object {
            return Err(self.error(format!(
                "{what} must be an object, not {}",
                describe(self.value)
            )));
        }
        let mut members: Vec<(String, Node<'s>)> = Vec::new();
        for (key, value) in self.value.members() {
            let key = key.decoded().into_owned();
            let node = self.child(&key, value);
            // Python's json keeps the last of a repeated key.
            match members.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = node,
                None => members.push((key, node)),
            }
        }
        Ok(Object {
            node: self.clone(),
            members,
        })
    }

    /// The text of this string.
    ///
    /// # Errors
    ///
    /// When this is not a string.
    pub fn text(&self) -> Result<String, SpecError> {
        self.value
            .as_str()
            .map(|s| s.into_owned())
            .ok_or_else(|| self.error(format!("must be a string, not {}", describe(self.value))))
    }

    /// This value as a spec literal: what jsonobject makes of it (a string
    /// that looks like a date, time, datetime or decimal becomes one; see
    /// [`dates::literal`]).
    pub fn literal(&self) -> Val<'static> {
        let value = Val::from_json(self.value);
        match &value {
            Val::Str(s) => match dates::literal(s) {
                Some(Literal::Date(d)) => Val::Date(d),
                Some(Literal::Time(t)) => Val::Time(t),
                Some(Literal::DateTime(d)) => Val::DateTime(d),
                Some(Literal::Decimal) => {
                    Val::Decimal(s.parse().unwrap_or(f64::NAN), s.as_ref().into())
                }
                None => to_static(value),
            },
            _ => to_static(value),
        }
    }
}

/// A value that borrows nothing.
pub fn to_static(value: Val<'_>) -> Val<'static> {
    use std::borrow::Cow;
    use std::rc::Rc;
    match value {
        Val::Null => Val::Null,
        Val::Bool(b) => Val::Bool(b),
        Val::Int(i) => Val::Int(i),
        Val::Float(f) => Val::Float(f),
        Val::Decimal(f, t) => Val::Decimal(f, t),
        Val::Str(s) => Val::Str(Cow::Owned(s.into_owned())),
        Val::Date(d) => Val::Date(d),
        Val::DateTime(d) => Val::DateTime(d),
        Val::Time(t) => Val::Time(t),
        Val::List(items) => Val::List(Rc::new(items.iter().cloned().map(to_static).collect())),
        Val::Dict(members) => Val::Dict(Rc::new(
            members
                .iter()
                .map(|(k, v)| (Cow::Owned(k.to_string()), to_static(v.clone())))
                .collect(),
        )),
    }
}

/// How a JSON value is named in an error.
pub fn describe(value: Value<'_>) -> String {
    let kind = match value.kind() {
        Kind::Null => return "null".into(),
        Kind::Bool => "a boolean",
        Kind::Number => "a number",
        Kind::String => "a string",
        Kind::Array => "a list",
        Kind::Object => "an object",
    };
    let raw = value.raw();
    if raw.len() <= 40 {
        format!("{kind} ({raw})")
    } else {
        kind.into()
    }
}

/// An object of the spec whose members are taken by name.
#[derive(Debug)]
pub struct Object<'s> {
    /// The object itself.
    pub node: Node<'s>,
    members: Vec<(String, Node<'s>)>,
}

impl<'s> Object<'s> {
    /// The member `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Node<'s>> {
        self.members.iter().find(|(k, _)| k == key).map(|(_, n)| n)
    }

    /// The member `key`, if present and not null.
    pub fn opt(&self, key: &str) -> Option<&Node<'s>> {
        self.get(key).filter(|n| !n.value.is_null())
    }

    /// The member `key`.
    ///
    /// # Errors
    ///
    /// When it is missing (or null).
    pub fn req(&self, key: &str) -> Result<&Node<'s>, SpecError> {
        self.opt(key).ok_or_else(|| {
            self.node
                .error(format!("\"{key}\" is required in a {}", self.what()))
        })
    }

    /// The string member `key`.
    ///
    /// # Errors
    ///
    /// When it is missing or not a string.
    pub fn req_text(&self, key: &str) -> Result<String, SpecError> {
        self.req(key)?.text()
    }

    /// The string member `key`, if present.
    ///
    /// # Errors
    ///
    /// When it is present and not a string.
    pub fn opt_text(&self, key: &str) -> Result<Option<String>, SpecError> {
        self.opt(key).map(Node::text).transpose()
    }

    /// The boolean member `key`, `default` when absent.
    ///
    /// # Errors
    ///
    /// When it is present and not a boolean.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, SpecError> {
        match self.opt(key) {
            None => Ok(default),
            Some(n) => n.value.as_bool().ok_or_else(|| {
                n.error(format!("must be true or false, not {}", describe(n.value)))
            }),
        }
    }

    /// Refuse members other than `allowed` (CommCare's filter and
    /// indicator specs do not allow unknown properties).
    ///
    /// # Errors
    ///
    /// Names the first unknown member and the allowed ones.
    pub fn only(&self, allowed: &[&str]) -> Result<(), SpecError> {
        for (key, node) in &self.members {
            if !allowed.contains(&key.as_str()) {
                return Err(node.error(format!(
                    "unknown property \"{key}\" in a {}; allowed: {}",
                    self.what(),
                    allowed.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The object's `type`, for messages.
    fn what(&self) -> String {
        match self.get("type").and_then(|t| t.value.as_str()) {
            Some(t) => format!("\"{t}\" spec"),
            None => "spec".into(),
        }
    }

    /// The members in order.
    pub fn members(&self) -> &[(String, Node<'s>)] {
        &self.members
    }
}

/// Append `value` to `out` without insignificant whitespace, members in
/// their written order: two files that differ only in layout give the
/// same text (what a data source's definition hash is taken over).
pub fn compact(value: Value<'_>, out: &mut String) {
    match value.kind() {
        pillowtop_sdk::json::Kind::Object => {
            out.push('{');
            for (i, (key, member)) in value.members().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(key.raw());
                out.push(':');
                compact(member, out);
            }
            out.push('}');
        }
        pillowtop_sdk::json::Kind::Array => {
            out.push('[');
            for (i, element) in value.elements().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                compact(element, out);
            }
            out.push(']');
        }
        _ => out.push_str(value.raw()),
    }
}
