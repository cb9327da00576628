//! One change through the live version and the candidate: do they agree?
//!
//! Two results agree when both give the same actions in the same order
//! (documents compared as JSON values, so key order and spacing do not
//! count), or both fail with the same error kind. Anything else is a
//! difference, except a candidate that fails where the live version did
//! not (or fails otherwise), which is counted as its own outcome with the
//! error kind.

use crate::action::Action;
use crate::errors::ErrorKind;
use crate::fixtures::action_json;
use crate::json_diff::{self, Difference};
use crate::wasm::Failure;
use serde_json::Value;

/// A call's result.
pub type CallResult = Result<Vec<Action>, Failure>;

/// How the candidate's result compares with the live version's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The same actions (or the same error kind).
    Agree,
    /// Different actions, or actions where the live version failed.
    Differ,
    /// The candidate failed where the live version did not, or failed
    /// with another kind.
    CandidateFailed(ErrorKind),
}

/// Compare the candidate's result with the live version's.
pub fn verdict(live: &CallResult, candidate: &CallResult) -> Verdict {
    match (live, candidate) {
        (Ok(l), Ok(c)) if l == c || same_as_json(l, c) => Verdict::Agree,
        (Ok(_), Ok(_)) | (Err(_), Ok(_)) => Verdict::Differ,
        (Err(l), Err(c)) if l.kind == c.kind => Verdict::Agree,
        (_, Err(c)) => Verdict::CandidateFailed(c.kind),
    }
}

/// Equal once documents are read as JSON (the text differs, e.g. in key
/// order): the slow path, taken only when the actions are not identical.
fn same_as_json(live: &[Action], candidate: &[Action]) -> bool {
    live.len() == candidate.len()
        && live
            .iter()
            .zip(candidate)
            .all(|(l, c)| action_json(l) == action_json(c))
}

/// A result as JSON: the list of actions (as fixtures write them), or
/// `{"error": {"kind", "message"}}`.
pub fn result_json(result: &CallResult) -> Value {
    match result {
        Ok(actions) => Value::Array(actions.iter().map(action_json).collect()),
        Err(f) => serde_json::json!({"error": {"kind": f.kind.as_str(), "message": f.message}}),
    }
}

/// At most this many differences are kept per change.
pub const MAX_DIFFERENCES: usize = 50;

/// Where two results differ, readable: one line per difference.
pub fn describe(live: &Value, candidate: &Value) -> Vec<String> {
    json_diff::differences(live, candidate, MAX_DIFFERENCES)
        .iter()
        .map(Difference::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(tag: &str) -> CallResult {
        Ok(vec![Action::UpsertRows {
            table: "tagged".into(),
            rows: vec![vec![crate::action::Cell::Text(tag.into())]],
        }])
    }

    fn doc(text: &str) -> CallResult {
        Ok(vec![Action::IndexDocument {
            index: "cases".into(),
            id: "c1".into(),
            document: text.into(),
        }])
    }

    fn failed(kind: ErrorKind) -> CallResult {
        Err(Failure {
            kind,
            message: "boom".into(),
        })
    }

    #[test]
    fn documents_compare_as_json_and_failures_by_kind() {
        assert_eq!(verdict(&rows("v1"), &rows("v1")), Verdict::Agree);
        assert_eq!(verdict(&rows("v1"), &rows("v2")), Verdict::Differ);
        assert_eq!(
            verdict(&doc(r#"{"a": 1, "b": [2]}"#), &doc(r#"{"b":[2],"a":1}"#)),
            Verdict::Agree
        );
        assert_eq!(
            verdict(&doc(r#"{"a": 1}"#), &doc(r#"{"a": 1.5}"#)),
            Verdict::Differ
        );
        assert_eq!(verdict(&rows("v1"), &Ok(vec![])), Verdict::Differ);
        assert_eq!(
            verdict(&rows("v1"), &failed(ErrorKind::Fuel)),
            Verdict::CandidateFailed(ErrorKind::Fuel)
        );
        assert_eq!(
            verdict(&failed(ErrorKind::Trap), &failed(ErrorKind::Trap)),
            Verdict::Agree
        );
        assert_eq!(
            verdict(&failed(ErrorKind::Trap), &failed(ErrorKind::Timeout)),
            Verdict::CandidateFailed(ErrorKind::Timeout)
        );
        assert_eq!(
            verdict(&failed(ErrorKind::Trap), &rows("v1")),
            Verdict::Differ
        );
    }

    #[test]
    fn a_difference_is_described_by_its_path() {
        let lines = describe(&result_json(&rows("v1")), &result_json(&rows("v2")));
        assert_eq!(lines, [r#"[0].upsert_rows.rows[0][0]: "v1" -> "v2""#]);
        let lines = describe(
            &result_json(&rows("v1")),
            &result_json(&failed(ErrorKind::Trap)),
        );
        assert_eq!(
            lines,
            [
                r#"the top level: [{"upsert_rows":{"rows":[["v1"]],"table":"tagged"}}] -> {"error":{"kind":"trap","message":"boom"}}"#
            ]
        );
    }
}
