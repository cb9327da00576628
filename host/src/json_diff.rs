//! Where two JSON values differ, as paths: for fixture failures (the
//! first difference) and shadow runs (all of them, readable).

use serde_json::Value;
use std::fmt;

/// One place where `left` and `right` differ.
#[derive(Debug, Clone, PartialEq)]
pub enum Difference {
    /// A key only `left` has.
    Missing {
        /// Path to the key, e.g. `[0].upsert_rows.rows[0][1]`.
        path: String,
        /// `left`'s value there.
        left: Value,
    },
    /// A key only `right` has.
    Unexpected {
        /// Path to the key.
        path: String,
        /// `right`'s value there.
        right: Value,
    },
    /// Arrays of different lengths (their common elements are compared too).
    Length {
        /// Path to the array.
        path: String,
        /// `left`'s length.
        left: usize,
        /// `right`'s length.
        right: usize,
    },
    /// Different values (scalars, or values of different types).
    Value {
        /// Path to the value.
        path: String,
        /// `left`'s value.
        left: Value,
        /// `right`'s value.
        right: Value,
    },
}

impl Difference {
    /// The path of the difference; "the top level" for the root.
    pub fn path(&self) -> &str {
        let path = match self {
            Difference::Missing { path, .. }
            | Difference::Unexpected { path, .. }
            | Difference::Length { path, .. }
            | Difference::Value { path, .. } => path.as_str(),
        };
        if path.is_empty() {
            "the top level"
        } else {
            path
        }
    }
}

impl fmt::Display for Difference {
    /// `path: left -> right`, with values cut to a readable length.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |v: &Value| crate::wasm::check::clip(&v.to_string(), MAX_SHOWN_CHARS);
        match self {
            Difference::Missing { left, .. } => {
                write!(f, "{}: {} -> (absent)", self.path(), shown(left))
            }
            Difference::Unexpected { right, .. } => {
                write!(f, "{}: (absent) -> {}", self.path(), shown(right))
            }
            Difference::Length { left, right, .. } => {
                write!(f, "{}: {left} items -> {right} items", self.path())
            }
            Difference::Value { left, right, .. } => {
                write!(f, "{}: {} -> {}", self.path(), shown(left), shown(right))
            }
        }
    }
}

/// Values longer than this are cut in a difference's text.
const MAX_SHOWN_CHARS: usize = 200;

/// Every place where `left` and `right` differ, in document order (keys
/// in `left`'s order, then keys only `right` has; an array's elements,
/// then its length), at most `limit`.
pub fn differences(left: &Value, right: &Value, limit: usize) -> Vec<Difference> {
    let mut out = Vec::new();
    walk(left, right, &mut String::new(), &mut out, limit);
    out
}

fn walk(left: &Value, right: &Value, path: &mut String, out: &mut Vec<Difference>, limit: usize) {
    if out.len() >= limit || left == right {
        return;
    }
    let at = path.len();
    match (left, right) {
        (Value::Object(l), Value::Object(r)) => {
            for (k, lv) in l {
                path.push('.');
                path.push_str(k);
                match r.get(k) {
                    None => {
                        if out.len() < limit {
                            out.push(Difference::Missing {
                                path: path.clone(),
                                left: lv.clone(),
                            });
                        }
                    }
                    Some(rv) => walk(lv, rv, path, out, limit),
                }
                path.truncate(at);
            }
            for (k, rv) in r.iter().filter(|(k, _)| !l.contains_key(*k)) {
                if out.len() >= limit {
                    break;
                }
                out.push(Difference::Unexpected {
                    path: format!("{path}.{k}"),
                    right: rv.clone(),
                });
            }
        }
        (Value::Array(l), Value::Array(r)) => {
            for (i, (lv, rv)) in l.iter().zip(r).enumerate() {
                path.push_str(&format!("[{i}]"));
                walk(lv, rv, path, out, limit);
                path.truncate(at);
            }
            if l.len() != r.len() && out.len() < limit {
                out.push(Difference::Length {
                    path: path.clone(),
                    left: l.len(),
                    right: r.len(),
                });
            }
        }
        _ => out.push(Difference::Value {
            path: path.clone(),
            left: left.clone(),
            right: right.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_every_difference_with_its_path() {
        let left = json!([{"upsert_rows": {"table": "t", "rows": [["a", "v1", 3]]}}, {"x": 1, "gone": true}]);
        let right = json!([{"upsert_rows": {"table": "t", "rows": [["a", "v2", 3], ["b"]]}}, {"x": 1, "new": null}]);
        let found: Vec<String> = differences(&left, &right, 100)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            [
                r#"[0].upsert_rows.rows[0][1]: "v1" -> "v2""#,
                "[0].upsert_rows.rows: 1 items -> 2 items",
                "[1].gone: true -> (absent)",
                "[1].new: (absent) -> null",
            ]
        );
        assert_eq!(differences(&left, &right, 2).len(), 2);
        assert!(differences(&left, &left, 100).is_empty());
        assert_eq!(
            differences(&json!(1), &json!("1"), 10)[0].to_string(),
            r#"the top level: 1 -> "1""#
        );
    }
}
